// Activation conversions: f32 -> Q8_1 (input of the quantized matrix-vector kernels in
// mmvq.cu) and f32 -> f16 (input of cuBLAS half-precision GEMM for prefill).
#include "common.cuh"

// quantize_q8_1: quantizes `n_rows` rows of `cols` f32 values (cols % 32 == 0) into Q8_1 blocks,
// row after row: block b of row r is y[r * (cols / 32) + b]. d = max|x| / 127, q = round(x / d),
// s = d * sum(q) (as GGML's quantize_row_q8_1 and llama.cpp's CUDA quantize_q8_1).
// Launch: one warp per block of 32 values; blockDim.x = 256 (8 Q8_1 blocks per thread block),
// gridDim.x = ceil(n_rows * cols / 256).
extern "C" __global__ void __launch_bounds__(256)
    quantize_q8_1(const float *__restrict__ x, block_q8_1 *__restrict__ y, long long n_values) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    // n_values is a multiple of 32, so whole warps are either in or out of range.
    if (i - threadIdx.x % LLMD_WARP >= n_values) {
        return;
    }
    const float v = x[i];
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const int q = amax == 0.0f ? 0 : __float2int_rn(v / d);
    const int sum = warp_sum_int(q);
    block_q8_1 &b = y[i / LLMD_QK];
    const int lane = threadIdx.x % LLMD_WARP;
    b.qs[lane] = (signed char)q;
    if (lane == 0) {
        b.d = __float2half(d);
        b.s = __float2half(d * (float)sum);
    }
}

// convert_f32_to_f16: y[i] = (half)x[i] for i < n.
// Launch: blockDim.x = 256, gridDim.x = ceil(n / 256).
extern "C" __global__ void __launch_bounds__(256)
    convert_f32_to_f16(const float *__restrict__ x, __half *__restrict__ y, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = __float2half(x[i]);
    }
}
