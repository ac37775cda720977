// GGML's weight block layouts, byte-identical to ggml-common.h and to kernels/src/quant/ on the
// CPU side, plus Q8_1 (the quantized activations of the matrix-vector kernels). Included by
// common.cuh, after the half type is defined. A tensor's rows are whole blocks, so a tensor is a
// flat array of blocks; a block is only as aligned as its size allows (noted where it matters
// for 4-byte loads).
#pragma once

// Q4_0: 32 weights, 4 bits each, value = d * (q - 8). 18 bytes.
struct block_q4_0 {
    __half d;
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

// Q4_1: 32 weights, 4 bits each, value = d * q + m. 20 bytes (4-byte aligned).
struct block_q4_1 {
    __half d;
    __half m;
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");

// Q5_0: 32 weights, 5 bits each (4 in qs, the 5th in qh), value = d * (q - 16). 22 bytes.
struct block_q5_0 {
    __half d;
    unsigned char qh[4];
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

// Q5_1: 32 weights, 5 bits each as Q5_0, value = d * q + m. 24 bytes (4-byte aligned).
struct block_q5_1 {
    __half d;
    __half m;
    unsigned char qh[4];
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");

// Q8_0: 32 weights, value = d * q. 34 bytes.
struct block_q8_0 {
    __half d;
    signed char qs[LLMD_QK];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

// Q8_1: 32 activations, value = d * q, with s = d * sum(q). 36 bytes; qs is 4-byte aligned when
// the buffer is.
struct block_q8_1 {
    __half d;
    __half s;
    signed char qs[LLMD_QK];
};
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");

// Q2_K: 256 weights in 16 sub-blocks of 16, 2 bits each; scales[i] holds sub-block i's 4-bit
// scale (low nibble) and min (high nibble); value = d * sc * q - dmin * m. Weight 128n + 32j + l
// is bits 2j.. of qs[32n + l], in sub-block 8n + 2j + l / 16. 84 bytes (4-byte aligned).
struct block_q2_K {
    unsigned char scales[LLMD_QK_K / 16];
    unsigned char qs[LLMD_QK_K / 4];
    __half d;
    __half dmin;
};
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");

// Q3_K: 256 weights in 16 sub-blocks of 16, 3 bits each: the low 2 as Q2_K's, the high bit of
// weight 128n + 32j + l is bit 4n + j of hmask[l] (set: q, clear: q - 4); 6-bit signed scales
// (offset 32) packed in 12 bytes; value = d * sc * q. 110 bytes (only 2-byte aligned).
struct block_q3_K {
    unsigned char hmask[LLMD_QK_K / 8];
    unsigned char qs[LLMD_QK_K / 4];
    unsigned char scales[12];
    __half d;
};
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");

// Q4_K: 256 weights in 8 sub-blocks of 32 with 6-bit scales and mins; value =
// d * sc * q - dmin * m. 144 bytes.
struct block_q4_K {
    __half d;
    __half dmin;
    unsigned char scales[12];
    unsigned char qs[LLMD_QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

// Q5_K: Q4_K's scales and nibbles plus a 5th bit: weight 32s + l of sub-block s has its high
// bit in bit s of qh[l]. 176 bytes (4-byte aligned).
struct block_q5_K {
    __half d;
    __half dmin;
    unsigned char scales[12];
    unsigned char qh[LLMD_QK_K / 8];
    unsigned char qs[LLMD_QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");

// Q6_K: 256 weights in 16 sub-blocks of 16 with 8-bit scales; value = d * sc * (q - 32).
// 210 bytes (only 2-byte aligned in a row).
struct block_q6_K {
    unsigned char ql[LLMD_QK_K / 2];
    unsigned char qh[LLMD_QK_K / 4];
    signed char scales[LLMD_QK_K / 16];
    __half d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

// IQ2_XXS: 256 weights in 8 sub-blocks of 32. Sub-block s is qs[4s..4s+3] read as two u32: the
// first holds 4 indices (one byte each) into iq2xxs_grid (8 magnitudes each), the second four
// 7-bit sign patterns (the 8th sign is the parity) and a 4-bit scale in its top bits; value =
// d * (0.5 + scale) / 4 * magnitude * sign. 66 bytes (2-byte aligned).
struct block_iq2_xxs {
    __half d;
    unsigned short qs[LLMD_QK_K / 8];
};
static_assert(sizeof(block_iq2_xxs) == 66, "block_iq2_xxs size");

// IQ2_XS: each u16 of qs is a 9-bit index into iq2xs_grid and a 7-bit sign pattern; scales[s]
// holds two 4-bit scales, one per 16 weights of sub-block s. 74 bytes (2-byte aligned).
struct block_iq2_xs {
    __half d;
    unsigned short qs[LLMD_QK_K / 8];
    unsigned char scales[LLMD_QK_K / 32];
};
static_assert(sizeof(block_iq2_xs) == 74, "block_iq2_xs size");

// IQ2_S: 10-bit indices into iq2s_grid (low 8 bits in qs[0..32], high 2 in qh), 8 explicit sign
// bits per 8 weights in qs[32..64], two 4-bit scales per sub-block. 82 bytes (2-byte aligned).
struct block_iq2_s {
    __half d;
    unsigned char qs[LLMD_QK_K / 4];
    unsigned char qh[LLMD_QK_K / 32];
    unsigned char scales[LLMD_QK_K / 32];
};
static_assert(sizeof(block_iq2_s) == 82, "block_iq2_s size");

// IQ3_XXS: qs[0..64] are indices into iq3xxs_grid (4 magnitudes each), qs[64..96] one u32 per
// sub-block with four 7-bit sign patterns and a 4-bit scale; value = d * (0.5 + scale) / 2 *
// magnitude * sign. 98 bytes (2-byte aligned).
struct block_iq3_xxs {
    __half d;
    unsigned char qs[3 * LLMD_QK_K / 8];
};
static_assert(sizeof(block_iq3_xxs) == 98, "block_iq3_xxs size");

// IQ3_S: 9-bit indices into iq3s_grid (low 8 bits in qs, the 9th in qh), explicit sign bits,
// 4-bit scales (two per byte, one per sub-block); value = d * (1 + 2 * scale) * magnitude *
// sign. 110 bytes (2-byte aligned).
struct block_iq3_s {
    __half d;
    unsigned char qs[LLMD_QK_K / 4];
    unsigned char qh[LLMD_QK_K / 32];
    unsigned char signs[LLMD_QK_K / 8];
    unsigned char scales[LLMD_QK_K / 64];
};
static_assert(sizeof(block_iq3_s) == 110, "block_iq3_s size");

// IQ1_S: 11-bit indices into iq1s_grid (8 values in {-1, 0, 1}): the low 8 bits in qs, the high
// 3 bits of group l of sub-block s in bits 3l.. of qh[s], whose bits 12..14 are the sub-block's
// scale and bit 15 the sign of its shift delta; value = d * (2 * scale + 1) * (grid + delta).
// 50 bytes (2-byte aligned).
struct block_iq1_s {
    __half d;
    unsigned char qs[LLMD_QK_K / 8];
    unsigned short qh[LLMD_QK_K / 32];
};
static_assert(sizeof(block_iq1_s) == 50, "block_iq1_s size");

// IQ1_M: as IQ1_S with one nibble of qh per 8 weights (3 index bits and the delta's sign), 3-bit
// scales per 16 weights, and the f16 super-block scale spread over the top nibbles of the four
// u16 of `scales`. 56 bytes (no f16 field: 2-byte aligned as a u16 array).
struct block_iq1_m {
    unsigned char qs[LLMD_QK_K / 8];
    unsigned char qh[LLMD_QK_K / 16];
    unsigned char scales[LLMD_QK_K / 32];
};
static_assert(sizeof(block_iq1_m) == 56, "block_iq1_m size");

// IQ4_NL: 32 weights as Q4_0's nibbles, each an index into kvalues_iq4nl; value = d * kvalue.
// 18 bytes.
struct block_iq4_nl {
    __half d;
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl size");

// IQ4_XS: 256 weights in 8 sub-blocks of 32 with IQ4_NL's values and 6-bit scales (offset 32;
// low 4 bits in scales_l, high 2 in scales_h); sub-block s is qs[16s..16s+16], low nibbles then
// high nibbles. 136 bytes (8-byte aligned).
struct block_iq4_xs {
    __half d;
    unsigned short scales_h;
    unsigned char scales_l[LLMD_QK_K / 64];
    unsigned char qs[LLMD_QK_K / 2];
};
static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs size");

// TQ1_0: 256 ternary weights (-1, 0, 1) in base 3, five per byte of qs and four per byte of qh
// (trit t of a byte b is ((b * 3^t) mod 256) * 3 / 256); value = d * (trit - 1). 54 bytes
// (2-byte aligned).
struct block_tq1_0 {
    unsigned char qs[(LLMD_QK_K - 4 * LLMD_QK_K / 64) / 5];
    unsigned char qh[LLMD_QK_K / 64];
    __half d;
};
static_assert(sizeof(block_tq1_0) == 54, "block_tq1_0 size");

// TQ2_0: 256 ternary weights, 2 bits each laid out as Q2_K's; value = d * (q - 1). 66 bytes
// (2-byte aligned).
struct block_tq2_0 {
    unsigned char qs[LLMD_QK_K / 4];
    __half d;
};
static_assert(sizeof(block_tq2_0) == 66, "block_tq2_0 size");

// MXFP4: 32 weights as Q4_0's nibbles, each an index into kvalues_mxfp4 (e2m1 values doubled),
// with a shared power-of-two scale e (E8M0); value = 2^(e - 128) * kvalue. 17 bytes (no
// alignment: quants are read a byte at a time).
struct block_mxfp4 {
    unsigned char e;
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_mxfp4) == 17, "block_mxfp4 size");
