// A fake libcuda.so.1 for tests on machines without a GPU: the part of the CUDA driver API that
// cudarc calls for llmd's CUDA backend, with "device" memory in host memory and every kernel of
// kernels/cuda/*.cu run by the host emulation (../host_check/emu.h), each GPU thread a fiber.
// Loaded instead of the real driver (LD_LIBRARY_PATH), it lets the Rust CUDA backend and the
// daemon's GPU code paths (argument marshalling, launch geometry, buffer offsets, streams,
// memory accounting) run end to end in CI and be compared with the CPU backend.
//
// It is strict (strict.h): streams run asynchronously on threads of their own, memory is
// poisoned, contexts, peer access, alignment, shared memory and the PTX version are checked as a
// GPU and its driver check them, so host code that only works on a forgiving driver fails here.
//
// What it is not: a GPU. Memory is host memory, one operation runs at a time, and the PTX or
// CUBIN handed to cuModuleLoadData is parsed but not compiled: kernels are found by name in the
// table below. Numerical agreement here says the host code drives the kernels as they are
// written; it says nothing about the GPU's speed or its own rounding.
#include "../host_check/emu.h"

#include <mutex>
#include <unordered_map>

// ---------------------------------------------------------------------------------------------
// Fibers: the threads of one block, switched at barriers. A switch saves the callee-saved
// registers on the old stack and loads them from the new one (x86-64 System V), a few
// nanoseconds, so a block of 256 threads meeting at a dozen barriers costs microseconds, not the
// milliseconds OS threads or ucontext (a signal-mask syscall per switch) would.

#if !defined(__x86_64__)
#error "the fake CUDA driver's fibers are written for x86-64"
#endif

extern "C" void emu_fiber_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl emu_fiber_switch
    .type emu_fiber_switch, @function
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_fiber_switch, .-emu_fiber_switch
)");

namespace {

constexpr size_t kFiberStack = 256 * 1024;

enum class Wait { None, Warp, Block, Done };

struct Fiber {
    void *sp = nullptr;
    std::unique_ptr<char[]> stack;
    Wait wait = Wait::None;
};

struct Scheduler {
    void *main_sp = nullptr;
    std::vector<Fiber> fibers;
    std::vector<unsigned long long> slots;
    const std::function<void()> *body = nullptr;
    int running = -1;
    int n_threads = 0;
};

thread_local Scheduler *sched;

void set_thread(int t) {
    sched->running = t;
    emu_thread_linear = t;
    threadIdx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}

[[noreturn]] void fiber_entry() {
    (*sched->body)();
    Fiber &f = sched->fibers[sched->running];
    f.wait = Wait::Done;
    emu_fiber_switch(&f.sp, sched->main_sp);
    std::abort(); // a finished fiber is never resumed
}

// A fresh stack whose first switch "returns" into fiber_entry with the stack aligned as after a
// call (rsp = 8 mod 16), under six zeroed callee-saved register slots.
void *fresh_stack(char *stack) {
    auto top = (reinterpret_cast<uintptr_t>(stack) + kFiberStack) & ~uintptr_t{15};
    auto *sp = reinterpret_cast<void **>(top);
    *--sp = nullptr;                                  // fiber_entry's return address (unused)
    *--sp = reinterpret_cast<void *>(&fiber_entry);   // where the switch's `ret` goes
    for (int i = 0; i < 6; ++i) {
        *--sp = nullptr;                              // rbp rbx r12 r13 r14 r15
    }
    return sp;
}

void yield(Wait why) {
    Fiber &f = sched->fibers[sched->running];
    f.wait = why;
    emu_fiber_switch(&f.sp, sched->main_sp);
}

// Runs one block: every fiber until it waits or ends; a barrier opens when every live thread of
// its scope (warp or block) waits at it. Exited threads drop out, as on the GPU.
void run_block(Scheduler &s) {
    for (int t = 0; t < s.n_threads; ++t) {
        Fiber &f = s.fibers[t];
        f.wait = Wait::None;
        f.sp = fresh_stack(f.stack.get());
    }
    for (;;) {
        bool progressed = false;
        for (int t = 0; t < s.n_threads; ++t) {
            if (s.fibers[t].wait == Wait::None) {
                set_thread(t);
                emu_fiber_switch(&s.main_sp, s.fibers[t].sp);
                progressed = true;
            }
        }
        bool all_done = true;
        bool released = false;
        // Warps: release a warp whose live threads all wait at the warp barrier.
        for (int w = 0; w < s.n_threads; w += 32) {
            const int end = std::min(w + 32, s.n_threads);
            int live = 0, waiting = 0;
            for (int t = w; t < end; ++t) {
                live += s.fibers[t].wait != Wait::Done;
                waiting += s.fibers[t].wait == Wait::Warp;
            }
            if (live > 0 && waiting == live) {
                for (int t = w; t < end; ++t) {
                    s.fibers[t].wait = Wait::None;
                }
                released = true;
            }
        }
        int live = 0, at_block = 0;
        for (const Fiber &f : s.fibers) {
            live += f.wait != Wait::Done;
            at_block += f.wait == Wait::Block;
            all_done &= f.wait == Wait::Done;
        }
        if (all_done) {
            return;
        }
        if (live > 0 && at_block == live) {
            for (Fiber &f : s.fibers) {
                if (f.wait == Wait::Block) {
                    f.wait = Wait::None;
                }
            }
            released = true;
        }
        if (!progressed && !released) {
            std::fprintf(stderr, "fake libcuda: deadlock in a kernel (threads wait at barriers "
                                 "that cannot open)\n");
            std::abort();
        }
    }
}

} // namespace

static void emu_warp_barrier() { yield(Wait::Warp); }
static void emu_block_barrier() { yield(Wait::Block); }

// Runs a grid, block after block, on fibers.
static void fiber_launch(dim3_t grid, dim3_t block, const std::function<void()> &body) {
    static Scheduler s; // launches are serialised by strict::exec_lock()
    gridDim = grid;
    blockDim = block;
    const int n = (int)(block.x * block.y * block.z);
    if ((int)s.fibers.size() < n) {
        s.fibers.resize(n);
        for (Fiber &f : s.fibers) {
            if (!f.stack) {
                f.stack.reset(new char[kFiberStack]);
            }
        }
    }
    s.slots.assign((size_t)n * EMU_SLOT_WORDS, 0);
    s.n_threads = n;
    s.body = &body;
    sched = &s;
    emu_slots = s.slots.data();
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                run_block(s);
            }
        }
    }
    sched = nullptr;
}

// A fault of the running kernel (a misaligned vector access), reported when the launch ends.
static thread_local int launch_fault = 0;
static thread_local std::string launch_fault_what;

static void emu_misaligned(const void *p, unsigned align, const char *what) {
    if (launch_fault == 0) {
        char text[160];
        std::snprintf(text, sizeof text, "%s at %p, which is not %u-byte aligned", what, p, align);
        launch_fault = 716; // CUDA_ERROR_MISALIGNED_ADDRESS
        launch_fault_what = text;
    }
}

#include "strict.h"
#include "capture.h"

// ---------------------------------------------------------------------------------------------
// Kernels by name: each entry copies cuLaunchKernel's parameters by the kernel's own parameter
// types (the launch runs later, on the stream's thread), so a host-side argument of the wrong
// type or order shows up as wrong results, and lists the pointer arguments for the address check
// (those inside a KvSeqs table included).

struct Launch {
    // Runs the kernel with the captured arguments.
    std::function<void()> run;
    // Its pointer arguments (device addresses to check).
    std::vector<unsigned long long> pointers;
};
using Capture = std::function<Launch(void **)>;

