// The strict fake driver's model of the hardware (included by fake_cuda.cpp): what a real GPU
// does that a lenient fake would let host code get wrong, made to fail the same way.
//
// - Streams run asynchronously, each on a thread of its own, and lazily: queued work runs when
//   something waits for it (a stream, event or context synchronisation, a stream waiting on an
//   event of this one, a copy to pageable memory) or after LLMD_FAKE_CUDA_LAZY_MS (default 200)
//   milliseconds. Host code that reads results without waiting sees stale or poisoned memory.
//   Copies from and to page-locked memory (cuMemHostAlloc) happen when the stream reaches them;
//   copies from pageable memory are staged at the call, copies to pageable memory wait for the
//   stream, as the real driver does.
// - Device allocations are poisoned (every byte 0xFF: NaN as f32, f16 and bf16); freed memory is
//   poisoned again when its stream reaches the free, and quarantined (its addresses are not
//   reused until LLMD_FAKE_CUDA_QUARANTINE bytes, default 1 GiB, of later frees have passed).
// - A launch, copy, allocation or free whose stream's context is not the current context is
//   refused with CUDA_ERROR_INVALID_CONTEXT, and so is a launch of a function of another context.
// - A kernel argument that points into no live allocation the launching device may access (its
//   own memory, or a peer's with peer access enabled and the peer's pool opened to it) faults the
//   launch with CUDA_ERROR_ILLEGAL_ADDRESS; a misaligned vector access (emu.h) with
//   CUDA_ERROR_MISALIGNED_ADDRESS. A fault is sticky, as on a GPU: every later call in that
//   context returns it.
// - Copies between two GPUs are counted as direct only when the copying context has peer access
//   to the other (cuCtxEnablePeerAccess) and, for memory of the other's stream-ordered pool, that
//   pool grants the copying device access (cuMemPoolSetAccess); otherwise they are counted as
//   staged through the host (and still done).
// - Modules are parsed: PTX above LLMD_FAKE_CUDA_PTX_ISA (default 8.4, CUDA 12.4, driver r550)
//   is refused with CUDA_ERROR_UNSUPPORTED_PTX_VERSION; a CUBIN must be for the device's
//   architecture (same major, minor not above the device's); a kernel with more than 48 KiB of
//   static shared memory fails to load; only the module's own entries can be fetched.
// - Stream capture and CUDA graphs follow the driver's rules too: capture.h.
//
// Configuration (environment): LLMD_FAKE_CUDA_DEVICES (1), LLMD_FAKE_CUDA_MEMORY (16 GiB each),
// LLMD_FAKE_CUDA_DRIVER (cuDriverGetVersion, 12040), LLMD_FAKE_CUDA_PTX_ISA ("8.4"),
// LLMD_FAKE_CUDA_CC (compute capability, "8.0"), LLMD_FAKE_CUDA_SMS (multiprocessors, 4),
// LLMD_FAKE_CUDA_UUIDS and LLMD_FAKE_CUDA_PCI
// (comma-separated, one per GPU in CUDA order), LLMD_FAKE_CUDA_P2P (1: every pair may access each
// other, 0: none), LLMD_FAKE_CUDA_FAULT ("kernel:N": the Nth launch of that kernel faults with
// CUDA_ERROR_ILLEGAL_ADDRESS), LLMD_FAKE_CUDA_STATS (a file the counters are written to after
// every host synchronisation, "key value" lines).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace strict {

using CUresult = int;
constexpr CUresult kSuccess = 0;
constexpr CUresult kInvalidValue = 1;
constexpr CUresult kOutOfMemory = 2;
constexpr CUresult kNotInitialized = 3;
constexpr CUresult kInvalidDevice = 101;
constexpr CUresult kInvalidImage = 200;
constexpr CUresult kInvalidContext = 201;
constexpr CUresult kNoBinaryForGpu = 209;
constexpr CUresult kPeerAccessUnsupported = 217;
constexpr CUresult kInvalidPtx = 218;
constexpr CUresult kUnsupportedPtxVersion = 222;
constexpr CUresult kInvalidHandle = 400;
constexpr CUresult kNotFound = 500;
constexpr CUresult kNotReady = 600;
constexpr CUresult kIllegalAddress = 700;
constexpr CUresult kPeerAccessAlreadyEnabled = 704;
constexpr CUresult kPeerAccessNotEnabled = 705;
constexpr CUresult kMisalignedAddress = 716;

