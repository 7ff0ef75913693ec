// Prepended to every kernel module before NVRTC compiles it (`src/kernels.rs`): no #include, so
// compiling needs libnvrtc alone, not a CUDA toolkit's headers.
//
// Determinism: every reduction below runs in a fixed order that depends only on the launch shape
// (a strided per-thread loop, then a shared-memory tree), never on scheduling or atomics, so a
// kernel gives the same bits on the same GPU every run and `--resume` stays bit-identical.

typedef unsigned short bf16_t;

// bf16 <-> f32 by bits: bf16 is the top half of an f32.
__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even (as PyTorch and the `half` crate do); NaN stays a quiet NaN.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// Block-wide sum of one value per thread, every thread gets it. `sh` holds blockDim.x values;
// blockDim.x must be a power of two. The tree's order is fixed by the thread index.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

template <typename T>
__device__ __forceinline__ T block_max(T v, T* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

#define NEG_INF (-__int_as_float(0x7f800000))
