// vdot<TYPE> (see vecdot.cuh) for the codebook formats IQ1_S..IQ4_XS, the ternary TQ1_0 / TQ2_0
// and MXFP4. Each item is one 32-weight sub-block (one Q8_1 block) except IQ4_NL's and MXFP4's,
// which are 8 weights like Q4_0's. TQ1_0 and TQ2_0 have no CUDA kernels in llama.cpp; theirs
// follow the same scheme (exact integer sums, one scale product per sub-block).
#pragma once

// Ints i = 0..7 of Q8_1 block `y`: the 32 activations of one sub-block, 4 per int.
#define Y_INT(y, i) load_int_b4((y)->qs, (i))

// IQ2_XXS item s (0..7): sub-block s, four groups of 8 (grid byte l of the first u32, sign
// pattern bits 7l.. of the second); llama.cpp's scale product sumi * (2 * scale + 1) / 8 in
// integers.
template <> struct vdot<LLMD_TYPE_IQ2_XXS> {
    typedef block_iq2_xxs block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        const unsigned int indices = (unsigned int)load_int_b2(b.qs, 2 * s);
        const unsigned int aux = (unsigned int)load_int_b2(b.qs, 2 * s + 1);
        int sumi = 0;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const unsigned long long grid = iq2xxs_grid[(indices >> (8 * l)) & 0xFF];
            const unsigned int signs = iq_signs(aux >> (7 * l));
            sumi = __dp4a(apply_signs((unsigned int)grid, signs & 0xF), Y_INT(ys, 2 * l), sumi);
            sumi = __dp4a(apply_signs((unsigned int)(grid >> 32), signs >> 4), Y_INT(ys, 2 * l + 1), sumi);
        }
        sumi = sumi * (int)((aux >> 27) | 1) / 8;
        return __half2float(b.d) * __half2float(ys->d) * (float)sumi;
    }
};

// IQ2_XS / IQ2_S: the scale product of two 16-weight halves with 4-bit scales ls0, ls1, in
// llama.cpp's integers: (sumi0 * (2 ls0 + 1) + sumi1 * (2 ls1 + 1)) / 8, the halves' +1 terms
// rounded once.
static __device__ __forceinline__ int iq2_scaled(int sumi0, int sumi1, int scales) {
    return (sumi0 * (scales & 0xF) + sumi1 * (scales >> 4) + (sumi0 + sumi1) / 2) / 4;
}

// IQ2_XS item s (0..7): qs[4s + l] is group l's grid index (low 9 bits) and sign pattern;
// groups 0-1 use the low nibble of scales[s], 2-3 the high one.
template <> struct vdot<LLMD_TYPE_IQ2_XS> {
    typedef block_iq2_xs block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        int half[2] = {0, 0};
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const unsigned int q = b.qs[4 * s + l];
            const unsigned long long grid = iq2xs_grid[q & 511];
            const unsigned int signs = iq_signs(q >> 9);
            half[l / 2] = __dp4a(apply_signs((unsigned int)grid, signs & 0xF), Y_INT(ys, 2 * l), half[l / 2]);
            half[l / 2] = __dp4a(apply_signs((unsigned int)(grid >> 32), signs >> 4), Y_INT(ys, 2 * l + 1),
                                 half[l / 2]);
        }
        const int sumi = iq2_scaled(half[0], half[1], b.scales[s]);
        return __half2float(b.d) * __half2float(ys->d) * (float)sumi;
    }
};

// IQ2_S item s (0..7): group l's index is qs[4s + l] plus bits 2l.. of qh[s], its 8 sign bits
// qs[32 + 4s + l]; scales as IQ2_XS.
template <> struct vdot<LLMD_TYPE_IQ2_S> {
    typedef block_iq2_s block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        const int qh = b.qh[s];
        int half[2] = {0, 0};
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const unsigned long long grid = iq2s_grid[b.qs[4 * s + l] | (((qh >> (2 * l)) & 3) << 8)];
            const unsigned int signs = b.qs[32 + 4 * s + l];
            half[l / 2] = __dp4a(apply_signs((unsigned int)grid, signs & 0xF), Y_INT(ys, 2 * l), half[l / 2]);
            half[l / 2] = __dp4a(apply_signs((unsigned int)(grid >> 32), signs >> 4), Y_INT(ys, 2 * l + 1),
                                 half[l / 2]);
        }
        const int sumi = iq2_scaled(half[0], half[1], b.scales[s]);
        return __half2float(b.d) * __half2float(ys->d) * (float)sumi;
    }
};

