//! Resident models at run time: planning and loading one onto devices (on a blocking thread),
//! the handle through which requests reach its worker, re-splitting it live, and its placement
//! as the wire protocol reports it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use llmd_kernels::backend::{CpuBackend, CudaBackend, DeviceMemory, KvType, KvTypes};
use llmd_kernels::cpu::ThreadPool;
use llmd_shared::{
    ErrorCode, ErrorReply, KvCacheType, LoadRequest, ModelDetails, PlanReply, PlannedDevice,
    ResplitReply, ResplitRequest, StagePlacement,
};
use tokio::sync::Notify;

use crate::engine::prompt::{PromptModel, PromptSlots};
use crate::engine::{Job, ModelHandle, ResplitOutcome, WorkerLimits};
use crate::model::load::{build_pipeline, LoadError, ModelFile, OpenedModel, StageSpec};
use crate::model::plan::{self, ModelSizes, Plan, PlanDevice, PlanOptions};
use crate::model::resplit::{layout_of, resplit, Layout, LiveSequence};
use crate::model::{ModelConfig, Pipeline, StageBackend};
use crate::state::Device;
use llmd_tokenizer::chat::ChatTemplate;
use llmd_tokenizer::Tokenizer;

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
    /// Chat template (the model's or a documented fallback), shared with the threads that
    /// render it.
    pub chat: Arc<ChatTemplate>,
    /// Limits on the template renders and tokenizations of this model's prompts running at once.
    pub prompts: PromptSlots,
    /// Context length per sequence (changed by a re-split with a new context).
    ctx: AtomicU32,
    /// CPU threads.
    pub threads: u32,
    /// The memory-mapped file the weights come from (re-read when layers move).
    source: Arc<ModelFile>,
    /// What the model's pieces cost on a device, for plans (with its KV cache types, which the
    /// pipeline allocates and a re-split keeps).
    sizes: ModelSizes,
    /// The threads every stage of this model computes on.
    pool: Arc<ThreadPool>,
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
    /// Context length per sequence for generations started now.
    pub fn ctx(&self) -> u32 {
        self.ctx.load(Ordering::SeqCst)
    }

    /// What preparing this model's prompts needs (`engine::prompt`).
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
    fn last_placement(&self) -> Vec<StagePlacement> {
        self.placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the model failed (a step of its worker panicked), if it has; it then refuses every
    /// request with this reason until a reload.
    pub fn failure(&self) -> Option<String> {
        self.handle.failure()
    }

    /// Queues a job on the model's worker; refused with the reason once the model has failed.
    pub fn submit(&self, job: Job) -> Result<(), ErrorReply> {
        self.handle
            .submit(job)
            .map_err(|e| self.unavailable(e.to_string()))
    }

    /// The error for a request the worker could not finish: the model's failure when it has
    /// failed (naming how to recover), else `otherwise`.
    pub fn unavailable(&self, otherwise: impl Into<String>) -> ErrorReply {
        match self.failure() {
            Some(why) => ErrorReply::new(
                ErrorCode::Internal,
                format!(
                    "model {:?} is not serving: {why} (llmctl reload {}, or load it again with \
                     --replace)",
                    self.name, self.name
                ),
            ),
            None => ErrorReply::new(ErrorCode::Internal, otherwise),
        }
    }

    /// Asks the worker for the current placement (KV bytes change as sequences come and go) and
    /// records it. Waits at most for the current forward step.
    pub async fn refresh_placement(&self) -> Vec<StagePlacement> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::WithPipeline(Box::new(move |p: &mut Pipeline| {
            let _ = tx.send(placement_of(p));
        }));
        if self.submit(job).is_ok() {
            if let Ok(p) = rx.await {
                *self
                    .placement
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = p;
            }
        }
        self.placement()
    }

    /// Element types of its KV caches' keys and values, as the wire names them.
    pub fn cache_types(&self) -> (KvCacheType, KvCacheType) {
        let t = self.sizes.kv_types;
        (wire_cache_type(t.k), wire_cache_type(t.v))
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

    /// The load that puts this (failed) model back: its file, name, threads, context, KV cache
    /// types and last placement (its stages' devices, with their layer counts as split weights), each replaced
    /// by what the re-split request `req` gives.
    pub fn reload_request(&self, req: &ResplitRequest) -> LoadRequest {
        let last = self.last_placement();
        let devices = if req.devices.is_empty() {
            last.iter().map(|s| s.device.clone()).collect()
        } else {
            req.devices.clone()
        };
        let split = if req.split.is_empty() && req.devices.is_empty() {
            layer_counts(&last)
        } else {
            req.split.clone()
        };
        let (cache_type_k, cache_type_v) = self.cache_types();
        LoadRequest {
            path: self.path.display().to_string(),
            name: Some(self.name.clone()),
            ctx: Some(req.ctx.unwrap_or_else(|| self.ctx())),
            threads: Some(self.threads),
            devices,
            split,
            replace: true,
            cache_type_k: Some(cache_type_k),
            cache_type_v: Some(cache_type_v),
        }
    }

    /// The wire description.
    pub fn details(&self) -> ModelDetails {
        let (cache_type_k, cache_type_v) = self.cache_types();
        ModelDetails {
            name: self.name.clone(),
            path: self.path.display().to_string(),
            architecture: self.architecture.clone(),
            n_layer: self.config.n_layer as u32,
            ctx: self.ctx(),
            threads: self.threads,
            placement: self.placement(),
            running: self.running.load(Ordering::SeqCst),
            cache_type_k,
            cache_type_v,
            failed: self.failure(),
        }
    }
}

