// Every block-quantized weight type as signed bytes with a scale and an offset, for the int8
// tensor-core products of mmq.cu: int8w<TYPE>::unpack8(b, g, q0, q1, scale, offset) gives the 8
// weights of group g of block b (the same 8 as deq<TYPE>::dequant8, dequantize.cuh) as signed
// bytes q (q0: weights 0..3, q1: weights 4..7, low byte first) with
//     weight = scale * q + offset
// equal, in f32, to what dequant8 computes (host_check/check.py checks this for every group of
// every type). Two consecutive groups 2c and 2c+1 always share scale and offset, so a 16-weight
// chunk has one of each (the smallest scale granularity of any type is 16 weights: Q2_K, Q3_K,
// Q6_K, IQ2_XS, IQ2_S, IQ1_M). The offset is zero but for the types with a min (Q4_1, Q5_1,
// Q2_K, Q4_K, Q5_K: int8w<TYPE>::has_offset); IQ1_S's and IQ1_M's grid shift of +-1/8 is folded
// into the bytes (8 * (v + delta) = 8v +- 1, scale / 8), so it needs none.
#pragma once

#include "dequantize.cuh"

template <int TYPE> struct int8w;

// Four signed values as the bytes of an int, the first lowest.
static __device__ __forceinline__ int pack4(int a, int b, int c, int d) {
    return (int)((unsigned int)(a & 0xFF) | ((unsigned int)(b & 0xFF) << 8) |
                 ((unsigned int)(c & 0xFF) << 16) | ((unsigned int)(d & 0xFF) << 24));
}

// The low 4 bits of `bits` as bit 4 of each byte of an int (Q5's fifth bits).
static __device__ __forceinline__ int bit4_bytes(unsigned int bits) {
    return (int)(((bits & 1u) << 4) | ((bits & 2u) << 11) | ((bits & 4u) << 18) | ((bits & 8u) << 25));
}

// Q4_0, group g: nibbles (shift 4 for g >= 2) of qs[8(g % 2)..] minus 8.
template <> struct int8w<LLMD_TYPE_Q4_0> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_q4_0 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int shift = g < 2 ? 0 : 4;
        const unsigned char *qs = b.qs + 8 * (g & 1);
        q0 = (int)__vsub4((unsigned int)(load_int_b2(qs, 0) >> shift) & 0x0F0F0F0Fu, 0x08080808u);
        q1 = (int)__vsub4((unsigned int)(load_int_b2(qs, 1) >> shift) & 0x0F0F0F0Fu, 0x08080808u);
        scale = __half2float(b.d);
        offset = 0.0f;
    }
};

// Q4_1, group g: Q4_0's nibbles, offset m.
template <> struct int8w<LLMD_TYPE_Q4_1> {
    static constexpr bool has_offset = true;
    static __device__ __forceinline__ void unpack8(const block_q4_1 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int shift = g < 2 ? 0 : 4;
        const unsigned char *qs = b.qs + 8 * (g & 1);
        q0 = (load_int_b4(qs, 0) >> shift) & 0x0F0F0F0F;
        q1 = (load_int_b4(qs, 1) >> shift) & 0x0F0F0F0F;
        scale = __half2float(b.d);
        offset = __half2float(b.m);
    }
};

// The 5-bit values of weights 8g..8g+7 of a Q5_0 / Q5_1 block (q5_value, four at a time).
static __device__ __forceinline__ void q5_bytes(const unsigned char *qs, unsigned int qh, int g,
                                                int &q0, int &q1) {
    const int shift = g < 2 ? 0 : 4;
    const unsigned char *lo = qs + 8 * (g & 1);
    q0 = ((load_int_b2(lo, 0) >> shift) & 0x0F0F0F0F) | bit4_bytes(qh >> (8 * g));
    q1 = ((load_int_b2(lo, 1) >> shift) & 0x0F0F0F0F) | bit4_bytes(qh >> (8 * g + 4));
}

