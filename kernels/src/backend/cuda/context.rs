//! A GPU's context as the backend must respect it: device buffers that free themselves in their
//! own context ([`DeviceBuf`]), and the one record per GPU of a sticky fault ([`GpuState`]).
//!
//! cudarc frees a `CudaSlice` on drop with `cuMemFreeAsync` in whatever context is current on
//! the dropping thread, and keeps a failure in its context's error slot, from where it surfaces
//! in the next, unrelated call. On a thread driving two GPUs the current context is the other
//! GPU's half of the time, so frees fail (`CUDA_ERROR_INVALID_CONTEXT`) and unrelated calls
//! report it. [`DeviceBuf`] binds its own context before the free and takes the result there.
//!
//! A kernel fault (illegal address, misaligned access, a trap) is sticky: the primary context,
//! shared by every model on that GPU, answers every later call with the same error until the
//! process restarts. [`GpuState`] records the first such error per GPU so that every backend on
//! it refuses work with that reason and the daemon can report the GPU as failed.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaSlice, DriverError, LaunchArgs, PushKernelArg};

/// What the process knows of one GPU beyond its context: whether a sticky fault killed it, and
/// how many frees failed.
#[derive(Debug, Default)]
pub struct GpuState {
    /// The first sticky fault: what failed and the driver's error. Never cleared: the context
    /// stays unusable until the process restarts.
    fault: Mutex<Option<String>>,
    /// Device buffers whose free the driver refused (their memory may be lost until restart).
    free_failures: AtomicU64,
    /// The last refused free, for messages.
    last_free_failure: Mutex<Option<String>>,
    /// Reallocations of the buffers backends on this GPU keep between calls (`reused`): a CUDA
    /// graph captured before one holds a freed address (see `Backend::graph_epoch`).
    reallocations: AtomicU64,
}

/// The most GPUs the registry tracks (ordinals beyond it are refused by the driver anyway).
const MAX_GPUS: usize = 64;

impl GpuState {
    /// The shared state of GPU `ordinal`.
    pub fn of(ordinal: usize) -> Arc<GpuState> {
        static ALL: OnceLock<Vec<Arc<GpuState>>> = OnceLock::new();
        let all = ALL.get_or_init(|| (0..MAX_GPUS).map(|_| Arc::default()).collect());
        Arc::clone(&all[ordinal.min(MAX_GPUS - 1)])
    }

    /// The sticky fault, if the GPU has had one.
    pub fn fault(&self) -> Option<String> {
        self.fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records `e` (from `what`) if it is a sticky fault; the first one is kept. Returns whether
    /// it was one.
    pub fn note(&self, what: &str, e: &DriverError) -> bool {
        if !is_sticky(e.0) {
            return false;
        }
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if fault.is_none() {
            *fault = Some(format!("{what}: {e}"));
        }
        true
    }

    /// Reallocations of kept buffers on this GPU so far.
    pub(super) fn reallocations(&self) -> u64 {
        self.reallocations.load(Ordering::Relaxed)
    }

    /// Counts a reallocation of a kept buffer.
    pub(super) fn reallocated(&self) {
        self.reallocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Frees the driver refused so far, and the last one's error.
    pub(super) fn free_failures(&self) -> (u64, Option<String>) {
        (
            self.free_failures.load(Ordering::Relaxed),
            self.last_free_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    fn free_failed(&self, e: &DriverError) {
        if self.note("freeing device memory", e) {
            return;
        }
        self.free_failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_free_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
    }
}

/// The sticky fault of GPU `ordinal`, if a kernel fault has made its context unusable: the
/// daemon reports the GPU as failed with this reason and refuses new loads there.
pub fn cuda_gpu_fault(ordinal: usize) -> Option<String> {
    GpuState::of(ordinal).fault()
}

/// Whether `code` leaves the context unusable (CUDA's "sticky" errors: the process must
/// restart before the GPU can be used again).
pub fn is_sticky(code: CUresult) -> bool {
    use CUresult::*;
    matches!(
        code,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_CONTEXT_IS_DESTROYED
    )
}

/// A device buffer that frees itself in its own context: on drop it makes its context current,
/// frees, and takes the free's result from the context (a failure is recorded in its GPU's
/// [`GpuState`] instead of surfacing in some later call).
#[derive(Debug)]
pub struct DeviceBuf<T> {
    /// The allocation (taken out only in `drop`).
    slice: ManuallyDrop<CudaSlice<T>>,
    /// Its GPU's state, where a failed free is recorded.
    gpu: Arc<GpuState>,
}

impl<T> DeviceBuf<T> {
    /// Wraps a fresh allocation of GPU `gpu`.
    pub(super) fn new(slice: CudaSlice<T>, gpu: Arc<GpuState>) -> Self {
        DeviceBuf {
            slice: ManuallyDrop::new(slice),
            gpu,
        }
    }
}

impl<T> DeviceBuf<T> {
    /// Its device address, for a table of addresses a kernel takes by value. The backends turn
    /// cudarc's per-buffer event tracking off (see `CudaBackend::with_memory`), so nothing is
    /// recorded for the use.
    pub(super) fn device_address(&self, stream: &Arc<cudarc::driver::CudaStream>) -> u64 {
        let (ptr, _record) = cudarc::driver::DevicePtr::device_ptr(&*self.slice, stream);
        ptr
    }
}

impl<T> Deref for DeviceBuf<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.slice
    }
}

impl<T> DerefMut for DeviceBuf<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}

impl<T> Drop for DeviceBuf<T> {
    fn drop(&mut self) {
        let ctx = Arc::clone(self.slice.context());
        // An error already waiting in the context's slot was left by another drop (cudarc's
        // events and streams keep theirs there too): a failed release all the same.
        if let Err(e) = ctx.check_err() {
            self.gpu.free_failed(&e);
        }
        // SAFETY: `ctx` is the live context the allocation belongs to (the slice holds it).
        let bound = unsafe { cudarc::driver::result::ctx::set_current(ctx.cu_ctx()) };
        // SAFETY: taken exactly once, here, and not used again.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        // cudarc's drop enqueues cuMemFreeAsync on the slice's stream (the context now current)
        // and keeps any error in the context's slot, read just below.
        drop(slice);
        if let Err(e) = bound.and_then(|()| ctx.check_err()) {
            self.gpu.free_failed(&e);
        }
    }
}

// SAFETY: pushes exactly what cudarc's own implementation for `&CudaSlice<T>` pushes (the
// buffer's device address, with its event bookkeeping), borrowing the buffer for the launch.
unsafe impl<'a, 'b: 'a, T> PushKernelArg<&'b DeviceBuf<T>> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b DeviceBuf<T>) -> &mut Self {
        self.arg(&*arg.slice)
    }
}

// SAFETY: as above, for a buffer the kernel writes (cudarc's `&mut CudaSlice<T>`).
unsafe impl<'a, 'b: 'a, T> PushKernelArg<&'b mut DeviceBuf<T>> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b mut DeviceBuf<T>) -> &mut Self {
        self.arg(&mut *arg.slice)
    }
}
