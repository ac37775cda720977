//! The small device buffers a backend keeps between calls ([`Reused`]: positions, Q8_1 and
//! int8 activations, attention partials, rotated keys and values, selection candidates, expert
//! tables), grown on demand and never shrunk.

use std::sync::{Arc, PoisonError};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaStream, DriverError};

use super::context::GpuState;
use super::positions::StagedPositions;
use super::{CudaBackend, DeviceBuf};

/// Device buffers a backend keeps between calls. Every use is on the backend's one stream, so a
/// buffer rewritten by a later call is only rewritten after the kernels of earlier calls that
/// read it (stream order); the lock only guards the Rust-side bookkeeping.
#[derive(Default)]
pub(super) struct Reused {
    /// The step's token positions (host, page-locked and device copies): a forward pass passes
    /// the same positions to rope, the KV store and attention of every layer, so they cross to
    /// the device once per step instead of four times per layer.
    pub(super) positions: StagedPositions,
    /// Q8_1-quantized activations of the matrix-vector path (grown, never shrunk).
    pub(super) q8: Option<DeviceBuf<u8>>,
    /// 8-bit activations of the int8 tensor-core path (`quantize_mmq`, batches of more than 8
    /// rows; grown, never shrunk): a decode step of that many sequences then allocates nothing,
    /// and can be captured in a graph.
    pub(super) mmq: Option<DeviceBuf<u8>>,
    /// Partial results of split decode attention (grown, never shrunk).
    pub(super) partials: Option<DeviceBuf<f32>>,
    /// Keys, values or queries rotated for a quantized KV cache (grown, never shrunk).
    pub(super) rotated: Option<DeviceBuf<f32>>,
    /// The first pass's candidates of a selection whose rows span several chunks (grown, never
    /// shrunk).
    pub(super) select: Option<DeviceBuf<f32>>,
    /// The routed matmul's tables of expert addresses, one per set of experts, uploaded once.
    pub(super) expert_tables: super::moe::ExpertTables,
}

/// A buffer of at least `len` values in `slot`, allocating a larger one (zeroed) when it is
/// too small (counted in the GPU's reallocations: the graph epoch).
pub(super) fn grown<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    gpu: &Arc<GpuState>,
    slot: &'a mut Option<DeviceBuf<T>>,
    len: usize,
) -> Result<&'a mut DeviceBuf<T>, DriverError> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        // Graphs captured with the old buffer's address must not be replayed.
        gpu.reallocated();
        *slot = None;
        *slot = Some(DeviceBuf::new(
            stream.alloc_zeros::<T>(len)?,
            Arc::clone(gpu),
        ));
    }
    slot.as_mut()
        .ok_or(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY))
}

impl CudaBackend {
    /// The reused buffers (a poisoned lock is taken over: they hold no invariant a panic could
    /// break, since every use rewrites what it reads).
    pub(super) fn reused(&self) -> std::sync::MutexGuard<'_, Reused> {
        self.reused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