/// The kernels' cache type of a wire cache type.
fn kernel_cache_type(t: KvCacheType) -> KvType {
    match t {
        KvCacheType::F16 => KvType::F16,
        KvCacheType::Q8_0 => KvType::Q8_0,
        KvCacheType::Q4_0 => KvType::Q4_0,
    }
}

/// The wire name of a kernels' cache type.
fn wire_cache_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F16 => KvCacheType::F16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q4_0 => KvCacheType::Q4_0,
    }
}

/// The KV cache types a request asks for: f16 where it names none.
fn requested_cache_types(k: Option<KvCacheType>, v: Option<KvCacheType>) -> KvTypes {
    KvTypes {
        k: kernel_cache_type(k.unwrap_or_default()),
        v: kernel_cache_type(v.unwrap_or_default()),
    }
}

/// Refuses (`unsupported`, with the reason) cache types whose blocks do not tile the model's
/// heads.
fn check_cache_types(types: KvTypes, config: &ModelConfig) -> Result<(), ErrorReply> {
    types
        .check_head_dim(config.head_dim)
        .map_err(|e| ErrorReply::new(ErrorCode::Unsupported, e.to_string()))
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

/// Split weights that put the layers where `stages` have them: layer counts, the head counting
/// as one more layer of its device, reproduce the ranges under llama.cpp's rule.
fn layer_counts(stages: &[StagePlacement]) -> Vec<f32> {
    stages
        .iter()
        .map(|s| (s.layer_end - s.layer_start) as f32 + f32::from(u8::from(s.output)))
        .collect()
}

/// Maps a load failure to the error the client sees.
fn load_error(e: LoadError) -> ErrorReply {
    let code = match &e {
        LoadError::Gguf(llmd_gguf::GgufError::Io { .. }) => ErrorCode::Io,
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

/// The devices named by `names`, resolved against the daemon's; with no names, every usable GPU
/// (else the daemon's first device). A device may be named more than once (`cuda:0,cuda:0`): it
/// then holds several pipeline stages, each planned with an equal share of its memory, so that a
/// single GPU exercises the multi-device path. Devices that cannot hold models are refused with
/// the reason.
fn resolve_devices<'a>(
    names: &[String],
    devices: &'a [Device],
) -> Result<Vec<&'a Device>, ErrorReply> {
    let chosen = name_devices(names, devices)?;
    for d in &chosen {
        if let Some(reason) = &d.unavailable {
            return Err(ErrorReply::new(
                ErrorCode::Unsupported,
                format!("device {} cannot hold models: {reason}", d.name),
            ));
        }
    }
    Ok(chosen)
}

/// As [`resolve_devices`], but keeping devices that cannot hold models now: a plan is a dry run,
/// and a GPU configured with a `memory_budget` can be planned for on a machine without it.
fn name_devices<'a>(
    names: &[String],
    devices: &'a [Device],
) -> Result<Vec<&'a Device>, ErrorReply> {
    let chosen: Vec<&Device> = if names.is_empty() {
        crate::devices::default_load_devices(devices)
    } else {
        names
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
    Ok(chosen)
}

