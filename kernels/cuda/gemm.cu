// Fallback f32 GEMM for prefill when cuBLAS is not used: out (M, N) = x (M, K) * w (N, K)^T,
// i.e. out[m][n] = sum_k x[m][k] * w[n][k], with w a dequantized weight tile (dequantize.cu).
//
// gemm_f32_nt(x, w, out, M, N, K, ldo): x row-major M x K, w row-major N x K, out row-major with
// row stride ldo (>= N; the host passes the full output width and offsets `out` by a tile's first
// column when it multiplies a tile of weight rows).
// Launch: blockDim.x = 256; gridDim = (ceil(N / 64), ceil(M / 64)). Each block computes a
// 64 x 64 tile of out from 16-wide k slices staged in shared memory (8 KiB); each thread a 4 x 4
// register tile. Any M, N, K (edges are guarded).
#include "common.cuh"

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 16

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32_nt(const float *__restrict__ x, const float *__restrict__ w, float *__restrict__ out,
                int M, int N, int K, int ldo) {
    // Transposed staging (k-major) so the inner loop reads consecutive m / n.
    __shared__ float xs[GEMM_BK][GEMM_BM + 4];
    __shared__ float ws[GEMM_BK][GEMM_BN + 4];
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * GEMM_BM;
    const int n0 = blockIdx.x * GEMM_BN;
    const int tm = (tid / 16) * 4; // this thread's 4 rows of the tile
    const int tn = (tid % 16) * 4; // and 4 columns
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += GEMM_BK) {
        // 64 x 16 values of each operand, 4 per thread; consecutive threads read consecutive k.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = tid + 256 * i;
            const int r = idx / GEMM_BK;
            const int kk = idx % GEMM_BK;
            const int k = k0 + kk;
            xs[kk][r] = (m0 + r < M && k < K) ? x[(long long)(m0 + r) * K + k] : 0.0f;
            ws[kk][r] = (n0 + r < N && k < K) ? w[(long long)(n0 + r) * K + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = xs[kk][tm + i];
                b[i] = ws[kk][tn + i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + tm + i;
        if (m >= M) {
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tn + j;
            if (n < N) {
                out[(long long)m * ldo + n] = acc[i][j];
            }
        }
    }
}

// Tensor-core GEMMs for prefill with F16 and BF16 weights: out (M, N) f32 = x (M, K) * w (N, K)^T
// in f16 (gemm_f16_tc) or bf16 (gemm_bf16_tc), f32 accumulation (WMMA 16x16x16), i.e.
// out[m][n] = row_scale[m] * sum_k x[m][k] * w[n][k]. The weights are multiplied as they lie; the
// host converts the activations once per matmul: to f16 with each row scaled by a power of two
// into f16's range (convert_f32_to_f16_rows, which writes row_scale), or to bf16, whose range is
// f32's (row_scale null: 1).
//
// gemm_<f16|bf16>_tc(x, w, out, M, N, K, ldo, row_scale): x row-major M x K, w row-major N x K,
// out row-major with row stride ldo (>= N; the host may offset `out` to a first column).
// Preconditions: K % 32 == 0; x and w 16-byte aligned (each row is then too: K % 8 == 0).
// Launch: blockDim.x = 128 (4 warps); gridDim = (ceil(N / 64), ceil(M / 64)). Each block computes
// a 64 x 64 tile of out from 32-wide k slices staged in shared memory; each warp a 32 x 32
// quarter as 2 x 2 accumulator fragments. Results go through shared memory, so M and N edges
// are guarded and `out` needs no alignment.
#ifndef LLMD_HOST_EMULATION
#include <mma.h>
#endif

#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
// Row pitch of the staged tiles in elements: a multiple of 8 (WMMA's ldm rule for 16-bit
// types) that shifts consecutive rows across shared-memory banks.
#define TC_PITCH (TC_BK + 8)
// Row pitch of the staged results in floats: a multiple of 4 (WMMA's ldm rule for f32).
#define TC_OUT_PITCH (TC_BN + 4)

template <typename T>
static __device__ __forceinline__ void gemm_tc(const T *__restrict__ x, const T *__restrict__ w,
                                               float *__restrict__ out, int M, int N, int K,
                                               int ldo, const float *__restrict__ row_scale) {
    using namespace nvcuda;
    __shared__ __align__(32) T xs[TC_BM * TC_PITCH];
    __shared__ __align__(32) T ws[TC_BN * TC_PITCH];
    __shared__ __align__(32) float cs[TC_BM * TC_OUT_PITCH];
    const int tid = threadIdx.x;
    const int warp = tid / LLMD_WARP;
    const int m0 = blockIdx.y * TC_BM;
    const int n0 = blockIdx.x * TC_BN;
    const int wm = (warp / 2) * 32; // this warp's 32 x 32 quarter of the tile
    const int wn = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::fill_fragment(acc[i][j], 0.0f);
        }
    }
    for (int k0 = 0; k0 < K; k0 += TC_BK) {
        // 64 rows x 32 elements of each operand = 256 chunks of 8; 2 per thread per operand.
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            const int chunk = tid + 128 * c;
            const int r = chunk / (TC_BK / 8);
            const int kk = (chunk % (TC_BK / 8)) * 8;
            uint4 xv = make_uint4(0, 0, 0, 0), wv = make_uint4(0, 0, 0, 0);
            if (m0 + r < M) {
                xv = *(const uint4 *)(x + (long long)(m0 + r) * K + k0 + kk);
            }
            if (n0 + r < N) {
                wv = *(const uint4 *)(w + (long long)(n0 + r) * K + k0 + kk);
            }
            *(uint4 *)(xs + r * TC_PITCH + kk) = xv;
            *(uint4 *)(ws + r * TC_PITCH + kk) = wv;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                wmma::load_matrix_sync(a[i], xs + (wm + 16 * i) * TC_PITCH + kk, TC_PITCH);
                // B (k, n) = w (n, k): the staged w rows are B's columns.
                wmma::load_matrix_sync(b[i], ws + (wn + 16 * i) * TC_PITCH + kk, TC_PITCH);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(cs + (wm + 16 * i) * TC_OUT_PITCH + wn + 16 * j, acc[i][j],
                                    TC_OUT_PITCH, wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int idx = tid; idx < TC_BM * TC_BN; idx += 128) {
        const int r = idx / TC_BN;
        const int c = idx % TC_BN;
        if (m0 + r < M && n0 + c < N) {
            const float scale = row_scale ? row_scale[m0 + r] : 1.0f;
            out[(long long)(m0 + r) * ldo + n0 + c] = cs[r * TC_OUT_PITCH + c] * scale;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    gemm_f16_tc(const __half *__restrict__ x, const __half *__restrict__ w, float *__restrict__ out,
                int M, int N, int K, int ldo, const float *__restrict__ row_scale) {
    gemm_tc<__half>(x, w, out, M, N, K, ldo, row_scale);
}

extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16_tc(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                 float *__restrict__ out, int M, int N, int K, int ldo,
                 const float *__restrict__ row_scale) {
    gemm_tc<__nv_bfloat16>(x, w, out, M, N, K, ldo, row_scale);
}
