// Quantized matrix-matrix products for prefill on the int8 tensor cores, in the style of
// llama.cpp's mmq: out[m][n] = sum_k x[m][k] * w[n][k] with weights of every block-quantized
// type (LLMD_QUANT_TYPES) as they lie and the activations quantized to 8 bits by quantize_mmq
// (quantize.cu). No dequantization pass and no f16 anywhere: activations of any size (the
// outlier features of large models beyond f16's 65504 included) keep their range in the f32
// scales.
//
// Per 16-value chunk c of k, a weight row is int8 q with one scale and one offset (int8.cuh:
// w = scale * q + offset) and a token's activations are int8 a with an f32 scale d (per 32
// values) and the f32 sum s of the chunk's activations (d * sum(a)), so
//     sum_k x[m][k] w[n][k] = sum_c (d[m][c] * scale[n][c] * sum_(k in c) a[m][k] q[n][k]
//                                   + offset[n][c] * s[m][c])
// where the integer sums are one mma.sync.m16n8k16 (s8 x s8 -> s32) per 16 x 8 outputs.
//
// mul_mat_q_<type>(w, xq, xd, xs, out, M, N, K, ldo): w is N rows of K / qk blocks; xq the
// M x K activation bytes (row-major), xd the M x K/32 scales, xs the M x K/16 chunk sums
// (quantize_mmq's three arrays); out row-major with row stride ldo (>= N).
// Preconditions: K % 32 == 0 and a multiple of the type's block size; xq 16-byte aligned.
// Launch: blockDim.x = 128 (4 warps); gridDim = (ceil(M / 64), ceil(N / 64)). Each block
// computes 64 tokens x 64 weight rows, staging 128-value k slices of both operands in shared
// memory (weights unpacked to int8 once per slice); each warp a 32 x 32 quarter as 2 x 4 mma
// tiles. The token tiles of one weight tile are neighbours in the grid's x order, so they run
// together and the weight tile crosses from memory once per batch (the others hit the L2).
#include "int8.cuh"

#define MMQ_M 64
#define MMQ_N 64
#define MMQ_K 128
#define MMQ_THREADS 128
// 16-value chunks per k slice.
#define MMQ_CHUNKS (MMQ_K / 16)
// Row pitch of the staged int8 tiles in ints: 4 more than a slice, so that the 8 rows a
// fragment load reads start in different banks.
#define MMQ_PITCH (MMQ_K / 4 + 4)

