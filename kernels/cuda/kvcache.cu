// KV cache store: converts the keys (or values) of n_tokens tokens from f32 activations to the
// f16 cache at their positions. The cache of one layer of one sequence holds `capacity`
// positions of `width = n_kv_heads * head_dim` values: cache[pos * width + c].
//
// kv_store_f16(src, cache, positions, width): src is n_tokens rows of `width` f32 values (the
// host offsets it to the first row); positions: n_tokens u32, each < capacity (host-checked).
// Called once for keys and once for values.
// Launch: blockDim.x = 256, gridDim = (ceil(width / 256), n_tokens).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    kv_store_f16(const float *__restrict__ src, __half *__restrict__ cache,
                 const unsigned int *__restrict__ positions, int width) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (c < width) {
        cache[(long long)positions[t] * width + c] = __float2half(src[(long long)t * width + c]);
    }
}
