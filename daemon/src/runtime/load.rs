//! Making a model resident: its load specification ([`LoadSpec`]), the dry-run plan
//! ([`plan_blocking`]), opening the file ([`prepare_load`]), building its pipeline on the
//! devices ([`load_blocking`], on a blocking thread) and registering it
//! ([`Runtime::place`](super::Runtime::place)).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llmd_kernels::backend::{CpuBackend, CudaBackend, DeviceMemory, KvTypes};
use llmd_kernels::cpu::{ComputePool, ThreadPool};
use tokio::sync::Notify;

use super::error::{ErrorKind, RuntimeError};
use super::model::{placement_of, LoadedModel, DEFAULT_CTX, MAX_BATCH, MAX_SEQUENCES};
use super::prompt::PromptSlots;
use crate::devices::Device;
use crate::engine::{ModelHandle, WorkerLimits};
use crate::model::load::{
    build_pipeline_with_experts, ExpertPlacement, LoadError, OpenedModel, StageSpec,
};
use crate::model::plan::{self, ExpertsOn, ModelSizes, Plan, PlanDevice, PlanOptions};
use crate::model::{ModelConfig, StageBackend};
use llmd_tokenizer::chat::ChatTemplate;
use llmd_tokenizer::Tokenizer;

/// Longest model name accepted.
const MAX_NAME_LEN: usize = 128;

/// What to load and how: the model file and where and with what settings it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// The model file (absolute).
    pub path: PathBuf,
    /// Context length per sequence; `None` for [`DEFAULT_CTX`] (at most the training context).
    pub ctx: Option<u32>,
    /// The model's share of the daemon's compute pool (threads its CPU work may use at once,
    /// at most the pool's size); `None` for the whole pool.
    pub threads: Option<u32>,
    /// Devices by name, in stage order (a name may repeat); empty for the default devices.
    pub devices: Vec<String>,
    /// Split weights per device; empty to split by free memory.
    pub split: Vec<f32>,
    /// Element types of the KV caches' keys and values.
    pub kv_types: KvTypes,
    /// Layers on the GPUs at most (llama.cpp's `-ngl`), the first ones going to the CPU;
    /// `None` for every layer on the devices named.
    pub gpu_layers: Option<u32>,
    /// A mixture of experts' router and experts of the first N layers on the host's CPU device
    /// (`--n-cpu-moe N`; `u32::MAX` for every layer, `--cpu-moe`); `None` to keep them with
    /// their layers.
    pub n_cpu_moe: Option<u32>,
    /// Bytes of KV cache finished generations may keep for later prompts sharing their prefix
    /// (the prefix cache; the front end resolves `prefix_cache_mib`); 0 turns it off.
    pub prefix_cache_bytes: u64,
}

/// What to plan: a model file on devices, as `llmctl plan` asks.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSpec {
    /// The model file (only its header is read).
    pub path: PathBuf,
    /// Devices by name; empty for the default devices.
    pub devices: Vec<String>,
    /// Split weights per device; empty to split by free memory.
    pub split: Vec<f32>,
    /// Layers on the GPUs at most (llama.cpp's `-ngl`), the rest on the CPU.
    pub gpu_layers: Option<u32>,
    /// Context length; `None` for the default.
    pub ctx: Option<u32>,
    /// Element types of the KV caches' keys and values.
    pub kv_types: KvTypes,
    /// As [`LoadSpec::n_cpu_moe`].
    pub n_cpu_moe: Option<u32>,
}

/// A plan with what it was made for, so a front end can describe it.
#[derive(Debug, Clone)]
pub struct PlannedModel {
    /// The model file planned.
    pub path: PathBuf,
    /// Its architecture's name.
    pub architecture: String,
    /// What its pieces cost.
    pub sizes: ModelSizes,
    /// Stages per device, needs, and the verdict when it does not fit.
    pub plan: Plan,
}

/// Checks a model name: printable, no slashes or whitespace, not too long.
pub fn check_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::new(
            ErrorKind::BadRequest,
            format!(
                "invalid model name {name:?}: 1 to {MAX_NAME_LEN} characters, no spaces or slashes"
            ),
        ))
    }
}

