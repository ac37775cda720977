// Attention of f32 queries over one sequence's KV cache, with grouped-query attention,
// sliding windows, a logit scale and optional tanh soft-capping; online softmax (running max
// and sum), f32 accumulation. One kernel per pair of cache types: attn_{prefill,decode}_<k>_<v>
// with <k>, <v> in f16, q8_0, q4_0 (kv.cuh). f16 keys are dotted with the f32 query; Q8_0 and
// Q4_0 keys with the query quantized to Q8_0 (warp_quantize_q8_0, as the CPU backend does, after
// llama.cpp), summing each block's integer products exactly (__dp4a) and scaling by the two
// block scales. Quantized values are dequantized (scale times integer) as they are accumulated.
//
// Shapes and conventions shared by the kernels:
//   q, out:     n_queries rows of n_heads * head_dim f32 (the host offsets both to the first
//               row); head h of query i at [(i * n_heads + h) * head_dim].
//   k, v:       the layer's cache: capacity positions of n_kv_heads * head_dim values of the
//               kernel's types (kv.cuh); key of position p, kv head g starts at value
//               (p * n_kv_heads + g) * head_dim. Query head h uses kv head h / (n_heads /
//               n_kv_heads).
//   positions:  n_queries u32: the cache position of each query; it sees keys kp with
//               kp <= pos and (window == 0 or pos - kp < window). Every such position must have
//               been stored (kv_store_<type>) before the call.
//   logit:      s = scale * (q . k); with softcap > 0, s = softcap * tanh(s / softcap).
//   head_dim:   a multiple of 8 (of 32 with a quantized type), at most 256 (host-checked).
//   part:       with n_splits = gridDim.z > 1, each (query, head, split) writes (max, sum,
//               acc[head_dim]) to part[((i * n_heads + h) * n_splits + z) * (head_dim + 2)]
//               and attn_combine_f32 produces out; with n_splits = 1 out is written directly
//               and part is unused (may be null).
#include "common.cuh"
#include "kv.cuh"

#define ATT_TILE 32
#define ATT_MAX_D 256
#define ATT_MAX_PER_LANE (ATT_MAX_D / LLMD_WARP)
#define ATT_PREFILL_WARPS 8
#define ATT_DECODE_WARPS 4