// IQ3_XXS item s (0..7): grid indices qs[8s + 2l], qs[8s + 2l + 1] (4 magnitudes each); the u32
// at qs[64 + 4s] holds the sign patterns and the scale; llama.cpp's integer scale product
// (scale * sumi + sumi / 2) / 2.
template <> struct vdot<LLMD_TYPE_IQ3_XXS> {
    typedef block_iq3_xxs block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        const unsigned int aux = (unsigned int)load_int_b2(b.qs, 16 + s);
        int sumi = 0;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const unsigned int signs = iq_signs(aux >> (7 * l));
            sumi = __dp4a(apply_signs(iq3xxs_grid[b.qs[8 * s + 2 * l]], signs & 0xF), Y_INT(ys, 2 * l), sumi);
            sumi = __dp4a(apply_signs(iq3xxs_grid[b.qs[8 * s + 2 * l + 1]], signs >> 4), Y_INT(ys, 2 * l + 1),
                          sumi);
        }
        const int ls = (int)(aux >> 28);
        sumi = (ls * sumi + sumi / 2) / 2;
        return __half2float(b.d) * __half2float(ys->d) * (float)sumi;
    }
};

// IQ3_S item s (0..7): indices qs[8s + 2l + k] plus bit 2l + k of qh[s] as bit 8, 8 sign bits
// signs[4s + l]; the scale (1 + 2 * nibble s % 2 of scales[s / 2]) is exact in integers.
template <> struct vdot<LLMD_TYPE_IQ3_S> {
    typedef block_iq3_s block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        const int qh = b.qh[s];
        int sumi = 0;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const unsigned int g0 = iq3s_grid[b.qs[8 * s + 2 * l] | (((qh >> (2 * l)) & 1) << 8)];
            const unsigned int g1 = iq3s_grid[b.qs[8 * s + 2 * l + 1] | (((qh >> (2 * l + 1)) & 1) << 8)];
            const unsigned int signs = b.signs[4 * s + l];
            sumi = __dp4a(apply_signs(g0, signs & 0xF), Y_INT(ys, 2 * l), sumi);
            sumi = __dp4a(apply_signs(g1, signs >> 4), Y_INT(ys, 2 * l + 1), sumi);
        }
        sumi *= 1 + 2 * ((b.scales[s / 2] >> (4 * (s % 2))) & 0xF);
        return __half2float(b.d) * __half2float(ys->d) * (float)sumi;
    }
};

// The dot product of 8 IQ1 grid values (iq1s_grid_packed: v + 1 in nibbles) with Q8_1 ints u0
// (values 0..3) and u1 (values 4..7), as sum((v + 1) * y).
static __device__ __forceinline__ int iq1_dot8(unsigned int packed, int u0, int u1, int acc) {
    return __dp4a((int)(packed & 0x0F0F0F0F), u0, __dp4a((int)((packed >> 4) & 0x0F0F0F0F), u1, acc));
}

// IQ1_S item s (0..7): index qs[4s + l] plus bits 3l.. of qh[s]; with the grid stored as v + 1,
// sum((v + delta) y) = sum((v + 1) y) + (delta - 1) sum(y), and d * sum(y) is Q8_1's s.
template <> struct vdot<LLMD_TYPE_IQ1_S> {
    typedef block_iq1_s block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        const unsigned int qh = b.qh[s];
        int sumi = 0;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const unsigned int packed = iq1s_grid_packed[b.qs[4 * s + l] | (((qh >> (3 * l)) & 7) << 8)];
            sumi = iq1_dot8(packed, Y_INT(ys, 2 * l), Y_INT(ys, 2 * l + 1), sumi);
        }
        const float dl = __half2float(b.d) * (float)(2 * ((qh >> 12) & 7) + 1);
        const float delta = qh & 0x8000 ? -1.0f - LLMD_IQ1_DELTA : -1.0f + LLMD_IQ1_DELTA;
        return dl * (__half2float(ys->d) * (float)sumi + __half2float(ys->s) * delta);
    }
};

