// Activation conversions: f32 -> Q8_1 (input of the quantized matrix-vector kernels in
// mmvq.cu), f32 -> 8-bit values with f32 scales and sums (input of the int8 tensor-core
// products in mmq.cu), f32 -> f16 scaled per row to f16's range and f32 -> bf16 (inputs of the
// tensor-core GEMMs of F16 and BF16 weights in gemm.cu).
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
    warp_quantize_q8_1(x[i], y[i / LLMD_QK]);
}

// quantize_mmq: the activations of mul_mat_q (mmq.cu) from rows of f32 values (row length a
// multiple of 32), as three arrays: q[i] = round(x[i] / d) in int8, d[b] = max|x| / 127 over the
// 32 values of block b (i / 32), and s[c] = d * sum(q) over the 16 values of chunk c (i / 16).
// Scales and sums are f32, so activations of any finite size keep their range.
// Launch: one warp per 32 values; blockDim.x = 256, gridDim.x = ceil(n_values / 256).
extern "C" __global__ void __launch_bounds__(256)
    quantize_mmq(const float *__restrict__ x, signed char *__restrict__ q, float *__restrict__ d,
                 float *__restrict__ s, long long n_values) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    // n_values is a multiple of 32, so whole warps are either in or out of range.
    if (i - threadIdx.x % LLMD_WARP >= n_values) {
        return;
    }
    const float v = x[i];
    const float amax = warp_max(fabsf(v));
    const float scale = amax / 127.0f;
    const int qi = amax == 0.0f ? 0 : __float2int_rn(v / scale);
    // The sum over this lane's half-warp (lanes 0-15 and 16-31 are the two chunks).
    int half = qi;
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {
        half += __shfl_xor_sync(LLMD_FULL_MASK, half, off);
    }
    q[i] = (signed char)qi;
    const int lane = threadIdx.x % LLMD_WARP;
    if (lane % 16 == 0) {
        s[i / 16] = scale * (float)half;
    }
    if (lane == 0) {
        d[i / LLMD_QK] = scale;
    }
}

// The largest magnitude convert_f32_to_f16_rows leaves a row at: half of f16's largest value
// (65504), so that rounding and the f32 accumulation of the GEMM keep clear of infinity.
#define F16_ROW_MAX 32768.0f

// convert_f32_to_f16_rows: rows of `cols` f32 values as f16, each row scaled by a power of two
// 2^-e (exact) that brings its largest magnitude to at most F16_ROW_MAX; row_scale[row] = 2^e
// is what the GEMM multiplies that row's results by (gemm_f16_tc). Rows already within range
// (e = 0) convert exactly (round to nearest even).
// Launch: one block per row, blockDim.x = 256; gridDim.x = n_rows.
extern "C" __global__ void __launch_bounds__(256)
    convert_f32_to_f16_rows(const float *__restrict__ x, __half *__restrict__ y,
                            float *__restrict__ row_scale, int cols) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const float *xr = x + row * cols;
    float amax = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        amax = fmaxf(amax, fabsf(xr[c]));
    }
    amax = block_max(amax, scratch);
    int e = 0;
    if (amax > F16_ROW_MAX && amax <= 3.4e38f) {
        frexpf(amax / F16_ROW_MAX, &e); // amax / F16_ROW_MAX = m * 2^e, m in [0.5, 1)
    }
    const float down = ldexpf(1.0f, -e);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        y[row * cols + c] = __float2half(xr[c] * down);
    }
    if (threadIdx.x == 0) {
        row_scale[row] = ldexpf(1.0f, e);
    }
}

// convert_f32_to_bf16: y[i] = (bf16)x[i] for i < n (round to nearest even).
// Launch: blockDim.x = 256, gridDim.x = ceil(n / 256).
extern "C" __global__ void __launch_bounds__(256)
    convert_f32_to_bf16(const float *__restrict__ x, __nv_bfloat16 *__restrict__ y, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = __float2bfloat16(x[i]);
    }
}
