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
// Common signature of every mul_mat_vec_<type>_q8_1 kernel: up to three weights of the type
// multiplied by the same activations in one launch (q, k, v; gate, up), each into its own output:
//   y:    activations, n_tokens rows of `cols / 32` Q8_1 blocks (row t at y + t * cols / 32);
//   cols: a multiple of the weight type's block size (checked by the host);
//   n_tokens: rows of y and of each output (at most MMVQ_TOKENS per block row of the grid);
//   accumulate: 0: out = product; 1: out += product (a projection added to the residual);
//   w<i>, out<i>, rows<i> (i = 0, 1, 2): weight i, `rows<i>` rows of `cols / QK` blocks (QK = 32,
//         or 256 for the K, IQ and TQ types except IQ4_NL), its output, n_tokens rows of rows<i>
//         f32 values (out<i>[t * rows<i> + r]); an unused weight has rows<i> = 0 (and null
//         pointers).
// Launch: blockDim = (32, MMVQ_ROWS) = (32, 4); gridDim = (ceil(rows0 / 4) + ceil(rows1 / 4) +
// ceil(rows2 / 4), ceil(n_tokens / 8)): the first ceil(rows0 / 4) blocks of x take weight 0, the
// next weight 1, then weight 2. A block multiplies its rows with up to MMVQ_TOKENS tokens, so a
// batch of several sequences' decode tokens reads each weight once per 8 tokens instead of once
// per token.
#include "vecdot.cuh"

#define MMVQ_ROWS 4
#define MMVQ_TOKENS 8

// The products of row `row` of weight w with n (1 to MMVQ_TOKENS) rows of Q8_1 activations from
// y0, each lane's share added into sum[0..n): the lanes stride over the row's items, each item's
// dot products summed per token in item order (the caller then reduces each sum over the warp).
template <typename T>
static __device__ __forceinline__ void mmvq_row(const void *__restrict__ w,
                                                const block_q8_1 *__restrict__ y0, int row,
                                                int cols, int n, float (&sum)[MMVQ_TOKENS]) {
    const int blocks_per_row = cols / T::qk;
    const int y_blocks_per_row = cols / LLMD_QK;
    const typename T::block *wrow = (const typename T::block *)w + (long long)row * blocks_per_row;
    const int n_items = blocks_per_row * T::ni;
    for (int item = threadIdx.x; item < n_items; item += LLMD_WARP) {
        const int ib = item / T::ni;
        // The item's weights (for the K quants: unpacked, with scales and mins) once for all
        // tokens.
        const vprep<T> wi = vprep<T>::load(wrow[ib], item % T::ni);
#pragma unroll
        for (int t = 0; t < MMVQ_TOKENS; ++t) {
            if (t < n) {
                sum[t] += wi.dot(y0 + (long long)t * y_blocks_per_row + ib * (T::qk / LLMD_QK));
            }
        }
    }
}

template <typename T>
static __device__ __forceinline__ void mul_mat_vec_q(const void *__restrict__ w,
                                                     const block_q8_1 *__restrict__ y,
                                                     float *__restrict__ out, int rows, int cols,
                                                     int n_tokens, int token0, int block_row,
                                                     int accumulate) {
    const int row = block_row * MMVQ_ROWS + threadIdx.y;
    if (row >= rows) {
        return;
    }
    // The same for every thread of the block, so the branches below never split a warp.
    const int n = min(MMVQ_TOKENS, n_tokens - token0);
    const block_q8_1 *y0 = y + (long long)token0 * (cols / LLMD_QK);
    float sum[MMVQ_TOKENS] = {};
    mmvq_row<T>(w, y0, row, cols, n, sum);
#pragma unroll
    for (int t = 0; t < MMVQ_TOKENS; ++t) {
        if (t < n) {
            const float s = warp_sum(sum[t]);
            if (threadIdx.x == 0) {
                float *o = out + (long long)(token0 + t) * rows + row;
                *o = accumulate ? *o + s : s;
            }
        }
    }
}