/// The plan's view of `chosen`: budgets, and bytes free (the ledger's free bytes plus `own(name)`,
/// bytes the model being re-split holds there and gives back), each divided among the times the
/// device is named.
fn plan_devices(
    chosen: &[&Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
    own: &dyn Fn(&str) -> u64,
) -> Vec<PlanDevice> {
    chosen
        .iter()
        .map(|d| {
            let used = memory_of(d).used().saturating_sub(own(&d.name));
            let shares = chosen.iter().filter(|e| e.name == d.name).count() as u64;
            PlanDevice {
                name: d.name.clone(),
                gpu: d.is_gpu(),
                budget_bytes: d.memory_budget_bytes / shares,
                free_bytes: d.memory_budget_bytes.saturating_sub(used) / shares,
            }
        })
        .collect()
}

/// The context length for a request asking `asked`: else [`DEFAULT_CTX`], at most the model's
/// training context. Asking for 0 is refused (`bad_request`), not rounded up.
pub fn resolve_ctx(asked: Option<u32>, context_length: usize) -> Result<u32, ErrorReply> {
    if asked == Some(0) {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            "a context of 0 tokens cannot hold a prompt: --ctx must be at least 1",
        ));
    }
    Ok(asked
        .unwrap_or(DEFAULT_CTX)
        .min(context_length.clamp(1, u32::MAX as usize) as u32)
        .max(1))
}

/// Plans `sizes` on `devices`; input errors become `bad_request`.
fn make_plan(
    sizes: &ModelSizes,
    devices: &[PlanDevice],
    split: &[f32],
    gpu_layers: Option<u32>,
    ctx: u32,
) -> Result<Plan, ErrorReply> {
    let opts = PlanOptions {
        split: (!split.is_empty()).then(|| split.iter().map(|&w| w as f64).collect()),
        gpu_layers: gpu_layers.map(|n| n as usize),
        ctx: ctx as usize,
    };
    plan::plan(sizes, devices, &opts)
        .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))
}

/// The wire form of a plan.
pub fn plan_reply(path: &str, architecture: &str, sizes: &ModelSizes, p: &Plan) -> PlanReply {
    let mut share = vec![0.0; p.devices.len()];
    // The split covers every device, or only the GPUs with -ngl.
    let targets: Vec<usize> = if p.split.len() == p.devices.len() {
        (0..p.devices.len()).collect()
    } else {
        (0..p.devices.len()).filter(|&d| p.devices[d].gpu).collect()
    };
    for (k, &d) in targets.iter().enumerate() {
        share[d] = p.split.get(k).copied().unwrap_or(0.0);
    }
    PlanReply {
        path: path.to_string(),
        architecture: architecture.to_string(),
        n_layer: sizes.n_layer as u32,
        ctx: p.ctx as u32,
        batch: MAX_BATCH as u32,
        cache_type_k: wire_cache_type(sizes.kv_types.k),
        cache_type_v: wire_cache_type(sizes.kv_types.v),
        embedding_bytes: sizes.embedding_bytes,
        devices: p
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| PlannedDevice {
                name: dev.name.clone(),
                budget_bytes: dev.budget_bytes,
                free_bytes: dev.free_bytes,
                need_bytes: p.need_on(d),
                split: share[d],
            })
            .collect(),
        stages: p
            .stages
            .iter()
            .map(|s| llmd_shared::PlannedStage {
                device: p.devices[s.device].name.clone(),
                layer_start: s.layers.start as u32,
                layer_end: s.layers.end as u32,
                output: s.head,
                weight_bytes: s.weight_bytes,
                kv_bytes: s.kv_bytes,
                scratch_bytes: s.scratch_bytes,
            })
            .collect(),
        fits: p.fits(),
        problems: p
            .verdict
            .as_ref()
            .map(|v| v.problems.clone())
            .unwrap_or_default(),
        suggestion: p.verdict.as_ref().and_then(|v| v.suggestion.clone()),
        warnings: p.warnings.clone(),
    }
}

