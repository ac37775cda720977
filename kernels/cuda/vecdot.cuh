// Dot products of one weight block with Q8_1 activations, cut into "items" for mmvq.cu: for
// each weight type, vdot<TYPE> gives the block type, its weights per block (qk), its items per
// block (ni) and dot(b, y, k), item k's share of the dot product of block b with the Q8_1 blocks
// y[0 .. qk / 32] holding the same positions of the activations. Summing dot over k = 0..ni-1
// gives the block's whole product.
//
// The integer arithmetic is that of llama.cpp's CUDA vec_dot_*_q8_1 (its mmvq kernels): weights
// unpacked to signed bytes four to an int, __dp4a against the Q8_1 quants, the weight scales and
// d of the Q8_1 block applied once per group, Q8_1's s = d * sum(q) for the constant part of
// types with a min (Q4_1, Q5_1, IQ1_S). The IQ2/IQ3 types round their scale products in integers
// exactly as llama.cpp does, so results match llama.cpp's GPU path rather than its CPU path to
// the last bit; the backend tests bound the difference from the CPU backend.
#pragma once

#include "types.cuh"
#include "unpack.cuh"

template <int TYPE> struct vdot;

// Sum of the 4 signed bytes of `u` (the Q8_1 quants) times 1.
static __device__ __forceinline__ int sum_bytes(int u, int acc) { return __dp4a(0x01010101, u, acc); }

// Q4_0 item k (0..3): bytes 4k..4k+3 of qs; low nibbles are weights 4k..4k+3, high nibbles
// weights 16+4k..16+4k+3.
template <> struct vdot<LLMD_TYPE_Q4_0> {
    typedef block_q4_0 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int v = load_int_b2(b.qs, k);
        const int y0 = load_int_b4(y->qs, k);
        const int y1 = load_int_b4(y->qs, k + 4);
        const int sumi = __dp4a(v & 0x0F0F0F0F, y0, __dp4a((v >> 4) & 0x0F0F0F0F, y1, 0));
        const int sumy = sum_bytes(y0, sum_bytes(y1, 0));
        return __half2float(b.d) * __half2float(y->d) * (float)(sumi - 8 * sumy);
    }
};

// Q4_1 item k: as Q4_0 without the offset; the min term m * s of the block (s = d * sum(q) of
// its Q8_1 block) is shared equally by its ni items.
template <> struct vdot<LLMD_TYPE_Q4_1> {
    typedef block_q4_1 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int v = load_int_b4(b.qs, k);
        const int sumi = __dp4a(v & 0x0F0F0F0F, load_int_b4(y->qs, k),
                                __dp4a((v >> 4) & 0x0F0F0F0F, load_int_b4(y->qs, k + 4), 0));
        return __half2float(b.d) * __half2float(y->d) * (float)sumi +
               __half2float(b.m) * __half2float(y->s) * (1.0f / ni);
    }
};

// The 5-bit weights of Q5_0 / Q5_1 item k: nibbles of `v` (bytes 4k..4k+3 of qs) with bits
// 4k.. (low nibbles) and 16 + 4k.. (high nibbles) of qh as bit 4 of each byte.
static __device__ __forceinline__ void q5_item(int v, unsigned int qh, int k, int &lo, int &hi) {
    lo = v & 0x0F0F0F0F;
    hi = (v >> 4) & 0x0F0F0F0F;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        lo |= (int)(((qh >> (4 * k + i)) & 1u) << (8 * i + 4));
        hi |= (int)(((qh >> (16 + 4 * k + i)) & 1u) << (8 * i + 4));
    }
}

// Q5_0 item k: as Q4_0, with the 5th bit of weight j in bit j of qh.
template <> struct vdot<LLMD_TYPE_Q5_0> {
    typedef block_q5_0 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        int lo, hi;
        q5_item(load_int_b2(b.qs, k), (unsigned int)load_int_b2(b.qh, 0), k, lo, hi);
        const int y0 = load_int_b4(y->qs, k);
        const int y1 = load_int_b4(y->qs, k + 4);
        const int sumi = __dp4a(lo, y0, __dp4a(hi, y1, 0));
        const int sumy = sum_bytes(y0, sum_bytes(y1, 0));
        return __half2float(b.d) * __half2float(y->d) * (float)(sumi - 16 * sumy);
    }
};

