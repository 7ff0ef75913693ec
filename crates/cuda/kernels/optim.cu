// AdamW on f32 master weights (orlik_train::optim::adamw_step is the reference: PyTorch's update
// order, decoupled weight decay, bias-corrected moments), the global gradient norm's sums of
// squares, and the bf16 working copy refreshed from the master weights.

// step = lr / (1 − β1^t), bc2_sqrt = sqrt(1 − β2^t), shrink = 1 − lr · weight_decay (1 for
// norms and biases): computed on the host in f64 and passed as f32, as the CPU path does.
extern "C" __global__ void adamw(float* w, float* m, float* v, const float* g, long long n,
                                 float b1, float b2, float step, float bc2_sqrt, float eps,
                                 float shrink) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    w[i] = w[i] * shrink - step * mi / denom;
}

// partial[blockIdx.x] = Σ x² over a fixed grid-stride share, in f64. Launched with a fixed
// grid (SUMSQ_BLOCKS in gpu.rs) so the order does not depend on the GPU; the partials are
// summed on the host in block order.
extern "C" __global__ void sum_squares(const float* x, long long n, double* partial) {
    __shared__ double sh[256];
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        acc += (double)x[i] * (double)x[i];
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