// The weight a block of the grid takes (see the launch above) and its first row block.
template <typename T>
static __device__ __forceinline__ void mul_mat_vec_q3(const block_q8_1 *__restrict__ y, int cols,
                                                      int n_tokens, int accumulate,
                                                      const void *w0, float *out0, int rows0,
                                                      const void *w1, float *out1, int rows1,
                                                      const void *w2, float *out2, int rows2) {
    const int blocks0 = (rows0 + MMVQ_ROWS - 1) / MMVQ_ROWS;
    const int blocks1 = (rows1 + MMVQ_ROWS - 1) / MMVQ_ROWS;
    const int bx = blockIdx.x;
    const int token0 = blockIdx.y * MMVQ_TOKENS;
    if (bx < blocks0) {
        mul_mat_vec_q<T>(w0, y, out0, rows0, cols, n_tokens, token0, bx, accumulate);
    } else if (bx < blocks0 + blocks1) {
        mul_mat_vec_q<T>(w1, y, out1, rows1, cols, n_tokens, token0, bx - blocks0, accumulate);
    } else {
        mul_mat_vec_q<T>(w2, y, out2, rows2, cols, n_tokens, token0, bx - blocks0 - blocks1,
                         accumulate);
    }
}

// mul_mat_vec_<name>_q8_1 for every type of LLMD_QUANT_TYPES.
#define MMVQ_KERNEL(name, type)                                                                    \
    extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMVQ_ROWS)                            \
        mul_mat_vec_##name##_q8_1(const block_q8_1 *__restrict__ y, int cols, int n_tokens,        \
                                  int accumulate, const void *w0, float *out0, int rows0,          \
                                  const void *w1, float *out1, int rows1, const void *w2,          \
                                  float *out2, int rows2) {                                        \
        mul_mat_vec_q3<vdot<type>>(y, cols, n_tokens, accumulate, w0, out0, rows0, w1, out1,       \
                                   rows1, w2, out2, rows2);                                        \
    }

LLMD_QUANT_TYPES(MMVQ_KERNEL)

// Routed matrix-vector products for mixtures of experts (ggml's mul_mat_id), for decode: each of
// n_pairs (token, expert) pairs multiplies one row of activations by its expert's weight, all
// pairs of a batch in one launch, the experts' weights read where they lie and the pairs' expert
// ids read from device memory (moe_route_f32's, moe.cu), so nothing crosses from the host. Two
// sets of experts of one type and shape (a block's gate and up) may share the launch and the
// activations, each pair then multiplied by its expert of both.
//   y:        activations, Q8_1 rows of `cols / 32` blocks; pair p reads row p / pairs_per_row
//             (gate and up: the pair's token, k pairs per row; down: the pair's own row, 1);
//   cols:     a multiple of the weight type's block size (checked by the host);
//   experts0, out0, experts1, out1: per set, n_expert device addresses of the experts'
//             weights (each `rows` rows of the type; a table uploaded once per set of experts)
//             and its output, n_pairs rows of `rows` f32 values (out[p * rows + r]); experts1
//             and out1 null for one set;
//   ids:      n_pairs expert ids as exact f32 values; a pair whose id is not one of the n_expert
//             (which moe_route_f32 never writes) gets NaN rows instead of a read out of bounds.
// Launch: blockDim = (32, MMVQ_ROWS); gridDim = (ceil(rows / 4), n_pairs * number of sets): block
// row y takes pair y % n_pairs of set y / n_pairs.
template <typename T>
static __device__ __forceinline__ void
mul_mat_vec_id_q(const block_q8_1 *__restrict__ y, int cols,
                 const unsigned long long *__restrict__ experts0, float *__restrict__ out0,
                 const unsigned long long *__restrict__ experts1, float *__restrict__ out1,
                 int n_expert, const float *__restrict__ ids, int n_pairs, int pairs_per_row,
                 int rows) {
    const int set = blockIdx.y / n_pairs;
    const int pair = blockIdx.y % n_pairs;
    const unsigned long long *experts = set == 0 ? experts0 : experts1;
    float *out = (set == 0 ? out0 : out1) + (long long)pair * rows;
    const float id = ids[pair];
    if (!(id >= 0.0f && id < (float)n_expert)) {
        const int row = blockIdx.x * MMVQ_ROWS + threadIdx.y;
        if (threadIdx.x == 0 && row < rows) {
            out[row] = __int_as_float(0x7fc00000);
        }
        return;
    }
    const void *w = (const void *)experts[(int)id];
    const block_q8_1 *yp = y + (long long)(pair / pairs_per_row) * (cols / LLMD_QK);
    mul_mat_vec_q<T>(w, yp, out, rows, cols, 1, 0, blockIdx.x, 0);
}