static __device__ __forceinline__ float attn_logit(float dot, float scale, float softcap) {
    const float s = dot * scale;
    return softcap > 0.0f ? softcap * tanhf(s / softcap) : s;
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

// Words (ints of 4 signed 8-bit values) per staged key row of a quantized tile in prefill: an odd
// number, so lane j reading word w of key j is bank-conflict free.
#define ATT_KQ_STRIDE (ATT_MAX_D / 4 + 1)
// Blocks of 32 values per head at most.
#define ATT_MAX_BLOCKS (ATT_MAX_D / LLMD_QK)

// Shared memory of one staged tile of keys (or values) of type T in prefill: f16 keys as half2
// rows padded to an odd number of words, f16 values as unpadded half2 rows; quantized keys as
// int words (ATT_KQ_STRIDE per row) then one float scale per block, quantized values as signed
// bytes (ATT_MAX_D per row) then one float scale per block.
template <int T, bool KEYS> static constexpr int att_stage_bytes() {
    return T == KV_F16 ? ATT_TILE * (KEYS ? ATT_MAX_D / 2 + 1 : ATT_MAX_D / 2) * 4
                       : ATT_TILE * (KEYS ? ATT_KQ_STRIDE * 4 : ATT_MAX_D) +
                             ATT_TILE * ATT_MAX_BLOCKS * 4;
}

// Stages keys (KEYS) or values of positions t0 .. t0 + ATT_TILE - 1 of kv head kvh from `cache`
// into `st`, zeros past `hi`; all threads of the block take part.
template <int T, bool KEYS>
static __device__ __forceinline__ void att_stage(unsigned char *st, const void *cache, int t0,
                                                 int hi, int n_kv_heads, int kvh, int head_dim) {
    if constexpr (T == KV_F16) {
        const int d2 = head_dim / 2;
        const int stride = KEYS ? d2 | 1 : d2;
        const __half2 *c2 = (const __half2 *)cache;
        __half2 *s2 = (__half2 *)st;
        for (int idx = threadIdx.x; idx < ATT_TILE * d2; idx += blockDim.x) {
            const int j = idx / d2;
            const int w = idx % d2;
            const int kp = t0 + j;
            __half2 x = __float2half2_rn(0.0f);
            if (kp < hi) {
                x = c2[((long long)kp * n_kv_heads + kvh) * d2 + w];
            }
            s2[j * stride + w] = x;
        }
    } else {
        const int d4 = head_dim / 4;
        const int nb = head_dim / LLMD_QK;
        int *words = (int *)st;
        float *scales = (float *)(st + ATT_TILE * (KEYS ? ATT_KQ_STRIDE * 4 : ATT_MAX_D));
        for (int idx = threadIdx.x; idx < ATT_TILE * d4; idx += blockDim.x) {
            const int j = idx / d4;
            const int w = idx % d4;
            const int kp = t0 + j;
            int x = 0;
            if (kp < hi) {
                const long long o = ((long long)kp * n_kv_heads + kvh) * head_dim + 4 * w;
                x = kv_block_word<T>(kv_block<T>(cache, o), w % 8);
            }
            words[j * (KEYS ? ATT_KQ_STRIDE : ATT_MAX_D / 4) + w] = x;
        }
        for (int idx = threadIdx.x; idx < ATT_TILE * nb; idx += blockDim.x) {
            const int j = idx / nb;
            const int b = idx % nb;
            const int kp = t0 + j;
            float d = 0.0f;
            if (kp < hi) {
                const long long o = ((long long)kp * n_kv_heads + kvh) * head_dim + b * LLMD_QK;
                d = kv_block_scale(kv_block<T>(cache, o));
            }
            scales[j * ATT_MAX_BLOCKS + b] = d;
        }
    }
}

// Quantizes this warp's query (head_dim values in `qf`) to Q8_0: signed bytes into `qq` (as int
// words), block scales into `qd`. Every lane of the warp takes part; lane-private reads of `qf`
// (each lane reads the values it wrote), so only `qq`/`qd` need a barrier before use.
static __device__ __forceinline__ void att_quantize_query(const float *qf, int *qq, float *qd,
                                                          int head_dim, int first_block,
                                                          int block_step) {
    const int lane = threadIdx.x % LLMD_WARP;
    for (int b = first_block; b < head_dim / LLMD_QK; b += block_step) {
        __half d;
        const int q = warp_quantize_q8_0(qf[b * LLMD_QK + lane], d);
        ((signed char *)qq)[b * LLMD_QK + lane] = (signed char)q;
        if (lane == 0) {
            qd[b] = __half2float(d);
        }
    }
}

// `key · query` for quantized keys given by `word(w)` (int word w of the key row) and
// `scale(b)` (block b's scale): per block the exact integer sum of products, times the two
// scales.
template <typename W, typename S>
static __device__ __forceinline__ float att_dot_q8(W word, S scale, const int *qq, const float *qd,
                                                   int head_dim) {
    float dot = 0.0f;
    for (int b = 0; b < head_dim / LLMD_QK; ++b) {
        int sum = 0;
#pragma unroll
        for (int w = 0; w < 8; ++w) {
            sum = __dp4a(word(b * 8 + w), qq[b * 8 + w], sum);
        }
        dot = fmaf(scale(b) * qd[b], (float)sum, dot);
    }
    return dot;
}

// Logit of staged key `lane` of a tile (`keys`: att_stage's layout of type KT) for one query:
// f16 keys dotted with the f32 query `qf`, quantized keys with its Q8_0 form (`qq`, `qd`), then
// scaled and soft-capped (attn_logit).
template <int KT>
static __device__ __forceinline__ float att_key_logit(const unsigned char *keys, int lane,
                                                      int head_dim, const float *qf,
                                                      const int *qq, const float *qd,
                                                      float scale, float softcap) {
    float dot = 0.0f;
    if constexpr (KT == KV_F16) {
        const int d2 = head_dim / 2;
        const __half2 *kr = (const __half2 *)keys + lane * (d2 | 1);
        const float2 *qr = (const float2 *)qf;
        for (int w = 0; w < d2; ++w) {
            const float2 kf = __half22float2(kr[w]);
            const float2 q2 = qr[w];
            dot = fmaf(q2.x, kf.x, fmaf(q2.y, kf.y, dot));
        }
    } else {
        const int *kr = (const int *)keys + lane * ATT_KQ_STRIDE;
        const float *kd =
            (const float *)(keys + ATT_TILE * ATT_KQ_STRIDE * 4) + lane * ATT_MAX_BLOCKS;
        dot = att_dot_q8([&](int w) { return kr[w]; }, [&](int b) { return kd[b]; }, qq, qd,
                         head_dim);
    }
    return attn_logit(dot, scale, softcap);
}

// One tile's step of the online softmax for one query, run by its whole warp: lane j holds the
// logit `s` of key j (`allowed`: visible to the query; otherwise s is -inf). Rescales the
// running max `m`, sum `l` and the accumulator `acc` (head dims lane, lane + 32, ...) and adds
// the first `n_keys` staged values (`values`: att_stage's layout of type VT) weighted by their
// probabilities; masked keys (probability 0) are skipped, so their staged values may be anything.
// A tile with no visible key changes nothing.
template <int VT>
static __device__ __forceinline__ void att_tile_accumulate(float s, bool allowed, int n_keys,
                                                           const unsigned char *values,
                                                           int head_dim, float &m, float &l,
                                                           float (&acc)[ATT_MAX_PER_LANE]) {
    const int lane = threadIdx.x % LLMD_WARP;
    const float tile_max = warp_max(s);
    if (tile_max == LLMD_NEG_INF) {
        return; // nothing visible to this query in this tile
    }
    const float m_new = fmaxf(m, tile_max);
    const float corr = expf(m - m_new);
    const float p = allowed ? expf(s - m_new) : 0.0f;
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        acc[i] *= corr;
    }
    for (int j = 0; j < n_keys; ++j) {
        const float pj = __shfl_sync(LLMD_FULL_MASK, p, j);
        if (pj == 0.0f) {
            continue; // masked key (the same for the whole warp)
        }
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
            const int d = lane + LLMD_WARP * i;
            if (d < head_dim) {
                float x;
                if constexpr (VT == KV_F16) {
                    x = __half2float(((const __half *)values)[j * head_dim + d]);
                } else {
                    const float *vd = (const float *)(values + ATT_TILE * ATT_MAX_D);
                    x = vd[j * ATT_MAX_BLOCKS + i] *
                        (float)((const signed char *)values)[j * ATT_MAX_D + d];
                }
                acc[i] = fmaf(pj, x, acc[i]);
            }
        }
    }
    m = m_new;
}

