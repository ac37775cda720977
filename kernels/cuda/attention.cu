// Attention of f32 queries over one sequence's f16 KV cache, with grouped-query attention,
// sliding windows, a logit scale and optional tanh soft-capping; online softmax (running max
// and sum), f32 accumulation.
//
// Shapes and conventions shared by the kernels:
//   q, out:     n_queries rows of n_heads * head_dim f32 (the host offsets both to the first
//               row); head h of query i at [(i * n_heads + h) * head_dim].
//   k, v:       the layer's cache: capacity positions of n_kv_heads * head_dim f16; key of
//               position p, kv head g at [(p * n_kv_heads + g) * head_dim]. Query head h uses kv
//               head h / (n_heads / n_kv_heads).
//   positions:  n_queries u32: the cache position of each query; it sees keys kp with
//               kp <= pos and (window == 0 or pos - kp < window). Every such position must have
//               been stored (kv_store_f16) before the call.
//   logit:      s = scale * (q . k); with softcap > 0, s = softcap * tanh(s / softcap).
//   head_dim:   a multiple of 8, at most 256 (host-checked).
//   part:       with n_splits = gridDim.z > 1, each (query, head, split) writes (max, sum,
//               acc[head_dim]) to part[((i * n_heads + h) * n_splits + z) * (head_dim + 2)]
//               and attn_combine_f32 produces out; with n_splits = 1 out is written directly
//               and part is unused (may be null).
#include "common.cuh"

#define ATT_TILE 32
#define ATT_MAX_D 256
#define ATT_MAX_PER_LANE (ATT_MAX_D / LLMD_WARP)
#define ATT_PREFILL_WARPS 8
#define ATT_DECODE_WARPS 4

static __device__ __forceinline__ float attn_logit(float dot, float scale, float softcap) {
    const float s = dot * scale;
    return softcap > 0.0f ? softcap * tanhf(s / softcap) : s;
}

// Two packed f16 (low half first) as floats.
static __device__ __forceinline__ float2 u32_to_float2(unsigned int u) {
    return make_float2(__half2float(__ushort_as_half((unsigned short)(u & 0xffffu))),
                       __half2float(__ushort_as_half((unsigned short)(u >> 16))));
}

// Writes one (query, head, split) result: normalised output, or the partial state.
static __device__ __forceinline__ void attn_write(float *__restrict__ out, float *__restrict__ part,
                                                  long long qh, int head_dim, int n_splits,
                                                  float m, float l,
                                                  const float (&acc)[ATT_MAX_PER_LANE]) {
    const int lane = threadIdx.x % LLMD_WARP;
    if (n_splits == 1) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
            const int d = lane + LLMD_WARP * i;
            if (d < head_dim) {
                out[qh * head_dim + d] = acc[i] * inv;
            }
        }
    } else {
        float *p = part + (qh * n_splits + blockIdx.z) * (head_dim + 2);
        if (lane == 0) {
            p[0] = m;
            p[1] = l;
        }
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
            const int d = lane + LLMD_WARP * i;
            if (d < head_dim) {
                p[2 + d] = acc[i];
            }
        }
    }
}

