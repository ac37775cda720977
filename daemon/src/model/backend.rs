//! The backend a stage is built on, with its type chosen at run time: the CPU backend for `cpu:N`
//! devices, the CUDA backend for `cuda:N`. Stages are generic over [`Backend`]; this is the one
//! place that picks the concrete type, so loading and re-splitting stay device-agnostic. The
//! stages of a pipeline are held as [`PipelineStage`] trait objects, implemented here for every
//! [`Stage`] on a [`DeviceBackend`].

use std::ops::Range;
use std::sync::{Arc, Mutex};

use llmd_kernels::backend::{
    kv_cache_bytes, Backend, BackendError, CpuBackend, CudaBackend, HostStaging, KvTypes,
    WeightView,
};

use super::batch::{Batch, SeqId};
use super::config::ModelConfig;
use super::host_tensors::OwnedTensor;
use super::host_tensors::PartSource;
use super::moe::{DeviceExperts, ExpertLoader, ExpertStage, ExpertsElsewhere, MoeScratch};
use super::parts::{DevicePart, KvCopy, Part, PartWeights, Slot};
use super::stage::{ForwardError, Handoff, Stage};
use super::weights::{ExpertWeights, WeightError};

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

/// A backend type a [`StageBackend`] can hold.
pub trait DeviceBackend: Backend + Sized {
    /// It, shared, as a [`StageBackend`].
    fn stage_backend(self: &Arc<Self>) -> StageBackend;
}

impl DeviceBackend for CpuBackend {
    fn stage_backend(self: &Arc<Self>) -> StageBackend {
        StageBackend::Cpu(Arc::clone(self))
    }
}

