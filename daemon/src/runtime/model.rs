//! A model resident on its devices ([`LoadedModel`]): the handle through which requests reach
//! its worker, its health, and its placement ([`StagePlacement`]) as the worker last reported it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use llmd_kernels::backend::KvTypes;
use llmd_kernels::cpu::ThreadPool;

use super::error::{ErrorKind, RuntimeError};
use super::prompt::{PromptModel, PromptSlots};
use crate::engine::{Job, ModelHandle};
use crate::model::load::ModelFile;
use crate::model::plan::ModelSizes;
use crate::model::{ModelConfig, Pipeline};
use llmd_tokenizer::chat::ChatTemplate;
use llmd_tokenizer::Tokenizer;

/// Context length when neither the request nor the model says less.
pub const DEFAULT_CTX: u32 = 4096;
/// Tokens per forward step at most (the prefill chunk), as llama.cpp's default micro-batch.
pub const MAX_BATCH: usize = 512;
/// Generations of one model decoded together at most; more wait their turn.
pub const MAX_SEQUENCES: usize = 8;

/// One pipeline stage of a resident model: where it runs and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlacement {
    /// Device name.
    pub device: String,
    /// First layer (inclusive).
    pub layer_start: u32,
    /// Last layer (exclusive).
    pub layer_end: u32,
    /// Whether the output head (final norm and vocabulary projection) is on this device.
    pub output: bool,
    /// Bytes of weights on the device.
    pub weight_bytes: u64,
    /// Bytes of KV cache on the device now.
    pub kv_bytes: u64,
    /// The device holding the experts of `expert_layers` instead (`--cpu-moe`), if any.
    pub expert_device: Option<String>,
    /// The layers of this stage whose experts are on `expert_device` (start, end).
    pub expert_layers: (u32, u32),
    /// Bytes of those experts (charged to `expert_device`).
    pub expert_bytes: u64,
}

/// A model resident on its devices, shared by the requests that use it.
pub struct LoadedModel {
    /// The name it is registered under.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// Its architecture's name.
    pub architecture: String,
    /// Forward-pass configuration.
    pub config: Arc<ModelConfig>,
    /// Tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Chat template (the model's or a documented fallback), shared with the threads that
    /// render it.
    pub chat: Arc<ChatTemplate>,
    /// Limits on the template renders and tokenizations of this model's prompts running at once.
    pub prompts: PromptSlots,
    /// Context length per sequence (changed by a re-split with a new context).
    pub(super) ctx: AtomicU32,
    /// Threads of the compute pool this model's CPU work may use at once (its share).
    pub threads: u32,
    /// The file the weights come from, open but not mapped (read again when a re-split spills
    /// a layer, refused once it changed).
    pub(super) source: Arc<ModelFile>,
    /// Bytes of the host copy of the token embedding table (0 when the lookups read a tied head
    /// on a CPU device), as last recorded by the worker.
    pub(super) embedding_bytes: Arc<AtomicU64>,
    /// What the model's pieces cost on a device, for plans (with its KV cache types, which the
    /// pipeline allocates and a re-split keeps).
    pub(super) sizes: ModelSizes,
    /// The share of the daemon's compute pool every CPU stage of this model computes on.
    pub(super) pool: Arc<ThreadPool>,
    /// The worker thread that owns the pipeline.
    pub handle: ModelHandle,
    /// Placement as last reported by the worker.
    pub(super) placement: Mutex<Vec<StagePlacement>>,
    /// Generations running now.
    pub running: AtomicU32,
    /// Its prefix cache's budget in bytes (kept for a reload from the same specification).
    pub prefix_cache_bytes: u64,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// Context length per sequence for generations started now.
    pub fn ctx(&self) -> u32 {
        self.ctx.load(Ordering::SeqCst)
    }