// Q5_1 item k: Q5_0's weights without the offset, Q4_1's share of the min term.
template <> struct vdot<LLMD_TYPE_Q5_1> {
    typedef block_q5_1 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        int lo, hi;
        q5_item(load_int_b4(b.qs, k), (unsigned int)load_int_b4(b.qh, 0), k, lo, hi);
        const int sumi = __dp4a(lo, load_int_b4(y->qs, k), __dp4a(hi, load_int_b4(y->qs, k + 4), 0));
        return __half2float(b.d) * __half2float(y->d) * (float)sumi +
               __half2float(b.m) * __half2float(y->s) * (1.0f / ni);
    }
};

// Q8_0 item k: weights 8k..8k+7.
template <> struct vdot<LLMD_TYPE_Q8_0> {
    typedef block_q8_0 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int sumi = __dp4a(load_int_b2(b.qs, 2 * k), load_int_b4(y->qs, 2 * k),
                                __dp4a(load_int_b2(b.qs, 2 * k + 1), load_int_b4(y->qs, 2 * k + 1), 0));
        return __half2float(b.d) * __half2float(y->d) * (float)sumi;
    }
};

// Q2_K item k (0..15): half n = k / 8, bytes 4r..4r+3 (r = k % 8) of its 32 quant bytes; shift
// 2j gives weights 128n + 32j + 4r.. (sub-block 8n + 2j + r / 4), which pair with int r of Q8_1
// block 4n + j.
//
// The weight side of an item, unpacked once for every token: the four 2-bit groups as ints of 4
// bytes, and the scale bytes 8n + r / 4 + 2j (j = 0..3) from two 4-byte loads by one shift each
// instead of four byte loads, split into their scale (low nibble) and min (high nibble).
struct q2_K_item {
    /// The 4 weights of group j (0..3), as bytes.
    int q[4];
    /// Group j's 4-bit scale (times d).
    int sc[4];
    /// Group j's 4-bit min (times dmin).
    int m[4];
    /// The block's d and dmin.
    float d, dmin;
    /// Which Q8_1 blocks (4n + j) and which of their ints (r) the item pairs with.
    int n, r;
};

template <> struct vdot<LLMD_TYPE_Q2_K> {
    typedef block_q2_K block;
    typedef q2_K_item item;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 16;
    static __device__ __forceinline__ item load(const block &b, int k) {
        item w;
        w.n = k / 8;
        w.r = k % 8;
        const int v = load_int_b4(b.qs, 8 * w.n + w.r);
        // Bytes r / 4 and r / 4 + 2 of each int (groups 0, 1 and 2, 3) moved to bytes 0 and 2.
        const int sh = 8 * (w.r / 4);
        const unsigned int s01 = (unsigned int)load_int_b4(b.scales, 2 * w.n) >> sh;
        const unsigned int s23 = (unsigned int)load_int_b4(b.scales, 2 * w.n + 1) >> sh;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            w.q[j] = (v >> (2 * j)) & 0x03030303;
            const unsigned int sc = ((j < 2 ? s01 : s23) >> (16 * (j & 1))) & 0xFF;
            w.sc[j] = (int)(sc & 0xF);
            w.m[j] = (int)(sc >> 4);
        }
        w.d = __half2float(b.d);
        w.dmin = __half2float(b.dmin);
        return w;
    }
    static __device__ __forceinline__ float item_dot(const item &w, const block_q8_1 *y) {
        float sum_d = 0.0f, sum_m = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const block_q8_1 *yj = y + 4 * w.n + j;
            const int u = load_int_b4(yj->qs, w.r);
            const float dy = __half2float(yj->d);
            sum_d += dy * (float)(__dp4a(w.q[j], u, 0) * w.sc[j]);
            sum_m += dy * (float)(sum_bytes(u, 0) * w.m[j]);
        }
        return w.d * sum_d - w.dmin * sum_m;
    }
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        return item_dot(load(b, k), y);
    }
};

// Q3_K item k (0..15): Q2_K's layout for the low bits; the high bits of those weights are bits
// 4n + j of hmask bytes 4r..4r+3, and a clear bit subtracts 4.
//
// The weight side of an item, unpacked once for every token: the four groups' signed 3-bit
// weights as ints of 4 bytes and their signed 6-bit scales (sub-block s = 8n + 2j + r / 4: low
// nibble n of scales[s % 8], high bits 2(s / 4).. of scales[8 + s % 4]) built from the 12 scale
// bytes as three ints without a branch or a byte load: for j = 0, 1 and j = 2, 3 one shift
// brings both sub-blocks' bytes to bytes 0 and 2 and one mask keeps their bits.
struct q3_K_item {
    /// The 4 signed weights of group j (0..3), as bytes.
    int q[4];
    /// Group j's signed 6-bit scale.
    int sc[4];
    /// The block's scale d.
    float d;
    /// Which Q8_1 blocks (4n + j) and which of their ints (r) the item pairs with.
    int n, r;
};