// mul_mat_vec_id_<name>_q8_1 for every type of LLMD_QUANT_TYPES.
#define MMVQ_ID_KERNEL(name, type)                                                                 \
    extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMVQ_ROWS)                            \
        mul_mat_vec_id_##name##_q8_1(                                                              \
            const block_q8_1 *__restrict__ y, int cols,                                            \
            const unsigned long long *__restrict__ experts0, float *__restrict__ out0,             \
            const unsigned long long *__restrict__ experts1, float *__restrict__ out1,             \
            int n_expert, const float *__restrict__ ids, int n_pairs, int pairs_per_row,           \
            int rows) {                                                                            \
        mul_mat_vec_id_q<vdot<type>>(y, cols, experts0, out0, experts1, out1, n_expert, ids,       \
                                     n_pairs, pairs_per_row, rows);                                \
    }

LLMD_QUANT_TYPES(MMVQ_ID_KERNEL)

// Routed down products summed into the residual stream (a mixture-of-experts block's down and
// its weighted sum, moe.cu's moe_combine_f32, in one launch): for token t and row r of `rows`,
//   x[t][r] += (sum over slots j in order of dot(pair t * n_used + j) * weights[t][j])
//              + shared[t][r] * sigmoid(shared_gate[t])
// where dot(p) is row r of pair p's expert times the pair's own row p of y, computed as
// mul_mat_vec_id_<name>_q8_1 computes it (the same mmvq_row), and the sum rounded as
// moe_combine_f32 rounds it (every product before its sum: the first slot's product, each later
// slot's added, then the shared expert's, then the residual), so both ways give the same bits.
//   y:        Q8_1 activations, n_tokens * n_used rows of `cols / 32` blocks (one per pair);
//   experts, n_expert, ids: as mul_mat_vec_id_<name>_q8_1's (one set); a pair whose id is not
//             one of the n_expert gives a NaN product;
//   weights:  n_tokens rows of n_used weights (moe_route_f32's);
//   shared, shared_gate: the shared expert's output (n_tokens rows of `rows`) and its gate logit
//             per token (Qwen2-MoE), or both null; the sigmoid as ggml's silu(g) / g;
//   x:        the residual stream, n_tokens rows of `rows`.
// Launch: blockDim = (32, MMVQ_ROWS); gridDim = (ceil(rows / 4), n_tokens).
template <typename T>
static __device__ __forceinline__ void
mul_mat_vec_id_combine_q(const block_q8_1 *__restrict__ y, int cols,
                         const unsigned long long *__restrict__ experts, int n_expert,
                         const float *__restrict__ ids, const float *__restrict__ weights,
                         int n_used, int rows, const float *__restrict__ shared,
                         const float *__restrict__ shared_gate, float *__restrict__ x) {
    const long long t = blockIdx.y;
    const int row = blockIdx.x * MMVQ_ROWS + threadIdx.y;
    if (row >= rows) {
        return;
    }
    float acc = 0.0f;
    for (int j = 0; j < n_used; ++j) {
        const long long pair = t * n_used + j;
        const float id = ids[pair];
        // The same for the whole block, so the branch never splits a warp.
        float dot = __int_as_float(0x7fc00000);
        if (id >= 0.0f && id < (float)n_expert) {
            const void *w = (const void *)experts[(int)id];
            float sum[MMVQ_TOKENS] = {};
            mmvq_row<T>(w, y + pair * (cols / LLMD_QK), row, cols, 1, sum);
            dot = warp_sum(sum[0]);
        }
        const float p = __fmul_rn(dot, weights[pair]);
        acc = j == 0 ? p : __fadd_rn(acc, p);
    }
    if (threadIdx.x != 0) {
        return;
    }
    const long long i = t * rows + row;
    if (shared != nullptr) {
        const float g = shared_gate[t];
        const float scale = g / (1.0f + expf(-g)) / g;
        acc = __fadd_rn(acc, __fmul_rn(shared[i], scale));
    }
    x[i] = __fadd_rn(x[i], acc);
}

// mul_mat_vec_id_combine_<name>_q8_1 for every type of LLMD_QUANT_TYPES.
#define MMVQ_ID_COMBINE_KERNEL(name, type)                                                         \
    extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMVQ_ROWS)                            \
        mul_mat_vec_id_combine_##name##_q8_1(                                                      \
            const block_q8_1 *__restrict__ y, int cols,                                            \
            const unsigned long long *__restrict__ experts, int n_expert,                          \
            const float *__restrict__ ids, const float *__restrict__ weights, int n_used,          \
            int rows, const float *__restrict__ shared, const float *__restrict__ shared_gate,     \
            float *__restrict__ x) {                                                               \
        mul_mat_vec_id_combine_q<vdot<type>>(y, cols, experts, n_expert, ids, weights, n_used,     \
                                             rows, shared, shared_gate, x);                        \
    }

LLMD_QUANT_TYPES(MMVQ_ID_COMBINE_KERNEL)
