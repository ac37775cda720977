// Shared definitions for llmd's CUDA kernels: GGML block layouts (byte-identical to
// kernels/src/quant/blocks.rs), unaligned integer loads, warp reductions.
//
// Every kernel file includes this header. Sources are compiled with NVRTC (see
// scripts/check-cuda-kernels) with `-default-device --std=c++17` and the CUDA runtime headers on
// the include path; nothing here needs the C++ standard library.
#pragma once

#ifndef LLMD_HOST_EMULATION // host_check/emulate.cpp supplies its own definitions
#include <cuda_fp16.h>
#endif

#define LLMD_WARP 32
#define LLMD_QK 32
#define LLMD_QK_K 256
#define LLMD_FULL_MASK 0xffffffffu
// -infinity as a float (NVRTC has no <cmath> INFINITY).
#define LLMD_NEG_INF __int_as_float(0xff800000)

// Q4_0: 32 weights, 4 bits each, value = d * (q - 8). 18 bytes.
struct block_q4_0 {
    __half d;
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

// Q5_0: 32 weights, 5 bits each (4 in qs, the 5th in qh), value = d * (q - 16). 22 bytes.
struct block_q5_0 {
    __half d;
    unsigned char qh[4];
    unsigned char qs[LLMD_QK / 2];
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

// Q8_0: 32 weights, value = d * q. 34 bytes.
struct block_q8_0 {
    __half d;
    signed char qs[LLMD_QK];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

// Q8_1: 32 activations, value = d * q, with s = d * sum(q). 36 bytes; qs is 4-byte aligned when
// the buffer is.
struct block_q8_1 {
    __half d;
    __half s;
    signed char qs[LLMD_QK];
};
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");

// Q4_K: 256 weights in 8 sub-blocks of 32 with 6-bit scales and mins; value =
// d * sc * q - dmin * m. 144 bytes.
struct block_q4_K {
    __half d;
    __half dmin;
    unsigned char scales[12];
    unsigned char qs[LLMD_QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

// Q6_K: 256 weights in 16 sub-blocks of 16 with 8-bit scales; value = d * sc * (q - 32).
// 210 bytes (only 2-byte aligned in a row).
struct block_q6_K {
    unsigned char ql[LLMD_QK_K / 2];
    unsigned char qh[LLMD_QK_K / 4];
    signed char scales[LLMD_QK_K / 16];
    __half d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

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
