// A fake libcuda.so.1 for tests on machines without a GPU: the part of the CUDA driver API that
// cudarc calls for llmd's CUDA backend, with "device" memory in host memory and every kernel of
// kernels/cuda/*.cu run by the host emulation (../host_check/emu.h), each GPU thread a fiber.
// Loaded instead of the real driver (LD_LIBRARY_PATH), it lets the Rust CUDA backend and the
// daemon's GPU code paths (argument marshalling, launch geometry, buffer offsets, streams,
// memory accounting) run end to end in CI and be compared with the CPU backend.
//
// What it is not: a GPU. Streams execute synchronously in call order, memory is host memory, one
// launch runs at a time, and the PTX handed to cuModuleLoadData is not compiled: kernels are
// found by name in the table below. Numerical agreement here says the host code drives the
// kernels as they are written; it says nothing about the GPU's speed or its own rounding.
//
// Environment: LLMD_FAKE_CUDA_DEVICES (default 1) GPUs, LLMD_FAKE_CUDA_MEMORY bytes each
// (default 16 GiB).
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
    static Scheduler s; // launches are serialised by the launch mutex
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
    s.slots.assign(n, 0);
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

// ---------------------------------------------------------------------------------------------
// Kernels by name: each entry unpacks cuLaunchKernel's parameter array by the kernel's own
// parameter types, so a host-side argument of the wrong type or order shows up as wrong results.

template <typename... A, size_t... I>
static void call_with(void (*k)(A...), void **params, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A> *>(params[I])...);
}
template <typename... A> static std::function<void(void **)> entry(void (*k)(A...)) {
    return [k](void **params) { call_with(k, params, std::index_sequence_for<A...>{}); };
}

static const std::unordered_map<std::string, std::function<void(void **)>> &kernels() {
    static const std::unordered_map<std::string, std::function<void(void **)>> table = {
#define K(name) {#name, entry(name)}
        K(attn_prefill_f16_f16), K(attn_prefill_f16_q8_0), K(attn_prefill_f16_q4_0),
        K(attn_prefill_q8_0_f16), K(attn_prefill_q8_0_q8_0), K(attn_prefill_q8_0_q4_0),
        K(attn_prefill_q4_0_f16), K(attn_prefill_q4_0_q8_0), K(attn_prefill_q4_0_q4_0),
        K(attn_decode_f16_f16), K(attn_decode_f16_q8_0), K(attn_decode_f16_q4_0),
        K(attn_decode_q8_0_f16), K(attn_decode_q8_0_q8_0), K(attn_decode_q8_0_q4_0),
        K(attn_decode_q4_0_f16), K(attn_decode_q4_0_q8_0), K(attn_decode_q4_0_q4_0),
        K(attn_combine_f32),
        K(geglu_f32), K(swiglu_f32), K(add_f32), K(scale_f32), K(add_bias_f32),
        K(get_rows_f32), K(get_rows_f16), K(get_rows_q4_0), K(get_rows_q5_0), K(get_rows_q8_0),
        K(get_rows_q4_K), K(get_rows_q6_K),
        K(kv_store_f16), K(kv_store_q8_0), K(kv_store_q4_0), K(kv_rotate_f32),
        K(mul_mat_vec_f16), K(mul_mat_vec_f32),
        K(mul_mat_vec_q4_0_q8_1), K(mul_mat_vec_q5_0_q8_1), K(mul_mat_vec_q8_0_q8_1),
        K(mul_mat_vec_q4_K_q8_1), K(mul_mat_vec_q6_K_q8_1),
        K(rms_norm_f32), K(quantize_q8_1), K(convert_f32_to_f16), K(rope_f32),
        K(dequantize_q4_0_f32), K(dequantize_q5_0_f32), K(dequantize_q8_0_f32),
        K(dequantize_q4_K_f32), K(dequantize_q6_K_f32), K(dequantize_f16_f32),
        K(dequantize_q4_0_f16), K(dequantize_q5_0_f16), K(dequantize_q8_0_f16),
        K(dequantize_q4_K_f16), K(dequantize_q6_K_f16),
        K(gemm_f32_nt), K(gemm_f16_tc),
#undef K
    };
    return table;
}

// ---------------------------------------------------------------------------------------------
// The driver API.

