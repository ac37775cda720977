//! The CUDA backend: [`Backend`] on one NVIDIA GPU through cudarc, with the kernels of
//! `kernels/cuda/*.cu` embedded as compute_80 PTX (`kernels/cuda/ptx/`, generated and kept
//! fresh by `scripts/check-cuda-kernels`) and JIT-loaded by the driver at start-up.
//!
//! libcuda is loaded at run time (cudarc's `dynamic-loading`), so building and running the binary
//! needs no CUDA toolkit; [`cuda_available`] checks that the driver library is present before any
//! CUDA call (cudarc panics on a missing library) and reports why CUDA cannot be used.
//!
//! The kernel signatures, launch configurations and host-side preconditions below follow
//! `kernels/cuda/README.md`. Every GGUF weight type llama.cpp reads has kernels ([`types`]: which
//! kernels each type uses); `matmul` is [`matmul`]'s: decode runs the matrix-vector kernels
//! (activations quantized to Q8_1 first for block-quantized weights), prefill one matrix-matrix
//! product on tensor cores with weight tiles dequantized to f16.

use std::collections::HashMap;
use std::panic::catch_unwind;
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
mod fused;
#[cfg(test)]
mod fused_tests;
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
/// Whether CUDA can be used: `Ok(number of devices)`, or why not.
///
/// Checks that libcuda can be loaded before calling into it (cudarc panics otherwise), then
/// initialises the driver and counts devices. Never panics: a panic inside cudarc (for example a
/// driver too old to have a symbol) is caught and reported as the reason.
pub fn cuda_available() -> Result<usize, String> {
    // SAFETY: `is_culib_present` only tries to dlopen libcuda under its usual names and closes
    // it again; it calls no CUDA function.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(
            "libcuda (the NVIDIA driver library) was not found: no NVIDIA driver is \
                    installed or it is not on the library path"
                .to_string(),
        );
    }
    let counted = catch_unwind(|| -> Result<(i32, i32), DriverError> {
        cudarc::driver::result::init()?;
        let mut version = 0;
        // SAFETY: an out-pointer to a local int, after cuInit.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result()?;
        Ok((version, CudaContext::device_count()?))
    });
    match counted {
        Ok(Ok((version, n))) => {
            check_driver(version)?;
            if n > 0 {
                Ok(n as usize)
            } else {
                Err("the NVIDIA driver reports no CUDA devices".to_string())
            }
        }
        Ok(Err(e)) => Err(format!("the CUDA driver failed to initialise: {e}")),
        Err(_) => Err("loading the CUDA driver library failed (driver too old?)".to_string()),
    }
}

/// What the driver says of one GPU: its name, memory and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    /// The product name ("NVIDIA H200").
    pub name: String,
    /// Bytes of device memory.
    pub total_bytes: u64,
    /// Bytes free now (other processes and contexts included).
    pub free_bytes: u64,
    /// Its UUID as NVML writes it ("GPU-5f3e...-..."): how the daemon finds this GPU's NVML
    /// index (CUDA numbers GPUs fastest first, NVML by PCI bus).
    pub uuid: Option<String>,
    /// Its PCI bus id ("00000000:01:00.0"), the second way to match NVML.
    pub pci_bus_id: Option<String>,
}

/// A CUDA UUID in NVML's text form: "GPU-" and 32 hex digits grouped 8-4-4-4-12.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The PCI bus id of device `dev` as NVML writes it (8-digit domain, upper-case hex).
fn pci_bus_id(dev: cudarc::driver::sys::CUdevice) -> Option<String> {
    let mut buf = [0 as std::ffi::c_char; 32];
    // SAFETY: the buffer holds 32 bytes and its length is passed; `dev` comes from a context.
    unsafe { cudarc::driver::sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), 32, dev) }
        .result()
        .ok()?;
    // SAFETY: the driver wrote a NUL-terminated string into the buffer.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    normalize_pci_bus_id(&text)
}

/// "0000:01:00.0" or "00000000:01:00.0" (any case) as "00000000:01:00.0": CUDA writes a 4-digit
/// domain, NVML an 8-digit one.
pub fn normalize_pci_bus_id(text: &str) -> Option<String> {
    let (domain, rest) = text.trim().split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    Some(format!(
        "{:08X}:{:02X}:{:02X}.{:X}",
        hex(domain)?,
        hex(bus)?,
        hex(device)?,
        hex(function)?
    ))
}