// Q5_0, group g: 5-bit values minus 16.
template <> struct int8w<LLMD_TYPE_Q5_0> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_q5_0 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        q5_bytes(b.qs, (unsigned int)load_int_b2(b.qh, 0), g, q0, q1);
        q0 = (int)__vsub4((unsigned int)q0, 0x10101010u);
        q1 = (int)__vsub4((unsigned int)q1, 0x10101010u);
        scale = __half2float(b.d);
        offset = 0.0f;
    }
};

// Q5_1, group g: 5-bit values, offset m.
template <> struct int8w<LLMD_TYPE_Q5_1> {
    static constexpr bool has_offset = true;
    static __device__ __forceinline__ void unpack8(const block_q5_1 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        q5_bytes(b.qs, (unsigned int)load_int_b4(b.qh, 0), g, q0, q1);
        scale = __half2float(b.d);
        offset = __half2float(b.m);
    }
};

// Q8_0, group g: the bytes themselves.
template <> struct int8w<LLMD_TYPE_Q8_0> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_q8_0 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        q0 = load_int_b2(b.qs, 2 * g);
        q1 = load_int_b2(b.qs, 2 * g + 1);
        scale = __half2float(b.d);
        offset = 0.0f;
    }
};

// Q2_K, group g: 2-bit values at shift 2j of qs[32n + l..]; scale d * sc, offset -dmin * m of
// sub-block 8n + 2j + l / 16 (dequant8's indices).
template <> struct int8w<LLMD_TYPE_Q2_K> {
    static constexpr bool has_offset = true;
    static __device__ __forceinline__ void unpack8(const block_q2_K &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int e = 8 * g;
        const int n = e / 128, j = (e % 128) / 32, l = e % 32;
        const int sc = b.scales[8 * n + 2 * j + l / 16];
        q0 = (load_int_b4(b.qs, (32 * n + l) / 4) >> (2 * j)) & 0x03030303;
        q1 = (load_int_b4(b.qs, (32 * n + l) / 4 + 1) >> (2 * j)) & 0x03030303;
        scale = __half2float(b.d) * (float)(sc & 0xF);
        offset = -(__half2float(b.dmin) * (float)(sc >> 4));
    }
};

// Q3_K, group g: Q2_K's low bits minus 4 where the hmask bit is clear; scale d * q3_K_scale.
template <> struct int8w<LLMD_TYPE_Q3_K> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_q3_K &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int e = 8 * g;
        const int n = e / 128, j = (e % 128) / 32, l = e % 32;
        int q[2];
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const unsigned int low = (unsigned int)(load_int_b2(b.qs, (32 * n + l) / 4 + k) >> (2 * j)) & 0x03030303u;
            const unsigned int clear = ~(unsigned int)(load_int_b2(b.hmask, l / 4 + k) >> (4 * n + j)) & 0x01010101u;
            q[k] = (int)__vsub4(low, clear << 2);
        }
        q0 = q[0];
        q1 = q[1];
        scale = __half2float(b.d) * (float)q3_K_scale(b.scales, 8 * n + 2 * j + l / 16);
        offset = 0.0f;
    }
};

// Q4_K, group g: nibbles (high for the second 32 of a 64-weight chunk) of qs[32j + l..];
// scale d * sc, offset -dmin * m of sub-block 2j + hi.
template <> struct int8w<LLMD_TYPE_Q4_K> {
    static constexpr bool has_offset = true;
    static __device__ __forceinline__ void unpack8(const block_q4_K &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int e = 8 * g;
        const int j = e / 64, hi = (e % 64) / 32, l = e % 32;
        int sc, m;
        q4_K_scale_min(2 * j + hi, b.scales, sc, m);
        q0 = (load_int_b4(b.qs, (32 * j + l) / 4) >> (4 * hi)) & 0x0F0F0F0F;
        q1 = (load_int_b4(b.qs, (32 * j + l) / 4 + 1) >> (4 * hi)) & 0x0F0F0F0F;
        scale = __half2float(b.d) * (float)sc;
        offset = -(__half2float(b.dmin) * (float)m);
    }
};

