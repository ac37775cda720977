// Dequantization of weight tiles for the prefill matmul path: the host dequantizes a tile of
// rows of a quantized weight into a scratch buffer and multiplies it with cuBLAS (f16 x f16 ->
// f32 GEMM on the f16 output, or SGEMM / gemm_f32_nt on the f32 output).
//
// Common signature of every dequantize_<type>_<out> kernel:
//   w: the first block of the tile (a tile is whole rows, so it starts at a block boundary);
//   y: n output values, row-major like the weight;
//   n: number of weights, a multiple of the type's block size (rows * cols of the tile).
// Launch: blockDim.x = 256, gridDim.x = ceil(n / 8 / 256); each thread writes 8 values.
#include "dequantize.cuh"

template <int TYPE>
static __device__ __forceinline__ void dequantize_to_f32(const void *__restrict__ w,
                                                         float *__restrict__ y, long long n) {
    const long long group = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (8 * group >= n) {
        return;
    }
    float v[8];
    dequant8<TYPE>(w, group, v);
    float4 *out = (float4 *)(y + 8 * group);
    out[0] = make_float4(v[0], v[1], v[2], v[3]);
    out[1] = make_float4(v[4], v[5], v[6], v[7]);
}

template <int TYPE>
static __device__ __forceinline__ void dequantize_to_f16(const void *__restrict__ w,
                                                         __half *__restrict__ y, long long n) {
    const long long group = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (8 * group >= n) {
        return;
    }
    float v[8];
    dequant8<TYPE>(w, group, v);
    __half2 *out = (__half2 *)(y + 8 * group);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    }
}

// dequantize_<name>_f32 and dequantize_<name>_f16 for every type of LLMD_QUANT_TYPES and
// LLMD_HALF_TYPES (types.cuh).
#define DEQUANTIZE_KERNELS(name, type)                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        dequantize_##name##_f32(const void *__restrict__ w, float *__restrict__ y, long long n) {  \
        dequantize_to_f32<type>(w, y, n);                                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        dequantize_##name##_f16(const void *__restrict__ w, __half *__restrict__ y, long long n) { \
        dequantize_to_f16<type>(w, y, n);                                                          \
    }

LLMD_QUANT_TYPES(DEQUANTIZE_KERNELS)
LLMD_HALF_TYPES(DEQUANTIZE_KERNELS)
