//! The one place that picks the concrete backend type at run time, so loading, the pipeline and
//! re-splitting stay device-agnostic without trait objects or downcasts: the CPU backend for
//! `cpu:N` devices, the CUDA backend for `cuda:N`. Stages and parts are generic over
//! [`Backend`] (the kernels' interface); here four enums with a `Cpu` and a `Cuda` variant
//! hold them once the type is chosen:
//!
//! - [`StageBackend`]: a device's backend, chosen where devices are opened;
//! - [`AnyStage`]: a pipeline stage on either, so one pipeline can mix devices;
//! - [`AnyPart`]: a part of a stage taken apart for a re-split (or spilled to the host), which
//!   goes back into a stage of its own variant only;
//! - [`AnyExperts`]: a layer's experts on another device than the layer's (`--cpu-moe`), so a
//!   stage on one backend can run its experts on the other.
//!
//! Each method matches once over the variants with [`each_backend!`] (same result type) or
//! [`map_backend!`] (the result wrapped in the matching variant of another of these enums).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use llmd_kernels::backend::{
    kv_cache_bytes, Backend, BackendError, CpuBackend, CudaBackend, HostStaging, KvTypes,
    WeightView,
};

use super::batch::{Batch, SeqId};
use super::config::ModelConfig;
use super::graphs::GraphCounts;
use super::head_output::HeadOutput;
use super::host_tensors::OwnedTensor;
use super::host_tensors::PartSource;
use super::moe::{DeviceExperts, ExpertLoader, ExpertsElsewhere, MoeScratch};
use super::parts::{DevicePart, HostPart, KvCopy, LiveSequence, PartWeights, Slot};
use super::stage::{ForwardError, Handoff, Stage};
use super::weights::{ExpertWeights, FeedForward, LayerWeights, WeightError};

/// Runs `$body` with `$x` bound to the value inside whichever backend variant of enum `$ty`
/// `$value` is; further `pattern => body` arms cover variants beyond `Cpu` and `Cuda`.
macro_rules! each_backend {
    ($value:expr, $ty:ident, $x:ident => $body:expr $(, $more:pat => $more_body:expr)* $(,)?) => {
        match $value {
            $ty::Cpu($x) => $body,
            $ty::Cuda($x) => $body,
            $($more => $more_body,)*
        }
    };
}

/// Like [`each_backend!`], the result wrapped in the same variant of enum `$out`, so a value on
/// one backend type stays with that type.
macro_rules! map_backend {
    ($value:expr, $ty:ident => $out:ident, $x:ident => $body:expr) => {
        match $value {
            $ty::Cpu($x) => $out::Cpu($body),
            $ty::Cuda($x) => $out::Cuda($body),
        }
    };
}

/// A device's backend, shared by the stages of one model on that device.
#[derive(Clone)]
pub enum StageBackend {
    /// Host memory and cores.
    Cpu(Arc<CpuBackend>),
    /// An NVIDIA GPU.
    Cuda(Arc<CudaBackend>),
}

/// The mixture-of-experts buffers that every layer's experts on one device share (see
/// [`DeviceExperts`]), allocated by the first layer loaded there.
#[derive(Default)]
pub struct ExpertScratch {
    /// On a CPU device.
    cpu: Option<Arc<Mutex<MoeScratch<CpuBackend>>>>,
    /// On a GPU.
    cuda: Option<Arc<Mutex<MoeScratch<CudaBackend>>>>,
}

/// Where and how a stage is put together from parts: its layers and whether it has the head, on
/// one device, with buffers for batches of up to `max_batch` tokens, `max_logit_rows` of which
/// may want logits.
pub struct StageShape<'a> {
    /// The model.
    pub config: &'a Arc<ModelConfig>,
    /// The layers.
    pub layers: Range<usize>,
    /// Whether it holds the output head.
    pub head: bool,
    /// Tokens per forward call at most.
    pub max_batch: usize,
    /// Tokens per forward call whose logits may be wanted, at most.
    pub max_logit_rows: usize,
}

impl StageBackend {
    /// The device's name.
    pub fn device_name(&self) -> &str {
        each_backend!(self, StageBackend, b => b.device_name())
    }

