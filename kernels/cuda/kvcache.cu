// KV cache store: converts the keys (or values) of n_tokens tokens from f32 activations to the
// cache's type at their positions. The cache of one layer of one sequence holds `capacity`
// positions of `width = n_kv_heads * head_dim` values, laid out as kv.cuh describes.
//
// kv_store_<type>(src, cache, positions, width): src is n_tokens rows of `width` f32 values (the
// host offsets it to the first row); positions: n_tokens u32, each < capacity (host-checked).
// Called once for keys and once for values. The quantized stores make the same bytes as the CPU
// backend (llama.cpp's set_rows into a cache of that type):
//   kv_store_q8_0: ggml-cpu's x86 quantize_row_q8_0 (warp_quantize_q8_0 in kv.cuh);
//   kv_store_q4_0: quantize_row_q4_0_ref: d = m / -8 with m the first value of largest
//                  magnitude, q = min(15, (int)(x * (1 / d) + 8.5)), element j in the low nibble
//                  of byte j, element j + 16 in its high nibble.
// Launch: blockDim.x = 256, gridDim = (ceil(width / 256), n_tokens); for the quantized types
// width is a multiple of 32 (one warp per block of 32 values).
//
// kv_rotate_f32(src, dst, n): the orthonormal Walsh-Hadamard rotation llama.cpp applies to the
// keys, queries, values and attention outputs of quantized caches: each chunk of n values (n a
// power of two, 64 ..= 256) becomes H x, H[i][j] = (-1)^popcount(i & j) / sqrt(n), computed as
// ggml-cpu's fwht (and the CPU backend's hadamard::rotate): x * (1 / sqrt(n)), then log2(n)
// butterfly passes (u, v) -> (u + v, u - v) of widths 1, 2, 4, ..., the same f32 results. dst may
// be src. Launch: blockDim.x = n, gridDim = number of chunks.
#include "common.cuh"
#include "kv.cuh"

extern "C" __global__ void __launch_bounds__(256)
    kv_store_f16(const float *__restrict__ src, __half *__restrict__ cache,
                 const unsigned int *__restrict__ positions, int width) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (c < width) {
        cache[(long long)positions[t] * width + c] = __float2half(src[(long long)t * width + c]);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    kv_store_q8_0(const float *__restrict__ src, block_q8_0 *__restrict__ cache,
                  const unsigned int *__restrict__ positions, int width) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (c - (int)(threadIdx.x % LLMD_WARP) >= width) {
        return; // the whole warp is past the row (width is whole warps)
    }
    __half d;
    const int q = warp_quantize_q8_0(src[(long long)t * width + c], d);
    block_q8_0 *b = cache + ((long long)positions[t] * width + c) / LLMD_QK;
    b->qs[c % LLMD_QK] = (signed char)q;
    if (c % LLMD_QK == 0) {
        b->d = d;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    kv_store_q4_0(const float *__restrict__ src, block_q4_0 *__restrict__ cache,
                  const unsigned int *__restrict__ positions, int width) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    const int lane = threadIdx.x % LLMD_WARP;
    if (c - lane >= width) {
        return; // the whole warp is past the row (width is whole warps)
    }
    const float x = src[(long long)t * width + c];
    // The first lane holding the largest magnitude, and its signed value.
    const float amax = warp_max(fabsf(x));
    int first = fabsf(x) == amax ? lane : LLMD_WARP;
#pragma unroll
    for (int off = LLMD_WARP / 2; off > 0; off >>= 1) {
        first = min(first, __shfl_xor_sync(LLMD_FULL_MASK, first, off));
    }
    const float m = __shfl_sync(LLMD_FULL_MASK, x, first & (LLMD_WARP - 1));
    const float d = m / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    // No fused multiply-add: the CPU rounds the product, then the sum.
    const int q = min(15, max(0, (int)__fadd_rn(__fmul_rn(x, id), 8.5f)));
    const int high = __shfl_sync(LLMD_FULL_MASK, q, (lane + 16) & (LLMD_WARP - 1));
    block_q4_0 *b = cache + ((long long)positions[t] * width + c) / LLMD_QK;
    if (lane < 16) {
        b->qs[lane] = (unsigned char)(q | (high << 4));
    }
    if (lane == 0) {
        b->d = __float2half(d);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    kv_rotate_f32(const float *src, float *dst, int n) {
    __shared__ float x[256];
    const int i = threadIdx.x;
    const long long at = (long long)blockIdx.x * n + i;
    x[i] = src[at] * (1.0f / sqrtf((float)n));
    __syncthreads();
    for (int len = 1; len < n; len <<= 1) {
        const bool lead = (i & len) == 0;
        float u = 0.0f, v = 0.0f;
        if (lead) {
            u = x[i];
            v = x[i + len];
        }
        __syncthreads();
        if (lead) {
            x[i] = u + v;
            x[i + len] = u - v;
        }
        __syncthreads();
    }
    dst[at] = x[i];
}
