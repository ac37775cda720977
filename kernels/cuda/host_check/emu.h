// Host emulation of CUDA device code: the CUDA C keywords and intrinsics the kernels in
// kernels/cuda/*.cu use, as plain C++, and every kernel file included. A program that includes
// this supplies the two synchronisation points and runs thread blocks (emulate.cpp: each thread a
// real OS thread; fake_driver/fake_cuda.cpp: each thread a fiber):
//   static void emu_warp_barrier();   // all live threads of this thread's warp arrive
//   static void emu_block_barrier();  // all live threads of this block arrive
// and sets threadIdx / blockIdx / emu_thread_linear for the thread that runs.
// What emulation cannot show: performance, memory-coalescing, alignment faults, real
// warp-synchronous timing, or the GPU's own rounding of transcendental functions.
#pragma once
#define LLMD_HOST_EMULATION 1

#include <barrier>
#include <cmath>
#include <memory>
#include <thread>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct __half {
    unsigned short x;
};
struct __half2 {
    __half a, b;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned int x, y, z, w;
};
struct dim3_t {
    unsigned int x = 1, y = 1, z = 1;
};
static thread_local dim3_t threadIdx, blockIdx;
static dim3_t blockDim, gridDim;
// Index of the running thread within its block (x fastest).
static thread_local int emu_thread_linear;
// Shuffle exchange slots of the running block, one per thread.
static thread_local unsigned long long *emu_slots;

static void emu_warp_barrier();
static void emu_block_barrier();

static float half_to_float(unsigned short h) {
    const unsigned int sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    float v;
    if (exp == 0) {
        v = std::ldexp((float)man, -24);
    } else if (exp == 31) {
        v = man ? NAN : INFINITY;
    } else {
        v = std::ldexp((float)(man | 0x400u), (int)exp - 25);
    }
    return sign ? -v : v;
}
static unsigned short float_to_half(float f) {
    // Round to nearest even through the exact f32 -> f16 grid (normal range only is enough here).
    if (f == 0.0f) {
        return std::signbit(f) ? 0x8000 : 0;
    }
    const unsigned short sign = std::signbit(f) ? 0x8000 : 0;
    float a = std::fabs(f);
    int e;
    std::frexp(a, &e); // a = m * 2^e, m in [0.5, 1)
    int exp = e - 1 + 15;
    if (exp <= 0) {
        return sign | (unsigned short)std::nearbyint(std::ldexp(a, 24));
    }
    if (exp >= 31) {
        return sign | 0x7c00;
    }
    unsigned int man = (unsigned int)std::nearbyint(std::ldexp(a, 10 - (e - 1))) - 0x400u;
    if (man == 0x400u) {
        man = 0;
        ++exp;
    }
    return sign | (unsigned short)((exp << 10) | man);
}
static inline float __half2float(__half h) { return half_to_float(h.x); }
static inline __half __float2half(float f) { return __half{float_to_half(f)}; }
static inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
static inline float2 __half22float2(__half2 h) { return {__half2float(h.a), __half2float(h.b)}; }
static inline __half2 __floats2half2_rn(float a, float b) {
    return {__float2half(a), __float2half(b)};
}
static inline __half2 __float2half2_rn(float a) { return {__float2half(a), __float2half(a)}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline int __float2int_rn(float f) { return (int)std::nearbyint(f); }
static inline float __int_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) {
        c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    }
    return c;
}
static inline int __vsubss4(int a, int b) {
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) {
        int d = (int)(signed char)(a >> (8 * i)) - (int)(signed char)(b >> (8 * i));
        d = d < -128 ? -128 : (d > 127 ? 127 : d);
        r |= (unsigned int)(d & 0xff) << (8 * i);
    }
    return (int)r;
}
template <typename T> static T shuffle(T x, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    const int warp = emu_thread_linear / 32;
    std::memcpy(&emu_slots[emu_thread_linear], &x, sizeof(T));
    emu_warp_barrier();
    T y;
    std::memcpy(&y, &emu_slots[warp * 32 + src_lane], sizeof(T));
    emu_warp_barrier();
    return y;
}
template <typename T> static inline T __shfl_xor_sync(unsigned int, T x, int mask) {
    return shuffle(x, (emu_thread_linear % 32) ^ mask);
}
template <typename T> static inline T __shfl_sync(unsigned int, T x, int lane) {
    return shuffle(x, lane);
}
static inline void __syncthreads() { emu_block_barrier(); }
using std::max;
using std::min;

#include "../attention.cu"
#include "../dequantize.cu"
#include "../elementwise.cu"
#include "../gemm.cu"
#include "../getrows.cu"
#include "../kvcache.cu"
#include "../mmv.cu"
#include "../mmvq.cu"
#include "../norm.cu"
#include "../quantize.cu"
#include "../rope.cu"