/// Answers `llmctl plan` (blocking: reads the file's header). Only the header is needed, so a
/// file still downloading can be planned.
pub fn plan_blocking(
    req: &llmd_shared::PlanRequest,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
) -> Result<PlanReply, ErrorReply> {
    let chosen = name_devices(&req.devices, devices)?;
    let kv_types = requested_cache_types(req.cache_type_k, req.cache_type_v);
    let (description, config, sizes) =
        ModelSizes::open(Path::new(&req.path), MAX_BATCH, MAX_SEQUENCES, kv_types)
            .map_err(load_error)?;
    check_cache_types(kv_types, &config)?;
    let ctx = resolve_ctx(req.ctx, config.context_length)?;
    let plan_devs = plan_devices(&chosen, memory_of, &|_| 0);
    let p = make_plan(&sizes, &plan_devs, &req.split, req.gpu_layers, ctx)?;
    Ok(plan_reply(&req.path, &description.architecture, &sizes, &p))
}

/// One backend per distinct device of `names`, all charging the devices' shared ledgers: CPU
/// devices compute on `pool`; each GPU gets a CUDA backend (its own stream on the GPU's primary
/// context) for this model.
fn backends_for(
    names: impl IntoIterator<Item = String>,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
    pool: &Arc<ThreadPool>,
) -> Result<HashMap<String, StageBackend>, ErrorReply> {
    let mut backends = HashMap::new();
    for name in names {
        if backends.contains_key(&name) {
            continue;
        }
        let dev = devices.iter().find(|d| d.name == name).ok_or_else(|| {
            ErrorReply::new(ErrorCode::NotFound, format!("unknown device {name:?}"))
        })?;
        let backend = if dev.is_gpu() {
            let b = CudaBackend::with_memory(dev.name.clone(), dev.index as usize, memory_of(dev))
                .map_err(|e| {
                    ErrorReply::new(ErrorCode::Unsupported, format!("cannot use {name}: {e}"))
                })?;
            StageBackend::Cuda(Arc::new(b))
        } else {
            let b = CpuBackend::new(dev.name.clone(), memory_of(dev), Arc::clone(pool));
            StageBackend::Cpu(Arc::new(b))
        };
        backends.insert(name, backend);
    }
    Ok(backends)
}

/// A model file opened for a load, with its tokenizer and chat template: everything a load reads
/// from the file's header. Made by [`prepare_load`] before the placement lock is taken, so a
/// slow or stalled file never holds up other loads, unloads and re-splits.
pub struct PreparedLoad {
    /// When the load began, for its reported duration.
    started: Instant,
    /// The opened file and its configuration.
    model: OpenedModel,
    /// Its tokenizer.
    tokenizer: Arc<Tokenizer>,
    /// Its chat template.
    chat: Arc<ChatTemplate>,
}

