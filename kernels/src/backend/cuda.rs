//! The CUDA backend: [`Backend`] on one NVIDIA GPU through cudarc, with the kernels of
//! `kernels/cuda/*.cu` embedded as compute_80 PTX (`kernels/cuda/ptx/`, generated and kept
//! fresh by `scripts/check-cuda-kernels`) and JIT-loaded by the driver at start-up.
//!
//! libcuda is loaded at run time (cudarc's `dynamic-loading`), so building and running the binary
//! needs no CUDA toolkit; [`cuda_available`] checks that the driver library is present before any
//! CUDA call (cudarc panics on a missing library) and reports why CUDA cannot be used.
//!
//! By concern, beside this file's `CudaBackend` and its `Backend` implementation (norms, rope,
//! element-wise ops, embedding, the glue of the ops below): [`device`] (is CUDA usable, what is
//! each GPU), `context` (per-GPU context and fault state, device buffers), `modules` (the
//! embedded CUBIN/PTX images and the driver and GPU checks), `types` (which kernels each weight
//! type uses), [`matmul`] (`mmv.cu`, `mmvq.cu`, `gemm.cu`, `mmq.cu`), `fused` (the fused
//! projections), `kv` (`attention.cu`, `kvcache.cu`), `peer` (GPU-to-GPU paths); the tests in
//! `tests` (op by op against the CPU backend), `type_tests`, `shape_tests`, `fused_tests` and
//! `strict_tests` (the strict fake driver's faults), with `gpu_test` their launcher glue.
//!
//! The kernel signatures, launch configurations and host-side preconditions below follow
//! `kernels/cuda/README.md`. Every GGUF weight type llama.cpp reads has kernels ([`types`]: which
//! kernels each type uses); `matmul` is [`matmul`]'s: decode runs the matrix-vector kernels
//! (activations quantized to Q8_1 first for block-quantized weights), prefill one matrix-matrix
//! product on tensor cores with weight tiles dequantized to f16.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError,
    LaunchConfig, PushKernelArg,
};

use super::{
    check_len, check_rope, shape, ActivationsLocation, AttentionParams, Backend, BackendError,
    BytesAt, DeviceActivations, DeviceBytes, DeviceMemory, GatedActivation, HostStaging,
    HostTensor, KvShape, KvTypes, KvView, Lease, QkvParams, RopeMode, RopeParams, WeightView,
};
use crate::quant::GgmlType;

mod context;
mod device;
mod fused;
#[cfg(test)]
mod fused_tests;
#[cfg(test)]
mod gpu_test;
mod kv;
mod matmul;
mod modules;
mod peer;
#[cfg(test)]
mod shape_tests;
#[cfg(test)]
mod strict_tests;
#[cfg(test)]
mod type_tests;
mod types;

use context::GpuState;
pub use context::{cuda_gpu_fault, DeviceBuf};
pub use device::{cuda_available, cuda_device_info, normalize_pci_bus_id, CudaDeviceInfo};
pub use kv::CudaKv;
pub use modules::{check_compute_capability, check_driver, ModuleImage, MIN_DRIVER_RELEASE};
pub use peer::{cuda_peer_paths, PeerPath};

use matmul::GEMM_SCRATCH_FLOATS;
#[cfg(test)]
use matmul::GEMM_TILE;
use types::cuda_type;

/// The kernels fetched from each kernel file ([`modules::FILES`]) besides its per-type ones
/// ([`types::type_kernels`]).
const MODULE_KERNELS: &[(&str, &[&str])] = &[
    ("attention", kv::ATTENTION_KERNELS),
    ("dequantize", &[]),
    (
        "elementwise",
        &[
            "geglu_f32",
            "swiglu_f32",
            "add_f32",
            "scale_f32",
            "add_bias_f32",
            "softcap_f32",
            "glu_q8_1",
        ],
    ),
    ("gemm", &["gemm_f32_nt", "gemm_f16_tc", "gemm_bf16_tc"]),
    ("getrows", &[]),
    ("kvcache", kv::KVCACHE_KERNELS),
    ("mmq", &[]),
    ("mmv", &[]),
    ("mmvq", &[]),
    ("norm", &["rms_norm_f32", "rms_norm_q8_1"]),
    (
        "quantize",
        &[
            "quantize_q8_1",
            "quantize_mmq",
            "convert_f32_to_f16_rows",
            "convert_f32_to_bf16",
        ],
    ),
    ("rope", &["rope_f32", "rope_store_f16"]),
];

/// Largest `head_dim` the attention kernels support.
const MAX_HEAD_DIM: usize = 256;
/// Largest grid y/z extent.
const MAX_GRID_YZ: usize = 65_535;
/// Page-locked host memory for activations crossing to and from a GPU: copies from it run as
/// direct DMA instead of through the driver's own staging buffer. Its values are handed out
/// without a wait (see [`HostStaging::values`]: the callers order the transfers).
struct PinnedStaging {
    /// The allocation (freed on drop).
    slice: cudarc::driver::PinnedHostSlice<f32>,
    /// Its first value, taken once at allocation (cudarc's accessors wait on an event per call).
    ptr: *mut f32,
}

// SAFETY: the memory is owned by `slice` (page-locked host memory, valid from any thread until
// freed) and only reached through `&mut self`, so moving the owner between threads is sound.
unsafe impl Send for PinnedStaging {}