// Q5_K, group g: Q4_K's nibbles with bit s = 2j + hi of qh[l..] as bit 4.
template <> struct int8w<LLMD_TYPE_Q5_K> {
    static constexpr bool has_offset = true;
    static __device__ __forceinline__ void unpack8(const block_q5_K &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int e = 8 * g;
        const int j = e / 64, hi = (e % 64) / 32, l = e % 32;
        const int s = 2 * j + hi;
        int sc, m;
        q4_K_scale_min(s, b.scales, sc, m);
        const int h0 = (load_int_b4(b.qh, l / 4) >> s) & 0x01010101;
        const int h1 = (load_int_b4(b.qh, l / 4 + 1) >> s) & 0x01010101;
        q0 = ((load_int_b4(b.qs, (32 * j + l) / 4) >> (4 * hi)) & 0x0F0F0F0F) | (h0 << 4);
        q1 = ((load_int_b4(b.qs, (32 * j + l) / 4 + 1) >> (4 * hi)) & 0x0F0F0F0F) | (h1 << 4);
        scale = __half2float(b.d) * (float)sc;
        offset = -(__half2float(b.dmin) * (float)m);
    }
};

// Q6_K, group g: 4 low bits from ql, 2 high bits from qh, minus 32; scale d * scales[..].
template <> struct int8w<LLMD_TYPE_Q6_K> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_q6_K &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int e = 8 * g;
        const int n = e / 128, q = (e % 128) / 32, l = e % 32;
        const int shift = 4 * (q >> 1);
        int v[2];
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int lo = (load_int_b2(b.ql, (64 * n + 32 * (q & 1) + l) / 4 + k) >> shift) & 0x0F0F0F0F;
            const int hi = (load_int_b2(b.qh, (32 * n + l) / 4 + k) >> (2 * q)) & 0x03030303;
            v[k] = (int)__vsub4((unsigned int)(lo | (hi << 4)), 0x20202020u);
        }
        q0 = v[0];
        q1 = v[1];
        scale = __half2float(b.d) * (float)b.scales[8 * n + l / 16 + 2 * q];
        offset = 0.0f;
    }
};

// The IQ grid formats: the 8 magnitudes of `grid` (low byte first) negated where `signs` has
// its bits set, as signed_grid8 applies them.
static __device__ __forceinline__ void signed_grid_bytes(unsigned long long grid, unsigned int signs,
                                                         int &q0, int &q1) {
    q0 = apply_signs((unsigned int)grid, signs & 0xF);
    q1 = apply_signs((unsigned int)(grid >> 32), (signs >> 4) & 0xF);
}

// IQ2_XXS, group g: as dequant8, scale db.
template <> struct int8w<LLMD_TYPE_IQ2_XXS> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq2_xxs &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int s = g / 4, l = g % 4;
        const unsigned int indices = (unsigned int)load_int_b2(b.qs, 2 * s);
        const unsigned int aux = (unsigned int)load_int_b2(b.qs, 2 * s + 1);
        signed_grid_bytes(iq2xxs_grid[(indices >> (8 * l)) & 0xFF], iq_signs(aux >> (7 * l)), q0, q1);
        scale = __half2float(b.d) * (0.5f + (float)(aux >> 28)) * 0.25f;
        offset = 0.0f;
    }
};

// IQ2_XS, group g: as dequant8, scale db.
template <> struct int8w<LLMD_TYPE_IQ2_XS> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq2_xs &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const unsigned int q = b.qs[g];
        const int ls = (b.scales[g / 4] >> (4 * ((g % 4) / 2))) & 0xF;
        signed_grid_bytes(iq2xs_grid[q & 511], iq_signs(q >> 9), q0, q1);
        scale = __half2float(b.d) * (0.5f + (float)ls) * 0.25f;
        offset = 0.0f;
    }
};

