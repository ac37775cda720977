// Per-type dequantization of 8 consecutive weights ("group" g of a block), shared by the
// dequantize_* kernels (dequantize.cu) and the embedding lookups (getrows.cu).
// Formulas follow GGML's dequantize_row_* and the gguf package's numpy dequantizers (same
// operations in the same order, so results agree to the bit on the host emulation).
#pragma once

#include "types.cuh"
#include "unpack.cuh"

// deq<TYPE>: the block type of TYPE, its weights per block (qk) and dequant8(b, g, v), which
// writes weights 8g..8g+7 of block b to v.
template <int TYPE> struct deq;

// Q4_0, group g (0..3): weights 8g..8g+7; g < 2 are low nibbles of qs[8g..], else high nibbles
// of qs[8(g-2)..].
template <> struct deq<LLMD_TYPE_Q4_0> {
    typedef block_q4_0 block;
    static constexpr int qk = LLMD_QK;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const float d = __half2float(b.d);
        const int shift = g < 2 ? 0 : 4;
        const int base = 8 * (g & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * (float)(((b.qs[base + i] >> shift) & 0xF) - 8);
        }
    }
};

// Q4_1, group g (0..3): Q4_0's nibbles, value d * q + m.
template <> struct deq<LLMD_TYPE_Q4_1> {
    typedef block_q4_1 block;
    static constexpr int qk = LLMD_QK;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const float d = __half2float(b.d);
        const float m = __half2float(b.m);
        const int shift = g < 2 ? 0 : 4;
        const int base = 8 * (g & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * (float)((b.qs[base + i] >> shift) & 0xF) + m;
        }
    }
};

// The 5-bit value of weight w (0..31) of a Q5_0 / Q5_1 block: nibble as Q4_0, bit w of qh as
// bit 4.
static __device__ __forceinline__ int q5_value(const unsigned char *qs, unsigned int qh, int w) {
    const int nibble = (qs[w % 16] >> (4 * (w / 16))) & 0xF;
    return nibble | (int)(((qh >> w) & 1u) << 4);
}

// Q5_0, group g (0..3): value d * (q - 16).
template <> struct deq<LLMD_TYPE_Q5_0> {
    typedef block_q5_0 block;
    static constexpr int qk = LLMD_QK;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const float d = __half2float(b.d);
        const unsigned int qh = (unsigned int)load_int_b2(b.qh, 0);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * (float)(q5_value(b.qs, qh, 8 * g + i) - 16);
        }
    }
};

// Q5_1, group g (0..3): value d * q + m.
template <> struct deq<LLMD_TYPE_Q5_1> {
    typedef block_q5_1 block;
    static constexpr int qk = LLMD_QK;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const float d = __half2float(b.d);
        const float m = __half2float(b.m);
        const unsigned int qh = (unsigned int)load_int_b4(b.qh, 0);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * (float)q5_value(b.qs, qh, 8 * g + i) + m;
        }
    }
};

// Q8_0, group g (0..3): weights 8g..8g+7.
template <> struct deq<LLMD_TYPE_Q8_0> {
    typedef block_q8_0 block;
    static constexpr int qk = LLMD_QK;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const float d = __half2float(b.d);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * (float)b.qs[8 * g + i];
        }
    }
};

// Q2_K, group g (0..31): weight e = 8g is in half n = e / 128 at shift 2j, j = (e % 128) / 32,
// byte l = e % 32 of the half's 32; sub-block 8n + 2j + l / 16.
template <> struct deq<LLMD_TYPE_Q2_K> {
    typedef block_q2_K block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int e = 8 * g;
        const int n = e / 128;
        const int j = (e % 128) / 32;
        const int l = e % 32;
        const int sc = b.scales[8 * n + 2 * j + l / 16];
        const float dl = __half2float(b.d) * (float)(sc & 0xF);
        const float ml = __half2float(b.dmin) * (float)(sc >> 4);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = dl * (float)((b.qs[32 * n + l + i] >> (2 * j)) & 3) - ml;
        }
    }
};

