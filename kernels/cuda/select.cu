// Selection of the best entries of logits rows on the device (issue 18), so that a sampler that
// needs only them reads back a few bytes instead of the whole vocabulary. Exact: the same
// entries in the same order as the host's select::top_k (rank order: larger value first under
// f32 total order, equal values by ascending id) and, for greedy decoding, select::argmax (the
// first index on ties, -0 equal to +0, NaN never wins unless the first value is NaN).
//
// Output candidates are pairs of floats: the value, then the id's bits (select::CANDIDATE_FLOATS).
//
// Two passes:
//   select_chunks_f32: grid (n_chunks, m), SEL_THREADS threads. Block (c, r) takes values
//     c * SEL_CHUNK .. of row r and writes its best min(k, chunk length) candidates, in rank
//     order, to candidate slots (r * n_chunks + c) * k .. of `out`. Each thread keeps the best of
//     its values (strided by SEL_THREADS) that rank after the last winner; each of the rounds is
//     one block-wide arg-best over the threads' bests, after which only the winner's owner looks
//     at its values again. With one chunk per row this is the whole selection.
//   select_merge_f32: grid (1, m), SEL_THREADS threads. The same rounds over the n_chunks * k
//     candidates of row r that pass 1 left (the last chunk's slots past its length are empty),
//     writing the row's k best to slots r * k .. of `out`.
// k is 1..SEL_MAX_K (checked by the host), n < 2^31.
#include "common.cuh"

#define SEL_THREADS 256
#define SEL_CHUNK 4096
#define SEL_MAX_K 64
// An empty slot's id: ranks after every real candidate (ids are below 2^31).
#define SEL_NO_ID 0xffffffffu
#define SEL_KEY_MIN ((int)0x80000000)
#define SEL_KEY_MAX 0x7fffffff

// The ordering key of `v` (at index `id` of its row): a signed integer whose order is f32 total
// order (top-k), or, for greedy decoding, the order argmax's `>` scan gives: NaN lowest unless at
// index 0 (then highest: argmax returns 0), and -0 equal to +0.
static __device__ __forceinline__ int sel_key(float v, unsigned int id, int greedy) {
    if (greedy) {
        if (v != v) {
            return id == 0 ? SEL_KEY_MAX : SEL_KEY_MIN;
        }
        if (v == 0.0f) {
            v = 0.0f;
        }
    }
    const int bits = __float_as_int(v);
    return bits ^ (int)(((unsigned int)(bits >> 31)) >> 1);
}

// Whether (ka, ia) ranks before (kb, ib): a larger key, or an equal key and a smaller id.
static __device__ __forceinline__ bool sel_before(int ka, unsigned int ia, int kb,
                                                  unsigned int ib) {
    return ka > kb || (ka == kb && ia < ib);
}

// The entries a block selects from: `count` items, item j with value value(j) and id id(j).
struct SelRow {
    const float *values; // pass 1: the chunk's values; pass 2: the row's candidate pairs
    int count;           // items
    unsigned int base;   // pass 1: the id of the chunk's first value
    int pairs;           // 0: values[j] with id base + j; 1: pairs (value, id bits), k per chunk
    int k;               // pass 2: slots per chunk
    int last_valid;      // pass 2: filled slots of the last chunk
    int n_chunks;        // pass 2: chunks
    __device__ __forceinline__ void item(int j, float &v, unsigned int &id) const {
        if (!pairs) {
            v = values[j];
            id = base + (unsigned int)j;
            return;
        }
        const int slot = j % k;
        if (j / k == n_chunks - 1 && slot >= last_valid) {
            v = 0.0f;
            id = SEL_NO_ID;
            return;
        }
        v = values[2 * j];
        id = (unsigned int)__float_as_int(values[2 * j + 1]);
    }
};

