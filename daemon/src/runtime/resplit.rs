//! Re-splitting a resident model live ([`Runtime::resplit`](super::Runtime::resplit)): the new
//! plan is checked first (a plan that does not fit is refused and the old placement keeps
//! serving); the switch happens on the model's worker between two forward steps, so running
//! generations continue with the tokens they would have produced.
//!
//! A model whose worker failed (issue 14) has no pipeline left to move: for it, a re-split loads
//! the model again from its file onto its last placement (with the request's changes) and puts
//! it back under its name, which recovers it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use llmd_kernels::backend::DeviceMemory;

use super::error::{ErrorKind, RuntimeError};
use super::load::{
    backends_for, expert_host, experts_on, make_plan, plan_blocking, plan_devices, prepare_load,
    resolve_ctx, resolve_devices, LoadSpec, PlanSpec, PlannedModel,
};
use super::model::{
    layer_counts, n_cpu_moe_of, placement_of, LoadedModel, StagePlacement, MAX_BATCH, MAX_SEQUENCES,
};
use super::{PlacementGuard, ResidentModel, Runtime};
use crate::devices::Device;
use crate::engine::{Job, ResplitOutcome};
use crate::model::load::ExpertPlacement;
use crate::model::plan::{self, ModelSizes};
use crate::model::resplit::{layout_of, resplit, Layout, LiveSequence};
use crate::model::Pipeline;

/// A re-split as asked: what changes (empty or `None`: as it is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResplitSpec {
    /// Devices by name, in stage order; empty keeps the current ones.
    pub devices: Vec<String>,
    /// Split weights per device; empty keeps the layers where they are (with no devices given).
    pub split: Vec<f32>,
    /// A new context length.
    pub ctx: Option<u32>,
    /// Layers whose experts live on the host's CPU device from now on (`--n-cpu-moe N`; 0:
    /// none); `None` keeps them where they are.
    pub n_cpu_moe: Option<u32>,
}

impl ResplitSpec {
    /// The load that puts the failed `model` back: its file, name, threads, context, KV cache
    /// types and last placement (its stages' devices, with their layer counts as split
    /// weights), each replaced by what this re-split gives.
    pub fn reload_of(&self, model: &LoadedModel) -> LoadSpec {
        let last = model.last_placement();
        let devices = if self.devices.is_empty() {
            last.iter().map(|s| s.device.clone()).collect()
        } else {
            self.devices.clone()
        };
        let split = if self.split.is_empty() && self.devices.is_empty() {
            layer_counts(&last)
        } else {
            self.split.clone()
        };
        LoadSpec {
            path: model.path.clone(),
            ctx: Some(self.ctx.unwrap_or_else(|| model.ctx())),
            threads: Some(model.threads),
            devices,
            split,
            kv_types: model.kv_types(),
            // The devices named above are the stages' own, CPU ones included.
            gpu_layers: None,
            // Experts where the re-split asks, else where they were.
            n_cpu_moe: self.n_cpu_moe.or_else(|| n_cpu_moe_of(&last)),
            prefix_cache_bytes: model.prefix_cache_bytes,
        }
    }
}

/// A finished re-split (or the reload of a failed model).
#[derive(Debug, Clone)]
pub struct Resplit {
    /// Context length per sequence now.
    pub ctx: u32,
    /// The plan it followed.
    pub plan: PlannedModel,
    /// The stages now.
    pub placement: Vec<StagePlacement>,
    /// Seconds it took.
    pub secs: f64,
    /// Bytes copied between devices (or loaded, for a reload).
    pub bytes_moved: u64,
    /// Layers that changed device (all of them, for a reload).
    pub layers_moved: u32,
    /// Running generations carried along.
    pub sequences_moved: u32,
}

