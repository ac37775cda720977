// Host emulation of the per-block arithmetic of the CUDA kernels, to check the GGML block
// layouts without a GPU: compiles mmvq.cu, dequantize.cu, getrows.cu, rope.cu and
// elementwise.cu as plain C++ with scalar stand-ins for the CUDA intrinsics, and runs the
// kernels that need no warp cooperation (dequantize, get_rows, rope, gated activations) thread
// by thread, and the mmvq per-item dot products (q4_0_traits::dot, ...) item by item.
// Driven by check.py, which compares the results with the `gguf` Python package's dequantizers.
//
// Usage: emulate OP TYPE IN OUT [ARGS...]   (see main; all files raw little-endian)
#define LLMD_HOST_EMULATION 1

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(n)
#define __shared__ static

struct __half {
    unsigned short x;
};
struct __half2 {
    __half a, b;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned int x, y, z, w;
};
struct dim3_t {
    unsigned int x = 0, y = 0, z = 0;
};
static dim3_t threadIdx, blockIdx, blockDim, gridDim;

static float half_to_float(unsigned short h) {
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
static inline float2 __half22float2(__half2 h) { return {__half2float(h.a), __half2float(h.b)}; }
static inline __half2 __floats2half2_rn(float a, float b) {
    return {__float2half(a), __float2half(b)};
}
static inline __half2 __float2half2_rn(float a) { return {__float2half(a), __float2half(a)}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline int __float2int_rn(float f) { return (int)std::nearbyint(f); }
static inline float __int_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
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
// Warp/block cooperation is not emulated: kernels using these are not run here.
template <typename T> static inline T __shfl_xor_sync(unsigned int, T x, int) {
    std::abort();
    return x;
}
template <typename T> static inline T __shfl_sync(unsigned int, T x, int) {
    std::abort();
    return x;
}
static inline void __syncthreads() { std::abort(); }
using std::max;
using std::min;

#include "../mmvq.cu"
#include "../dequantize.cu"
#include "../getrows.cu"
#include "../rope.cu"
#include "../elementwise.cu"

static std::vector<unsigned char> read_file(const char *path) {
    FILE *f = std::fopen(path, "rb");
    if (!f) {
        std::perror(path);
        std::exit(2);
    }
    std::vector<unsigned char> data;
    unsigned char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
        data.insert(data.end(), buf, buf + n);
    }
    std::fclose(f);
    return data;
}
static void write_file(const char *path, const void *data, size_t bytes) {
    FILE *f = std::fopen(path, "wb");
    if (!f || std::fwrite(data, 1, bytes, f) != bytes) {
        std::perror(path);
        std::exit(2);
    }
    std::fclose(f);
}

// Runs a kernel over a 1-D or 2-D grid of 1-D blocks, thread by thread.
template <typename F> static void launch(unsigned gx, unsigned gy, unsigned bx, F f) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
            for (unsigned t = 0; t < bx; ++t) {
                blockIdx = {x, y, 0};
                threadIdx = {t, 0, 0};
                f();
            }
        }
    }
}