// The key range [lo, hi) of split blockIdx.z of [range_lo, range_hi), in whole tiles.
static __device__ __forceinline__ void split_range(int range_lo, int range_hi, int &lo, int &hi) {
    const int n_splits = gridDim.z;
    const int len = range_hi > range_lo ? range_hi - range_lo : 0;
    int chunk = (len + n_splits - 1) / n_splits;
    chunk = (chunk + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    lo = range_lo + (int)blockIdx.z * chunk;
    hi = min(range_hi, lo + chunk);
}

// attn_prefill_f16kv: causal attention of many queries (prefill), flash-attention style. A block
// takes ATT_PREFILL_WARPS = 8 consecutive queries of one head (one warp each); tiles of 32 keys
// and values are staged in shared memory once for all 8 queries (K rows padded to an odd number
// of words, so lane j reading key j is bank-conflict free); lane j scores key j of the tile,
// then every lane accumulates head dims lane, lane + 32, ... of the weighted values.
// Shared memory: 16.1 KiB K + 16 KiB V + 8 KiB queries.
// Launch: blockDim.x = 256, gridDim = (n_heads, ceil(n_queries / 8), n_splits) (n_splits = 1
// usually; more only to fill the GPU when there are few queries).
extern "C" __global__ void __launch_bounds__(LLMD_WARP *ATT_PREFILL_WARPS)
    attn_prefill_f16kv(const float *__restrict__ q, const __half *__restrict__ k,
                       const __half *__restrict__ v, float *__restrict__ out,
                       float *__restrict__ part, const unsigned int *__restrict__ positions,
                       int n_queries, int n_heads, int n_kv_heads, int head_dim, float scale,
                       int window, float softcap) {
    __shared__ __half2 ks[ATT_TILE * (ATT_MAX_D / 2 + 1)];
    __shared__ __half2 vs[ATT_TILE * (ATT_MAX_D / 2)];
    __shared__ __align__(16) float qs[ATT_PREFILL_WARPS][ATT_MAX_D];
    __shared__ int range[2];

    const int lane = threadIdx.x % LLMD_WARP;
    const int warp = threadIdx.x / LLMD_WARP;
    const int h = blockIdx.x;
    const int kvh = h / (n_heads / n_kv_heads);
    const int qi = blockIdx.y * ATT_PREFILL_WARPS + warp;
    const bool valid = qi < n_queries;
    const int pos = valid ? (int)positions[qi] : 0;
    const int start = (valid && window > 0) ? max(0, pos - window + 1) : 0;
    const int d2 = head_dim / 2;
    const int kstride = d2 | 1; // odd number of words per staged K row

    for (int d = lane; d < head_dim; d += LLMD_WARP) {
        qs[warp][d] = valid ? q[((long long)qi * n_heads + h) * head_dim + d] : 0.0f;
    }
    if (threadIdx.x == 0) {
        int lo = 0x7fffffff, hi = 0;
        for (int w = 0; w < ATT_PREFILL_WARPS; ++w) {
            const int i = blockIdx.y * ATT_PREFILL_WARPS + w;
            if (i < n_queries) {
                const int p = (int)positions[i];
                lo = min(lo, window > 0 ? max(0, p - window + 1) : 0);
                hi = max(hi, p + 1);
            }
        }
        range[0] = lo;
        range[1] = hi;
    }
    __syncthreads();
    int lo, hi;
    split_range(range[0], range[1], lo, hi);

    const __half2 *k2 = (const __half2 *)k;
    const __half2 *v2 = (const __half2 *)v;
    float m = LLMD_NEG_INF, l = 0.0f;
    float acc[ATT_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        acc[i] = 0.0f;
    }
    for (int t0 = lo; t0 < hi; t0 += ATT_TILE) {
        __syncthreads(); // the previous tile is no longer read
        for (int idx = threadIdx.x; idx < ATT_TILE * d2; idx += blockDim.x) {
            const int j = idx / d2;
            const int w = idx % d2;
            const int kp = t0 + j;
            __half2 kv = __float2half2_rn(0.0f), vv = __float2half2_rn(0.0f);
            if (kp < hi) {
                const long long off = ((long long)kp * n_kv_heads + kvh) * d2 + w;
                kv = k2[off];
                vv = v2[off];
            }
            ks[j * kstride + w] = kv;
            vs[j * d2 + w] = vv;
        }
        __syncthreads();

        const int kp = t0 + lane;
        const bool allowed = valid && kp < hi && kp >= start && kp <= pos;
        float s = LLMD_NEG_INF;
        if (allowed) {
            float dot = 0.0f;
            const __half2 *kr = ks + lane * kstride;
            const float2 *qr = (const float2 *)qs[warp];
            for (int w = 0; w < d2; ++w) {
                const float2 kf = __half22float2(kr[w]);
                const float2 qf = qr[w];
                dot = fmaf(qf.x, kf.x, fmaf(qf.y, kf.y, dot));
            }
            s = attn_logit(dot, scale, softcap);
        }
        const float tile_max = warp_max(s);
        if (tile_max == LLMD_NEG_INF) {
            continue; // nothing visible to this query in this tile
        }
        const float m_new = fmaxf(m, tile_max);
        const float corr = expf(m - m_new);
        const float p = allowed ? expf(s - m_new) : 0.0f;
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
            acc[i] *= corr;
        }
        const __half *vh = (const __half *)vs;
        for (int j = 0; j < ATT_TILE; ++j) {
            const float pj = __shfl_sync(LLMD_FULL_MASK, p, j);
            if (pj == 0.0f) {
                continue; // masked key (its staged value may be anything)
            }
#pragma unroll
            for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
                const int d = lane + LLMD_WARP * i;
                if (d < head_dim) {
                    acc[i] = fmaf(pj, __half2float(vh[j * head_dim + d]), acc[i]);
                }
            }
        }
        m = m_new;
    }
    if (valid) {
        attn_write(out, part, (long long)qi * n_heads + h, head_dim, gridDim.z, m, l, acc);
    }
}