template <> struct vdot<LLMD_TYPE_Q3_K> {
    typedef block_q3_K block;
    typedef q3_K_item item;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 16;
    static __device__ __forceinline__ item load(const block &b, int k) {
        item w;
        w.n = k / 8;
        w.r = k % 8;
        const int v = load_int_b2(b.qs, 8 * w.n + w.r);
        const int clear = ~load_int_b2(b.hmask, w.r);
        // Scale bytes r / 4 + 2j: ints 0 (j = 0, 1) and 1 (j = 2, 3), nibble n; high bits: int 2,
        // bytes r / 4 (j even) and r / 4 + 2 (j odd), bits 4n (j < 2) and 4n + 2 (j >= 2).
        const int sh = 8 * (w.r / 4) + 4 * w.n;
        const unsigned int high = (unsigned int)load_int_b2(b.scales, 2) >> sh;
        const unsigned int sc01 = (((unsigned int)load_int_b2(b.scales, 0) >> sh) & 0x000F000Fu) |
                                  ((high & 0x00030003u) << 4);
        const unsigned int sc23 = (((unsigned int)load_int_b2(b.scales, 1) >> sh) & 0x000F000Fu) |
                                  (((high >> 2) & 0x00030003u) << 4);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int low = (v >> (2 * j)) & 0x03030303;
            const int minus4 = ((clear >> (4 * w.n + j)) & 0x01010101) << 2;
            w.q[j] = __vsub4(low, minus4);
            w.sc[j] = (int)(((j < 2 ? sc01 : sc23) >> (16 * (j & 1))) & 0xFF) - 32;
        }
        w.d = __half2float(b.d);
        return w;
    }
    static __device__ __forceinline__ float item_dot(const item &w, const block_q8_1 *y) {
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const block_q8_1 *yj = y + 4 * w.n + j;
            const int sumi = __dp4a(w.q[j], load_int_b4(yj->qs, w.r), 0);
            sum += __half2float(yj->d) * (float)(sumi * w.sc[j]);
        }
        return w.d * sum;
    }
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        return item_dot(load(b, k), y);
    }
};

// Scales and mins of sub-blocks 2j and 2j+1 of a Q4_K / Q5_K block (ggml's get_scale_min_k4
// for the pair, as llama.cpp's vec_dot_q4_K_q8_1 reads them) without a branch: the 12 scale
// bytes as three ints, both 6-bit layouts built and one kept by a mask; sc and m hold sub-block
// 2j's value in byte 0 and 2j+1's in byte 1.
static __device__ __forceinline__ void k_scale_min_pair(const unsigned char *scales, int j, int &sc,
                                                        int &m) {
    const int sh = 16 * (j & 1);
    const unsigned int s0 = (unsigned int)load_int_b4(scales, 0) >> sh;
    const unsigned int s1 = (unsigned int)load_int_b4(scales, 1) >> sh;
    const unsigned int s2 = (unsigned int)load_int_b4(scales, 2) >> sh;
    const unsigned int high = 0u - (unsigned int)(j >> 1); // all ones for sub-blocks 4..7
    const unsigned int sc_low = s0 & 0x3f3fu;
    const unsigned int m_low = s1 & 0x3f3fu;
    const unsigned int sc_high = (s2 & 0x0f0fu) | ((s0 >> 2) & 0x3030u);
    const unsigned int m_high = ((s2 >> 4) & 0x0f0fu) | ((s1 >> 2) & 0x3030u);
    sc = (int)((sc_high & high) | (sc_low & ~high));
    m = (int)((m_high & high) | (m_low & ~high));
}

// The weight side of one Q4_K / Q5_K item, unpacked once and dotted with the activations of
// every token (k_dot): the 8 weights (qa0, qa1) of sub-block 2j and (qb0, qb1) of sub-block 2j+1
// at offset 8i, their scales and mins (k_scale_min_pair) and the block's d and dmin.
struct k_item {
    int qa0, qa1, qb0, qb1;
    int sc, m;
    float d, dmin;
    int j, i;
};