// The static shared memory a kernel may declare without opting in (and the most sm_80 and later
// allow statically at all).
constexpr size_t kStaticSharedLimit = 48 * 1024;

// ---------------------------------------------------------------------------------------------
// Configuration.

inline const char *env(const char *name) { return std::getenv(name); }
inline long long env_int(const char *name, long long fallback) {
    const char *v = env(name);
    return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}
inline std::vector<std::string> env_list(const char *name) {
    std::vector<std::string> out;
    const char *v = env(name);
    if (!v) {
        return out;
    }
    std::string s(v), cur;
    for (char c : s) {
        if (c == ',') {
            out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(cur);
    return out;
}
// "8.4" -> 84.
inline int version_number(const std::string &s) {
    const auto dot = s.find('.');
    if (dot == std::string::npos) {
        return std::atoi(s.c_str()) * 10;
    }
    return std::atoi(s.substr(0, dot).c_str()) * 10 + std::atoi(s.substr(dot + 1).c_str());
}

struct Config {
    int devices = 1;
    size_t memory = (size_t)16 << 30;
    int driver_version = 12040;
    int max_ptx_isa = 84;
    int cc = 80; // major * 10 + minor
    int sms = 4; // multiprocessors (decode attention splits its keys by them)
    bool p2p = true;
    std::string fault_kernel;
    long long fault_nth = 0;
    std::string stats_path;
    long long lazy_ms = 200;
    size_t quarantine = (size_t)1 << 30;
    std::vector<std::string> uuids, pci;
};

inline const Config &config() {
    // Never destroyed: the counters are written once more when the library unloads.
    static const Config *c = new Config([] {
        Config c;
        c.devices = (int)std::max(0LL, env_int("LLMD_FAKE_CUDA_DEVICES", 1));
        c.memory = (size_t)env_int("LLMD_FAKE_CUDA_MEMORY", (long long)c.memory);
        c.driver_version = (int)env_int("LLMD_FAKE_CUDA_DRIVER", c.driver_version);
        if (const char *isa = env("LLMD_FAKE_CUDA_PTX_ISA")) {
            c.max_ptx_isa = version_number(isa);
        }
        if (const char *cc = env("LLMD_FAKE_CUDA_CC")) {
            c.cc = version_number(cc);
        }
        c.p2p = env_int("LLMD_FAKE_CUDA_P2P", 1) != 0;
        c.sms = (int)std::max(1LL, env_int("LLMD_FAKE_CUDA_SMS", c.sms));
        if (const char *f = env("LLMD_FAKE_CUDA_FAULT")) {
            std::string s(f);
            const auto colon = s.find(':');
            c.fault_kernel = s.substr(0, colon);
            c.fault_nth = colon == std::string::npos ? 1 : std::atoll(s.c_str() + colon + 1);
        }
        if (const char *p = env("LLMD_FAKE_CUDA_STATS")) {
            c.stats_path = p;
        }
        c.lazy_ms = std::max(1LL, env_int("LLMD_FAKE_CUDA_LAZY_MS", c.lazy_ms));
        c.quarantine = (size_t)env_int("LLMD_FAKE_CUDA_QUARANTINE", (long long)c.quarantine);
        c.uuids = env_list("LLMD_FAKE_CUDA_UUIDS");
        c.pci = env_list("LLMD_FAKE_CUDA_PCI");
        return c;
    }());
    return *c;
}

// ---------------------------------------------------------------------------------------------
// Counters (written to LLMD_FAKE_CUDA_STATS).

struct Counters {
    std::atomic<long long> launches{0}, host_syncs{0}, h2d_bytes{0}, d2h_bytes{0},
        peer_direct{0}, peer_staged{0}, peer_direct_bytes{0}, peer_staged_bytes{0},
        refused_context{0}, faults{0}, allocations{0}, frees{0}, pageable_copies{0},
        h2d_copies{0}, d2h_copies{0},
        // Runs of the routed matmul of mixtures of experts (mul_mat_vec_id_*), launched or
        // replayed by a graph.
        routed_launches{0},
        // Graph launches (each also one of `launches`), the kernels they replayed, captures
        // begun, captures a refused call invalidated, graphs instantiated (capture.h).
        graph_launches{0}, graph_kernels{0}, captures{0}, captures_invalidated{0},
        graph_instantiations{0},
        // Asynchronous copies to the device from page-locked memory (eager or graph nodes, each
        // also one of `h2d_copies`) and their bytes: what moves without the driver's staging.
        h2d_pinned_copies{0}, h2d_pinned_bytes{0},
        // Copies from page-locked memory whose source the host rewrote between queueing the
        // copy (or launching its graph) and the copy running: a real GPU would copy the new
        // bytes, silently.
        pinned_races{0};
};
inline Counters &counters() {
    static auto *c = new Counters;
    return *c;
}

inline void write_stats() {
    const Config &c = config();
    if (c.stats_path.empty()) {
        return;
    }
    static auto *writing = new std::mutex;
    std::lock_guard<std::mutex> guard(*writing);
    Counters &n = counters();
    const std::string partial = c.stats_path + ".partial";
    FILE *f = std::fopen(partial.c_str(), "w");
    if (!f) {
        return;
    }
    std::fprintf(f,
                 "strict 1\nlaunches %lld\nhost_syncs %lld\nh2d_bytes %lld\nd2h_bytes %lld\n"
                 "peer_copies_direct %lld\npeer_copies_staged %lld\npeer_bytes_direct %lld\n"
                 "peer_bytes_staged %lld\nrefused_context %lld\nfaults %lld\nallocations %lld\n"
                 "frees %lld\npageable_copies %lld\nh2d_copies %lld\nd2h_copies %lld\n"
                 "routed_launches %lld\ngraph_launches %lld\ngraph_kernels %lld\ncaptures %lld\n"
                 "captures_invalidated %lld\ngraph_instantiations %lld\n"
                 "h2d_pinned_copies %lld\nh2d_pinned_bytes %lld\npinned_races %lld\n",
                 n.launches.load(), n.host_syncs.load(), n.h2d_bytes.load(), n.d2h_bytes.load(),
                 n.peer_direct.load(), n.peer_staged.load(), n.peer_direct_bytes.load(),
                 n.peer_staged_bytes.load(), n.refused_context.load(), n.faults.load(),
                 n.allocations.load(), n.frees.load(), n.pageable_copies.load(),
                 n.h2d_copies.load(), n.d2h_copies.load(), n.routed_launches.load(),
                 n.graph_launches.load(), n.graph_kernels.load(), n.captures.load(),
                 n.captures_invalidated.load(), n.graph_instantiations.load(),
                 n.h2d_pinned_copies.load(), n.h2d_pinned_bytes.load(), n.pinned_races.load());
    std::fclose(f);
    std::rename(partial.c_str(), c.stats_path.c_str());
}

// ---------------------------------------------------------------------------------------------
// Devices, contexts, memory.

struct Context {
    int device = 0;
    // Devices whose memory this context may access directly (cuCtxEnablePeerAccess).
    std::unordered_set<int> peers;
    // A sticky fault: every later call in this context returns it.
    std::atomic<int> sticky{0};
};

struct Pool {
    int device = 0;
    // Other devices granted access to this pool's allocations (cuMemPoolSetAccess).
    std::unordered_set<int> access;
};

struct Allocation {
    size_t bytes = 0;
    int device = 0;
    bool pooled = false; // from cuMemAllocAsync (the device's stream-ordered pool)
    bool freed = false;  // freed (its stream may not have reached the free yet)
};

struct Module {
    Context *ctx = nullptr;
    // Entry name -> static shared memory bytes.
    std::map<std::string, size_t> entries;
};

struct Event;
struct Stream;
struct CaptureSeq; // capture.h

// The driver's bookkeeping, under `lock`.
struct Driver {
    std::mutex lock;
    bool initialised = false;
    std::vector<std::unique_ptr<Context>> contexts; // primary contexts, one per device
    std::vector<Pool> pools;
    std::vector<size_t> used;
    std::map<unsigned long long, Allocation> allocations; // by start address
    // Page-locked host memory: size, the context that allocated it, whether it is portable
    // (page-locked for every context, not only that one).
    struct Pinned {
        size_t bytes;
        Context *ctx;
        bool portable;
    };
    std::map<unsigned long long, Pinned> pinned;
    std::deque<std::pair<void *, size_t>> quarantine;
    size_t quarantined = 0;
    std::vector<Stream *> streams;
    std::unordered_map<std::string, long long> launches_of; // for LLMD_FAKE_CUDA_FAULT
};
inline Driver &driver() {
    static Driver *d = new Driver; // never destroyed: stream threads may outlive static teardown
    return *d;
}

// The live allocation containing [p, p + n), or null.
inline Allocation *find_allocation(unsigned long long p, size_t n, unsigned long long *start) {
    Driver &d = driver();
    auto it = d.allocations.upper_bound(p);
    if (it == d.allocations.begin()) {
        return nullptr;
    }
    --it;
    if (p + n > it->first + std::max<size_t>(it->second.bytes, 1)) {
        return nullptr;
    }
    if (start) {
        *start = it->first;
    }
    return &it->second;
}

// Whether [p, p + n) is page-locked for context `ctx`.
inline bool is_pinned(const void *p, size_t n, const Context *ctx) {
    Driver &d = driver();
    const auto a = (unsigned long long)p;
    auto it = d.pinned.upper_bound(a);
    if (it == d.pinned.begin()) {
        return false;
    }
    --it;
    return a + n <= it->first + it->second.bytes && (it->second.portable || it->second.ctx == ctx);
}

// Whether device `dev` (running in context `ctx`) may touch allocation `a` directly.
inline bool accessible(const Context &ctx, const Allocation &a) {
    if (a.device == ctx.device) {
        return true;
    }
    if (!ctx.peers.count(a.device)) {
        return false;
    }
    return !a.pooled || driver().pools[a.device].access.count(ctx.device);
}

// Frees host memory that left quarantine; called with the lock held.
inline void quarantine_push(void *p, size_t bytes) {
    Driver &d = driver();
    d.quarantine.emplace_back(p, bytes);
    d.quarantined += bytes;
    while (d.quarantined > config().quarantine && d.quarantine.size() > 1) {
        std::free(d.quarantine.front().first);
        d.quarantined -= d.quarantine.front().second;
        d.quarantine.pop_front();
    }
}

// ---------------------------------------------------------------------------------------------
// Streams and events.

// What queued work refers to of an event: it outlives the handle (an event may be destroyed
// while its record, or a stream waiting on it, is still queued, as the driver allows).
struct EventState {
    std::atomic<long long> completed{0}; // generation the recording stream has reached
};
struct Event {
    Context *ctx = nullptr;
    Stream *stream = nullptr; // where it was last recorded
    long long recorded = 0;   // generation of the last record
    // The capture its last record was made in (a captured event: it marks a point of that
    // capture, not of the stream's execution), under capture_lock(); null otherwise.
    std::shared_ptr<CaptureSeq> captured;
    std::shared_ptr<EventState> state = std::make_shared<EventState>();
};

// Work done on a stream thread, in order.
using Op = std::function<void()>;

// These live as long as the process (never destroyed: stream threads may still wait on them
// while static objects are torn down at exit).
inline std::mutex &exec_lock() {
    // One operation at a time on the whole "machine": the emulation's __shared__ variables are
    // statics, and kernels and copies touch plain host memory.
    static auto *m = new std::mutex;
    return *m;
}
inline std::condition_variable &progress() {
    static auto *cv = new std::condition_variable;
    return *cv;
}
inline std::mutex &progress_lock() {
    static auto *m = new std::mutex;
    return *m;
}

struct Stream {
    Context *ctx = nullptr;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::pair<long long, Op>> queue; // (sequence number, work)
    long long enqueued = 0;
    std::atomic<long long> done{0};
    long long wanted = 0; // run everything up to this sequence number now
    std::chrono::steady_clock::time_point oldest;
    bool stopping = false;
    std::thread worker;
    // The capture open on this stream (capture.h), under capture_lock(); null when none.
    std::shared_ptr<CaptureSeq> capture;

    explicit Stream(Context *c) : ctx(c) { worker = std::thread([this] { run(); }); }

    // Queues work; returns its sequence number.
    long long push(Op op) {
        std::lock_guard<std::mutex> g(m);
        if (queue.empty()) {
            oldest = std::chrono::steady_clock::now();
        }
        queue.emplace_back(++enqueued, std::move(op));
        cv.notify_all();
        return enqueued;
    }

    // Asks the thread to run everything queued so far (without waiting).
    long long kick() {
        std::lock_guard<std::mutex> g(m);
        wanted = std::max(wanted, enqueued);
        cv.notify_all();
        return enqueued;
    }

    // Runs everything queued so far and waits for it.
    void drain() { wait_for(kick()); }

    void wait_for(long long seq) {
        {
            std::lock_guard<std::mutex> g(m);
            wanted = std::max(wanted, seq);
            cv.notify_all();
        }
        std::unique_lock<std::mutex> g(progress_lock());
        progress().wait(g, [&] { return done.load() >= seq; });
    }

    void run() {
        const auto lazy = std::chrono::milliseconds(config().lazy_ms);
        for (;;) {
            std::pair<long long, Op> item;
            {
                std::unique_lock<std::mutex> g(m);
                for (;;) {
                    if (stopping && queue.empty()) {
                        return;
                    }
                    if (!queue.empty() &&
                        (wanted >= queue.front().first || stopping ||
                         std::chrono::steady_clock::now() - oldest >= lazy)) {
                        break;
                    }
                    if (queue.empty()) {
                        cv.wait(g);
                    } else {
                        cv.wait_until(g, oldest + lazy);
                    }
                }
                item = std::move(queue.front());
                queue.pop_front();
                if (!queue.empty() && wanted < queue.front().first) {
                    oldest = std::chrono::steady_clock::now();
                }
            }
            item.second();
            {
                std::lock_guard<std::mutex> g(progress_lock());
                done.store(item.first);
            }
            progress().notify_all();
        }
    }

    void stop() {
        {
            std::lock_guard<std::mutex> g(m);
            stopping = true;
            cv.notify_all();
        }
        worker.join();
    }
};

// Waits until an event's record of generation `gen` on `stream` has been reached (kicking the
// stream).
inline void wait_event(const std::shared_ptr<EventState> &ev, Stream *stream, long long gen) {
    if (!stream || gen == 0) {
        return;
    }
    stream->kick();
    std::unique_lock<std::mutex> g(progress_lock());
    progress().wait(g, [&] {
        if (ev->completed.load() >= gen) {
            return true;
        }
        // Re-kick: work queued on the stream after the kick above may be what we wait for.
        stream->kick();
        return false;
    });
}

// ---------------------------------------------------------------------------------------------
// Modules: PTX and CUBIN parsing.

// Parses `.version`, `.entry` names and their static `.shared` declarations from PTX text.
inline CUresult parse_ptx(const char *text, Module &m, std::string &why) {
    const std::string s(text);
    const auto v = s.find(".version");
    if (v == std::string::npos) {
        why = "no .version directive";
        return kInvalidPtx;
    }
    size_t p = v + 8;
    while (p < s.size() && s[p] == ' ') {
        ++p;
    }
    std::string version;
    while (p < s.size() && (std::isdigit((unsigned char)s[p]) || s[p] == '.')) {
        version += s[p++];
    }
    const int isa = version_number(version);
    if (isa > config().max_ptx_isa) {
        why = "PTX ISA " + version + " is newer than this driver supports";
        return kUnsupportedPtxVersion;
    }
    std::string current;
    size_t at = 0;
    while ((at = s.find('\n', at)) != std::string::npos) {
        ++at;
        const size_t end = s.find('\n', at);
        const std::string line = s.substr(at, end == std::string::npos ? std::string::npos : end - at);
        const auto entry = line.find(".entry ");
        if (entry != std::string::npos) {
            size_t b = entry + 7;
            std::string name;
            while (b < line.size() && line[b] != '(' && line[b] != ' ') {
                name += line[b++];
            }
            current = name;
            m.entries[current] = 0;
            continue;
        }
        const auto shared = line.find(".shared .align");
        if (shared != std::string::npos && !current.empty() && line.find(';') != std::string::npos) {
            // ".shared .align A .TYPE name[N];" or ".shared .align A .TYPE name;"
            size_t elem = 1;
            if (line.find(".b16") != std::string::npos || line.find(".u16") != std::string::npos ||
                line.find(".f16") != std::string::npos) {
                elem = 2;
            } else if (line.find(".b32") != std::string::npos || line.find(".u32") != std::string::npos ||
                       line.find(".f32") != std::string::npos || line.find(".s32") != std::string::npos) {
                elem = 4;
            } else if (line.find(".b64") != std::string::npos || line.find(".u64") != std::string::npos ||
                       line.find(".f64") != std::string::npos) {
                elem = 8;
            }
            size_t count = 1;
            const auto br = line.find('[');
            if (br != std::string::npos) {
                count = (size_t)std::strtoull(line.c_str() + br + 1, nullptr, 10);
            }
            m.entries[current] += elem * count;
        }
    }
    if (m.entries.empty()) {
        why = "no .entry in the PTX";
        return kInvalidPtx;
    }
    return kSuccess;
}

// Reads entries (.text.NAME sections) and static shared memory (.nv.shared.NAME) of an ELF CUBIN
// and checks its architecture (e_flags' low byte, sm_XY as 0xXY in decimal) against the device.
inline CUresult parse_cubin(const unsigned char *b, Module &m, std::string &why) {
    auto u16 = [&](size_t o) { unsigned short v; std::memcpy(&v, b + o, 2); return (size_t)v; };
    auto u32 = [&](size_t o) { unsigned int v; std::memcpy(&v, b + o, 4); return (size_t)v; };
    auto u64 = [&](size_t o) { unsigned long long v; std::memcpy(&v, b + o, 8); return (size_t)v; };
    if (b[4] != 2 || u16(18) != 190) {
        why = "not a 64-bit CUDA ELF image";
        return kInvalidImage;
    }
    const int arch = (int)(u32(48) & 0xff);
    const int cc = config().cc;
    if (arch / 10 != cc / 10 || arch % 10 > cc % 10) {
        why = "CUBIN for sm_" + std::to_string(arch) + " on a device of compute capability " +
              std::to_string(cc / 10) + "." + std::to_string(cc % 10);
        return kNoBinaryForGpu;
    }
    const size_t shoff = u64(40), shentsize = u16(58), shnum = u16(60), shstrndx = u16(62);
    const size_t stroff = u64(shoff + shstrndx * shentsize + 24);
    for (size_t i = 0; i < shnum; ++i) {
        const size_t h = shoff + i * shentsize;
        const std::string name((const char *)b + stroff + u32(h));
        const size_t size = u64(h + 32);
        if (name.rfind(".text.", 0) == 0) {
            m.entries[name.substr(6)] += 0;
        } else if (name.rfind(".nv.shared.", 0) == 0) {
            m.entries[name.substr(11)] += size;
        }
    }
    if (m.entries.empty()) {
        why = "no kernels in the CUBIN";
        return kInvalidImage;
    }
    return kSuccess;
}

} // namespace strict
