//! Live re-split: changing which device runs which layers of a loaded pipeline between two
//! forward steps, carrying the KV caches of the running sequences along, so that they continue
//! with exactly the tokens they would have produced.
//!
//! Stages whose device, layers and head are unchanged are kept as they are. Every other stage is
//! taken apart into its layers (weights and the running sequences' KV caches) and its head
//! ([`super::parts`]), which stay resident. A part whose device does not change goes into its new
//! stage as it is, without a copy; a part that changes device is copied straight from the old
//! device to the new one (device to device, peer to peer between GPUs) and only then freed.
//!
//! Memory: a device never holds more of the model during the re-split than the larger of its old
//! and its new share, so a re-split fits whenever the new placement fits. Moves are ordered to
//! keep that bound: a part is copied only when its new device has room for it within the bound,
//! and each copy frees room where it came from. When moves wait on each other in a cycle (two
//! devices trading layers with no room to spare), one part is spilled instead: its caches are
//! copied to the host and its weights read again from the model file (refused, the old
//! placement serving on, if the file changed since the load).
//!
//! A token embedding shared with a tied head (see [`super::embedding`]) is copied out of the
//! head before a head that changes device moves, and shared again afterwards where it lands in
//! host memory.
//!
//! If a copy or a new stage fails (another model took the memory meanwhile), the parts are
//! moved back the same way and the old placement is put together again; only if that fails too
//! is the pipeline left without stages (reported as [`ResplitError::Broken`]: its generations
//! must be stopped).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::backend::{AnyPart, AnyStage, StageBackend, StageShape};
use super::config::ModelConfig;
use super::host_tensors::PartSource;
use super::load::ExpertPlacement;
use super::parts::Slot;
use super::pipeline::Pipeline;

pub use super::parts::LiveSequence;

/// Where one stage lives: device, layers, head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Device name.
    pub device: String,
    /// The layers it runs.
    pub layers: Range<usize>,
    /// Whether it holds the output head.
    pub head: bool,
}

/// What a re-split did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResplitReport {
    /// Seconds from taking the stages apart to the last new stage.
    pub secs: f64,
    /// Bytes copied onto devices: weights and KV caches of the parts that changed device.
    pub bytes_moved: u64,
    /// Layers now on another device than before.
    pub layers_moved: usize,
    /// Stages put together anew.
    pub stages_rebuilt: usize,
    /// Parts that went through the host (caches copied out, weights read again from the model
    /// file) because devices trading layers had no room to copy them directly.
    pub through_host: usize,
    /// Running sequences carried over.
    pub sequences: usize,
    /// Layers whose experts changed device (`--n-cpu-moe` changed).
    pub experts_moved: usize,
}

/// Errors of a re-split.
#[derive(Debug, Error)]
pub enum ResplitError {
    /// The target placement is inconsistent.
    #[error("invalid placement: {0}")]
    Invalid(String),
    /// Building the new stages failed; the old placement was rebuilt and keeps serving.
    #[error("re-split failed ({0}); the previous placement was restored and keeps serving")]
    Restored(String),
    /// Building failed and the old placement could not be rebuilt either.
    #[error(
        "re-split failed ({cause}) and the previous placement could not be restored ({restore}); \
         unload the model and load it again"
    )]
    Broken {
        /// Why the new placement failed.
        cause: String,
        /// Why the old one could not be rebuilt.
        restore: String,
    },
}

/// The layout of a pipeline's stages.
pub fn layout_of(p: &Pipeline) -> Vec<Layout> {
    p.stages()
        .iter()
        .map(|s| Layout {
            device: s.device_name().to_string(),
            layers: s.layers(),
            head: s.has_head(),
        })
        .collect()
}

/// Checks that `target` covers every layer in order and ends with the head.
fn check_layout(target: &[Layout], n_layer: usize) -> Result<(), ResplitError> {
    let mut next = 0;
    for (i, l) in target.iter().enumerate() {
        if l.layers.start != next || (l.head && i + 1 != target.len()) {
            return Err(ResplitError::Invalid(format!(
                "stage {i} on {} runs layers {:?}, expected to start at {next}",
                l.device, l.layers
            )));
        }
        next = l.layers.end;
    }
    if next != n_layer || !target.last().is_some_and(|l| l.head) {
        return Err(ResplitError::Invalid(
            "the stages do not cover the model".into(),
        ));
    }
    Ok(())
}

/// The parts of the stages taken apart, indexed by [`super::parts::Slot::index`].
type Slots = Vec<Option<AnyPart>>;

