// Quantized matrix-vector products for decode (and small batches): out[t][r] = sum_c w[r][c] *
// x[t][c] with weights in Q4_0, Q5_0, Q8_0, Q4_K or Q6_K and activations already quantized to
// Q8_1 by quantize_q8_1 (quantize.cu). In the style of llama.cpp's mmvq: integer dot products of
// 4 packed bytes with __dp4a, one float scale product per group, warp-shuffle reductions.
//
// Work split: a row's weight blocks are cut into "items" (NI per block, each 8 or 16 weights);
// the 32 lanes of a warp stride over the items of one row, so consecutive lanes read consecutive
// bytes. Each thread block holds MMVQ_ROWS warps = MMVQ_ROWS rows.
//
// Common signature of every mul_mat_vec_<type>_q8_1 kernel:
//   w:    the weight matrix, `rows` rows of `cols / QK` blocks (QK = 32, or 256 for K-quants);
//   y:    activations, n_tokens rows of `cols / 32` Q8_1 blocks (row t at y + t * cols / 32);
//   out:  f32, n_tokens rows of `rows` values (out[t * rows + r]);
//   cols: a multiple of the weight type's block size (checked by the host);
//   n_tokens: rows of y and out.
// Launch: blockDim = (32, MMVQ_ROWS) = (32, 4); gridDim = (ceil(rows / 4), ceil(n_tokens / 8)).
// A block multiplies its rows with up to MMVQ_TOKENS tokens, so a batch of several sequences'
// decode tokens reads each weight once per 8 tokens instead of once per token.
#include "common.cuh"

#define MMVQ_ROWS 4
#define MMVQ_TOKENS 8

// Q4_0 item k (0..3) of a block: bytes 4k..4k+3 of qs; low nibbles are weights 4k..4k+3, high
// nibbles weights 16+4k..16+4k+3.
struct q4_0_traits {
    typedef block_q4_0 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int v = load_int_b2(b.qs, k);
        const int lo = v & 0x0F0F0F0F;
        const int hi = (v >> 4) & 0x0F0F0F0F;
        const int y0 = load_int_b4(y->qs, k);
        const int y1 = load_int_b4(y->qs, k + 4);
        const int sumi = __dp4a(lo, y0, __dp4a(hi, y1, 0));
        const int sumy = __dp4a(0x01010101, y0, __dp4a(0x01010101, y1, 0));
        return __half2float(b.d) * __half2float(y->d) * (float)(sumi - 8 * sumy);
    }
};

// Q5_0 item k: as Q4_0, with the 5th bit of weight j in bit j of qh.
struct q5_0_traits {
    typedef block_q5_0 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int v = load_int_b2(b.qs, k);
        const unsigned int qh = (unsigned int)load_int_b2(b.qh, 0);
        int lo = v & 0x0F0F0F0F;
        int hi = (v >> 4) & 0x0F0F0F0F;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo |= (int)(((qh >> (4 * k + i)) & 1u) << (8 * i + 4));
            hi |= (int)(((qh >> (16 + 4 * k + i)) & 1u) << (8 * i + 4));
        }
        const int y0 = load_int_b4(y->qs, k);
        const int y1 = load_int_b4(y->qs, k + 4);
        const int sumi = __dp4a(lo, y0, __dp4a(hi, y1, 0));
        const int sumy = __dp4a(0x01010101, y0, __dp4a(0x01010101, y1, 0));
        return __half2float(b.d) * __half2float(y->d) * (float)(sumi - 16 * sumy);
    }
};

// Q8_0 item k: weights 8k..8k+7.
struct q8_0_traits {
    typedef block_q8_0 block;
    static constexpr int qk = LLMD_QK;
    static constexpr int ni = 4;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int sumi = __dp4a(load_int_b2(b.qs, 2 * k), load_int_b4(y->qs, 2 * k),
                                __dp4a(load_int_b2(b.qs, 2 * k + 1), load_int_b4(y->qs, 2 * k + 1), 0));
        return __half2float(b.d) * __half2float(y->d) * (float)sumi;
    }
};

// Q4_K item k (0..15): 64-weight chunk j = k / 4 uses qs bytes 32j..32j+31; the item takes bytes
// 32j + 8(k%4) .. +7, whose low nibbles are weights 8(k%4).. of sub-block 2j and high nibbles the
// same weights of sub-block 2j+1. `y` points at the Q8_1 block of the weight block's first
// 32 values; sub-block s pairs with y[s].
struct q4_K_traits {
    typedef block_q4_K block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 16;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int j = k / 4;
        const int i = k % 4;
        const int v0 = load_int_b4(b.qs, 8 * j + 2 * i);
        const int v1 = load_int_b4(b.qs, 8 * j + 2 * i + 1);
        const block_q8_1 *ya = y + 2 * j;
        const block_q8_1 *yb = y + 2 * j + 1;
        const int a0 = load_int_b4(ya->qs, 2 * i), a1 = load_int_b4(ya->qs, 2 * i + 1);
        const int b0 = load_int_b4(yb->qs, 2 * i), b1 = load_int_b4(yb->qs, 2 * i + 1);
        const int dot_a = __dp4a(v0 & 0x0F0F0F0F, a0, __dp4a(v1 & 0x0F0F0F0F, a1, 0));
        const int dot_b = __dp4a((v0 >> 4) & 0x0F0F0F0F, b0, __dp4a((v1 >> 4) & 0x0F0F0F0F, b1, 0));
        const int sum_a = __dp4a(0x01010101, a0, __dp4a(0x01010101, a1, 0));
        const int sum_b = __dp4a(0x01010101, b0, __dp4a(0x01010101, b1, 0));
        int sc_a, m_a, sc_b, m_b;
        q4_K_scale_min(2 * j, b.scales, sc_a, m_a);
        q4_K_scale_min(2 * j + 1, b.scales, sc_b, m_b);
        const float d = __half2float(b.d);
        const float dmin = __half2float(b.dmin);
        const float da = __half2float(ya->d);
        const float db = __half2float(yb->d);
        return da * (d * (float)(sc_a * dot_a) - dmin * (float)(m_a * sum_a)) +
               db * (d * (float)(sc_b * dot_b) - dmin * (float)(m_b * sum_b));
    }
};

