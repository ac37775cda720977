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
#include "common.cuh"

#define MMV_ROWS 4

// Weight pair i of a row as two floats, per element type.
struct mmv_f32 {
    typedef float2 pair;
    static __device__ __forceinline__ float2 load(const pair *row, int i) { return row[i]; }
};
struct mmv_f16 {
    typedef __half2 pair;
    static __device__ __forceinline__ float2 load(const pair *row, int i) {
        return __half22float2(row[i]);
    }
};
// A bf16 is the top half of an f32: the pair's low half is the first weight.
struct mmv_bf16 {
    typedef unsigned int pair;
    static __device__ __forceinline__ float2 load(const pair *row, int i) {
        const unsigned int p = row[i];
        return make_float2(__int_as_float(p << 16), __int_as_float(p & 0xFFFF0000u));
    }
};

template <typename L>
static __device__ __forceinline__ void mul_mat_vec(const void *__restrict__ w,
                                                   const float *__restrict__ x,
                                                   float *__restrict__ out, int rows, int cols) {
    const int row = blockIdx.x * MMV_ROWS + threadIdx.y;
    const int t = blockIdx.y;
    if (row >= rows) {
        return;
    }
    const typename L::pair *wr = (const typename L::pair *)w + (long long)row * (cols / 2);
    const float2 *xr = (const float2 *)(x + (long long)t * cols);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols / 2; i += LLMD_WARP) {
        const float2 wv = L::load(wr, i);
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
