// RMSNorm (Zhang & Sennrich 2019), forward and backward, one block per row (blockDim.x = 256).
// The CPU reference is orlik_model::cpu::kernels::{rms_forward, rms_backward}: the mean of x²
// accumulates in f64 there and here. `offset` is 1 for weights stored zero-centred (Gemma's
// (1 + w)) and 0 otherwise; the gradient with respect to w is the same either way.

// x, y (rows, d); w (d); inv (rows): y = x · inv · (w + offset), inv = 1 / sqrt(mean(x²) + eps).
extern "C" __global__ void rms_forward(const float* x, const float* w, float* y, float* inv,
                                       int rows, int d, double eps, float offset) {
    __shared__ double sh[256];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (long long)r * d;
    double acc = 0.0;
    for (int c = threadIdx.x; c < d; c += blockDim.x) acc += (double)xr[c] * (double)xr[c];
    double ms = block_sum(acc, sh) / (double)d;
    float iv = (float)(1.0 / sqrt(ms + eps));
    if (threadIdx.x == 0) inv[r] = iv;
    float* yr = y + (long long)r * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) yr[c] = xr[c] * iv * (w[c] + offset);
}

// dx += inv · (g − x̂ · mean(g · x̂)) with x̂ = x · inv, g = dy · (w + offset). One block a row.
extern "C" __global__ void rms_backward_dx(const float* x, const float* inv, const float* w,
                                           const float* dy, float* dx, int rows, int d,
                                           float offset) {
    __shared__ double sh[256];
    int r = blockIdx.x;
    if (r >= rows) return;
    long long base = (long long)r * d;
    float iv = inv[r];
    double acc = 0.0;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        acc += (double)(dy[base + c] * (w[c] + offset)) * (double)(x[base + c] * iv);
    float dot = (float)(block_sum(acc, sh) / (double)d);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float g = dy[base + c] * (w[c] + offset);
        dx[base + c] += iv * (g - x[base + c] * iv * dot);
    }
}

// dw[c] += Σ_rows dy · x · inv: one thread per column, rows in order (deterministic, no atomics).
extern "C" __global__ void rms_backward_dw(const float* x, const float* inv, const float* dy,
                                           float* dw, int rows, int d) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += dy[(long long)r * d + c] * x[(long long)r * d + c] * inv[r];
    dw[c] += acc;
}