// Q6_K item k (0..15): half n = k / 8 (128 weights), r = k % 8. For l in 4r..4r+3 the half holds
// four weights l, l+32, l+64, l+96 (groups g = 0..3): the low 4 bits are nibbles of ql[64n + l]
// (g = 0, 2) and ql[64n + 32 + l] (g = 1, 3), the high 2 bits are bits 2g.. of qh[32n + l]; the
// scale of group g is scales[8n + l / 16 + 2g]; weight - 32 is the signed value. Group g pairs
// with Q8_1 block y[4n + g], int r.
struct q6_K_traits {
    typedef block_q6_K block;
    static constexpr int qk = LLMD_QK_K;
    static constexpr int ni = 16;
    static __device__ __forceinline__ float dot(const block &b, const block_q8_1 *y, int k) {
        const int n = k / 8;
        const int r = k % 8;
        const int ql0 = load_int_b2(b.ql, 16 * n + r);
        const int ql1 = load_int_b2(b.ql, 16 * n + 8 + r);
        const int qh = load_int_b2(b.qh, 8 * n + r);
        const int is = r / 4;
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const int lo = ((g & 1) ? ql1 : ql0) >> (4 * (g >> 1)) & 0x0F0F0F0F;
            const int hi = ((qh >> (2 * g)) & 0x03030303) << 4;
            const int q = __vsubss4(lo | hi, 0x20202020);
            const block_q8_1 *yg = y + 4 * n + g;
            const int sumi = __dp4a(q, load_int_b4(yg->qs, r), 0);
            sum += __half2float(yg->d) * (float)(b.scales[8 * n + is + 2 * g] * sumi);
        }
        return __half2float(b.d) * sum;
    }
};

template <typename T>
static __device__ __forceinline__ void mul_mat_vec_q(const void *__restrict__ w,
                                                     const block_q8_1 *__restrict__ y,
                                                     float *__restrict__ out, int rows, int cols,
                                                     int n_tokens) {
    const int row = blockIdx.x * MMVQ_ROWS + threadIdx.y;
    const int token0 = blockIdx.y * MMVQ_TOKENS;
    if (row >= rows) {
        return;
    }
    // The same for every thread of the block, so the branches below never split a warp.
    const int n = min(MMVQ_TOKENS, n_tokens - token0);
    const int blocks_per_row = cols / T::qk;
    const int y_blocks_per_row = cols / LLMD_QK;
    const typename T::block *wrow = (const typename T::block *)w + (long long)row * blocks_per_row;
    const block_q8_1 *y0 = y + (long long)token0 * y_blocks_per_row;
    const int n_items = blocks_per_row * T::ni;
    float sum[MMVQ_TOKENS] = {};
    for (int item = threadIdx.x; item < n_items; item += LLMD_WARP) {
        const int ib = item / T::ni;
        const int k = item % T::ni;
#pragma unroll
        for (int t = 0; t < MMVQ_TOKENS; ++t) {
            if (t < n) {
                sum[t] += T::dot(wrow[ib], y0 + (long long)t * y_blocks_per_row + ib * (T::qk / LLMD_QK), k);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MMVQ_TOKENS; ++t) {
        if (t < n) {
            const float s = warp_sum(sum[t]);
            if (threadIdx.x == 0) {
                out[(long long)(token0 + t) * rows + row] = s;
            }
        }
    }
}

#define MMVQ_KERNEL(name, traits)                                                                  \
    extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMVQ_ROWS)                            \
        name(const void *__restrict__ w, const block_q8_1 *__restrict__ y, float *__restrict__ out, \
             int rows, int cols, int n_tokens) {                                                   \
        mul_mat_vec_q<traits>(w, y, out, rows, cols, n_tokens);                                    \
    }

MMVQ_KERNEL(mul_mat_vec_q4_0_q8_1, q4_0_traits)
MMVQ_KERNEL(mul_mat_vec_q5_0_q8_1, q5_0_traits)
MMVQ_KERNEL(mul_mat_vec_q8_0_q8_1, q8_0_traits)
MMVQ_KERNEL(mul_mat_vec_q4_K_q8_1, q4_K_traits)
MMVQ_KERNEL(mul_mat_vec_q6_K_q8_1, q6_K_traits)