/// Stages by their index in a layout; `None` where a stage is still to be put together.
type StageSlots = Vec<Option<AnyStage>>;

/// What moving parts did.
#[derive(Default)]
struct Moved {
    /// Bytes copied onto devices.
    bytes: u64,
    /// Parts that went through the host.
    through_host: usize,
    /// Stages put together.
    stages: usize,
}

/// Moves parts between devices and puts them together into stages.
struct Mover<'a> {
    source: &'a dyn PartSource,
    config: &'a Arc<ModelConfig>,
    backends: &'a HashMap<String, StageBackend>,
    live: &'a [LiveSequence],
    max_batch: usize,
    max_logit_rows: usize,
}

impl Mover<'_> {
    fn backend(&self, device: &str) -> Result<&StageBackend, String> {
        self.backends
            .get(device)
            .ok_or_else(|| format!("no backend for device {device}"))
    }

    /// Puts `target` together: its stages in `kept` as they are, the others from the parts in
    /// `slots`, moved to their devices first. On failure, every part and kept stage is back in
    /// `slots` and `kept` (wherever the parts are by then) and the error is returned.
    fn place(
        &self,
        target: &[Layout],
        kept: &mut StageSlots,
        slots: &mut Slots,
    ) -> Result<(Vec<AnyStage>, Moved), String> {
        let n_layer = self.config.n_layer;
        let mut dest: Vec<Option<&str>> = vec![None; n_layer + 1];
        for (j, l) in target.iter().enumerate() {
            if kept[j].is_none() {
                for il in l.layers.clone().chain(l.head.then_some(n_layer)) {
                    dest[il] = Some(&l.device);
                }
            }
        }
        let mut moved = self.arrange(slots, &dest)?;
        let mut built: StageSlots = target.iter().map(|_| None).collect();
        for (j, l) in target.iter().enumerate() {
            if kept[j].is_some() {
                continue;
            }
            let shape = StageShape {
                config: self.config,
                layers: l.layers.clone(),
                head: l.head,
                max_batch: self.max_batch,
                max_logit_rows: self.max_logit_rows,
            };
            match self.backend(&l.device).and_then(|b| {
                b.assemble(&shape, slots).map_err(|e| {
                    format!(
                        "putting layers {:?} together on {}: {e}",
                        l.layers, l.device
                    )
                })
            }) {
                Ok(stage) => built[j] = Some(stage),
                Err(e) => {
                    // Take the stages already put together apart again.
                    for stage in built.iter_mut().filter_map(Option::take) {
                        for part in stage.into_parts() {
                            let i = part.slot().index(n_layer);
                            slots[i] = Some(part);
                        }
                    }
                    return Err(e);
                }
            }
            moved.stages += 1;
        }
        let stages = kept
            .iter_mut()
            .zip(built)
            .filter_map(|(k, b)| k.take().or(b))
            .collect();
        Ok((stages, moved))
    }

    /// Moves every part in `slots` to the device `dest` names for it (see the module docs for the
    /// order). On failure every part is still in its slot, on its old device or its new one.
    fn arrange(&self, slots: &mut Slots, dest: &[Option<&str>]) -> Result<Moved, String> {
        // This model's bytes per device now, what each part will take where it goes, and the
        // most a device may hold while parts move: the larger of its share before and after.
        let mut now: HashMap<String, u64> = HashMap::new();
        let mut after: HashMap<String, u64> = HashMap::new();
        let mut cost = vec![0; slots.len()];
        for (i, (part, to)) in slots.iter().zip(dest).enumerate() {
            let Some(part) = part else { continue };
            if let Some(d) = part.device_name() {
                *now.entry(d.to_string()).or_default() += part.bytes();
            }
            if let Some(d) = to {
                cost[i] = self.cost_on(part, d)?;
                *after.entry(d.to_string()).or_default() += cost[i];
            }
        }
        let bound: HashMap<String, u64> = now
            .keys()
            .chain(after.keys())
            .map(|d| {
                let most = now
                    .get(d)
                    .copied()
                    .unwrap_or(0)
                    .max(after.get(d).copied().unwrap_or(0));
                (d.clone(), most)
            })
            .collect();
        let mut moved = Moved::default();
        loop {
            let pending: Vec<usize> = (0..slots.len())
                .filter(|&i| match (&slots[i], dest[i]) {
                    (Some(part), Some(to)) => part.device_name() != Some(to),
                    _ => false,
                })
                .collect();
            if pending.is_empty() {
                return Ok(moved);
            }
            let fits = |i: usize| {
                dest[i].is_some_and(|to| {
                    now.get(to).copied().unwrap_or(0) + cost[i]
                        <= bound.get(to).copied().unwrap_or(0)
                })
            };
            let ready = pending.iter().copied().find(|&i| fits(i));
            // A part to spill if none is ready: preferably one on a device that others wait for.
            let device_of = |i: usize| slots[i].as_ref().and_then(|p| p.device_name());
            let awaited = |i: usize| pending.iter().any(|&j| dest[j] == device_of(i));
            let on_device = pending
                .iter()
                .copied()
                .filter(|&i| device_of(i).is_some())
                .max_by_key(|&i| awaited(i));
            if let (None, Some(i)) = (ready, on_device) {
                // Moves wait on each other: free this part's device by spilling it to the host.
                let Some(part) = slots[i].take() else {
                    continue;
                };
                match part.spill(self.live, self.source, self.config) {
                    Ok(host) => {
                        release(&mut now, &part);
                        slots[i] = Some(host);
                        moved.through_host += 1;
                        continue;
                    }
                    Err(e) => {
                        slots[i] = Some(part);
                        let slot = Slot::at(i, self.config.n_layer);
                        return Err(format!("copying {slot} to the host: {e}"));
                    }
                }
            }
            // Ready, or nothing left to spill (then the device's budget has the last word).
            let i = ready.unwrap_or(pending[0]);
            let (Some(part), Some(to)) = (slots[i].take(), dest[i]) else {
                continue;
            };
            match self.copy(&part, to) {
                Ok(copy) => {
                    *now.entry(to.to_string()).or_default() += copy.bytes();
                    moved.bytes += copy.bytes();
                    release(&mut now, &part);
                    slots[i] = Some(copy);
                }
                Err(e) => {
                    slots[i] = Some(part);
                    return Err(e);
                }
            }
        }
    }

    /// Bytes `part` will take on device `to`.
    fn cost_on(&self, part: &AnyPart, to: &str) -> Result<u64, String> {
        let describe = |e: &dyn std::fmt::Display| format!("sizing {} for {to}: {e}", part.slot());
        let weights = part.weight_views(self.config).map_err(|e| describe(&e))?;
        let kv = part.kv_views(self.live).map_err(|e| describe(&e))?;
        Ok(self.backend(to)?.import_cost(&weights, &kv))
    }

    /// Copies `part` onto device `to`.
    fn copy(&self, part: &AnyPart, to: &str) -> Result<AnyPart, String> {
        let what = |e: &dyn std::fmt::Display| {
            let from = part.device_name().unwrap_or("the host");
            format!("moving {} from {from} to {to}: {e}", part.slot())
        };
        let backend = self.backend(to)?;
        let weights = part.weight_views(self.config).map_err(|e| what(&e))?;
        let kv = part.kv_views(self.live).map_err(|e| what(&e))?;
        backend.import(&weights, &kv).map_err(|e| what(&e))
    }
}