impl Runtime {
    /// Re-splits the model called `name` on `devices` as `spec` asks, taking turns with loads
    /// and unloads; a failed model is loaded again from its file instead.
    pub async fn resplit(
        &self,
        name: &str,
        spec: &ResplitSpec,
        devices: Arc<Vec<Device>>,
    ) -> Result<Resplit, RuntimeError> {
        // Loads, unloads and re-splits take turns, so the free memory the plan sees stays true.
        let placement = self.placement(format!("re-splitting {name:?}")).await?;
        let model = self.model(name)?;
        if model.failure().is_some() {
            return self.recover(spec, model, placement, devices).await;
        }
        let memory_of = |d: &Device| self.device_memory(d);
        // Retained prefix caches give way: drop those on the devices concerned, least recently
        // used first, as many bytes as the re-split lacks (all of them where that is not known),
        // and try again while it does not fit and caches are freed (each round frees at least
        // one, so this ends).
        let done = loop {
            let e = match model.resplit(spec, &devices, &memory_of).await {
                Err(e) if e.kind == ErrorKind::DoesNotFit => e,
                other => break other?,
            };
            let wanted = e.short_bytes.unwrap_or(u64::MAX).max(1);
            let concerned = concerned_devices(&model, spec, &devices);
            let resident = self.models().all();
            let freed = tokio::task::spawn_blocking(move || {
                super::reclaim::drop_retained_blocking(&resident, &concerned, wanted)
            })
            .await
            .map_err(|e| {
                RuntimeError::new(ErrorKind::Internal, format!("the reclaim task failed: {e}"))
            })?;
            if freed == 0 {
                return Err(e);
            }
        };
        drop(placement);
        self.changed.notify_one();
        tracing::info!(
            model = %name,
            secs = done.secs,
            bytes_moved = done.bytes_moved,
            layers_moved = done.layers_moved,
            sequences = done.sequences_moved,
            "model re-split"
        );
        Ok(done)
    }

    /// Loads the failed `model` again from its file, as [`ResplitSpec::reload_of`] says, and
    /// registers it in its place.
    async fn recover(
        &self,
        spec: &ResplitSpec,
        model: ResidentModel,
        placement: PlacementGuard,
        devices: Arc<Vec<Device>>,
    ) -> Result<Resplit, RuntimeError> {
        let load = spec.reload_of(&model);
        tracing::info!(model = %model.name, path = %load.path.display(), "reloading a failed model from its file");
        let plan_spec = PlanSpec {
            path: load.path.clone(),
            devices: load.devices.clone(),
            split: load.split.clone(),
            gpu_layers: None,
            ctx: load.ctx,
            kv_types: load.kv_types,
            n_cpu_moe: load.n_cpu_moe,
        };
        let ledgers: HashMap<String, Arc<DeviceMemory>> = devices
            .iter()
            .map(|d| (d.name.clone(), self.device_memory(d)))
            .collect();
        let blocking = {
            let devices = Arc::clone(&devices);
            let path: PathBuf = load.path.clone();
            tokio::task::spawn_blocking(move || {
                let memory_of = |d: &Device| {
                    ledgers
                        .get(&d.name)
                        .cloned()
                        .unwrap_or_else(|| DeviceMemory::new(d.memory_budget_bytes))
                };
                let plan = plan_blocking(&plan_spec, &devices, &memory_of)?;
                let prepared = prepare_load(&path)?;
                Ok::<_, RuntimeError>((plan, prepared))
            })
        };
        let (plan, prepared) = blocking.await.map_err(|e| {
            RuntimeError::new(ErrorKind::Internal, format!("the reload task failed: {e}"))
        })??;
        let (progress, _) = tokio::sync::mpsc::unbounded_channel();
        let loaded = self
            .place(
                load,
                model.name.clone(),
                prepared,
                placement,
                devices,
                progress,
            )
            .await?;
        Ok(Resplit {
            ctx: loaded.model.ctx(),
            plan,
            placement: loaded.model.placement(),
            secs: loaded.load_secs,
            bytes_moved: loaded.bytes_loaded,
            layers_moved: loaded.model.config.n_layer as u32,
            sequences_moved: 0,
        })
    }
}

