// Causal grouped-query attention, the straightforward first version (issue 17: correct first,
// then the FlashAttention-style tiled kernel). One block per (query row, head, batch row); keys
// are visited in tiles of blockDim.x with an online softmax (Milakov & Gimelshein 2018), so
// any number of keys fits in fixed shared memory; the log-sum-exp is kept for the backward, as
// FlashAttention does (Dao et al. 2022). Masked tiles are skipped: a query sees keys [lo, hi).
//
// Layouts as orlik_model::cpu::attention (its forward/backward are the references):
//   q (b · t, heads · hd), k and v (b · kcap, kv · hd), o like q, lse (b, heads, t).
// In the forward, each batch row's keys are kcap ≥ tk rows apart (a KV cache with room to
// grow); the training backward takes kcap = tk = t.
// Query i of a row sits at key position off + i with off = tk − t (a KV cache holds off earlier
// keys); it sees key j when j ≤ off + i, off + i − j < window (window 0: no window) and
// valid[row · tk + j] (valid null: every key). Query head h reads key head h / (heads / kv).
// hd ≤ 4 · blockDim.x (each thread owns up to 4 output dims).

#define MAX_DIMS_PER_THREAD 4

__device__ __forceinline__ void visible_keys(int qpos, int window, int* lo, int* hi) {
    *hi = qpos + 1;
    *lo = (window > 0 && qpos + 1 > window) ? qpos + 1 - window : 0;
}

extern "C" __global__ void attn_forward(const float* q, const float* k, const float* v, float* o,
                                        float* lse, const unsigned char* valid, int b, int t,
                                        int tk, int kcap, int heads, int kv, int hd, float scale,
                                        int window) {
    extern __shared__ float sh[];  // q row (hd), scores (blockDim.x), reduction (blockDim.x)
    float* qs = sh;
    float* ps = sh + hd;
    float* red = ps + blockDim.x;
    int i = blockIdx.x, h = blockIdx.y, bi = blockIdx.z;
    int g = h / (heads / kv), off = tk - t, nt = blockDim.x;
    const float* qrow = q + ((long long)(bi * t + i) * heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += nt) qs[d] = qrow[d];
    __syncthreads();
    int lo, hi;
    visible_keys(off + i, window, &lo, &hi);
    float m = NEG_INF, l = 0.0f, acc[MAX_DIMS_PER_THREAD] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j0 = lo; j0 < hi; j0 += nt) {
        int j = j0 + threadIdx.x;
        float s = NEG_INF;
        if (j < hi && (valid == 0 || valid[(long long)bi * tk + j])) {
            const float* kr = k + ((long long)bi * kcap + j) * kv * hd + (long long)g * hd;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot += qs[d] * kr[d];
            s = scale * dot;
        }
        float m_new = fmaxf(m, block_max(s, red));
        float p = (m_new == NEG_INF) ? 0.0f : expf(s - m_new);
        ps[threadIdx.x] = p;
        float corr = (m == NEG_INF) ? 0.0f : expf(m - m_new);
        l = l * corr + block_sum(p, red);  // block_sum's barrier also publishes ps
        int n = min(nt, hi - j0);
        for (int e = 0; e < MAX_DIMS_PER_THREAD; e++) {
            int d = threadIdx.x + e * nt;
            if (d >= hd) break;
            float a = acc[e] * corr;
            for (int jj = 0; jj < n; jj++)
                a += ps[jj] * v[((long long)bi * kcap + j0 + jj) * kv * hd + (long long)g * hd + d];
            acc[e] = a;
        }
        m = m_new;
        __syncthreads();  // ps is rewritten by the next tile
    }
    float* orow = o + ((long long)(bi * t + i) * heads + h) * hd;
    for (int e = 0; e < MAX_DIMS_PER_THREAD; e++) {
        int d = threadIdx.x + e * nt;
        if (d < hd) orow[d] = (l > 0.0f) ? acc[e] / l : 0.0f;
    }
    // A row with no visible key (all padding) has output 0 and lse −inf.
    if (threadIdx.x == 0) lse[((long long)bi * heads + h) * t + i] = (l > 0.0f) ? m + logf(l) : NEG_INF;
}

// delta (b, heads, t) = Σ_d dO · O per query row: the softmax backward's row term.
extern "C" __global__ void attn_delta(const float* o, const float* dout, float* delta, int b,
                                      int t, int heads, int hd) {
    __shared__ float red[256];
    int i = blockIdx.x, h = blockIdx.y, bi = blockIdx.z;
    long long base = ((long long)(bi * t + i) * heads + h) * hd;
    float acc = 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) acc += o[base + d] * dout[base + d];
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) delta[((long long)bi * heads + h) * t + i] = acc;
}