    /// Whether `self` and `other` are the same backend (not only the same device name).
    pub fn same(&self, other: &StageBackend) -> bool {
        match (self, other) {
            (StageBackend::Cpu(a), StageBackend::Cpu(b)) => Arc::ptr_eq(a, b),
            (StageBackend::Cuda(a), StageBackend::Cuda(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Loads `layers` (and the head if `head`) from `source` onto this device as a pipeline
    /// stage (see [`Stage::load`]); `loaded()` is called after each layer and the head.
    #[allow(clippy::too_many_arguments)]
    pub fn load_stage(
        &self,
        config: Arc<ModelConfig>,
        source: &dyn PartSource,
        layers: Range<usize>,
        head: bool,
        max_batch: usize,
        max_logit_rows: usize,
        experts: Option<&ExpertsElsewhere<'_>>,
        loaded: &mut dyn FnMut(),
    ) -> Result<AnyStage, WeightError> {
        Ok(
            map_backend!(self, StageBackend => AnyStage, b => Stage::load(
            Arc::clone(b),
            config,
            source,
            layers,
            head,
            max_batch,
            max_logit_rows,
            experts,
            loaded,
        )?),
        )
    }

    /// Uploads one layer's experts to this device (`--cpu-moe`), with buffers for batches of up
    /// to `max_batch` tokens.
    pub fn load_experts(
        &self,
        config: &ModelConfig,
        weights: &ExpertWeights<WeightView<'_>>,
        scratch: &mut ExpertScratch,
        max_batch: usize,
    ) -> Result<AnyExperts, WeightError> {
        Ok(match self {
            StageBackend::Cpu(b) => AnyExperts::Cpu(DeviceExperts::load(
                Arc::clone(b),
                config,
                weights,
                &mut scratch.cpu,
                max_batch,
            )?),
            StageBackend::Cuda(b) => AnyExperts::Cuda(DeviceExperts::load(
                Arc::clone(b),
                config,
                weights,
                &mut scratch.cuda,
                max_batch,
            )?),
        })
    }

    /// Bytes a part with these weights and caches would take on this device (what
    /// [`StageBackend::import`] charges its budget).
    pub fn import_cost(&self, weights: &PartWeights<WeightView<'_>>, kv: &[KvCopy<'_>]) -> u64 {
        let weights: u64 = weights
            .tensors()
            .into_iter()
            .map(|w| each_backend!(self, StageBackend, b => b.import_cost(w)))
            .sum();
        let kv: u64 = kv
            .iter()
            .map(|c| kv_cache_bytes(c.capacity, c.view.n_kv_heads, c.view.head_dim, c.view.types))
            .sum();
        weights + kv
    }

    /// Copies a part onto this device: its weights `weights` and its sequences' caches `kv`,
    /// each tensor in one direct copy from wherever it lies.
    pub fn import(
        &self,
        weights: &PartWeights<WeightView<'_>>,
        kv: &[KvCopy<'_>],
    ) -> Result<AnyPart, WeightError> {
        Ok(map_backend!(self, StageBackend => AnyPart, b => DevicePart::import(b, weights, kv)?))
    }

    /// Puts a stage of `shape` together from the parts in `slots` (indexed as [`Slot::index`]),
    /// which must already be on this backend. They are taken out of `slots` only once its
    /// buffers are allocated, so on failure every part is still in its slot.
    pub fn assemble(
        &self,
        shape: &StageShape<'_>,
        slots: &mut [Option<AnyPart>],
    ) -> Result<AnyStage, WeightError> {
        Ok(match self {
            StageBackend::Cpu(b) => AnyStage::Cpu(assemble_on(
                b,
                shape,
                slots,
                |p| match p {
                    AnyPart::Cpu(p) => Some(p),
                    _ => None,
                },
                |p| match p {
                    AnyPart::Cpu(p) => Some(p),
                    _ => None,
                },
            )?),
            StageBackend::Cuda(b) => AnyStage::Cuda(assemble_on(
                b,
                shape,
                slots,
                |p| match p {
                    AnyPart::Cuda(p) => Some(p),
                    _ => None,
                },
                |p| match p {
                    AnyPart::Cuda(p) => Some(p),
                    _ => None,
                },
            )?),
        })
    }
}

/// [`StageBackend::assemble`] on a backend of type `B`, whose parts `typed` finds and `take`
/// unwraps among parts of every type.
fn assemble_on<B: Backend>(
    b: &Arc<B>,
    shape: &StageShape<'_>,
    slots: &mut [Option<AnyPart>],
    typed: impl Fn(&AnyPart) -> Option<&DevicePart<B>>,
    take: impl Fn(AnyPart) -> Option<DevicePart<B>>,
) -> Result<Stage<B>, WeightError> {
    let n_layer = shape.config.n_layer;
    let wanted: Vec<usize> = shape
        .layers
        .clone()
        .chain(shape.head.then_some(n_layer))
        .collect();
    for &i in &wanted {
        let here = slots
            .get(i)
            .and_then(Option::as_ref)
            .and_then(&typed)
            .is_some_and(|p| Arc::ptr_eq(&p.backend, b));
        if !here {
            return Err(WeightError::Misplaced(format!(
                "{} is not on {}",
                Slot::at(i, n_layer),
                b.device_name()
            )));
        }
    }
    let scratch = Stage::alloc_scratch(
        &**b,
        shape.config,
        shape.max_batch,
        shape.head,
        shape.max_logit_rows,
    )?;
    let parts = wanted
        .iter()
        .filter_map(|&i| slots[i].take())
        .filter_map(take)
        .collect();
    Stage::from_parts(
        Arc::clone(b),
        Arc::clone(shape.config),
        shape.layers.clone(),
        parts,
        scratch,
        shape.max_batch,
        shape.max_logit_rows,
    )
}

/// A pipeline stage on whichever backend its device has, so one pipeline can mix devices.
// The variants differ by a few hundred bytes of buffer handles; a pipeline holds one stage per
// device and moves them only at load and re-split, so they stay unboxed.
#[allow(clippy::large_enum_variant)]
pub enum AnyStage {
    /// On a CPU device.
    Cpu(Stage<CpuBackend>),
    /// On a GPU.
    Cuda(Stage<CudaBackend>),
}

impl AnyStage {
    /// Global indices of the layers it runs.
    pub fn layers(&self) -> Range<usize> {
        each_backend!(self, AnyStage, s => s.layers())
    }

    /// Its device's name.
    pub fn device_name(&self) -> &str {
        each_backend!(self, AnyStage, s => s.device_name())
    }

    /// Bytes of weights resident.
    pub fn weight_bytes(&self) -> u64 {
        each_backend!(self, AnyStage, s => s.weight_bytes())
    }

    /// Bytes of KV cache resident.
    pub fn kv_bytes(&self) -> u64 {
        each_backend!(self, AnyStage, s => s.kv_bytes())
    }

    /// Whether it holds the output head.
    pub fn has_head(&self) -> bool {
        each_backend!(self, AnyStage, s => s.has_head())
    }

    /// Waits until the work queued on its device so far has run.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        each_backend!(self, AnyStage, s => s.backend().synchronize())
    }

    /// Turns CUDA graphs of its decode steps on or off (see [`Stage::set_graphs`]).
    pub fn set_graphs(&mut self, enabled: bool) {
        each_backend!(self, AnyStage, s => s.set_graphs(enabled))
    }

    /// What its CUDA graphs have done, and how many it holds (see [`Stage::graph_counts`]).
    pub fn graph_counts(&self) -> (GraphCounts, usize) {
        each_backend!(self, AnyStage, s => s.graph_counts())
    }

    /// The device holding experts of its layers elsewhere, those layers and their bytes (see
    /// [`Stage::experts_elsewhere`]).
    pub fn experts_elsewhere(&self) -> Option<(String, Range<usize>, u64)> {
        each_backend!(self, AnyStage, s => s.experts_elsewhere())
    }

    /// Takes out the experts its layers hold elsewhere, by layer (see [`Stage::take_experts`]).
    pub fn take_experts(&mut self) -> Vec<(usize, AnyExperts)> {
        each_backend!(self, AnyStage, s => s.take_experts())
    }

    /// Gives layer `il` its experts held elsewhere (see [`Stage::put_experts`]).
    pub fn put_experts(&mut self, il: usize, experts: AnyExperts) -> Result<(), WeightError> {
        each_backend!(self, AnyStage, s => s.put_experts(il, experts))
    }

    /// Moves layer `il`'s experts off its device (see [`Stage::experts_out`]).
    pub fn experts_out(&mut self, il: usize, load: &ExpertLoader<'_>) -> Result<u64, WeightError> {
        each_backend!(self, AnyStage, s => s.experts_out(il, load))
    }

    /// Brings layer `il`'s experts back onto its device (see [`Stage::experts_home`]).
    pub fn experts_home(&mut self, il: usize) -> Result<u64, WeightError> {
        each_backend!(self, AnyStage, s => s.experts_home(il))
    }

    /// Allocates KV caches of `types` for a new sequence.
    pub fn add_sequence(
        &mut self,
        seq: SeqId,
        capacity: usize,
        types: KvTypes,
    ) -> Result<(), BackendError> {
        each_backend!(self, AnyStage, s => s.add_sequence(seq, capacity, types))
    }

    /// Allocates KV caches for a new sequence holding the first `len` positions of another's
    /// (see [`Stage::fork_sequence`]).
    pub fn fork_sequence(
        &mut self,
        src: SeqId,
        seq: SeqId,
        len: usize,
        capacity: usize,
    ) -> Result<(), BackendError> {
        each_backend!(self, AnyStage, s => s.fork_sequence(src, seq, len, capacity))
    }

    /// Bytes of one sequence's KV caches.
    pub fn sequence_kv_bytes(&self, seq: SeqId) -> u64 {
        each_backend!(self, AnyStage, s => s.sequence_kv_bytes(seq))
    }

    /// Frees a sequence's KV caches.
    pub fn remove_sequence(&mut self, seq: SeqId) {
        each_backend!(self, AnyStage, s => s.remove_sequence(seq))
    }

    /// Its device's backend.
    pub fn backend(&self) -> StageBackend {
        map_backend!(self, AnyStage => StageBackend, s => Arc::clone(s.backend()))
    }

    /// Takes it apart into its layers and head, still on its device (see [`Stage::into_parts`]).
    pub fn into_parts(self) -> Vec<AnyPart> {
        match self {
            AnyStage::Cpu(s) => s.into_parts().into_iter().map(AnyPart::Cpu).collect(),
            AnyStage::Cuda(s) => s.into_parts().into_iter().map(AnyPart::Cuda).collect(),
        }
    }

    /// Host memory its device copies activations from and to fastest, if not ordinary memory
    /// (see [`Backend::alloc_host_staging`]).
    pub fn alloc_host_staging(
        &self,
        len: usize,
    ) -> Option<Result<Box<dyn HostStaging>, BackendError>> {
        each_backend!(self, AnyStage, s => s.backend().alloc_host_staging(len))
    }

    /// Which devices it can take activations from directly (see [`Backend::handoff_kind`]).
    pub fn handoff_kind(&self) -> Option<&'static str> {
        each_backend!(self, AnyStage, s => s.backend().handoff_kind())
    }

    /// Looks `ids` up in its head's output weight into host memory `out` (a tied embedding read
    /// where the head lies); `None` without a head or when its device does not hold weights in
    /// host memory (see [`Backend::embed_host`]).
    pub fn embed_from_head(
        &self,
        ids: &[u32],
        scale: f32,
        out: &mut [f32],
    ) -> Option<Result<(), BackendError>> {
        each_backend!(self, AnyStage, s => s.embed_from_head(ids, scale, out))
    }

    /// A host copy of its head's output weight in the file's layout; `None` without a head.
    pub fn head_output_host(&self) -> Option<Result<OwnedTensor, BackendError>> {
        each_backend!(self, AnyStage, s => s.head_output_host())
    }

    /// Whether it holds the head in host memory, so a tied embedding can read it there.
    pub fn head_in_host_memory(&self) -> bool {
        self.embed_from_head(&[], 1.0, &mut []).is_some()
    }

    /// Runs the stage's layers (see [`Stage::forward`]).
    pub fn forward(
        &mut self,
        batch: &Batch,
        hidden: &mut [f32],
        out: &mut HeadOutput,
        handoff: &mut Handoff,
    ) -> Result<(), ForwardError> {
        each_backend!(self, AnyStage, s => s.forward(batch, hidden, out, handoff))
    }

    /// Runs the head over the rows gathered for it (see [`Stage::head`]).
    pub fn head(&mut self, m: usize, out: &mut HeadOutput) -> Result<(), ForwardError> {
        each_backend!(self, AnyStage, s => s.head(m, out))
    }

    /// Turns its head's selection on the device on or off (see [`Stage::set_device_select`]).
    pub fn set_device_select(&mut self, enabled: bool) {
        each_backend!(self, AnyStage, s => s.set_device_select(enabled))
    }
}

/// A layer's experts on whichever backend their device has (see [`DeviceExperts`]).
pub enum AnyExperts {
    /// In host memory, on a CPU device.
    Cpu(DeviceExperts<CpuBackend>),
    /// On a GPU.
    Cuda(DeviceExperts<CudaBackend>),
}

impl AnyExperts {
    /// The experts' device.
    pub fn device_name(&self) -> &str {
        each_backend!(self, AnyExperts, e => e.device_name())
    }

    /// Bytes of weights resident there.
    pub fn weight_bytes(&self) -> u64 {
        each_backend!(self, AnyExperts, e => e.weight_bytes())
    }

    /// The router and experts as another device copies them (see
    /// [`DeviceExperts::weight_views`]).
    pub fn weight_views(&self) -> Result<ExpertWeights<WeightView<'_>>, BackendError> {
        each_backend!(self, AnyExperts, e => e.weight_views())
    }

    /// Runs the block over the `n` rows of `input` into `output`, both on the host (see
    /// [`DeviceExperts::forward`]).
    pub fn forward(
        &mut self,
        input: &[f32],
        n: usize,
        output: &mut [f32],
    ) -> Result<(), BackendError> {
        each_backend!(self, AnyExperts, e => e.forward(input, n, output))
    }
}

/// One part of a model taken apart, wherever it is: resident on a device of either backend, or
/// spilled to the host.
pub enum AnyPart {
    /// Resident on a CPU device.
    Cpu(DevicePart<CpuBackend>),
    /// Resident on a GPU.
    Cuda(DevicePart<CudaBackend>),
    /// Spilled to the host.
    Host(HostPart),
}

impl AnyPart {
    /// Which part.
    pub fn slot(&self) -> Slot {
        each_backend!(self, AnyPart, p => p.slot(), AnyPart::Host(h) => h.slot())
    }

