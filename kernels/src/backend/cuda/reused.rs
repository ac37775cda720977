//! The small device buffers a backend keeps between calls ([`Reused`]: positions, Q8_1
//! activations, attention partials, rotated keys and values, expert tables), grown on demand and never shrunk.

use std::sync::{Arc, PoisonError};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaStream, DriverError};

use super::context::GpuState;
use super::{BackendError, CudaBackend, DeviceBuf};

/// Device buffers a backend keeps between calls. Every use is on the backend's one stream, so a
/// buffer rewritten by a later call is only rewritten after the kernels of earlier calls that
/// read it (stream order); the lock only guards the Rust-side bookkeeping.
#[derive(Default)]
pub(super) struct Reused {
    /// Token positions last uploaded (what `positions_dev` holds, in its first values): a forward
    /// pass passes the same positions to rope, the KV store and attention of every layer, so they
    /// cross to the device once per step instead of four times per layer.
    pub(super) positions: Vec<u32>,
    /// The positions on the device (grown, never shrunk).
    pub(super) positions_dev: Option<DeviceBuf<u32>>,
    /// Q8_1-quantized activations of the matrix-vector path (grown, never shrunk).
    pub(super) q8: Option<DeviceBuf<u8>>,
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

    /// `positions` on the device, in the first `positions.len()` values of the returned buffer,
    /// uploaded only when they differ from the last ones (`host`: what `dev` holds).
    pub(super) fn device_positions<'r>(
        &self,
        host: &mut Vec<u32>,
        dev: &'r mut Option<DeviceBuf<u32>>,
        positions: &[u32],
    ) -> Result<&'r DeviceBuf<u32>, BackendError> {
        let stale =
            host.as_slice() != positions || dev.as_ref().is_none_or(|d| d.len() < positions.len());
        if stale {
            // Room for a whole prefill chunk at once, so decode steps never reallocate.
            let buffer = grown(&self.stream, &self.gpu, dev, positions.len().max(512))
                .map_err(|e| self.err("allocating positions", e))?;
            if !positions.is_empty() {
                self.stream
                    .memcpy_htod(positions, &mut buffer.slice_mut(0..positions.len()))
                    .map_err(|e| self.err("uploading positions", e))?;
            }
            host.clear();
            host.extend_from_slice(positions);
        }
        dev.as_ref()
            .ok_or_else(|| self.err_msg("positions buffer missing"))
    }
}