// The best of this thread's items (j = threadIdx.x + i * SEL_THREADS) ranking after (pk, pi),
// or the best of all of them when `all`: its key, id and value; (SEL_KEY_MIN, SEL_NO_ID) when
// there is none.
static __device__ __forceinline__ void sel_thread_best(const SelRow &row, int greedy, bool all,
                                                       int pk, unsigned int pi, int &bk,
                                                       unsigned int &bi, float &bv) {
    bk = SEL_KEY_MIN;
    bi = SEL_NO_ID;
    bv = 0.0f;
    for (int j = threadIdx.x; j < row.count; j += SEL_THREADS) {
        float v;
        unsigned int id;
        row.item(j, v, id);
        if (id == SEL_NO_ID) {
            continue;
        }
        const int key = sel_key(v, id, greedy);
        if ((all || sel_before(pk, pi, key, id)) && sel_before(key, id, bk, bi)) {
            bk = key;
            bi = id;
            bv = v;
        }
    }
}

// Block-wide arg-best of the threads' (key, id): every thread gets the winner. `sk`, `si` hold
// SEL_THREADS / 32 entries of shared memory.
static __device__ __forceinline__ void sel_block_best(int &key, unsigned int &id, int *sk,
                                                      unsigned int *si) {
    const int lane = threadIdx.x % LLMD_WARP;
    const int warp = threadIdx.x / LLMD_WARP;
#pragma unroll
    for (int off = LLMD_WARP / 2; off > 0; off >>= 1) {
        const int ok = __shfl_xor_sync(LLMD_FULL_MASK, key, off);
        const unsigned int oi = __shfl_xor_sync(LLMD_FULL_MASK, id, off);
        if (sel_before(ok, oi, key, id)) {
            key = ok;
            id = oi;
        }
    }
    __syncthreads(); // the previous round's readers are done with sk / si
    if (lane == 0) {
        sk[warp] = key;
        si[warp] = id;
    }
    __syncthreads();
    key = SEL_KEY_MIN;
    id = SEL_NO_ID;
    for (int w = 0; w < SEL_THREADS / LLMD_WARP; ++w) {
        if (sel_before(sk[w], si[w], key, id)) {
            key = sk[w];
            id = si[w];
        }
    }
}

// `rounds` rounds of selection over `row` (at most its filled items), the winners written as
// pairs to out[0..2 * rounds) by the thread that holds each. Every thread of the block calls it.
static __device__ void sel_rounds(const SelRow &row, int greedy, int rounds, float *out) {
    __shared__ int sk[SEL_THREADS / LLMD_WARP];
    __shared__ unsigned int si[SEL_THREADS / LLMD_WARP];
    int mk;
    unsigned int mi;
    float mv;
    sel_thread_best(row, greedy, true, 0, 0, mk, mi, mv);
    for (int r = 0; r < rounds; ++r) {
        int wk = mk;
        unsigned int wi = mi;
        sel_block_best(wk, wi, sk, si);
        // Ids are distinct: exactly one thread holds the winner.
        if (mi == wi) {
            out[2 * r] = mv;
            out[2 * r + 1] = __int_as_float(wi);
            sel_thread_best(row, greedy, false, wk, wi, mk, mi, mv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(SEL_THREADS)
    select_chunks_f32(const float *__restrict__ x, long long n, int k, int greedy,
                      float *__restrict__ out) {
    const int c = blockIdx.x;
    const int r = blockIdx.y;
    const int n_chunks = gridDim.x;
    const long long start = (long long)c * SEL_CHUNK;
    const int len = (int)min((long long)SEL_CHUNK, n - start);
    SelRow row;
    row.values = x + (long long)r * n + start;
    row.count = len;
    row.base = (unsigned int)start;
    row.pairs = 0;
    row.k = k;
    row.last_valid = 0;
    row.n_chunks = 1;
    sel_rounds(row, greedy, min(k, len), out + 2 * ((long long)r * n_chunks + c) * k);
}

extern "C" __global__ void __launch_bounds__(SEL_THREADS)
    select_merge_f32(const float *__restrict__ partials, long long n, int n_chunks, int k,
                     int greedy, float *__restrict__ out) {
    const int r = blockIdx.y;
    const long long last_len = n - (long long)(n_chunks - 1) * SEL_CHUNK;
    SelRow row;
    row.values = partials + 2 * (long long)r * n_chunks * k;
    row.count = n_chunks * k;
    row.base = 0;
    row.pairs = 1;
    row.k = k;
    row.last_valid = (int)min((long long)k, last_len);
    row.n_chunks = n_chunks;
    sel_rounds(row, greedy, k, out + 2 * (long long)r * k);
}