impl HostStaging for PinnedStaging {
    fn values(&mut self) -> Result<&mut [f32], BackendError> {
        // SAFETY: `ptr` points at `slice.len()` f32 values of the live allocation `slice`
        // owns, zeroed at allocation; the exclusive borrow of `self` is the only way to them.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.slice.len()) })
    }

    fn len(&self) -> usize {
        self.slice.len()
    }
}

/// A weight resident on the GPU: its raw GGML bytes as uploaded, with type and shape.
#[derive(Debug)]
pub struct CudaWeight {
    /// The tensor's name.
    name: String,
    /// Element type.
    ty: GgmlType,
    /// Rows.
    rows: usize,
    /// Elements per row.
    cols: usize,
    /// The bytes, `rows * ty.row_bytes(cols)`.
    data: DeviceBuf<u8>,
    /// The bytes charged to the budget.
    lease: Lease,
}

/// A CUDA device: one context (the device's primary context) and one stream of its own, so the
/// same GPU may be opened twice as two devices.
pub struct CudaBackend {
    name: String,
    ordinal: usize,
    /// What the process knows of this GPU (a sticky fault, failed frees), shared by every
    /// backend on it.
    gpu: Arc<GpuState>,
    /// How each kernel file was loaded (CUBIN or PTX), in [`MODULE_KERNELS`] order.
    images: Vec<ModuleImage>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    ledger: Arc<DeviceMemory>,
    /// Most f32 values of the dequantized weight tile of the GEMM path ([`GEMM_SCRATCH_FLOATS`];
    /// the tests lower it so that small weights take several tiles).
    gemm_scratch_floats: usize,
    /// Small device buffers reused across calls instead of allocated (and zeroed) per call.
    reused: Mutex<Reused>,
}

/// Device buffers a backend keeps between calls. Every use is on the backend's one stream, so a
/// buffer rewritten by a later call is only rewritten after the kernels of earlier calls that
/// read it (stream order); the lock only guards the Rust-side bookkeeping.
#[derive(Default)]
struct Reused {
    /// Token positions last uploaded (what `positions_dev` holds, in its first values): a forward
    /// pass passes the same positions to rope, the KV store and attention of every layer, so they
    /// cross to the device once per step instead of four times per layer.
    positions: Vec<u32>,
    /// The positions on the device (grown, never shrunk).
    positions_dev: Option<DeviceBuf<u32>>,
    /// Q8_1-quantized activations of the matrix-vector path (grown, never shrunk).
    q8: Option<DeviceBuf<u8>>,
    /// Partial results of split decode attention (grown, never shrunk).
    partials: Option<DeviceBuf<f32>>,
    /// Keys, values or queries rotated for a quantized KV cache (grown, never shrunk).
    rotated: Option<DeviceBuf<f32>>,
}

/// A buffer of at least `len` values in `slot`, allocating a larger one (zeroed) when it is
/// too small.
fn grown<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    gpu: &Arc<GpuState>,
    slot: &'a mut Option<DeviceBuf<T>>,
    len: usize,
) -> Result<&'a mut DeviceBuf<T>, DriverError> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None;
        *slot = Some(DeviceBuf::new(
            stream.alloc_zeros::<T>(len)?,
            Arc::clone(gpu),
        ));
    }
    slot.as_mut()
        .ok_or(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY))
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("name", &self.name)
            .field("ordinal", &self.ordinal)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

/// Blocks needed to cover `n` items at `per_block` items per block (at least one).
fn blocks_for(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: 0,
    }
}

fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| shape(op, format!("{what} = {v} exceeds the kernels' int range")))
}

fn grid_yz(op: &'static str, what: &str, v: usize) -> Result<u32, BackendError> {
    if v == 0 || v > MAX_GRID_YZ {
        return Err(shape(op, format!("{what} = {v} outside 1..={MAX_GRID_YZ}")));
    }
    Ok(v as u32)
}

impl CudaBackend {
    /// Opens GPU `ordinal` as the device called `name` (`cuda:0`) with a budget of `budget`
    /// bytes for weights and KV caches, and loads every kernel module (the driver JIT-compiles
    /// the PTX on first use and caches the result).
    pub fn new(name: impl Into<String>, ordinal: usize, budget: u64) -> Result<Self, BackendError> {
        Self::with_memory(name, ordinal, DeviceMemory::new(budget))
    }