template <typename... A, size_t... I>
static Launch capture(void (*k)(A...), void **params, std::index_sequence<I...>) {
    auto args = std::make_shared<std::tuple<std::decay_t<A>...>>(
        *static_cast<std::remove_reference_t<A> *>(params[I])...);
    Launch l;
    (
        [&] {
            if constexpr (std::is_pointer_v<std::decay_t<A>>) {
                l.pointers.push_back((unsigned long long)std::get<I>(*args));
            } else if constexpr (std::is_same_v<std::decay_t<A>, KvSeqs>) {
                // The caches a batch's kernels reach through their by-value table.
                const KvSeqs &seqs = std::get<I>(*args);
                for (int s = 0; s < seqs.n && s < KV_MAX_SEQS; ++s) {
                    l.pointers.push_back(seqs.k[s]);
                    l.pointers.push_back(seqs.v[s]);
                }
            }
        }(),
        ...);
    l.run = [k, args] { std::apply(k, *args); };
    return l;
}
template <typename... A> static Capture entry(void (*k)(A...)) {
    return [k](void **params) { return capture(k, params, std::index_sequence_for<A...>{}); };
}

static const std::unordered_map<std::string, Capture> &kernels() {
    static const std::unordered_map<std::string, Capture> table = {
#define K(name) {#name, entry(name)}
// Every kernel of a type in types.cuh's lists.
#define K_QUANT(name, type)                                                                        \
    K(get_rows_##name), K(dequantize_##name##_f32), K(mul_mat_vec_##name##_q8_1),                  \
        K(mul_mat_vec_id_##name##_q8_1), K(mul_mat_vec_id_combine_##name##_q8_1),                  \
        K(mul_mat_q_##name),
#define K_HALF(name, type) K(get_rows_##name), K(dequantize_##name##_f32),
        LLMD_QUANT_TYPES(K_QUANT) LLMD_HALF_TYPES(K_HALF)
        K(attn_prefill_f16_f16), K(attn_prefill_f16_q8_0), K(attn_prefill_f16_q4_0),
        K(attn_prefill_q8_0_f16), K(attn_prefill_q8_0_q8_0), K(attn_prefill_q8_0_q4_0),
        K(attn_prefill_q4_0_f16), K(attn_prefill_q4_0_q8_0), K(attn_prefill_q4_0_q4_0),
        K(attn_decode_f16_f16), K(attn_decode_f16_q8_0), K(attn_decode_f16_q4_0),
        K(attn_decode_q8_0_f16), K(attn_decode_q8_0_q8_0), K(attn_decode_q8_0_q4_0),
        K(attn_decode_q4_0_f16), K(attn_decode_q4_0_q8_0), K(attn_decode_q4_0_q4_0),
        K(attn_combine_f32),
        K(geglu_f32), K(swiglu_f32), K(add_f32), K(scale_f32), K(add_bias_f32),
        K(softcap_f32),
        K(get_rows_f32),
        K(kv_store_f16), K(kv_store_q8_0), K(kv_store_q4_0), K(kv_rotate_f32),
        K(mul_mat_vec_f16), K(mul_mat_vec_f32), K(mul_mat_vec_bf16),
        K(rms_norm_f32), K(rms_norm_q8_1), K(glu_q8_1), K(rope_store_f16),
        K(moe_route_f32), K(moe_router_route_f32), K(moe_combine_f32),
        K(quantize_q8_1), K(rope_f32),
        K(quantize_mmq), K(convert_f32_to_f16_rows), K(convert_f32_to_bf16),
        K(gemm_f32_nt), K(gemm_f16_tc), K(gemm_bf16_tc),
        K(select_chunks_f32), K(select_merge_f32),
#undef K_QUANT
#undef K_HALF
#undef K
    };
    return table;
}

// ---------------------------------------------------------------------------------------------
// The driver API.

namespace {

using namespace strict;

struct Function {
    std::string name;
    const Capture *capture;
    Context *ctx;
    size_t shared;
};

thread_local Context *current = nullptr;

int device_count() { return config().devices; }

// The current context's sticky fault, or INVALID_CONTEXT when none is current.
CUresult check_current() {
    if (!current) {
        counters().refused_context++;
        return kInvalidContext;
    }
    return current->sticky.load();
}

// Whether `s` may be used now: its context current and not faulted.
CUresult check_stream(Stream *s) {
    if (!s) {
        // The legacy default stream: the current context's.
        return check_current();
    }
    if (s->ctx != current) {
        counters().refused_context++;
        std::fprintf(stderr,
                     "fake libcuda: a stream of device %d used while %s is current (refused: "
                     "CUDA_ERROR_INVALID_CONTEXT)\n",
                     s->ctx->device,
                     current ? ("device " + std::to_string(current->device) + "'s context").c_str()
                             : "no context");
        return kInvalidContext;
    }
    return s->ctx->sticky.load();
}

CUresult allocate(unsigned long long *ptr, size_t bytes, bool pooled) {
    Driver &d = driver();
    const int dev = current->device;
    if (d.used[dev] + bytes > config().memory) {
        return kOutOfMemory;
    }
    // Aligned like cuMemAlloc (256 bytes), and poisoned: 0xFF bytes are NaN in f32, f16 and bf16.
    const size_t size = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    void *p = std::aligned_alloc(256, size);
    if (!p) {
        return kOutOfMemory;
    }
    std::memset(p, 0xFF, size);
    *ptr = (unsigned long long)p;
    d.allocations[*ptr] = Allocation{bytes, dev, pooled, false};
    d.used[dev] += bytes;
    counters().allocations++;
    return kSuccess;
}

// Marks an allocation freed (no later work may use it) and returns it, or null.
Allocation *begin_free(unsigned long long ptr) {
    Driver &d = driver();
    auto it = d.allocations.find(ptr);
    if (it == d.allocations.end() || it->second.freed) {
        return nullptr;
    }
    it->second.freed = true;
    d.used[it->second.device] -= it->second.bytes;
    counters().frees++;
    return &it->second;
}

// Poisons a freed allocation and moves it to quarantine (when its stream reaches the free).
void finish_free(unsigned long long ptr) {
    Driver &d = driver();
    std::lock_guard<std::mutex> guard(d.lock);
    auto it = d.allocations.find(ptr);
    if (it == d.allocations.end()) {
        return;
    }
    std::memset((void *)ptr, 0xFF, std::max<size_t>(it->second.bytes, 1));
    quarantine_push((void *)ptr, it->second.bytes);
    d.allocations.erase(it);
}

// Whether a peer copy on `ctx`'s stream touching `other`'s memory at [p, p + n) is direct.
bool peer_direct(const Context &ctx, unsigned long long p, size_t n) {
    Allocation *a = find_allocation(p, n, nullptr);
    return a && accessible(ctx, *a);
}

// Counts and performs a device-to-device copy between devices (or within one).
void count_copy(const Context &ctx, unsigned long long dst, unsigned long long src, size_t n) {
    Allocation *ad = find_allocation(dst, n, nullptr);
    Allocation *as = find_allocation(src, n, nullptr);
    if (!ad || !as || ad->device == as->device) {
        return;
    }
    const unsigned long long other = ad->device == ctx.device ? src : dst;
    if (peer_direct(ctx, other, n)) {
        counters().peer_direct++;
        counters().peer_direct_bytes += (long long)n;
    } else {
        counters().peer_staged++;
        counters().peer_staged_bytes += (long long)n;
    }
}

// Runs `op` on stream `s` (the current context's legacy stream, which runs at once, when null).
void enqueue(Stream *s, Op op) {
    if (!s) {
        std::lock_guard<std::mutex> g(exec_lock());
        op();
        return;
    }
    s->push([op = std::move(op)] {
        std::lock_guard<std::mutex> g(exec_lock());
        op();
    });
}

void host_sync() {
    counters().host_syncs++;
    write_stats();
}

// Faults `ctx` (sticky) with `code`, saying why.
void fault(Context *ctx, int code, const std::string &what) {
    counters().faults++;
    int expected = 0;
    ctx->sticky.compare_exchange_strong(expected, code);
    std::fprintf(stderr, "fake libcuda: device %d faulted (%d): %s\n", ctx->device, code, what.c_str());
}

// ---------------------------------------------------------------------------------------------
// The rules of stream capture (capture.h).

// Invalidates capture `c` (capture_lock() held), saying why.
void invalidate(CaptureSeq &c, const std::string &why) {
    if (!c.invalidated) {
        c.invalidated = true;
        counters().captures_invalidated++;
        std::fprintf(stderr, "fake libcuda: stream capture %llu invalidated: %s\n", c.id,
                     why.c_str());
    }
}

// Ends the capture open on `s` (capture_lock() held) and returns it.
std::shared_ptr<CaptureSeq> close_capture(Stream *s) {
    std::shared_ptr<CaptureSeq> c = std::move(s->capture);
    c->open = false;
    auto &open = open_captures();
    open.erase(std::remove(open.begin(), open.end(), c), open.end());
    return c;
}

// What a call queueing work on stream `s` must do about a capture there: `*record` is set to
// the open capture when the work is to be recorded instead of run (null: run as usual); an
// error when the capture refuses it (`capturable`: whether such work can be recorded at all;
// `what`: the work, for the message).
CUresult capture_gate(Stream *s, bool capturable, const std::string &what,
                      std::shared_ptr<CaptureSeq> *record) {
    record->reset();
    if (!s) {
        return kSuccess;
    }
    std::lock_guard<std::mutex> g(capture_lock());
    if (!s->capture) {
        return kSuccess;
    }
    if (s->capture->invalidated) {
        return kCaptureInvalidated;
    }
    if (!capturable) {
        invalidate(*s->capture, what + " on the capturing stream");
        return kCaptureUnsupported;
    }
    *record = s->capture;
    return kSuccess;
}

// Appends a node to capture `c`.
void record_node(const std::shared_ptr<CaptureSeq> &c, bool kernel, std::string what,
                 std::function<CUresult(Op &)> prepare) {
    auto node = std::make_shared<Node>();
    node->kernel = kernel;
    node->what = std::move(what);
    node->prepare = std::move(prepare);
    std::lock_guard<std::mutex> g(capture_lock());
    c->nodes.push_back(std::move(node));
}

// A potentially unsafe call (`what`: a synchronous copy, an allocation) made now: refused,
// invalidating the captures it conflicts with (every one in global mode, this thread's in
// thread-local mode).
CUresult unsafe_gate(const std::string &what) {
    std::lock_guard<std::mutex> g(capture_lock());
    CUresult r = kSuccess;
    for (const auto &c : open_captures()) {
        if (c->mode == kCaptureGlobal ||
            (c->mode == kCaptureThreadLocal && c->thread == std::this_thread::get_id())) {
            invalidate(*c, what + " during the capture");
            r = kCaptureUnsupported;
        }
    }
    return r;
}

// Synchronising or querying stream `s` (`what`): refused while it captures.
CUresult sync_gate(Stream *s, const char *what) {
    std::lock_guard<std::mutex> g(capture_lock());
    if (s && s->capture) {
        invalidate(*s->capture, std::string(what) + " of the capturing stream");
        return kCaptureUnsupported;
    }
    return kSuccess;
}

// Synchronising context `ctx`: refused while any of its streams captures.
CUresult ctx_sync_gate(Context *ctx) {
    std::lock_guard<std::mutex> g(capture_lock());
    CUresult r = kSuccess;
    for (const auto &c : open_captures()) {
        if (c->ctx == ctx) {
            invalidate(*c, "cuCtxSynchronize during the capture");
            r = kCaptureUnsupported;
        }
    }
    return r;
}

// Querying, synchronising or waiting on event `e` outside its capture: refused while its last
// record was captured (invalidating that capture if it is still open).
CUresult captured_event_gate(Event *e, const char *what) {
    std::lock_guard<std::mutex> g(capture_lock());
    if (!e->captured) {
        return kSuccess;
    }
    if (e->captured->open) {
        invalidate(*e->captured, std::string(what) + " of an event recorded in the capture");
    }
    return kCapturedEvent;
}

// The checks of a kernel launch at the time its work is queued (each pointer argument live and
// accessible to the device, an injected fault), and that work.
Op kernel_op(Context *ctx, const std::string &name, const Launch &launch, dim3_t grid,
             dim3_t block) {
    if (name.rfind("mul_mat_vec_id_", 0) == 0) {
        counters().routed_launches++;
    }
    // Every pointer argument must point into live memory this device may access; the kernel
    // runs later, so a bad one faults the context as the GPU's MMU would.
    std::string bad;
    bool injected = false;
    {
        std::lock_guard<std::mutex> guard(driver().lock);
        for (unsigned long long p : launch.pointers) {
            if (p == 0) {
                continue; // optional buffers are passed as null
            }
            Allocation *a = find_allocation(p, 1, nullptr);
            if (!a || a->freed || !accessible(*ctx, *a)) {
                char text[200];
                std::snprintf(text, sizeof text, "kernel %s: argument 0x%llx is %s", name.c_str(),
                              p, !a ? "not device memory" : a->freed ? "freed memory"
                                                        : "another GPU's memory without peer access");
                bad = text;
                break;
            }
        }
        if (!config().fault_kernel.empty() && config().fault_kernel == name) {
            injected = ++driver().launches_of[name] == config().fault_nth;
        }
    }
    return [ctx, grid, block, launch, bad, injected, name] {
        if (ctx->sticky.load()) {
            return; // a faulted context runs nothing more
        }
        if (!bad.empty()) {
            fault(ctx, kIllegalAddress, bad);
            return;
        }
        if (injected) {
            fault(ctx, kIllegalAddress, "kernel " + name + ": injected fault (LLMD_FAKE_CUDA_FAULT)");
            return;
        }
        launch_fault = 0;
        fiber_launch(grid, block, launch.run);
        if (launch_fault) {
            fault(ctx, launch_fault, "kernel " + name + ": " + launch_fault_what);
        }
    };
}

} // namespace

#define API extern "C" __attribute__((visibility("default")))
#define GUARD std::lock_guard<std::mutex> guard(driver().lock)

API CUresult cuInit(unsigned) {
    GUARD;
    Driver &d = driver();
    if (!d.initialised) {
        d.initialised = true;
        for (int i = 0; i < device_count(); ++i) {
            auto c = std::make_unique<Context>();
            c->device = i;
            d.contexts.push_back(std::move(c));
            d.pools.push_back(Pool{i, {}});
        }
        d.used.assign(device_count(), 0);
    }
    return kSuccess;
}
API CUresult cuDriverGetVersion(int *v) {
    *v = config().driver_version;
    return kSuccess;
}
API CUresult cuDeviceGetCount(int *n) {
    GUARD;
    if (!driver().initialised) {
        return kNotInitialized;
    }
    *n = device_count();
    return kSuccess;
}
API CUresult cuDeviceGet(int *dev, int ordinal) {
    if (ordinal < 0 || ordinal >= device_count()) {
        return kInvalidDevice;
    }
    *dev = ordinal;
    return kSuccess;
}
API CUresult cuDeviceGetName(char *name, int len, int dev) {
    std::snprintf(name, (size_t)len, "llmd fake CUDA device %d (host emulation)", dev);
    return kSuccess;
}
API CUresult cuDeviceTotalMem_v2(size_t *bytes, int) {
    *bytes = config().memory;
    return kSuccess;
}
// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (NVML's form) of GPU `dev`: configured, or made up.
static std::string uuid_text(int dev) {
    const auto &u = config().uuids;
    if (dev < (int)u.size() && !u[dev].empty()) {
        return u[dev];
    }
    char text[64];
    std::snprintf(text, sizeof text, "GPU-fa4ec0da-0000-4000-8000-%012x", dev);
    return text;
}
API CUresult cuDeviceGetUuid(unsigned char *uuid, int dev) {
    if (dev < 0 || dev >= device_count()) {
        return kInvalidDevice;
    }
    std::string hex;
    for (char c : uuid_text(dev).substr(4)) {
        if (c != '-') {
            hex += c;
        }
    }
    for (int i = 0; i < 16; ++i) {
        uuid[i] = (unsigned char)std::strtoul(hex.substr(2 * i, 2).c_str(), nullptr, 16);
    }
    return kSuccess;
}
API CUresult cuDeviceGetUuid_v2(unsigned char *uuid, int dev) { return cuDeviceGetUuid(uuid, dev); }
// "0000DDDD:BB:DD.0" of GPU `dev`: configured, or bus dev + 1.
static std::string pci_text(int dev) {
    const auto &p = config().pci;
    if (dev < (int)p.size() && !p[dev].empty()) {
        return p[dev];
    }
    char text[32];
    std::snprintf(text, sizeof text, "00000000:%02x:00.0", dev + 1);
    return text;
}
API CUresult cuDeviceGetPCIBusId(char *out, int len, int dev) {
    if (dev < 0 || dev >= device_count()) {
        return kInvalidDevice;
    }
    std::snprintf(out, (size_t)len, "%s", pci_text(dev).c_str());
    return kSuccess;
}
API CUresult cuDeviceGetAttribute(int *value, int attribute, int dev) {
    const std::string pci = pci_text(dev);
    switch (attribute) {
    case 75: *value = config().cc / 10; break;  // compute capability major
    case 76: *value = config().cc % 10; break;  // minor
    case 115: *value = 1; break;                // memory pools supported
    case 41: *value = 1; break;                 // unified addressing
    case 33: *value = (int)std::strtol(pci.substr(9, 2).c_str(), nullptr, 16); break; // bus
    case 34: *value = (int)std::strtol(pci.substr(12, 2).c_str(), nullptr, 16); break; // device
    case 50: *value = (int)std::strtol(pci.substr(0, 8).c_str(), nullptr, 16); break; // domain
    case 8: *value = 48 * 1024; break;          // max shared memory per block
    case 16: *value = config().sms; break;      // multiprocessors
    default: *value = 0; break;
    }
    return kSuccess;
}
API CUresult cuDeviceCanAccessPeer(int *can, int dev, int peer) {
    if (dev < 0 || dev >= device_count() || peer < 0 || peer >= device_count()) {
        return kInvalidDevice;
    }
    *can = config().p2p && dev != peer;
    return kSuccess;
}
API CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) {
    GUARD;
    if (dev < 0 || dev >= (int)driver().contexts.size()) {
        return kInvalidDevice;
    }
    *ctx = driver().contexts[dev].get();
    return kSuccess;
}
API CUresult cuDevicePrimaryCtxRelease_v2(int) { return kSuccess; }
API CUresult cuCtxSetCurrent(void *ctx) {
    current = static_cast<Context *>(ctx);
    return kSuccess;
}
API CUresult cuCtxGetCurrent(void **ctx) {
    *ctx = current;
    return kSuccess;
}
API CUresult cuCtxGetDevice(int *dev) {
    if (!current) {
        return kInvalidContext;
    }
    *dev = current->device;
    return kSuccess;
}
API CUresult cuCtxSynchronize() {
    if (CUresult r = check_current()) {
        return r;
    }
    if (CUresult r = ctx_sync_gate(current)) {
        return r;
    }
    std::vector<Stream *> mine;
    {
        GUARD;
        for (Stream *s : driver().streams) {
            if (s->ctx == current) {
                mine.push_back(s);
            }
        }
    }
    for (Stream *s : mine) {
        s->drain();
    }
    host_sync();
    return current->sticky.load();
}
API CUresult cuCtxEnablePeerAccess(void *peer_ctx, unsigned) {
    if (CUresult r = check_current()) {
        return r;
    }
    auto *peer = static_cast<Context *>(peer_ctx);
    if (!peer || peer == current) {
        return kInvalidDevice;
    }
    if (!config().p2p) {
        return kPeerAccessUnsupported;
    }
    GUARD;
    if (!current->peers.insert(peer->device).second) {
        return kPeerAccessAlreadyEnabled;
    }
    return kSuccess;
}
API CUresult cuCtxDisablePeerAccess(void *peer_ctx) {
    if (CUresult r = check_current()) {
        return r;
    }
    auto *peer = static_cast<Context *>(peer_ctx);
    GUARD;
    if (!peer || !current->peers.erase(peer->device)) {
        return kPeerAccessNotEnabled;
    }
    return kSuccess;
}
API CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    if (CUresult r = check_current()) {
        return r;
    }
    GUARD;
    *total = config().memory;
    *free_bytes = config().memory - driver().used[current->device];
    return kSuccess;
}

// Memory pools: one default pool per device; its handle is the Pool's address.
API CUresult cuDeviceGetDefaultMemPool(void **pool, int dev) {
    GUARD;
    if (dev < 0 || dev >= (int)driver().pools.size()) {
        return kInvalidDevice;
    }
    *pool = &driver().pools[dev];
    return kSuccess;
}
// CUmemAccessDesc: { CUmemLocation { int type; int id; }; int flags; } (type 1: a device;
// flags 0: none, 1: read, 3: read and write).
struct AccessDesc {
    int type, id, flags;
};
API CUresult cuMemPoolSetAccess(void *pool_handle, const AccessDesc *desc, size_t count) {
    GUARD;
    auto *pool = static_cast<Pool *>(pool_handle);
    for (size_t i = 0; i < count; ++i) {
        if (desc[i].type != 1 || desc[i].id < 0 || desc[i].id >= device_count()) {
            return kInvalidValue;
        }
        if (desc[i].id == pool->device) {
            continue; // the owner always has access
        }
        if (desc[i].flags != 0 && !config().p2p) {
            return kPeerAccessUnsupported;
        }
        if (desc[i].flags == 0) {
            pool->access.erase(desc[i].id);
        } else {
            pool->access.insert(desc[i].id);
        }
    }
    return kSuccess;
}
API CUresult cuMemPoolGetAccess(int *flags, void *pool_handle, const int *location) {
    GUARD;
    auto *pool = static_cast<Pool *>(pool_handle);
    *flags = location[1] == pool->device || pool->access.count(location[1]) ? 3 : 0;
    return kSuccess;
}

API CUresult cuStreamCreate(void **stream, unsigned) {
    if (CUresult r = check_current()) {
        return r;
    }
    auto *s = new Stream(current);
    GUARD;
    driver().streams.push_back(s);
    *stream = s;
    return kSuccess;
}
API CUresult cuStreamCreateWithPriority(void **stream, unsigned flags, int) {
    return cuStreamCreate(stream, flags);
}
API CUresult cuStreamDestroy_v2(void *stream) {
    auto *s = static_cast<Stream *>(stream);
    if (CUresult r = check_stream(s)) {
        // A faulted context still lets its streams go.
        if (r != kInvalidContext) {
            r = kSuccess;
        } else {
            return r;
        }
    }
    {
        std::lock_guard<std::mutex> g(capture_lock());
        if (s->capture) {
            invalidate(*s->capture, "its stream was destroyed");
            close_capture(s);
        }
    }
    {
        GUARD;
        auto &v = driver().streams;
        v.erase(std::remove(v.begin(), v.end(), s), v.end());
    }
    s->stop(); // runs what is queued (as the driver does), then ends the thread
    delete s;
    return kSuccess;
}
API CUresult cuStreamSynchronize(void *stream) {
    auto *s = static_cast<Stream *>(stream);
    if (CUresult r = s ? sync_gate(s, "cuStreamSynchronize") : unsafe_gate("cuStreamSynchronize of the legacy stream")) {
        return r;
    }
    if (s) {
        // Waiting is allowed from any context, but the stream's own fault is reported.
        s->drain();
        host_sync();
        return s->ctx->sticky.load();
    }
    host_sync();
    return check_current();
}
API CUresult cuStreamQuery(void *stream) {
    auto *s = static_cast<Stream *>(stream);
    if (!s) {
        return kSuccess;
    }
    if (CUresult r = sync_gate(s, "cuStreamQuery")) {
        return r;
    }
    const long long seq = s->kick();
    if (s->ctx->sticky.load()) {
        return s->ctx->sticky.load();
    }
    return s->done.load() >= seq ? kSuccess : kNotReady;
}

API CUresult cuEventCreate(void **event, unsigned) {
    if (CUresult r = check_current()) {
        return r;
    }
    auto *e = new Event;
    e->ctx = current;
    *event = e;
    return kSuccess;
}
API CUresult cuEventDestroy_v2(void *event) {
    // Queued records and waits hold the event's state, not the handle.
    delete static_cast<Event *>(event);
    return kSuccess;
}
API CUresult cuEventRecord(void *event, void *stream) {
    auto *e = static_cast<Event *>(event);
    auto *s = static_cast<Stream *>(stream);
    if (CUresult r = check_stream(s)) {
        return r;
    }
    if (e->ctx != current) {
        counters().refused_context++;
        std::fprintf(stderr, "fake libcuda: an event of device %d recorded in another context\n",
                     e->ctx->device);
        return kInvalidContext;
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(s, true, "cuEventRecord", &cap)) {
        return r;
    }
    {
        // A record inside a capture marks a point of the capture, not of the stream's work.
        std::lock_guard<std::mutex> g(capture_lock());
        e->captured = cap;
    }
    if (cap) {
        return kSuccess;
    }
    if (!s) {
        e->stream = nullptr;
        e->state->completed.store(++e->recorded);
        return kSuccess;
    }
    const long long gen = ++e->recorded;
    e->stream = s;
    s->push([state = e->state, gen] { state->completed.store(gen); });
    return kSuccess;
}
API CUresult cuEventSynchronize(void *event) {
    auto *e = static_cast<Event *>(event);
    if (CUresult r = captured_event_gate(e, "cuEventSynchronize")) {
        return r;
    }
    wait_event(e->state, e->stream, e->recorded);
    host_sync();
    return e->ctx->sticky.load();
}
API CUresult cuEventQuery(void *event) {
    auto *e = static_cast<Event *>(event);
    if (CUresult r = captured_event_gate(e, "cuEventQuery")) {
        return r;
    }
    if (e->stream) {
        e->stream->kick();
    }
    return e->state->completed.load() >= e->recorded ? kSuccess : kNotReady;
}
API CUresult cuEventElapsedTime(float *ms, void *, void *) {
    *ms = 0.0f;
    return kSuccess;
}
API CUresult cuStreamWaitEvent(void *stream, void *event, unsigned) {
    auto *s = static_cast<Stream *>(stream);
    auto *e = static_cast<Event *>(event);
    if (CUresult r = check_stream(s)) {
        return r;
    }
    {
        std::lock_guard<std::mutex> g(capture_lock());
        const std::shared_ptr<CaptureSeq> cap = s ? s->capture : nullptr;
        if (cap) {
            if (cap->invalidated) {
                return kCaptureInvalidated;
            }
            if (e->captured == cap) {
                return kSuccess; // a point earlier in this same stream's capture: already ordered
            }
            if (e->captured) {
                invalidate(*cap, "a wait on an event of another capture (not modelled)");
                return kCaptureUnsupported;
            }
            invalidate(*cap, "a wait on an event recorded outside the capture");
            return kCaptureIsolation;
        }
        if (e->captured) {
            if (e->captured->open) {
                // Real CUDA would make the waiting stream join the capture (fork and join):
                // llmd captures one stream, so the fake does not model it.
                invalidate(*e->captured, "another stream waits on an event of the capture "
                                         "(cross-stream capture is not modelled)");
                return kCaptureUnsupported;
            }
            return kCapturedEvent;
        }
    }
    Stream *from = e->stream;
    const long long gen = e->recorded;
    if (!s) {
        wait_event(e->state, from, gen);
        return kSuccess;
    }
    // Not through enqueue: the wait must not hold the execution lock the awaited work needs.
    s->push([state = e->state, from, gen] { wait_event(state, from, gen); });
    return kSuccess;
}

API CUresult cuMemAlloc_v2(unsigned long long *ptr, size_t bytes) {
    if (CUresult r = check_current()) {
        return r;
    }
    if (CUresult r = unsafe_gate("cuMemAlloc")) {
        return r;
    }
    GUARD;
    return allocate(ptr, bytes, false);
}
API CUresult cuMemAllocAsync(unsigned long long *ptr, size_t bytes, void *stream) {
    if (CUresult r = check_stream(static_cast<Stream *>(stream))) {
        return r;
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(static_cast<Stream *>(stream), false,
                                  "a stream-ordered allocation (memory nodes are not modelled)",
                                  &cap)) {
        return r;
    }
    GUARD;
    return allocate(ptr, bytes, true);
}
API CUresult cuMemFree_v2(unsigned long long ptr) {
    if (CUresult r = check_current()) {
        return r;
    }
    if (CUresult r = unsafe_gate("cuMemFree")) {
        return r;
    }
    {
        GUARD;
        Allocation *a = begin_free(ptr);
        if (!a) {
            return kInvalidValue;
        }
    }
    finish_free(ptr);
    return kSuccess;
}
API CUresult cuMemFreeAsync(unsigned long long ptr, void *stream) {
    auto *s = static_cast<Stream *>(stream);
    if (CUresult r = check_stream(s)) {
        return r;
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(s, false,
                                  "a stream-ordered free (memory nodes are not modelled)", &cap)) {
        return r;
    }
    {
        GUARD;
        Allocation *a = begin_free(ptr);
        if (!a) {
            return kInvalidValue;
        }
        if (a->device != current->device) {
            std::fprintf(stderr, "fake libcuda: memory of device %d freed on a stream of device %d\n",
                         a->device, current->device);
            return kInvalidValue;
        }
    }
    enqueue(s, [ptr] { finish_free(ptr); });
    return kSuccess;
}
API CUresult cuMemHostAlloc(void **ptr, size_t bytes, unsigned flags) {
    if (CUresult r = check_current()) {
        return r;
    }
    if (CUresult r = unsafe_gate("cuMemHostAlloc")) {
        return r;
    }
    *ptr = std::calloc(1, std::max<size_t>(bytes, 1));
    if (!*ptr) {
        return kOutOfMemory;
    }
    GUARD;
    // CU_MEMHOSTALLOC_PORTABLE (1): page-locked for every context, not only the current one.
    driver().pinned[(unsigned long long)*ptr] =
        Driver::Pinned{std::max<size_t>(bytes, 1), current, (flags & 1u) != 0};
    return kSuccess;
}
API CUresult cuMemFreeHost(void *ptr) {
    if (CUresult r = unsafe_gate("cuMemFreeHost")) {
        return r;
    }
    {
        GUARD;
        driver().pinned.erase((unsigned long long)ptr);
    }
    std::free(ptr);
    return kSuccess;
}

// Whether [dst, dst + n) (or the source) is device memory this context may write (read): a live
// allocation it can access.
static CUresult check_device_range(unsigned long long p, size_t n, const char *what) {
    GUARD;
    Allocation *a = find_allocation(p, n, nullptr);
    if (!a || a->freed) {
        std::fprintf(stderr, "fake libcuda: %s of %zu bytes at 0x%llx: not live device memory\n",
                     what, n, p);
        return kInvalidValue;
    }
    return kSuccess;
}

API CUresult cuMemsetD8_v2(unsigned long long ptr, unsigned char value, size_t n) {
    if (CUresult r = check_current()) {
        return r;
    }
    if (CUresult r = unsafe_gate("a synchronous memset")) {
        return r;
    }
    if (CUresult r = check_device_range(ptr, n, "memset")) {
        return r;
    }
    std::memset((void *)ptr, value, n);
    return kSuccess;
}
API CUresult cuMemsetD8Async(unsigned long long ptr, unsigned char value, size_t n, void *stream) {
    auto *s = static_cast<Stream *>(stream);
    if (CUresult r = check_stream(s)) {
        return r;
    }
    if (CUresult r = check_device_range(ptr, n, "memset")) {
        return r;
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(s, true, "memset", &cap)) {
        return r;
    }
    if (cap) {
        record_node(cap, false, "memset", [ptr, value, n](Op &work) {
            if (CUresult r = check_device_range(ptr, n, "memset (graph node)")) {
                return r;
            }
            work = [ptr, value, n] { std::memset((void *)ptr, value, n); };
            return kSuccess;
        });
        return kSuccess;
    }
    enqueue(s, [ptr, value, n] { std::memset((void *)ptr, value, n); });
    return kSuccess;
}

// FNV-1a of n bytes at p: the fingerprint of a page-locked source when its copy is queued.
static unsigned long long fingerprint(const void *p, size_t n) {
    unsigned long long h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
    }
    return h;
}