/// What the worker reports back from a re-split.
type ResplitResult =
    Result<(crate::model::resplit::ResplitReport, Vec<StagePlacement>), RuntimeError>;

impl LoadedModel {
    /// Re-splits the model live as `spec` asks: plans the new placement (refused with
    /// `does_not_fit` if it does not fit, the old placement serving on), then switches between
    /// two forward steps of its worker, carrying running generations' KV caches along.
    pub async fn resplit(
        &self,
        spec: &ResplitSpec,
        devices: &[Device],
        memory_of: &(dyn Fn(&Device) -> Arc<DeviceMemory> + Sync),
    ) -> Result<Resplit, RuntimeError> {
        let current = self.refresh_placement().await;
        // Without --devices, the devices of the current stages in order (a GPU named twice
        // keeps its two stages).
        let names: Vec<String> = if spec.devices.is_empty() {
            current.iter().map(|s| s.device.clone()).collect()
        } else {
            spec.devices.clone()
        };
        let chosen = resolve_devices(&names, devices)?;
        let ctx = match spec.ctx {
            Some(c) => resolve_ctx(Some(c), self.config.context_length)?,
            None => self.ctx(),
        };
        if self.config.with_context(ctx as usize) != *self.config {
            // Phi-3's rope factors are chosen by the context at load; running sequences were
            // computed with the current ones, so the switch needs a fresh load.
            return Err(RuntimeError::new(
                ErrorKind::BadRequest,
                format!(
                    "a context of {ctx} changes which rope factors the model uses (long beyond \
                     its original context of {}); load it again with --ctx {ctx} (--replace)",
                    self.config.rope_original_context
                ),
            ));
        }
        // What the model holds on a device counts as free there: its stages, and the experts
        // it keeps there for layers on other devices.
        let own = |name: &str| -> u64 {
            let stages: u64 = current
                .iter()
                .filter(|s| s.device == name)
                .map(|s| s.weight_bytes + s.kv_bytes)
                .sum();
            let experts: u64 = current
                .iter()
                .filter(|s| s.expert_device.as_deref() == Some(name))
                .map(|s| s.expert_bytes)
                .sum();
            stages + experts
        };
        let plan_devs = plan_devices(&chosen, memory_of, &own);
        let n_cpu_moe = spec.n_cpu_moe.or_else(|| n_cpu_moe_of(&current));
        let experts = experts_on(n_cpu_moe, &self.config, devices, memory_of, &own)?;
        // Neither devices nor split given (e.g. only a new context): keep the layers where they
        // are.
        let split: Vec<f32> = if spec.split.is_empty() && spec.devices.is_empty() {
            layer_counts(&current)
        } else {
            spec.split.clone()
        };
        let p = make_plan(
            &self.sizes,
            &plan_devs,
            &split,
            None,
            ctx,
            (
                experts.as_ref().map(|(e, _)| e.clone()),
                expert_host(devices, memory_of, &own).map(|(d, _)| d),
            ),
        )?;
        if let Some(v) = &p.verdict {
            return Err(RuntimeError::new(
                ErrorKind::DoesNotFit,
                format!("re-split refused, the current placement keeps serving: {v}"),
            )
            .short_by(p.bytes_short()));
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
        let expert_devices = current.iter().filter_map(|s| s.expert_device.clone());
        let host = experts.as_ref().map(|(_, host)| host.name.clone());
        for name in current
            .iter()
            .map(|s| s.device.clone())
            .chain(expert_devices)
            .chain(host.clone())
        {
            if !all_names.contains(&name) {
                all_names.push(name);
            }
        }
        let backends = backends_for(all_names, devices, memory_of, &self.pool)?;
        // The experts' device keeps the backend the experts already there use.
        let expert_placement = match (&host, &p.experts) {
            (Some(host), Some(planned)) => Some(ExpertPlacement {
                backend: backends.get(host).cloned().ok_or_else(|| {
                    RuntimeError::new(ErrorKind::Internal, format!("no backend for {host}"))
                })?,
                layers: planned.layers.clone(),
            }),
            _ => None,
        };
        let expert_layers = expert_placement.as_ref().map_or(0..0, |e| e.layers.clone());
        let ledgers: HashMap<String, (u64, Arc<DeviceMemory>)> = devices
            .iter()
            .map(|d| (d.name.clone(), (d.memory_budget_bytes, memory_of(d))))
            .collect();
        let source = Arc::clone(&self.source);
        let embedding = Arc::clone(&self.embedding_bytes);
        let sizes = self.sizes.clone();
        let expert_target = ExpertTarget {
            device: host.unwrap_or_default(),
            layers: expert_layers,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<ResplitResult>();
        let job = Job::Resplit(Box::new(
            move |pipeline: &mut Pipeline, live: &[LiveSequence]| {
                let fit = check_live_fit(pipeline, &target, &expert_target, live, &sizes, &ledgers);
                if let Err(e) = fit {
                    let _ = tx.send(Err(e));
                    return ResplitOutcome::Unchanged;
                }
                match resplit(
                    pipeline,
                    &*source,
                    &target,
                    expert_placement.as_ref(),
                    &backends,
                    live,
                    MAX_BATCH,
                    MAX_SEQUENCES,
                ) {
                    Ok(report) => {
                        embedding.store(pipeline.embedding_bytes(), Ordering::SeqCst);
                        let _ = tx.send(Ok((report, placement_of(pipeline))));
                        ResplitOutcome::Applied {
                            n_ctx: Some(ctx as usize),
                        }
                    }
                    Err(e @ crate::model::resplit::ResplitError::Broken { .. }) => {
                        let msg = e.to_string();
                        let _ = tx.send(Err(RuntimeError::new(ErrorKind::Internal, msg.clone())));
                        ResplitOutcome::Broken(msg)
                    }
                    Err(e) => {
                        let code = match e {
                            crate::model::resplit::ResplitError::Restored(_) => {
                                ErrorKind::DoesNotFit
                            }
                            _ => ErrorKind::Internal,
                        };
                        let _ = tx.send(Err(RuntimeError::new(code, e.to_string())));
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
        self.set_placement(placement.clone());
        Ok(Resplit {
            ctx,
            plan: PlannedModel {
                path: self.path.clone(),
                architecture: self.architecture.clone(),
                sizes: self.sizes.clone(),
                plan: p,
            },
            placement,
            secs: report.secs,
            bytes_moved: report.bytes_moved,
            layers_moved: report.layers_moved as u32,
            sequences_moved: report.sequences as u32,
        })
    }
}

/// The devices a re-split of `model` as `spec` asks touches: those it names, those the model is
/// on now, and the host's CPU device when experts are to go there.
fn concerned_devices(model: &LoadedModel, spec: &ResplitSpec, devices: &[Device]) -> Vec<String> {
    let current = model.last_placement();
    let host = spec
        .n_cpu_moe
        .and_then(|_| devices.iter().find(|d| !d.is_gpu()))
        .map(|d| d.name.clone());
    let mut names: Vec<String> = Vec::new();
    for name in spec
        .devices
        .iter()
        .cloned()
        .chain(current.iter().map(|s| s.device.clone()))
        .chain(current.iter().filter_map(|s| s.expert_device.clone()))
        .chain(host)
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Where a re-split puts the experts living off their layers' devices.
struct ExpertTarget {
    /// Their device (empty when none are).
    device: String,
    /// The layers whose experts live there.
    layers: std::ops::Range<usize>,
}

/// Checks, with the running sequences' real KV caches, that the stages to be rebuilt and the
/// experts that change device fit each device once what they replace is freed (the plan
/// counted one full-context sequence).
fn check_live_fit(
    pipeline: &Pipeline,
    target: &[Layout],
    experts: &ExpertTarget,
    live: &[LiveSequence],
    sizes: &ModelSizes,
    ledgers: &HashMap<String, (u64, Arc<DeviceMemory>)>,
) -> Result<(), RuntimeError> {
    let old = layout_of(pipeline);
    let positions: u64 = live.iter().map(|s| s.capacity as u64).sum();
    let expert_bytes = |il: usize| sizes.layer_expert_bytes.get(il).copied().unwrap_or(0);
    let held: Vec<(String, std::ops::Range<usize>)> = pipeline.experts_elsewhere();
    let held_at = |il: usize| held.iter().find(|(_, l)| l.contains(&il)).map(|(d, _)| d);
    let wanted_at = |il: usize| experts.layers.contains(&il).then_some(&experts.device);
    // Bytes each device gains (negative: frees) once the re-split is done.
    let mut delta: HashMap<&str, i128> = HashMap::new();
    for (l, s) in old.iter().zip(pipeline.stages()) {
        if !target.contains(l) {
            *delta.entry(l.device.as_str()).or_default() -=
                (s.weight_bytes() + s.kv_bytes()) as i128;
        }
    }
    for l in target.iter().filter(|l| !old.contains(l)) {
        let weights: u64 = l
            .layers
            .clone()
            .map(|il| {
                let away = if wanted_at(il).is_some() {
                    expert_bytes(il)
                } else {
                    0
                };
                sizes.layer_weight_bytes[il] - away
            })
            .sum::<u64>()
            + if l.head { sizes.head_weight_bytes } else { 0 };
        let kv = l.layers.len() as u64 * positions * sizes.kv_bytes_per_layer_position;
        *delta.entry(l.device.as_str()).or_default() += (weights + kv) as i128;
    }
    // Experts changing device: off (or onto) their layer's device, onto (or off) the host.
    for il in 0..pipeline.config().n_layer {
        let (from, to) = (held_at(il), wanted_at(il));
        if from.map(String::as_str) == to.map(String::as_str) {
            continue;
        }
        let bytes = expert_bytes(il) as i128;
        if let Some(device) = from {
            *delta.entry(device.as_str()).or_default() -= bytes;
        }
        if let Some(device) = to {
            *delta.entry(device.as_str()).or_default() += bytes;
        }
        // The layer's own device, where a kept stage gains or frees them.
        if let Some(l) = target
            .iter()
            .find(|l| l.layers.contains(&il) && old.contains(l))
        {
            let sign = if to.is_none() { 1 } else { -1 };
            *delta.entry(l.device.as_str()).or_default() += sign * bytes;
        }
    }
    // The buffers the experts on the host share: allocated with the first, freed with the last.
    let scratch = sizes.expert_scratch_bytes as i128;
    match (held.first(), experts.layers.is_empty()) {
        (None, false) => *delta.entry(experts.device.as_str()).or_default() += scratch,
        (Some((device, _)), true) => *delta.entry(device.as_str()).or_default() -= scratch,
        _ => {}
    }
    let mut problems = Vec::new();
    let mut short = 0u64;
    for (device, bytes) in delta {
        let Ok(bytes) = u64::try_from(bytes) else {
            continue;
        };
        let Some((budget, ledger)) = ledgers.get(device) else {
            problems.push(format!("unknown device {device}"));
            continue;
        };
        let free = budget.saturating_sub(ledger.used());
        if bytes > free {
            short += bytes - free;
            problems.push(format!(
                "{device} needs {} more for the moved layers and experts and the KV caches of \
                 {} running generations (and {} kept by the prefix cache) but has {} free",
                plan::human(bytes),
                live.iter().filter(|s| !s.retained).count(),
                live.iter().filter(|s| s.retained).count(),
                plan::human(free)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::new(
            ErrorKind::DoesNotFit,
            format!(
                "re-split refused, the current placement keeps serving: {}",
                problems.join("; ")
            ),
        )
        .short_by(short))
    }
}
