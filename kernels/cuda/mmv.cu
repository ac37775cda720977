// Matrix-vector products with F16 or F32 weights and f32 activations (decode and small batches):
// out[t][r] = sum_c w[r][c] * x[t][c], accumulated in f32.
//
// Signature of mul_mat_vec_f16 / mul_mat_vec_f32:
//   w:   `rows` rows of `cols` weights (cols even, so rows are 4-byte (f16) / 8-byte (f32)
//        aligned and read as pairs);
//   x:   n_tokens rows of `cols` f32 activations;
//   out: n_tokens rows of `rows` f32 values.
// Launch: blockDim = (32, 4): one warp per row, 4 rows per block; gridDim = (ceil(rows / 4),
// n_tokens).
#include "common.cuh"

#define MMV_ROWS 4

extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMV_ROWS)
    mul_mat_vec_f16(const __half *__restrict__ w, const float *__restrict__ x,
                    float *__restrict__ out, int rows, int cols) {
    const int row = blockIdx.x * MMV_ROWS + threadIdx.y;
    const int t = blockIdx.y;
    if (row >= rows) {
        return;
    }
    const __half2 *wr = (const __half2 *)(w + (long long)row * cols);
    const float2 *xr = (const float2 *)(x + (long long)t * cols);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols / 2; i += LLMD_WARP) {
        const float2 wv = __half22float2(wr[i]);
        const float2 xv = xr[i];
        sum = fmaf(wv.x, xv.x, fmaf(wv.y, xv.y, sum));
    }
    sum = warp_sum(sum);
    if (threadIdx.x == 0) {
        out[(long long)t * rows + row] = sum;
    }
}

extern "C" __global__ void __launch_bounds__(LLMD_WARP *MMV_ROWS)
    mul_mat_vec_f32(const float *__restrict__ w, const float *__restrict__ x,
                    float *__restrict__ out, int rows, int cols) {
    const int row = blockIdx.x * MMV_ROWS + threadIdx.y;
    const int t = blockIdx.y;
    if (row >= rows) {
        return;
    }
    const float2 *wr = (const float2 *)(w + (long long)row * cols);
    const float2 *xr = (const float2 *)(x + (long long)t * cols);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols / 2; i += LLMD_WARP) {
        const float2 wv = wr[i];
        const float2 xv = xr[i];
        sum = fmaf(wv.x, xv.x, fmaf(wv.y, xv.y, sum));
    }
    sum = warp_sum(sum);
    if (threadIdx.x == 0) {
        out[(long long)t * rows + row] = sum;
    }
}