// attn_decode_f16kv: attention of few queries (decode: one per sequence step), each over the
// whole cache. A block takes one (head, query, split); its 4 warps take interleaved tiles of 32
// keys; lane j of a warp scores key j reading the key row straight from global memory in 16-byte
// pieces, values are read coalesced (lane = head dim). The 4 warps' states are merged in shared
// memory at the end. Long caches should use n_splits > 1 (e.g. one split per 512 keys, enough to
// give every SM a few blocks) followed by attn_combine_f32.
// Launch: blockDim.x = 128, gridDim = (n_heads, n_queries, n_splits).
extern "C" __global__ void __launch_bounds__(LLMD_WARP *ATT_DECODE_WARPS)
    attn_decode_f16kv(const float *__restrict__ q, const __half *__restrict__ k,
                      const __half *__restrict__ v, float *__restrict__ out,
                      float *__restrict__ part, const unsigned int *__restrict__ positions,
                      int n_queries, int n_heads, int n_kv_heads, int head_dim, float scale,
                      int window, float softcap) {
    __shared__ float qs[ATT_MAX_D];
    __shared__ float states[ATT_DECODE_WARPS][ATT_MAX_D + 2];

    const int lane = threadIdx.x % LLMD_WARP;
    const int warp = threadIdx.x / LLMD_WARP;
    const int h = blockIdx.x;
    const int qi = blockIdx.y;
    const int kvh = h / (n_heads / n_kv_heads);
    const int pos = (int)positions[qi];
    const int start = window > 0 ? max(0, pos - window + 1) : 0;
    const long long qh = (long long)qi * n_heads + h;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        qs[d] = q[qh * head_dim + d];
    }
    __syncthreads();
    int lo, hi;
    split_range(start, pos + 1, lo, hi);

    const int d8 = head_dim / 8;
    float m = LLMD_NEG_INF, l = 0.0f;
    float acc[ATT_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        acc[i] = 0.0f;
    }
    for (int t0 = lo + warp * ATT_TILE; t0 < hi; t0 += ATT_DECODE_WARPS * ATT_TILE) {
        const int kp = t0 + lane;
        const bool allowed = kp < hi;
        float s = LLMD_NEG_INF;
        if (allowed) {
            const uint4 *kr = (const uint4 *)(k + ((long long)kp * n_kv_heads + kvh) * head_dim);
            float dot = 0.0f;
            for (int w = 0; w < d8; ++w) {
                const uint4 raw = kr[w];
                const unsigned int words[4] = {raw.x, raw.y, raw.z, raw.w};
                const float *qp = qs + 8 * w;
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 kf = u32_to_float2(words[e]);
                    dot = fmaf(qp[2 * e], kf.x, fmaf(qp[2 * e + 1], kf.y, dot));
                }
            }
            s = attn_logit(dot, scale, softcap);
        }
        const float tile_max = warp_max(s);
        if (tile_max == LLMD_NEG_INF) {
            continue; // no finite logit in this tile
        }
        const float m_new = fmaxf(m, tile_max);
        const float corr = expf(m - m_new);
        const float p = allowed ? expf(s - m_new) : 0.0f;
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
            acc[i] *= corr;
        }
        const int n_keys = min(ATT_TILE, hi - t0);
        for (int j = 0; j < n_keys; ++j) {
            const float pj = __shfl_sync(LLMD_FULL_MASK, p, j);
            const __half *vr = v + ((long long)(t0 + j) * n_kv_heads + kvh) * head_dim;
#pragma unroll
            for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
                const int d = lane + LLMD_WARP * i;
                if (d < head_dim) {
                    acc[i] = fmaf(pj, __half2float(vr[d]), acc[i]);
                }
            }
        }
        m = m_new;
    }

    // Merge the warps' states.
    if (lane == 0) {
        states[warp][0] = m;
        states[warp][1] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        const int d = lane + LLMD_WARP * i;
        if (d < head_dim) {
            states[warp][2 + d] = acc[i];
        }
    }
    __syncthreads();
    if (warp != 0) {
        return;
    }
    float mt = LLMD_NEG_INF;
    for (int w = 0; w < ATT_DECODE_WARPS; ++w) {
        mt = fmaxf(mt, states[w][0]);
    }
    float lt = 0.0f;
    float acc_t[ATT_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        acc_t[i] = 0.0f;
    }
    if (mt > LLMD_NEG_INF) {
        for (int w = 0; w < ATT_DECODE_WARPS; ++w) {
            const float f = expf(states[w][0] - mt);
            lt += f * states[w][1];
#pragma unroll
            for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
                const int d = lane + LLMD_WARP * i;
                if (d < head_dim) {
                    acc_t[i] = fmaf(f, states[w][2 + d], acc_t[i]);
                }
            }
        }
    }
    attn_write(out, part, qh, head_dim, gridDim.z, mt, lt, acc_t);
}