/// Asks the driver about GPU `ordinal` (after [`cuda_available`] says CUDA works): its name,
/// total and free memory. Creating the context to ask costs a few hundred MiB of device memory
/// while it lives, which the free figure includes, as it will be in use once models load.
pub fn cuda_device_info(ordinal: usize) -> Result<CudaDeviceInfo, String> {
    let count = cuda_available()?;
    if ordinal >= count {
        return Err(format!(
            "no CUDA device {ordinal}: the driver reports {count}"
        ));
    }
    if let Some(fault) = GpuState::of(ordinal).fault() {
        return Err(format!(
            "GPU {ordinal} failed ({fault}); it cannot be used until llmd restarts"
        ));
    }
    let asked = catch_unwind(|| -> Result<(CudaDeviceInfo, (i32, i32)), DriverError> {
        let ctx = CudaContext::new(ordinal)?;
        let name = ctx.name()?;
        let (free, total) = ctx.mem_get_info()?;
        let uuid = ctx
            .uuid()
            .ok()
            .map(|u| uuid_text(&u.bytes.map(|b| b as u8)));
        let info = CudaDeviceInfo {
            name,
            total_bytes: total as u64,
            free_bytes: free as u64,
            uuid,
            pci_bus_id: pci_bus_id(ctx.cu_device()),
        };
        Ok((info, ctx.compute_capability()?))
    });
    match asked {
        Ok(Ok((info, cc))) => {
            check_compute_capability(&format!("CUDA device {ordinal} ({})", info.name), cc)?;
            Ok(info)
        }
        Ok(Err(e)) => Err(format!("CUDA device {ordinal}: {e}")),
        Err(_) => Err(format!("CUDA device {ordinal}: the driver call panicked")),
    }
}

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
mod tests {
    use super::*;
    use crate::backend::{kv_cache_bytes, CpuBackend, DeviceMemory, HostKv, KvType};
    use crate::cpu::ThreadPool;
    use crate::quant::quantize;

    /// A deterministic xorshift generator of values in [-1, 1).
    pub(super) struct Rng(pub(super) u64);

