// The routing and the weighted sum of a mixture-of-experts block on the GPU (the routed matmul
// itself, ggml's mul_mat_id, is mmvq.cu's mul_mat_vec_id_<type>_q8_1), so that a decode step's
// experts run without the host: the router logits never leave the device, and the block's output
// goes into the residual stream where it lies. An F32 router's product (as llama-quantize leaves
// it) runs with the routing in one launch (moe_router_route_f32).
//
// The kernels compute what the host computes (kernels/src/moe.rs `Routing::route`, the slot-order
// sum of daemon/src/model/moe.rs and the shared expert's gate of shared_expert.rs) with the same
// f32 and f64 operations in the same order, products and sums kept apart (__fmul_rn/__fadd_rn:
// no fused multiply-add), so that the experts chosen and the sums match the host's wherever the
// exponential matches (the fake driver's emulation: bit for bit).
#include "mmv.cuh"

// Most experts a token may use (k of top-k; models use 1 to 8): the size of the top-k list each
// token keeps in registers. The host refuses more.
#define MOE_MAX_USED 32

// The smallest sum of the chosen probabilities the weights are divided by (f16's smallest normal
// value, 2^-14, as llama.cpp clamps; MIN_WEIGHT_SUM of kernels/src/moe.rs).
#define MOE_MIN_WEIGHT_SUM (1.0f / 16384.0f)

// One token's routing by one warp (moe_route_f32's arithmetic): its n_expert logits at p turned
// into probabilities, its n_used ids and weights written at id_row and w_row by lane 0. The
// lanes exchange values through p, so they meet at __syncwarp.
static __device__ __forceinline__ void moe_route_row(float *__restrict__ p, int n_expert,
                                                     int n_used, int normalize,
                                                     float *__restrict__ id_row,
                                                     float *__restrict__ w_row) {
    const int lane = threadIdx.x;
    float m = LLMD_NEG_INF;
    for (int i = lane; i < n_expert; i += LLMD_WARP) {
        m = fmaxf(m, p[i]);
    }
    m = warp_max(m);
    for (int i = lane; i < n_expert; i += LLMD_WARP) {
        p[i] = expf(p[i] - m);
    }
    __syncwarp();
    float inv = 0.0f;
    if (lane == 0) {
        double sum = 0.0;
        for (int i = 0; i < n_expert; ++i) {
            sum += (double)p[i];
        }
        inv = (float)(1.0 / sum);
    }
    inv = __shfl_sync(LLMD_FULL_MASK, inv, 0);
    for (int i = lane; i < n_expert; i += LLMD_WARP) {
        p[i] = __fmul_rn(p[i], inv);
    }
    __syncwarp();
    // Top-k: n_used rounds of a warp-wide argmax, each over the experts that come after the
    // last one chosen in the host's order (higher probability first, the lower expert first
    // among equals): the first n_used of a stable descending sort, which is what the host's
    // insertion keeps. (Only NaN probabilities, from NaN logits, order otherwise there; an
    // expert this finds none for is written as n_expert, which the routed matmul turns into
    // NaN rows.)
    int top[MOE_MAX_USED];
    float last_p = 0.0f;
    int last_i = -1; // none chosen yet
    for (int j = 0; j < n_used; ++j) {
        float best_p = 0.0f;
        int best_i = n_expert; // none found
        for (int i = lane; i < n_expert; i += LLMD_WARP) {
            const float v = p[i];
            const bool after = last_i < 0 || v < last_p || (v == last_p && i > last_i);
            if (after && (best_i == n_expert || v > best_p || (v == best_p && i < best_i))) {
                best_p = v;
                best_i = i;
            }
        }
        // The same total order, so every lane ends with the warp's best.
        for (int off = LLMD_WARP / 2; off > 0; off >>= 1) {
            const float other_p = __shfl_xor_sync(LLMD_FULL_MASK, best_p, off);
            const int other_i = __shfl_xor_sync(LLMD_FULL_MASK, best_i, off);
            if (other_i != n_expert &&
                (best_i == n_expert || other_p > best_p || (other_p == best_p && other_i < best_i))) {
                best_p = other_p;
                best_i = other_i;
            }
        }
        top[j] = best_i;
        last_p = best_p;
        last_i = best_i;
    }
    if (lane != 0) {
        return;
    }
    const float nan = __int_as_float(0x7fc00000);
    double sum = 0.0;
    for (int j = 0; j < n_used; ++j) {
        sum += (double)(top[j] < n_expert ? p[top[j]] : nan);
    }
    const float div = fmaxf((float)sum, MOE_MIN_WEIGHT_SUM);
    for (int j = 0; j < n_used; ++j) {
        const float w = top[j] < n_expert ? p[top[j]] : nan;
        id_row[j] = (float)top[j];
        w_row[j] = normalize ? w / div : w;
    }
}