// Q3_K, group g (0..31): Q2_K's low bits and sub-blocks, the high bit in bit 4n + j of
// hmask[l] (clear: subtract 4).
template <> struct deq<LLMD_TYPE_Q3_K> {
    typedef block_q3_K block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int e = 8 * g;
        const int n = e / 128;
        const int j = (e % 128) / 32;
        const int l = e % 32;
        const float dl = __half2float(b.d) * (float)q3_K_scale(b.scales, 8 * n + 2 * j + l / 16);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int low = (b.qs[32 * n + l + i] >> (2 * j)) & 3;
            const int high = (b.hmask[l + i] >> (4 * n + j)) & 1;
            v[i] = dl * (float)(low - (high ? 0 : 4));
        }
    }
};

// Q4_K, group g (0..31): weight e = 8g lies in 64-weight chunk j = e / 64; the first 32 of a
// chunk are low nibbles of qs[32j + l], the next 32 high nibbles (sub-blocks 2j and 2j+1).
template <> struct deq<LLMD_TYPE_Q4_K> {
    typedef block_q4_K block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
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
};

// Q5_K, group g (0..31): Q4_K's nibbles and scales, bit s of qh[l] as bit 4 of weight l of
// sub-block s.
template <> struct deq<LLMD_TYPE_Q5_K> {
    typedef block_q5_K block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int e = 8 * g;
        const int j = e / 64;
        const int hi = (e % 64) / 32;
        const int l = e % 32;
        const int s = 2 * j + hi;
        int sc, m;
        q4_K_scale_min(s, b.scales, sc, m);
        const float d = __half2float(b.d) * (float)sc;
        const float mn = __half2float(b.dmin) * (float)m;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int q = ((b.qs[32 * j + l + i] >> (4 * hi)) & 0xF) | (((b.qh[l + i] >> s) & 1) << 4);
            v[i] = d * (float)q - mn;
        }
    }
};

// Q6_K, group g (0..31): weight e = 8g is in half n = e / 128, group q = (e % 128) / 32, offset
// l = e % 32; low bits from ql[64n + 32(q & 1) + l] (high nibble when q >= 2), high bits
// 2q..2q+1 of qh[32n + l], scale scales[8n + l / 16 + 2q].
template <> struct deq<LLMD_TYPE_Q6_K> {
    typedef block_q6_K block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
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
};

// The IQ grid formats: 8 magnitudes (bytes of `grid`, low byte first), each times `db` and
// negated where the matching bit of `signs` is set.
static __device__ __forceinline__ void signed_grid8(float db, unsigned long long grid,
                                                   unsigned int signs, float *v) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = db * (float)((grid >> (8 * i)) & 0xFF) * ((signs >> i) & 1 ? -1.0f : 1.0f);
    }
}

// IQ2_XXS, group g (0..31): group l = g % 4 of sub-block s = g / 4.
template <> struct deq<LLMD_TYPE_IQ2_XXS> {
    typedef block_iq2_xxs block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int s = g / 4, l = g % 4;
        const unsigned int indices = (unsigned int)load_int_b2(b.qs, 2 * s);
        const unsigned int aux = (unsigned int)load_int_b2(b.qs, 2 * s + 1);
        const float db = __half2float(b.d) * (0.5f + (float)(aux >> 28)) * 0.25f;
        signed_grid8(db, iq2xxs_grid[(indices >> (8 * l)) & 0xFF], iq_signs(aux >> (7 * l)), v);
    }
};

// IQ2_XS, group g (0..31): qs[g] is the grid index (low 9 bits) and sign pattern; the scale is
// nibble (g % 4) / 2 of scales[g / 4].
template <> struct deq<LLMD_TYPE_IQ2_XS> {
    typedef block_iq2_xs block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const unsigned int q = b.qs[g];
        const int ls = (b.scales[g / 4] >> (4 * ((g % 4) / 2))) & 0xF;
        const float db = __half2float(b.d) * (0.5f + (float)ls) * 0.25f;
        signed_grid8(db, iq2xs_grid[q & 511], iq_signs(q >> 9), v);
    }
};

// IQ2_S, group g (0..31): index qs[g] plus bits 2(g % 4).. of qh[g / 4] as bits 8-9; signs
// qs[32 + g].
template <> struct deq<LLMD_TYPE_IQ2_S> {
    typedef block_iq2_s block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int s = g / 4, l = g % 4;
        const int index = b.qs[g] | (((b.qh[s] >> (2 * l)) & 3) << 8);
        const int ls = (b.scales[s] >> (4 * (l / 2))) & 0xF;
        const float db = __half2float(b.d) * (0.5f + (float)ls) * 0.25f;
        signed_grid8(db, iq2s_grid[index], b.qs[32 + g], v);
    }
};

