// Half-split RoPE in place (HF `rotate_half`), as orlik_model::cpu::kernels::rope, but each row
// takes its position from `pos` (a KV cache continues at the cache's length; padded rows have
// their own positions). x (rows, heads · hd); cos, sin (positions, hd / 2) of the layer's table
// (Gemma 3: the global or the sliding one). `inverse` rotates by −θ: the backward.
extern "C" __global__ void rope(float* x, const unsigned int* pos, const float* cos_t,
                                const float* sin_t, int rows, int heads, int hd, int inverse) {
    int half = hd / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads * half) return;
    int j = (int)(i % half);
    long long rh = i / half;  // row · heads + head
    int r = (int)(rh / heads);
    float* h = x + rh * hd;
    long long p = (long long)pos[r] * half + j;
    float c = cos_t[p], s = inverse ? -sin_t[p] : sin_t[p];
    float a = h[j], b = h[j + half];
    h[j] = a * c - b * s;
    h[j + half] = b * c + a * s;
}
