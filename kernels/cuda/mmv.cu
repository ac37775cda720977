// Matrix-vector products with F32, F16 or BF16 weights and f32 activations (decode and small
// batches): out[t][r] = sum_c w[r][c] * x[t][c], accumulated in f32.
//
// Signature of mul_mat_vec_f32 / mul_mat_vec_f16 / mul_mat_vec_bf16:
//   w:   `rows` rows of `cols` weights (cols even, so rows are 8-byte (f32) / 4-byte (f16, bf16)
//        aligned and read as pairs);
//   x:   n_tokens rows of `cols` f32 activations;
//   out: n_tokens rows of `rows` f32 values.
// Launch: blockDim = (32, 4): one warp per row, 4 rows per block; gridDim = (ceil(rows / 4),
// n_tokens).
#include "mmv.cuh"

#define MMV_ROWS 4

template <typename L>
static __device__ __forceinline__ void mul_mat_vec(const void *__restrict__ w,
                                                   const float *__restrict__ x,
                                                   float *__restrict__ out, int rows, int cols) {
    const int row = blockIdx.x * MMV_ROWS + threadIdx.y;
    const int t = blockIdx.y;
    if (row >= rows) {
        return;
    }
    const float sum = mmv_row<L>(w, x + (long long)t * cols, row, cols);
    if (threadIdx.x == 0) {
        out[(long long)t * rows + row] = sum;
    }
}

extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMV_ROWS)
    mul_mat_vec_f32(const float *__restrict__ w, const float *__restrict__ x,
                    float *__restrict__ out, int rows, int cols) {
    mul_mat_vec<mmv_f32>(w, x, out, rows, cols);
}

extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMV_ROWS)
    mul_mat_vec_f16(const __half *__restrict__ w, const float *__restrict__ x,
                    float *__restrict__ out, int rows, int cols) {
    mul_mat_vec<mmv_f16>(w, x, out, rows, cols);
}

extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMV_ROWS)
    mul_mat_vec_bf16(const unsigned short *__restrict__ w, const float *__restrict__ x,
                     float *__restrict__ out, int rows, int cols) {
    mul_mat_vec<mmv_bf16>(w, x, out, rows, cols);
}