/// Takes `part`'s bytes off its device's count (it is about to be dropped).
fn release(now: &mut HashMap<String, u64>, part: &AnyPart) {
    if let Some(bytes) = part.device_name().and_then(|d| now.get_mut(d)) {
        *bytes = bytes.saturating_sub(part.bytes());
    }
}

/// The layers whose experts change device in a re-split (`--n-cpu-moe` changed live).
struct ExpertMoves {
    /// The experts' device of the new placement.
    to: Option<StageBackend>,
    /// Layers whose experts leave their layer's device for `to`.
    out: Vec<usize>,
    /// Layers whose experts come back to their layer's device.
    home: Vec<usize>,
    /// Tokens per forward call at most (sizes the experts' buffers on `to` if they are the
    /// first there).
    max_batch: usize,
}

impl ExpertMoves {
    /// What moving from the pipeline's experts to `experts` (`None`: every layer's experts on
    /// its own device) takes. Experts are on one device at a time: moving them live from one
    /// device elsewhere to another is refused.
    fn plan(
        pipeline: &Pipeline,
        experts: Option<&ExpertPlacement>,
        max_batch: usize,
    ) -> Result<Self, ResplitError> {
        let config = pipeline.config();
        let wanted = experts.map_or(0..0, |e| e.layers.start..e.layers.end.min(config.n_layer));
        if !wanted.is_empty() && config.moe.is_none() {
            return Err(ResplitError::Invalid(
                "--cpu-moe / --n-cpu-moe place experts, and this model has none".into(),
            ));
        }
        let held = pipeline.experts_elsewhere();
        if let Some(e) = experts.filter(|_| !wanted.is_empty()) {
            let to = e.backend.device_name();
            if let Some((device, layers)) = held.iter().find(|(d, _)| d != to) {
                return Err(ResplitError::Invalid(format!(
                    "the experts of layers {layers:?} are on {device}: moving them live to {to} \
                     is not supported (bring them back with --n-cpu-moe 0 first)"
                )));
            }
        }
        let is_held = |il: usize| held.iter().any(|(_, l)| l.contains(&il));
        Ok(ExpertMoves {
            to: experts.map(|e| e.backend.clone()),
            out: wanted.clone().filter(|&il| !is_held(il)).collect(),
            home: (0..config.n_layer)
                .filter(|&il| is_held(il) && !wanted.contains(&il))
                .collect(),
            max_batch,
        })
    }