    impl Rng {
        pub(super) fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        pub(super) fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// The weight types [`run_ops`] compares (`type_tests` compares the others).
    pub(super) const TYPES: [GgmlType; 7] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    /// An attention test case: name, query positions, window, softcap.
    type AttentionCase = (&'static str, Vec<u32>, Option<usize>, Option<f32>);

    fn upload<B: Backend>(
        b: &B,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> B::Weight {
        let data = quantize(ty, values).expect("quantizable test tensor");
        b.upload_weight(&HostTensor {
            name,
            ty,
            rows,
            cols,
            data: &data,
        })
        .expect("upload")
    }

    /// A weight's bytes, read back to the host.
    fn weight_bytes<B: Backend>(b: &B, w: &B::Weight) -> Vec<u8> {
        let view = b.weight_view(w).expect("view");
        let mut bytes = vec![0; view.bytes.len];
        view.bytes.read_into(&mut bytes).expect("read back");
        bytes
    }

    pub(super) fn acts<B: Backend>(b: &B, values: &[f32]) -> B::Activations {
        let mut a = b.alloc_activations(values.len()).expect("alloc");
        b.write_activations(&mut a, values).expect("write");
        a
    }

    pub(super) fn read<B: Backend>(b: &B, a: &B::Activations, len: usize) -> Vec<f32> {
        let mut out = vec![0.0; len];
        b.read_activations(a, &mut out).expect("read");
        out
    }

    /// Runs every op on deterministic inputs and returns each result by name with the relative
    /// tolerance (RMS of the difference over RMS of the CPU result) it must meet.
    fn run_ops<B: Backend>(b: &B) -> Vec<(String, f32, Vec<f32>)> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut results = Vec::new();
        // 200 rows: with the GPU test's scratch of 64 * 512 floats the GEMM path takes four
        // weight tiles (64, 64, 64 and an edge of 8 rows).
        let (rows, cols) = (200, 512);
        for ty in TYPES {
            let w = upload(b, "w", ty, rows, cols, &rng.vec(rows * cols));
            let copy = b
                .import_weight(&b.weight_view(&w).expect("view"))
                .expect("copy on the device");
            let same = weight_bytes(b, &copy) == weight_bytes(b, &w);
            results.push((
                format!("weight copy {ty}"),
                0.0,
                vec![f32::from(u8::from(same))],
            ));
            // 1, 3 and 8 tokens: matrix-vector kernels (8: a full group of tokens per block);
            // 10 and 70 (>= PREFILL_GEMM_MIN_TOKENS): the matrix-matrix kernels, 70 in two token
            // tiles, the second an edge of 6.
            for n_tokens in [1, 3, 8, 10, 70] {
                let x = acts(b, &rng.vec(n_tokens * cols));
                let mut out = b.alloc_activations(n_tokens * rows).expect("alloc");
                b.matmul(&w, &x, n_tokens, &mut out).expect("matmul");
                // Quantized weights: the CPU quantizes activations to its own 8-bit format, the
                // GPU to Q8_1 (matrix-vector) or not at all (GEMM), so products differ by a
                // fraction of a percent. F16 weights: the CPU rounds activations to f16 (as
                // ggml does), the GPU keeps f32, a relative difference of about 2e-4.
                let tol = match ty {
                    GgmlType::F32 => 1e-5,
                    GgmlType::F16 => 1e-3,
                    _ => 2e-2,
                };
                results.push((
                    format!("matmul {ty} x{n_tokens}"),
                    tol,
                    read(b, &out, n_tokens * rows),
                ));
            }
            let ids = [3u32, 0, 199, 3];
            let mut out = b.alloc_activations(ids.len() * cols).expect("alloc");
            b.embed(&w, &ids, 0.5, &mut out).expect("embed");
            results.push((format!("embed {ty}"), 1e-6, read(b, &out, ids.len() * cols)));
        }

        // F16 with cols % 8 != 0: the GEMM path does not apply and 40 tokens go through the
        // matrix-vector kernel.
        let (f16_rows, f16_cols, n_tokens) = (70, 516, 40);
        let w = upload(
            b,
            "w516",
            GgmlType::F16,
            f16_rows,
            f16_cols,
            &rng.vec(f16_rows * f16_cols),
        );
        let x = acts(b, &rng.vec(n_tokens * f16_cols));
        let mut out = b.alloc_activations(n_tokens * f16_rows).expect("alloc");
        b.matmul(&w, &x, n_tokens, &mut out).expect("matmul");
        results.push((
            format!("matmul f16 {f16_cols} columns x{n_tokens}"),
            1e-3,
            read(b, &out, n_tokens * f16_rows),
        ));

        let (n_rows, dim) = (3, 320);
        let norm_w = upload(b, "norm", GgmlType::F32, 1, dim, &rng.vec(dim));
        let xv = rng.vec(n_rows * dim);
        let mut x = acts(b, &xv);
        let mut into = b.alloc_activations(n_rows * dim).expect("alloc");
        b.rms_norm_into(&x, &norm_w, n_rows, dim, 1e-6, &mut into)
            .expect("rms_norm_into");
        results.push(("rms_norm_into".into(), 1e-5, read(b, &into, n_rows * dim)));
        b.rms_norm(&mut x, &norm_w, n_rows, dim, 1e-6)
            .expect("rms_norm");
        results.push(("rms_norm".into(), 1e-5, read(b, &x, n_rows * dim)));

        let (n_tokens, n_heads, head_dim) = (3, 4, 64);
        let positions = [0u32, 17, 300];
        // Llama-3.1-like factors (1 to 8) over the 32 pairs of a 64-wide head.
        let factors: Vec<f32> = (0..32).map(|i| 1.0 + 7.0 * (i as f32 / 31.0)).collect();
        let factor_w = upload(b, "rope_freqs", GgmlType::F32, 1, 32, &factors);
        let yarn = |mode, n_dims| RopeParams {
            freq_scale: 0.25,
            ext_factor: 1.0,
            attn_factor: 0.9,
            n_ctx_orig: 64,
            ..RopeParams::new(mode, n_dims, 10_000.0)
        };
        let cases = [
            (
                "plain",
                RopeParams::new(RopeMode::Normal, 64, 10_000.0),
                false,
            ),
            (
                "plain",
                RopeParams::new(RopeMode::Neox, 64, 10_000.0),
                false,
            ),
            (
                "plain",
                RopeParams::new(RopeMode::Neox, 32, 10_000.0),
                false,
            ),
            (
                "linear, factors",
                RopeParams {
                    freq_scale: 0.5,
                    attn_factor: 1.2,
                    ..RopeParams::new(RopeMode::Normal, 64, 500_000.0)
                },
                true,
            ),
            ("yarn", yarn(RopeMode::Neox, 64), false),
            ("yarn, factors", yarn(RopeMode::Normal, 64), true),
            ("yarn", yarn(RopeMode::Neox, 32), false),
        ];
        for (what, params, with_factors) in cases {
            let mut x = acts(b, &rng.vec(n_tokens * n_heads * head_dim));
            let ff = with_factors.then_some(&factor_w);
            b.rope(&mut x, n_tokens, n_heads, head_dim, &positions, params, ff)
                .expect("rope");
            results.push((
                format!("rope {what} {:?} {}", params.mode, params.n_dims),
                1e-4,
                read(b, &x, n_tokens * n_heads * head_dim),
            ));
        }
        let short = upload(b, "short", GgmlType::F32, 1, 16, &factors[..16]);
        let mut x = acts(b, &rng.vec(n_heads * head_dim));
        let too_few = b.rope(
            &mut x,
            1,
            n_heads,
            head_dim,
            &positions[..1],
            RopeParams::new(RopeMode::Neox, 64, 10_000.0),
            Some(&short),
        );
        results.push((
            "rope refuses too few frequency factors".into(),
            0.0,
            vec![f32::from(u8::from(too_few.is_err()))],
        ));

        let len = 1000;
        let (av, bv) = (rng.vec(len), rng.vec(len));
        let mut a = acts(b, &av);
        let c = acts(b, &bv);
        b.add(&mut a, &c, len).expect("add");
        results.push(("add".into(), 1e-6, read(b, &a, len)));
        b.scale(&mut a, -1.5, len).expect("scale");
        results.push(("add, scale".into(), 1e-6, read(b, &a, len)));
        let mut capped = acts(b, &av.iter().map(|v| v * 80.0).collect::<Vec<_>>());
        b.softcap(&mut capped, 30.0, len).expect("softcap");
        results.push(("softcap".into(), 1e-6, read(b, &capped, len)));
        let bias = upload(b, "bias", GgmlType::F32, 1, 250, &rng.vec(250));
        b.add_bias(&mut a, &bias, 4).expect("add_bias");
        results.push(("add, scale, add_bias".into(), 1e-6, read(b, &a, len)));
        for act in [GatedActivation::Silu, GatedActivation::Gelu] {
            let mut g = acts(b, &av.iter().map(|v| v * 4.0).collect::<Vec<_>>());
            b.gated_activation(&mut g, &c, len, act).expect("gated");
            // The CPU's GELU goes through ggml's f16 table (input and output rounded to f16),
            // the GPU's is computed in f32: about 3e-4 apart.
            let tol = match act {
                GatedActivation::Silu => 1e-4,
                GatedActivation::Gelu => 1e-3,
            };
            results.push((format!("gated {act:?}"), tol, read(b, &g, len)));
        }

        // KV caches and attention, for every pair of key and value types: GQA 8 query heads
        // over 2 KV heads, prefills of 10 and 5 queries and decodes at position 700 (so the
        // decode kernel splits the context). The stored caches must be the same bytes as the
        // CPU's (both quantize Q8_0 / Q4_0 with the same f32 operations); attention differs by
        // float rounding only (f16 keys: the CPU rounds the query to f16, the GPU keeps f32, as
        // for f16 weights; quantized keys: both quantize the query to Q8_0 and sum integers).
        let (n_heads, n_kv, hd, capacity) = (8, 2, 64, 768);
        let kw = n_kv * hd;
        let qw = n_heads * hd;
        for k in KvType::ALL {
            for v in KvType::ALL {
                let types = KvTypes { k, v };
                let mut kv = b.alloc_kv(capacity, n_kv, hd, types).expect("alloc_kv");
                let fill: Vec<u32> = (0..capacity as u32 - 1).collect();
                for chunk in fill.chunks(256) {
                    let k = acts(b, &rng.vec(chunk.len() * kw));
                    let v = acts(b, &rng.vec(chunk.len() * kw));
                    b.kv_store(&mut kv, &k, &v, 0, chunk).expect("kv_store");
                }
                let len = capacity - 1;
                let host = HostKv::download(&b.kv_view(&kv, len).expect("view")).expect("download");
                let values = |ty: KvType, bytes: &[u8]| -> Vec<f32> {
                    let mut out = vec![0.0; len * kw];
                    crate::quant::dequantize(ty.ggml_type(), bytes, &mut out).expect("dequantize");
                    out
                };
                results.push((format!("kv_store keys {types}"), 0.0, values(k, &host.k)));
                results.push((format!("kv_store values {types}"), 0.0, values(v, &host.v)));
                // A copy on the device and one from the host hold the same keys and values.
                let on_device = b
                    .import_kv(&b.kv_view(&kv, len).expect("view"), capacity)
                    .expect("copy on the device");
                let from_host = b.import_kv(&host.view(), capacity).expect("upload");
                let same = [&on_device, &from_host].iter().all(|copy| {
                    let back =
                        HostKv::download(&b.kv_view(copy, len).expect("view")).expect("download");
                    back.k == host.k && back.v == host.v && back.types == types
                });
                results.push((
                    format!("kv copies {types}"),
                    0.0,
                    vec![f32::from(u8::from(same))],
                ));
                let cases: [AttentionCase; 4] = [
                    ("prefill", vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9], None, None),
                    (
                        "prefill window softcap",
                        vec![100, 101, 102, 103, 104],
                        Some(3),
                        Some(30.0),
                    ),
                    ("decode", vec![700], None, None),
                    ("decode window", vec![700], Some(100), Some(50.0)),
                ];
                for (what, positions, window, softcap) in cases {
                    let first_row = 1;
                    let n = first_row + positions.len();
                    let q = acts(b, &rng.vec(n * qw));
                    let mut out = acts(b, &vec![0.0; n * qw]);
                    let params = AttentionParams {
                        n_heads,
                        n_kv_heads: n_kv,
                        head_dim: hd,
                        scale: 1.0 / (hd as f32).sqrt(),
                        window,
                        softcap,
                    };
                    b.attention(&q, &on_device, first_row, &positions, params, &mut out)
                        .expect("attention");
                    // Quantized keys: the same integer sums on both sides, so only the
                    // softmax's and the scales' rounding differs (seen: below 1e-6).
                    let tol = if k == KvType::F16 { 1e-3 } else { 1e-5 };
                    results.push((
                        format!("attention {what} {types}"),
                        tol,
                        read(b, &out, n * qw),
                    ));
                }
            }
        }
        // Heads of 128 (keys rotated in chunks of 128, values of 64) and of 96 (quantized but
        // not rotated: 96 % 64 != 0), a prefill and a decode each.
        let types = KvTypes {
            k: KvType::Q8_0,
            v: KvType::Q4_0,
        };
        for hd in [128, 96] {
            let (n_heads, n_kv, capacity) = (4, 2, 64);
            let (kw, qw) = (n_kv * hd, n_heads * hd);
            let mut kv = b.alloc_kv(capacity, n_kv, hd, types).expect("alloc_kv");
            let fill: Vec<u32> = (0..capacity as u32).collect();
            let k = acts(b, &rng.vec(capacity * kw));
            let v = acts(b, &rng.vec(capacity * kw));
            b.kv_store(&mut kv, &k, &v, 0, &fill).expect("kv_store");
            let host = HostKv::download(&b.kv_view(&kv, capacity).expect("view")).expect("host");
            let bytes: Vec<f32> = host
                .k
                .iter()
                .chain(&host.v)
                .map(|&x| f32::from(x))
                .collect();
            results.push((format!("kv_store bytes {types} d={hd}"), 0.0, bytes));
            for positions in [vec![40u32, 41, 42, 43, 44, 45], vec![63]] {
                let n = positions.len();
                let q = acts(b, &rng.vec(n * qw));
                let mut out = acts(b, &vec![0.0; n * qw]);
                let params = AttentionParams {
                    n_heads,
                    n_kv_heads: n_kv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    window: None,
                    softcap: None,
                };
                b.attention(&q, &kv, 0, &positions, params, &mut out)
                    .expect("attention");
                results.push((
                    format!("attention x{n} {types} d={hd}"),
                    1e-5,
                    read(b, &out, n * qw),
                ));
            }
        }
        results
    }