namespace {

using CUresult = int;
constexpr CUresult kSuccess = 0;
constexpr CUresult kInvalidValue = 1;
constexpr CUresult kOutOfMemory = 2;
constexpr CUresult kNotInitialized = 3;
constexpr CUresult kInvalidDevice = 101;
constexpr CUresult kNotFound = 500;

struct Context {
    int device;
};
struct Module {
    int unused;
};
struct Function {
    std::string name;
    const std::function<void(void **)> *run;
};

std::mutex lock; // one driver call at a time, like one launch at a time
bool initialised = false;
std::vector<Context> contexts;
struct Allocation {
    size_t bytes;
    int device;
};
std::unordered_map<unsigned long long, Allocation> allocations; // by device pointer
std::vector<size_t> used;                                     // bytes per device
thread_local Context *current = nullptr;

int device_count() {
    const char *n = std::getenv("LLMD_FAKE_CUDA_DEVICES");
    return n ? std::max(0, std::atoi(n)) : 1;
}
size_t device_memory() {
    const char *m = std::getenv("LLMD_FAKE_CUDA_MEMORY");
    return m ? (size_t)std::strtoull(m, nullptr, 10) : (size_t)16 << 30;
}
int current_device() { return current ? current->device : 0; }

CUresult allocate(unsigned long long *ptr, size_t bytes) {
    const int d = current_device();
    if (used[d] + bytes > device_memory()) {
        return kOutOfMemory;
    }
    void *p = std::calloc(1, std::max<size_t>(bytes, 1));
    if (!p) {
        return kOutOfMemory;
    }
    *ptr = (unsigned long long)p;
    allocations[*ptr] = Allocation{bytes, d};
    used[d] += bytes;
    return kSuccess;
}

CUresult release(unsigned long long ptr) {
    auto it = allocations.find(ptr);
    if (it == allocations.end()) {
        return kInvalidValue;
    }
    // Freed on the device it was allocated on, whichever context is current (as the driver does).
    used[it->second.device] -= it->second.bytes;
    allocations.erase(it);
    std::free((void *)ptr);
    return kSuccess;
}

} // namespace

#define API extern "C" __attribute__((visibility("default")))
#define GUARD std::lock_guard<std::mutex> guard(lock)

API CUresult cuInit(unsigned) {
    GUARD;
    initialised = true;
    contexts.resize(device_count());
    used.resize(device_count(), 0);
    for (int d = 0; d < device_count(); ++d) {
        contexts[d].device = d;
    }
    return kSuccess;
}
API CUresult cuDriverGetVersion(int *v) {
    *v = 12040;
    return kSuccess;
}
API CUresult cuDeviceGetCount(int *n) {
    GUARD;
    if (!initialised) {
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
    *bytes = device_memory();
    return kSuccess;
}
API CUresult cuDeviceGetAttribute(int *value, int attribute, int) {
    switch (attribute) {
    case 75: *value = 8; break;  // compute capability major
    case 76: *value = 0; break;  // minor
    case 115: *value = 1; break; // memory pools supported
    default: *value = 0; break;
    }
    return kSuccess;
}
API CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) {
    GUARD;
    if (dev < 0 || dev >= (int)contexts.size()) {
        return kInvalidDevice;
    }
    *ctx = &contexts[dev];
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
API CUresult cuCtxSynchronize() { return kSuccess; }
API CUresult cuCtxGetDevice(int *dev) {
    *dev = current_device();
    return kSuccess;
}
API CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    GUARD;
    *total = device_memory();
    *free_bytes = device_memory() - used[current_device()];
    return kSuccess;
}

API CUresult cuStreamCreate(void **stream, unsigned) {
    *stream = new int(0);
    return kSuccess;
}
API CUresult cuStreamCreateWithPriority(void **stream, unsigned, int) {
    *stream = new int(0);
    return kSuccess;
}
API CUresult cuStreamDestroy_v2(void *stream) {
    delete static_cast<int *>(stream);
    return kSuccess;
}
API CUresult cuStreamSynchronize(void *) { return kSuccess; }
API CUresult cuStreamWaitEvent(void *, void *, unsigned) { return kSuccess; }
API CUresult cuStreamQuery(void *) { return kSuccess; }

API CUresult cuEventCreate(void **event, unsigned) {
    *event = new int(0);
    return kSuccess;
}
API CUresult cuEventDestroy_v2(void *event) {
    delete static_cast<int *>(event);
    return kSuccess;
}
API CUresult cuEventRecord(void *, void *) { return kSuccess; }
API CUresult cuEventSynchronize(void *) { return kSuccess; }
API CUresult cuEventQuery(void *) { return kSuccess; }
API CUresult cuEventElapsedTime(float *ms, void *, void *) {
    *ms = 0.0f;
    return kSuccess;
}