// IQ2_S, group g: as dequant8, scale db.
template <> struct int8w<LLMD_TYPE_IQ2_S> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq2_s &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int s = g / 4, l = g % 4;
        const int index = b.qs[g] | (((b.qh[s] >> (2 * l)) & 3) << 8);
        const int ls = (b.scales[s] >> (4 * (l / 2))) & 0xF;
        signed_grid_bytes(iq2s_grid[index], b.qs[32 + g], q0, q1);
        scale = __half2float(b.d) * (0.5f + (float)ls) * 0.25f;
        offset = 0.0f;
    }
};

// IQ3_XXS, group g: as dequant8, scale db.
template <> struct int8w<LLMD_TYPE_IQ3_XXS> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq3_xxs &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const unsigned int aux = (unsigned int)load_int_b2(b.qs, 16 + g / 4);
        const unsigned long long grid = (unsigned long long)iq3xxs_grid[b.qs[2 * g]] |
                                        ((unsigned long long)iq3xxs_grid[b.qs[2 * g + 1]] << 32);
        signed_grid_bytes(grid, iq_signs(aux >> (7 * (g % 4))), q0, q1);
        scale = __half2float(b.d) * (0.5f + (float)(aux >> 28)) * 0.5f;
        offset = 0.0f;
    }
};

// IQ3_S, group g: as dequant8, scale db.
template <> struct int8w<LLMD_TYPE_IQ3_S> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq3_s &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int s = g / 4, l = g % 4;
        const int qh = b.qh[s];
        const int i0 = b.qs[2 * g] | (((qh >> (2 * l)) & 1) << 8);
        const int i1 = b.qs[2 * g + 1] | (((qh >> (2 * l + 1)) & 1) << 8);
        const unsigned long long grid =
            (unsigned long long)iq3s_grid[i0] | ((unsigned long long)iq3s_grid[i1] << 32);
        signed_grid_bytes(grid, b.signs[g], q0, q1);
        const int ls = (b.scales[s / 2] >> (4 * (s % 2))) & 0xF;
        scale = __half2float(b.d) * (float)(1 + 2 * ls);
        offset = 0.0f;
    }
};

// IQ1_S / IQ1_M: the 8 values 8 * (v + delta) = 8v +- 1 of a packed grid entry (iq1_grid8's
// v = nibble - 1), for a scale of dl / 8.
static __device__ __forceinline__ void iq1_bytes(unsigned int packed, bool negative_delta, int &q0,
                                                 int &q1) {
    const int shift = negative_delta ? -1 : 1;
    int v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = 8 * ((int)((packed >> (8 * (i % 4) + 4 * (i / 4))) & 0xF) - 1) + shift;
    }
    q0 = pack4(v[0], v[1], v[2], v[3]);
    q1 = pack4(v[4], v[5], v[6], v[7]);
}

// IQ1_S, group g: as dequant8, the delta folded into the bytes, scale dl / 8.
template <> struct int8w<LLMD_TYPE_IQ1_S> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq1_s &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const unsigned int qh = b.qh[g / 4];
        iq1_bytes(iq1s_grid_packed[b.qs[g] | (((qh >> (3 * (g % 4))) & 7) << 8)], qh & 0x8000, q0, q1);
        scale = __half2float(b.d) * (float)(2 * ((qh >> 12) & 7) + 1) * 0.125f;
        offset = 0.0f;
    }
};