    #[test]
    fn cuda_available_gives_a_reason_instead_of_panicking() {
        // SAFETY: only probes whether libcuda can be dlopened.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        match cuda_available() {
            Ok(n) => assert!(
                present && n > 0,
                "Ok({n}) without libcuda or without devices"
            ),
            Err(reason) => {
                assert!(!reason.is_empty());
                if !present {
                    assert!(reason.contains("libcuda"), "unclear reason: {reason}");
                }
                let err = CudaBackend::new("cuda:0", 0, 1 << 30).expect_err("no CUDA, no backend");
                assert!(
                    matches!(&err, BackendError::Device { device, .. } if device == "cuda:0"),
                    "{err}"
                );
            }
        }
    }

    /// The comparison suite itself must run on the CPU backend (so that a GPU session only
    /// measures the GPU), with finite results and exact round trips.
    #[test]
    fn comparison_suite_runs_on_the_cpu_backend() {
        let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
        let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
        let results = run_ops(&cpu);
        assert!(results.len() > 40);
        for (name, _, values) in &results {
            assert!(!values.is_empty(), "{name}");
            assert!(values.iter().all(|v| v.is_finite()), "{name}");
            if name.contains("round trip") || name.contains("refuses") {
                assert_eq!(values, &[1.0], "{name}");
            }
        }
        assert_eq!(cpu.used_bytes(), 0, "leases returned on drop");
    }