// The work of a copy from page-locked memory queued now (eagerly, or by a graph launch): it reads
// the source when the stream gets there, as DMA does, and the host must not write the source
// until then. The source's fingerprint now is compared when the copy runs: a difference is a
// host write racing the pending copy, counted in `pinned_races` and reported (a real GPU would
// copy the new bytes without a word).
static Op pinned_htod_work(unsigned long long dst, const void *src, size_t n) {
    counters().h2d_pinned_copies++;
    counters().h2d_pinned_bytes += (long long)n;
    const unsigned long long queued = fingerprint(src, n);
    return [dst, src, n, queued] {
        if (fingerprint(src, n) != queued) {
            counters().pinned_races++;
            std::fprintf(stderr,
                         "fake libcuda: the host rewrote %zu page-locked bytes at %p while their "
                         "copy to the device was pending\n",
                         n, src);
        }
        std::memcpy((void *)dst, src, n);
    };
}

// Host to device: from page-locked memory when the stream gets there, from pageable memory
// staged now (the caller may reuse its buffer as soon as the call returns).
static CUresult htod(unsigned long long dst, const void *src, size_t n, Stream *s, bool sync) {
    if (CUresult r = s ? check_stream(s) : check_current()) {
        return r;
    }
    if (sync || !s) {
        if (CUresult r = unsafe_gate("a synchronous copy to the device")) {
            return r;
        }
    }
    if (CUresult r = check_device_range(dst, n, "copy to the device")) {
        return r;
    }
    bool pinned;
    {
        GUARD;
        pinned = is_pinned(src, n, current);
    }
    if (s && !sync) {
        std::shared_ptr<CaptureSeq> cap;
        if (CUresult r = capture_gate(s, pinned, "a copy from pageable host memory", &cap)) {
            return r;
        }
        if (cap) {
            Context *ctx = current;
            record_node(cap, false, "copy to the device", [ctx, dst, src, n](Op &work) {
                if (CUresult r = check_device_range(dst, n, "copy to the device (graph node)")) {
                    return r;
                }
                {
                    GUARD;
                    if (!is_pinned(src, n, ctx)) {
                        std::fprintf(stderr, "fake libcuda: graph copy from host memory at %p that "
                                             "is no longer page-locked\n", src);
                        return kInvalidValue;
                    }
                }
                counters().h2d_bytes += (long long)n;
                counters().h2d_copies++;
                work = pinned_htod_work(dst, src, n);
                return kSuccess;
            });
            return kSuccess;
        }
    }
    counters().h2d_bytes += (long long)n;
    counters().h2d_copies++;
    if (!pinned && s && !sync) {
        counters().pageable_copies++;
    }
    if (sync || !s) {
        if (s) {
            s->drain();
        }
        std::lock_guard<std::mutex> g(exec_lock());
        std::memcpy((void *)dst, src, n);
        host_sync();
        return kSuccess;
    }
    if (pinned) {
        enqueue(s, pinned_htod_work(dst, src, n));
    } else {
        auto staged = std::make_shared<std::vector<unsigned char>>(
            (const unsigned char *)src, (const unsigned char *)src + n);
        enqueue(s, [dst, staged] { std::memcpy((void *)dst, staged->data(), staged->size()); });
    }
    return kSuccess;
}
// Device to host: into page-locked memory when the stream gets there; into pageable memory the
// call waits for the stream (as the driver does).
static CUresult dtoh(void *dst, unsigned long long src, size_t n, Stream *s, bool sync) {
    if (CUresult r = s ? check_stream(s) : check_current()) {
        return r;
    }
    if (sync || !s) {
        if (CUresult r = unsafe_gate("a synchronous copy from the device")) {
            return r;
        }
    }
    if (CUresult r = check_device_range(src, n, "copy from the device")) {
        return r;
    }
    bool pinned;
    {
        GUARD;
        pinned = is_pinned(dst, n, current);
    }
    if (s && !sync) {
        std::shared_ptr<CaptureSeq> cap;
        if (CUresult r = capture_gate(s, pinned, "a copy to pageable host memory", &cap)) {
            return r;
        }
        if (cap) {
            Context *ctx = current;
            record_node(cap, false, "copy from the device", [ctx, dst, src, n](Op &work) {
                if (CUresult r = check_device_range(src, n, "copy from the device (graph node)")) {
                    return r;
                }
                {
                    GUARD;
                    if (!is_pinned(dst, n, ctx)) {
                        std::fprintf(stderr, "fake libcuda: graph copy to host memory at %p that "
                                             "is no longer page-locked\n", dst);
                        return kInvalidValue;
                    }
                }
                counters().d2h_bytes += (long long)n;
                counters().d2h_copies++;
                work = [dst, src, n] { std::memcpy(dst, (const void *)src, n); };
                return kSuccess;
            });
            return kSuccess;
        }
    }
    counters().d2h_bytes += (long long)n;
    counters().d2h_copies++;
    if (!pinned && s && !sync) {
        counters().pageable_copies++;
    }
    if (s && pinned && !sync) {
        enqueue(s, [dst, src, n] { std::memcpy(dst, (const void *)src, n); });
        return kSuccess;
    }
    if (s) {
        enqueue(s, [dst, src, n] { std::memcpy(dst, (const void *)src, n); });
        s->drain();
        host_sync();
        return s->ctx->sticky.load();
    }
    std::lock_guard<std::mutex> g(exec_lock());
    std::memcpy(dst, (const void *)src, n);
    host_sync();
    return kSuccess;
}
// A graph node copying between device buffers (of one GPU or two), checked and counted at each
// launch.
static CUresult device_copy_node(unsigned long long dst, unsigned long long src, size_t n,
                                 Op &work) {
    if (CUresult r = check_device_range(dst, n, "copy to the device (graph node)")) {
        return r;
    }
    if (CUresult r = check_device_range(src, n, "copy from the device (graph node)")) {
        return r;
    }
    {
        GUARD;
        count_copy(*current, dst, src, n);
    }
    work = [dst, src, n] { std::memmove((void *)dst, (const void *)src, n); };
    return kSuccess;
}
static CUresult dtod(unsigned long long dst, unsigned long long src, size_t n, Stream *s) {
    if (CUresult r = s ? check_stream(s) : check_current()) {
        return r;
    }
    if (CUresult r = check_device_range(dst, n, "copy to the device")) {
        return r;
    }
    if (CUresult r = check_device_range(src, n, "copy from the device")) {
        return r;
    }
    if (!s) {
        if (CUresult r = unsafe_gate("a synchronous copy between device buffers")) {
            return r;
        }
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(s, true, "copy between device buffers", &cap)) {
        return r;
    }
    if (cap) {
        record_node(cap, false, "copy between device buffers", [dst, src, n](Op &work) {
            return device_copy_node(dst, src, n, work);
        });
        return kSuccess;
    }
    {
        GUARD;
        count_copy(*current, dst, src, n);
    }
    enqueue(s, [dst, src, n] { std::memmove((void *)dst, (const void *)src, n); });
    return kSuccess;
}

