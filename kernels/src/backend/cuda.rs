//! The CUDA backend: [`Backend`] on one NVIDIA GPU through cudarc, with the kernels of
//! `kernels/cuda/*.cu` embedded as compute_80 PTX (`kernels/cuda/ptx/`, generated and kept
//! fresh by `scripts/check-cuda-kernels`) and JIT-loaded by the driver at start-up.
//!
//! libcuda is loaded at run time (cudarc's `dynamic-loading`), so building and running the binary
//! needs no CUDA toolkit; [`cuda_available`] checks that the driver library is present before any
//! CUDA call (cudarc panics on a missing library) and reports why CUDA cannot be used.
//!
//! This file holds the backend's types ([`CudaBackend`], [`CudaWeight`]), its launch and error
//! helpers and the [`Backend`] implementation, each op handed to the module of its concern,
//! mirroring `kernels/cuda/*.cu`: [`device`] (is CUDA usable, what is each GPU), `open` (opening
//! a GPU: context, stream, modules, functions), `context` (per-GPU context and fault state,
//! device buffers), `modules` (the embedded CUBIN/PTX images and the driver and GPU checks),
//! `types` (which kernels each weight type uses), `weights` (upload, import, views), `transfer`
//! (host and peer copies, stage hand-offs, pinned staging), `positions` (the step's positions
//! through page-locked memory), `reused` (device buffers kept between
//! calls), `norm` (`norm.cu`), `rope` (`rope.cu`), `elementwise` (`elementwise.cu`), `getrows`
//! (`getrows.cu`), `select` (`select.cu`), `graph` (capturing the stream into a CUDA graph and replaying it), [`matmul`] (`mmv.cu`, `mmvq.cu`, `gemm.cu`, `mmq.cu`), `moe` (mixtures of experts on the
//! device: routing and weighted sum, `moe.cu`; the routed matmul, `mmvq.cu`), `fused` (the fused projections), `kv`
//! (`attention.cu`, `kvcache.cu`), `peer` (GPU-to-GPU paths); the tests in `tests` (op by op
//! against the CPU backend), `type_tests`, `shape_tests`, `fused_tests`, `moe_tests`,
//! `select_tests` (selection against the host's), `strict_tests` (the strict fake driver's faults) and `graph_tests` (capture and replay), with `gpu_test` their launcher glue.
//!
//! The kernel signatures, launch configurations and host-side preconditions below follow
//! `kernels/cuda/README.md`. Every GGUF weight type llama.cpp reads has kernels ([`types`]: which
//! kernels each type uses); `matmul` is [`matmul`]'s: decode runs the matrix-vector kernels
//! (activations quantized to Q8_1 first for block-quantized weights), prefill one matrix-matrix
//! product on tensor cores with weight tiles dequantized to f16.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig};

use super::{
    check_len, check_rope, shape, ActivationsLocation, AttentionParams, Backend, BackendError,
    BytesAt, DeviceActivations, DeviceBytes, DeviceMemory, GatedActivation, HostStaging,
    HostTensor, KvShape, KvTypes, KvView, Lease, QkvParams, RopeMode, RopeParams, RouteBuffers,
    RouteWeights, Selection, WeightView,
};
use crate::quant::GgmlType;

mod context;
mod device;
mod elementwise;
mod fused;
#[cfg(test)]
mod fused_tests;
mod getrows;
#[cfg(test)]
mod gpu_test;
mod graph;
#[cfg(test)]
mod graph_tests;
mod kv;
mod matmul;
mod modules;
mod moe;
#[cfg(test)]
mod moe_tests;
mod norm;
mod open;
mod peer;
mod positions;
mod reused;
mod rope;
mod select;
#[cfg(test)]
mod select_tests;
#[cfg(test)]
mod shape_tests;
#[cfg(test)]
mod strict_tests;
mod transfer;
#[cfg(test)]
mod type_tests;
mod types;
mod weights;

use context::GpuState;
pub use context::{cuda_gpu_fault, DeviceBuf};
pub use device::{cuda_available, cuda_device_info, normalize_pci_bus_id, CudaDeviceInfo};
pub use graph::CudaStepGraph;
pub use kv::CudaKv;
pub use modules::{check_compute_capability, check_driver, ModuleImage, MIN_DRIVER_RELEASE};
pub use peer::{cuda_peer_paths, PeerPath};
pub use positions::GraphPositions;
pub(super) use transfer::read_device_bytes;

#[cfg(test)]
use matmul::GEMM_TILE;
use reused::{grown, Reused};