/// Refuses (`unsupported`, with the reason) cache types whose blocks do not tile the model's
/// heads.
fn check_cache_types(types: KvTypes, config: &ModelConfig) -> Result<(), RuntimeError> {
    types
        .check_head_dim(config.head_dim)
        .map_err(|e| RuntimeError::new(ErrorKind::Unsupported, e.to_string()))
}

/// Maps a load failure to the error the client sees.
fn load_error(e: LoadError) -> RuntimeError {
    let code = match &e {
        LoadError::Gguf(llmd_gguf::GgufError::Io { .. }) => ErrorKind::Io,
        LoadError::Config(_) => ErrorKind::Unsupported,
        LoadError::Weights(crate::model::weights::WeightError::Backend(
            llmd_kernels::backend::BackendError::OutOfMemory { .. },
        )) => ErrorKind::DoesNotFit,
        _ => ErrorKind::BadRequest,
    };
    RuntimeError::new(code, e.to_string())
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
pub(super) fn resolve_devices<'a>(
    names: &[String],
    devices: &'a [Device],
) -> Result<Vec<&'a Device>, RuntimeError> {
    let chosen = name_devices(names, devices)?;
    for d in &chosen {
        if let Some(reason) = &d.unavailable {
            return Err(RuntimeError::new(
                ErrorKind::Unsupported,
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
) -> Result<Vec<&'a Device>, RuntimeError> {
    let chosen: Vec<&Device> = if names.is_empty() {
        crate::devices::default_load_devices(devices)
    } else {
        names
            .iter()
            .map(|name| {
                devices.iter().find(|d| &d.name == name).ok_or_else(|| {
                    let known: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                    RuntimeError::new(
                        ErrorKind::NotFound,
                        format!("unknown device {name:?} (known: {})", known.join(", ")),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    if chosen.is_empty() {
        return Err(RuntimeError::new(
            ErrorKind::BadRequest,
            "no device to load the model on",
        ));
    }
    Ok(chosen)
}

/// The plan's view of `chosen`: budgets, and bytes free (the ledger's free bytes plus `own(name)`,
/// bytes the model being re-split holds there and gives back), each divided among the times the
/// device is named.
pub(super) fn plan_devices(
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
pub fn resolve_ctx(asked: Option<u32>, context_length: usize) -> Result<u32, RuntimeError> {
    if asked == Some(0) {
        return Err(RuntimeError::new(
            ErrorKind::BadRequest,
            "a context of 0 tokens cannot hold a prompt: --ctx must be at least 1",
        ));
    }
    Ok(asked
        .unwrap_or(DEFAULT_CTX)
        .min(context_length.clamp(1, u32::MAX as usize) as u32)
        .max(1))
}

/// Where `--cpu-moe` / `--n-cpu-moe N` put a mixture of experts' experts: the daemon's first
/// CPU device (the host), for the first `n_cpu_moe` layers. Refused for a dense model and when
/// no CPU device is configured. `own(device)` is what the model itself holds there already
/// (counted as free: a re-split), as [`plan_devices`] takes it.
pub(super) fn experts_on(
    n_cpu_moe: Option<u32>,
    config: &ModelConfig,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
    own: &dyn Fn(&str) -> u64,
) -> Result<Option<(ExpertsOn, Device)>, RuntimeError> {
    let Some(n) = n_cpu_moe.filter(|&n| n > 0) else {
        return Ok(None);
    };
    if config.moe.is_none() {
        return Err(RuntimeError::new(
            ErrorKind::BadRequest,
            "--cpu-moe / --n-cpu-moe place the experts of a mixture-of-experts model, and this \
             model has none",
        ));
    }
    let (device, host) = expert_host(devices, memory_of, own).ok_or_else(|| {
        RuntimeError::new(
            ErrorKind::BadRequest,
            "--cpu-moe puts experts on the host's CPU device, and none is configured (add a \
             cpu:0 device to [[devices]])",
        )
    })?;
    let layers = (n as usize).min(config.n_layer);
    Ok(Some((ExpertsOn { device, layers }, host)))
}

/// The device `--cpu-moe` puts experts on: the daemon's first CPU device, as planned (`own`
/// as [`plan_devices`] takes it); `None` when no CPU device is configured.
pub(super) fn expert_host(
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
    own: &dyn Fn(&str) -> u64,
) -> Option<(PlanDevice, Device)> {
    let host = devices.iter().find(|d| !d.is_gpu())?;
    let device = plan_devices(&[host], memory_of, own).pop()?;
    Some((device, host.clone()))
}

/// Plans `sizes` on `devices` (the experts of some layers on `experts`' device; a plan that does
/// not fit may suggest experts on `host`); input errors become `bad_request`.
pub(super) fn make_plan(
    sizes: &ModelSizes,
    devices: &[PlanDevice],
    split: &[f32],
    gpu_layers: Option<u32>,
    ctx: u32,
    (experts, host): (Option<ExpertsOn>, Option<PlanDevice>),
) -> Result<Plan, RuntimeError> {
    let opts = PlanOptions {
        split: (!split.is_empty()).then(|| split.iter().map(|&w| w as f64).collect()),
        gpu_layers: gpu_layers.map(|n| n as usize),
        ctx: ctx as usize,
        experts,
        expert_host: host,
    };
    plan::plan(sizes, devices, &opts)
        .map_err(|e| RuntimeError::new(ErrorKind::BadRequest, e.to_string()))
}

/// Plans `spec` (blocking: reads the file's header). Only the header is needed, so a file
/// still downloading can be planned.
pub fn plan_blocking(
    spec: &PlanSpec,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
) -> Result<PlannedModel, RuntimeError> {
    let chosen = name_devices(&spec.devices, devices)?;
    let (description, config, sizes) =
        ModelSizes::open(&spec.path, MAX_BATCH, MAX_SEQUENCES, spec.kv_types)
            .map_err(load_error)?;
    check_cache_types(spec.kv_types, &config)?;
    let ctx = resolve_ctx(spec.ctx, config.context_length)?;
    let plan_devs = plan_devices(&chosen, memory_of, &|_| 0);
    let experts = experts_on(spec.n_cpu_moe, &config, devices, memory_of, &|_| 0)?.map(|(e, _)| e);
    let host = expert_host(devices, memory_of, &|_| 0).map(|(d, _)| d);
    let plan = make_plan(
        &sizes,
        &plan_devs,
        &spec.split,
        spec.gpu_layers,
        ctx,
        (experts, host),
    )?;
    Ok(PlannedModel {
        path: spec.path.clone(),
        architecture: description.architecture,
        sizes,
        plan,
    })
}

/// One backend per distinct device of `names`, all charging the devices' shared ledgers: CPU
/// devices compute on `pool`; each GPU gets a CUDA backend (its own stream on the GPU's primary
/// context) for this model.
pub(super) fn backends_for(
    names: impl IntoIterator<Item = String>,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
    pool: &Arc<ThreadPool>,
) -> Result<HashMap<String, StageBackend>, RuntimeError> {
    let mut backends = HashMap::new();
    for name in names {
        if backends.contains_key(&name) {
            continue;
        }
        let dev = devices.iter().find(|d| d.name == name).ok_or_else(|| {
            RuntimeError::new(ErrorKind::NotFound, format!("unknown device {name:?}"))
        })?;
        let backend = if dev.is_gpu() {
            let b = CudaBackend::with_memory(dev.name.clone(), dev.index as usize, memory_of(dev))
                .map_err(|e| {
                    RuntimeError::new(ErrorKind::Unsupported, format!("cannot use {name}: {e}"))
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

impl PreparedLoad {
    /// Uses `template` (Jinja source, as in GGUF metadata) instead of the file's chat template:
    /// a `[[models]]` entry's `chat_template`.
    pub fn with_chat_template(self, template: &str) -> Result<Self, RuntimeError> {
        let chat = ChatTemplate::new(Some(template), &self.tokenizer).map_err(|e| {
            RuntimeError::new(
                ErrorKind::BadRequest,
                format!("chat template from the config: {e}"),
            )
        })?;
        Ok(PreparedLoad {
            chat: Arc::new(chat),
            ..self
        })
    }
}

/// Opens `path` for a load (blocking: run it on a blocking thread): a regular file only, its
/// header parsed and checked, its tokenizer and chat template built.
pub fn prepare_load(path: &Path) -> Result<PreparedLoad, RuntimeError> {
    let started = Instant::now();
    let model = OpenedModel::open(path).map_err(load_error)?;
    let tokenizer = Arc::new(
        Tokenizer::from_metadata(&model.description.tokenizer)
            .map_err(|e| RuntimeError::new(ErrorKind::Unsupported, format!("tokenizer: {e}")))?,
    );
    let chat = Arc::new(
        ChatTemplate::new(
            model.description.tokenizer.chat_template.as_deref(),
            &tokenizer,
        )
        .map_err(|e| RuntimeError::new(ErrorKind::BadRequest, format!("chat template: {e}")))?,
    );
    Ok(PreparedLoad {
        started,
        model,
        tokenizer,
        chat,
    })
}

/// Loads a model `prepare_load` opened, as `spec` asks (blocking: run it on a blocking thread,
/// holding the placement lock). `memory_of` gives each device's shared memory ledger; CPU
/// stages compute on a share of `compute`, the daemon's one pool; `progress(done, total)` reports stages loaded. The split plan is checked against the
/// devices' free memory before anything is allocated: a load that does not fit is refused with
/// the numbers and a suggestion that fits (`does_not_fit`); before that, `reclaim(devices,
/// wanted)` is asked to drop retained prefix caches on the devices concerned until the bytes
/// the plan lacks are free (returning the bytes freed), and the plan is made again, as long as
/// it does not fit and caches are freed.
// What to load, where (devices, their ledgers, the compute pool) and whom to tell: each a separate
// concern of the caller's, so they stay separate arguments.
#[allow(clippy::too_many_arguments)]
pub fn load_blocking(
    spec: &LoadSpec,
    name: String,
    prepared: PreparedLoad,
    devices: &[Device],
    memory_of: &dyn Fn(&Device) -> Arc<DeviceMemory>,
    changed: Option<Arc<Notify>>,
    compute: &Arc<ComputePool>,
    reclaim: &dyn Fn(&[String], u64) -> u64,
    progress: impl FnMut(usize, usize),
) -> Result<(LoadedModel, f64, u64), RuntimeError> {
    let PreparedLoad {
        started,
        model,
        tokenizer,
        chat,
    } = prepared;
    let path = spec.path.clone();
    let chosen = resolve_devices(&spec.devices, devices)?;
    let ctx = resolve_ctx(spec.ctx, model.config.context_length)?;
    let model = model.with_context(ctx as usize);
    let kv_types = spec.kv_types;
    check_cache_types(kv_types, &model.config)?;
    let sizes = ModelSizes::new(
        &model.source.file,
        &model.config,
        MAX_BATCH,
        MAX_SEQUENCES,
        kv_types,
    );
    let plan_now = || -> Result<_, RuntimeError> {
        let plan_devs = plan_devices(&chosen, memory_of, &|_| 0);
        let experts = experts_on(spec.n_cpu_moe, &model.config, devices, memory_of, &|_| 0)?;
        let p = make_plan(
            &sizes,
            &plan_devs,
            &spec.split,
            spec.gpu_layers,
            ctx,
            (
                experts.as_ref().map(|(e, _)| e.clone()),
                expert_host(devices, memory_of, &|_| 0).map(|(d, _)| d),
            ),
        )?;
        Ok((experts, p))
    };
    let (mut experts, mut p) = plan_now()?;
    // Retained prefix caches give way: drop those on the devices concerned, least recently used
    // first, as many bytes as the plan lacks, then plan again (the plan may shift with the free
    // memory, and bytes freed on a device it does not lack count too: so again while it does not
    // fit and caches are freed; each round frees at least one, so this ends).
    while p.verdict.is_some() {
        let concerned: Vec<String> = chosen
            .iter()
            .map(|d| d.name.clone())
            .chain(experts.as_ref().map(|(_, host)| host.name.clone()))
            .collect();
        if reclaim(&concerned, p.bytes_short().max(1)) == 0 {
            break;
        }
        (experts, p) = plan_now()?;
    }
    if let Some(v) = &p.verdict {
        return Err(RuntimeError::new(ErrorKind::DoesNotFit, v.to_string()));
    }
    for w in &p.warnings {
        tracing::warn!(model = %name, "placement: {w}");
    }
    // The model's share of the daemon's pool (all of it by default); what it may use at once.
    let share = compute.share(spec.threads.map_or(compute.threads(), |t| t as usize));
    let threads = share.n_threads() as u32;
    let pool = Arc::new(share);
    let backends = backends_for(
        chosen
            .iter()
            .map(|d| d.name.clone())
            .chain(experts.as_ref().map(|(_, host)| host.name.clone())),
        devices,
        memory_of,
        &pool,
    )?;
    let expert_placement = match (&experts, &p.experts) {
        (Some((_, host)), Some(planned)) => Some(ExpertPlacement {
            backend: backends.get(&host.name).cloned().ok_or_else(|| {
                RuntimeError::new(ErrorKind::Internal, format!("no backend for {}", host.name))
            })?,
            layers: planned.layers.clone(),
        }),
        _ => None,
    };
    let specs: Vec<StageSpec> = p
        .stages
        .iter()
        .map(|s| {
            let name = &p.devices[s.device].name;
            let backend = backends.get(name).cloned().ok_or_else(|| {
                RuntimeError::new(ErrorKind::Internal, format!("no backend for {name}"))
            })?;
            Ok(StageSpec {
                backend,
                layers: s.layers.clone(),
                head: s.head,
            })
        })
        .collect::<Result<_, RuntimeError>>()?;
    let pipeline = build_pipeline_with_experts(
        &model,
        specs,
        expert_placement.as_ref(),
        MAX_BATCH,
        MAX_SEQUENCES,
        progress,
    )
    .map_err(load_error)?
    .with_kv_types(kv_types);
    let placement = placement_of(&pipeline);
    let embedding_bytes = Arc::new(AtomicU64::new(pipeline.embedding_bytes()));
    let bytes: u64 = placement
        .iter()
        .map(|s| s.weight_bytes + s.expert_bytes)
        .sum();
    let limits = WorkerLimits::new(ctx as usize, MAX_BATCH, MAX_SEQUENCES)
        .with_prefix_cache(spec.prefix_cache_bytes);
    let handle = ModelHandle::spawn(&name, pipeline, Arc::clone(&tokenizer), limits, changed)
        .map_err(|e| {
            RuntimeError::new(
                ErrorKind::Internal,
                format!("cannot start the model's worker: {e}"),
            )
        })?;
    let loaded = LoadedModel {
        prefix_cache_bytes: spec.prefix_cache_bytes,
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
        embedding_bytes,
        sizes,
        pool,
        handle,
        placement: Mutex::new(placement),
        running: AtomicU32::new(0),
    };
    Ok((loaded, started.elapsed().as_secs_f64(), bytes))
}

/// A model made resident by [`Runtime::load`] or [`Runtime::place`].
pub struct Loaded {
    /// The model, as registered.
    pub model: super::ResidentModel,
    /// Seconds from opening the file to registering the model.
    pub load_secs: f64,
    /// Bytes of weights loaded.
    pub bytes_loaded: u64,
    /// Whether it replaced a model of the same name.
    pub replaced: bool,
}

impl super::Runtime {
    /// Loads `spec` under `name` (its file name without `.gguf` when `None`) onto `devices`,
    /// sending `(stages done, stages)` to `progress` as it goes. A model of that name already
    /// resident is refused (`already_exists`) unless `replace`.
    ///
    /// The file is opened and its header read before the placement lock is taken, so a slow or
    /// stalled file holds up only its own load; the wait for the lock is bounded
    /// ([`Runtime::placement`](super::Runtime::placement)).
    pub async fn load(
        &self,
        spec: LoadSpec,
        name: Option<String>,
        replace: bool,
        devices: Arc<Vec<Device>>,
        progress: tokio::sync::mpsc::UnboundedSender<(usize, usize)>,
    ) -> Result<Loaded, RuntimeError> {
        if !spec.path.is_absolute() {
            return Err(RuntimeError::new(
                ErrorKind::BadRequest,
                format!(
                    "model path {:?} must be absolute",
                    spec.path.display().to_string()
                ),
            ));
        }
        let name = name.unwrap_or_else(|| default_name(&spec.path));
        check_name(&name)?;
        let prepared = {
            let path = spec.path.clone();
            tokio::task::spawn_blocking(move || prepare_load(&path))
                .await
                .map_err(|e| {
                    RuntimeError::new(ErrorKind::Internal, format!("the load task failed: {e}"))
                })??
        };
        let placement = self.placement(format!("loading {name:?}")).await?;
        if !replace && self.models().get(&name).is_some() {
            return Err(RuntimeError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "a model named {name:?} is already loaded (unload it, or load with --replace)"
                ),
            ));
        }
        self.place(spec, name, prepared, placement, devices, progress)
            .await
    }

    /// Loads a prepared model under the placement lock held by `placement`, sending progress,
    /// and registers it under `name` (replacing a model of that name). The lock goes to the
    /// load's thread and comes back with its result, so it is held until the model is
    /// registered even if the request is cancelled meanwhile.
    pub async fn place(
        &self,
        spec: LoadSpec,
        name: String,
        prepared: PreparedLoad,
        placement: super::PlacementGuard,
        devices: Arc<Vec<Device>>,
        progress: tokio::sync::mpsc::UnboundedSender<(usize, usize)>,
    ) -> Result<Loaded, RuntimeError> {
        let ledgers: HashMap<String, Arc<DeviceMemory>> = devices
            .iter()
            .map(|d| (d.name.clone(), self.device_memory(d)))
            .collect();
        let task = {
            let spec = spec.clone();
            let name = name.clone();
            let changed = Some(Arc::clone(&self.changed));
            let compute = Arc::clone(&self.compute);
            // The models resident now (the one this load replaces among them): their retained
            // prefix caches give way if the plan does not fit otherwise.
            let resident = self.models().all();
            tokio::task::spawn_blocking(move || {
                let memory_of = |d: &Device| {
                    ledgers
                        .get(&d.name)
                        .cloned()
                        .unwrap_or_else(|| DeviceMemory::new(d.memory_budget_bytes))
                };
                let loaded = load_blocking(
                    &spec,
                    name,
                    prepared,
                    &devices,
                    &memory_of,
                    changed,
                    &compute,
                    &|concerned: &[String], wanted: u64| {
                        super::reclaim::drop_retained_blocking(&resident, concerned, wanted)
                    },
                    |done, total| {
                        let _ = progress.send((done, total));
                    },
                );
                (loaded, placement)
            })
        };
        let (loaded, _placement) = task.await.map_err(|e| {
            RuntimeError::new(ErrorKind::Internal, format!("the load task failed: {e}"))
        })?;
        let (model, load_secs, bytes_loaded) = loaded?;
        let model = Arc::new(model);
        let old = self.models().replace(name.clone(), Arc::clone(&model));
        self.changed.notify_one();
        let replaced = old.is_some();
        tracing::info!(model = %name, path = %spec.path.display(), load_secs, bytes_loaded, replaced, "model loaded");
        // The replaced model's memory is free before the placement lock goes (unless it is
        // still generating: then when it finishes).
        if let Some(old) = old {
            super::release(old).await;
        }
        Ok(Loaded {
            model,
            load_secs,
            bytes_loaded,
            replaced,
        })
    }
}
