// Rotary position embeddings, in place on (n_tokens, n_heads, head_dim) f32 activations, with
// ggml's rope_ext scaling: per-pair frequency factors, linear scaling and YaRN.
// For pair i < n_dims / 2 of a head of token t:
//   extrap = positions[t] * freq_base^(-2i / n_dims) / ff[i]     (ff[i] = 1 without factors)
//   interp = freq_scale * extrap
//   without YaRN (ext_factor == 0): theta = interp, m = attn_factor
//   with YaRN: ramp = 1 - clamp((i - corr_low) / max(0.001, corr_high - corr_low), 0, 1),
//              mix = ramp * ext_factor, theta = interp * (1 - mix) + extrap * mix,
//              m = attn_factor * (1 + 0.1 * ln(1 / freq_scale))
//   (a, b) <- (a c - b s, a s + b c) with c = cos(theta) * m, s = sin(theta) * m, where
//   normal (neox = 0): a = x[2i], b = x[2i + 1]            (GGML rope mode 0, Llama)
//   neox   (neox = 1): a = x[i], b = x[i + n_dims / 2]     (GGML rope mode 2, Qwen, Gemma, Phi-3)
// Dimensions n_dims..head_dim - 1 (partial rotation) are left as they are. corr_low/corr_high is
// ggml's YaRN correction range (ggml_rope_yarn_corr_dims), computed on the host.
//
// rope_f32(x, positions, freq_factors, n_heads, head_dim, n_dims, freq_base, freq_scale,
//          ext_factor, attn_factor, corr_low, corr_high, neox):
//   n_dims even, <= head_dim. positions: n_tokens u32. freq_factors: n_dims / 2 f32, or null.
// Launch: blockDim.x = 64 (pairs, strided when n_dims / 2 > 64), gridDim = (n_heads, n_tokens).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(64)
    rope_f32(float *__restrict__ x, const unsigned int *__restrict__ positions,
             const float *__restrict__ freq_factors, int n_heads, int head_dim, int n_dims,
             float freq_base, float freq_scale, float ext_factor, float attn_factor,
             float corr_low, float corr_high, int neox) {
    const int h = blockIdx.x;
    const int t = blockIdx.y;
    float *xh = x + ((long long)t * n_heads + h) * head_dim;
    const float pos = (float)positions[t];
    const int half_dims = n_dims / 2;
    // The YaRN magnitude correction is the same for every pair.
    const float yarn_mscale =
        ext_factor != 0.0f ? attn_factor * (1.0f + 0.1f * logf(1.0f / freq_scale)) : attn_factor;
    const float corr_width = fmaxf(0.001f, corr_high - corr_low);
    for (int i = threadIdx.x; i < half_dims; i += blockDim.x) {
        const float factor = freq_factors != nullptr ? freq_factors[i] : 1.0f;
        const float extrap = pos * powf(freq_base, -2.0f * (float)i / (float)n_dims) / factor;
        const float interp = freq_scale * extrap;
        float theta = interp;
        if (ext_factor != 0.0f) {
            const float y = ((float)i - corr_low) / corr_width;
            const float mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * ext_factor;
            theta = interp * (1.0f - mix) + extrap * mix;
        }
        float s, c;
        sincosf(theta, &s, &c);
        c *= yarn_mscale;
        s *= yarn_mscale;
        const int ia = neox ? i : 2 * i;
        const int ib = neox ? i + half_dims : 2 * i + 1;
        const float a = xh[ia];
        const float b = xh[ib];
        xh[ia] = a * c - b * s;
        xh[ib] = a * s + b * c;
    }
}
