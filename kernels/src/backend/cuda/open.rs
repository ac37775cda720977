//! Opening a GPU as a [`CudaBackend`]: its context and stream, every kernel file's module
//! (CUBIN or PTX, [`super::modules`]) and the functions fetched from each ([`MODULE_KERNELS`]),
//! and the backend's accessors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaContext;

use super::context::GpuState;
use super::matmul::GEMM_SCRATCH_FLOATS;
use super::{
    check_compute_capability, cuda_available, kv, modules, peer, types, BackendError, CudaBackend,
    DeviceMemory, ModuleImage, Reused,
};

/// The kernels fetched from each kernel file ([`modules::FILES`]) besides its per-type ones
/// ([`types::type_kernels`]).
pub(super) const MODULE_KERNELS: &[(&str, &[&str])] = &[
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
    (
        "moe",
        &["moe_route_f32", "moe_router_route_f32", "moe_combine_f32"],
    ),
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
    ("select", &["select_chunks_f32", "select_merge_f32"]),
];

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
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_or(0, |n| usize::try_from(n).unwrap_or(0));
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
            sm_count,
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
}