// attn_prefill_<k>_<v>: causal attention of many queries (prefill), flash-attention style. A
// block takes ATT_PREFILL_WARPS = 8 consecutive queries of one head (one warp each); tiles of 32
// keys and values are staged in shared memory once for all 8 queries (key rows padded to an odd
// number of words, so lane j reading key j is bank-conflict free); lane j scores key j of the
// tile, then every lane accumulates head dims lane, lane + 32, ... of the weighted values.
// Shared memory: f16 tiles 16.1 KiB K + 16 KiB V, quantized ones 9.1 / 9 KiB; 8 KiB queries (and
// 2.3 KiB for the queries as Q8_0 with quantized keys).
// Launch: blockDim.x = 256, gridDim = (n_heads, ceil(n_queries / 8), n_splits) (n_splits = 1
// usually; more only to fill the GPU when there are few queries).
template <int KT, int VT>
static __device__ __forceinline__ void
attn_prefill(const float *__restrict__ q, const void *__restrict__ k, const void *__restrict__ v,
             float *__restrict__ out, float *__restrict__ part,
             const unsigned int *__restrict__ positions, int n_queries, int n_heads,
             int n_kv_heads, int head_dim, float scale, int window, float softcap) {
    __shared__ __align__(16) unsigned char ks[att_stage_bytes<KT, true>()];
    __shared__ __align__(16) unsigned char vs[att_stage_bytes<VT, false>()];
    __shared__ __align__(16) float qs[ATT_PREFILL_WARPS][ATT_MAX_D];
    __shared__ int qq[ATT_PREFILL_WARPS][KT == KV_F16 ? 1 : ATT_MAX_D / 4];
    __shared__ float qd[ATT_PREFILL_WARPS][KT == KV_F16 ? 1 : ATT_MAX_BLOCKS];
    __shared__ int range[2];

    const int lane = threadIdx.x % LLMD_WARP;
    const int warp = threadIdx.x / LLMD_WARP;
    const int h = blockIdx.x;
    const int kvh = h / (n_heads / n_kv_heads);
    const int qi = blockIdx.y * ATT_PREFILL_WARPS + warp;
    const bool valid = qi < n_queries;
    const int pos = valid ? (int)positions[qi] : 0;
    const int start = (valid && window > 0) ? max(0, pos - window + 1) : 0;

    for (int d = lane; d < head_dim; d += LLMD_WARP) {
        qs[warp][d] = valid ? q[((long long)qi * n_heads + h) * head_dim + d] : 0.0f;
    }
    if constexpr (KT != KV_F16) {
        att_quantize_query(qs[warp], qq[warp], qd[warp], head_dim, 0, 1);
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

    float m = LLMD_NEG_INF, l = 0.0f;
    float acc[ATT_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        acc[i] = 0.0f;
    }
    for (int t0 = lo; t0 < hi; t0 += ATT_TILE) {
        __syncthreads(); // the previous tile is no longer read
        att_stage<KT, true>(ks, k, t0, hi, n_kv_heads, kvh, head_dim);
        att_stage<VT, false>(vs, v, t0, hi, n_kv_heads, kvh, head_dim);
        __syncthreads();

        const int kp = t0 + lane;
        const bool allowed = valid && kp < hi && kp >= start && kp <= pos;
        const float s = allowed ? att_key_logit<KT>(ks, lane, head_dim, qs[warp], qq[warp],
                                                    qd[warp], scale, softcap)
                                : LLMD_NEG_INF;
        att_tile_accumulate<VT>(s, allowed, min(ATT_TILE, hi - t0), vs, head_dim, m, l, acc);
    }
    if (valid) {
        attn_write(out, part, (long long)qi * n_heads + h, head_dim, gridDim.z, m, l, acc);
    }
}

// Query heads of a GQA group one decode block serves (a larger group takes several blocks).
#define ATT_GROUP 8

// Copies 16 bytes from global to shared memory without passing through registers (cp.async on
// sm_80+; the host emulation copies at once). Both addresses 16-byte aligned. The copies of a
// thread are complete after att_copy_wait().
static __device__ __forceinline__ void att_copy16(void *dst_shared, const void *src) {
#ifdef LLMD_HOST_EMULATION
    emu_check_aligned(dst_shared, 16, "cp.async destination");
    emu_check_aligned(src, 16, "cp.async source");
    std::memcpy(dst_shared, src, 16);
#else
    const unsigned int dst = (unsigned int)__cvta_generic_to_shared(dst_shared);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
#endif
}
static __device__ __forceinline__ void att_copy_wait() {
#ifndef LLMD_HOST_EMULATION
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// Stages keys (KEYS) or values of positions t0 .. t0 + ATT_TILE - 1 of kv head kvh of `cache`
// for the decode kernel: as att_stage (same shared layout), f16 rows copied 16 bytes at a time
// with cp.async; rows past `hi` are zeros. All threads of the block take part; the caller waits
// (att_copy_wait, then a barrier) before reading.
template <int T, bool KEYS>
static __device__ __forceinline__ void att_stage_async(unsigned char *st, const void *cache,
                                                       int t0, int hi, int n_kv_heads, int kvh,
                                                       int head_dim) {
    if constexpr (T == KV_F16 && !KEYS) {
        // Unpadded rows of head_dim halves: 16-byte pieces line up (head_dim % 8 == 0).
        const int pieces = head_dim / 8;
        for (int idx = threadIdx.x; idx < ATT_TILE * pieces; idx += blockDim.x) {
            const int j = idx / pieces;
            const int w = idx % pieces;
            const int kp = t0 + j;
            unsigned char *dst = st + (j * head_dim + 8 * w) * 2;
            if (kp < hi) {
                att_copy16(dst, (const __half *)cache + ((long long)kp * n_kv_heads + kvh) * head_dim + 8 * w);
            } else {
                *(uint4 *)dst = make_uint4(0, 0, 0, 0);
            }
        }
    } else {
        // Padded f16 key rows (bank-conflict free reads) and quantized blocks (34 or 18-byte
        // blocks: not 16-byte aligned) take ordinary loads.
        att_stage<T, KEYS>(st, cache, t0, hi, n_kv_heads, kvh, head_dim);
    }
}

// attn_decode_<k>_<v>: attention of few queries (decode: one per sequence and step), each over
// its own sequence's cache, all sequences of a batch in one launch. A block takes one KV head
// and up to ATT_GROUP query heads of its group for one query and one split of its keys, so the
// group's keys and values are read once for all its heads: tiles of 32 keys and values are
// staged in shared memory (f16 values with cp.async), then warp w takes the group's heads w,
// w + 4, ... : lane j scores key j of the tile for each of them, online softmax per head, and
// the lanes accumulate head dims lane, lane + 32, ... of the weighted values.
// caches: the batch's sequences (KvSeqs, kv.cuh): query i reads the cache of the segment s with
// first[s] <= i < first[s + 1]. Shared memory: f16 tiles 16.1 KiB K + 16 KiB V, quantized ones
// 9.1 / 9 KiB, the group's queries 8 KiB (+ 2.3 KiB as Q8_0).
// Launch: blockDim.x = 128, gridDim = (n_kv_heads * ceil(group / 8), n_queries, n_splits) with
// group = n_heads / n_kv_heads; n_splits > 1 (chosen to give every SM a few blocks) writes
// partials for attn_combine_f32, indexed by query head as for the prefill kernel.
template <int KT, int VT>
static __device__ __forceinline__ void
attn_decode(const float *__restrict__ q, const KvSeqs &caches, float *__restrict__ out,
            float *__restrict__ part, const unsigned int *__restrict__ positions, int n_queries,
            int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap) {
    __shared__ __align__(16) unsigned char ks[att_stage_bytes<KT, true>()];
    __shared__ __align__(16) unsigned char vs[att_stage_bytes<VT, false>()];
    __shared__ __align__(16) float qs[ATT_GROUP][ATT_MAX_D];
    __shared__ int qq[ATT_GROUP][KT == KV_F16 ? 1 : ATT_MAX_D / 4];
    __shared__ float qd[ATT_GROUP][KT == KV_F16 ? 1 : ATT_MAX_BLOCKS];

    const int lane = threadIdx.x % LLMD_WARP;
    const int warp = threadIdx.x / LLMD_WARP;
    const int group = n_heads / n_kv_heads;
    const int parts = (group + ATT_GROUP - 1) / ATT_GROUP;
    const int kvh = blockIdx.x / parts;
    const int h0 = kvh * group + (blockIdx.x % parts) * ATT_GROUP; // this block's first head
    const int n_h = min(ATT_GROUP, kvh * group + group - h0);      // and how many
    const int qi = blockIdx.y;
    int seg = 0;
    while (seg + 1 < caches.n && qi >= caches.first[seg + 1]) {
        ++seg;
    }
    const void *k = (const void *)caches.k[seg];
    const void *v = (const void *)caches.v[seg];
    const int pos = (int)positions[qi];
    const int start = window > 0 ? max(0, pos - window + 1) : 0;

    for (int idx = threadIdx.x; idx < n_h * head_dim; idx += blockDim.x) {
        const int g = idx / head_dim;
        const int d = idx % head_dim;
        qs[g][d] = q[((long long)qi * n_heads + h0 + g) * head_dim + d];
    }
    __syncthreads();
    if constexpr (KT != KV_F16) {
        for (int g = warp; g < n_h; g += ATT_DECODE_WARPS) {
            att_quantize_query(qs[g], qq[g], qd[g], head_dim, 0, 1);
        }
    }
    int lo, hi;
    split_range(start, pos + 1, lo, hi);

    // This warp's heads: g = warp + 4 * r for r < ATT_GROUP / 4.
    constexpr int PER_WARP = ATT_GROUP / ATT_DECODE_WARPS;
    float m[PER_WARP], l[PER_WARP];
    float acc[PER_WARP][ATT_MAX_PER_LANE];
#pragma unroll
    for (int r = 0; r < PER_WARP; ++r) {
        m[r] = LLMD_NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
            acc[r][i] = 0.0f;
        }
    }
    for (int t0 = lo; t0 < hi; t0 += ATT_TILE) {
        __syncthreads(); // the previous tile is no longer read (and the queries are quantized)
        att_stage_async<KT, true>(ks, k, t0, hi, n_kv_heads, kvh, head_dim);
        att_stage_async<VT, false>(vs, v, t0, hi, n_kv_heads, kvh, head_dim);
        att_copy_wait();
        __syncthreads();
        const int kp = t0 + lane;
        const bool allowed = kp < hi;
        const int n_keys = min(ATT_TILE, hi - t0);
#pragma unroll
        for (int r = 0; r < PER_WARP; ++r) {
            const int g = warp + ATT_DECODE_WARPS * r;
            if (g >= n_h) {
                break; // the same for the whole warp
            }
            const float s = allowed ? att_key_logit<KT>(ks, lane, head_dim, qs[g], qq[g], qd[g],
                                                        scale, softcap)
                                    : LLMD_NEG_INF;
            att_tile_accumulate<VT>(s, allowed, n_keys, vs, head_dim, m[r], l[r], acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < PER_WARP; ++r) {
        const int g = warp + ATT_DECODE_WARPS * r;
        if (g < n_h) {
            attn_write(out, part, (long long)qi * n_heads + h0 + g, head_dim, gridDim.z, m[r],
                       l[r], acc[r]);
        }
    }
}

// The kernels of one pair of cache types (see attn_prefill / attn_decode for launches).
#define ATT_KERNELS(kname, KT, vname, VT)                                                        \
    extern "C" __global__ void __launch_bounds__(LLMD_WARP *ATT_PREFILL_WARPS)                   \
        attn_prefill_##kname##_##vname(                                                          \
            const float *__restrict__ q, const void *__restrict__ k, const void *__restrict__ v, \
            float *__restrict__ out, float *__restrict__ part,                                   \
            const unsigned int *__restrict__ positions, int n_queries, int n_heads,              \
            int n_kv_heads, int head_dim, float scale, int window, float softcap) {              \
        attn_prefill<KT, VT>(q, k, v, out, part, positions, n_queries, n_heads, n_kv_heads,      \
                             head_dim, scale, window, softcap);                                  \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(LLMD_WARP *ATT_DECODE_WARPS)                    \
        attn_decode_##kname##_##vname(const float *__restrict__ q, KvSeqs caches,                \
                                      float *__restrict__ out, float *__restrict__ part,         \
                                      const unsigned int *__restrict__ positions, int n_queries, \
                                      int n_heads, int n_kv_heads, int head_dim, float scale,    \
                                      int window, float softcap) {                               \
        attn_decode<KT, VT>(q, caches, out, part, positions, n_queries, n_heads, n_kv_heads,     \
                            head_dim, scale, window, softcap);                                   \
    }

ATT_KERNELS(f16, KV_F16, f16, KV_F16)
ATT_KERNELS(f16, KV_F16, q8_0, KV_Q8_0)
ATT_KERNELS(f16, KV_F16, q4_0, KV_Q4_0)
ATT_KERNELS(q8_0, KV_Q8_0, f16, KV_F16)
ATT_KERNELS(q8_0, KV_Q8_0, q8_0, KV_Q8_0)
ATT_KERNELS(q8_0, KV_Q8_0, q4_0, KV_Q4_0)
ATT_KERNELS(q4_0, KV_Q4_0, f16, KV_F16)
ATT_KERNELS(q4_0, KV_Q4_0, q8_0, KV_Q8_0)
ATT_KERNELS(q4_0, KV_Q4_0, q4_0, KV_Q4_0)

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
