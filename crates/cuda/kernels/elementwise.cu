// Elementwise and gather/scatter kernels of the block (`orlik_model::block`): the embedding, the
// gated MLP's activation (SwiGLU, GeGLU with tanh GELU), biases, residual adds, dtype
// conversions. CPU references: orlik_model::cpu::kernels::{glu, glu_backward, add_bias}.

// out (n, d) = table[ids[r]] · scale; rows whose id is out of range are an error caught on the
// host before the launch (ids are checked against the vocabulary there).
extern "C" __global__ void embed_gather(const unsigned int* ids, const float* table, float* out,
                                        int n, int d, float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * d) return;
    int r = (int)(i / d), c = (int)(i % d);
    out[i] = table[(long long)ids[r] * d + c] * scale;
}

// grad[ids[r]] += dy[r] · scale. One thread per column walking the rows in order: two rows with
// the same id add in row order, with no atomics (deterministic).
extern "C" __global__ void embed_scatter_add(const unsigned int* ids, const float* dy,
                                             float* grad, int n, int d, float scale) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    for (int r = 0; r < n; r++) grad[(long long)ids[r] * d + c] += dy[(long long)r * d + c] * scale;
}

// sqrt(2/π) and 0.044715 in f32, as torch's tanh GELU (`gelu_pytorch_tanh`) computes them.
#define GELU_C 0.7978846f
#define GELU_A 0.044715f

// act(g) and act'(g); act 0 = silu, 1 = tanh GELU (orlik_model::block::Activation).
__device__ __forceinline__ float2 act_and_slope(int act, float g) {
    if (act == 0) {
        float s = 1.0f / (1.0f + expf(-g));
        return make_float2(g * s, s * (1.0f + g * (1.0f - s)));
    }
    float th = tanhf(GELU_C * (g + GELU_A * g * g * g));
    float inner = GELU_C * (1.0f + 3.0f * GELU_A * g * g);
    return make_float2(0.5f * g * (1.0f + th), 0.5f * (1.0f + th) + 0.5f * g * (1.0f - th * th) * inner);
}

// a = act(g) · u (n elements).
extern "C" __global__ void glu_forward(int act, const float* g, const float* u, float* a, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = act_and_slope(act, g[i]).x * u[i];
}

// In place: g becomes dg = da · u · act'(g), u becomes du = da · act(g).
extern "C" __global__ void glu_backward(int act, const float* da, float* g, float* u, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float2 as = act_and_slope(act, g[i]);
    float uv = u[i];
    g[i] = da[i] * uv * as.y;
    u[i] = da[i] * as.x;
}

// y (rows, d) += bias (d) on every row.
extern "C" __global__ void add_bias(float* y, const float* bias, long long n, int d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += bias[i % d];
}

// out[c] += Σ_rows x[r, c] (a bias's gradient): one thread per column, rows in order.
extern "C" __global__ void col_sums(const float* x, float* out, int rows, int d) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += x[(long long)r * d + c];
    out[c] += acc;
}

// y += a · x (the residual stream, gradient accumulation).
extern "C" __global__ void axpy(float* y, const float* x, float a, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}

// x *= a (global-norm clipping).
extern "C" __global__ void scale(float* x, float a, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}

extern "C" __global__ void bf16_to_f32_kernel(const bf16_t* in, float* out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_to_f32(in[i]);
}

// The bf16 working copy of f32 master weights (after each AdamW step).
extern "C" __global__ void f32_to_bf16_kernel(const float* in, bf16_t* out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(in[i]);
}