    /// The comparison below through the real `CudaBackend` code on the fake driver (the kernels
    /// under host emulation), so CI checks argument order and types, launch geometry, buffer
    /// offsets and the reused buffers without a GPU.
    #[test]
    fn cuda_backend_matches_cpu_on_the_fake_driver() {
        crate::fake_cuda::run_on_fake_driver(
            "backend::cuda::tests::cuda_backend_matches_cpu_when_a_gpu_is_present",
            &[],
            "cuda:0b attention decode window K q4_0 / V q4_0",
        );
    }

    #[test]
    fn cuda_backend_matches_cpu_when_a_gpu_is_present() {
        if !crate::fake_cuda::cuda_or_skip() {
            return;
        }
        let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
        let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
        // The same GPU opened twice, as `cuda:0,cuda:0` would. The first multiplies weights in
        // tiles of 64 rows (several per weight), its twin with the default scratch (one tile).
        let mut gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
        gpu.gemm_scratch_floats = GEMM_TILE * 512;
        let twin = CudaBackend::new("cuda:0b", 0, 1 << 30).expect("cuda:0 again");
        let want = run_ops(&cpu);
        let mut failures = Vec::new();
        for (backend, got) in [(&gpu, run_ops(&gpu)), (&twin, run_ops(&twin))] {
            failures.extend(compare_results(backend.device_name(), &want, &got));
        }
        assert_eq!(gpu.used_bytes(), 0, "leases returned on drop");
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Compares `got` (from `device`) with the CPU's `want`, result by result: the relative RMS
    /// error (RMS of the difference over RMS of the CPU result) must be within the result's
    /// tolerance and every value finite. Prints each comparison; returns the failures.
    pub(super) fn compare_results(
        device: &str,
        want: &[(String, f32, Vec<f32>)],
        got: &[(String, f32, Vec<f32>)],
    ) -> Vec<String> {
        assert_eq!(got.len(), want.len());
        let mut failures = Vec::new();
        for ((name, tol, expect), (_, _, have)) in want.iter().zip(got) {
            assert_eq!(expect.len(), have.len(), "{name}");
            let diff: f64 = expect
                .iter()
                .zip(have)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let norm: f64 = expect.iter().map(|a| f64::from(*a).powi(2)).sum();
            let rel = (diff / norm.max(1e-30)).sqrt();
            let ok = rel <= f64::from(*tol) && have.iter().all(|v| v.is_finite());
            println!(
                "{device} {name}: relative RMS error {rel:.2e} (tolerance {tol:.0e}){}",
                if ok { "" } else { "  FAILED" }
            );
            if !ok {
                failures.push(format!("{device} {name}: {rel:.2e} > {tol:.0e}"));
            }
        }
        failures
    }

    /// Direct copies between every pair of device kinds (what a live re-split does with the
    /// layers it moves) on two fake GPUs.
    #[test]
    fn weights_and_kv_caches_move_between_devices_on_the_fake_driver() {
        crate::fake_cuda::run_on_fake_driver(
            "backend::cuda::tests::weights_and_kv_caches_move_between_devices_when_gpus_are_present",
            &[("LLMD_FAKE_CUDA_DEVICES", "2")],
            "moved through cpu:0 -> cuda:0 -> cuda:0b -> cuda:1 -> cpu:1",
        );
    }

    #[test]
    fn weights_and_kv_caches_move_between_devices_when_gpus_are_present() {
        if !crate::fake_cuda::cuda_or_skip() {
            return;
        }
        let pool = Arc::new(ThreadPool::new(1).expect("thread pool"));
        let cpu0 = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), Arc::clone(&pool));
        let cpu1 = CpuBackend::new("cpu:1", DeviceMemory::new(1 << 30), pool);
        let gpu0 = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
        let twin = CudaBackend::new("cuda:0b", 0, 1 << 30).expect("cuda:0 again");
        // The second GPU when there is one (peer copies), else the first again.
        let ordinal = usize::from(cuda_available().is_ok_and(|n| n > 1));
        let gpu1 = CudaBackend::new("cuda:1", ordinal, 1 << 30).expect("second GPU");
        let mut rng = Rng(7);
        let (rows, cols) = (48, 256);
        let w0 = upload(
            &cpu0,
            "w",
            GgmlType::Q4_K,
            rows,
            cols,
            &rng.vec(rows * cols),
        );
        // Quantized keys and values of different types move as they are, byte for byte.
        let (capacity, n_kv, hd, len) = (40, 2, 64, 33);
        let types = KvTypes {
            k: KvType::Q8_0,
            v: KvType::Q4_0,
        };
        let mut kv0 = cpu0.alloc_kv(capacity, n_kv, hd, types).expect("alloc_kv");
        let positions: Vec<u32> = (0..len as u32).collect();
        let k = acts(&cpu0, &rng.vec(len * n_kv * hd));
        let v = acts(&cpu0, &rng.vec(len * n_kv * hd));
        cpu0.kv_store(&mut kv0, &k, &v, 0, &positions)
            .expect("kv_store");
        let want_w = weight_bytes(&cpu0, &w0);
        let want_kv = HostKv::download(&cpu0.kv_view(&kv0, len).expect("view")).expect("read");