    /// Moves `layers`' experts off their layers' devices to `to` (a move that fails leaves its
    /// layer as it was); on failure the ones moved come back. Returns the bytes copied.
    fn go_out(&self, pipeline: &mut Pipeline, layers: &[usize]) -> Result<u64, String> {
        let Some(to) = &self.to else {
            return match layers.first() {
                Some(il) => Err(format!("no device for the experts of layer {il}")),
                None => Ok(0),
            };
        };
        let mut bytes = 0;
        for (done, &il) in layers.iter().enumerate() {
            match pipeline.experts_out(il, to, self.max_batch) {
                Ok(b) => bytes += b,
                Err(e) => {
                    let cause = format!(
                        "moving the experts of layer {il} to {}: {e}",
                        to.device_name()
                    );
                    return Err(with_undo(cause, self.go_home(pipeline, &layers[..done])));
                }
            }
        }
        Ok(bytes)
    }

    /// Brings `layers`' experts back to their layers' devices; on failure the ones brought back
    /// leave again. Returns the bytes copied.
    fn go_home(&self, pipeline: &mut Pipeline, layers: &[usize]) -> Result<u64, String> {
        let mut bytes = 0;
        for (done, &il) in layers.iter().enumerate() {
            match pipeline.experts_home(il) {
                Ok(b) => bytes += b,
                Err(e) => {
                    let cause = format!("bringing the experts of layer {il} back: {e}");
                    return Err(with_undo(cause, self.go_out(pipeline, &layers[..done])));
                }
            }
        }
        Ok(bytes)
    }
}

/// `cause`, with why undoing what was done failed if it did (every layer still runs, with its
/// experts where the failed undo left them).
fn with_undo(cause: String, undo: Result<u64, String>) -> String {
    match undo {
        Ok(_) => cause,
        Err(e) => format!("{cause}; undoing it failed too, some experts stay where they are: {e}"),
    }
}

