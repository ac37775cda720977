// Stream capture and CUDA graphs in the strict fake driver (included by fake_cuda.cpp after
// strict.h): what a capture records, and the rules a real driver enforces while one is open.
//
// - cuStreamBeginCapture_v2 opens a capture on a stream (never the legacy stream). From then on
//   kernel launches and asynchronous copies and memsets on that stream are recorded as the nodes
//   of a graph, in order, and not run: a kernel's arguments are copied by value at the launch
//   (pointers included), exactly as a real capture freezes them, so a replay reads whatever the
//   device buffers hold when it runs (positions, lengths and slots must live in device memory
//   written before each graph launch). cuStreamEndCapture hands the graph back.
// - Refused during a capture, invalidating it (cuStreamEndCapture then returns
//   CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph, and every later call on that stream
//   until then returns the same): synchronising or querying the capturing stream, synchronising
//   its context (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); an asynchronous copy from or to pageable
//   host memory on it (it would need a host-side staging the graph cannot replay); a potentially
//   unsafe call (synchronous copies and memsets, cuMemAlloc, cuMemFree, cuMemHostAlloc) from any
//   thread while a capture in global mode is open, or from the capturing thread in thread-local
//   mode (relaxed mode allows them); waiting on an event recorded outside the capture
//   (CUDA_ERROR_STREAM_CAPTURE_ISOLATION); querying or synchronising an event recorded inside it
//   (CUDA_ERROR_CAPTURED_EVENT); ending it from another thread than the one that began it, in
//   global or thread-local mode (CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, not invalidating).
// - Stricter than the hardware, and said so when refused: stream-ordered allocations and frees
//   on the capturing stream (a real capture records memory nodes, whose lifetime rules llmd's
//   graphs do not use: a decode graph owns no memory), another stream joining the capture by
//   waiting on one of its events, and launching a graph inside a capture (child graphs).
// - cuGraphLaunch queues the graph's nodes, in order, as one piece of work on the launch stream
//   (asynchronous like any stream work). Each launch re-checks what a replay touches, as the
//   GPU's MMU would at run time: a kernel pointer argument into freed or foreign memory faults
//   the context (CUDA_ERROR_ILLEGAL_ADDRESS), a copy node whose device memory is gone or whose
//   host memory is no longer page-locked is refused. A graph launch counts as one launch
//   (`launches`, and `graph_launches`); the kernels it replays are counted in `graph_kernels`,
//   its copies in the copy counters, as they run on every launch.
#pragma once

#include <memory>
#include <thread>
#include <vector>

namespace strict {

constexpr CUresult kIllegalState = 401;
constexpr CUresult kCaptureUnsupported = 900;
constexpr CUresult kCaptureInvalidated = 901;
constexpr CUresult kCaptureIsolation = 905;
constexpr CUresult kCapturedEvent = 907;
constexpr CUresult kCaptureWrongThread = 908;

// CUstreamCaptureMode.
constexpr int kCaptureGlobal = 0;
constexpr int kCaptureThreadLocal = 1;
constexpr int kCaptureRelaxed = 2;

// CUgraphInstantiate_flags the fake knows: AUTO_FREE_ON_LAUNCH (1), UPLOAD (2),
// USE_NODE_PRIORITY (8). DEVICE_LAUNCH (4) is refused: graphs are launched from the host only.
constexpr unsigned long long kInstantiateFlagsKnown = 1 | 2 | 8;

// Work of one graph node, queued at each launch: called on the host by cuGraphLaunch, it checks
// what the replay will touch, counts it, and sets the work to queue (or returns an error).
struct Node {
    // Kernel nodes are counted in `graph_kernels` at each launch.
    bool kernel = false;
    // What the node does, for messages ("kernel rms_norm_f32", "copy to the device").
    std::string what;
    std::function<CUresult(Op &work)> prepare;
};

// An open capture on one stream.
struct CaptureSeq {
    // Its number (cuStreamGetCaptureInfo's id), unique in the process.
    unsigned long long id = 0;
    // CUstreamCaptureMode: which threads may not make potentially unsafe calls meanwhile.
    int mode = kCaptureGlobal;
    // The thread that began it (thread-local mode's scope, and who must end it).
    std::thread::id thread;
    // The context of the captured stream.
    Context *ctx = nullptr;
    // Set by a refused call: the capture yields no graph.
    bool invalidated = false;
    // Cleared by cuStreamEndCapture (events recorded in it stay captured events).
    bool open = true;
    // What was recorded, in stream order.
    std::vector<std::shared_ptr<Node>> nodes;
};

// A captured graph (CUgraph), and an instantiated one (CUgraphExec): the same node list, bound
// to the context it was captured in.
struct Graph {
    Context *ctx = nullptr;
    std::vector<std::shared_ptr<Node>> nodes;
};

// Guards every capture's state, the streams' `capture` and the events' `captured` fields.
inline std::mutex &capture_lock() {
    static auto *m = new std::mutex;
    return *m;
}
// The captures open now, under capture_lock().
inline std::vector<std::shared_ptr<CaptureSeq>> &open_captures() {
    static auto *v = new std::vector<std::shared_ptr<CaptureSeq>>;
    return *v;
}

} // namespace strict
