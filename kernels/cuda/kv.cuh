// KV cache types for kvcache.cu and attention.cu: f16 values or ggml's Q8_0 / Q4_0 blocks
// (common.cuh), the cache layout, and the warp-wide Q8_0 quantizer shared by the cache store and
// the attention kernels' query conversion.
//
// Layout (as kernels/src/backend/kv.rs): a layer's cache holds `capacity` positions of
// `width = n_kv_heads * head_dim` values; value `o = (pos * n_kv_heads + g) * head_dim + d` is
// half o of an f16 cache, or element o % 32 of block o / 32 of a Q8_0 / Q4_0 cache. head_dim is a
// multiple of 32 for the quantized types (host-checked), so a head is whole blocks.
#pragma once

#include "common.cuh"

// The KV caches of the sequences of one batch, by value in a kernel's arguments (no upload, and
// fixed in a captured CUDA graph): segment s holds the batch rows first[s] .. first[s + 1] - 1, its
// keys at k[s] and values at v[s] (device addresses), for s < n <= KV_MAX_SEQS.
#define KV_MAX_SEQS 8
struct KvSeqs {
    unsigned long long k[KV_MAX_SEQS];
    unsigned long long v[KV_MAX_SEQS];
    int first[KV_MAX_SEQS + 1];
    int n;
};

// Cache type tags (template arguments).
#define KV_F16 0
#define KV_Q8_0 1
#define KV_Q4_0 2

// Quantizes one block of 32 values held one per lane (`x`, lane = index in the block) to Q8_0 as
// ggml-cpu's x86 quantize_row_q8_0 does, which the CPU backend copies: d = amax / 127 stored as
// f16, q = round-to-nearest-even(x * (127 / amax)) (0 when amax is 0). Every lane of the warp must
// call it; returns this lane's q and sets `d` (the f16 scale) in every lane. Plain IEEE f32
// division and multiplication, as on the CPU, so the bytes are the same.
static __device__ __forceinline__ int warp_quantize_q8_0(float x, __half &d) {
    const float amax = warp_max(fabsf(x));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    d = __float2half(amax / 127.0f);
    return __float2int_rn(__fmul_rn(x, id));
}

// Four consecutive signed 8-bit values (4 * w .. 4 * w + 3, w in 0..7) of a Q8_0 or Q4_0 block,
// packed little-endian into an int for __dp4a. Q4_0 values are q - 8 (in -8..7); byte j of its qs
// holds element j (low nibble) and j + 16 (high nibble).
template <int T> static __device__ __forceinline__ int kv_block_word(const void *block, int w) {
    if constexpr (T == KV_Q8_0) {
        return load_int_b2(((const block_q8_0 *)block)->qs, w);
    } else {
        const unsigned int packed =
            (unsigned int)load_int_b2(((const block_q4_0 *)block)->qs, w & 3);
        const unsigned int nibbles = (w < 4 ? packed : packed >> 4) & 0x0f0f0f0fu;
        return __vsubss4((int)nibbles, 0x08080808);
    }
}

// The block holding cache value `o` of a quantized cache of type T.
template <int T> static __device__ __forceinline__ const void *kv_block(const void *cache, long long o) {
    if constexpr (T == KV_Q8_0) {
        return (const block_q8_0 *)cache + o / LLMD_QK;
    } else {
        return (const block_q4_0 *)cache + o / LLMD_QK;
    }
}

// The f16 scale of a Q8_0 or Q4_0 block (both start with it).
static __device__ __forceinline__ float kv_block_scale(const void *block) {
    return __half2float(*(const __half *)block);
}

// Element e (0..31) of a quantized block of type T, as a signed integer.
template <int T> static __device__ __forceinline__ int kv_block_q(const void *block, int e) {
    if constexpr (T == KV_Q8_0) {
        return ((const block_q8_0 *)block)->qs[e];
    } else {
        const unsigned char byte = ((const block_q4_0 *)block)->qs[e & 15];
        return (int)(e < 16 ? byte & 0x0f : byte >> 4) - 8;
    }
}

// Cache value `o` as f32: an f16 value, or a block's scale times its integer (the exact product
// the CPU's dequantizer computes).
template <int T> static __device__ __forceinline__ float kv_value(const void *cache, long long o) {
    if constexpr (T == KV_F16) {
        return __half2float(((const __half *)cache)[o]);
    } else {
        const void *block = kv_block<T>(cache, o);
        return kv_block_scale(block) * (float)kv_block_q<T>(block, (int)(o % LLMD_QK));
    }
}
