// RMS normalisation: out[r][c] = x[r][c] / sqrt(mean_c(x[r]^2) + eps) * weight[c], as GGML's
// rms_norm followed by mul (the sum of squares is accumulated in f32 over the row); and the same
// with the normalised row quantized to Q8_1 for the matrix-vector kernels that follow.
//
// rms_norm_f32(x, weight, out, dim, eps): x and out are n_rows rows of `dim` f32 values; out
// may equal x (in place: every thread reads its values before the block-wide reduction and
// writes only its own values afterwards). weight: `dim` f32 values.
// Launch: one block per row, blockDim.x = 256 (a multiple of 32, at most 1024);
// gridDim.x = n_rows.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024)
    rms_norm_f32(const float *x, const float *__restrict__ weight, float *out, int dim, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const float *xr = x + row * dim;
    float *orow = out + row * dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float v = xr[c];
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        orow[c] = xr[c] * inv * weight[c];
    }
}

// rms_norm_q8_1(x, weight, out, y, dim, eps): rms_norm_f32's row (out; may not be x) and the
// same values quantized to Q8_1 into y (row r: dim / 32 blocks at y + r * dim / 32), as
// quantize_q8_1 of out would make them, in one pass. dim % 32 == 0.
// Launch: one block per row, blockDim.x = 256; gridDim.x = n_rows.
extern "C" __global__ void __launch_bounds__(256)
    rms_norm_q8_1(const float *__restrict__ x, const float *__restrict__ weight,
                  float *__restrict__ out, block_q8_1 *__restrict__ y, int dim, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const float *xr = x + row * dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float v = xr[c];
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)dim + eps);
    // Whole warps take whole blocks of 32 values (blockDim.x and dim are multiples of 32).
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float v = xr[c] * inv * weight[c];
        out[row * dim + c] = v;
        warp_quantize_q8_1(v, y[(row * dim + c) / LLMD_QK]);
    }
}
