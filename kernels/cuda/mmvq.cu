// Quantized matrix-vector products for decode (and small batches): out[t][r] = sum_c w[r][c] *
// x[t][c] with weights of every block-quantized type (LLMD_QUANT_TYPES, types.cuh) and
// activations already quantized to Q8_1 by quantize_q8_1 (quantize.cu). In the style of
// llama.cpp's mmvq: integer dot products of 4 packed bytes with __dp4a, one float scale product
// per group, warp-shuffle reductions (the per-type dot products are vecdot.cuh's).
//
// Work split: a row's weight blocks are cut into "items" (vdot<TYPE>::ni per block, 8 to 32
// weights each); the 32 lanes of a warp stride over the items of one row, so consecutive lanes
// read consecutive bytes. Each thread block holds MMVQ_ROWS warps = MMVQ_ROWS rows.
//
// Common signature of every mul_mat_vec_<type>_q8_1 kernel:
//   w:    the weight matrix, `rows` rows of `cols / QK` blocks (QK = 32, or 256 for the K, IQ
//         and TQ types except IQ4_NL);
//   y:    activations, n_tokens rows of `cols / 32` Q8_1 blocks (row t at y + t * cols / 32);
//   out:  f32, n_tokens rows of `rows` values (out[t * rows + r]);
//   cols: a multiple of the weight type's block size (checked by the host);
//   n_tokens: rows of y and out.
// Launch: blockDim = (32, MMVQ_ROWS) = (32, 4); gridDim = (ceil(rows / 4), ceil(n_tokens / 8)).
// A block multiplies its rows with up to MMVQ_TOKENS tokens, so a batch of several sequences'
// decode tokens reads each weight once per 8 tokens instead of once per token.
#include "vecdot.cuh"

#define MMVQ_ROWS 4
#define MMVQ_TOKENS 8

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

// mul_mat_vec_<name>_q8_1 for every type of LLMD_QUANT_TYPES.
#define MMVQ_KERNEL(name, type)                                                                    \
    extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMVQ_ROWS)                            \
        mul_mat_vec_##name##_q8_1(const void *__restrict__ w, const block_q8_1 *__restrict__ y,    \
                                  float *__restrict__ out, int rows, int cols, int n_tokens) {     \
        mul_mat_vec_q<vdot<type>>(w, y, out, rows, cols, n_tokens);                                \
    }

LLMD_QUANT_TYPES(MMVQ_KERNEL)
