//! A model split by layers over one or more devices: the token embedding lookup on the host
//! (as llama.cpp keeps its input layer on the CPU; from one copy of the table, see
//! [`super::embedding`]), then each stage's layers in order, with the residual stream crossing
//! between devices at stage boundaries. The last stage produces logits.

use std::ops::Range;
use std::sync::Arc;

use llmd_kernels::backend::{BackendError, HostStaging, KvTypes};

use super::backend::{DeviceBackend, StageBackend};
use super::batch::{Batch, SeqId};
use super::config::ModelConfig;
use super::embedding::Embedding;
use super::host_tensors::OwnedTensor;
use super::parts::Part;
use super::stage::{ForwardError, Handoff, Stage};

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

/// A loaded model: host embedding plus stages covering every layer in order.
pub struct Pipeline {
    /// Hyperparameters.
    config: Arc<ModelConfig>,
    /// Where token embedding rows are read: an owned table, or the tied head's weight.
    embedding: Embedding,
    /// Whether the output head is the token embedding (the file has no `output.weight`).
    tied: bool,
    /// Stages in layer order; the last holds the head.
    stages: Vec<Box<dyn PipelineStage>>,
    /// Residual stream on the host between stages: `(batch, n_embd)`.
    hidden: Vec<f32>,
    /// The same in page-locked memory when a stage's device offers it (a GPU copies from and to
    /// it directly), else `None` and `hidden` serves.
    staging: Option<Box<dyn HostStaging>>,
    /// Whether page-locked memory is still worth asking for (no stage offers it, or allocating
    /// it failed once: ordinary memory then serves).
    want_staging: bool,
    /// Stage boundaries crossed device to device.
    device_handoffs: u64,
    /// Element types of the KV caches of sequences added from now on (f16 unless the load asked
    /// otherwise; a re-split keeps the running sequences' caches as they are).
    kv_types: KvTypes,
}

impl Pipeline {
    /// Assembles a pipeline; the stages must cover `0..n_layer` in order and the last must hold
    /// the head. `embedding` is where token rows are read (shared with the head only if `tied`
    /// and the last stage holds it in host memory); `tied` says whether the head is the token
    /// embedding.
    pub fn new(
        config: Arc<ModelConfig>,
        embedding: Embedding,
        tied: bool,
        stages: Vec<Box<dyn PipelineStage>>,
    ) -> Result<Self, ForwardError> {
        let mut next = 0;
        for s in &stages {
            if s.layers().start != next {
                return Err(ForwardError::BadBatch(format!(
                    "stage on {} starts at layer {}, expected {next}",
                    s.device_name(),
                    s.layers().start
                )));
            }
            next = s.layers().end;
        }
        if next != config.n_layer || !stages.last().is_some_and(|s| s.has_head()) {
            return Err(ForwardError::BadBatch(
                "stages do not cover the model".into(),
            ));
        }
        if matches!(embedding, Embedding::SharedWithHead)
            && !(tied && stages.last().is_some_and(|s| s.head_in_host_memory()))
        {
            return Err(ForwardError::BadBatch(
                "the embedding can be shared only with a tied head in host memory".into(),
            ));
        }
        Ok(Pipeline {
            config,
            embedding,
            tied,
            stages,
            hidden: Vec::new(),
            staging: None,
            want_staging: true,
            device_handoffs: 0,
            kv_types: KvTypes::F16,
        })
    }

    /// The pipeline with KV caches of `types` for the sequences it adds (the caller has checked
    /// that the model's heads are whole blocks of them: [`KvTypes::check_head_dim`]).
    pub fn with_kv_types(mut self, types: KvTypes) -> Self {
        self.kv_types = types;
        self
    }

    /// Element types of the KV caches it allocates.
    pub fn kv_types(&self) -> KvTypes {
        self.kv_types
    }

    /// Hyperparameters.
    pub fn config(&self) -> &Arc<ModelConfig> {
        &self.config
    }

    /// The stages, in layer order.
    pub fn stages(&self) -> &[Box<dyn PipelineStage>] {
        &self.stages
    }

    /// Bytes of host memory the embedding table holds of its own (0 when it reads the tied head
    /// where that lies).
    pub fn embedding_bytes(&self) -> u64 {
        self.embedding.owned_bytes()
    }