// IQ1_M item s (0..7): index qs[4s + l] plus the low 3 bits of nibble l % 2 of qh[2s + l / 2],
// whose bit 3 signs the delta of those 8 weights (so each group sums its activations); groups
// 0-1 and 2-3 have the 3-bit scales at bits 6(s % 2) and 6(s % 2) + 3 of the u16 scales[s / 2].
template <> struct vdot<LLMD_TYPE_IQ1_M> {
    typedef block_iq1_m block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        int sumi[2] = {0, 0};
        float sumf[2] = {0.0f, 0.0f};
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int qhn = b.qh[2 * s + l / 2] >> (4 * (l % 2));
            const unsigned int packed = iq1s_grid_packed[b.qs[4 * s + l] | ((qhn & 7) << 8)];
            const int u0 = Y_INT(ys, 2 * l), u1 = Y_INT(ys, 2 * l + 1);
            sumi[l / 2] = iq1_dot8(packed, u0, u1, sumi[l / 2]);
            const float delta = qhn & 8 ? -1.0f - LLMD_IQ1_DELTA : -1.0f + LLMD_IQ1_DELTA;
            sumf[l / 2] += delta * (float)sum_bytes(u0, sum_bytes(u1, 0));
        }
        const int tmp = ((const unsigned short *)b.scales)[s / 2] >> (6 * (s % 2));
        const int sc0 = 2 * (tmp & 7) + 1;
        const int sc1 = 2 * ((tmp >> 3) & 7) + 1;
        const float d = iq1_m_scale(b) * __half2float(ys->d);
        return d * (((float)sumi[0] + sumf[0]) * (float)sc0 + ((float)sumi[1] + sumf[1]) * (float)sc1);
    }
};

// The dot product of the 8 table values indexed by the nibbles of `v` (low nibbles: weights
// paired with u0, high nibbles: with u1) with those activations.
static __device__ __forceinline__ int table_dot8(const unsigned int *table, int v, int u0, int u1,
                                                 int acc) {
    return __dp4a(lookup16(table, v & 0x0F0F0F0F), u0, __dp4a(lookup16(table, (v >> 4) & 0x0F0F0F0F), u1, acc));
}

// IQ4_NL item k (0..3): Q4_0's nibbles (bytes 4k..4k+3) through kvalues_iq4nl.
template <> struct vdot<LLMD_TYPE_IQ4_NL> {
    typedef block_iq4_nl block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int sumi = table_dot8(kvalues_iq4nl_packed, load_int_b2(b.qs, k), Y_INT(y, k), Y_INT(y, k + 4), 0);
        return __half2float(b.d) * __half2float(y->d) * (float)sumi;
    }
};

// IQ4_XS item s (0..7): sub-block s (qs[16s..16s+16], IQ4_NL's layout) times its 6-bit scale
// - 32 in integers.
template <> struct vdot<LLMD_TYPE_IQ4_XS> {
    typedef block_iq4_xs block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        int sumi = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            sumi = table_dot8(kvalues_iq4nl_packed, load_int_b4(b.qs, 4 * s + j), Y_INT(ys, j), Y_INT(ys, j + 4),
                              sumi);
        }
        const int ls = ((b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((b.scales_h >> (2 * s)) & 3) << 4);
        sumi *= ls - 32;
        return __half2float(b.d) * __half2float(ys->d) * (float)sumi;
    }
};

// TQ1_0 item s (0..7): weights 32s..32s+31 (tq1_digits4); value digit - 1, so the sum is
// sum(digit * y) - sum(y), both exact.
template <> struct vdot<LLMD_TYPE_TQ1_0> {
    typedef block_tq1_0 block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        int sumi = 0, sumy = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int u = Y_INT(ys, i);
            sumi = __dp4a(tq1_digits4(b, 32 * s + 4 * i), u, sumi);
            sumy = sum_bytes(u, sumy);
        }
        return __half2float(b.d) * __half2float(ys->d) * (float)(sumi - sumy);
    }
};

// TQ2_0 item s (0..7): Q8_1 block s holds weights 128n + 32j.. (n = s / 4, j = s % 4): bits 2j..
// of the half's 32 quant bytes; value q - 1.
template <> struct vdot<LLMD_TYPE_TQ2_0> {
    typedef block_tq2_0 block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 8;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int s) {
        const block_q8_1 *ys = y + s;
        const int n = s / 4, j = s % 4;
        int sumi = 0, sumy = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int u = Y_INT(ys, i);
            sumi = __dp4a((load_int_b2(b.qs, 8 * n + i) >> (2 * j)) & 0x03030303, u, sumi);
            sumy = sum_bytes(u, sumy);
        }
        return __half2float(b.d) * __half2float(ys->d) * (float)(sumi - sumy);
    }
};

// MXFP4 item k (0..3): Q4_0's nibbles (bytes 4k..4k+3, read a byte at a time) through
// kvalues_mxfp4, times 2^(e - 128).
template <> struct vdot<LLMD_TYPE_MXFP4> {
    typedef block_mxfp4 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int sumi = table_dot8(kvalues_mxfp4_packed, load_int_b1(b.qs, k), Y_INT(y, k), Y_INT(y, k + 4), 0);
        return e8m0_half(b.e) * __half2float(y->d) * (float)sumi;
    }
};

#undef Y_INT
