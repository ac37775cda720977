// Rotary position embeddings, in place on (n_tokens, n_heads, head_dim) f32 activations.
// For pair i < n_dims / 2 of a head of token t: theta = positions[t] * freq_scale *
// freq_base^(-2i / n_dims), and (a, b) <- (a cos - b sin, a sin + b cos), where
//   normal (neox = 0): a = x[2i], b = x[2i + 1]            (GGML rope mode 0, Llama)
//   neox   (neox = 1): a = x[i], b = x[i + n_dims / 2]     (GGML rope mode 2, Qwen, Gemma)
// Dimensions n_dims..head_dim - 1 (partial rotation) are left as they are.
//
// rope_f32(x, positions, n_heads, head_dim, n_dims, freq_base, freq_scale, neox):
//   n_dims even, <= head_dim. positions: n_tokens u32.
// Launch: blockDim.x = 64 (pairs, strided when n_dims / 2 > 64), gridDim = (n_heads, n_tokens).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(64)
    rope_f32(float *__restrict__ x, const unsigned int *__restrict__ positions, int n_heads,
             int head_dim, int n_dims, float freq_base, float freq_scale, int neox) {
    const int h = blockIdx.x;
    const int t = blockIdx.y;
    float *xh = x + ((long long)t * n_heads + h) * head_dim;
    const float pos = (float)positions[t] * freq_scale;
    const int half_dims = n_dims / 2;
    for (int i = threadIdx.x; i < half_dims; i += blockDim.x) {
        const float theta = pos * powf(freq_base, -2.0f * (float)i / (float)n_dims);
        float s, c;
        sincosf(theta, &s, &c);
        const int ia = neox ? i : 2 * i;
        const int ib = neox ? i + half_dims : 2 * i + 1;
        const float a = xh[ia];
        const float b = xh[ib];
        xh[ia] = a * c - b * s;
        xh[ib] = a * s + b * c;
    }
}