static __device__ __forceinline__ k_item k_load(const unsigned char *scales, __half d, __half dmin,
                                                int j, int i, int qa0, int qa1, int qb0, int qb1) {
    k_item w;
    w.qa0 = qa0;
    w.qa1 = qa1;
    w.qb0 = qb0;
    w.qb1 = qb1;
    k_scale_min_pair(scales, j, w.sc, w.m);
    w.d = __half2float(d);
    w.dmin = __half2float(dmin);
    w.j = j;
    w.i = i;
    return w;
}

// Item w against ints 2i, 2i+1 of Q8_1 blocks y[2j] and y[2j+1]: value d * sc * q - dmin * m per
// sub-block.
static __device__ __forceinline__ float k_dot(const k_item &w, const block_q8_1 *y) {
    const block_q8_1 *ya = y + 2 * w.j;
    const block_q8_1 *yb = y + 2 * w.j + 1;
    const int a0 = load_int_b4(ya->qs, 2 * w.i), a1 = load_int_b4(ya->qs, 2 * w.i + 1);
    const int b0 = load_int_b4(yb->qs, 2 * w.i), b1 = load_int_b4(yb->qs, 2 * w.i + 1);
    const int dot_a = __dp4a(w.qa0, a0, __dp4a(w.qa1, a1, 0));
    const int dot_b = __dp4a(w.qb0, b0, __dp4a(w.qb1, b1, 0));
    const int sum_a = sum_bytes(a0, sum_bytes(a1, 0));
    const int sum_b = sum_bytes(b0, sum_bytes(b1, 0));
    const float da = __half2float(ya->d);
    const float db = __half2float(yb->d);
    return da * (w.d * (float)((w.sc & 0xff) * dot_a) - w.dmin * (float)((w.m & 0xff) * sum_a)) +
           db * (w.d * (float)((w.sc >> 8) * dot_b) - w.dmin * (float)((w.m >> 8) * sum_b));
}

// Q4_K item k (0..15): 64-weight chunk j = k / 4 uses qs bytes 32j..32j+31; the item takes bytes
// 32j + 8(k%4) .. +7, whose low nibbles are weights 8(k%4).. of sub-block 2j and high nibbles the
// same weights of sub-block 2j+1. `y` points at the Q8_1 block of the weight block's first
// 32 values; sub-block s pairs with y[s].
template <> struct vdot<LLMD_TYPE_Q4_K> {
    typedef block_q4_K block;
    typedef k_item item;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 16;
    static __device__ __forceinline__ k_item load(const block &b, int k) {
        const int j = k / 4, i = k % 4;
        const int v0 = load_int_b4(b.qs, 8 * j + 2 * i);
        const int v1 = load_int_b4(b.qs, 8 * j + 2 * i + 1);
        return k_load(b.scales, b.d, b.dmin, j, i, v0 & 0x0F0F0F0F, v1 & 0x0F0F0F0F,
                      (v0 >> 4) & 0x0F0F0F0F, (v1 >> 4) & 0x0F0F0F0F);
    }
    static __device__ __forceinline__ float item_dot(const item &w, const block_q8_1 *y) {
        return k_dot(w, y);
    }
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        return k_dot(load(b, k), y);
    }
};

// Q5_K item k (0..15): Q4_K's nibbles, with bits 2j and 2j+1 of qh bytes 8i..8i+7 as bit 4 of
// the weights of sub-blocks 2j and 2j+1.
template <> struct vdot<LLMD_TYPE_Q5_K> {
    typedef block_q5_K block;
    typedef k_item item;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 16;
    static __device__ __forceinline__ k_item load(const block &b, int k) {
        const int j = k / 4, i = k % 4;
        const int v0 = load_int_b4(b.qs, 8 * j + 2 * i);
        const int v1 = load_int_b4(b.qs, 8 * j + 2 * i + 1);
        const int h0 = load_int_b4(b.qh, 2 * i);
        const int h1 = load_int_b4(b.qh, 2 * i + 1);
        const int a0 = (v0 & 0x0F0F0F0F) | (((h0 >> (2 * j)) & 0x01010101) << 4);
        const int a1 = (v1 & 0x0F0F0F0F) | (((h1 >> (2 * j)) & 0x01010101) << 4);
        const int b0 = ((v0 >> 4) & 0x0F0F0F0F) | (((h0 >> (2 * j + 1)) & 0x01010101) << 4);
        const int b1 = ((v1 >> 4) & 0x0F0F0F0F) | (((h1 >> (2 * j + 1)) & 0x01010101) << 4);
        return k_load(b.scales, b.d, b.dmin, j, i, a0, a1, b0, b1);
    }
    static __device__ __forceinline__ float item_dot(const item &w, const block_q8_1 *y) {
        return k_dot(w, y);
    }
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        return k_dot(load(b, k), y);
    }
};

