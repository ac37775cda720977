//! CUDA graphs of this backend's stream: a run of work captured once ([`CudaBackend::capture`])
//! and replayed with one launch each time ([`CudaBackend::launch_graph`]).
//!
//! A capture records what is queued on the backend's stream instead of running it; a kernel's
//! arguments are frozen by value at capture, pointers included, so a replay reads whatever the
//! device buffers hold when it runs. Work to be captured must therefore take every value that
//! changes between replays (positions, lengths, slots) from device memory written before the
//! launch, and must neither synchronise, nor allocate or free device memory, nor copy from or to
//! pageable host memory: the driver refuses those during a capture and the capture yields no
//! graph (the strict fake driver enforces the same rules, `kernels/cuda/fake_driver/capture.h`).
//!
//! Captures are thread-local (`CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`): the other workers of the
//! process, driving other models on the same GPU, go on allocating and copying meanwhile, which
//! a global-mode capture would forbid to every thread.

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::{BackendError, CudaBackend};

/// A captured and instantiated graph of one backend's stream work, replayed by
/// [`CudaBackend::launch_graph`] on the stream it was captured on. Dropping it destroys the
/// graph (already queued launches still run).
pub struct CudaStepGraph {
    /// cudarc's graph and executable graph (destroyed on drop).
    graph: CudaGraph,
    /// The device it belongs to, so that it is replayed on no other.
    device: String,
}

// SAFETY: cudarc's `CudaGraph` holds raw driver handles and is not `Send` because graph objects
// are not internally synchronised. A `CudaStepGraph` is only reached through `&self` of one
// owner at a time (the stage that captured it, which runs on one worker thread at a time and is
// moved between threads only whole), so no two threads touch its handles concurrently.
unsafe impl Send for CudaStepGraph {}

impl std::fmt::Debug for CudaStepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStepGraph")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl CudaStepGraph {
    /// The device it was captured on.
    pub fn device(&self) -> &str {
        &self.device
    }
}

impl CudaBackend {
    /// Captures the work `record` queues on this backend's stream into a graph, without running
    /// it. The capture is always closed: when `record` fails its error is returned and the
    /// partial capture is discarded; when the driver refused a call inside it (a sync, an
    /// allocation, a pageable copy), the capture's invalidation is reported. Work queued before
    /// the capture is unaffected (it runs before any launch of the graph, in stream order).
    pub fn capture<T, E: From<BackendError>>(
        &self,
        record: impl FnOnce() -> Result<T, E>,
    ) -> Result<(CudaStepGraph, T), E> {
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| self.err("beginning a stream capture", e))?;
        let recorded = record();
        let ended = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| self.err("ending a stream capture", e));
        // `record`'s own error says what failed first; the invalidation it caused follows.
        let value = recorded?;
        let graph = ended?.ok_or_else(|| BackendError::Device {
            device: self.name.clone(),
            message: "the stream capture recorded no graph".to_owned(),
        })?;
        Ok((
            CudaStepGraph {
                graph,
                device: self.name.clone(),
            },
            value,
        ))
    }

    /// Queues one replay of `graph` on this backend's stream (asynchronously, like any stream
    /// work): its kernels and copies run in the order captured, reading the device buffers as
    /// they are when the replay runs.
    pub fn launch_graph(&self, graph: &CudaStepGraph) -> Result<(), BackendError> {
        if graph.device != self.name {
            return Err(BackendError::Device {
                device: self.name.clone(),
                message: format!("a graph captured on {} launched here", graph.device),
            });
        }
        graph
            .graph
            .launch()
            .map_err(|e| self.err("launching a CUDA graph", e))
    }
}
