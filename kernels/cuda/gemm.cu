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