// attn_combine_f32: merges n_splits partial states (max m_z, sum l_z, acc_z) of each (query,
// head): out = sum_z exp(m_z - M) acc_z / sum_z exp(m_z - M) l_z with M = max_z m_z (0 when no
// split saw a key).
// Launch: blockDim.x = 128, gridDim = (n_heads, n_queries).
extern "C" __global__ void __launch_bounds__(128)
    attn_combine_f32(const float *__restrict__ part, float *__restrict__ out, int n_heads,
                     int head_dim, int n_splits) {
    const long long qh = (long long)blockIdx.y * n_heads + blockIdx.x;
    const float *p = part + qh * n_splits * (head_dim + 2);
    float mt = LLMD_NEG_INF;
    for (int z = 0; z < n_splits; ++z) {
        mt = fmaxf(mt, p[z * (head_dim + 2)]);
    }
    float lt = 0.0f;
    if (mt > LLMD_NEG_INF) {
        for (int z = 0; z < n_splits; ++z) {
            lt += expf(p[z * (head_dim + 2)] - mt) * p[z * (head_dim + 2) + 1];
        }
    }
    const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        if (mt > LLMD_NEG_INF) {
            for (int z = 0; z < n_splits; ++z) {
                const float *pz = p + z * (head_dim + 2);
                a = fmaf(expf(pz[0] - mt), pz[2 + d], a);
            }
        }
        out[qh * head_dim + d] = a * inv;
    }
}