template <typename T>
static double dot_row(const unsigned char *w, const block_q8_1 *y, int n_blocks) {
    double sum = 0.0;
    for (int ib = 0; ib < n_blocks; ++ib) {
        for (int k = 0; k < T::ni; ++k) {
            sum += T::dot(((const typename T::block *)w)[ib], y + ib * (T::qk / LLMD_QK), k);
        }
    }
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: emulate OP TYPE IN OUT [ARGS...]\n");
        return 2;
    }
    const std::string op = argv[1], type = argv[2];
    std::vector<unsigned char> in = read_file(argv[3]);
    if (op == "dequantize") {
        // IN: whole blocks; OUT: f32 values. ARGS: n (number of weights).
        const long long n = std::atoll(argv[5]);
        std::vector<float> out(n);
        const unsigned grid = (unsigned)((n / 8 + 255) / 256);
        auto run = [&](auto kernel) { launch(grid, 1, 256, [&] { kernel(in.data(), out.data(), n); }); };
        if (type == "q4_0") run(dequantize_q4_0_f32);
        else if (type == "q5_0") run(dequantize_q5_0_f32);
        else if (type == "q8_0") run(dequantize_q8_0_f32);
        else if (type == "q4_K") run(dequantize_q4_K_f32);
        else if (type == "q6_K") run(dequantize_q6_K_f32);
        else { std::fprintf(stderr, "bad type\n"); return 2; }
        write_file(argv[4], out.data(), out.size() * 4);
    } else if (op == "get_rows") {
        // IN: table; ARGS: cols ids_file scale; OUT: n_ids rows of f32.
        const int cols = std::atoi(argv[5]);
        std::vector<unsigned char> ids_raw = read_file(argv[6]);
        const float scale = (float)std::atof(argv[7]);
        const unsigned n_ids = (unsigned)(ids_raw.size() / 4);
        std::vector<float> out((size_t)n_ids * cols);
        const unsigned *ids = (const unsigned *)ids_raw.data();
        const unsigned gx = (unsigned)((cols / 8 + 255) / 256);
        auto run = [&](auto kernel) {
            launch(gx, n_ids, 256, [&] { kernel(in.data(), ids, out.data(), cols, scale); });
        };
        if (type == "f32") run(get_rows_f32);
        else if (type == "f16") run(get_rows_f16);
        else if (type == "q4_0") run(get_rows_q4_0);
        else if (type == "q5_0") run(get_rows_q5_0);
        else if (type == "q8_0") run(get_rows_q8_0);
        else if (type == "q4_K") run(get_rows_q4_K);
        else if (type == "q6_K") run(get_rows_q6_K);
        else { std::fprintf(stderr, "bad type\n"); return 2; }
        write_file(argv[4], out.data(), out.size() * 4);
    } else if (op == "dot") {
        // IN: rows of weight blocks; ARGS: q8_1_file rows cols; OUT: rows f64 dot products.
        std::vector<unsigned char> y = read_file(argv[5]);
        const int rows = std::atoi(argv[6]), cols = std::atoi(argv[7]);
        const size_t row_bytes = in.size() / rows;
        std::vector<double> out(rows);
        for (int r = 0; r < rows; ++r) {
            const unsigned char *w = in.data() + r * row_bytes;
            const block_q8_1 *yb = (const block_q8_1 *)y.data();
            if (type == "q4_0") out[r] = dot_row<q4_0_traits>(w, yb, cols / 32);
            else if (type == "q5_0") out[r] = dot_row<q5_0_traits>(w, yb, cols / 32);
            else if (type == "q8_0") out[r] = dot_row<q8_0_traits>(w, yb, cols / 32);
            else if (type == "q4_K") out[r] = dot_row<q4_K_traits>(w, yb, cols / 256);
            else if (type == "q6_K") out[r] = dot_row<q6_K_traits>(w, yb, cols / 256);
            else { std::fprintf(stderr, "bad type\n"); return 2; }
        }
        write_file(argv[4], out.data(), out.size() * 8);
    } else if (op == "rope") {
        // IN: (n_tokens, n_heads, head_dim) f32; ARGS: positions_file n_heads head_dim n_dims
        // base freq_scale neox; OUT: rotated values.
        std::vector<unsigned char> pos = read_file(argv[5]);
        const int n_heads = std::atoi(argv[6]), head_dim = std::atoi(argv[7]);
        const int n_dims = std::atoi(argv[8]);
        const float base = (float)std::atof(argv[9]), fs = (float)std::atof(argv[10]);
        const int neox = std::atoi(argv[11]);
        std::vector<float> x(in.size() / 4);
        std::memcpy(x.data(), in.data(), in.size());
        const unsigned n_tokens = (unsigned)(pos.size() / 4);
        launch(n_heads, n_tokens, 64, [&] {
            rope_f32(x.data(), (const unsigned *)pos.data(), n_heads, head_dim, n_dims, base, fs,
                     neox);
        });
        write_file(argv[4], x.data(), x.size() * 4);
    } else if (op == "glu") {
        // IN: gate then up (n f32 each); TYPE: gelu or silu; OUT: n values.
        const long long n = (long long)(in.size() / 8);
        std::vector<float> gate(n), up(n);
        std::memcpy(gate.data(), in.data(), n * 4);
        std::memcpy(up.data(), in.data() + n * 4, n * 4);
        const unsigned grid = (unsigned)((n + 255) / 256);
        if (type == "gelu") launch(grid, 1, 256, [&] { geglu_f32(gate.data(), up.data(), n); });
        else launch(grid, 1, 256, [&] { swiglu_f32(gate.data(), up.data(), n); });
        write_file(argv[4], gate.data(), n * 4);
    } else {
        std::fprintf(stderr, "bad op\n");
        return 2;
    }
    return 0;
}