    /// Opens GPU `ordinal` as the device called `name`, charging weights and KV caches to
    /// `ledger` (shared by every model on the device, so their budgets add up), and loads every
    /// kernel module. Several backends may open the same GPU: each has its own stream.
    pub fn with_memory(
        name: impl Into<String>,
        ordinal: usize,
        ledger: Arc<DeviceMemory>,
    ) -> Result<Self, BackendError> {
        let name = name.into();
        let device_err = |message: String| BackendError::Device {
            device: name.clone(),
            message,
        };
        let count = cuda_available().map_err(|reason| device_err(reason.clone()))?;
        if ordinal >= count {
            return Err(device_err(format!(
                "no CUDA device {ordinal}: the driver reports {count}"
            )));
        }
        if let Some(fault) = GpuState::of(ordinal).fault() {
            return Err(device_err(format!(
                "GPU {ordinal} failed ({fault}); it cannot be used until llmd restarts"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| device_err(format!("creating a context: {e}")))?;
        // cudarc records a CUDA event on every buffer at every launch to order streams that
        // share buffers: several microseconds per kernel, thousands of kernels per decoded token.
        // No buffer here crosses streams: each backend allocates, uses and frees its buffers on
        // its own stream only (pipeline stages exchange activations through host memory, and
        // stream-ordered frees run after the last use on that stream), so tracking is not needed.
        // SAFETY: turning tracking off is sound when no buffer is used by two streams, which
        // holds for every buffer of every `CudaBackend` (the only users of this context here).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| device_err(format!("creating a stream: {e}")))?;
        // Copies to and from the other GPUs in use go peer to peer where the hardware allows.
        peer::connect(&ctx);
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| device_err(format!("asking for the compute capability: {e}")))?;
        let gpu_name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        check_compute_capability(&gpu_name, (major, minor)).map_err(device_err)?;
        let mut functions = HashMap::new();
        let mut images = Vec::new();
        for &(file, names) in MODULE_KERNELS {
            let compiled = modules::FILES
                .iter()
                .find(|f| f.name == file)
                .ok_or_else(|| device_err(format!("kernel file {file} is not embedded")))?;
            let (module, image) =
                modules::load(&ctx, compiled, major * 10 + minor).map_err(device_err)?;
            images.push(image);
            let per_type = types::type_kernels(file);
            for kernel in names.iter().map(|n| n.to_string()).chain(per_type) {
                let function = module
                    .load_function(&kernel)
                    .map_err(|e| device_err(format!("kernel {kernel} in {file}.ptx: {e}")))?;
                functions.insert(kernel, function);
            }
        }
        Ok(CudaBackend {
            name,
            ordinal,
            images,
            gpu: GpuState::of(ordinal),
            stream,
            functions,
            ledger,
            gemm_scratch_floats: GEMM_SCRATCH_FLOATS,
            reused: Mutex::new(Reused::default()),
        })
    }

    /// The GPU's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// How each kernel file was loaded: the CUBIN for this GPU's architecture, or the PTX.
    pub fn module_images(&self) -> &[ModuleImage] {
        &self.images
    }

    /// Device buffers of this GPU whose free the driver refused, and the last refusal.
    pub fn free_failures(&self) -> (u64, Option<String>) {
        self.gpu.free_failures()
    }

    /// Bytes of weights and KV caches currently held.
    pub fn used_bytes(&self) -> u64 {
        self.ledger.used()
    }

    /// The memory budget.
    pub fn budget_bytes(&self) -> u64 {
        self.ledger.budget()
    }

    fn charge(&self, what: &str, bytes: u64) -> Result<Lease, BackendError> {
        self.ledger.charge(&self.name, what, bytes)
    }

    /// A driver error of `what`. A sticky fault is recorded for the GPU (every backend on it
    /// then refuses work with that reason) and said to be one.
    fn err(&self, what: &str, e: DriverError) -> BackendError {
        self.gpu.note(&format!("{} ({what})", self.name), &e);
        let message = match self.gpu.fault() {
            Some(fault) => format!(
                "{what}: {e}; GPU {} failed ({fault}): its context is unusable until llmd \
                 restarts",
                self.ordinal
            ),
            None => format!("{what}: {e}"),
        };
        BackendError::Device {
            device: self.name.clone(),
            message,
        }
    }

    /// A device buffer of this GPU around a fresh allocation.
    fn wrap<T>(&self, slice: CudaSlice<T>) -> DeviceBuf<T> {
        DeviceBuf::new(slice, Arc::clone(&self.gpu))
    }

    /// An allocation's error: the driver running out of memory becomes `OutOfMemory` (the load
    /// is refused as not fitting), saying that the GPU had less free memory than its budget.
    fn alloc_err(&self, what: &str, bytes: u64, e: DriverError) -> BackendError {
        if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            BackendError::OutOfMemory {
                device: self.name.clone(),
                what: format!(
                    "{what} (the GPU has less free memory than the budget allows: another \
                     process may be using it; lower memory_budget)"
                ),
                bytes,
            }
        } else {
            self.err(what, e)
        }
    }

    fn function(&self, name: &str) -> Result<&CudaFunction, BackendError> {
        self.functions
            .get(name)
            .ok_or_else(|| BackendError::Device {
                device: self.name.clone(),
                message: format!("kernel {name} is not loaded"),
            })
    }

    fn unsupported(&self, w: &CudaWeight) -> BackendError {
        BackendError::UnsupportedType {
            device: self.name.clone(),
            ty: w.ty,
            tensor: w.name.clone(),
        }
    }

    /// The f32 values of a 1-row (or `len`-element) F32 weight, for norms and biases.
    fn f32_vector<'w>(
        &self,
        op: &'static str,
        w: &'w CudaWeight,
        len: usize,
    ) -> Result<&'w DeviceBuf<u8>, BackendError> {
        if w.ty != GgmlType::F32 {
            return Err(self.unsupported(w));
        }
        if w.rows * w.cols != len {
            return Err(shape(
                op,
                format!("{} has {} values, need {len}", w.name, w.rows * w.cols),
            ));
        }
        Ok(&w.data)
    }

    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        what: &str,
        len: usize,
    ) -> Result<DeviceBuf<T>, BackendError> {
        let bytes = (len.max(1) * std::mem::size_of::<T>()) as u64;
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map(|s| self.wrap(s))
            .map_err(|e| self.alloc_err(what, bytes, e))
    }

    /// Refuses weight types the kernels do not handle.
    fn check_type(&self, name: &str, ty: GgmlType) -> Result<(), BackendError> {
        if cuda_type(ty).is_none() {
            return Err(BackendError::UnsupportedType {
                device: self.name.clone(),
                ty,
                tensor: name.to_string(),
            });
        }
        Ok(())
    }

    /// The first `len` values of `buf` as bytes another device can copy, once the work queued
    /// on this device's stream (which may still write them) has finished.
    fn bytes_of<'a, T: cudarc::driver::DeviceRepr>(
        &'a self,
        buf: &'a CudaSlice<T>,
        len: usize,
    ) -> Result<DeviceBytes<'a>, BackendError> {
        check_len("view", buf.len(), len)?;
        self.stream
            .synchronize()
            .map_err(|e| self.err("finishing work before a copy", e))?;
        let (ptr, _record) = buf.device_ptr(&self.stream);
        Ok(DeviceBytes {
            device: &self.name,
            len: len * std::mem::size_of::<T>(),
            at: BytesAt::Cuda {
                ctx: self.stream.context(),
                ptr,
            },
        })
    }

    /// Copies `src` into the start of `dst` and waits for the copy, so that `src` may be freed
    /// as soon as this returns.
    fn copy_in<T: cudarc::driver::DeviceRepr>(
        &self,
        dst: &mut cudarc::driver::CudaViewMut<'_, T>,
        src: &DeviceBytes<'_>,
        what: &str,
    ) -> Result<(), BackendError> {
        // A CPU weight held packed is unpacked into GGUF's layout on the host first.
        let unpacked;
        let src = if let BytesAt::HostPacked { .. } = src.at {
            let mut host = vec![0u8; src.len];
            src.read_into(&mut host)?;
            unpacked = host;
            &DeviceBytes::host(src.device, &unpacked)
        } else {
            src
        };
        // SAFETY: `src` borrows its allocation (or host memory) for this whole call, and its
        // owner finished writing it before lending it; the copy has run when `synchronize`
        // returns, before the borrow ends.
        unsafe { self.enqueue_copy_in(dst, src, what) }?;
        self.stream
            .synchronize()
            .map_err(|e| self.err(&format!("copying {what} from {}", src.device), e))
    }

    /// Enqueues on this stream a copy of `src` into the start of `dst`: host to device, device to
    /// device within this context, or peer to peer from another GPU's context (the driver
    /// staging through the host where P2P is not possible).
    ///
    /// # Safety
    /// `src` must stay valid and unwritten until the copy has run on this stream.
    unsafe fn enqueue_copy_in<T: cudarc::driver::DeviceRepr>(
        &self,
        dst: &mut cudarc::driver::CudaViewMut<'_, T>,
        src: &DeviceBytes<'_>,
        what: &str,
    ) -> Result<(), BackendError> {
        let room = dst.len() * std::mem::size_of::<T>();
        if src.len > room {
            return Err(shape(
                "copy",
                format!("{} bytes of {what} into {room}", src.len),
            ));
        }
        if src.len == 0 {
            return Ok(());
        }
        let here = self.stream.context();
        here.bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        let stream = self.stream.cu_stream();
        let (dst_ptr, _record) = dst.device_ptr_mut(&self.stream);
        let copied = match src.at {
            // SAFETY: `dst` holds at least `src.len` bytes (checked); the host slice is valid
            // for the copy (the caller's contract).
            BytesAt::Host(bytes) => unsafe {
                cudarc::driver::result::memcpy_htod_async(dst_ptr, bytes, stream)
            },
            // `copy_in` unpacks these first; an asynchronous copy has nowhere to unpack them.
            BytesAt::HostPacked { .. } => {
                return Err(shape(
                    "copy",
                    format!("packed {what} from {} need a synchronous copy", src.device),
                ))
            }
            // SAFETY: both addresses are live allocations of this context, `dst` large enough.
            BytesAt::Cuda { ctx, ptr } if ctx.cu_ctx() == here.cu_ctx() => unsafe {
                cudarc::driver::result::memcpy_dtod_async(dst_ptr, ptr, src.len, stream)
            },
            // SAFETY: as above across contexts; `ctx` outlives the borrow of `src`.
            BytesAt::Cuda { ctx, ptr } => unsafe {
                cudarc::driver::result::memcpy_peer_async(
                    here.cu_ctx(),
                    dst_ptr,
                    ctx.cu_ctx(),
                    ptr,
                    src.len,
                    stream,
                )
            },
        };
        copied.map_err(|e| {
            self.err(
                &format!("copying {what} from {} to {}", src.device, self.name),
                e,
            )
        })
    }

    /// The reused buffers (a poisoned lock is taken over: they hold no invariant a panic could
    /// break, since every use rewrites what it reads).
    fn reused(&self) -> std::sync::MutexGuard<'_, Reused> {
        self.reused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `positions` on the device, in the first `positions.len()` values of the returned buffer,
    /// uploaded only when they differ from the last ones (`host`: what `dev` holds).
    fn device_positions<'r>(
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

    fn err_msg(&self, message: &str) -> BackendError {
        BackendError::Device {
            device: self.name.clone(),
            message: message.to_string(),
        }
    }

    /// Checks the shapes of an RMS norm and returns the weight's values and `dim` as an int.
    fn rms_norm_args<'w>(
        &self,
        x_len: usize,
        weight: &'w CudaWeight,
        n_rows: usize,
        dim: usize,
    ) -> Result<(&'w DeviceBuf<u8>, i32), BackendError> {
        const OP: &str = "rms_norm";
        check_len(OP, x_len, n_rows * dim)?;
        let w = self.f32_vector(OP, weight, dim)?;
        Ok((w, to_i32(OP, "dim", dim)?))
    }
}

