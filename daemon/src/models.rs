//! Resident models at run time: loading one onto devices (on a blocking thread), the handle
//! through which requests reach its worker, and its placement as the wire protocol reports it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use llmd_kernels::backend::{CpuBackend, CpuMemory};
use llmd_kernels::cpu::ThreadPool;
use llmd_shared::{ErrorCode, ErrorReply, LoadRequest, ModelDetails, StagePlacement};

use crate::engine::{Job, ModelHandle, WorkerLimits};
use crate::model::load::{build_pipeline, LoadError, OpenedModel, StageSpec};
use crate::model::placement::assign_layers;
use crate::model::{ModelConfig, Pipeline};
use crate::state::Device;
use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// Context length when neither the request nor the model says less.
pub const DEFAULT_CTX: u32 = 4096;
/// Tokens per forward step at most (the prefill chunk), as llama.cpp's default micro-batch.
pub const MAX_BATCH: usize = 512;
/// Generations of one model decoded together at most; more wait their turn.
pub const MAX_SEQUENCES: usize = 8;

/// A model resident on its devices, shared by the request handlers that use it.
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
    /// Chat template (the model's or a documented fallback).
    pub chat: ChatTemplate,
    /// Context length per sequence.
    pub ctx: u32,
    /// CPU threads.
    pub threads: u32,
    /// The worker thread that owns the pipeline.
    pub handle: ModelHandle,
    /// Placement as last reported by the worker.
    placement: Mutex<Vec<StagePlacement>>,
    /// Generations running now.
    pub running: AtomicU32,
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
    /// The placement as last recorded.
    pub fn placement(&self) -> Vec<StagePlacement> {
        self.placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the worker for the current placement (KV bytes change as sequences come and go) and
    /// records it. Waits at most for the current forward step.
    pub async fn refresh_placement(&self) -> Vec<StagePlacement> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::WithPipeline(Box::new(move |p: &mut Pipeline| {
            let _ = tx.send(placement_of(p));
        }));
        if self.handle.submit(job).is_ok() {
            if let Ok(p) = rx.await {
                *self
                    .placement
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = p;
            }
        }
        self.placement()
    }

    /// Bytes held on `device`.
    pub fn bytes_on(&self, device: &str) -> u64 {
        self.placement()
            .iter()
            .filter(|s| s.device == device)
            .map(|s| s.weight_bytes + s.kv_bytes)
            .sum()
    }

    /// Bytes held on every device.
    pub fn memory_bytes(&self) -> u64 {
        self.placement()
            .iter()
            .map(|s| s.weight_bytes + s.kv_bytes)
            .sum()
    }

    /// The wire description.
    pub fn details(&self) -> ModelDetails {
        ModelDetails {
            name: self.name.clone(),
            path: self.path.display().to_string(),
            architecture: self.architecture.clone(),
            n_layer: self.config.n_layer as u32,
            ctx: self.ctx,
            threads: self.threads,
            placement: self.placement(),
            running: self.running.load(Ordering::SeqCst),
        }
    }
}

/// The placement of a pipeline's stages.
pub fn placement_of(p: &Pipeline) -> Vec<StagePlacement> {
    p.stages()
        .iter()
        .map(|s| StagePlacement {
            device: s.device_name().to_string(),
            layer_start: s.layers().start as u32,
            layer_end: s.layers().end as u32,
            output: s.has_head(),
            weight_bytes: s.weight_bytes(),
            kv_bytes: s.kv_bytes(),
        })
        .collect()
}

/// Maps a load failure to the error the client sees.
fn load_error(e: LoadError) -> ErrorReply {
    let code = match &e {
        LoadError::Gguf(crate::gguf::GgufError::Io { .. }) => ErrorCode::Io,
        LoadError::Config(_) => ErrorCode::Unsupported,
        LoadError::Weights(crate::model::weights::WeightError::Backend(
            llmd_kernels::backend::BackendError::OutOfMemory { .. },
        )) => ErrorCode::DoesNotFit,
        _ => ErrorCode::BadRequest,
    };
    ErrorReply::new(code, e.to_string())
}

/// The name a model file is loaded under by default: its file name without `.gguf`.
pub fn default_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    file.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(file)
}

