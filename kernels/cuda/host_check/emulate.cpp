// Host emulation of the CUDA kernels, to check their arithmetic and indexing without a GPU:
// every kernels/cuda/*.cu file is compiled as plain C++ (emu.h), and a launch runs each thread
// block's threads as real OS threads: __syncthreads is a block-wide barrier, warp shuffles
// exchange values through per-warp slots between two warp-wide barriers, and __shared__
// variables are function statics (blocks run one after the other). Exited threads drop out of
// the barriers, as on the GPU.
// What this cannot show: performance, memory-coalescing, alignment faults, real warp-synchronous
// timing, or the GPU's own rounding of transcendental functions.
// Driven by check.py, which compares the results with the `gguf` Python package's dequantizers
// and numpy references.
//
// Usage: emulate OP TYPE IN OUT [ARGS...]   (see main; all files raw little-endian)
#include "emu.h"

#include <barrier>
#include <functional>
#include <map>
#include <memory>
#include <thread>

// One thread block being run: its barriers and the shuffle exchange slots.
struct BlockContext {
    explicit BlockContext(int n_threads) : block_barrier(n_threads), slots((size_t)n_threads * EMU_SLOT_WORDS) {
        for (int w = 0; w < n_threads; w += 32) {
            warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32, n_threads - w)));
        }
    }
    std::barrier<> block_barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    std::vector<unsigned long long> slots;
};
static thread_local BlockContext *block_ctx;

static void emu_warp_barrier() { block_ctx->warp_barriers[emu_thread_linear / 32]->arrive_and_wait(); }
static void emu_block_barrier() { block_ctx->block_barrier.arrive_and_wait(); }
// A misaligned vector access (a "misaligned address" fault on the GPU) fails the check at once.
static void emu_misaligned(const void *p, unsigned align, const char *what) {
    std::fprintf(stderr, "emulate: %s at %p, which is not %u-byte aligned\n", what, p, align);
    std::abort();
}


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