// IQ1_M, group g: as dequant8 (its delta's sign per 8 weights), scale dl / 8.
template <> struct int8w<LLMD_TYPE_IQ1_M> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq1_m &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const unsigned short *sc = (const unsigned short *)b.scales;
        const int ls = (sc[g / 8] >> (3 * ((g % 8) / 2))) & 7;
        const int qhn = (b.qh[g / 2] >> (4 * (g % 2))) & 0xF;
        iq1_bytes(iq1s_grid_packed[b.qs[g] | ((qhn & 7) << 8)], qhn & 8, q0, q1);
        scale = iq1_m_scale(b) * (float)(2 * ls + 1) * 0.125f;
        offset = 0.0f;
    }
};

// IQ4_NL, group g: kvalues_iq4nl of Q4_0's nibbles.
template <> struct int8w<LLMD_TYPE_IQ4_NL> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq4_nl &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const unsigned char *qs = b.qs + 8 * (g & 1);
        const int shift = 4 * (g / 2);
        q0 = lookup16(kvalues_iq4nl_packed, (load_int_b2(qs, 0) >> shift) & 0x0F0F0F0F);
        q1 = lookup16(kvalues_iq4nl_packed, (load_int_b2(qs, 1) >> shift) & 0x0F0F0F0F);
        scale = __half2float(b.d);
        offset = 0.0f;
    }
};

// IQ4_XS, group g: IQ4_NL's values within sub-block s = g / 4, scale d * (ls - 32).
template <> struct int8w<LLMD_TYPE_IQ4_XS> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_iq4_xs &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int s = g / 4, k = g % 4;
        const int ls = ((b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((b.scales_h >> (2 * s)) & 3) << 4);
        const unsigned char *qs = b.qs + 16 * s + 8 * (k & 1);
        const int shift = 4 * (k / 2);
        q0 = lookup16(kvalues_iq4nl_packed, (load_int_b2(qs, 0) >> shift) & 0x0F0F0F0F);
        q1 = lookup16(kvalues_iq4nl_packed, (load_int_b2(qs, 1) >> shift) & 0x0F0F0F0F);
        scale = __half2float(b.d) * (float)(ls - 32);
        offset = 0.0f;
    }
};

// TQ1_0, group g: base-3 digits minus 1.
template <> struct int8w<LLMD_TYPE_TQ1_0> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_tq1_0 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        q0 = (int)__vsub4((unsigned int)tq1_digits4(b, 8 * g), 0x01010101u);
        q1 = (int)__vsub4((unsigned int)tq1_digits4(b, 8 * g + 4), 0x01010101u);
        scale = __half2float(b.d);
        offset = 0.0f;
    }
};

// TQ2_0, group g: Q2_K's 2-bit layout minus 1.
template <> struct int8w<LLMD_TYPE_TQ2_0> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_tq2_0 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const int e = 8 * g;
        const int n = e / 128, j = (e % 128) / 32, l = e % 32;
        q0 = (int)__vsub4((unsigned int)(load_int_b2(b.qs, (32 * n + l) / 4) >> (2 * j)) & 0x03030303u, 0x01010101u);
        q1 = (int)__vsub4((unsigned int)(load_int_b2(b.qs, (32 * n + l) / 4 + 1) >> (2 * j)) & 0x03030303u,
                          0x01010101u);
        scale = __half2float(b.d);
        offset = 0.0f;
    }
};

// MXFP4, group g: kvalues_mxfp4 of Q4_0's nibble layout, scale 2^(e - 128).
template <> struct int8w<LLMD_TYPE_MXFP4> {
    static constexpr bool has_offset = false;
    static __device__ __forceinline__ void unpack8(const block_mxfp4 &b, int g, int &q0, int &q1,
                                                   float &scale, float &offset) {
        const unsigned char *qs = b.qs + 8 * (g & 1);
        const int shift = 4 * (g / 2);
        q0 = lookup16(kvalues_mxfp4_packed, (load_int_b1(qs, 0) >> shift) & 0x0F0F0F0F);
        q1 = lookup16(kvalues_mxfp4_packed, (load_int_b1(qs, 1) >> shift) & 0x0F0F0F0F);
        scale = e8m0_half(b.e);
        offset = 0.0f;
    }
};