// IQ3_XXS, group g (0..31): grid indices qs[2g], qs[2g+1] (4 magnitudes each); the sub-block's
// u32 at qs[64 + 4(g / 4)] holds the sign pattern (bits 7(g % 4)..) and scale (top 4 bits).
template <> struct deq<LLMD_TYPE_IQ3_XXS> {
    typedef block_iq3_xxs block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const unsigned int aux = (unsigned int)load_int_b2(b.qs, 16 + g / 4);
        const float db = __half2float(b.d) * (0.5f + (float)(aux >> 28)) * 0.5f;
        const unsigned long long grid = (unsigned long long)iq3xxs_grid[b.qs[2 * g]] |
                                        ((unsigned long long)iq3xxs_grid[b.qs[2 * g + 1]] << 32);
        signed_grid8(db, grid, iq_signs(aux >> (7 * (g % 4))), v);
    }
};

// IQ3_S, group g (0..31): indices qs[2g + k] plus bit 2(g % 4) + k of qh[g / 4] as bit 8; signs
// signs[g]; scale nibble (g / 4) % 2 of scales[g / 8].
template <> struct deq<LLMD_TYPE_IQ3_S> {
    typedef block_iq3_s block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int s = g / 4, l = g % 4;
        const int qh = b.qh[s];
        const int i0 = b.qs[2 * g] | (((qh >> (2 * l)) & 1) << 8);
        const int i1 = b.qs[2 * g + 1] | (((qh >> (2 * l + 1)) & 1) << 8);
        const int ls = (b.scales[s / 2] >> (4 * (s % 2))) & 0xF;
        const float db = __half2float(b.d) * (float)(1 + 2 * ls);
        const unsigned long long grid =
            (unsigned long long)iq3s_grid[i0] | ((unsigned long long)iq3s_grid[i1] << 32);
        signed_grid8(db, grid, b.signs[g], v);
    }
};

// IQ1_S / IQ1_M: 8 values dl * (v + delta), v in {-1, 0, 1} from iq1s_grid_packed (v + 1 in
// nibbles: bytes' low nibbles are values 0..3, high nibbles values 4..7).
static __device__ __forceinline__ void iq1_grid8(float dl, float delta, unsigned int packed,
                                                 float *v) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int q = (int)((packed >> (8 * (i % 4) + 4 * (i / 4))) & 0xF) - 1;
        v[i] = dl * ((float)q + delta);
    }
}

// IQ1_S, group g (0..31): index qs[g] plus bits 3(g % 4).. of qh[g / 4].
template <> struct deq<LLMD_TYPE_IQ1_S> {
    typedef block_iq1_s block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const unsigned int qh = b.qh[g / 4];
        const float dl = __half2float(b.d) * (float)(2 * ((qh >> 12) & 7) + 1);
        const float delta = qh & 0x8000 ? -LLMD_IQ1_DELTA : LLMD_IQ1_DELTA;
        iq1_grid8(dl, delta, iq1s_grid_packed[b.qs[g] | (((qh >> (3 * (g % 4))) & 7) << 8)], v);
    }
};

// IQ1_M, group g (0..31): index qs[g] plus the low 3 bits of nibble g % 2 of qh[g / 2], whose
// bit 3 is the delta's sign; 3-bit scale (g % 8) / 2 of the u16 scales[g / 8] (bits 3k..).
template <> struct deq<LLMD_TYPE_IQ1_M> {
    typedef block_iq1_m block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const unsigned short *sc = (const unsigned short *)b.scales;
        const int ls = (sc[g / 8] >> (3 * ((g % 8) / 2))) & 7;
        const float dl = iq1_m_scale(b) * (float)(2 * ls + 1);
        const int qhn = (b.qh[g / 2] >> (4 * (g % 2))) & 0xF;
        const float delta = qhn & 8 ? -LLMD_IQ1_DELTA : LLMD_IQ1_DELTA;
        iq1_grid8(dl, delta, iq1s_grid_packed[b.qs[g] | ((qhn & 7) << 8)], v);
    }
};

