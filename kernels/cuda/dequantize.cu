// Dequantization of weight tiles to f32: the prefill matmul path of F16 and BF16 rows that the
// tensor-core GEMMs cannot take (the host dequantizes a tile of rows into a scratch buffer and
// multiplies it with gemm_f32_nt). The block-quantized types' kernels are checked by the host
// emulation against the gguf package's dequantizers bit for bit (their dequant8 is also what
// get_rows and int8w must agree with); the backend multiplies those types with mmq.cu instead.
//
// Common signature of every dequantize_<type>_f32 kernel:
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

// dequantize_<name>_f32 for every type of LLMD_QUANT_TYPES and LLMD_HALF_TYPES (types.cuh).
#define DEQUANTIZE_KERNELS(name, type)                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        dequantize_##name##_f32(const void *__restrict__ w, float *__restrict__ y, long long n) {  \
        dequantize_to_f32<type>(w, y, n);                                                          \
    }

LLMD_QUANT_TYPES(DEQUANTIZE_KERNELS)
LLMD_HALF_TYPES(DEQUANTIZE_KERNELS)
