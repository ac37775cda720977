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
//
// rope_store_f16(q, k, v, caches, positions, rope, ...) is a decode layer's whole step between
// its q/k/v products and attention, in one launch: biases, per-head RMS norms of q and k, rope of
// q and k, the query scale, and the keys and values stored into f16 caches (see its comment).
#include "common.cuh"
#include "kv.cuh"

// The rotation of pair i of a head at position `pos` (the formulas above): writes the cosine
// and sine, each times the magnitude correction, to c and s.
static __device__ __forceinline__ void rope_angle(int i, float pos, const float *freq_factors,
                                                  int n_dims, float freq_base, float freq_scale,
                                                  float ext_factor, float attn_factor,
                                                  float corr_low, float corr_high, float &c,
                                                  float &s) {
    // The YaRN magnitude correction is the same for every pair.
    const float yarn_mscale =
        ext_factor != 0.0f ? attn_factor * (1.0f + 0.1f * logf(1.0f / freq_scale)) : attn_factor;
    const float corr_width = fmaxf(0.001f, corr_high - corr_low);
    const float factor = freq_factors != nullptr ? freq_factors[i] : 1.0f;
    const float extrap = pos * powf(freq_base, -2.0f * (float)i / (float)n_dims) / factor;
    const float interp = freq_scale * extrap;
    float theta = interp;
    if (ext_factor != 0.0f) {
        const float y = ((float)i - corr_low) / corr_width;
        const float mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * ext_factor;
        theta = interp * (1.0f - mix) + extrap * mix;
    }
    sincosf(theta, &s, &c);
    c *= yarn_mscale;
    s *= yarn_mscale;
}

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
    for (int i = threadIdx.x; i < half_dims; i += blockDim.x) {
        float c, s;
        rope_angle(i, pos, freq_factors, n_dims, freq_base, freq_scale, ext_factor, attn_factor,
                   corr_low, corr_high, c, s);
        const int ia = neox ? i : 2 * i;
        const int ib = neox ? i + half_dims : 2 * i + 1;
        const float a = xh[ia];
        const float b = xh[ib];
        xh[ia] = a * c - b * s;
        xh[ib] = a * s + b * c;
    }
}

// The rope parameters of rope_f32, by value (rope_store_f16's argument).
struct RopeArgs {
    int n_dims;
    float freq_base, freq_scale, ext_factor, attn_factor, corr_low, corr_high;
    int neox;
};

// Most values of a head (head_dim <= 256) and threads of a rope_store_f16 block.
#define ROPE_STORE_MAX_HEAD 256
#define ROPE_STORE_THREADS 128

// rope_store_f16(q, k, v, bq, bk, bv, q_norm, k_norm, freq_factors, positions, caches, rope,
//                n_heads, n_kv_heads, head_dim, eps, q_scale):
// for each token t and head h of the combined list [n_heads query heads | n_kv_heads key heads |
// n_kv_heads value heads] of rows q (n_tokens x n_heads * head_dim), k and v (n_tokens x
// n_kv_heads * head_dim):
//   1. + bias (bq / bk / bv, when not null: one value per column of the row);
//   2. query and key heads: x = x / sqrt(mean(x^2) + eps) * norm (q_norm / k_norm, head_dim
//      values, when not null), as rms_norm_f32 over the head;
//   3. query and key heads: rope as rope_f32 with `rope` and freq_factors (or null);
//   4. query heads: x *= q_scale (1 for none);
// then query heads are written back to q and key heads to k; key and value heads are stored as
// f16 (rounded to nearest even, as kv_store_f16) at row positions[t] of the caches of token t's
// sequence (caches.k/v[s] with s the segment whose rows caches.first[s]..first[s + 1] hold t).
// Preconditions: head_dim <= 256, n_dims even <= head_dim, every position < its cache's
// capacity, caches.n >= 1 segments covering every token (host-checked).
// Launch: blockDim.x = 128; gridDim = (n_heads + 2 * n_kv_heads, n_tokens).
extern "C" __global__ void __launch_bounds__(ROPE_STORE_THREADS)
    rope_store_f16(float *__restrict__ q, float *__restrict__ k, const float *__restrict__ v,
                   const float *__restrict__ bq, const float *__restrict__ bk,
                   const float *__restrict__ bv, const float *__restrict__ q_norm,
                   const float *__restrict__ k_norm, const float *__restrict__ freq_factors,
                   const unsigned int *__restrict__ positions, KvSeqs caches, RopeArgs rope,
                   int n_heads, int n_kv_heads, int head_dim, float eps, float q_scale) {
    __shared__ float x[ROPE_STORE_MAX_HEAD];
    __shared__ float scratch[32];
    const int t = blockIdx.y;
    const int h = blockIdx.x;
    // Which of q, k, v and which head of it.
    const int part = h < n_heads ? 0 : h < n_heads + n_kv_heads ? 1 : 2;
    const int head = part == 0 ? h : part == 1 ? h - n_heads : h - n_heads - n_kv_heads;
    const int width = (part == 0 ? n_heads : n_kv_heads) * head_dim;
    const float *src = part == 0 ? q : part == 1 ? k : v;
    const float *bias = part == 0 ? bq : part == 1 ? bk : bv;
    const float *norm = part == 0 ? q_norm : part == 1 ? k_norm : nullptr;
    const long long at = (long long)t * width + head * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float val = src[at + i];
        if (bias != nullptr) {
            val += bias[head * head_dim + i];
        }
        x[i] = val;
    }
    if (norm != nullptr) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            ss = fmaf(x[i], x[i], ss);
        }
        ss = block_sum(ss, scratch); // its barriers order the writes above before the reads below
        const float inv = rsqrtf(ss / (float)head_dim + eps);
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            x[i] = x[i] * inv * norm[i];
        }
    }
    __syncthreads();
    if (part < 2) {
        const float pos = (float)positions[t];
        const int half_dims = rope.n_dims / 2;
        for (int i = threadIdx.x; i < half_dims; i += blockDim.x) {
            float c, s;
            rope_angle(i, pos, freq_factors, rope.n_dims, rope.freq_base, rope.freq_scale,
                       rope.ext_factor, rope.attn_factor, rope.corr_low, rope.corr_high, c, s);
            const int ia = rope.neox ? i : 2 * i;
            const int ib = rope.neox ? i + half_dims : 2 * i + 1;
            const float a = x[ia];
            const float b = x[ib];
            x[ia] = a * c - b * s;
            x[ib] = a * s + b * c;
        }
        __syncthreads();
    }
    if (part == 0) {
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            q[at + i] = x[i] * q_scale;
        }
        return;
    }
    if (part == 1) {
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            k[at + i] = x[i];
        }
    }
    int seg = 0;
    while (seg + 1 < caches.n && t >= caches.first[seg + 1]) {
        ++seg;
    }
    __half *cache = (__half *)(part == 1 ? caches.k[seg] : caches.v[seg]);
    const long long row = (long long)positions[t] * width + head * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        cache[row + i] = __float2half(x[i]);
    }
}