/// Largest `head_dim` the attention kernels support.
const MAX_HEAD_DIM: usize = 256;
/// Largest grid y/z extent.
const MAX_GRID_YZ: usize = 65_535;

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
    /// How each kernel file was loaded (CUBIN or PTX), in [`open::MODULE_KERNELS`] order.
    images: Vec<ModuleImage>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    ledger: Arc<DeviceMemory>,
    /// Most f32 values of the dequantized weight tile of the GEMM path ([`matmul::GEMM_SCRATCH_FLOATS`];
    /// the tests lower it so that small weights take several tiles).
    gemm_scratch_floats: usize,
    /// Small device buffers reused across calls instead of allocated (and zeroed) per call.
    reused: Mutex<Reused>,
    /// Streaming multiprocessors of the GPU (0 when the driver does not say): decode attention
    /// splits its keys to give each a few blocks.
    sm_count: usize,
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

    fn err_msg(&self, message: &str) -> BackendError {
        BackendError::Device {
            device: self.name.clone(),
            message: message.to_string(),
        }
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
        self.upload_weight_on_device(t)
    }

    fn weight_bytes(&self, weight: &CudaWeight) -> u64 {
        weight.lease.bytes()
    }

    fn weight_view<'a>(&'a self, w: &'a CudaWeight) -> Result<WeightView<'a>, BackendError> {
        self.weight_view_on_device(w)
    }

    fn import_cost(&self, src: &WeightView<'_>) -> u64 {
        src.bytes.len as u64
    }

    fn import_weight(&self, src: &WeightView<'_>) -> Result<CudaWeight, BackendError> {
        self.import_weight_on_device(src)
    }

    fn alloc_activations(&self, len: usize) -> Result<DeviceBuf<f32>, BackendError> {
        self.alloc("activations", len)
    }

    fn write_activations(&self, dst: &mut DeviceBuf<f32>, src: &[f32]) -> Result<(), BackendError> {
        self.write_activations_on_device(dst, src)
    }

    fn read_activations(&self, src: &DeviceBuf<f32>, dst: &mut [f32]) -> Result<(), BackendError> {
        self.read_activations_on_device(src, dst)
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

    fn attention_batch(
        &self,
        q: &DeviceBuf<f32>,
        caches: &[(&CudaKv, std::ops::Range<usize>)],
        positions: &[u32],
        params: AttentionParams,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.attend(q, out, 0, positions, caches, params)
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
        out_row: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.gather_rows_on_device(src, rows, width, out_row, out)
    }

    fn routes(&self, expert: &CudaWeight, n_tokens: usize) -> bool {
        self.routes_on_device(expert, n_tokens)
    }

    fn matmul_id(
        &self,
        experts: &[CudaWeight],
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        n_used: usize,
        x_per_pair: bool,
        ids: &DeviceBuf<f32>,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.matmul_id_on_device(experts, x, n_tokens, n_used, x_per_pair, ids, out)
    }

    fn matmul_id_pair(
        &self,
        gate: &[CudaWeight],
        up: &[CudaWeight],
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        n_used: usize,
        ids: &DeviceBuf<f32>,
        gate_out: &mut DeviceBuf<f32>,
        up_out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.matmul_id_pair_on_device(gate, up, x, n_tokens, n_used, ids, gate_out, up_out)
    }

    fn gated_matmul_id(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        ff: usize,
        act: GatedActivation,
        down: &[CudaWeight],
        n_tokens: usize,
        n_used: usize,
        ids: &DeviceBuf<f32>,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.gated_matmul_id_on_device(gate, up, ff, act, down, n_tokens, n_used, ids, out)
    }

    fn gated_matmul_id_combine(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        ff: usize,
        act: GatedActivation,
        down: &[CudaWeight],
        n_tokens: usize,
        n_used: usize,
        ids: &DeviceBuf<f32>,
        weights: &DeviceBuf<f32>,
        width: usize,
        shared: Option<(&DeviceBuf<f32>, &DeviceBuf<f32>)>,
        scratch: &mut DeviceBuf<f32>,
        x: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.gated_matmul_id_combine_on_device(
            gate, up, ff, act, down, n_tokens, n_used, ids, weights, width, shared, scratch, x,
        )
    }

    fn route_experts(
        &self,
        routing: &crate::moe::Routing,
        logits: &mut DeviceBuf<f32>,
        n_tokens: usize,
        ids: &mut DeviceBuf<f32>,
        weights: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.route_on_device(routing, logits, n_tokens, ids, weights)
    }

    fn norm_route_pair(
        &self,
        x: &DeviceBuf<f32>,
        w: RouteWeights<'_, CudaWeight>,
        routing: &crate::moe::Routing,
        n_tokens: usize,
        dim: usize,
        eps: f32,
        out: RouteBuffers<'_, DeviceBuf<f32>>,
    ) -> Result<(), BackendError> {
        self.norm_route_pair_on_device(x, w, routing, n_tokens, dim, eps, out)
    }

    fn moe_combine(
        &self,
        down: &DeviceBuf<f32>,
        weights: &DeviceBuf<f32>,
        n_tokens: usize,
        n_used: usize,
        width: usize,
        shared: Option<(&DeviceBuf<f32>, &DeviceBuf<f32>)>,
        x: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.combine_on_device(down, weights, n_tokens, n_used, width, shared, x)
    }

    fn embed(
        &self,
        table: &CudaWeight,
        ids: &[u32],
        scale: f32,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.embed_on_device(table, ids, scale, out)
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
        self.add_bias_on_device(x, bias, n_tokens)
    }

    fn rms_norm(
        &self,
        x: &mut DeviceBuf<f32>,
        weight: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), BackendError> {
        self.rms_norm_on_device(x, weight, n_rows, dim, eps)
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
        self.rms_norm_into_on_device(x, weight, n_rows, dim, eps, out)
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
        self.rope_on_device(x, n_tokens, n_heads, head_dim, positions, p, freq_factors)
    }

    fn select(
        &self,
        x: &DeviceBuf<f32>,
        m: usize,
        n: usize,
        sel: Selection,
        out: &mut DeviceBuf<f32>,
        out_at: usize,
    ) -> Result<(), BackendError> {
        self.select_on_device(x, m, n, sel, out, out_at)
    }

    fn softcap(&self, x: &mut DeviceBuf<f32>, cap: f32, len: usize) -> Result<(), BackendError> {
        self.softcap_on_device(x, cap, len)
    }

    fn add(
        &self,
        dst: &mut DeviceBuf<f32>,
        src: &DeviceBuf<f32>,
        len: usize,
    ) -> Result<(), BackendError> {
        self.add_on_device(dst, src, len)
    }

    fn scale(&self, x: &mut DeviceBuf<f32>, factor: f32, len: usize) -> Result<(), BackendError> {
        self.scale_on_device(x, factor, len)
    }

    fn gated_activation(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        len: usize,
        act: GatedActivation,
    ) -> Result<(), BackendError> {
        self.gated_activation_on_device(gate, up, len, act)
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

    fn capture_step<E: From<BackendError>>(
        &self,
        record: &mut dyn FnMut() -> Result<(), E>,
    ) -> Option<Result<crate::backend::StepGraph, E>> {
        // The staged positions' copy is the graph's first node, from page-locked memory of
        // the graph's own (allocated before the capture, which refuses allocations); the
        // step's ops then find them staged and copy nothing of their own.
        let positions = match self.graph_positions(&self.reused().positions) {
            Ok(p) => p,
            Err(e) => return Some(Err(E::from(e))),
        };
        let captured = self.capture(|| {
            self.capture_positions(&mut self.reused().positions, positions.as_ref())
                .map_err(E::from)?;
            record()
        });
        self.end_positions_capture(&mut self.reused().positions);
        Some(captured.map(|(cuda, ())| crate::backend::StepGraph { cuda, positions }))
    }

    fn launch_step(&self, graph: &crate::backend::StepGraph) -> Result<(), BackendError> {
        let mut reused = self.reused();
        let positions = graph.positions.as_ref();
        self.before_graph_launch(&mut reused.positions, positions)?;
        self.launch_graph(&graph.cuda)?;
        self.after_graph_launch(&mut reused.positions, positions)
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        self.stream
            .synchronize()
            .map_err(|e| self.err("waiting for the stream", e))
    }

    fn graph_epoch(&self) -> u64 {
        self.gpu.reallocations()
    }

    fn stage_positions(&self, positions: &[u32]) -> Result<(), BackendError> {
        self.stage_positions_pinned(&mut self.reused().positions, positions)
    }

    fn attention_splits(
        &self,
        params: &AttentionParams,
        n_queries: usize,
        max_context: usize,
    ) -> usize {
        kv::decode_launch_splits(self.sm_count, params, n_queries, max_context)
    }

    fn export_activations(
        &self,
        a: &DeviceBuf<f32>,
        len: usize,
    ) -> Result<Option<DeviceActivations>, BackendError> {
        self.export_activations_on_device(a, len)
    }

    fn import_activations(
        &self,
        dst: &mut DeviceBuf<f32>,
        src: &DeviceActivations,
    ) -> Result<bool, BackendError> {
        self.import_activations_on_device(dst, src)
    }

    fn alloc_host_staging(&self, len: usize) -> Option<Result<Box<dyn HostStaging>, BackendError>> {
        self.alloc_host_staging_on_device(len)
    }

    fn kv_view<'a>(&'a self, kv: &'a CudaKv, len: usize) -> Result<KvView<'a>, BackendError> {
        self.view_kv(kv, len)
    }

    fn import_kv(&self, src: &KvView<'_>, capacity: usize) -> Result<CudaKv, BackendError> {
        self.copy_kv(src, capacity)
    }
}

#[cfg(test)]
mod tests;