// Runs a kernel over a grid, one block after the other, each block's threads concurrently.
template <typename F> static void launch(dim3_t grid, dim3_t block, F f) {
    gridDim = grid;
    blockDim = block;
    const int n_threads = (int)(block.x * block.y * block.z);
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                BlockContext ctx(n_threads);
                std::vector<std::thread> threads;
                threads.reserve(n_threads);
                for (int t = 0; t < n_threads; ++t) {
                    threads.emplace_back([&, t] {
                        block_ctx = &ctx;
                        emu_slots = ctx.slots.data();
                        emu_thread_linear = t;
                        blockIdx = {x, y, z};
                        gridDim = grid; // per thread: the fake driver runs launches on several
                        blockDim = block; // stream threads, so these are thread-local
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        f();
                        ctx.warp_barriers[t / 32]->arrive_and_drop();
                        ctx.block_barrier.arrive_and_drop();
                    });
                }
                for (auto &th : threads) {
                    th.join();
                }
            }
        }
    }
}
static void launch(unsigned gx, unsigned gy, unsigned bx, const std::function<void()> &f) {
    launch(dim3_t{gx, gy, 1}, dim3_t{bx, 1, 1}, f);
}
static unsigned ceil_div(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

// The sum over a row of every item's dot product (vdot<TYPE>::dot), computed item by item on the
// host thread (no launch), to check the per-type arithmetic on its own.
template <typename T>
static double dot_row(const unsigned char *w, const block_q8_1 *y, int cols) {
    double sum = 0.0;
    for (int ib = 0; ib < cols / T::qk; ++ib) {
        for (int k = 0; k < T::ni; ++k) {
            sum += T::dot(((const typename T::block *)w)[ib], y + ib * (T::qk / LLMD_QK), k);
        }
    }
    return sum;
}

// Every group of every block of `w` (n weights of TYPE) as int8w<TYPE>::unpack8 gives it:
// scale * q + offset in f32, weight by weight, computed on the host thread (no launch) to check
// that the int8 form of mmq.cu is exactly dequant8's. A group whose scale or offset differs from
// its chunk partner's (groups 2c and 2c + 1 must share them) gives NaN.
template <int TYPE> static void unpack_blocks(const unsigned char *w, long long n, float *out) {
    typedef deq<TYPE> D;
    const typename D::block *blocks = (const typename D::block *)w;
    for (long long ib = 0; ib < n / D::qk; ++ib) {
        for (int g = 0; g < D::qk / 8; g += 2) {
            int q[4];
            float scale[2], offset[2];
            int8w<TYPE>::unpack8(blocks[ib], g, q[0], q[1], scale[0], offset[0]);
            int8w<TYPE>::unpack8(blocks[ib], g + 1, q[2], q[3], scale[1], offset[1]);
            const bool shared = scale[0] == scale[1] && offset[0] == offset[1];
            for (int i = 0; i < 16; ++i) {
                const float v = scale[0] * (float)(signed char)(q[i / 4] >> (8 * (i % 4))) + offset[0];
                out[ib * D::qk + 8 * g + i] = shared ? v : NAN;
            }
        }
    }
}

// The kernels of each weight type by its name in types.cuh's lists.
using DequantF32 = void (*)(const void *, float *, long long);
using GetRows = void (*)(const void *, const unsigned int *, float *, int, float);
using Mmvq = void (*)(const block_q8_1 *, int, int, int, const void *, float *, int, const void *,
                     float *, int, const void *, float *, int);
using DotRow = double (*)(const unsigned char *, const block_q8_1 *, int);
using Unpack = void (*)(const unsigned char *, long long, float *);
using Mmq = void (*)(const void *, const signed char *, const float *, const float *, float *, int,
                     int, int, int);
#define DEQ_F32(name, type) {#name, dequantize_##name##_f32},
#define ROWS(name, type) {#name, get_rows_##name},
#define MMVQ(name, type) {#name, mul_mat_vec_##name##_q8_1},
#define DOT(name, type) {#name, dot_row<vdot<type>>},
#define UNPACK(name, type) {#name, unpack_blocks<type>},
#define MMQ(name, type) {#name, mul_mat_q_##name},
static const std::map<std::string, DequantF32> dequantize_f32_kernels = {
    LLMD_QUANT_TYPES(DEQ_F32) LLMD_HALF_TYPES(DEQ_F32)};
static const std::map<std::string, GetRows> get_rows_kernels = {
    {"f32", get_rows_f32}, LLMD_HALF_TYPES(ROWS) LLMD_QUANT_TYPES(ROWS)};
static const std::map<std::string, Mmvq> mmvq_kernels = {LLMD_QUANT_TYPES(MMVQ)};
static const std::map<std::string, DotRow> dot_rows = {LLMD_QUANT_TYPES(DOT)};
static const std::map<std::string, Unpack> unpackers = {LLMD_QUANT_TYPES(UNPACK)};
static const std::map<std::string, Mmq> mmq_kernels = {LLMD_QUANT_TYPES(MMQ)};
#undef DEQ_F32
#undef ROWS
#undef MMVQ
#undef DOT
#undef UNPACK
#undef MMQ

// The entry for `type` in `kernels`, or exit with an error naming it.
template <typename K> static K by_type(const std::map<std::string, K> &kernels, const std::string &type) {
    const auto it = kernels.find(type);
    if (it == kernels.end()) {
        std::fprintf(stderr, "no kernel for type %s\n", type.c_str());
        std::exit(2);
    }
    return it->second;
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
        const DequantF32 kernel = by_type(dequantize_f32_kernels, type);
        launch(grid, 1, 256, [&] { kernel(in.data(), out.data(), n); });
        write_file(argv[4], out.data(), out.size() * 4);
    } else if (op == "unpack") {
        // IN: whole blocks; OUT: f32 values (unpack_blocks). ARGS: n (number of weights).
        const long long n = std::atoll(argv[5]);
        std::vector<float> out(n);
        by_type(unpackers, type)(in.data(), n, out.data());
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
        const GetRows kernel = by_type(get_rows_kernels, type);
        launch(gx, n_ids, 256, [&] { kernel(in.data(), ids, out.data(), cols, scale); });
        write_file(argv[4], out.data(), out.size() * 4);
    } else if (op == "dot") {
        // IN: rows of weight blocks; ARGS: q8_1_file rows cols; OUT: rows f64 dot products.
        std::vector<unsigned char> y = read_file(argv[5]);
        const int rows = std::atoi(argv[6]), cols = std::atoi(argv[7]);
        const size_t row_bytes = in.size() / rows;
        std::vector<double> out(rows);
        for (int r = 0; r < rows; ++r) {
            const unsigned char *w = in.data() + r * row_bytes;
            out[r] = by_type(dot_rows, type)(w, (const block_q8_1 *)y.data(), cols);
        }
        write_file(argv[4], out.data(), out.size() * 8);
    } else if (op == "mmq") {
        // IN: weights; ARGS: x_file (f32, n_tokens x cols) rows cols n_tokens; OUT: the
        // n_tokens x rows products, then quantize_mmq's values (n_tokens * cols bytes), scales
        // (n_tokens * cols / 32 f32) and sums (n_tokens * cols / 16 f32).
        std::vector<unsigned char> xf = read_file(argv[5]);
        const int rows = std::atoi(argv[6]), cols = std::atoi(argv[7]), n_tokens = std::atoi(argv[8]);
        const long long n = (long long)n_tokens * cols;
        std::vector<signed char> q(n);
        std::vector<float> d(n / 32), s16(n / 16), out((size_t)n_tokens * rows, NAN);
        launch(ceil_div(n, 256), 1, 256,
               [&] { quantize_mmq((const float *)xf.data(), q.data(), d.data(), s16.data(), n); });
        const Mmq kernel = by_type(mmq_kernels, type);
        launch(dim3_t{ceil_div(n_tokens, 64), ceil_div(rows, 64), 1}, dim3_t{128, 1, 1}, [&] {
            kernel(in.data(), q.data(), d.data(), s16.data(), out.data(), n_tokens, rows, cols, rows);
        });
        std::vector<unsigned char> all(out.size() * 4 + q.size() + d.size() * 4 + s16.size() * 4);
        unsigned char *at = all.data();
        for (auto [p, bytes] : {std::pair<const void *, size_t>{out.data(), out.size() * 4},
                                {q.data(), q.size()}, {d.data(), d.size() * 4}, {s16.data(), s16.size() * 4}}) {
            std::memcpy(at, p, bytes);
            at += bytes;
        }
        write_file(argv[4], all.data(), all.size());
    } else if (op == "f16_rows") {
        // IN: rows x cols f32; ARGS: cols; OUT: the f16 values, then one f32 scale per row.
        const int cols = std::atoi(argv[5]);
        const unsigned n_rows = (unsigned)(in.size() / 4 / cols);
        std::vector<__half> h((size_t)n_rows * cols);
        std::vector<float> scale(n_rows);
        launch(n_rows, 1, 256, [&] {
            convert_f32_to_f16_rows((const float *)in.data(), h.data(), scale.data(), cols);
        });
        std::vector<unsigned char> all(h.size() * 2 + scale.size() * 4);
        std::memcpy(all.data(), h.data(), h.size() * 2);
        std::memcpy(all.data() + h.size() * 2, scale.data(), scale.size() * 4);
        write_file(argv[4], all.data(), all.size());
    } else if (op == "rope") {
        // IN: (n_tokens, n_heads, head_dim) f32; ARGS: positions_file factors_file (or "-")
        // n_heads head_dim n_dims base freq_scale ext_factor attn_factor corr_low corr_high neox;
        // OUT: rotated values.
        std::vector<unsigned char> pos = read_file(argv[5]);
        const bool has_factors = std::string(argv[6]) != "-";
        std::vector<unsigned char> factors = has_factors ? read_file(argv[6])
                                                         : std::vector<unsigned char>();
        const int n_heads = std::atoi(argv[7]), head_dim = std::atoi(argv[8]);
        const int n_dims = std::atoi(argv[9]);
        const float base = (float)std::atof(argv[10]), fs = (float)std::atof(argv[11]);
        const float ext = (float)std::atof(argv[12]), attn = (float)std::atof(argv[13]);
        const float corr_low = (float)std::atof(argv[14]), corr_high = (float)std::atof(argv[15]);
        const int neox = std::atoi(argv[16]);
        std::vector<float> x(in.size() / 4);
        std::memcpy(x.data(), in.data(), in.size());
        const unsigned n_tokens = (unsigned)(pos.size() / 4);
        const float *ff = has_factors ? (const float *)factors.data() : nullptr;
        launch(n_heads, n_tokens, 64, [&] {
            rope_f32(x.data(), (const unsigned *)pos.data(), ff, n_heads, head_dim, n_dims, base,
                     fs, ext, attn, corr_low, corr_high, neox);
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
    } else if (op == "quantize_q8_1") {
        // IN: n f32 (n % 32 == 0); OUT: n / 32 Q8_1 blocks.
        const long long n = (long long)(in.size() / 4);
        std::vector<block_q8_1> out(n / 32);
        launch(ceil_div(n, 256), 1, 256,
               [&] { quantize_q8_1((const float *)in.data(), out.data(), n); });
        write_file(argv[4], out.data(), out.size() * sizeof(block_q8_1));
    } else if (op == "mmvq" || op == "mmv") {
        // IN: weights; ARGS: activations (Q8_1 blocks for mmvq, f32 for mmv) rows cols n_tokens;
        // OUT: n_tokens x rows f32.
        std::vector<unsigned char> y = read_file(argv[5]);
        const int rows = std::atoi(argv[6]), cols = std::atoi(argv[7]);
        const unsigned n_tokens = (unsigned)std::atoi(argv[8]);
        std::vector<float> out((size_t)n_tokens * rows, NAN);
        const dim3_t grid{ceil_div(rows, 4), n_tokens, 1}, block{32, 4, 1};
        const dim3_t grid_q{ceil_div(rows, 4), ceil_div(n_tokens, 8), 1};
        const void *w = in.data();
        const block_q8_1 *yq = (const block_q8_1 *)y.data();
        float *o = out.data();
        const int nt = (int)n_tokens;
        if (op == "mmv" && type == "f16") {
            launch(grid, block, [&] {
                mul_mat_vec_f16((const __half *)w, (const float *)y.data(), o, rows, cols);
            });
        } else if (op == "mmv" && type == "f32") {
            launch(grid, block, [&] {
                mul_mat_vec_f32((const float *)w, (const float *)y.data(), o, rows, cols);
            });
        } else if (op == "mmv" && type == "bf16") {
            launch(grid, block, [&] {
                mul_mat_vec_bf16((const unsigned short *)w, (const float *)y.data(), o, rows, cols);
            });
        } else {
            const Mmvq kernel = by_type(mmvq_kernels, type);
            launch(grid_q, block, [&] {
                kernel(yq, cols, nt, 0, w, o, rows, nullptr, nullptr, 0, nullptr, nullptr, 0);
            });
        }
        write_file(argv[4], out.data(), out.size() * 4);
    } else if (op == "rms_norm") {
        // IN: rows x dim f32; ARGS: weight_file rows dim eps block_threads; OUT: normalised
        // (computed in place).
        std::vector<unsigned char> wt = read_file(argv[5]);
        const int rows = std::atoi(argv[6]), dim = std::atoi(argv[7]);
        const float eps = (float)std::atof(argv[8]);
        const unsigned threads = (unsigned)std::atoi(argv[9]);
        std::vector<float> x(in.size() / 4);
        std::memcpy(x.data(), in.data(), in.size());
        launch((unsigned)rows, 1, threads,
               [&] { rms_norm_f32(x.data(), (const float *)wt.data(), x.data(), dim, eps); });
        write_file(argv[4], x.data(), x.size() * 4);
    } else if (op == "gemm") {
        // IN: x (M x K); ARGS: w_file M N K ldo; OUT: M x ldo (untouched columns stay 0).
        std::vector<unsigned char> wt = read_file(argv[5]);
        const int M = std::atoi(argv[6]), N = std::atoi(argv[7]), K = std::atoi(argv[8]);
        const int ldo = std::atoi(argv[9]);
        std::vector<float> out((size_t)M * ldo, 0.0f);
        launch(dim3_t{ceil_div(N, 64), ceil_div(M, 64), 1}, dim3_t{256, 1, 1}, [&] {
            gemm_f32_nt((const float *)in.data(), (const float *)wt.data(), out.data(), M, N, K,
                        ldo);
        });
        write_file(argv[4], out.data(), out.size() * 4);
    } else if (op == "kv_store") {
        // TYPE: f16, q8_0 or q4_0. IN: n_tokens x width f32; ARGS: pos_file width capacity;
        // OUT: capacity rows of width values of TYPE (unwritten positions 0).
        std::vector<unsigned char> pos = read_file(argv[5]);
        const int width = std::atoi(argv[6]), capacity = std::atoi(argv[7]);
        const size_t row_bytes = type == "f16" ? (size_t)width * 2
                                 : type == "q8_0" ? (size_t)width / 32 * sizeof(block_q8_0)
                                                  : (size_t)width / 32 * sizeof(block_q4_0);
        std::vector<unsigned char> cache((size_t)capacity * row_bytes, 0);
        const float *x = (const float *)in.data();
        const unsigned *p = (const unsigned *)pos.data();
        auto run = [&](auto kernel, auto *typed) {
            launch(ceil_div(width, 256), (unsigned)(pos.size() / 4), 256,
                   [&] { kernel(x, typed, p, width); });
        };
        if (type == "f16") run(kv_store_f16, (__half *)cache.data());
        else if (type == "q8_0") run(kv_store_q8_0, (block_q8_0 *)cache.data());
        else if (type == "q4_0") run(kv_store_q4_0, (block_q4_0 *)cache.data());
        else { std::fprintf(stderr, "bad type\n"); return 2; }
        write_file(argv[4], cache.data(), cache.size());
    } else if (op == "kv_rotate") {
        // IN: f32 values (whole chunks); ARGS: n (chunk size); OUT: each chunk rotated.
        const int n = std::atoi(argv[5]);
        std::vector<float> x(in.size() / 4);
        std::memcpy(x.data(), in.data(), in.size());
        launch((unsigned)(x.size() / n), 1, (unsigned)n,
               [&] { kv_rotate_f32(x.data(), x.data(), n); });
        write_file(argv[4], x.data(), x.size() * 4);
    } else if (op == "simple") {
        // TYPE: add (IN: dst then src, n f32 each), scale (IN: n f32; ARGS: factor), softcap
        // (IN: n f32; ARGS: cap).
        const long long n = type == "add" ? (long long)(in.size() / 8) : (long long)(in.size() / 4);
        std::vector<float> x(n);
        std::memcpy(x.data(), in.data(), n * 4);
        if (type == "add") {
            const float *src = (const float *)in.data() + n;
            launch(ceil_div(n, 256), 1, 256, [&] { add_f32(x.data(), src, n); });
        } else if (type == "scale") {
            const float factor = (float)std::atof(argv[5]);
            launch(ceil_div(n, 256), 1, 256, [&] { scale_f32(x.data(), factor, n); });
        } else if (type == "softcap") {
            const float cap = (float)std::atof(argv[5]);
            launch(ceil_div(n, 256), 1, 256, [&] { softcap_f32(x.data(), cap, n); });
        } else {
            std::fprintf(stderr, "unknown simple op %s\n", type.c_str());
            return 2;
        }
        write_file(argv[4], x.data(), x.size() * 4);
    } else if (op == "add_bias") {
        // IN: n_tokens x width f32; ARGS: bias_file width; OUT: x + bias.
        std::vector<unsigned char> bias = read_file(argv[5]);
        const int width = std::atoi(argv[6]);
        const long long n = (long long)(in.size() / 4);
        std::vector<float> x(n);
        std::memcpy(x.data(), in.data(), in.size());
        launch(ceil_div(n, 256), 1, 256,
               [&] { add_bias_f32(x.data(), (const float *)bias.data(), width, n); });
        write_file(argv[4], x.data(), x.size() * 4);
    } else if (op == "attention") {
        // TYPE: prefill or decode. IN: q; ARGS: k_file v_file pos_file n_heads n_kv_heads
        // head_dim scale window softcap n_splits k_type v_type (f16, q8_0 or q4_0);
        // OUT: n_queries x n_heads x head_dim f32.
        std::vector<unsigned char> k = read_file(argv[5]), v = read_file(argv[6]);
        std::vector<unsigned char> pos = read_file(argv[7]);
        const int n_heads = std::atoi(argv[8]), n_kv = std::atoi(argv[9]);
        const int head_dim = std::atoi(argv[10]);
        const float scale = (float)std::atof(argv[11]);
        const int window = std::atoi(argv[12]);
        const float softcap = (float)std::atof(argv[13]);
        const unsigned n_splits = (unsigned)std::atoi(argv[14]);
        const std::string kv_types = std::string(argv[15]) + "_" + argv[16];
        const int n_queries = (int)(pos.size() / 4);
        std::vector<float> out((size_t)n_queries * n_heads * head_dim, NAN);
        std::vector<float> part((size_t)n_queries * n_heads * n_splits * (head_dim + 2), NAN);
        const float *q = (const float *)in.data();
        const unsigned *p = (const unsigned *)pos.data();
        using Prefill = void (*)(const float *, const void *, const void *, float *, float *,
                                 const unsigned *, int, int, int, int, float, int, float);
        using Decode = void (*)(const float *, KvSeqs, float *, float *, const unsigned *, int,
                                int, int, int, float, int, float);
        const bool prefill = type == "prefill";
#define ATT_PAIR(kname, vname)                                                                    \
    {#kname "_" #vname, {attn_prefill_##kname##_##vname, attn_decode_##kname##_##vname}}
        const std::vector<std::pair<std::string, std::pair<Prefill, Decode>>> kernels = {
            ATT_PAIR(f16, f16),  ATT_PAIR(f16, q8_0),  ATT_PAIR(f16, q4_0),
            ATT_PAIR(q8_0, f16), ATT_PAIR(q8_0, q8_0), ATT_PAIR(q8_0, q4_0),
            ATT_PAIR(q4_0, f16), ATT_PAIR(q4_0, q8_0), ATT_PAIR(q4_0, q4_0),
        };
#undef ATT_PAIR
        const std::pair<Prefill, Decode> *pair = nullptr;
        for (const auto &[name, kernel] : kernels) {
            if (name == kv_types) {
                pair = &kernel;
            }
        }
        if (!pair) {
            std::fprintf(stderr, "bad cache types %s\n", kv_types.c_str());
            return 2;
        }
        if (prefill) {
            launch(dim3_t{(unsigned)n_heads, ceil_div(n_queries, 8), n_splits}, dim3_t{256, 1, 1}, [&] {
                pair->first(q, k.data(), v.data(), out.data(), part.data(), p, n_queries, n_heads,
                            n_kv, head_dim, scale, window, softcap);
            });
        } else {
            // One sequence holding every query; a block per KV head and group of 8 query heads.
            KvSeqs seqs{};
            seqs.k[0] = (unsigned long long)k.data();
            seqs.v[0] = (unsigned long long)v.data();
            seqs.first[0] = 0;
            seqs.first[1] = n_queries;
            seqs.n = 1;
            const unsigned groups = (unsigned)(n_kv * ((n_heads / n_kv + 7) / 8));
            launch(dim3_t{groups, (unsigned)n_queries, n_splits}, dim3_t{128, 1, 1}, [&] {
                pair->second(q, seqs, out.data(), part.data(), p, n_queries, n_heads, n_kv,
                             head_dim, scale, window, softcap);
            });
        }
        if (n_splits > 1) {
            launch(dim3_t{(unsigned)n_heads, (unsigned)n_queries, 1}, dim3_t{128, 1, 1}, [&] {
                attn_combine_f32(part.data(), out.data(), n_heads, head_dim, (int)n_splits);
            });
        }
        write_file(argv[4], out.data(), out.size() * 4);
    } else {
        std::fprintf(stderr, "bad op\n");
        return 2;
    }
    return 0;
}