API CUresult cuMemcpyHtoD_v2(unsigned long long dst, const void *src, size_t n) {
    return htod(dst, src, n, nullptr, true);
}
API CUresult cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t n, void *stream) {
    return htod(dst, src, n, static_cast<Stream *>(stream), false);
}
API CUresult cuMemcpyDtoH_v2(void *dst, unsigned long long src, size_t n) {
    return dtoh(dst, src, n, nullptr, true);
}
API CUresult cuMemcpyDtoHAsync_v2(void *dst, unsigned long long src, size_t n, void *stream) {
    return dtoh(dst, src, n, static_cast<Stream *>(stream), false);
}
API CUresult cuMemcpyDtoD_v2(unsigned long long dst, unsigned long long src, size_t n) {
    return dtod(dst, src, n, nullptr);
}
API CUresult cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n,
                                  void *stream) {
    return dtod(dst, src, n, static_cast<Stream *>(stream));
}
API CUresult cuMemcpyPeerAsync(unsigned long long dst, void *dst_ctx, unsigned long long src,
                               void *src_ctx, size_t n, void *stream) {
    auto *s = static_cast<Stream *>(stream);
    if (CUresult r = s ? check_stream(s) : check_current()) {
        return r;
    }
    auto *dc = static_cast<Context *>(dst_ctx);
    auto *sc = static_cast<Context *>(src_ctx);
    {
        GUARD;
        Allocation *ad = find_allocation(dst, n, nullptr);
        Allocation *as = find_allocation(src, n, nullptr);
        if (!ad || ad->freed || !as || as->freed || ad->device != dc->device ||
            as->device != sc->device) {
            std::fprintf(stderr, "fake libcuda: peer copy of %zu bytes between memory that is not "
                                 "live on the contexts named\n", n);
            return kInvalidValue;
        }
    }
    if (!s) {
        if (CUresult r = unsafe_gate("a synchronous peer copy")) {
            return r;
        }
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(s, true, "peer copy", &cap)) {
        return r;
    }
    if (cap) {
        record_node(cap, false, "peer copy", [dst, src, n](Op &work) {
            return device_copy_node(dst, src, n, work);
        });
        return kSuccess;
    }
    {
        GUARD;
        count_copy(*current, dst, src, n);
    }
    enqueue(s, [dst, src, n] { std::memmove((void *)dst, (const void *)src, n); });
    return kSuccess;
}

