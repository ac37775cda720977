// Host emulation of CUDA device code: the CUDA C keywords and intrinsics the kernels in
// kernels/cuda/*.cu use, as plain C++, and every kernel file included. A program that includes
// this supplies the two synchronisation points and runs thread blocks (emulate.cpp: each thread a
// real OS thread; fake_driver/fake_cuda.cpp: each thread a fiber):
//   static void emu_warp_barrier();   // all live threads of this thread's warp arrive
//   static void emu_block_barrier();  // all live threads of this block arrive
// and sets threadIdx / blockIdx / emu_thread_linear for the thread that runs.
// Vector loads and stores (float2, float4, uint4, __half2) and WMMA loads and stores assert the
// alignment the GPU requires (emu_check_aligned; the includer defines emu_misaligned()).
// What emulation cannot show: performance, memory-coalescing, real warp-synchronous timing, or
// the GPU's own rounding of transcendental functions.
#pragma once
#define LLMD_HOST_EMULATION 1

#include <barrier>
#include <cmath>
#include <memory>
#include <thread>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct __half {
    unsigned short x;
};

// Alignment of vector accesses. A CUDA vector type (float2, float4, uint4, __half2) lies at a
// multiple of its size, and a load or store through a misaligned pointer is a "misaligned
// address" fault on the GPU that kills the context. Here every copy from or to such a value
// asserts it: the includer defines emu_misaligned() (the host check aborts, the fake driver
// faults the launch).
static void emu_misaligned(const void *p, unsigned align, const char *what);
static inline void emu_check_aligned(const void *p, unsigned align, const char *what) {
    uintptr_t v = (uintptr_t)p;
    asm volatile("" : "+r"(v)); // the type's alignment must not let the optimiser fold the test
    if (v % align != 0) {
        emu_misaligned(p, align, what);
    }
}
#define EMU_VECTOR_COPIES(T, A)                                                                    \
    T() = default;                                                                                 \
    T(const T &o) {                                                                                \
        emu_check_aligned(&o, A, "load of " #T);                                                   \
        std::memcpy((void *)this, (const void *)&o, sizeof(T));                                    \
    }                                                                                              \
    T &operator=(const T &o) {                                                                     \
        emu_check_aligned(this, A, "store of " #T);                                                \
        emu_check_aligned(&o, A, "load of " #T);                                                   \
        std::memcpy((void *)this, (const void *)&o, sizeof(T));                                    \
        return *this;                                                                              \
    }
struct alignas(4) __half2 {
    __half a, b;
    EMU_VECTOR_COPIES(__half2, 4)
    __half2(__half a_, __half b_) : a(a_), b(b_) {}
};
struct alignas(8) float2 {
    float x, y;
    EMU_VECTOR_COPIES(float2, 8)
    float2(float x_, float y_) : x(x_), y(y_) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
    EMU_VECTOR_COPIES(float4, 16)
    float4(float x_, float y_, float z_, float w_) : x(x_), y(y_), z(z_), w(w_) {}
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
    EMU_VECTOR_COPIES(uint4, 16)
    uint4(unsigned x_, unsigned y_, unsigned z_, unsigned w_) : x(x_), y(y_), z(z_), w(w_) {}
};
struct dim3_t {
    unsigned int x = 1, y = 1, z = 1;
};
static thread_local dim3_t threadIdx, blockIdx;
static thread_local dim3_t blockDim, gridDim;
// Index of the running thread within its block (x fastest).
static thread_local int emu_thread_linear;
// Exchange slots of the running block: EMU_SLOT_WORDS words per thread, for warp shuffles and
// the warp-collective tensor-core products (emu_mma_s8_16x8x16). Includers allocate
// blockDim * EMU_SLOT_WORDS words per block.
#define EMU_SLOT_WORDS 2
static thread_local unsigned long long *emu_slots;

static void emu_warp_barrier();
static void emu_block_barrier();

static float half_to_float_exact(unsigned short h) {
    const unsigned int sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    float v;
    if (exp == 0) {
        v = std::ldexp((float)man, -24);
    } else if (exp == 31) {
        v = man ? NAN : INFINITY;
    } else {
        v = std::ldexp((float)(man | 0x400u), (int)exp - 25);
    }
    return sign ? -v : v;
}
// Every f16 value as f32, computed once (the emulated kernels convert halves constantly).
static float half_to_float(unsigned short h) {
    static const std::vector<float> table = [] {
        std::vector<float> t(65536);
        for (unsigned i = 0; i < 65536; ++i) {
            t[i] = half_to_float_exact((unsigned short)i);
        }
        return t;
    }();
    return table[h];
}
static unsigned short float_to_half(float f) {
    // Round to nearest even through the exact f32 -> f16 grid (normal range only is enough here).
    if (f == 0.0f) {
        return std::signbit(f) ? 0x8000 : 0;
    }
    const unsigned short sign = std::signbit(f) ? 0x8000 : 0;
    float a = std::fabs(f);
    int e;
    std::frexp(a, &e); // a = m * 2^e, m in [0.5, 1)
    int exp = e - 1 + 15;
    if (exp <= 0) {
        return sign | (unsigned short)std::nearbyint(std::ldexp(a, 24));
    }
    if (exp >= 31) {
        return sign | 0x7c00;
    }
    unsigned int man = (unsigned int)std::nearbyint(std::ldexp(a, 10 - (e - 1))) - 0x400u;
    if (man == 0x400u) {
        man = 0;
        ++exp;
    }
    return sign | (unsigned short)((exp << 10) | man);
}
static inline float __half2float(__half h) { return half_to_float(h.x); }
static inline __half __float2half(float f) { return __half{float_to_half(f)}; }
static inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
static inline float2 __half22float2(__half2 h) { return float2(__half2float(h.a), __half2float(h.b)); }
static inline __half2 __floats2half2_rn(float a, float b) {
    return __half2(__float2half(a), __float2half(b));
}
static inline __half2 __float2half2_rn(float a) { return __half2(__float2half(a), __float2half(a)); }
// bf16: the top half of an f32, rounded to nearest even (the CUDA conversion's rounding).
struct __nv_bfloat16 {
    unsigned short x;
};
static inline float __bfloat162float(__nv_bfloat16 h) {
    const unsigned int bits = (unsigned int)h.x << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
static inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned int bits;
    std::memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return __nv_bfloat16{(unsigned short)((bits >> 16) | 0x40)}; // NaN stays NaN
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return __nv_bfloat16{(unsigned short)(bits >> 16)};
}
static inline float4 make_float4(float x, float y, float z, float w) { return float4(x, y, z, w); }
static inline float2 make_float2(float x, float y) { return float2(x, y); }
static inline int __float2int_rn(float f) { return (int)std::nearbyint(f); }
static inline float __int_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// Round-to-nearest f32 product and sum that are never fused (plain IEEE operations on the host).
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) {
        c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    }
    return c;
}
static inline int __vsubss4(int a, int b) {
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) {
        int d = (int)(signed char)(a >> (8 * i)) - (int)(signed char)(b >> (8 * i));
        d = d < -128 ? -128 : (d > 127 ? 127 : d);
        r |= (unsigned int)(d & 0xff) << (8 * i);
    }
    return (int)r;
}
static inline unsigned int __vsub4(unsigned int a, unsigned int b) {
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) {
        r |= (((a >> (8 * i)) - (b >> (8 * i))) & 0xffu) << (8 * i);
    }
    return r;
}
static inline unsigned int __vcmpne4(unsigned int a, unsigned int b) {
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) {
        r |= (((a >> (8 * i)) & 0xffu) != ((b >> (8 * i)) & 0xffu) ? 0xffu : 0u) << (8 * i);
    }
    return r;
}
// Byte n of the result is byte (s >> 4n) & 7 of the 8 bytes y:x (x the low word).
static inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long both = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int n = 0; n < 4; ++n) {
        r |= (unsigned int)((both >> (8 * ((s >> (4 * n)) & 7))) & 0xff) << (8 * n);
    }
    return r;
}
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
template <typename T> static T shuffle(T x, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    const int warp = emu_thread_linear / 32;
    std::memcpy(&emu_slots[emu_thread_linear * EMU_SLOT_WORDS], &x, sizeof(T));
    emu_warp_barrier();
    T y;
    std::memcpy(&y, &emu_slots[(warp * 32 + src_lane) * EMU_SLOT_WORDS], sizeof(T));
    emu_warp_barrier();
    return y;
}
template <typename T> static inline T __shfl_xor_sync(unsigned int, T x, int mask) {
    return shuffle(x, (emu_thread_linear % 32) ^ mask);
}
template <typename T> static inline T __shfl_sync(unsigned int, T x, int lane) {
    return shuffle(x, lane);
}
static inline void __syncthreads() { emu_block_barrier(); }
static inline void __syncwarp(unsigned int = 0xffffffffu) { emu_warp_barrier(); }
using std::max;
using std::min;