        /// Copies the weight and cache from `from` to `to` and checks them there.
        fn hop<A: Backend, B: Backend>(
            from: &A,
            (w, kv): &(A::Weight, A::KvCache),
            to: &B,
            (want_w, want_kv, len, capacity): (&[u8], &HostKv, usize, usize),
        ) -> (B::Weight, B::KvCache) {
            let w2 = to
                .import_weight(&from.weight_view(w).expect("view"))
                .expect("weight copy");
            let kv2 = to
                .import_kv(&from.kv_view(kv, len).expect("view"), capacity)
                .expect("kv copy");
            assert_eq!(
                weight_bytes(to, &w2),
                want_w,
                "weight on {}",
                to.device_name()
            );
            let back = HostKv::download(&to.kv_view(&kv2, len).expect("view")).expect("read");
            assert!(
                back.k == want_kv.k && back.v == want_kv.v && back.types == want_kv.types,
                "KV cache on {}",
                to.device_name()
            );
            assert_eq!(
                to.kv_bytes(&kv2),
                kv_cache_bytes(
                    capacity,
                    want_kv.n_kv_heads,
                    want_kv.head_dim,
                    want_kv.types
                )
            );
            (w2, kv2)
        }
        let want = (&want_w[..], &want_kv, len, capacity);
        let on_gpu0 = hop(&cpu0, &(w0, kv0), &gpu0, want);
        let on_twin = hop(&gpu0, &on_gpu0, &twin, want);
        drop(on_gpu0);
        assert_eq!(gpu0.used_bytes(), 0, "the source's memory is returned");
        assert!(twin.used_bytes() > 0);
        let on_gpu1 = hop(&twin, &on_twin, &gpu1, want);
        let on_cpu1 = hop(&gpu1, &on_gpu1, &cpu1, want);
        // The weight still multiplies as it did where it started.
        let x = acts(&cpu1, &rng.vec(cols));
        let mut out = cpu1.alloc_activations(rows).expect("alloc");
        cpu1.matmul(&on_cpu1.0, &x, 1, &mut out).expect("matmul");
        assert!(read(&cpu1, &out, rows).iter().all(|v| v.is_finite()));
        println!("moved through cpu:0 -> cuda:0 -> cuda:0b -> cuda:1 -> cpu:1");
    }
}