// D (16 x 8, s32) += A (16 x 16, s8) * B (16 x 8, s8) for one warp, in the PTX ISA's fragment
// layout (g = lane / 4, t = lane % 4): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..4t+3], b =
// B[4t..4t+3][g] (B's column g is weight row g), d = D[g][2t], D[g][2t+1], D[g+8][2t],
// D[g+8][2t+1].
static __device__ __forceinline__ void mma_s8_16x8x16(int (&d)[4], int a0, int a1, int b) {
#ifdef LLMD_HOST_EMULATION
    emu_mma_s8_16x8x16(d, a0, a1, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, "
                 "{%6}, {%0, %1, %2, %3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a0), "r"(a1), "r"(b));
#endif
}

template <int TYPE>
static __device__ __forceinline__ void mul_mat_q(const void *__restrict__ w,
                                                 const signed char *__restrict__ xq,
                                                 const float *__restrict__ xd,
                                                 const float *__restrict__ xs,
                                                 float *__restrict__ out, int M, int N, int K,
                                                 int ldo) {
    typedef deq<TYPE> D;
    typedef int8w<TYPE> U;
    typedef typename D::block block;
    // Weights: int8 values, scale and offset per chunk; activations: int8 values, scale per 32
    // values, sum per chunk.
    __shared__ __align__(16) int wq[MMQ_N * MMQ_PITCH];
    __shared__ float w_scale[MMQ_N * MMQ_CHUNKS];
    __shared__ float w_offset[MMQ_N * MMQ_CHUNKS];
    __shared__ __align__(16) int aq[MMQ_M * MMQ_PITCH];
    __shared__ float a_scale[MMQ_M * (MMQ_K / 32)];
    __shared__ float a_sum[MMQ_M * MMQ_CHUNKS];

    const int tid = threadIdx.x;
    const int lane = tid % LLMD_WARP;
    const int warp = tid / LLMD_WARP;
    const int g = lane / 4, t = lane % 4;
    const int m0 = blockIdx.x * MMQ_M;
    const int n0 = blockIdx.y * MMQ_N;
    const int wm = (warp / 2) * 32; // this warp's 32 tokens
    const int wn = (warp % 2) * 32; // and 32 weight rows
    const int blocks_per_row = K / D::qk;
    float acc[2][4][4] = {};

    for (int k0 = 0; k0 < K; k0 += MMQ_K) {
        // Weights: 64 rows x 8 chunks, 4 chunks per thread; consecutive threads unpack
        // consecutive chunks of a row.
#pragma unroll
        for (int i = 0; i < MMQ_N * MMQ_CHUNKS / MMQ_THREADS; ++i) {
            const int idx = tid + MMQ_THREADS * i;
            const int r = idx / MMQ_CHUNKS;
            const int c = idx % MMQ_CHUNKS;
            const int k = k0 + 16 * c;
            int q0 = 0, q1 = 0, q2 = 0, q3 = 0;
            float scale = 0.0f, offset = 0.0f;
            if (n0 + r < N && k < K) {
                const block &b = ((const block *)w)[(long long)(n0 + r) * blocks_per_row + k / D::qk];
                const int group = (k % D::qk) / 8;
                float scale2, offset2;
                U::unpack8(b, group, q0, q1, scale, offset);
                U::unpack8(b, group + 1, q2, q3, scale2, offset2);
            }
            *(uint4 *)(wq + r * MMQ_PITCH + 4 * c) =
                make_uint4((unsigned)q0, (unsigned)q1, (unsigned)q2, (unsigned)q3);
            w_scale[r * MMQ_CHUNKS + c] = scale;
            w_offset[r * MMQ_CHUNKS + c] = offset;
        }
        // Activations: 64 tokens x 8 chunks of 16 bytes, 4 per thread; their scales and sums.
#pragma unroll
        for (int i = 0; i < MMQ_M * MMQ_CHUNKS / MMQ_THREADS; ++i) {
            const int idx = tid + MMQ_THREADS * i;
            const int r = idx / MMQ_CHUNKS;
            const int c = idx % MMQ_CHUNKS;
            const int k = k0 + 16 * c;
            uint4 v = make_uint4(0, 0, 0, 0);
            float sum = 0.0f;
            if (m0 + r < M && k < K) {
                v = *(const uint4 *)(xq + (long long)(m0 + r) * K + k);
                sum = xs[(long long)(m0 + r) * (K / 16) + k / 16];
            }
            *(uint4 *)(aq + r * MMQ_PITCH + 4 * c) = v;
            a_sum[r * MMQ_CHUNKS + c] = sum;
            if (c % 2 == 0) {
                a_scale[r * (MMQ_K / 32) + c / 2] =
                    m0 + r < M && k < K ? xd[(long long)(m0 + r) * (K / 32) + k / 32] : 0.0f;
            }
        }
        __syncthreads();
#pragma unroll 1
        for (int c = 0; c < MMQ_CHUNKS; ++c) {
            int a[2][2];
            float ad[2][2], as[2][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = wm + 16 * i + g + 8 * h;
                    a[i][h] = aq[r * MMQ_PITCH + 4 * c + t];
                    ad[i][h] = a_scale[r * (MMQ_K / 32) + c / 2];
                    as[i][h] = a_sum[r * MMQ_CHUNKS + c];
                }
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int b = wq[(wn + 8 * j + g) * MMQ_PITCH + 4 * c + t];
                float ws[2], wo[2];
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int n = wn + 8 * j + 2 * t + e;
                    ws[e] = w_scale[n * MMQ_CHUNKS + c];
                    wo[e] = w_offset[n * MMQ_CHUNKS + c];
                }
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    int sum[4] = {0, 0, 0, 0};
                    mma_s8_16x8x16(sum, a[i][0], a[i][1], b);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int h = e / 2, col = e % 2;
                        acc[i][j][e] += (float)sum[e] * (ad[i][h] * ws[col]);
                        if (U::has_offset) {
                            acc[i][j][e] += wo[col] * as[i][h];
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + wm + 16 * i + g + 8 * (e / 2);
                const int n = n0 + wn + 8 * j + 2 * t + e % 2;
                if (m < M && n < N) {
                    out[(long long)m * ldo + n] = acc[i][j][e];
                }
            }
        }
    }
}

// mul_mat_q_<name> for every type of LLMD_QUANT_TYPES.
#define MMQ_KERNEL(name, type)                                                                     \
    extern "C" __global__ void __launch_bounds__(MMQ_THREADS)                                      \
        mul_mat_q_##name(const void *__restrict__ w, const signed char *__restrict__ xq,           \
                         const float *__restrict__ xd, const float *__restrict__ xs,               \
                         float *__restrict__ out, int M, int N, int K, int ldo) {                  \
        mul_mat_q<type>(w, xq, xd, xs, out, M, N, K, ldo);                                         \
    }

LLMD_QUANT_TYPES(MMQ_KERNEL)