API CUresult cuModuleLoadData(void **module, const void *image) {
    if (CUresult r = check_current()) {
        return r;
    }
    auto m = std::make_unique<Module>();
    m->ctx = current;
    const auto *bytes = static_cast<const unsigned char *>(image);
    std::string why;
    const bool elf = bytes[0] == 0x7f && bytes[1] == 'E' && bytes[2] == 'L' && bytes[3] == 'F';
    CUresult r = elf ? parse_cubin(bytes, *m, why) : parse_ptx((const char *)image, *m, why);
    if (r != kSuccess) {
        std::fprintf(stderr, "fake libcuda: module refused (%d): %s\n", r, why.c_str());
        return r;
    }
    for (const auto &[name, shared] : m->entries) {
        if (shared > kStaticSharedLimit) {
            std::fprintf(stderr, "fake libcuda: kernel %s declares %zu bytes of static shared "
                                 "memory, over the %zu-byte limit\n",
                         name.c_str(), shared, kStaticSharedLimit);
            return elf ? kInvalidImage : kInvalidPtx;
        }
    }
    *module = m.release();
    return kSuccess;
}
API CUresult cuModuleUnload(void *module) {
    delete static_cast<Module *>(module);
    return kSuccess;
}
API CUresult cuModuleGetFunction(void **function, void *module, const char *name) {
    auto *m = static_cast<Module *>(module);
    auto entry = m->entries.find(name);
    if (entry == m->entries.end()) {
        return kNotFound;
    }
    auto it = kernels().find(name);
    if (it == kernels().end()) {
        std::fprintf(stderr, "fake libcuda: kernel %s has no host emulation\n", name);
        return kNotFound;
    }
    *function = new Function{name, &it->second, m->ctx, entry->second};
    return kSuccess;
}
API CUresult cuFuncGetAttribute(int *value, int attribute, void *function) {
    const auto *f = static_cast<const Function *>(function);
    *value = attribute == 1 && f ? (int)f->shared : 0; // CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
    return kSuccess;
}
API CUresult cuFuncSetAttribute(void *, int, int) { return kSuccess; }
API CUresult cuLaunchKernel(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned shared_bytes, void *stream,
                            void **params, void **extra) {
    const auto *f = static_cast<const Function *>(function);
    auto *s = static_cast<Stream *>(stream);
    if (CUresult r = s ? check_stream(s) : check_current()) {
        return r;
    }
    const unsigned threads = bx * by * bz;
    if (!f || extra || shared_bytes != 0 || threads == 0 || threads > 1024 || gx == 0 ||
        gy == 0 || gz == 0 || gy > 65535 || gz > 65535) {
        std::fprintf(stderr, "fake libcuda: invalid launch of %s: grid (%u,%u,%u) block (%u,%u,%u)\n",
                     f ? f->name.c_str() : "?", gx, gy, gz, bx, by, bz);
        return kInvalidValue;
    }
    if (f->ctx != current) {
        counters().refused_context++;
        std::fprintf(stderr, "fake libcuda: kernel %s of device %d launched in device %d's "
                             "context\n", f->name.c_str(), f->ctx->device, current->device);
        return kInvalidContext;
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(s, true, "kernel " + f->name, &cap)) {
        return r;
    }
    const Launch launch = (*f->capture)(params);
    const dim3_t grid{gx, gy, gz}, block{bx, by, bz};
    Context *ctx = current;
    if (cap) {
        record_node(cap, true, "kernel " + f->name,
                    [ctx, name = f->name, launch, grid, block](Op &work) {
                        work = kernel_op(ctx, name, launch, grid, block);
                        return kSuccess;
                    });
        return kSuccess;
    }
    counters().launches++;
    enqueue(s, kernel_op(ctx, f->name, launch, grid, block));
    return kSuccess;
}