/// The devices a request names, resolved against the daemon's, with split weights.
fn choose_devices<'a>(
    req: &LoadRequest,
    devices: &'a [Device],
) -> Result<(Vec<&'a Device>, Vec<f64>), ErrorReply> {
    let chosen: Vec<&Device> = if req.devices.is_empty() {
        devices.first().into_iter().collect()
    } else {
        req.devices
            .iter()
            .map(|name| {
                devices.iter().find(|d| &d.name == name).ok_or_else(|| {
                    let known: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                    ErrorReply::new(
                        ErrorCode::NotFound,
                        format!("unknown device {name:?} (known: {})", known.join(", ")),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    if chosen.is_empty() {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            "no device to load the model on",
        ));
    }
    let split: Vec<f64> = if req.split.is_empty() {
        chosen
            .iter()
            .map(|d| d.memory_budget_bytes as f64)
            .collect()
    } else {
        if req.split.len() != chosen.len() {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "--split has {} weights for {} devices",
                    req.split.len(),
                    chosen.len()
                ),
            ));
        }
        if req.split.iter().any(|w| !w.is_finite() || *w < 0.0)
            || req.split.iter().all(|w| *w == 0.0)
        {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                "split weights must be non-negative and not all zero",
            ));
        }
        req.split.iter().map(|&w| w as f64).collect()
    };
    Ok((chosen, split))
}

/// Loads a model as `req` asks (blocking: run it on a blocking thread). `memory_of` gives each
/// CPU device's shared memory ledger; `progress(done, total)` reports stages loaded.
pub fn load_blocking(
    req: &LoadRequest,
    name: String,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<CpuMemory>,
    progress: impl FnMut(usize, usize),
) -> Result<(LoadedModel, f64, u64), ErrorReply> {
    let started = Instant::now();
    let path = PathBuf::from(&req.path);
    let (chosen, split) = choose_devices(req, devices)?;
    if chosen
        .iter()
        .any(|d| d.kind != llmd_shared::DeviceKind::Cpu)
    {
        return Err(ErrorReply::new(
            ErrorCode::Unsupported,
            "only CPU devices can hold models in this build",
        ));
    }
    let model = OpenedModel::open(&path).map_err(load_error)?;
    let tokenizer = Arc::new(
        Tokenizer::from_metadata(&model.description.tokenizer)
            .map_err(|e| ErrorReply::new(ErrorCode::Unsupported, format!("tokenizer: {e}")))?,
    );
    let chat = ChatTemplate::new(
        model.description.tokenizer.chat_template.as_deref(),
        &tokenizer,
    )
    .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, format!("chat template: {e}")))?;
    let ctx = req
        .ctx
        .unwrap_or(DEFAULT_CTX)
        .min(model.config.context_length.max(1) as u32)
        .max(1);
    let threads = req
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
        .clamp(1, 256);
    let pool =
        Arc::new(ThreadPool::new(threads as usize).map_err(|e| {
            ErrorReply::new(ErrorCode::Internal, format!("cannot start threads: {e}"))
        })?);
    let (ranges, head) = assign_layers(model.config.n_layer, &split);
    let specs: Vec<StageSpec> = chosen
        .iter()
        .zip(ranges)
        .enumerate()
        .filter(|(i, (_, r))| r.start < r.end || *i == head)
        .map(|(i, (dev, layers))| StageSpec {
            backend: Arc::new(CpuBackend::new(
                dev.name.clone(),
                memory_of(dev),
                Arc::clone(&pool),
            )),
            layers,
            head: i == head,
        })
        .collect();
    let pipeline =
        build_pipeline(&model, specs, MAX_BATCH, MAX_SEQUENCES, progress).map_err(load_error)?;
    let placement = placement_of(&pipeline);
    let bytes: u64 = placement.iter().map(|s| s.weight_bytes).sum();
    let limits = WorkerLimits {
        n_ctx: ctx as usize,
        max_batch: MAX_BATCH,
        max_sequences: MAX_SEQUENCES,
    };
    let handle =
        ModelHandle::spawn(&name, pipeline, Arc::clone(&tokenizer), limits).map_err(|e| {
            ErrorReply::new(
                ErrorCode::Internal,
                format!("cannot start the model's worker: {e}"),
            )
        })?;
    let loaded = LoadedModel {
        name,
        path,
        architecture: model.config.arch.name().to_string(),
        config: Arc::clone(&model.config),
        tokenizer,
        chat,
        ctx,
        threads,
        handle,
        placement: Mutex::new(placement),
        running: AtomicU32::new(0),
    };
    Ok((loaded, started.elapsed().as_secs_f64(), bytes))
}