impl Backend for CudaBackend {
    type Activations = DeviceBuf<f32>;
    type Weight = CudaWeight;
    type KvCache = CudaKv;

    fn device_name(&self) -> &str {
        &self.name
    }

    fn upload_weight(&self, t: &HostTensor<'_>) -> Result<CudaWeight, BackendError> {
        t.check_size()?;
        self.check_type(t.name, t.ty)?;
        let lease = self.charge(t.name, t.data.len() as u64)?;
        let data = self
            .stream
            .clone_htod(t.data)
            .map(|s| self.wrap(s))
            .map_err(|e| self.alloc_err(t.name, t.data.len() as u64, e))?;
        Ok(CudaWeight {
            name: t.name.to_string(),
            ty: t.ty,
            rows: t.rows,
            cols: t.cols,
            data,
            lease,
        })
    }

    fn weight_bytes(&self, weight: &CudaWeight) -> u64 {
        weight.lease.bytes()
    }

    fn weight_view<'a>(&'a self, w: &'a CudaWeight) -> Result<WeightView<'a>, BackendError> {
        Ok(WeightView {
            name: &w.name,
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            bytes: self.bytes_of(&w.data, w.data.len())?,
        })
    }

    fn import_cost(&self, src: &WeightView<'_>) -> u64 {
        src.bytes.len as u64
    }