// ---------------------------------------------------------------------------------------------
// Stream capture and graphs (capture.h).

static std::atomic<unsigned long long> next_capture_id{1};

API CUresult cuStreamBeginCapture_v2(void *stream, int mode) {
    auto *s = static_cast<Stream *>(stream);
    if (!s) {
        std::fprintf(stderr, "fake libcuda: the legacy stream cannot be captured\n");
        return kCaptureUnsupported;
    }
    if (CUresult r = check_stream(s)) {
        return r;
    }
    if (mode != kCaptureGlobal && mode != kCaptureThreadLocal && mode != kCaptureRelaxed) {
        return kInvalidValue;
    }
    std::lock_guard<std::mutex> g(capture_lock());
    if (s->capture) {
        return kIllegalState;
    }
    auto c = std::make_shared<CaptureSeq>();
    c->id = next_capture_id++;
    c->mode = mode;
    c->thread = std::this_thread::get_id();
    c->ctx = s->ctx;
    s->capture = c;
    open_captures().push_back(c);
    counters().captures++;
    return kSuccess;
}
API CUresult cuStreamBeginCapture(void *stream) {
    return cuStreamBeginCapture_v2(stream, kCaptureGlobal);
}

API CUresult cuStreamEndCapture(void *stream, void **graph) {
    auto *s = static_cast<Stream *>(stream);
    *graph = nullptr;
    if (!s) {
        return kIllegalState;
    }
    if (CUresult r = check_stream(s)) {
        return r;
    }
    std::lock_guard<std::mutex> g(capture_lock());
    if (!s->capture) {
        return kIllegalState;
    }
    if (s->capture->mode != kCaptureRelaxed && s->capture->thread != std::this_thread::get_id()) {
        return kCaptureWrongThread;
    }
    const std::shared_ptr<CaptureSeq> c = close_capture(s);
    if (c->invalidated) {
        return kCaptureInvalidated;
    }
    *graph = new Graph{c->ctx, c->nodes};
    return kSuccess;
}
API CUresult cuStreamIsCapturing(void *stream, int *status) {
    auto *s = static_cast<Stream *>(stream);
    std::lock_guard<std::mutex> g(capture_lock());
    // CU_STREAM_CAPTURE_STATUS_NONE (0), _ACTIVE (1), _INVALIDATED (2).
    *status = !s || !s->capture ? 0 : s->capture->invalidated ? 2 : 1;
    return kSuccess;
}
API CUresult cuStreamGetCaptureInfo(void *stream, int *status, unsigned long long *id) {
    auto *s = static_cast<Stream *>(stream);
    std::lock_guard<std::mutex> g(capture_lock());
    *status = !s || !s->capture ? 0 : s->capture->invalidated ? 2 : 1;
    if (id && s && s->capture) {
        *id = s->capture->id;
    }
    return kSuccess;
}