/// Opens `path` for a load (blocking: run it on a blocking thread): a regular file only, its
/// header parsed and checked, its tokenizer and chat template built.
pub fn prepare_load(path: &Path) -> Result<PreparedLoad, ErrorReply> {
    let started = Instant::now();
    let model = OpenedModel::open(path).map_err(load_error)?;
    let tokenizer = Arc::new(
        Tokenizer::from_metadata(&model.description.tokenizer)
            .map_err(|e| ErrorReply::new(ErrorCode::Unsupported, format!("tokenizer: {e}")))?,
    );
    let chat = Arc::new(
        ChatTemplate::new(
            model.description.tokenizer.chat_template.as_deref(),
            &tokenizer,
        )
        .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, format!("chat template: {e}")))?,
    );
    Ok(PreparedLoad {
        started,
        model,
        tokenizer,
        chat,
    })
}

/// Loads a model `prepare_load` opened, as `req` asks (blocking: run it on a blocking thread,
/// holding the placement lock). `memory_of` gives each device's shared memory ledger;
/// `progress(done, total)` reports stages loaded. The split plan is checked against the
/// devices' free memory before anything is allocated: a load that does not fit is refused with
/// the numbers and a suggestion that fits (`does_not_fit`).
pub fn load_blocking(
    req: &LoadRequest,
    name: String,
    prepared: PreparedLoad,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
    changed: Option<Arc<Notify>>,
    progress: impl FnMut(usize, usize),
) -> Result<(LoadedModel, f64, u64), ErrorReply> {
    let PreparedLoad {
        started,
        model,
        tokenizer,
        chat,
    } = prepared;
    let path = PathBuf::from(&req.path);
    let chosen = resolve_devices(&req.devices, devices)?;
    let ctx = resolve_ctx(req.ctx, model.config.context_length)?;
    let model = model.with_context(ctx as usize);
    let kv_types = requested_cache_types(req.cache_type_k, req.cache_type_v);
    check_cache_types(kv_types, &model.config)?;
    let sizes = ModelSizes::new(
        &model.source.file,
        &model.config,
        MAX_BATCH,
        MAX_SEQUENCES,
        kv_types,
    );
    let plan_devs = plan_devices(&chosen, memory_of, &|_| 0);
    let p = make_plan(&sizes, &plan_devs, &req.split, None, ctx)?;
    if let Some(v) = &p.verdict {
        return Err(ErrorReply::new(ErrorCode::DoesNotFit, v.to_string()));
    }
    for w in &p.warnings {
        tracing::warn!(model = %name, "placement: {w}");
    }
    let threads = req
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
        .clamp(1, 256);
    let pool =
        Arc::new(ThreadPool::new(threads as usize).map_err(|e| {
            ErrorReply::new(ErrorCode::Internal, format!("cannot start threads: {e}"))
        })?);
    let backends = backends_for(
        chosen.iter().map(|d| d.name.clone()),
        devices,
        memory_of,
        &pool,
    )?;
    let specs: Vec<StageSpec> = p
        .stages
        .iter()
        .map(|s| {
            let name = &p.devices[s.device].name;
            let backend = backends.get(name).cloned().ok_or_else(|| {
                ErrorReply::new(ErrorCode::Internal, format!("no backend for {name}"))
            })?;
            Ok(StageSpec {
                backend,
                layers: s.layers.clone(),
                head: s.head,
            })
        })
        .collect::<Result<_, ErrorReply>>()?;
    let pipeline = build_pipeline(&model, specs, MAX_BATCH, MAX_SEQUENCES, progress)
        .map_err(load_error)?
        .with_kv_types(kv_types);
    let placement = placement_of(&pipeline);
    let bytes: u64 = placement.iter().map(|s| s.weight_bytes).sum();
    let limits = WorkerLimits::new(ctx as usize, MAX_BATCH, MAX_SEQUENCES);
    let handle = ModelHandle::spawn(&name, pipeline, Arc::clone(&tokenizer), limits, changed)
        .map_err(|e| {
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
        prompts: PromptSlots::default(),
        ctx: AtomicU32::new(ctx),
        threads,
        source: Arc::clone(&model.source),
        sizes,
        pool,
        handle,
        placement: Mutex::new(placement),
        running: AtomicU32::new(0),
    };
    Ok((loaded, started.elapsed().as_secs_f64(), bytes))
}

/// What the worker reports back from a re-split.
type ResplitResult =
    Result<(crate::model::resplit::ResplitReport, Vec<StagePlacement>), ErrorReply>;

impl LoadedModel {
    /// Re-splits the model live as `req` asks: plans the new placement (refused with
    /// `does_not_fit` if it does not fit, the old placement serving on), then switches between
    /// two forward steps of its worker, carrying running generations' KV caches along.
    pub async fn resplit(
        &self,
        req: &ResplitRequest,
        devices: &[Device],
        memory_of: &(dyn Fn(&Device) -> Arc<DeviceMemory> + Sync),
    ) -> Result<ResplitReply, ErrorReply> {
        let current = self.refresh_placement().await;
        // Without --devices, the devices of the current stages in order (a GPU named twice
        // keeps its two stages).
        let names: Vec<String> = if req.devices.is_empty() {
            current.iter().map(|s| s.device.clone()).collect()
        } else {
            req.devices.clone()
        };
        let chosen = resolve_devices(&names, devices)?;
        let ctx = match req.ctx {
            Some(c) => resolve_ctx(Some(c), self.config.context_length)?,
            None => self.ctx(),
        };
        if self.config.with_context(ctx as usize) != *self.config {
            // Phi-3's rope factors are chosen by the context at load; running sequences were
            // computed with the current ones, so the switch needs a fresh load.
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "a context of {ctx} changes which rope factors the model uses (long beyond \
                     its original context of {}); load it again with --ctx {ctx} (--replace)",
                    self.config.rope_original_context
                ),
            ));
        }
        let own = |name: &str| -> u64 {
            current
                .iter()
                .filter(|s| s.device == name)
                .map(|s| s.weight_bytes + s.kv_bytes)
                .sum()
        };
        let plan_devs = plan_devices(&chosen, memory_of, &own);
        // Neither devices nor split given (e.g. only a new context): keep the layers where they
        // are.
        let split: Vec<f32> = if req.split.is_empty() && req.devices.is_empty() {
            layer_counts(&current)
        } else {
            req.split.clone()
        };
        let p = make_plan(&self.sizes, &plan_devs, &split, None, ctx)?;
        let reply_plan = plan_reply(
            &self.path.display().to_string(),
            &self.architecture,
            &self.sizes,
            &p,
        );
        if let Some(v) = &p.verdict {
            return Err(ErrorReply::new(
                ErrorCode::DoesNotFit,
                format!("re-split refused, the current placement keeps serving: {v}"),
            ));
        }
        let target: Vec<Layout> = p
            .stages
            .iter()
            .map(|s| Layout {
                device: p.devices[s.device].name.clone(),
                layers: s.layers.clone(),
                head: s.head,
            })
            .collect();
        let mut all_names: Vec<String> = names.clone();
        for s in &current {
            if !all_names.contains(&s.device) {
                all_names.push(s.device.clone());
            }
        }
        let backends = backends_for(all_names, devices, memory_of, &self.pool)?;
        let ledgers: HashMap<String, (u64, Arc<DeviceMemory>)> = devices
            .iter()
            .map(|d| (d.name.clone(), (d.memory_budget_bytes, memory_of(d))))
            .collect();
        let source = Arc::clone(&self.source);
        let sizes = self.sizes.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<ResplitResult>();
        let job = Job::Resplit(Box::new(
            move |pipeline: &mut Pipeline, live: &[LiveSequence]| {
                if let Err(e) = check_live_fit(pipeline, &target, live, &sizes, &ledgers) {
                    let _ = tx.send(Err(e));
                    return ResplitOutcome::Unchanged;
                }
                match resplit(
                    pipeline,
                    &*source,
                    &target,
                    &backends,
                    live,
                    MAX_BATCH,
                    MAX_SEQUENCES,
                ) {
                    Ok(report) => {
                        let _ = tx.send(Ok((report, placement_of(pipeline))));
                        ResplitOutcome::Applied {
                            n_ctx: Some(ctx as usize),
                        }
                    }
                    Err(e @ crate::model::resplit::ResplitError::Broken { .. }) => {
                        let msg = e.to_string();
                        let _ = tx.send(Err(ErrorReply::new(ErrorCode::Internal, msg.clone())));
                        ResplitOutcome::Broken(msg)
                    }
                    Err(e) => {
                        let code = match e {
                            crate::model::resplit::ResplitError::Restored(_) => {
                                ErrorCode::DoesNotFit
                            }
                            _ => ErrorCode::Internal,
                        };
                        let _ = tx.send(Err(ErrorReply::new(code, e.to_string())));
                        ResplitOutcome::Unchanged
                    }
                }
            },
        ));
        self.submit(job)?;
        let (report, placement) = rx
            .await
            .map_err(|_| self.unavailable("the model's worker stopped during the re-split"))??;
        self.ctx.store(ctx, Ordering::SeqCst);
        if report.through_host > 0 {
            tracing::info!(
                model = %self.name,
                parts = report.through_host,
                "re-split: devices traded layers without room to spare, so some went through \
                 host memory (weights read again from the model file)"
            );
        }
        *self
            .placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = placement.clone();
        Ok(ResplitReply {
            name: self.name.clone(),
            ctx,
            plan: Box::new(reply_plan),
            placement,
            secs: report.secs,
            bytes_moved: report.bytes_moved,
            layers_moved: report.layers_moved as u32,
            sequences_moved: report.sequences as u32,
        })
    }
}