    /// The device it is resident on; `None` when spilled to the host.
    pub fn device_name(&self) -> Option<&str> {
        each_backend!(self, AnyPart, p => Some(p.device_name()), AnyPart::Host(_) => None)
    }

    /// Bytes it holds on its device (weights and KV caches); when spilled, the bytes it held on
    /// the device it came from (about what it needs on the next).
    pub fn bytes(&self) -> u64 {
        each_backend!(self, AnyPart, p => p.bytes(), AnyPart::Host(h) => h.bytes())
    }

    /// Its weights as a device copies them (spilled parts: from their host copy).
    pub fn weight_views<'a>(
        &'a self,
        config: &ModelConfig,
    ) -> Result<PartWeights<WeightView<'a>>, WeightError> {
        each_backend!(
            self,
            AnyPart,
            p => p.weight_views(),
            AnyPart::Host(h) => h.weight_views(config),
        )
    }

    /// The KV caches of the `live` sequences, each with its cached positions.
    pub fn kv_views(&self, live: &[LiveSequence]) -> Result<Vec<KvCopy<'_>>, WeightError> {
        each_backend!(self, AnyPart, p => p.kv_views(live), AnyPart::Host(h) => h.kv_views(live))
    }

    /// Spills it to the host (see [`HostPart::spill`]): its weights read again from `source`,
    /// its caches of the `live` sequences copied out; dropping `self` afterwards frees its
    /// device memory.
    pub fn spill(
        &self,
        live: &[LiveSequence],
        source: &dyn PartSource,
        config: &ModelConfig,
    ) -> Result<AnyPart, WeightError> {
        let kv = || self.kv_views(live);
        let experts_elsewhere = matches!(
            self.weight_views(config)?,
            PartWeights::Layer(
                _,
                LayerWeights {
                    ffn: FeedForward::Elsewhere,
                    ..
                }
            )
        );
        Ok(AnyPart::Host(HostPart::spill(
            self.slot(),
            self.bytes(),
            experts_elsewhere,
            kv,
            source,
            config,
        )?))
    }
}