impl DeviceBackend for CudaBackend {
    fn stage_backend(self: &Arc<Self>) -> StageBackend {
        StageBackend::Cuda(Arc::clone(self))
    }
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
        match self {
            StageBackend::Cpu(b) => b.device_name(),
            StageBackend::Cuda(b) => b.device_name(),
        }
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
    ) -> Result<Box<dyn PipelineStage>, WeightError> {
        fn load<B: DeviceBackend>(
            b: &Arc<B>,
            config: Arc<ModelConfig>,
            source: &dyn PartSource,
            (layers, head): (Range<usize>, bool),
            (max_batch, max_logit_rows): (usize, usize),
            experts: Option<&ExpertsElsewhere<'_>>,
            loaded: &mut dyn FnMut(),
        ) -> Result<Box<dyn PipelineStage>, WeightError> {
            Ok(Box::new(Stage::load(
                Arc::clone(b),
                config,
                source,
                layers,
                head,
                max_batch,
                max_logit_rows,
                experts,
                loaded,
            )?))
        }
        let sizes = (max_batch, max_logit_rows);
        let at = (layers, head);
        match self {
            StageBackend::Cpu(b) => load(b, config, source, at, sizes, experts, loaded),
            StageBackend::Cuda(b) => load(b, config, source, at, sizes, experts, loaded),
        }
    }

    /// Uploads one layer's experts to this device (`--cpu-moe`), with buffers for batches of up
    /// to `max_batch` tokens.
    pub fn load_experts(
        &self,
        config: &ModelConfig,
        weights: &ExpertWeights<WeightView<'_>>,
        scratch: &mut ExpertScratch,
        max_batch: usize,
    ) -> Result<Box<dyn ExpertStage>, WeightError> {
        Ok(match self {
            StageBackend::Cpu(b) => Box::new(DeviceExperts::load(
                Arc::clone(b),
                config,
                weights,
                &mut scratch.cpu,
                max_batch,
            )?),
            StageBackend::Cuda(b) => Box::new(DeviceExperts::load(
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
            .map(|w| match self {
                StageBackend::Cpu(b) => b.import_cost(w),
                StageBackend::Cuda(b) => b.import_cost(w),
            })
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
    ) -> Result<Box<dyn Part>, WeightError> {
        Ok(match self {
            StageBackend::Cpu(b) => Box::new(DevicePart::import(b, weights, kv)?),
            StageBackend::Cuda(b) => Box::new(DevicePart::import(b, weights, kv)?),
        })
    }

    /// Puts a stage of `shape` together from the parts in `slots` (indexed as [`Slot::index`]),
    /// which must already be on this backend. They are taken out of `slots` only once its
    /// buffers are allocated, so on failure every part is still in its slot.
    pub fn assemble(
        &self,
        shape: &StageShape<'_>,
        slots: &mut [Option<Box<dyn Part>>],
    ) -> Result<Box<dyn PipelineStage>, WeightError> {
        match self {
            StageBackend::Cpu(b) => assemble_on(b, shape, slots),
            StageBackend::Cuda(b) => assemble_on(b, shape, slots),
        }
    }
}

/// [`StageBackend::assemble`] on a backend of type `B`.
fn assemble_on<B: DeviceBackend>(
    b: &Arc<B>,
    shape: &StageShape<'_>,
    slots: &mut [Option<Box<dyn Part>>],
) -> Result<Box<dyn PipelineStage>, WeightError> {
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
            .and_then(|p| p.as_any().downcast_ref::<DevicePart<B>>())
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
        .filter_map(|p| p.into_any().downcast::<DevicePart<B>>().ok())
        .map(|p| *p)
        .collect();
    Ok(Box::new(Stage::from_parts(
        Arc::clone(b),
        Arc::clone(shape.config),
        shape.layers.clone(),
        parts,
        scratch,
        shape.max_batch,
        shape.max_logit_rows,
    )?))
}

/// A pipeline stage with its backend type erased, so one pipeline can mix devices.
pub trait PipelineStage: Send {
    /// Global indices of the layers it runs.
    fn layers(&self) -> Range<usize>;
    /// Its device's name.
    fn device_name(&self) -> &str;
    /// Bytes of weights resident.
    fn weight_bytes(&self) -> u64;
    /// Bytes of KV cache resident.
    fn kv_bytes(&self) -> u64;
    /// Whether it holds the output head.
    fn has_head(&self) -> bool;
    /// The device holding experts of its layers elsewhere, those layers and their bytes (see
    /// [`Stage::experts_elsewhere`]).
    fn experts_elsewhere(&self) -> Option<(String, Range<usize>, u64)>;
    /// Takes out the experts its layers hold elsewhere, by layer (see [`Stage::take_experts`]).
    fn take_experts(&mut self) -> Vec<(usize, Box<dyn ExpertStage>)>;
    /// Gives layer `il` its experts held elsewhere (see [`Stage::put_experts`]).
    fn put_experts(&mut self, il: usize, experts: Box<dyn ExpertStage>) -> Result<(), WeightError>;
    /// Moves layer `il`'s experts off its device (see [`Stage::experts_out`]).
    fn experts_out(&mut self, il: usize, load: &ExpertLoader<'_>) -> Result<u64, WeightError>;
    /// Brings layer `il`'s experts back onto its device (see [`Stage::experts_home`]).
    fn experts_home(&mut self, il: usize) -> Result<u64, WeightError>;
    /// Allocates KV caches of `types` for a new sequence.
    fn add_sequence(
        &mut self,
        seq: SeqId,
        capacity: usize,
        types: KvTypes,
    ) -> Result<(), BackendError>;
    /// Frees a sequence's KV caches.
    fn remove_sequence(&mut self, seq: SeqId);
    /// Its device's backend.
    fn backend(&self) -> StageBackend;
    /// Takes it apart into its layers and head, still on its device (see [`Stage::into_parts`]).
    fn into_parts(self: Box<Self>) -> Vec<Box<dyn Part>>;
    /// Host memory its device copies activations from and to fastest, if not ordinary memory
    /// (see [`llmd_kernels::backend::Backend::alloc_host_staging`]).
    fn alloc_host_staging(&self, len: usize) -> Option<Result<Box<dyn HostStaging>, BackendError>>;
    /// Which devices it can take activations from directly (see [`llmd_kernels::backend::Backend::handoff_kind`]).
    fn handoff_kind(&self) -> Option<&'static str>;
    /// Looks `ids` up in its head's output weight into host memory `out` (a tied embedding read
    /// where the head lies); `None` without a head or when its device does not hold weights in
    /// host memory (see [`llmd_kernels::backend::Backend::embed_host`]).
    fn embed_from_head(
        &self,
        ids: &[u32],
        scale: f32,
        out: &mut [f32],
    ) -> Option<Result<(), BackendError>>;
    /// A host copy of its head's output weight in the file's layout; `None` without a head.
    fn head_output_host(&self) -> Option<Result<OwnedTensor, BackendError>>;
    /// Whether it holds the head in host memory, so a tied embedding can read it there.
    fn head_in_host_memory(&self) -> bool {
        self.embed_from_head(&[], 1.0, &mut []).is_some()
    }
    /// Runs the stage's layers (see [`Stage::forward`]).
    fn forward(
        &mut self,
        batch: &Batch,
        hidden: &mut [f32],
        logits: &mut Vec<f32>,
        handoff: &mut Handoff,
    ) -> Result<(), ForwardError>;
}

impl<B: DeviceBackend> PipelineStage for Stage<B> {
    fn layers(&self) -> Range<usize> {
        Stage::layers(self)
    }
    fn device_name(&self) -> &str {
        Stage::device_name(self)
    }
    fn weight_bytes(&self) -> u64 {
        Stage::weight_bytes(self)
    }
    fn kv_bytes(&self) -> u64 {
        Stage::kv_bytes(self)
    }
    fn has_head(&self) -> bool {
        Stage::has_head(self)
    }
    fn experts_elsewhere(&self) -> Option<(String, Range<usize>, u64)> {
        Stage::experts_elsewhere(self)
    }
    fn take_experts(&mut self) -> Vec<(usize, Box<dyn ExpertStage>)> {
        Stage::take_experts(self)
    }
    fn put_experts(&mut self, il: usize, experts: Box<dyn ExpertStage>) -> Result<(), WeightError> {
        Stage::put_experts(self, il, experts)
    }
    fn experts_out(&mut self, il: usize, load: &ExpertLoader<'_>) -> Result<u64, WeightError> {
        Stage::experts_out(self, il, load)
    }
    fn experts_home(&mut self, il: usize) -> Result<u64, WeightError> {
        Stage::experts_home(self, il)
    }
    fn add_sequence(
        &mut self,
        seq: SeqId,
        capacity: usize,
        types: KvTypes,
    ) -> Result<(), BackendError> {
        Stage::add_sequence(self, seq, capacity, types)
    }
    fn remove_sequence(&mut self, seq: SeqId) {
        Stage::remove_sequence(self, seq)
    }
    fn backend(&self) -> StageBackend {
        Stage::backend(self).stage_backend()
    }
    fn into_parts(self: Box<Self>) -> Vec<Box<dyn Part>> {
        Stage::into_parts(*self)
            .into_iter()
            .map(|p| Box::new(p) as Box<dyn Part>)
            .collect()
    }
    fn alloc_host_staging(&self, len: usize) -> Option<Result<Box<dyn HostStaging>, BackendError>> {
        self.backend().alloc_host_staging(len)
    }
    fn handoff_kind(&self) -> Option<&'static str> {
        self.backend().handoff_kind()
    }
    fn embed_from_head(
        &self,
        ids: &[u32],
        scale: f32,
        out: &mut [f32],
    ) -> Option<Result<(), BackendError>> {
        Stage::embed_from_head(self, ids, scale, out)
    }
    fn head_output_host(&self) -> Option<Result<OwnedTensor, BackendError>> {
        Stage::head_output_host(self)
    }
    fn forward(
        &mut self,
        batch: &Batch,
        hidden: &mut [f32],
        logits: &mut Vec<f32>,
        handoff: &mut Handoff,
    ) -> Result<(), ForwardError> {
        Stage::forward(self, batch, hidden, logits, handoff)
    }
}