/// Checks, with the running sequences' real KV caches, that the stages to be rebuilt fit each
/// device once the stages they replace are freed (the plan counted one full-context sequence).
fn check_live_fit(
    pipeline: &Pipeline,
    target: &[Layout],
    live: &[LiveSequence],
    sizes: &ModelSizes,
    ledgers: &HashMap<String, (u64, Arc<DeviceMemory>)>,
) -> Result<(), ErrorReply> {
    let old = layout_of(pipeline);
    let positions: u64 = live.iter().map(|s| s.capacity as u64).sum();
    let mut freed: HashMap<&str, u64> = HashMap::new();
    for (l, s) in old.iter().zip(pipeline.stages()) {
        if !target.contains(l) {
            *freed.entry(l.device.as_str()).or_default() += s.weight_bytes() + s.kv_bytes();
        }
    }
    let mut need: HashMap<&str, u64> = HashMap::new();
    for l in target.iter().filter(|l| !old.contains(l)) {
        let weights: u64 = sizes.layer_weight_bytes[l.layers.clone()]
            .iter()
            .sum::<u64>()
            + if l.head { sizes.head_weight_bytes } else { 0 };
        let kv = l.layers.len() as u64 * positions * sizes.kv_bytes_per_layer_position;
        *need.entry(l.device.as_str()).or_default() += weights + kv;
    }
    let mut problems = Vec::new();
    for (device, bytes) in need {
        let Some((budget, ledger)) = ledgers.get(device) else {
            problems.push(format!("unknown device {device}"));
            continue;
        };
        let free = budget
            .saturating_sub(ledger.used())
            .saturating_add(freed.get(device).copied().unwrap_or(0));
        if bytes > free {
            problems.push(format!(
                "{device} needs {} for the moved layers and the KV caches of {} running \
                 generations but has {} free",
                plan::human(bytes),
                live.len(),
                plan::human(free)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ErrorReply::new(
            ErrorCode::DoesNotFit,
            format!(
                "re-split refused, the current placement keeps serving: {}",
                problems.join("; ")
            ),
        ))
    }
}
