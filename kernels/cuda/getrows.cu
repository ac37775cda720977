// Embedding lookup: out[t][c] = dequant(table[ids[t]][c]) * scale, for tables of every weight
// type of types.cuh (Gemma scales embeddings by sqrt(width); others pass 1).
//
// Common signature of every get_rows_<type> kernel:
//   table: rows of `cols` weights (cols a multiple of the type's block size and of 8);
//   ids:   n_tokens row indices (checked against the table's rows by the host);
//   out:   f32, n_tokens rows of `cols` values.
// Launch: blockDim.x = 256, gridDim = (ceil(cols / 8 / 256), n_tokens); 8 values per thread.
#include "dequantize.cuh"

template <int TYPE>
static __device__ __forceinline__ void get_rows(const void *__restrict__ table,
                                                const unsigned int *__restrict__ ids,
                                                float *__restrict__ out, int cols, float scale) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (8 * g >= cols) {
        return;
    }
    const long long group = (long long)ids[t] * (cols / 8) + g;
    float v[8];
    dequant8<TYPE>(table, group, v);
    float4 *o = (float4 *)(out + (long long)t * cols + 8 * g);
    o[0] = make_float4(v[0] * scale, v[1] * scale, v[2] * scale, v[3] * scale);
    o[1] = make_float4(v[4] * scale, v[5] * scale, v[6] * scale, v[7] * scale);
}

// get_rows_<name> for F32 and every type of LLMD_HALF_TYPES and LLMD_QUANT_TYPES (types.cuh).
#define GET_ROWS_KERNEL(name, type)                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        get_rows_##name(const void *__restrict__ table, const unsigned int *__restrict__ ids,      \
                        float *__restrict__ out, int cols, float scale) {                          \
        get_rows<type>(table, ids, out, cols, scale);                                              \
    }

GET_ROWS_KERNEL(f32, LLMD_TYPE_F32)
LLMD_HALF_TYPES(GET_ROWS_KERNEL)
LLMD_QUANT_TYPES(GET_ROWS_KERNEL)
