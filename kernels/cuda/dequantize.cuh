// Per-type dequantization of 8 consecutive weights ("group" g of a block), shared by the
// dequantize_* kernels (dequantize.cu) and the embedding lookups (getrows.cu).
// Formulas follow GGML's dequantize_row_* (kernels/src/quant/ on the CPU side).
#pragma once

#include "common.cuh"

// Q4_0, group g (0..3): weights 8g..8g+7; g < 2 are low nibbles of qs[8g..], else high nibbles
// of qs[8(g-2)..].
static __device__ __forceinline__ void dequant8_q4_0(const block_q4_0 &b, int g, float *v) {
    const float d = __half2float(b.d);
    const int shift = g < 2 ? 0 : 4;
    const int base = 8 * (g & 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = d * (float)(((b.qs[base + i] >> shift) & 0xF) - 8);
    }
}

// Q5_0, group g (0..3): as Q4_0 plus bit (8g + i) of qh as bit 4.
static __device__ __forceinline__ void dequant8_q5_0(const block_q5_0 &b, int g, float *v) {
    const float d = __half2float(b.d);
    const unsigned int qh = (unsigned int)load_int_b2(b.qh, 0);
    const int shift = g < 2 ? 0 : 4;
    const int base = 8 * (g & 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int hbit = (int)((qh >> (8 * g + i)) & 1u) << 4;
        v[i] = d * (float)((((b.qs[base + i] >> shift) & 0xF) | hbit) - 16);
    }
}

// Q8_0, group g (0..3): weights 8g..8g+7.
static __device__ __forceinline__ void dequant8_q8_0(const block_q8_0 &b, int g, float *v) {
    const float d = __half2float(b.d);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = d * (float)b.qs[8 * g + i];
    }
}

// Q4_K, group g (0..31): weight e = 8g lies in 64-weight chunk j = e / 64; the first 32 of a
// chunk are low nibbles of qs[32j + l], the next 32 high nibbles (sub-blocks 2j and 2j+1).
static __device__ __forceinline__ void dequant8_q4_K(const block_q4_K &b, int g, float *v) {
    const int e = 8 * g;
    const int j = e / 64;
    const int hi = (e % 64) / 32;
    const int l = e % 32;
    int sc, m;
    q4_K_scale_min(2 * j + hi, b.scales, sc, m);
    const float d = __half2float(b.d) * (float)sc;
    const float mn = __half2float(b.dmin) * (float)m;
    const int shift = 4 * hi;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = d * (float)((b.qs[32 * j + l + i] >> shift) & 0xF) - mn;
    }
}

// Q6_K, group g (0..31): weight e = 8g is in half n = e / 128, group q = (e % 128) / 32, offset
// l = e % 32; low bits from ql[64n + 32(q & 1) + l] (high nibble when q >= 2), high bits
// 2q..2q+1 of qh[32n + l], scale scales[8n + l / 16 + 2q].
static __device__ __forceinline__ void dequant8_q6_K(const block_q6_K &b, int g, float *v) {
    const int e = 8 * g;
    const int n = e / 128;
    const int q = (e % 128) / 32;
    const int l = e % 32;
    const float d = __half2float(b.d) * (float)b.scales[8 * n + l / 16 + 2 * q];
    const int shift = 4 * (q >> 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int lo = (b.ql[64 * n + 32 * (q & 1) + l + i] >> shift) & 0xF;
        const int hi = (b.qh[32 * n + l + i] >> (2 * q)) & 3;
        v[i] = d * (float)((lo | (hi << 4)) - 32);
    }
}

// Dequantizes the 8 weights starting at element 8 * group of a row-major tensor whose rows are
// whole blocks (so the tensor is a flat array of blocks).
#define LLMD_TYPE_F32 0
#define LLMD_TYPE_F16 1
#define LLMD_TYPE_Q4_0 2
#define LLMD_TYPE_Q5_0 6
#define LLMD_TYPE_Q8_0 8
#define LLMD_TYPE_Q4_K 12
#define LLMD_TYPE_Q6_K 14

template <int TYPE>
static __device__ __forceinline__ void dequant8(const void *__restrict__ w, long long group,
                                                float *v) {
    if constexpr (TYPE == LLMD_TYPE_F32) {
        const float4 *p = (const float4 *)w + 2 * group;
        const float4 a = p[0], c = p[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = c.x; v[5] = c.y; v[6] = c.z; v[7] = c.w;
    } else if constexpr (TYPE == LLMD_TYPE_F16) {
        const __half2 *p = (const __half2 *)w + 4 * group;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(p[i]);
            v[2 * i] = f.x;
            v[2 * i + 1] = f.y;
        }
    } else if constexpr (TYPE == LLMD_TYPE_Q4_0) {
        dequant8_q4_0(((const block_q4_0 *)w)[group / 4], (int)(group % 4), v);
    } else if constexpr (TYPE == LLMD_TYPE_Q5_0) {
        dequant8_q5_0(((const block_q5_0 *)w)[group / 4], (int)(group % 4), v);
    } else if constexpr (TYPE == LLMD_TYPE_Q8_0) {
        dequant8_q8_0(((const block_q8_0 *)w)[group / 4], (int)(group % 4), v);
    } else if constexpr (TYPE == LLMD_TYPE_Q4_K) {
        dequant8_q4_K(((const block_q4_K *)w)[group / 32], (int)(group % 32), v);
    } else {
        static_assert(TYPE == LLMD_TYPE_Q6_K, "unsupported type");
        dequant8_q6_K(((const block_q6_K *)w)[group / 32], (int)(group % 32), v);
    }
}
