// Shared definitions for llmd's CUDA kernels: the GGML block layouts (blocks.cuh), unaligned
// integer loads, warp reductions.
//
// Every kernel file includes this header. Sources are compiled with NVRTC (see
// scripts/check-cuda-kernels) with `-default-device --std=c++17` and the CUDA runtime headers on
// the include path; nothing here needs the C++ standard library.
#pragma once

#ifndef LLMD_HOST_EMULATION // host_check/emulate.cpp supplies its own definitions
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#define LLMD_WARP 32
#define LLMD_QK 32
#define LLMD_QK_K 256
#define LLMD_FULL_MASK 0xffffffffu
// -infinity as a float (NVRTC has no <cmath> INFINITY).
#define LLMD_NEG_INF __int_as_float(0xff800000)

// Every GGML weight block layout the kernels read, and Q8_1 (the activations' format).
#include "blocks.cuh"

// Loads 4 bytes that are only 2-byte aligned (Q4_0, Q5_0, Q8_0, Q6_K quants).
static __device__ __forceinline__ int load_int_b2(const void *p, int i32) {
    const unsigned short *p16 = (const unsigned short *)p + 2 * i32;
    return (int)((unsigned int)p16[0] | ((unsigned int)p16[1] << 16));
}

// Loads 4 bytes that are 4-byte aligned (Q8_1 quants, Q4_K quants).
static __device__ __forceinline__ int load_int_b4(const void *p, int i32) {
    return ((const int *)p)[i32];
}

static __device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = LLMD_WARP / 2; off > 0; off >>= 1) {
        x += __shfl_xor_sync(LLMD_FULL_MASK, x, off);
    }
    return x;
}

static __device__ __forceinline__ int warp_sum_int(int x) {
#pragma unroll
    for (int off = LLMD_WARP / 2; off > 0; off >>= 1) {
        x += __shfl_xor_sync(LLMD_FULL_MASK, x, off);
    }
    return x;
}

static __device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int off = LLMD_WARP / 2; off > 0; off >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(LLMD_FULL_MASK, x, off));
    }
    return x;
}

// Sum over a whole thread block (blockDim.x a multiple of 32, at most 1024). Every thread gets
// the result. `scratch` holds 32 floats of shared memory.
static __device__ __forceinline__ float block_sum(float x, float *scratch) {
    const int lane = threadIdx.x % LLMD_WARP;
    const int warp = threadIdx.x / LLMD_WARP;
    const int n_warps = blockDim.x / LLMD_WARP;
    x = warp_sum(x);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = x;
    }
    __syncthreads();
    x = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(x);
}

// Maximum over a whole thread block (blockDim.x a multiple of 32, at most 1024). Every thread
// gets the result. `scratch` holds 32 floats of shared memory.
static __device__ __forceinline__ float block_max(float x, float *scratch) {
    const int lane = threadIdx.x % LLMD_WARP;
    const int warp = threadIdx.x / LLMD_WARP;
    const int n_warps = blockDim.x / LLMD_WARP;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = x;
    }
    __syncthreads();
    x = lane < n_warps ? scratch[lane] : LLMD_NEG_INF;
    return warp_max(x);
}

// Quantizes one block of 32 values held one per lane of a warp (`v`, lane = index in the block)
// to Q8_1 into `b`, as quantize_q8_1 (quantize.cu) does: d = max|v| / 127, q = round(v / d),
// s = d * sum(q). Every lane of the warp must call it.
static __device__ __forceinline__ void warp_quantize_q8_1(float v, block_q8_1 &b) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const int q = amax == 0.0f ? 0 : __float2int_rn(v / d);
    const int sum = warp_sum_int(q);
    const int lane = threadIdx.x % LLMD_WARP;
    b.qs[lane] = (signed char)q;
    if (lane == 0) {
        b.d = __float2half(d);
        b.s = __float2half(d * (float)sum);
    }
}

// Q4_K's packed 6-bit scale and min of sub-block j (0..7), as in GGML's get_scale_min_k4.
static __device__ __forceinline__ void q4_K_scale_min(int j, const unsigned char *q, int &sc,
                                                      int &m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}