static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
    return uint4(x, y, z, w);
}

// The tensor cores' int8 product of one warp (PTX mma.sync.m16n8k16.row.col.s32.s8.s8.s32),
// warp-collective as on the GPU: every lane passes its fragments, with the PTX ISA's layout
// (g = lane / 4, t = lane % 4): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..4t+3] (4 signed bytes each,
// low byte first), b = B[4t..4t+3][g]; each lane gets d[0..3] += C[g][2t], C[g][2t+1],
// C[g+8][2t], C[g+8][2t+1] of C = A (16 x 16) * B (16 x 8), exactly, in 32-bit integers.
static inline void emu_mma_s8_16x8x16(int (&d)[4], int a0, int a1, int b) {
    const int lane = emu_thread_linear % 32;
    const int warp = emu_thread_linear / 32;
    unsigned long long *mine = &emu_slots[emu_thread_linear * EMU_SLOT_WORDS];
    mine[0] = (unsigned int)a0 | ((unsigned long long)(unsigned int)a1 << 32);
    mine[1] = (unsigned int)b;
    emu_warp_barrier();
    const auto byte = [](unsigned long long word, int k) { return (int)(signed char)(word >> (8 * k)); };
    const int g = lane / 4, t = lane % 4;
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2); // of C (and A)
        const int col = 2 * t + e % 2;   // of C (and B)
        int sum = 0;
        for (int k = 0; k < 16; ++k) {
            // A[row][k] is byte k % 4 of a(row / 8) of lane 4 * (row % 8) + k / 4; B[k][col] is
            // byte k % 4 of b of lane 4 * col + k / 4.
            const unsigned long long *la = &emu_slots[(warp * 32 + 4 * (row % 8) + k / 4) * EMU_SLOT_WORDS];
            const unsigned long long *lb = &emu_slots[(warp * 32 + 4 * col + k / 4) * EMU_SLOT_WORDS];
            sum += byte(la[0] >> (32 * (row / 8)), k % 4) * byte(lb[1], k % 4);
        }
        d[e] += sum;
    }
    emu_warp_barrier();
}