    /// What preparing this model's prompts needs (`runtime::prompt`).
    pub fn prompt_model(&self) -> PromptModel<'_> {
        PromptModel {
            name: &self.name,
            tokenizer: &self.tokenizer,
            chat: &self.chat,
            slots: &self.prompts,
        }
    }

    /// The placement as last recorded; none once the model has failed (its worker freed the
    /// stages).
    pub fn placement(&self) -> Vec<StagePlacement> {
        if self.failure().is_some() {
            return Vec::new();
        }
        self.last_placement()
    }

    /// The placement as last recorded, even for a failed model (a reload puts it back there).
    pub(super) fn last_placement(&self) -> Vec<StagePlacement> {
        self.placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records `placement` as the model's current one.
    pub(super) fn set_placement(&self, placement: Vec<StagePlacement>) {
        *self
            .placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = placement;
    }

    /// Why the model failed (a step of its worker panicked), if it has; it then refuses every
    /// request with this reason until a reload.
    pub fn failure(&self) -> Option<String> {
        self.handle.failure()
    }

    /// Queues a job on the model's worker; refused with the reason once the model has failed.
    pub fn submit(&self, job: Job) -> Result<(), RuntimeError> {
        self.handle
            .submit(job)
            .map_err(|e| self.unavailable(e.to_string()))
    }

    /// The error for a request the worker could not finish: the model's failure when it has
    /// failed (naming how to recover), else `otherwise`.
    pub fn unavailable(&self, otherwise: impl Into<String>) -> RuntimeError {
        match self.failure() {
            Some(why) => RuntimeError::new(
                ErrorKind::Internal,
                format!(
                    "model {:?} is not serving: {why} (llmctl reload {}, or load it again with \
                     --replace)",
                    self.name, self.name
                ),
            ),
            None => RuntimeError::new(ErrorKind::Internal, otherwise),
        }
    }

    /// Asks the worker for the current placement (KV bytes change as sequences come and go) and
    /// records it. Waits at most for the current forward step.
    pub async fn refresh_placement(&self) -> Vec<StagePlacement> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let embedding = Arc::clone(&self.embedding_bytes);
        let job = Job::WithPipeline(Box::new(move |p: &mut Pipeline| {
            embedding.store(p.embedding_bytes(), Ordering::SeqCst);
            let _ = tx.send(placement_of(p));
        }));
        if self.submit(job).is_ok() {
            if let Ok(p) = rx.await {
                self.set_placement(p);
            }
        }
        self.placement()
    }

    /// Element types of its KV caches' keys and values.
    pub fn kv_types(&self) -> KvTypes {
        self.sizes.kv_types
    }

    /// Bytes held on `device`.
    pub fn bytes_on(&self, device: &str) -> u64 {
        self.placement()
            .iter()
            .filter(|s| s.device == device)
            .map(|s| s.weight_bytes + s.kv_bytes)
            .sum()
    }

    /// Host memory it holds: its stages on CPU devices (weights and KV caches) and its
    /// embedding table's own copy; nothing file-backed, the model file is never mapped.
    pub fn host_memory(&self) -> HostBytes {
        let on_cpu: u64 = self
            .placement()
            .iter()
            .filter(|s| crate::devices::is_cpu_device(&s.device))
            .map(|s| s.weight_bytes + s.kv_bytes)
            .sum();
        let embedding = if self.failure().is_some() {
            0
        } else {
            self.embedding_bytes.load(Ordering::SeqCst)
        };
        HostBytes {
            anon: on_cpu + embedding,
            file: 0,
        }
    }

    /// Bytes held on every device.
    pub fn memory_bytes(&self) -> u64 {
        self.placement()
            .iter()
            .map(|s| s.weight_bytes + s.kv_bytes)
            .sum()
    }

    /// Generations decoding now and generations waiting for one of the worker's
    /// [`MAX_SEQUENCES`] decoding slots.
    pub fn load_now(&self) -> (u64, u64) {
        let n = u64::from(self.running.load(Ordering::SeqCst));
        let slots = MAX_SEQUENCES as u64;
        (n.min(slots), n.saturating_sub(slots))
    }

    /// The distinct devices the model's stages run on, in stage order.
    pub fn devices(&self) -> Vec<String> {
        let mut devices: Vec<String> = self.placement().into_iter().map(|s| s.device).collect();
        devices.dedup();
        devices
    }
}

/// The placement of a pipeline's stages.
/// Host memory a model holds, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostBytes {
    /// Anonymous memory (owned copies of weights, KV caches, the embedding table).
    pub anon: u64,
    /// Pages of the model file (0: the file is read, never mapped).
    pub file: u64,
}

pub fn placement_of(p: &Pipeline) -> Vec<StagePlacement> {
    p.stages()
        .iter()
        .map(|s| {
            let experts = s.experts_elsewhere();
            StagePlacement {
                device: s.device_name().to_string(),
                layer_start: s.layers().start as u32,
                layer_end: s.layers().end as u32,
                output: s.has_head(),
                weight_bytes: s.weight_bytes(),
                kv_bytes: s.kv_bytes(),
                expert_layers: experts
                    .as_ref()
                    .map_or((0, 0), |(_, l, _)| (l.start as u32, l.end as u32)),
                expert_bytes: experts.as_ref().map_or(0, |(_, _, b)| *b),
                expert_device: experts.map(|(d, _, _)| d),
            }
        })
        .collect()
}

/// The `--n-cpu-moe` that puts the experts where `stages` have them: the end of the last layer
/// range whose experts live on another device; `None` when none do.
pub(super) fn n_cpu_moe_of(stages: &[StagePlacement]) -> Option<u32> {
    stages
        .iter()
        .filter(|s| s.expert_device.is_some())
        .map(|s| s.expert_layers.1)
        .max()
}

/// Split weights that put the layers where `stages` have them: layer counts, the head counting
/// as one more layer of its device, reproduce the ranges under llama.cpp's rule.
pub(super) fn layer_counts(stages: &[StagePlacement]) -> Vec<f32> {
    stages
        .iter()
        .map(|s| (s.layer_end - s.layer_start) as f32 + f32::from(u8::from(s.output)))
        .collect()
}