/// Re-splits `pipeline` to `target` (see the module docs), with the experts of `experts`'
/// layers on its device and every other layer's experts on the layer's own device (`None`:
/// all of them there). `source` is the model's file, `backends` the backend of every device of
/// the new placement (devices the pipeline already uses keep the backend its stages have),
/// `live` the running sequences (their caches move with their layers).
///
/// Experts leaving their layers' devices move first (freeing room there for layers coming),
/// then the layers (a layer's experts elsewhere stay where they are and follow it into its new
/// stage), and experts coming back move last, onto their layers' new devices. Each expert move
/// is one layer's router and experts copied directly, then freed where they were.
#[allow(clippy::too_many_arguments)]
pub fn resplit(
    pipeline: &mut Pipeline,
    source: &dyn PartSource,
    target: &[Layout],
    experts: Option<&ExpertPlacement>,
    backends: &HashMap<String, StageBackend>,
    live: &[LiveSequence],
    max_batch: usize,
    max_logit_rows: usize,
) -> Result<ResplitReport, ResplitError> {
    let started = Instant::now();
    check_layout(target, pipeline.config().n_layer)?;
    let moves = ExpertMoves::plan(pipeline, experts, max_batch)?;
    let old = layout_of(pipeline);
    let out_bytes = moves
        .go_out(pipeline, &moves.out)
        .map_err(ResplitError::Restored)?;
    let layers = |p: &mut Pipeline, to: &[Layout]| {
        resplit_layers(p, source, to, backends, live, max_batch, max_logit_rows)
    };
    let mut report = match layers(pipeline, target) {
        Ok(report) => report,
        Err(ResplitError::Broken { cause, restore }) => {
            return Err(ResplitError::Broken { cause, restore })
        }
        Err(e) => {
            let cause = e.to_string();
            let undo = moves.go_home(pipeline, &moves.out);
            return Err(ResplitError::Restored(with_undo(cause, undo)));
        }
    };
    match moves.go_home(pipeline, &moves.home) {
        Ok(home_bytes) => {
            report.bytes_moved += out_bytes + home_bytes;
            report.experts_moved = moves.out.len() + moves.home.len();
            report.secs = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(cause) => match layers(pipeline, &old) {
            Ok(_) => {
                let undo = moves.go_home(pipeline, &moves.out);
                Err(ResplitError::Restored(with_undo(cause, undo)))
            }
            Err(restore) => Err(ResplitError::Broken {
                cause,
                restore: restore.to_string(),
            }),
        },
    }
}

/// Moves the layers of `pipeline` to `target`, their experts elsewhere staying where they are.
fn resplit_layers(
    pipeline: &mut Pipeline,
    source: &dyn PartSource,
    target: &[Layout],
    backends: &HashMap<String, StageBackend>,
    live: &[LiveSequence],
    max_batch: usize,
    max_logit_rows: usize,
) -> Result<ResplitReport, ResplitError> {
    let started = Instant::now();
    let config = Arc::clone(pipeline.config());
    let n_layer = config.n_layer;
    let old = layout_of(pipeline);
    let device_of = |layouts: &[Layout], il: usize| {
        layouts
            .iter()
            .find(|l| l.layers.contains(&il))
            .map(|l| l.device.clone())
    };
    let mut report = ResplitReport {
        sequences: live.iter().filter(|s| !s.retained).count(),
        layers_moved: (0..n_layer)
            .filter(|&il| device_of(&old, il) != device_of(target, il))
            .count(),
        ..ResplitReport::default()
    };
    if old == target {
        report.secs = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // Parts staying on a device go back on the backend they were made on.
    let mut backends = backends.clone();
    for stage in pipeline.stages() {
        backends.insert(stage.device_name().to_string(), stage.backend());
    }

    // The head changes device: a token embedding read from it needs a copy of its own first.
    let head_device =
        |layouts: &[Layout]| layouts.iter().find(|l| l.head).map(|l| l.device.clone());
    if head_device(&old) != head_device(target) {
        pipeline.unshare_embedding().map_err(|e| {
            ResplitError::Restored(format!(
                "copying the token embedding out of the output head: {e}"
            ))
        })?;
    }

    // Experts living elsewhere stay there, out of the stages, and go to their layers' new
    // stages. Unchanged stages wait in their new place; the others are taken apart.
    let carried = pipeline.take_experts();
    let mut kept: StageSlots = target.iter().map(|_| None).collect();
    let mut slots: Slots = (0..=n_layer).map(|_| None).collect();
    for (i, stage) in pipeline.replace_stages(Vec::new()).into_iter().enumerate() {
        match target.iter().position(|l| *l == old[i]) {
            Some(j) => kept[j] = Some(stage),
            None => {
                for part in stage.into_parts() {
                    let at = part.slot().index(n_layer);
                    slots[at] = Some(part);
                }
            }
        }
    }

    let mover = Mover {
        source,
        config: &config,
        backends: &backends,
        live,
        max_batch,
        max_logit_rows,
    };
    let outcome = match mover.place(target, &mut kept, &mut slots) {
        Ok((stages, moved)) => {
            pipeline.replace_stages(stages);
            pipeline.share_embedding();
            report.bytes_moved = moved.bytes;
            report.stages_rebuilt = moved.stages;
            report.through_host = moved.through_host;
            report.secs = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(cause) => {
            // Back to the old placement, the kept stages in their old places.
            let mut kept_old: StageSlots = old.iter().map(|_| None).collect();
            for (j, stage) in kept.into_iter().enumerate() {
                if let (Some(stage), Some(i)) = (stage, old.iter().position(|l| *l == target[j])) {
                    kept_old[i] = Some(stage);
                }
            }
            match mover.place(&old, &mut kept_old, &mut slots) {
                Ok((stages, _)) => {
                    pipeline.replace_stages(stages);
                    pipeline.share_embedding();
                    Err(ResplitError::Restored(cause))
                }
                Err(restore) => return Err(ResplitError::Broken { cause, restore }),
            }
        }
    };
    if let Err(e) = pipeline.put_experts(carried) {
        return Err(ResplitError::Broken {
            cause: "giving the layers their experts living elsewhere".into(),
            restore: e.to_string(),
        });
    }
    outcome
}

/// The pipeline of `layout` on `backends` (device name to backend), with `max_batch` rows a step
/// and `max_logit_rows` rows of logits: a layout built from scratch, which tests compare a live
/// re-split with. A device of the layout missing from `backends` is a placement error.
pub fn build_layout(
    model: &super::load::OpenedModel,
    backends: &HashMap<String, StageBackend>,
    layout: &[Layout],
    max_batch: usize,
    max_logit_rows: usize,
) -> Result<Pipeline, super::load::LoadError> {
    let specs = layout
        .iter()
        .map(|l| {
            let backend = backends.get(&l.device).ok_or_else(|| {
                super::load::LoadError::Placement(format!("no backend for device {}", l.device))
            })?;
            Ok(super::load::StageSpec {
                backend: backend.clone(),
                layers: l.layers.clone(),
                head: l.head,
            })
        })
        .collect::<Result<_, super::load::LoadError>>()?;
    super::load::build_pipeline(model, specs, max_batch, max_logit_rows, |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(device: &str, layers: Range<usize>, head: bool) -> Layout {
        Layout {
            device: device.into(),
            layers,
            head,
        }
    }

    use crate::model::batch::Batch;
    use crate::model::load::OpenedModel;
    use llmd_gguf::synth::{write_model, Arch, ModelSpec, WeightType};
    use llmd_kernels::backend::{CpuBackend, DeviceMemory};
    use llmd_kernels::cpu::ThreadPool;

    /// A tiny random 4-layer llama written to `dir`.
    fn tiny_model(dir: &std::path::Path) -> OpenedModel {
        let path = dir.join("tiny.gguf");
        let spec = ModelSpec {
            layers: Some(4),
            ty: WeightType::Q8_0,
            seed: 7,
            threads: Some(1),
            ..ModelSpec::new(Arch::Llama)
        };
        write_model(&spec, &path).unwrap();
        OpenedModel::open(&path).unwrap()
    }

    /// CPU devices of the given names and budgets: their ledgers and backends.
    fn cpu_devices(
        budgets: &[(&'static str, u64)],
    ) -> (
        HashMap<&'static str, Arc<DeviceMemory>>,
        HashMap<String, StageBackend>,
    ) {
        let pool = Arc::new(ThreadPool::new(1).unwrap());
        let mem: HashMap<&str, Arc<DeviceMemory>> = budgets
            .iter()
            .map(|&(n, budget)| (n, DeviceMemory::new(budget)))
            .collect();
        let backends = mem
            .iter()
            .map(|(n, m)| {
                let b = CpuBackend::new(*n, Arc::clone(m), Arc::clone(&pool));
                (n.to_string(), StageBackend::Cpu(Arc::new(b)))
            })
            .collect();
        (mem, backends)
    }

    /// Feeds `tokens` from `pos` and returns the last row's logits.
    fn step(p: &mut Pipeline, tokens: &[u32], pos: usize) -> Vec<f32> {
        let mut b = Batch::default();
        for (i, &t) in tokens.iter().enumerate() {
            b.push(t, (pos + i) as u32, 1, i + 1 == tokens.len());
        }
        let mut logits = Vec::new();
        p.forward(&b, &mut logits).unwrap();
        logits
    }

    #[test]
    fn resplit_keeps_a_live_sequence_exact_and_restores_when_it_cannot_build() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let (mem, backends) = cpu_devices(&[("a", 1 << 30), ("b", 1 << 30), ("tiny", 64 << 10)]);
        let build = |layout: &[Layout]| {
            build_layout(&model, &backends, layout, 16, 1).expect("the layout's pipeline")
        };
        let start = [l("a", 0..2, false), l("b", 2..4, true)];
        let prompt = [1, 2, 3, 4, 5];
        let decode = [9, 8, 7, 6];

        // Undisturbed reference.
        let mut reference = build(&start);
        reference.add_sequence(1, 16).unwrap();
        let mut want = vec![step(&mut reference, &prompt, 0)];
        for (i, &t) in decode.iter().enumerate() {
            want.push(step(&mut reference, &[t], prompt.len() + i));
        }
        drop(reference);

        let mut p = build(&start);
        p.add_sequence(1, 16).unwrap();
        let mut got = vec![step(&mut p, &prompt, 0)];
        let live = |len| {
            [LiveSequence {
                id: 1,
                len,
                capacity: 16,
                retained: false,
            }]
        };
        // Move layer 2 and the head between steps, then everything to one device.
        let moves = [
            vec![l("a", 0..3, false), l("b", 3..4, true)],
            vec![l("b", 0..4, true)],
        ];
        for (i, &t) in decode.iter().enumerate() {
            if let Some(target) = moves.get(i) {
                let before = Usage::of(&mem);
                let r = resplit(
                    &mut p,
                    &*model.source,
                    target,
                    None,
                    &backends,
                    &live(prompt.len() + i),
                    16,
                    1,
                )
                .unwrap();
                assert_eq!(r.sequences, 1);
                assert_eq!(layout_of(&p), *target);
                // Layers only move towards one device: each is copied once, directly, and
                // only those layers are copied (the layers staying on a device are not).
                assert_eq!(r.through_host, 0);
                assert!(r.bytes_moved > 0);
                before.check_peaks(&mem);
                if i == 0 {
                    let gained = mem["a"].used() - before.used["a"];
                    assert_eq!(r.bytes_moved, gained, "only layer 2 was copied");
                }
            }
            if i == moves.len() {
                // Nothing fits on "tiny": refused, old placement rebuilt and still exact.
                let target = [l("tiny", 0..4, true)];
                let e = resplit(
                    &mut p,
                    &*model.source,
                    &target,
                    None,
                    &backends,
                    &live(prompt.len() + i),
                    16,
                    1,
                )
                .unwrap_err();
                assert!(matches!(e, ResplitError::Restored(_)), "{e}");
                assert_eq!(layout_of(&p), moves[moves.len() - 1]);
                assert_eq!(mem["tiny"].used(), 0);
            }
            got.push(step(&mut p, &[t], prompt.len() + i));
        }
        assert_eq!(got, want, "logits changed across re-splits");
        // Device a was emptied; b holds exactly its stage's weights and cache.
        assert_eq!(mem["a"].used(), 0);
        let s = &p.stages()[0];
        assert_eq!(mem["b"].used(), s.weight_bytes() + s.kv_bytes());
    }

    /// The bytes each device holds before a re-split, with the peaks started afresh.
    struct Usage {
        used: HashMap<String, u64>,
    }

    impl Usage {
        fn of(mem: &HashMap<&str, Arc<DeviceMemory>>) -> Self {
            for m in mem.values() {
                m.reset_peak();
            }
            Usage {
                used: mem.iter().map(|(n, m)| (n.to_string(), m.used())).collect(),
            }
        }

        /// Asserts that no device held more during the re-split than the larger of what it held
        /// before and after.
        fn check_peaks(&self, mem: &HashMap<&str, Arc<DeviceMemory>>) {
            for (n, m) in mem {
                let bound = self.used[*n].max(m.used());
                assert!(
                    m.peak() <= bound,
                    "{n} peaked at {} bytes, more than before ({}) or after ({})",
                    m.peak(),
                    self.used[*n],
                    m.used()
                );
            }
        }
    }

    #[test]
    fn devices_trading_layers_stay_within_their_shares_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let (mem, backends) = cpu_devices(&[("a", 1 << 30), ("b", 1 << 30), ("c", 1 << 30)]);
        // Two devices with equal layers trade them: neither has room for a layer of the other
        // before giving one away, so one goes through the host; the head stays where it is.
        let start = [l("a", 0..2, false), l("b", 2..4, false), l("c", 4..4, true)];
        let swapped = [l("b", 0..2, false), l("a", 2..4, false), l("c", 4..4, true)];
        let mut p = build_layout(&model, &backends, &start, 16, 1).expect("the layout's pipeline");
        p.add_sequence(1, 16).unwrap();
        let prompt = [5, 6, 7, 8];
        step(&mut p, &prompt, 0);
        let want = {
            let mut q =
                build_layout(&model, &backends, &swapped, 16, 1).expect("the layout's pipeline");
            q.add_sequence(1, 16).unwrap();
            step(&mut q, &prompt, 0);
            step(&mut q, &[9], prompt.len())
        };
        let before = Usage::of(&mem);
        let live = [LiveSequence {
            id: 1,
            len: prompt.len(),
            capacity: 16,
            retained: false,
        }];
        let r = resplit(
            &mut p,
            &*model.source,
            &swapped,
            None,
            &backends,
            &live,
            16,
            1,
        )
        .unwrap();
        assert_eq!(layout_of(&p), swapped);
        assert_eq!((r.layers_moved, r.stages_rebuilt), (4, 2));
        assert!(r.through_host >= 1, "{r:?}");
        before.check_peaks(&mem);
        assert_eq!(
            before.used["c"],
            mem["c"].used(),
            "the head's stage was kept"
        );
        assert_eq!(step(&mut p, &[9], prompt.len()), want);
    }

    #[test]
    fn a_spill_after_the_file_changed_is_refused_and_the_old_placement_serves() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let (mem, backends) = cpu_devices(&[("a", 1 << 30), ("b", 1 << 30), ("c", 1 << 30)]);
        let start = [l("a", 0..2, false), l("b", 2..4, false), l("c", 4..4, true)];
        let swapped = [l("b", 0..2, false), l("a", 2..4, false), l("c", 4..4, true)];
        let prompt = [5, 6, 7, 8];
        let want = {
            let mut q =
                build_layout(&model, &backends, &start, 16, 1).expect("the layout's pipeline");
            q.add_sequence(1, 16).unwrap();
            step(&mut q, &prompt, 0);
            step(&mut q, &[9], prompt.len())
        };
        let mut p = build_layout(&model, &backends, &start, 16, 1).expect("the layout's pipeline");
        p.add_sequence(1, 16).unwrap();
        step(&mut p, &prompt, 0);
        let before = Usage::of(&mem);
        // The file is cut short under the loaded model: the weights it holds are its own, but
        // the spill that trading layers needs must read the file again.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("tiny.gguf"))
            .unwrap();
        file.set_len(1000).unwrap();
        let live = [LiveSequence {
            id: 1,
            len: prompt.len(),
            capacity: 16,
            retained: false,
        }];
        let err = resplit(
            &mut p,
            &*model.source,
            &swapped,
            None,
            &backends,
            &live,
            16,
            1,
        )
        .unwrap_err();
        assert!(matches!(err, ResplitError::Restored(_)), "{err}");
        assert!(
            err.to_string().contains("changed since it was loaded"),
            "{err}"
        );
        assert_eq!(layout_of(&p), start);
        for (n, m) in &mem {
            assert_eq!(before.used[*n], m.used(), "{n}");
        }
        assert_eq!(step(&mut p, &[9], prompt.len()), want);
    }

    #[test]
    fn a_tied_embedding_is_read_from_the_head_and_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gemma.gguf");
        let spec = ModelSpec {
            layers: Some(2),
            ty: WeightType::Q8_0,
            seed: 3,
            threads: Some(1),
            ..ModelSpec::new(Arch::Gemma3)
        };
        write_model(&spec, &path).unwrap();
        let model = OpenedModel::open(&path).unwrap();
        assert!(model.source.tied_embeddings());
        let (_mem, backends) = cpu_devices(&[("a", 1 << 30), ("b", 1 << 30)]);
        let start = [l("a", 0..2, true)];
        let moved = [l("a", 0..1, false), l("b", 1..2, true)];
        let prompt = [3, 1, 4, 1, 5];
        let want = {
            let mut q =
                build_layout(&model, &backends, &moved, 16, 1).expect("the layout's pipeline");
            assert!(q.embedding_shared());
            assert_eq!(q.embedding_bytes(), 0);
            q.add_sequence(1, 16).unwrap();
            step(&mut q, &prompt, 0);
            step(&mut q, &[9], prompt.len())
        };
        let mut p = build_layout(&model, &backends, &start, 16, 1).expect("the layout's pipeline");
        assert!(p.embedding_shared());
        p.add_sequence(1, 16).unwrap();
        step(&mut p, &prompt, 0);
        let live = [LiveSequence {
            id: 1,
            len: prompt.len(),
            capacity: 16,
            retained: false,
        }];
        resplit(
            &mut p,
            &*model.source,
            &moved,
            None,
            &backends,
            &live,
            16,
            1,
        )
        .unwrap();
        assert!(
            p.embedding_shared(),
            "the copy taken for the move is dropped again"
        );
        assert_eq!(step(&mut p, &[9], prompt.len()), want);

        // An untied model keeps one owned table.
        let llama = tiny_model(dir.path());
        assert!(!llama.source.tied_embeddings());
        let q = build_layout(&llama, &backends, &[l("a", 0..4, true)], 16, 1)
            .expect("the layout's pipeline");
        assert!(!q.embedding_shared());
        let table = llama.source.file.tensor("token_embd.weight").unwrap();
        assert_eq!(q.embedding_bytes(), table.n_bytes);
    }

    #[test]
    fn layouts_must_cover_the_model_in_order() {
        assert!(check_layout(&[l("a", 0..3, false), l("b", 3..5, true)], 5).is_ok());
        assert!(check_layout(&[l("a", 0..3, false), l("b", 4..5, true)], 5).is_err());
        assert!(check_layout(&[l("a", 0..3, true), l("b", 3..5, false)], 5).is_err());
        assert!(check_layout(&[l("a", 0..3, false)], 3).is_err());
        assert!(check_layout(&[l("a", 0..3, false), l("b", 3..3, true)], 3).is_ok());
    }
}