// moe_route_f32(logits, n_expert, n_used, normalize, ids, weights): routes one token per block.
//   logits:  n_tokens rows of n_expert router logits, turned into probabilities in place: the
//            softmax with the row's maximum subtracted, f32 exponentials, their sum in f64 in
//            expert order (one lane), one f32 reciprocal of it and one product per value;
//   n_used:  experts per token, 1 <= n_used <= min(n_expert, MOE_MAX_USED) (checked by the host);
//   normalize: 1: each token's chosen probabilities divided by their f64 sum (slot order),
//            clamped below at MOE_MIN_WEIGHT_SUM (Mixtral, Qwen3-MoE); 0: used as they are;
//   ids:     n_tokens rows of n_used expert ids, as exact f32 values, highest probability first,
//            the lower expert first among equal probabilities (the host's top_k: the first
//            n_used of a stable descending sort; here n_used rounds of a warp-wide argmax);
//   weights: n_tokens rows of n_used weights, parallel to ids.
// Launch: blockDim.x = 32 (one warp), gridDim.x = n_tokens.
extern "C" __global__ void __launch_bounds__(LLMD_WARP)
    moe_route_f32(float *__restrict__ logits, int n_expert, int n_used, int normalize,
                  float *__restrict__ ids, float *__restrict__ weights) {
    moe_route_row(logits + (long long)blockIdx.x * n_expert, n_expert, n_used, normalize,
                  ids + (long long)blockIdx.x * n_used, weights + (long long)blockIdx.x * n_used);
}

// Warps of a moe_router_route_f32 block: each computes every MOE_ROUTER_WARPS-th logit.
#define MOE_ROUTER_WARPS 4

// moe_router_route_f32(router, x, cols, logits, n_expert, n_used, normalize, ids, weights): an
// F32 router's product fused with the routing, one block per token: the token's n_expert logits
// (router: n_expert rows of `cols` f32 weights, cols even; x: n_tokens rows of `cols` values),
// each as mul_mat_vec_f32 computes it (mmv_row), written into its row of logits; then warp 0
// routes them as moe_route_f32 does (moe_route_row). The same bits as mul_mat_vec_f32 followed
// by moe_route_f32.
// Launch: blockDim = (32, MOE_ROUTER_WARPS), gridDim.x = n_tokens.
extern "C" __global__ void __launch_bounds__(LLMD_WARP *MOE_ROUTER_WARPS)
    moe_router_route_f32(const float *__restrict__ router, const float *__restrict__ x, int cols,
                         float *__restrict__ logits, int n_expert, int n_used, int normalize,
                         float *__restrict__ ids, float *__restrict__ weights) {
    const long long t = blockIdx.x;
    float *p = logits + t * n_expert;
    for (int e = threadIdx.y; e < n_expert; e += MOE_ROUTER_WARPS) {
        const float v = mmv_row<mmv_f32>(router, x + t * cols, e, cols);
        if (threadIdx.x == 0) {
            p[e] = v;
        }
    }
    __syncthreads();
    if (threadIdx.y != 0) {
        return;
    }
    moe_route_row(p, n_expert, n_used, normalize, ids + t * n_used, weights + t * n_used);
}

// moe_combine_f32(down, weights, n_used, width, shared, shared_gate, x, n): the block's output
// added to the residual stream, for n = n_tokens * width values:
//   x[t][c] += (sum over slots j in order of down[t * n_used + j][c] * weights[t][j])
//              + shared[t][c] * sigmoid(shared_gate[t])
//   down:    the experts' outputs, n_tokens * n_used rows of width (pair p = t * n_used + j);
//   weights: n_tokens rows of n_used weights (moe_route_f32's);
//   shared, shared_gate: the shared expert's output (n_tokens rows of width) and its gate logit
//            per token (Qwen2-MoE), or both null; the sigmoid as ggml's silu(g) / g;
//   every product rounded before its sum, in the host's order: the first slot's product, each
//   later slot's added, then the shared expert's, then the residual.
// Launch: blockDim.x = 256, gridDim.x = ceil(n / 256).
extern "C" __global__ void __launch_bounds__(256)
    moe_combine_f32(const float *__restrict__ down, const float *__restrict__ weights, int n_used,
                    int width, const float *__restrict__ shared,
                    const float *__restrict__ shared_gate, float *__restrict__ x, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const long long t = i / width;
    const long long c = i % width;
    const float *w = weights + t * n_used;
    const float *d = down + t * n_used * width + c;
    float acc = __fmul_rn(d[0], w[0]);
    for (int j = 1; j < n_used; ++j) {
        acc = __fadd_rn(acc, __fmul_rn(d[(long long)j * width], w[j]));
    }
    if (shared != nullptr) {
        const float g = shared_gate[t];
        const float scale = g / (1.0f + expf(-g)) / g;
        acc = __fadd_rn(acc, __fmul_rn(shared[i], scale));
    }
    x[i] = __fadd_rn(x[i], acc);
}