API CUresult cuGraphInstantiateWithFlags(void **exec, void *graph, unsigned long long flags) {
    const auto *g = static_cast<const Graph *>(graph);
    if (!exec || !g) {
        return kInvalidValue;
    }
    if (flags & ~kInstantiateFlagsKnown) {
        std::fprintf(stderr, "fake libcuda: graph instantiation flags 0x%llx (device launch is "
                             "not modelled)\n", flags);
        return kInvalidValue;
    }
    *exec = new Graph(*g);
    counters().graph_instantiations++;
    return kSuccess;
}
API CUresult cuGraphInstantiate_v2(void **exec, void *graph, void **error_node, char *log,
                                   size_t log_size) {
    if (error_node) {
        *error_node = nullptr;
    }
    if (log && log_size) {
        log[0] = '\0';
    }
    return cuGraphInstantiateWithFlags(exec, graph, 0);
}
API CUresult cuGraphUpload(void *exec, void *stream) {
    if (!exec) {
        return kInvalidValue;
    }
    return check_stream(static_cast<Stream *>(stream));
}
API CUresult cuGraphLaunch(void *exec, void *stream) {
    const auto *g = static_cast<const Graph *>(exec);
    auto *s = static_cast<Stream *>(stream);
    if (!g) {
        return kInvalidValue;
    }
    if (CUresult r = s ? check_stream(s) : check_current()) {
        return r;
    }
    if (g->ctx != current) {
        counters().refused_context++;
        std::fprintf(stderr, "fake libcuda: a graph of device %d launched in another context\n",
                     g->ctx->device);
        return kInvalidContext;
    }
    std::shared_ptr<CaptureSeq> cap;
    if (CUresult r = capture_gate(s, false, "a graph launch (child graphs are not modelled)",
                                  &cap)) {
        return r;
    }
    // Each node's checks at this launch, then its work, all queued as one piece.
    std::vector<Op> work;
    work.reserve(g->nodes.size());
    long long kernels = 0;
    for (const auto &node : g->nodes) {
        Op op;
        if (CUresult r = node->prepare(op)) {
            std::fprintf(stderr, "fake libcuda: graph launch refused at its node %s\n",
                         node->what.c_str());
            return r;
        }
        kernels += node->kernel;
        work.push_back(std::move(op));
    }
    counters().launches++;
    counters().graph_launches++;
    counters().graph_kernels += kernels;
    enqueue(s, [work = std::move(work)] {
        for (const Op &op : work) {
            op();
        }
    });
    return kSuccess;
}
API CUresult cuGraphExecDestroy(void *exec) {
    if (!exec) {
        return kInvalidValue;
    }
    // Queued launches hold their own work, so a launched graph may be destroyed at once.
    delete static_cast<Graph *>(exec);
    return kSuccess;
}
API CUresult cuGraphDestroy(void *graph) {
    if (!graph) {
        return kInvalidValue;
    }
    delete static_cast<Graph *>(graph);
    return kSuccess;
}

