// Bit-level decoding shared by the dequantization (dequantize.cuh) and the quantized dot
// products (vecdot.cuh): bytes loaded without alignment, Q3_K's scales, 4-bit table lookups,
// the IQ formats' sign patterns, IQ1_M's scale, MXFP4's E8M0 scale and TQ1_0's base-3 digits. Values packed
// four to an int are signed bytes, as __dp4a reads them.
#pragma once

#include "common.cuh"
#include "iq_tables.cuh"

// Loads 4 bytes with no alignment at all (MXFP4's 17-byte blocks).
static __device__ __forceinline__ int load_int_b1(const void *p, int i32) {
    const unsigned char *p8 = (const unsigned char *)p + 4 * i32;
    return (int)((unsigned int)p8[0] | ((unsigned int)p8[1] << 8) | ((unsigned int)p8[2] << 16) |
                 ((unsigned int)p8[3] << 24));
}

// The bytes table[idx_k] for the four indices idx_k (0..15) in the bytes of `idx`, where the 16
// table bytes are packed four per word (iq_tables.cuh). __byte_perm picks bytes by the low 3
// bits of each selector nibble: one pick from table words 0-1, one from words 2-3, then a third
// pick chooses per byte by the index's bit 3.
static __device__ __forceinline__ int lookup16(const unsigned int *__restrict__ table, int idx) {
    const unsigned int u = (unsigned int)idx;
    // The four indices as the nibbles of a 16-bit selector.
    const unsigned int sel = (u & 0xF) | ((u >> 4) & 0xF0) | ((u >> 8) & 0xF00) | ((u >> 12) & 0xF000);
    const unsigned int low = __byte_perm(table[0], table[1], sel);
    const unsigned int high = __byte_perm(table[2], table[3], sel);
    // Selector nibble k: byte k of `low`, or byte k of `high` (4 + k) when bit 3 is set.
    const unsigned int pick = 0x3210 | ((sel & 0x8888) >> 1);
    return (int)__byte_perm(low, high, pick);
}

// The 8 sign bits of an IQ2_XXS / IQ2_XS / IQ3_XXS pattern: its 7 stored bits and, as bit 7,
// their parity (GGML's ksigns_iq2xs table, computed instead of looked up).
static __device__ __forceinline__ unsigned int iq_signs(unsigned int pattern7) {
    const unsigned int p = pattern7 & 0x7F;
    return p | ((unsigned int)(__popc(p) & 1) << 7);
}

// The four unsigned magnitudes in the bytes of `grid` with byte k negated where bit k of
// `signs` (0..15) is set.
static __device__ __forceinline__ int apply_signs(unsigned int grid, unsigned int signs) {
    const unsigned int mask = __vcmpne4((signs * 0x01010101u) & 0x08040201u, 0);
    return (int)__vsub4(grid ^ mask, mask);
}

// MXFP4's scale 2^(e - 128) (the E8M0 exponent with the e2m1 table's doubling folded in), built
// from its bits like GGML's ggml_e8m0_to_fp32_half (e < 2 gives the two denormal powers).
static __device__ __forceinline__ float e8m0_half(unsigned char e) {
    const unsigned int bits = e < 2 ? 0x00200000u << e : (unsigned int)(e - 1) << 23;
    return __int_as_float(bits);
}

// Q3_K's signed 6-bit scale of sub-block s (0..15): the low 4 bits are nibble s / 8 of
// scales[s % 8], the high 2 bits are bits 2(s / 4).. of scales[8 + s % 4]; offset 32.
static __device__ __forceinline__ int q3_K_scale(const unsigned char *scales, int s) {
    const int low = (scales[s % 8] >> (4 * (s / 8))) & 0xF;
    const int high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    return (low | (high << 4)) - 32;
}

// IQ1_S's and IQ1_M's grid shift (GGML's IQ1S_DELTA / IQ1M_DELTA).
#define LLMD_IQ1_DELTA 0.125f

// IQ1_M's f16 super-block scale, from the top nibbles of its four u16 scale words.
static __device__ __forceinline__ float iq1_m_scale(const block_iq1_m &b) {
    const unsigned short *sc = (const unsigned short *)b.scales;
    const unsigned short bits = (unsigned short)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) |
                                                 ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000));
    return __half2float(__ushort_as_half(bits));
}

// TQ1_0: the base-3 digits 0..2 of weights w..w+3 (w % 4 == 0): those weights sit in four
// consecutive bytes at the same digit t (qs[0..32]: weights 32t + byte, qs[32..48]: weights
// 160 + 16t + byte, qh: weights 240 + 4t + byte); digit t of byte b is ((b * 3^t) mod 256) * 3
// / 256. Returned as 4 bytes.
static __device__ __forceinline__ int tq1_digits4(const block_tq1_0 &b, int w) {
    const unsigned char *src;
    int t;
    if (w < 160) {
        src = b.qs + w % 32;
        t = w / 32;
    } else if (w < 240) {
        src = b.qs + 32 + (w - 160) % 16;
        t = (w - 160) / 16;
    } else {
        src = b.qh + (w - 240) % 4;
        t = (w - 240) / 4;
    }
    const unsigned int pow3 = t == 0 ? 1 : t == 1 ? 3 : t == 2 ? 9 : t == 3 ? 27 : 81;
    unsigned int out = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const unsigned int shifted = (src[i] * pow3) & 0xFF;
        out |= ((shifted * 3) >> 8) << (8 * i);
    }
    return (int)out;
}