// Q6_K item k (0..15): half n = k / 8 (128 weights), r = k % 8. For l in 4r..4r+3 the half holds
// four weights l, l+32, l+64, l+96 (groups g = 0..3): the low 4 bits are nibbles of ql[64n + l]
// (g = 0, 2) and ql[64n + 32 + l] (g = 1, 3), the high 2 bits are bits 2g.. of qh[32n + l]; the
// scale of group g is scales[8n + l / 16 + 2g]; weight - 32 is the signed value. Group g pairs
// with Q8_1 block y[4n + g], int r.
//
// The weight side of an item, unpacked once for every token (as llama.cpp's vec_dot_q6_K_q8_1
// takes it apart before its _impl_mmvq): the four groups' signed weights as ints of 4 bytes, and
// their scales, bytes l / 16, +2, +4, +6 of the half's 8 scale bytes, taken from two 4-byte
// loads by one shift each instead of four byte loads.
struct q6_K_item {
    /// Group g's 4 weights minus 32, as signed bytes.
    int q[4];
    /// Group g's signed 8-bit scale.
    int sc[4];
    /// The block's scale d.
    float d;
    /// Which Q8_1 blocks (4n + g) and which of their ints (r) the item pairs with.
    int n, r;
};

template <> struct vdot<LLMD_TYPE_Q6_K> {
    typedef block_q6_K block;
    typedef q6_K_item item;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 16;
    static __device__ __forceinline__ item load(const block &b, int k) {
        item w;
        w.n = k / 8;
        w.r = k % 8;
        const int ql0 = load_int_b2(b.ql, 16 * w.n + w.r);
        const int ql1 = load_int_b2(b.ql, 16 * w.n + 8 + w.r);
        const int qh = load_int_b2(b.qh, 8 * w.n + w.r);
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const int lo = ((g & 1) ? ql1 : ql0) >> (4 * (g >> 1)) & 0x0F0F0F0F;
            const int hi = ((qh >> (2 * g)) & 0x03030303) << 4;
            w.q[g] = __vsubss4(lo | hi, 0x20202020);
        }
        // Bytes is and is + 2 of each int (groups 0, 1 and 2, 3) moved to bytes 0 and 2.
        const int sh = 8 * (w.r / 4);
        const unsigned int s01 = (unsigned int)load_int_b2(b.scales, 2 * w.n) >> sh;
        const unsigned int s23 = (unsigned int)load_int_b2(b.scales, 2 * w.n + 1) >> sh;
        w.sc[0] = (int)(signed char)(s01 & 0xFF);
        w.sc[1] = (int)(signed char)((s01 >> 16) & 0xFF);
        w.sc[2] = (int)(signed char)(s23 & 0xFF);
        w.sc[3] = (int)(signed char)((s23 >> 16) & 0xFF);
        w.d = __half2float(b.d);
        return w;
    }
    static __device__ __forceinline__ float item_dot(const item &w, const block_q8_1 *y) {
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const block_q8_1 *yg = y + 4 * w.n + g;
            const int sumi = __dp4a(w.q[g], load_int_b4(yg->qs, w.r), 0);
            sum += __half2float(yg->d) * (float)(w.sc[g] * sumi);
        }
        return w.d * sum;
    }
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        return item_dot(load(b, k), y);
    }
};

#include "vecdot_iq.cuh"

// The weight side of item k of a block as mmvq's token loop uses it: loaded once per item and
// dotted with each token's activations. Types with an unpacked item (`vdot<T>::item`, its
// `load` and `item_dot`: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) unpack weights and scales once; the
// others keep the block and item and re-read the block per token (vdot<T>::dot).
template <typename...> struct vprep_void {
    typedef void type;
};
template <typename T, typename = void> struct vprep {
    const typename T::block *b;
    int k;
    static __device__ __forceinline__ vprep load(const typename T::block &b, int k) {
        return vprep{&b, k};
    }
    __device__ __forceinline__ float dot(const block_q8_1 *y) const { return T::dot(*b, y, k); }
};
template <typename T> struct vprep<T, typename vprep_void<typename T::item>::type> {
    typename T::item w;
    static __device__ __forceinline__ vprep load(const typename T::block &b, int k) {
        return vprep{T::load(b, k)};
    }
    __device__ __forceinline__ float dot(const block_q8_1 *y) const { return T::item_dot(w, y); }
};