API CUresult cuGetErrorString(CUresult error, const char **text) {
    switch (error) {
    case kSuccess: *text = "no error"; break;
    case kInvalidValue: *text = "invalid argument (fake libcuda)"; break;
    case kOutOfMemory: *text = "out of memory (fake libcuda)"; break;
    case kNotInitialized: *text = "not initialised (fake libcuda)"; break;
    case kInvalidDevice: *text = "invalid device ordinal (fake libcuda)"; break;
    case kInvalidImage: *text = "device kernel image is invalid (fake libcuda)"; break;
    case kInvalidContext: *text = "invalid device context (fake libcuda)"; break;
    case kNoBinaryForGpu: *text = "no kernel image is available for execution on the device (fake libcuda)"; break;
    case kPeerAccessUnsupported: *text = "peer access is not supported between these two devices (fake libcuda)"; break;
    case kInvalidPtx: *text = "a PTX JIT compilation failed (fake libcuda)"; break;
    case kUnsupportedPtxVersion: *text = "the provided PTX was compiled with an unsupported toolchain (fake libcuda)"; break;
    case kInvalidHandle: *text = "invalid resource handle (fake libcuda)"; break;
    case kNotFound: *text = "named symbol not found (fake libcuda)"; break;
    case kNotReady: *text = "device not ready (fake libcuda)"; break;
    case kIllegalAddress: *text = "an illegal memory access was encountered (fake libcuda)"; break;
    case kPeerAccessAlreadyEnabled: *text = "peer access is already enabled (fake libcuda)"; break;
    case kPeerAccessNotEnabled: *text = "peer access has not been enabled (fake libcuda)"; break;
    case kMisalignedAddress: *text = "misaligned address (fake libcuda)"; break;
    case kIllegalState: *text = "the operation cannot be performed in the present state (fake libcuda)"; break;
    case kCaptureUnsupported: *text = "operation not permitted when stream is capturing (fake libcuda)"; break;
    case kCaptureInvalidated: *text = "operation failed due to a previous error during capture (fake libcuda)"; break;
    case kCaptureIsolation: *text = "dependency created on uncaptured work in another stream (fake libcuda)"; break;
    case kCapturedEvent: *text = "operation not permitted on an event last recorded in a capturing stream (fake libcuda)"; break;
    case kCaptureWrongThread: *text = "attempt to terminate a thread-local capture sequence from another thread (fake libcuda)"; break;
    default: *text = "unknown error (fake libcuda)"; break;
    }
    return kSuccess;
}
API CUresult cuGetErrorName(CUresult error, const char **text) { return cuGetErrorString(error, text); }

// The counters, once more at unload.
__attribute__((destructor)) static void write_final_stats() { write_stats(); }