    fn import_weight(&self, src: &WeightView<'_>) -> Result<CudaWeight, BackendError> {
        let len = src.bytes.len;
        src.check_size()?;
        self.check_type(src.name, src.ty)?;
        let lease = self.charge(src.name, len as u64)?;
        let mut data = self.alloc::<u8>(src.name, len)?;
        self.copy_in(&mut data.slice_mut(..), &src.bytes, src.name)?;
        Ok(CudaWeight {
            name: src.name.to_string(),
            ty: src.ty,
            rows: src.rows,
            cols: src.cols,
            data,
            lease,
        })
    }

    fn alloc_activations(&self, len: usize) -> Result<DeviceBuf<f32>, BackendError> {
        self.alloc("activations", len)
    }

    fn write_activations(&self, dst: &mut DeviceBuf<f32>, src: &[f32]) -> Result<(), BackendError> {
        check_len("write_activations", dst.len(), src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_htod(src, &mut dst.slice_mut(0..src.len()))
            .map_err(|e| self.err("writing activations", e))
    }

    fn read_activations(&self, src: &DeviceBuf<f32>, dst: &mut [f32]) -> Result<(), BackendError> {
        check_len("read_activations", src.len(), dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_dtoh(&src.slice(0..dst.len()), dst)
            .map_err(|e| self.err("reading activations", e))?;
        self.stream
            .synchronize()
            .map_err(|e| self.err("reading activations", e))
    }

    fn matmuls(
        &self,
        ws: &[&CudaWeight],
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        outs: &mut [&mut DeviceBuf<f32>],
    ) -> Result<(), BackendError> {
        self.matmuls_on_device(ws, x, n_tokens, outs)
    }

    fn norm_matmuls(
        &self,
        x: &DeviceBuf<f32>,
        norm: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        normed: &mut DeviceBuf<f32>,
        ws: &[&CudaWeight],
        outs: &mut [&mut DeviceBuf<f32>],
    ) -> Result<(), BackendError> {
        self.norm_matmuls_on_device(x, norm, n_rows, dim, eps, normed, ws, outs)
    }

    fn matmul_residual(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        width: usize,
        post_norm: Option<(&CudaWeight, f32)>,
        scratch: &mut DeviceBuf<f32>,
        residual: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.matmul_residual_on_device(w, x, n_tokens, width, post_norm, scratch, residual)
    }

    fn gated_matmul_residual(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        ff: usize,
        act: GatedActivation,
        w: &CudaWeight,
        n_tokens: usize,
        width: usize,
        post_norm: Option<(&CudaWeight, f32)>,
        scratch: &mut DeviceBuf<f32>,
        residual: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.gated_matmul_residual_on_device(
            gate, up, ff, act, w, n_tokens, width, post_norm, scratch, residual,
        )
    }

    fn rope_store(
        &self,
        q: &mut DeviceBuf<f32>,
        k: &mut DeviceBuf<f32>,
        v: &mut DeviceBuf<f32>,
        positions: &[u32],
        p: &QkvParams<'_, CudaWeight>,
        caches: &mut [(&mut CudaKv, std::ops::Range<usize>)],
    ) -> Result<(), BackendError> {
        self.rope_store_on_device(q, k, v, positions, p, caches)
    }

    fn gather_rows(
        &self,
        src: &DeviceBuf<f32>,
        rows: &[u32],
        width: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "gather_rows";
        check_len(OP, out.len(), rows.len() * width)?;
        let mut i = 0;
        while i < rows.len() {
            // A run of consecutive source rows is one device-to-device copy (decode: one).
            let first = rows[i] as usize;
            let mut n = 1;
            while i + n < rows.len() && rows[i + n] as usize == first + n {
                n += 1;
            }
            check_len(OP, src.len(), (first + n) * width)?;
            self.stream
                .memcpy_dtod(
                    &src.slice(first * width..(first + n) * width),
                    &mut out.slice_mut(i * width..(i + n) * width),
                )
                .map_err(|e| self.err("gathering rows", e))?;
            i += n;
        }
        Ok(())
    }

    fn embed(
        &self,
        table: &CudaWeight,
        ids: &[u32],
        scale: f32,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "embed";
        let t = cuda_type(table.ty).ok_or_else(|| self.unsupported(table))?;
        if !table.cols.is_multiple_of(8) {
            return Err(shape(
                OP,
                format!("{} columns, need a multiple of 8", table.cols),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(shape(
                OP,
                format!("token id {bad} beyond {} rows", table.rows),
            ));
        }
        check_len(OP, out.len(), ids.len() * table.cols)?;
        if ids.is_empty() {
            return Ok(());
        }
        let n = grid_yz(OP, "tokens", ids.len())?;
        let cols = to_i32(OP, "cols", table.cols)?;
        let ids_dev = self
            .stream
            .clone_htod(ids)
            .map(|s| self.wrap(s))
            .map_err(|e| self.err("uploading token ids", e))?;
        let name = format!("get_rows_{}", t.suffix);
        let f = self.function(&name)?;
        let mut launch = self.stream.launch_builder(f);
        launch
            .arg(&table.data)
            .arg(&ids_dev)
            .arg(out)
            .arg(&cols)
            .arg(&scale);
        // SAFETY: get_rows_<type>(const void* table, const u32* ids, float* out, int cols,
        // float scale) over (ceil(cols/8/256), n_tokens) blocks of 256 reads rows ids[t] < rows
        // of the table (checked) and writes n_tokens * cols values of out (length checked).
        unsafe { launch.launch(cfg((blocks_for(table.cols, 8 * 256), n, 1), (256, 1, 1))) }
            .map_err(|e| self.err(&name, e))?;
        Ok(())
    }

    fn matmul(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.matmul_on_device(w, x, n_tokens, out)
    }

    fn add_bias(
        &self,
        x: &mut DeviceBuf<f32>,
        bias: &CudaWeight,
        n_tokens: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "add_bias";
        let width = bias.rows * bias.cols;
        let b = self.f32_vector(OP, bias, width)?;
        let n = n_tokens * width;
        check_len(OP, x.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let width_i = to_i32(OP, "width", width)?;
        let n_i64 = n as i64;
        let mut launch = self.stream.launch_builder(self.function("add_bias_f32")?);
        launch.arg(x).arg(b).arg(&width_i).arg(&n_i64);
        // SAFETY: add_bias_f32(float* x, const float* bias, int width, i64 n) over ceil(n/256)
        // blocks of 256 updates n values of x (checked) reading width values of bias (checked).
        unsafe { launch.launch(cfg((blocks_for(n, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("add_bias_f32", e))?;
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &mut DeviceBuf<f32>,
        weight: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), BackendError> {
        let (w, dim_i) = self.rms_norm_args(x.len(), weight, n_rows, dim)?;
        if n_rows == 0 {
            return Ok(());
        }
        let rows = u32::try_from(n_rows).map_err(|_| shape("rms_norm", "too many rows".into()))?;
        // The kernel is given x as both input and output (it allows out == x).
        let (ptr, _record) = x.device_ptr_mut(&self.stream);
        let mut launch = self.stream.launch_builder(self.function("rms_norm_f32")?);
        launch.arg(&ptr).arg(w).arg(&ptr).arg(&dim_i).arg(&eps);
        // SAFETY: rms_norm_f32(const float* x, const float* weight, float* out, int dim, float
        // eps) with n_rows blocks of 256 reads and writes n_rows*dim values at `ptr` (x's
        // length checked; each block reads its row fully before writing it, so out == x is
        // allowed) and reads dim weights (checked). `_record` orders the launch on the stream.
        unsafe { launch.launch(cfg((rows, 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("rms_norm_f32", e))?;
        Ok(())
    }

    fn rms_norm_into(
        &self,
        x: &DeviceBuf<f32>,
        weight: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        let (w, dim_i) = self.rms_norm_args(x.len(), weight, n_rows, dim)?;
        check_len("rms_norm", out.len(), n_rows * dim)?;
        if n_rows == 0 {
            return Ok(());
        }
        let rows = u32::try_from(n_rows).map_err(|_| shape("rms_norm", "too many rows".into()))?;
        let mut launch = self.stream.launch_builder(self.function("rms_norm_f32")?);
        launch.arg(x).arg(w).arg(out).arg(&dim_i).arg(&eps);
        // SAFETY: rms_norm_f32 with n_rows blocks of 256 reads n_rows*dim values of x and dim
        // weights and writes n_rows*dim values of out; all lengths were checked.
        unsafe { launch.launch(cfg((rows, 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("rms_norm_f32", e))?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut DeviceBuf<f32>,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        p: RopeParams,
        freq_factors: Option<&CudaWeight>,
    ) -> Result<(), BackendError> {
        const OP: &str = "rope";
        if positions.len() != n_tokens {
            return Err(shape(
                OP,
                format!("{} positions for {n_tokens} tokens", positions.len()),
            ));
        }
        if let Some(f) = freq_factors.filter(|f| f.ty != GgmlType::F32) {
            return Err(self.unsupported(f));
        }
        check_rope(&p, head_dim, freq_factors.map(|f| f.rows * f.cols))?;
        check_len(OP, x.len(), n_tokens * n_heads * head_dim)?;
        if n_tokens == 0 || n_heads == 0 {
            return Ok(());
        }
        let heads = u32::try_from(n_heads).map_err(|_| shape(OP, "too many heads".into()))?;
        let ny = grid_yz(OP, "n_tokens", n_tokens)?;
        let heads_i = to_i32(OP, "n_heads", n_heads)?;
        let hd = to_i32(OP, "head_dim", head_dim)?;
        let nd = to_i32(OP, "n_dims", p.n_dims)?;
        let neox: i32 = (p.mode == RopeMode::Neox).into();
        let [corr_low, corr_high] = p.corr_dims();
        let no_factors: u64 = 0;
        let mut reused = self.reused();
        let Reused {
            positions: on_device,
            positions_dev,
            ..
        } = &mut *reused;
        let pos = self.device_positions(on_device, positions_dev, positions)?;
        let mut launch = self.stream.launch_builder(self.function("rope_f32")?);
        launch.arg(x).arg(pos);
        match freq_factors {
            Some(f) => launch.arg(&f.data),
            None => launch.arg(&no_factors),
        };
        launch
            .arg(&heads_i)
            .arg(&hd)
            .arg(&nd)
            .arg(&p.freq_base)
            .arg(&p.freq_scale)
            .arg(&p.ext_factor)
            .arg(&p.attn_factor)
            .arg(&corr_low)
            .arg(&corr_high)
            .arg(&neox);
        // SAFETY: rope_f32(float* x, const u32* positions, const float* freq_factors, int
        // n_heads, int head_dim, int n_dims, float freq_base, float freq_scale, float ext_factor,
        // float attn_factor, float corr_low, float corr_high, int neox) over (n_heads, n_tokens)
        // blocks of 64 rotates n_tokens*n_heads*head_dim values of x (checked) using n_tokens
        // positions (checked) and, when not null, n_dims/2 f32 frequency factors (an F32 weight
        // of at least that many values, checked); n_dims is even and <= head_dim.
        unsafe { launch.launch(cfg((heads, ny, 1), (64, 1, 1))) }
            .map_err(|e| self.err("rope_f32", e))?;
        Ok(())
    }

    fn softcap(&self, x: &mut DeviceBuf<f32>, cap: f32, len: usize) -> Result<(), BackendError> {
        check_len("softcap", x.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function("softcap_f32")?);
        launch.arg(x).arg(&cap).arg(&n);
        // SAFETY: softcap_f32(float* x, float cap, i64 n) over ceil(n/256) blocks of 256
        // rewrites n values of x (length checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("softcap_f32", e))?;
        Ok(())
    }

    fn add(
        &self,
        dst: &mut DeviceBuf<f32>,
        src: &DeviceBuf<f32>,
        len: usize,
    ) -> Result<(), BackendError> {
        check_len("add", dst.len(), len)?;
        check_len("add", src.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function("add_f32")?);
        launch.arg(dst).arg(src).arg(&n);
        // SAFETY: add_f32(float* dst, const float* src, i64 n) over ceil(n/256) blocks of 256
        // touches n values of each buffer (both lengths checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("add_f32", e))?;
        Ok(())
    }

    fn scale(&self, x: &mut DeviceBuf<f32>, factor: f32, len: usize) -> Result<(), BackendError> {
        check_len("scale", x.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function("scale_f32")?);
        launch.arg(x).arg(&factor).arg(&n);
        // SAFETY: scale_f32(float* x, float factor, i64 n) over ceil(n/256) blocks of 256
        // scales n values of x (length checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("scale_f32", e))?;
        Ok(())
    }

    fn gated_activation(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        len: usize,
        act: GatedActivation,
    ) -> Result<(), BackendError> {
        check_len("gated_activation", gate.len(), len)?;
        check_len("gated_activation", up.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let name = match act {
            GatedActivation::Silu => "swiglu_f32",
            GatedActivation::Gelu => "geglu_f32",
        };
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function(name)?);
        launch.arg(gate).arg(up).arg(&n);
        // SAFETY: geglu_f32/swiglu_f32(float* gate, const float* up, i64 n) over ceil(n/256)
        // blocks of 256 touch n values of each buffer (both lengths checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }

    fn alloc_kv(
        &self,
        capacity: usize,
        n_kv_heads: usize,
        head_dim: usize,
        types: KvTypes,
    ) -> Result<CudaKv, BackendError> {
        self.new_kv(capacity, n_kv_heads, head_dim, types)
    }

    fn kv_bytes(&self, kv: &CudaKv) -> u64 {
        kv.bytes()
    }

    fn kv_store(
        &self,
        kv: &mut CudaKv,
        k: &DeviceBuf<f32>,
        v: &DeviceBuf<f32>,
        first_row: usize,
        positions: &[u32],
    ) -> Result<(), BackendError> {
        self.store_kv(kv, k, v, first_row, positions)
    }

    fn attention(
        &self,
        q: &DeviceBuf<f32>,
        kv: &CudaKv,
        first_row: usize,
        positions: &[u32],
        p: AttentionParams,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.attend_kv(q, kv, first_row, positions, p, out)
    }

    fn handoff_kind(&self) -> Option<&'static str> {
        Some("cuda")
    }

    fn export_activations(
        &self,
        a: &DeviceBuf<f32>,
        len: usize,
    ) -> Result<Option<DeviceActivations>, BackendError> {
        check_len("export_activations", a.len(), len)?;
        // No host wait: the importer's stream waits for this event, recorded after the writes.
        let ready = self
            .stream
            .record_event(None)
            .map_err(|e| self.err("recording the end of a stage", e))?;
        let (ptr, _record) = a.device_ptr(&self.stream);
        Ok(Some(DeviceActivations {
            kind: "cuda",
            device: self.name.clone(),
            len,
            location: ActivationsLocation::Cuda {
                ctx: Arc::clone(self.stream.context()),
                ptr,
                stream: Arc::clone(&self.stream),
                ready: Arc::new(ready),
            },
        }))
    }

    fn import_activations(
        &self,
        dst: &mut DeviceBuf<f32>,
        src: &DeviceActivations,
    ) -> Result<bool, BackendError> {
        let ActivationsLocation::Cuda {
            ctx,
            ptr,
            stream: producer,
            ready,
        } = &src.location;
        if src.kind != "cuda" {
            return Ok(false);
        }
        check_len("import_activations", dst.len(), src.len)?;
        if src.len == 0 {
            return Ok(true);
        }
        let from = DeviceBytes {
            device: &src.device,
            len: src.len * std::mem::size_of::<f32>(),
            at: BytesAt::Cuda { ctx, ptr: *ptr },
        };
        // The copy runs after the producer's writes ...
        self.stream
            .wait(ready)
            .map_err(|e| self.err("waiting for the previous stage", e))?;
        // SAFETY: the exporting stage's buffer holds `len` values; this stream waits for the
        // event recorded after the writes, and the producer's stream waits (below) for the copy
        // before it writes the buffer again. `ctx` is kept alive by `src`; `dst` holds at least
        // `len` values (checked).
        unsafe { self.enqueue_copy_in(&mut dst.slice_mut(..), &from, "activations") }?;
        // ... and before the producer writes its buffer again.
        let copied = self
            .stream
            .record_event(None)
            .map_err(|e| self.err("recording the activations' copy", e))?;
        let waited = producer.wait(&copied);
        // Back in this backend's context for what follows.
        self.stream
            .context()
            .bind_to_thread()
            .and(waited)
            .map_err(|e| self.err("ordering the previous stage after the copy", e))?;
        Ok(true)
    }

    fn alloc_host_staging(&self, len: usize) -> Option<Result<Box<dyn HostStaging>, BackendError>> {
        // SAFETY: the allocation's contents are unspecified until written; `PinnedStaging`
        // zeroes them before handing them out. PORTABLE: the pipeline's one staging buffer is
        // copied from and to by every GPU stage, and only portable memory is page-locked for
        // the contexts of the GPUs other than the allocating one (the others would fall back
        // to staged, pageable copies). Not write-combined: the host reads these values back.
        let pinned = unsafe {
            self.stream.context().alloc_pinned_with_flags::<f32>(
                len.max(1),
                cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        };
        Some(match pinned {
            Ok(mut slice) => match slice.as_mut_slice() {
                Ok(values) => {
                    values.fill(0.0);
                    let ptr = values.as_mut_ptr();
                    Ok(Box::new(PinnedStaging { slice, ptr }) as Box<dyn HostStaging>)
                }
                Err(e) => Err(self.err("page-locked host memory", e)),
            },
            Err(e) => Err(self.alloc_err("page-locked host memory", len as u64 * 4, e)),
        })
    }

    fn kv_view<'a>(&'a self, kv: &'a CudaKv, len: usize) -> Result<KvView<'a>, BackendError> {
        self.view_kv(kv, len)
    }

    fn import_kv(&self, src: &KvView<'_>, capacity: usize) -> Result<CudaKv, BackendError> {
        self.copy_kv(src, capacity)
    }
}

/// Copies `dst.len()` bytes at `ptr` in `ctx` to the host (a synchronous copy; the owner of the
/// allocation finished writing it before handing out its address).
pub(super) fn read_device_bytes(
    ctx: &Arc<CudaContext>,
    ptr: u64,
    dst: &mut [u8],
) -> Result<(), String> {
    if dst.is_empty() {
        return Ok(());
    }
    ctx.bind_to_thread()
        .map_err(|e| format!("binding the context: {e}"))?;
    // SAFETY: `ptr` is the start of a live allocation of `ctx` holding at least `dst.len()`
    // bytes (a `DeviceBytes` borrows it for as long as this runs), and `dst` is host memory of
    // exactly that length.
    unsafe { cudarc::driver::result::memcpy_dtoh_sync(dst, ptr) }
        .map_err(|e| format!("copying to the host: {e}"))
}

#[cfg(test)]
mod tests;