    /// Whether the embedding lookups read the tied head's weight (no copy of their own).
    pub fn embedding_shared(&self) -> bool {
        matches!(self.embedding, Embedding::SharedWithHead)
    }

    /// Before the stages are taken apart with the head going to another device: an embedding
    /// shared with the head is copied into owned memory first (see [`Embedding::unshare`]).
    pub fn unshare_embedding(&mut self) -> Result<(), ForwardError> {
        self.embedding.unshare(&self.stages)
    }

    /// After the stages changed: shares the embedding with the head again if the head is tied and
    /// in host memory, dropping the owned copy.
    pub fn share_embedding(&mut self) {
        self.embedding.share(self.tied, &self.stages);
    }

    /// Replaces the stages (a re-split), returning the old ones.
    pub fn replace_stages(
        &mut self,
        stages: Vec<Box<dyn PipelineStage>>,
    ) -> Vec<Box<dyn PipelineStage>> {
        // The new stages may sit on other devices: ask them for staging memory afresh.
        self.staging = None;
        self.want_staging = true;
        std::mem::replace(&mut self.stages, stages)
    }

    /// Mutable access to the stages.
    pub fn stages_mut(&mut self) -> &mut [Box<dyn PipelineStage>] {
        &mut self.stages
    }

    /// Allocates KV caches (of [`Pipeline::kv_types`]) for a sequence on every stage.
    pub fn add_sequence(&mut self, seq: SeqId, capacity: usize) -> Result<(), BackendError> {
        for i in 0..self.stages.len() {
            if let Err(e) = self.stages[i].add_sequence(seq, capacity, self.kv_types) {
                for s in &mut self.stages[..i] {
                    s.remove_sequence(seq);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Frees a sequence's KV caches on every stage.
    pub fn remove_sequence(&mut self, seq: SeqId) {
        for s in &mut self.stages {
            s.remove_sequence(seq);
        }
    }

    /// Runs the whole model over `batch`; writes the logits of the tokens that want them, in
    /// batch order, `n_vocab` each. The residual stream crosses between stages in host memory:
    /// page-locked when a stage's device offers it (GPU copies then run as direct DMA), else
    /// ordinary memory.
    pub fn forward(&mut self, batch: &Batch, logits: &mut Vec<f32>) -> Result<(), ForwardError> {
        let need = batch.len() * self.config.n_embd;
        self.ensure_staging(need);
        let hidden: &mut [f32] = match self.staging.as_mut() {
            Some(staging) => &mut staging.values()?[..need],
            None => {
                self.hidden.resize(need, 0.0);
                &mut self.hidden
            }
        };
        self.embedding
            .lookup(&self.config, &self.stages, &batch.tokens, hidden)?;
        let kinds: Vec<Option<&'static str>> =
            self.stages.iter().map(|s| s.handoff_kind()).collect();
        let mut input = None;
        for (i, stage) in self.stages.iter_mut().enumerate() {
            // Device to device when this stage and the next can copy from each other.
            let next = kinds.get(i + 1).copied().flatten();
            let mut handoff = Handoff {
                input: input.take(),
                keep_output: next.is_some() && kinds[i] == next,
                output: None,
            };
            stage.forward(batch, hidden, logits, &mut handoff)?;
            if handoff.output.is_some() {
                self.device_handoffs += 1;
            }
            input = handoff.output;
        }
        Ok(())
    }

    /// Stage boundaries crossed device to device so far (the others went through the host).
    pub fn device_handoffs(&self) -> u64 {
        self.device_handoffs
    }

    /// Whether the residual stream crosses in page-locked memory (after a forward step).
    pub fn uses_page_locked_staging(&self) -> bool {
        self.staging.is_some()
    }

    /// Makes `staging` hold at least `need` values if a stage offers page-locked memory (its
    /// allocations are slow, so it grows to the largest batch seen and stays).
    fn ensure_staging(&mut self, need: usize) {
        if !self.want_staging || self.staging.as_ref().is_some_and(|s| s.len() >= need) {
            return;
        }
        let offered = self.stages.iter().find_map(|s| s.alloc_host_staging(need));
        match offered {
            Some(Ok(staging)) => self.staging = Some(staging),
            Some(Err(e)) => {
                tracing::warn!("page-locked memory for activations: {e}; using ordinary memory");
                self.staging = None;
                self.want_staging = false;
            }
            None => {
                self.staging = None;
                self.want_staging = false;
            }
        }
    }
}