// 8 values d * table[nibble] of the low (hi = 0) or high (hi = 1) nibbles of the 8 bytes at
// `qs` (2-byte aligned), the table a 16-entry one of iq_tables.cuh.
static __device__ __forceinline__ void table8(float d, const unsigned int *table,
                                              const unsigned char *qs, int hi, float *v) {
#pragma unroll
    for (int k = 0; k < 2; ++k) {
        const int q = lookup16(table, (load_int_b2(qs, k) >> (4 * hi)) & 0x0F0F0F0F);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            v[4 * k + i] = d * (float)(signed char)(q >> (8 * i));
        }
    }
}

// IQ4_NL, group g (0..3): Q4_0's nibble layout, values from kvalues_iq4nl.
template <> struct deq<LLMD_TYPE_IQ4_NL> {
    typedef block_iq4_nl block;
    static constexpr int qk = LLMD_QK;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        table8(__half2float(b.d), kvalues_iq4nl_packed, b.qs + 8 * (g & 1), g / 2, v);
    }
};

// IQ4_XS, group g (0..31): group g % 4 of sub-block s = g / 4 (IQ4_NL's layout within
// qs[16s..16s+16]), scale (scales_l nibble s % 2 of byte s / 2, bits 2s.. of scales_h) - 32.
template <> struct deq<LLMD_TYPE_IQ4_XS> {
    typedef block_iq4_xs block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int s = g / 4, k = g % 4;
        const int ls = ((b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((b.scales_h >> (2 * s)) & 3) << 4);
        const float dl = __half2float(b.d) * (float)(ls - 32);
        table8(dl, kvalues_iq4nl_packed, b.qs + 16 * s + 8 * (k & 1), k / 2, v);
    }
};

// TQ1_0, group g (0..31): weights 8g..8g+7 (tq1_digits4, two at a time).
template <> struct deq<LLMD_TYPE_TQ1_0> {
    typedef block_tq1_0 block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const float d = __half2float(b.d);
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int q = tq1_digits4(b, 8 * g + 4 * k);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                v[4 * k + i] = d * (float)(((q >> (8 * i)) & 0xFF) - 1);
            }
        }
    }
};

// TQ2_0, group g (0..31): Q2_K's layout, value d * (q - 1).
template <> struct deq<LLMD_TYPE_TQ2_0> {
    typedef block_tq2_0 block;
    static constexpr int qk = LLMD_QK_K;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const int e = 8 * g;
        const int n = e / 128;
        const int j = (e % 128) / 32;
        const int l = e % 32;
        const float d = __half2float(b.d);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * (float)(((b.qs[32 * n + l + i] >> (2 * j)) & 3) - 1);
        }
    }
};

// MXFP4, group g (0..3): Q4_0's nibble layout, values kvalues_mxfp4 * 2^(e - 128).
template <> struct deq<LLMD_TYPE_MXFP4> {
    typedef block_mxfp4 block;
    static constexpr int qk = LLMD_QK;
    static __device__ __forceinline__ void dequant8(const block &b, int g, float *v) {
        const float d = e8m0_half(b.e);
        const int hi = g / 2;
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int q = lookup16(kvalues_mxfp4_packed,
                                   (load_int_b1(b.qs + 8 * (g & 1), k) >> (4 * hi)) & 0x0F0F0F0F);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                v[4 * k + i] = d * (float)(signed char)(q >> (8 * i));
            }
        }
    }
};

// Dequantizes the 8 weights starting at element 8 * group of a row-major tensor whose rows are
// whole blocks (so the tensor is a flat array of blocks).
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
    } else if constexpr (TYPE == LLMD_TYPE_BF16) {
        // A bf16 is the top half of an f32.
        const uint4 p = ((const uint4 *)w)[group];
        const unsigned int words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            v[2 * i] = __int_as_float(words[i] << 16);
            v[2 * i + 1] = __int_as_float(words[i] & 0xFFFF0000u);
        }
    } else {
        typedef deq<TYPE> D;
        constexpr int groups = D::qk / 8;
        D::dequant8(((const typename D::block *)w)[group / groups], (int)(group % groups), v);
    }
}
