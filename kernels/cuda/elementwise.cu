// Element-wise ops on f32 activations. Launch for all: blockDim.x = 256,
// gridDim.x = ceil(n / 256) (n = number of values written).
#include "common.cuh"

// GELU with GGML's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))).
static __device__ __forceinline__ float gelu_tanh(float x) {
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f;
    const float inner = sqrt_2_over_pi * x * (1.0f + 0.044715f * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

// gate[i] = gelu(gate[i]) * up[i] for i < n (GeGLU feed-forward, Gemma).
extern "C" __global__ void __launch_bounds__(256)
    geglu_f32(float *__restrict__ gate, const float *__restrict__ up, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        gate[i] = gelu_tanh(gate[i]) * up[i];
    }
}

// gate[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up, for i < n (SwiGLU: Llama, Qwen).
extern "C" __global__ void __launch_bounds__(256)
    swiglu_f32(float *__restrict__ gate, const float *__restrict__ up, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// glu_q8_1(gate, up, y, n, gelu): act(gate[i]) * up[i] for i < n (GeGLU when gelu, else SwiGLU,
// exactly as geglu_f32 / swiglu_f32 compute it), quantized to Q8_1 into y (n / 32 blocks) as
// quantize_q8_1 would quantize it: the input of the down projection's matrix-vector product,
// without writing the f32 values. n % 32 == 0 and rows of whole blocks.
// Launch: blockDim.x = 256 (one warp per block of 32 values), gridDim.x = ceil(n / 256).
extern "C" __global__ void __launch_bounds__(256)
    glu_q8_1(const float *__restrict__ gate, const float *__restrict__ up,
             block_q8_1 *__restrict__ y, long long n, int gelu) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i - threadIdx.x % LLMD_WARP >= n) {
        return; // the whole warp is past the end (n is whole warps)
    }
    const float g = gate[i];
    const float v = gelu ? gelu_tanh(g) * up[i] : g / (1.0f + expf(-g)) * up[i];
    warp_quantize_q8_1(v, y[i / LLMD_QK]);
}

// dst[i] += src[i] for i < n (residual connections).
extern "C" __global__ void __launch_bounds__(256)
    add_f32(float *__restrict__ dst, const float *__restrict__ src, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        dst[i] += src[i];
    }
}

// x[i] *= factor for i < n.
extern "C" __global__ void __launch_bounds__(256)
    scale_f32(float *__restrict__ x, float factor, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] *= factor;
    }
}

// x[t][c] += bias[c] for n_tokens rows of `width` values (n = n_tokens * width).
extern "C" __global__ void __launch_bounds__(256)
    add_bias_f32(float *__restrict__ x, const float *__restrict__ bias, int width, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] += bias[i % width];
    }
}

// x[i] = tanh(x[i] * (1 / cap)) * cap for i < n (soft-capping of Gemma 2's final logits, as
// llama.cpp builds it: scale by 1 / cap, tanh, scale by cap).
extern "C" __global__ void __launch_bounds__(256)
    softcap_f32(float *__restrict__ x, float cap, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] = tanhf(x[i] * (1.0f / cap)) * cap;
    }
}
