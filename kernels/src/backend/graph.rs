//! A captured run of device work ([`StepGraph`]), replayed with one launch: what
//! [`Backend::capture_step`](super::Backend::capture_step) hands back on a device with graphs
//! (CUDA), opaque to the callers so that they need no `cfg` or backend-specific type.

use super::{CudaStepGraph, GraphPositions};

/// A captured and instantiated graph of one device's work (see
/// [`Backend::capture_step`](super::Backend::capture_step)). It holds the device addresses its
/// work was captured with: it must be dropped before (or with) the buffers it uses.
#[derive(Debug)]
pub struct StepGraph {
    /// The CUDA graph (the only device with graphs today).
    pub(super) cuda: CudaStepGraph,
    /// The page-locked positions its first node copies at each replay, written with the
    /// staged positions before each launch (`None`: none were staged at its capture, and it
    /// reads the device's positions as they are). After `cuda`, so that it is freed after the
    /// graph, once its last launch has copied it.
    pub(super) positions: Option<GraphPositions>,
}

impl StepGraph {
    /// The device it was captured on.
    pub fn device(&self) -> &str {
        self.cuda.device()
    }
}