// Training backward (no cache, no padding: tk = t). p_ij = exp(scale · q_i·k_j − lse_i),
// dp_ij = dO_i·v_j, ds_ij = p_ij (dp_ij − delta_i):
//   dq_i = scale Σ_j ds_ij k_j            (this kernel: one block per (i, h, bi))
//   dk_j = scale Σ_(h in group, i) ds_ij q_i,  dv_j = Σ p_ij dO_i   (attn_backward_dkv)
// dq is written (not added).
extern "C" __global__ void attn_backward_dq(const float* q, const float* k, const float* v,
                                            const float* dout, const float* lse,
                                            const float* delta, float* dq, int b, int t,
                                            int heads, int kv, int hd, float scale, int window) {
    extern __shared__ float sh[];  // q row, dO row (hd each), ds (blockDim.x)
    float* qs = sh;
    float* dos = sh + hd;
    float* ds = dos + hd;
    int i = blockIdx.x, h = blockIdx.y, bi = blockIdx.z;
    int g = h / (heads / kv), nt = blockDim.x;
    long long qbase = ((long long)(bi * t + i) * heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += nt) {
        qs[d] = q[qbase + d];
        dos[d] = dout[qbase + d];
    }
    __syncthreads();
    long long row = ((long long)bi * heads + h) * t + i;
    float li = lse[row], di = delta[row];
    int lo, hi;
    visible_keys(i, window, &lo, &hi);
    float acc[MAX_DIMS_PER_THREAD] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j0 = lo; j0 < hi; j0 += nt) {
        int j = j0 + threadIdx.x;
        float dsj = 0.0f;
        if (j < hi) {
            long long kb = ((long long)(bi * t + j) * kv + g) * hd;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < hd; d++) {
                s += qs[d] * k[kb + d];
                dp += dos[d] * v[kb + d];
            }
            float p = expf(scale * s - li);
            dsj = p * (dp - di);
        }
        ds[threadIdx.x] = dsj;
        __syncthreads();
        int n = min(nt, hi - j0);
        for (int e = 0; e < MAX_DIMS_PER_THREAD; e++) {
            int d = threadIdx.x + e * nt;
            if (d >= hd) break;
            float a = acc[e];
            for (int jj = 0; jj < n; jj++) a += ds[jj] * k[((long long)(bi * t + j0 + jj) * kv + g) * hd + d];
            acc[e] = a;
        }
        __syncthreads();
    }
    for (int e = 0; e < MAX_DIMS_PER_THREAD; e++) {
        int d = threadIdx.x + e * nt;
        if (d < hd) dq[qbase + d] = scale * acc[e];
    }
}

// One block per (key j, key head g, batch row bi): the queries that see key j are
// i in [j, min(t, j + window)) (all i ≥ j without a window), for each query head of the group
// in order. dk and dv are written (not added).
extern "C" __global__ void attn_backward_dkv(const float* q, const float* k, const float* v,
                                             const float* dout, const float* lse,
                                             const float* delta, float* dk, float* dv, int b,
                                             int t, int heads, int kv, int hd, float scale,
                                             int window) {
    extern __shared__ float sh[];  // k row, v row (hd each), p (blockDim.x), ds (blockDim.x)
    float* ks = sh;
    float* vs = sh + hd;
    float* ps = vs + hd;
    float* ds = ps + blockDim.x;
    int j = blockIdx.x, g = blockIdx.y, bi = blockIdx.z;
    int rep = heads / kv, nt = blockDim.x;
    long long kb = ((long long)(bi * t + j) * kv + g) * hd;
    for (int d = threadIdx.x; d < hd; d += nt) {
        ks[d] = k[kb + d];
        vs[d] = v[kb + d];
    }
    __syncthreads();
    int ihi = (window > 0 && j + window < t) ? j + window : t;
    float ak[MAX_DIMS_PER_THREAD] = {0.0f, 0.0f, 0.0f, 0.0f};
    float av[MAX_DIMS_PER_THREAD] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int r = 0; r < rep; r++) {
        int h = g * rep + r;
        for (int i0 = j; i0 < ihi; i0 += nt) {
            int i = i0 + threadIdx.x;
            float p = 0.0f, dsi = 0.0f;
            if (i < ihi) {
                long long qb = ((long long)(bi * t + i) * heads + h) * hd;
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < hd; d++) {
                    s += q[qb + d] * ks[d];
                    dp += dout[qb + d] * vs[d];
                }
                long long row = ((long long)bi * heads + h) * t + i;
                p = expf(scale * s - lse[row]);
                dsi = p * (dp - delta[row]);
            }
            ps[threadIdx.x] = p;
            ds[threadIdx.x] = dsi;
            __syncthreads();
            int n = min(nt, ihi - i0);
            for (int e = 0; e < MAX_DIMS_PER_THREAD; e++) {
                int d = threadIdx.x + e * nt;
                if (d >= hd) break;
                float a = ak[e], c = av[e];
                for (int ii = 0; ii < n; ii++) {
                    long long qb = ((long long)(bi * t + i0 + ii) * heads + h) * hd;
                    a += ds[ii] * q[qb + d];
                    c += ps[ii] * dout[qb + d];
                }
                ak[e] = a;
                av[e] = c;
            }
            __syncthreads();
        }
    }
    for (int e = 0; e < MAX_DIMS_PER_THREAD; e++) {
        int d = threadIdx.x + e * nt;
        if (d < hd) {
            dk[kb + d] = scale * ak[e];
            dv[kb + d] = av[e];
        }
    }
}