API CUresult cuMemAlloc_v2(unsigned long long *ptr, size_t bytes) {
    GUARD;
    return allocate(ptr, bytes);
}
API CUresult cuMemAllocAsync(unsigned long long *ptr, size_t bytes, void *) {
    GUARD;
    return allocate(ptr, bytes);
}
API CUresult cuMemFree_v2(unsigned long long ptr) {
    GUARD;
    return release(ptr);
}
API CUresult cuMemFreeAsync(unsigned long long ptr, void *) {
    GUARD;
    return release(ptr);
}
API CUresult cuMemHostAlloc(void **ptr, size_t bytes, unsigned) {
    *ptr = std::calloc(1, std::max<size_t>(bytes, 1));
    return *ptr ? kSuccess : kOutOfMemory;
}
API CUresult cuMemFreeHost(void *ptr) {
    std::free(ptr);
    return kSuccess;
}
API CUresult cuMemsetD8_v2(unsigned long long ptr, unsigned char value, size_t n) {
    std::memset((void *)ptr, value, n);
    return kSuccess;
}
API CUresult cuMemsetD8Async(unsigned long long ptr, unsigned char value, size_t n, void *) {
    std::memset((void *)ptr, value, n);
    return kSuccess;
}
API CUresult cuMemcpyHtoD_v2(unsigned long long dst, const void *src, size_t n) {
    std::memcpy((void *)dst, src, n);
    return kSuccess;
}
API CUresult cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t n, void *) {
    std::memcpy((void *)dst, src, n);
    return kSuccess;
}
API CUresult cuMemcpyDtoH_v2(void *dst, unsigned long long src, size_t n) {
    std::memcpy(dst, (const void *)src, n);
    return kSuccess;
}
API CUresult cuMemcpyDtoHAsync_v2(void *dst, unsigned long long src, size_t n, void *) {
    std::memcpy(dst, (const void *)src, n);
    return kSuccess;
}
API CUresult cuMemcpyDtoD_v2(unsigned long long dst, unsigned long long src, size_t n) {
    std::memmove((void *)dst, (const void *)src, n);
    return kSuccess;
}
API CUresult cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n,
                                  void *) {
    std::memmove((void *)dst, (const void *)src, n);
    return kSuccess;
}

API CUresult cuMemcpyPeerAsync(unsigned long long dst, void *, unsigned long long src, void *,
                               size_t n, void *) {
    std::memmove((void *)dst, (const void *)src, n);
    return kSuccess;
}
API CUresult cuModuleLoadData(void **module, const void *) {
    *module = new Module{0};
    return kSuccess;
}
API CUresult cuModuleUnload(void *module) {
    delete static_cast<Module *>(module);
    return kSuccess;
}
API CUresult cuModuleGetFunction(void **function, void *, const char *name) {
    auto it = kernels().find(name);
    if (it == kernels().end()) {
        return kNotFound;
    }
    *function = new Function{name, &it->second};
    return kSuccess;
}
API CUresult cuFuncGetAttribute(int *value, int, void *) {
    *value = 0;
    return kSuccess;
}
API CUresult cuFuncSetAttribute(void *, int, int) { return kSuccess; }
API CUresult cuLaunchKernel(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned shared_bytes, void *,
                            void **params, void **extra) {
    GUARD;
    const auto *f = static_cast<const Function *>(function);
    const unsigned threads = bx * by * bz;
    if (!f || extra || shared_bytes != 0 || threads == 0 || threads > 1024 || gx == 0 ||
        gy == 0 || gz == 0 || gy > 65535 || gz > 65535) {
        std::fprintf(stderr, "fake libcuda: invalid launch of %s: grid (%u,%u,%u) block (%u,%u,%u)\n",
                     f ? f->name.c_str() : "?", gx, gy, gz, bx, by, bz);
        return kInvalidValue;
    }
    fiber_launch(dim3_t{gx, gy, gz}, dim3_t{bx, by, bz}, [&] { (*f->run)(params); });
    return kSuccess;
}

API CUresult cuGetErrorString(CUresult error, const char **text) {
    switch (error) {
    case kSuccess: *text = "no error"; break;
    case kInvalidValue: *text = "invalid argument (fake libcuda)"; break;
    case kOutOfMemory: *text = "out of memory (fake libcuda)"; break;
    case kNotInitialized: *text = "not initialised (fake libcuda)"; break;
    case kInvalidDevice: *text = "invalid device ordinal (fake libcuda)"; break;
    case kNotFound: *text = "named symbol not found (fake libcuda)"; break;
    default: *text = "unknown error (fake libcuda)"; break;
    }
    return kSuccess;
}
API CUresult cuGetErrorName(CUresult error, const char **text) { return cuGetErrorString(error, text); }