// WMMA (tensor-core warp matrix ops), emulated with the API's warp-collective meaning: every
// lane of a warp makes the same call, so each lane here holds the whole 16 x 16 fragment and
// does the whole operation (the stores write the same values 32 times). The real fragments
// spread elements over lanes in an unspecified way, which kernels may not depend on.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 fragments are emulated");
    float v[16][16]; // [row][col] of the fragment's matrix (A: m x k, B: k x n, C: m x n)
};
// An f16 or bf16 element as f32.
static inline float element(__half h) { return __half2float(h); }
static inline float element(__nv_bfloat16 h) { return __bfloat162float(h); }
template <typename Use, typename T, typename L>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
    static_assert(!std::is_same_v<Use, accumulator>, "accumulators load through a layout_t");
    // The API's rules: a 256-bit aligned pointer, ldm a multiple of 16 bytes.
    emu_check_aligned(p, 32, "wmma::load_matrix_sync");
    if (ldm % 8 != 0) {
        emu_misaligned(p, 16, "wmma::load_matrix_sync leading dimension");
    }
    for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < 16; ++c) {
            // Row-major: element (r, c) at r * ldm + c; column-major: at c * ldm + r.
            const size_t at = std::is_same_v<L, row_major> ? (size_t)r * ldm + c : (size_t)c * ldm + r;
            f.v[r][c] = element(p[at]);
        }
    }
}
template <typename T> static inline void fill_fragment(fragment<accumulator, 16, 16, 16, T> &f, T value) {
    for (auto &row : f.v) {
        for (float &x : row) {
            x = value;
        }
    }
}
template <typename T, typename E>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, T> &d,
                            const fragment<matrix_a, 16, 16, 16, E, row_major> &a,
                            const fragment<matrix_b, 16, 16, 16, E, col_major> &b,
                            const fragment<accumulator, 16, 16, 16, T> &c) {
    float r[16][16];
    for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 16; ++j) {
            float sum = c.v[i][j];
            for (int k = 0; k < 16; ++k) {
                sum += a.v[i][k] * b.v[k][j];
            }
            r[i][j] = sum;
        }
    }
    std::memcpy(d.v, r, sizeof r);
}
template <typename T>
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, T> &f,
                                     unsigned ldm, layout_t layout) {
    emu_check_aligned(p, 32, "wmma::store_matrix_sync");
    if (ldm % 4 != 0) {
        emu_misaligned(p, 16, "wmma::store_matrix_sync leading dimension");
    }
    for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < 16; ++c) {
            p[layout == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r] = f.v[r][c];
        }
    }
}
} // namespace wmma
} // namespace nvcuda

#include "../attention.cu"
#include "../dequantize.cu"
#include "../elementwise.cu"
#include "../gemm.cu"
#include "../getrows.cu"
#include "../kvcache.cu"
#include "../mmq.cu"
#include "../mmv.cu"
#include "../mmvq.cu"
#include "../moe.cu"
#include "../norm.cu"
#include "../quantize.cu"
#include "../rope.cu"
#include "../select.cu"
