// Language-model head losses on a chunk of logits (rows, vocab), never more than a chunk of
// positions at once (the lm_head is chunked by the caller). One block per row, blockDim.x = 256.
// CPU reference: orlik_train::losses (cross-entropy, log p(target)); a row's log-sum-exp is in
// f64 there and here.

// lse[r] = log Σ_v exp(logits[r, v]), in f64 around the row maximum.
extern "C" __global__ void row_logsumexp(const float* logits, float* lse, int rows, int vocab) {
    __shared__ float redf[256];
    __shared__ double redd[256];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + (long long)r * vocab;
    float mx = NEG_INF;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) mx = fmaxf(mx, x[c]);
    mx = block_max(mx, redf);
    double acc = 0.0;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) acc += exp((double)(x[c] - mx));
    acc = block_sum(acc, redd);
    if (threadIdx.x == 0) lse[r] = (float)((double)mx + log(acc));
}

// dlogits[r, v] = coeff[r] · (1[v = target[r]] − softmax(logits[r])_v): the gradient of
// Σ_r coeff[r] · log p(target[r]). Cross-entropy's gradient is this with coeff = −scale.
// A row whose target is ≥ vocab (no target) gets a zero gradient. May run in place.
extern "C" __global__ void logp_grad(const float* logits, const float* lse,
                                     const unsigned int* target, const float* coeff,
                                     float* dlogits, int rows, int vocab) {
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + (long long)r * vocab;
    float* dx = dlogits + (long long)r * vocab;
    unsigned int tg = target[r];
    float c = (tg < (unsigned int)vocab) ? coeff[r] : 0.0f, l = lse[r];
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float p = expf(x[v] - l);
        dx[v] = c * (((unsigned int)v == tg ? 1.0f : 0.0f) - p);
    }
}
