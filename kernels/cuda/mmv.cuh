// The row product of the float matrix-vector kernels (mmv.cu), shared with the router of a
// mixture of experts fused with its routing (moe.cu's moe_router_route_f32), so both give the
// same bits: the weights of one row read as pairs, per element type, each lane of a warp
// striding over the pairs with two fused multiply-adds each, then one warp_sum.
#pragma once
#include "common.cuh"

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

// Row `row` of w (`cols` weights, cols even) times the `cols` f32 values of x, computed by one
// warp (every lane gets the sum).
template <typename L>
static __device__ __forceinline__ float mmv_row(const void *__restrict__ w,
                                                const float *__restrict__ x, int row, int cols) {
    const typename L::pair *wr = (const typename L::pair *)w + (long long)row * (cols / 2);
    const float2 *xr = (const float2 *)x;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols / 2; i += LLMD_WARP) {
        const float2 wv = L::load(wr, i);
        const float2 xv = xr[i];
        sum = fmaf(wv.x, xv.x, fmaf(wv.y, xv.y, sum));
    }
    return warp_sum(sum);
}
