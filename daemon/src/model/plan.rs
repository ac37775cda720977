//! Split plans: which layers of a model go on which device, and how many bytes of weights, KV
//! cache and scratch each device then needs, computed from the file's header alone (so a partly
//! downloaded file can be planned) before anything is allocated.
//!
//! Placement follows llama.cpp's rule (`--tensor-split`, `-ngl`): the cumulative split fractions
//! cut the sequence of `n_layer + 1` layers, the output layer counting as layer `n_layer`; with
//! `gpu_layers = N` only the last `N` of those `n_layer + 1` layers go on the GPU devices (so
//! the output first, as llama.cpp's `i_gpu_start = n_layer + 1 - N`), the rest on the CPU
//! device. Costs are what llmd's backends charge: a weight's bytes as
//! stored (plus an f32 copy of one-row tensors, the norms and biases), a K and V per layer and
//! position in the load's cache types (f16 by default, Q8_0 or Q4_0 blocks:
//! [`llmd_kernels::backend::kv_cache_bytes`], what the backends charge), and the activation
//! buffers of [`super::stage::Stage`] for the largest batch. The KV figure is for **one sequence
//! of the full context**; the daemon allocates each running
//! generation `min(ctx, prompt + max_tokens)` positions, up to `MAX_SEQUENCES` at once, on demand.
//!
//! A plan that does not fit says by how much on which device and suggests what does fit: another
//! split, else a shorter context, else fewer GPU layers.
//!
//! For a mixture of experts, `--cpu-moe` / `--n-cpu-moe N` ([`ExpertsOn`]) put the router and
//! experts of the first `N` layers (every layer with `--cpu-moe`) on the host's CPU device, as
//! llama.cpp's `-ot exps=CPU` does: those bytes, and the experts' shared activation buffers,
//! are counted on that device ([`PlannedExperts`]), the rest of each layer on its own device.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use llmd_kernels::backend::{kv_cache_bytes, KvTypes};
use thiserror::Error;

use super::config::ModelConfig;
use super::head_output::SELECTED_FLOATS_PER_ROW;
use super::load::{model_config, LoadError};
use super::weights::{layer_source_names, EXPERT_TENSORS};
use llmd_gguf::{GgufFile, ModelDescription, TensorInfo};

/// Errors in a plan's input (a plan that does not fit is not an error: see [`Plan::verdict`]).
#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    /// No device to plan on.
    #[error("no device to place the model on")]
    NoDevices,
    /// The split has the wrong number of weights or invalid ones.
    #[error("{0}")]
    BadSplit(String),
    /// `gpu_layers` cannot apply to the chosen devices.
    #[error("{0}")]
    BadGpuLayers(String),
    /// The context length is zero.
    #[error("the context length must be at least 1")]
    ZeroContext,
}

/// What a model's pieces cost on a device, from its header.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSizes {
    /// Transformer layers.
    pub n_layer: usize,
    /// Bytes of each layer's weights on a device.
    pub layer_weight_bytes: Vec<u64>,
    /// Bytes of each layer's router and experts (part of `layer_weight_bytes`; 0 for a dense
    /// model): what `--cpu-moe` moves to the host.
    pub layer_expert_bytes: Vec<u64>,
    /// Buffers of the experts on a device of their own, device and host (0 for a dense model):
    /// what a CPU device's ledger is charged for them ([`super::moe::scratch_bytes`]).
    pub expert_scratch_bytes: u64,
    /// Bytes of the output head (final norm and vocabulary projection) on a device.
    pub head_weight_bytes: u64,
    /// Bytes of the token embedding table, read from the memory-mapped file on the host (not
    /// placed on any device).
    pub embedding_bytes: u64,
    /// Element types of the KV cache the sizes count.
    pub kv_types: KvTypes,
    /// KV cache bytes per layer and position: K and V of `kv_types` (f16:
    /// `2 * n_head_kv * head_dim * 2`; Q8_0 34 and Q4_0 18 bytes per 32 values).
    pub kv_bytes_per_layer_position: u64,
    /// Activation buffers of a stage that runs layers or the head, for the largest batch.
    pub stage_scratch_bytes: u64,
    /// Extra activation bytes of the stage holding the head (logit rows, the rows wanting
    /// them gathered for the head, and the candidates picked of them).
    pub head_scratch_bytes: u64,
    /// The context length the model was trained with.
    pub context_length: usize,
}

/// Bytes a device is charged for `t`: its data, plus an f32 copy of one-row tensors (norms and
/// biases are kept dequantized for direct use, as the CPU backend does).
fn device_bytes(t: &TensorInfo) -> u64 {
    let vector = if t.n_rows() == 1 {
        t.dims.first().copied().unwrap_or(0) * 4
    } else {
        0
    };
    t.n_bytes + vector
}

impl ModelSizes {
    /// The sizes of `file`'s model with `config`, for stages sized for batches of `max_batch`
    /// tokens of which `max_logit_rows` may want logits, and KV caches of `kv_types` (whose fit
    /// to the model's heads the caller checked: [`KvTypes::check_head_dim`]).
    pub fn new(
        file: &GgufFile,
        config: &ModelConfig,
        max_batch: usize,
        max_logit_rows: usize,
        kv_types: KvTypes,
    ) -> Self {
        let bytes_of = |name: &str| file.tensor(name).map_or(0, device_bytes);
        let layer_weight_bytes = (0..config.n_layer)
            .map(|il| {
                layer_source_names(config, il)
                    .iter()
                    .map(|name| bytes_of(name))
                    .sum()
            })
            .collect();
        let layer_expert_bytes = (0..config.n_layer)
            .map(|il| match config.moe {
                Some(_) => EXPERT_TENSORS
                    .iter()
                    .map(|what| bytes_of(&format!("blk.{il}.{what}")))
                    .sum(),
                None => 0,
            })
            .collect();
        let output = match file.tensor("output.weight") {
            Some(t) => device_bytes(t),
            None => bytes_of("token_embd.weight"),
        };
        let head_weight_bytes = bytes_of("output_norm.weight") + output;
        let n = max_batch as u64;
        let floats = n
            * (3 * config.n_embd as u64
                + 2 * config.q_width() as u64
                + 2 * config.kv_width() as u64
                + 2 * config.max_ff() as u64)
            + config.moe.and_then(|m| m.n_ff_shexp).map_or(0, |_| {
                super::shared_expert::scratch_floats(max_batch) as u64
            });
        // The mixture-of-experts buffers, device and host (a CPU device's ledger is charged for
        // both). A stage whose experts are elsewhere also crosses the block's input and output
        // through host memory, which no device ledger counts.
        let moe_bytes = config.moe.as_ref().map_or(0, |moe| {
            super::moe::scratch_bytes(moe, config.n_embd, max_batch)
        });
        let logit_rows = max_logit_rows.clamp(1, max_batch.max(1)) as u64;
        ModelSizes {
            n_layer: config.n_layer,
            layer_weight_bytes,
            layer_expert_bytes,
            expert_scratch_bytes: moe_bytes,
            head_weight_bytes,
            embedding_bytes: file.tensor("token_embd.weight").map_or(0, |t| t.n_bytes),
            kv_types,
            kv_bytes_per_layer_position: kv_cache_bytes(
                1,
                config.n_head_kv,
                config.head_dim,
                kv_types,
            ),
            stage_scratch_bytes: floats * 4 + moe_bytes,
            head_scratch_bytes: logit_rows
                * (config.n_vocab + config.n_embd + SELECTED_FLOATS_PER_ROW) as u64
                * 4,
            context_length: config.context_length,
        }
    }

    /// Opens `path`'s header (the tensor data may be missing) and sizes its model with KV caches
    /// of `kv_types` (the caller checks them against the returned configuration's heads).
    pub fn open(
        path: &Path,
        max_batch: usize,
        max_logit_rows: usize,
        kv_types: KvTypes,
    ) -> Result<(ModelDescription, Arc<ModelConfig>, ModelSizes), LoadError> {
        let file = GgufFile::open_unmapped(path, llmd_gguf::DataCheck::HeaderOnly)?;
        let description = ModelDescription::from_gguf(&file)?;
        let n_vocab = file
            .tensor("token_embd.weight")
            .map(|t| t.n_rows() as usize)
            .ok_or_else(|| {
                LoadError::Weights(super::weights::WeightError::Missing(
                    "token_embd.weight".into(),
                ))
            })?;
        let config = Arc::new(model_config(&description, n_vocab, &|name| {
            file.tensor(name).is_some()
        })?);
        let sizes = ModelSizes::new(&file, &config, max_batch, max_logit_rows, kv_types);
        Ok((description, config, sizes))
    }

    /// Total bytes of weights placed on devices (every layer and the head).
    pub fn device_weight_bytes(&self) -> u64 {
        self.layer_weight_bytes.iter().sum::<u64>() + self.head_weight_bytes
    }
}

/// A device a plan may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanDevice {
    /// Its name, e.g. `cpu:1`.
    pub name: String,
    /// Whether it is a GPU (for `gpu_layers`); CPU devices are not.
    pub gpu: bool,
    /// Its memory budget.
    pub budget_bytes: u64,
    /// Bytes of the budget free for this model (budget minus what others use).
    pub free_bytes: u64,
}

/// What to plan for.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOptions {
    /// Split weights per device (per GPU device with `gpu_layers`); `None`: proportional to
    /// free memory.
    pub split: Option<Vec<f64>>,
    /// Layers on the GPU devices, the rest on the CPU device (llama.cpp's `-ngl`); `None`: all.
    pub gpu_layers: Option<usize>,
    /// Context length per sequence.
    pub ctx: usize,
    /// Where the experts of the first layers go instead (`--cpu-moe`, `--n-cpu-moe N`).
    pub experts: Option<ExpertsOn>,
    /// The device `--n-cpu-moe` would put experts on (the host's CPU device), so that a plan
    /// that does not fit can suggest moving experts there; `None`: not suggested.
    pub expert_host: Option<PlanDevice>,
}

/// Where a mixture of experts' first layers keep their experts.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertsOn {
    /// The device (the host's CPU device); it may also be one of the plan's devices.
    pub device: PlanDevice,
    /// The experts of layers `0..layers` (clamped to the model's layers) go there.
    pub layers: usize,
}

/// The experts a plan puts on a device of their own.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedExperts {
    /// The device.
    pub device: PlanDevice,
    /// The layers whose router and experts it holds.
    pub layers: Range<usize>,
    /// Bytes of those weights.
    pub weight_bytes: u64,
    /// Bytes of their shared activation buffers.
    pub scratch_bytes: u64,
}

impl PlannedExperts {
    /// Everything the experts need on their device.
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes + self.scratch_bytes
    }
}

/// One stage of a plan, in pipeline order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStage {
    /// Index of its device in the plan's device list.
    pub device: usize,
    /// The layers it runs.
    pub layers: Range<usize>,
    /// Whether it holds the output head.
    pub head: bool,
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// Bytes of KV cache for one sequence of the full context.
    pub kv_bytes: u64,
    /// Bytes of activation buffers.
    pub scratch_bytes: u64,
}

impl PlannedStage {
    /// Everything the stage needs.
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes + self.kv_bytes + self.scratch_bytes
    }
}

/// Why a plan does not fit, and what would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoesNotFit {
    /// One line per device that is short of memory, with the numbers.
    pub problems: Vec<String>,
    /// A change that fits, if one exists.
    pub suggestion: Option<String>,
}

impl std::fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the model does not fit: {}", self.problems.join("; "))?;
        match &self.suggestion {
            Some(s) => write!(f, ". {s}"),
            None => Ok(()),
        }
    }
}

/// A split plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The devices, as given.
    pub devices: Vec<PlanDevice>,
    /// Stages in pipeline order (devices without layers or head have none).
    pub stages: Vec<PlannedStage>,
    /// The split weights used, normalised to sum to 1.
    pub split: Vec<f64>,
    /// Context length planned for.
    pub ctx: usize,
    /// Placements that work but are probably not what was meant.
    pub warnings: Vec<String>,
    /// The experts placed on a device of their own, if any.
    pub experts: Option<PlannedExperts>,
    /// `Some` when the plan does not fit.
    pub verdict: Option<DoesNotFit>,
}

impl Plan {
    /// Bytes the plan needs on device `d` (with the experts when they are on it).
    pub fn need_on(&self, d: usize) -> u64 {
        let experts = match &self.experts {
            Some(e) if e.device.name == self.devices[d].name => e.total_bytes(),
            _ => 0,
        };
        self.stages
            .iter()
            .filter(|s| s.device == d)
            .map(PlannedStage::total_bytes)
            .sum::<u64>()
            + experts
    }

    /// Bytes its devices lack, summed over those short of memory (0 when it fits): at least
    /// what must be freed there (retained prefix caches) for it to fit.
    pub fn bytes_short(&self) -> u64 {
        let on_devices: u64 = (0..self.devices.len())
            .map(|d| self.need_on(d).saturating_sub(self.devices[d].free_bytes))
            .sum();
        let experts_apart = match &self.experts {
            Some(e) if !self.devices.iter().any(|d| d.name == e.device.name) => {
                e.total_bytes().saturating_sub(e.device.free_bytes)
            }
            _ => 0,
        };
        on_devices + experts_apart
    }

    /// Whether it fits.
    pub fn fits(&self) -> bool {
        self.verdict.is_none()
    }
}

/// Where each of the `n_layer + 1` layers goes (the last entry is the output): `None` for the
/// CPU device, `Some(k)` for the `k`-th split device. llama.cpp's `get_layer_buft_list`.
fn layer_devices(
    n_layer: usize,
    weights: &[f64],
    gpu_start: usize,
    act_layers: usize,
) -> Vec<Option<usize>> {
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc / total)
        })
        .collect();
    (0..=n_layer)
        .map(|il| {
            if il < gpu_start || il - gpu_start >= act_layers {
                return None;
            }
            let x = (il - gpu_start) as f64 / act_layers as f64;
            Some(
                cumulative
                    .iter()
                    .position(|&c| c > x)
                    .unwrap_or(cumulative.len() - 1),
            )
        })
        .collect()
}

/// Checks split weights: one per device, finite, non-negative, not all zero.
fn check_split(split: &[f64], n: usize, what: &str) -> Result<(), PlanError> {
    if split.len() != n {
        return Err(PlanError::BadSplit(format!(
            "--split has {} weights for {n} {what}",
            split.len()
        )));
    }
    if split.iter().any(|w| !w.is_finite() || *w < 0.0) || split.iter().all(|w| *w == 0.0) {
        return Err(PlanError::BadSplit(
            "split weights must be non-negative numbers, not all zero".into(),
        ));
    }
    Ok(())
}

/// Cuts the model into stages (in pipeline order) for devices `devices` by split weights
/// `split` (not necessarily normalised).
fn stages_for(
    sizes: &ModelSizes,
    devices: &[PlanDevice],
    split: &[f64],
    gpu_layers: Option<usize>,
    ctx: usize,
) -> Vec<PlannedStage> {
    let n = sizes.n_layer;
    // Which devices the split weights refer to, and the CPU device for -ngl.
    let (targets, cpu): (Vec<usize>, Option<usize>) = match gpu_layers {
        None => ((0..devices.len()).collect(), None),
        Some(_) => (
            (0..devices.len()).filter(|&d| devices[d].gpu).collect(),
            devices.iter().position(|d| !d.gpu),
        ),
    };
    let ngl = gpu_layers.unwrap_or(n + 1);
    // llama.cpp's i_gpu_start: the output counts as layer n, so it is offloaded first.
    let gpu_start = (n + 1).saturating_sub(ngl);
    let act = ngl.min(n + 1);
    let slots = layer_devices(n, split, gpu_start, act);
    let device_of = |il: usize| match slots[il] {
        Some(k) => targets[k],
        None => cpu.unwrap_or(0),
    };
    // Consecutive layers on one device form a stage; the output joins the last stage when it is
    // on the same device, else forms its own.
    let mut stages: Vec<PlannedStage> = Vec::new();
    for il in 0..n {
        let d = device_of(il);
        match stages.last_mut() {
            Some(s) if s.device == d => s.layers.end = il + 1,
            _ => stages.push(PlannedStage {
                device: d,
                layers: il..il + 1,
                head: false,
                weight_bytes: 0,
                kv_bytes: 0,
                scratch_bytes: 0,
            }),
        }
    }
    let head_device = device_of(n);
    match stages.last_mut() {
        Some(s) if s.device == head_device => s.head = true,
        _ => stages.push(PlannedStage {
            device: head_device,
            layers: n..n,
            head: true,
            weight_bytes: 0,
            kv_bytes: 0,
            scratch_bytes: 0,
        }),
    }
    for s in &mut stages {
        cost(sizes, s, ctx);
    }
    stages
}

/// Fills in a stage's bytes.
fn cost(sizes: &ModelSizes, s: &mut PlannedStage, ctx: usize) {
    s.weight_bytes = sizes.layer_weight_bytes[s.layers.clone()]
        .iter()
        .sum::<u64>()
        + if s.head { sizes.head_weight_bytes } else { 0 };
    s.kv_bytes = s.layers.len() as u64 * ctx as u64 * sizes.kv_bytes_per_layer_position;
    s.scratch_bytes = sizes.stage_scratch_bytes + if s.head { sizes.head_scratch_bytes } else { 0 };
}

/// Lines for each device whose needs exceed its free memory.
fn shortfalls(stages: &[PlannedStage], devices: &[PlanDevice]) -> Vec<String> {
    let mut out = Vec::new();
    for (d, dev) in devices.iter().enumerate() {
        let on: Vec<&PlannedStage> = stages.iter().filter(|s| s.device == d).collect();
        let need: u64 = on.iter().map(|s| s.total_bytes()).sum();
        if need > dev.free_bytes {
            let sum = |f: fn(&PlannedStage) -> u64| on.iter().map(|s| f(s)).sum::<u64>();
            let [need_text, free_text, budget_text] =
                human_all([need, dev.free_bytes, dev.budget_bytes]);
            out.push(format!(
                "{} needs {need_text} (weights {}, KV cache {}, scratch {}) but has {free_text} \
                 free of its {budget_text} budget",
                dev.name,
                human(sum(|s| s.weight_bytes)),
                human(sum(|s| s.kv_bytes)),
                human(sum(|s| s.scratch_bytes)),
            ));
        }
    }
    out
}

/// Bytes in binary units with one decimal.
pub fn human(bytes: u64) -> String {
    human_with(bytes, 1)
}

/// Bytes in binary units with `decimals` decimals.
fn human_with(bytes: u64, decimals: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.decimals$} {}", UNITS[u])
    }
}

/// Amounts that a message compares ("needs A but has B free of its C budget"), with as many
/// decimals as it takes for different amounts to read differently (exact bytes as a last
/// resort), so that a refusal never reads "needs 1.2 GiB but has 1.2 GiB free".
pub fn human_all<const N: usize>(amounts: [u64; N]) -> [String; N] {
    let distinct = |texts: &[String; N]| {
        (0..N).all(|i| (0..N).all(|j| amounts[i] == amounts[j] || texts[i] != texts[j]))
    };
    for decimals in 1..=3 {
        let texts = amounts.map(|a| human_with(a, decimals));
        if distinct(&texts) {
            return texts;
        }
    }
    amounts.map(|a| format!("{a} B"))
}

/// [`human_all`] for two amounts.
pub fn human_pair(a: u64, b: u64) -> (String, String) {
    let [x, y] = human_all([a, b]);
    (x, y)
}

/// The split (as layer counts, which llama.cpp's rule maps back to the same ranges) that fills
/// the devices in order as far as each allows, all on `devices`; `None` if no split fits.
fn fitting_split(sizes: &ModelSizes, devices: &[PlanDevice], ctx: usize) -> Option<Vec<f64>> {
    let n = sizes.n_layer;
    let mut counts = vec![0usize; devices.len()];
    let mut next = 0;
    for (d, dev) in devices.iter().enumerate() {
        let last = d + 1 == devices.len();
        let mut stage = PlannedStage {
            device: d,
            layers: next..next,
            head: false,
            weight_bytes: 0,
            kv_bytes: 0,
            scratch_bytes: 0,
        };
        if last {
            stage.layers = next..n;
            stage.head = true;
            cost(sizes, &mut stage, ctx);
            if stage.total_bytes() > dev.free_bytes {
                return None;
            }
            counts[d] = n - next + 1;
            break;
        }
        // The most layers that fit on this device.
        let mut end = next;
        while end < n {
            stage.layers = next..end + 1;
            cost(sizes, &mut stage, ctx);
            if stage.total_bytes() > dev.free_bytes {
                break;
            }
            end += 1;
        }
        counts[d] = end - next;
        next = end;
    }
    Some(counts.into_iter().map(|c| c as f64).collect())
}

/// Formats split weights as `3,1`.
fn split_text(split: &[f64]) -> String {
    split
        .iter()
        .map(|w| {
            if w.fract() == 0.0 {
                format!("{w}")
            } else {
                format!("{w:.3}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Plans `sizes` on `devices` with `opts`.
pub fn plan(
    sizes: &ModelSizes,
    devices: &[PlanDevice],
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    plan_with(sizes, devices, opts, true)
}

/// [`plan`], with a suggestion for a plan that does not fit only if `suggesting` (a search over
/// plans asks only whether each fits).
fn plan_with(
    sizes: &ModelSizes,
    devices: &[PlanDevice],
    opts: &PlanOptions,
    suggesting: bool,
) -> Result<Plan, PlanError> {
    if devices.is_empty() {
        return Err(PlanError::NoDevices);
    }
    if opts.ctx == 0 {
        return Err(PlanError::ZeroContext);
    }
    let n_gpu = devices.iter().filter(|d| d.gpu).count();
    let targets: Vec<usize> = match opts.gpu_layers {
        None => (0..devices.len()).collect(),
        Some(_) => {
            if n_gpu == 0 {
                return Err(PlanError::BadGpuLayers(
                    "--gpu-layers puts the last N layers on GPU devices (cuda:N), as llama.cpp's \
                     -ngl, and the rest on the CPU; the chosen devices are all CPU devices: use \
                     --split to divide the layers among them"
                        .into(),
                ));
            }
            if devices.len() - n_gpu > 1 {
                return Err(PlanError::BadGpuLayers(
                    "--gpu-layers needs at most one CPU device among the devices (it takes the \
                     layers not on GPUs)"
                        .into(),
                ));
            }
            if devices.len() == n_gpu && opts.gpu_layers < Some(sizes.n_layer + 1) {
                return Err(PlanError::BadGpuLayers(format!(
                    "--gpu-layers {} leaves layers for the CPU, but no CPU device is among the \
                     devices (add cpu:0, or use --gpu-layers {})",
                    opts.gpu_layers.unwrap_or(0),
                    sizes.n_layer + 1
                )));
            }
            (0..devices.len()).filter(|&d| devices[d].gpu).collect()
        }
    };
    let what = if opts.gpu_layers.is_some() {
        "GPU devices"
    } else {
        "devices"
    };
    let raw: Vec<f64> = match &opts.split {
        Some(s) => {
            check_split(s, targets.len(), what)?;
            s.clone()
        }
        None => {
            let free: Vec<f64> = targets
                .iter()
                .map(|&d| devices[d].free_bytes as f64)
                .collect();
            if free.iter().all(|&f| f == 0.0) {
                vec![1.0; targets.len()]
            } else {
                free
            }
        }
    };
    let total: f64 = raw.iter().sum();
    let split: Vec<f64> = raw.iter().map(|w| w / total).collect();
    // Experts elsewhere: the layers' own devices carry the rest of them.
    let (moved, experts) = experts_off(sizes, opts.experts.as_ref());
    let whole = sizes;
    let sizes = &moved;
    // The raw weights, not the normalised ones: with whole-number weights (such as layer
    // counts) the cumulative fractions are then exact, as the layer fractions they are compared
    // with, so ties fall as llama.cpp's rule says.
    let stages = stages_for(sizes, devices, &raw, opts.gpu_layers, opts.ctx);

    let mut warnings = Vec::new();
    if devices.len() > 1 {
        for (d, dev) in devices.iter().enumerate() {
            let layers: usize = stages
                .iter()
                .filter(|s| s.device == d)
                .map(|s| s.layers.len())
                .sum();
            let head = stages.iter().any(|s| s.device == d && s.head);
            if layers == sizes.n_layer {
                warnings.push(format!(
                    "every layer is on {} although {} devices were given",
                    dev.name,
                    devices.len()
                ));
            }
            if layers == 0 && !head {
                warnings.push(format!("{} gets no layers", dev.name));
            } else if layers == 0 {
                warnings.push(format!("{} gets only the output layer", dev.name));
            }
        }
    }

    let mut problems = shortfalls(&stages, devices);
    if let Some(e) = &experts {
        let on_plan = devices.iter().position(|d| d.name == e.device.name);
        let need = e.total_bytes()
            + on_plan.map_or(0, |d| {
                stages
                    .iter()
                    .filter(|s| s.device == d)
                    .map(PlannedStage::total_bytes)
                    .sum()
            });
        if need > e.device.free_bytes {
            let [need_text, free_text] = human_all([need, e.device.free_bytes]);
            problems.push(format!(
                "{} needs {need_text} (the experts of layers {:?}: weights {}, scratch {}) but \
                 has {free_text} free: place the experts of fewer layers there (--n-cpu-moe)",
                e.device.name,
                e.layers,
                human(e.weight_bytes),
                human(e.scratch_bytes),
            ));
        }
    }
    let verdict = if problems.is_empty() {
        None
    } else {
        Some(DoesNotFit {
            suggestion: suggesting
                .then(|| suggest(whole, sizes, devices, opts, &targets))
                .flatten(),
            problems,
        })
    };
    Ok(Plan {
        devices: devices.to_vec(),
        stages,
        split,
        ctx: opts.ctx,
        warnings,
        verdict,
        experts,
    })
}

/// The sizes with the experts of the layers `on` names taken off their layers, and those
/// experts as planned on their device (`None` for a dense model or no `on`).
fn experts_off(sizes: &ModelSizes, on: Option<&ExpertsOn>) -> (ModelSizes, Option<PlannedExperts>) {
    let mut moved = sizes.clone();
    let Some(on) = on else {
        return (moved, None);
    };
    let n = on.layers.min(sizes.n_layer);
    if n == 0 || sizes.layer_expert_bytes.iter().all(|&b| b == 0) {
        return (moved, None);
    }
    let mut weight_bytes = 0;
    for il in 0..n {
        let e = sizes.layer_expert_bytes.get(il).copied().unwrap_or(0);
        moved.layer_weight_bytes[il] -= e.min(moved.layer_weight_bytes[il]);
        weight_bytes += e;
    }
    let planned = PlannedExperts {
        device: on.device.clone(),
        layers: 0..n,
        weight_bytes,
        scratch_bytes: sizes.expert_scratch_bytes,
    };
    (moved, Some(planned))
}

/// Why no split fits even at context 1, with the model's least need on one device (weights, the
/// scratch buffers of one stage and the head, one KV position per layer) against the free
/// memory of all devices: either there is too little in all, or enough in all but in pieces
/// too small for whole layers.
fn no_split_fits(sizes: &ModelSizes, devices: &[PlanDevice]) -> String {
    let weights = sizes.device_weight_bytes();
    let scratch = sizes.stage_scratch_bytes + sizes.head_scratch_bytes;
    let kv = sizes.n_layer as u64 * sizes.kv_bytes_per_layer_position;
    let least = weights + scratch + kv;
    let free: u64 = devices.iter().map(|d| d.free_bytes).sum();
    let (least_text, free_text) = human_pair(least, free);
    let need = format!(
        "no split fits even at context 1: the model needs at least {least_text} (weights {}, \
         scratch buffers {}, KV cache {})",
        human(weights),
        human(scratch),
        human(kv)
    );
    if least > free {
        format!("{need} and {free_text} is free on the chosen devices in all: add devices or free memory")
    } else {
        format!(
            "{need}; {free_text} is free on the chosen devices in all, but no device has room \
             for its share in whole layers: free memory on one of them, or add a device"
        )
    }
}

/// The fewest layers whose experts, moved to the host (`opts.expert_host`, or where the
/// experts asked for go), make the plan fit with the rest of `opts` as asked: more than asked,
/// for a mixture of experts without `--gpu-layers`. `sizes` are the model's with every expert
/// on its layer.
fn fewest_cpu_moe(sizes: &ModelSizes, devices: &[PlanDevice], opts: &PlanOptions) -> Option<usize> {
    let host = opts
        .experts
        .as_ref()
        .map(|e| &e.device)
        .or(opts.expert_host.as_ref())?;
    if opts.gpu_layers.is_some() || sizes.layer_expert_bytes.iter().all(|&b| b == 0) {
        return None;
    }
    let asked = opts
        .experts
        .as_ref()
        .map_or(0, |e| e.layers.min(sizes.n_layer));
    (asked + 1..=sizes.n_layer).find(|&layers| {
        let o = PlanOptions {
            split: opts.split.clone(),
            gpu_layers: None,
            ctx: opts.ctx,
            experts: Some(ExpertsOn {
                device: host.clone(),
                layers,
            }),
            expert_host: None,
        };
        plan_with(sizes, devices, &o, false).is_ok_and(|p| p.fits())
    })
}

/// [`fewest_cpu_moe`] as a suggestion.
fn suggest_cpu_moe(
    sizes: &ModelSizes,
    devices: &[PlanDevice],
    opts: &PlanOptions,
) -> Option<String> {
    let n = fewest_cpu_moe(sizes, devices, opts)?;
    let host = opts
        .experts
        .as_ref()
        .map(|e| &e.device)
        .or(opts.expert_host.as_ref())
        .map_or("the host", |d| d.name.as_str());
    Some(if n == sizes.n_layer {
        format!("--cpu-moe fits (every layer's experts on {host})")
    } else {
        format!("--n-cpu-moe {n} fits (the experts of layers 0..{n} on {host})")
    })
}

/// A change that makes the plan fit: another split at the same context, else the experts of
/// more layers on the host (`--n-cpu-moe`), else a shorter context (with a split that fits it),
/// else fewer GPU layers. `whole` are the model's sizes with every expert on its layer, `sizes`
/// with the experts asked for elsewhere taken off.
fn suggest(
    whole: &ModelSizes,
    sizes: &ModelSizes,
    devices: &[PlanDevice],
    opts: &PlanOptions,
    targets: &[usize],
) -> Option<String> {
    let fits = |ctx: usize| -> Option<Vec<f64>> {
        match opts.gpu_layers {
            None => fitting_split(sizes, devices, ctx),
            Some(_) => None,
        }
    };
    if let Some(split) = fits(opts.ctx) {
        return Some(format!(
            "--split {} fits at context {}",
            split_text(&split),
            opts.ctx
        ));
    }
    if let Some(s) = suggest_cpu_moe(whole, devices, opts) {
        return Some(s);
    }
    if opts.gpu_layers.is_none() {
        // The longest context at which some split fits, by bisection.
        if fits(1).is_some() {
            let (mut lo, mut hi) = (1usize, opts.ctx);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid).is_some() {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            // Prefer a round number.
            let round = if lo >= 1024 { lo / 256 * 256 } else { lo };
            // On one device a split means nothing (and would be printed as its layer count).
            if devices.len() == 1 {
                return Some(format!("--ctx {round} fits"));
            }
            let split = fits(round).unwrap_or_default();
            return Some(format!(
                "--ctx {round} fits (with --split {})",
                split_text(&split)
            ));
        }
        if let Some(last) = devices.last() {
            let head =
                sizes.head_weight_bytes + sizes.stage_scratch_bytes + sizes.head_scratch_bytes;
            if head > last.free_bytes {
                let (head_text, free_text) = human_pair(head, last.free_bytes);
                return Some(format!(
                    "the output layer alone needs {head_text} on the last device, {}, which has \
                     {free_text} free: list a device with more free memory last",
                    last.name,
                ));
            }
        }
        return Some(no_split_fits(sizes, devices));
    }
    // With -ngl: fewer GPU layers at the same split and context.
    let ngl = opts.gpu_layers.unwrap_or(0);
    let split: Vec<f64> = opts.split.clone().unwrap_or_else(|| {
        targets
            .iter()
            .map(|&d| devices[d].free_bytes as f64)
            .collect()
    });
    for fewer in (0..ngl).rev() {
        let o = PlanOptions {
            gpu_layers: Some(fewer),
            split: Some(split.clone()),
            ctx: opts.ctx,
            experts: None,
            expert_host: None,
        };
        if split.iter().sum::<f64>() <= 0.0 {
            break;
        }
        let stages = stages_for(sizes, devices, &split, o.gpu_layers, o.ctx);
        if shortfalls(&stages, devices).is_empty() {
            return Some(format!("--gpu-layers {fewer} fits"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A 70B-shaped model: 80 equal layers of 0.53 GB, a 1 GB head, GQA with 8 KV heads of 128.
    fn llama_70b() -> ModelSizes {
        ModelSizes {
            n_layer: 80,
            layer_weight_bytes: vec![530_000_000; 80],
            layer_expert_bytes: vec![0; 80],
            expert_scratch_bytes: 0,
            head_weight_bytes: 1_000_000_000,
            embedding_bytes: 1_000_000_000,
            kv_types: KvTypes::F16,
            kv_bytes_per_layer_position: 2 * 8 * 128 * 2,
            stage_scratch_bytes: 200_000_000,
            head_scratch_bytes: 4_000_000,
            context_length: 131_072,
        }
    }

    fn device(name: &str, gib: u64) -> PlanDevice {
        PlanDevice {
            name: name.into(),
            gpu: name.starts_with("cuda"),
            budget_bytes: gib * GIB,
            free_bytes: gib * GIB,
        }
    }

    fn opts(split: &[f64], ctx: usize) -> PlanOptions {
        PlanOptions {
            split: Some(split.to_vec()),
            gpu_layers: None,
            ctx,
            experts: None,
            expert_host: None,
        }
    }

    /// The configuration and sizes (batch 512, 8 logit rows, f16 KV) of a header-only
    /// make-model file of `arch`/`preset`/`ty`.
    fn header_sizes(
        arch: llmd_gguf::synth::Arch,
        preset: llmd_gguf::synth::Preset,
        ty: llmd_gguf::synth::WeightType,
    ) -> (Arc<ModelConfig>, ModelSizes) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("header.gguf");
        let mut spec = llmd_gguf::synth::ModelSpec::new(arch);
        spec.preset = preset;
        spec.ty = ty;
        spec.header_only = true;
        llmd_gguf::synth::write_model(&spec, &file).expect("header");
        let (_, config, sizes) =
            ModelSizes::open(&file, 512, 8, KvTypes::F16).expect("sizes from the header");
        (config, sizes)
    }

    /// Issue 17: Qwen1.5-MoE-A2.7B's shared expert is layer weight, not routed experts: the
    /// bytes `--cpu-moe` moves are the router and routed experts only (llama.cpp's `exps=CPU`).
    #[test]
    fn qwen2moe_shared_expert_stays_with_its_layer() {
        use llmd_gguf::synth::{Arch, Preset, WeightType};
        let (config, sizes) = header_sizes(Arch::Qwen2Moe, Preset::A2_7B, WeightType::Q8_0);
        assert_eq!(config.n_layer, 24);
        // Q8_0: 34 bytes per 32 values; the router is F32.
        let q8 = |values: u64| values / 32 * 34;
        let routed = q8(60 * 3 * 2048 * 1408) + 60 * 2048 * 4;
        let shared = q8(3 * 2048 * 5632);
        assert_eq!(sizes.layer_expert_bytes[0], routed);
        let rest = sizes.layer_weight_bytes[0] - sizes.layer_expert_bytes[0];
        assert!(
            rest > shared,
            "{} left with the layer, the shared expert alone is {}",
            human(rest),
            human(shared)
        );
    }

    /// Issue 17: Qwen3-235B-A22B in Q4_K_M (about 133 GiB) on two 24 GiB GPUs plus host RAM: it
    /// fits only with experts on the host, with all of them (`--cpu-moe`) or with those of the
    /// first N layers (`--n-cpu-moe N`), and the per-device bytes add up.
    #[test]
    fn qwen3_235b_fits_two_24_gib_gpus_with_experts_on_the_host() {
        use llmd_gguf::synth::{Arch, Preset, WeightType};
        let (config, sizes) = header_sizes(Arch::Qwen3Moe, Preset::A22B235, WeightType::Q4_K_M);
        assert_eq!(config.n_layer, 94);
        let total = sizes.device_weight_bytes();
        assert!((125 * GIB..145 * GIB).contains(&total), "{}", human(total));
        let experts: u64 = sizes.layer_expert_bytes.iter().sum();
        assert!(experts > total * 9 / 10, "experts are most of it");
        // Two GPUs with 24 GiB (less the daemon's reserve) and 192 GiB of host RAM.
        let gpus = [device("cuda:0", 23), device("cuda:1", 23)];
        let host = device("cpu:0", 192);
        let ctx = 16384;
        let with = |layers: Option<usize>| PlanOptions {
            split: None,
            gpu_layers: None,
            ctx,
            experts: layers.map(|layers| ExpertsOn {
                device: host.clone(),
                layers,
            }),
            expert_host: Some(host.clone()),
        };
        let dense = plan(&sizes, &gpus, &with(None)).unwrap();
        assert!(!dense.fits());
        let all = plan(&sizes, &gpus, &with(Some(usize::MAX))).unwrap();
        assert!(all.fits(), "{:?}", all.verdict);
        let e = all.experts.clone().expect("experts on the host");
        assert_eq!((e.device.name.as_str(), e.layers.clone()), ("cpu:0", 0..94));
        assert_eq!(e.weight_bytes, experts);
        let on_gpus = all.need_on(0) + all.need_on(1);
        let planned: u64 = all.stages.iter().map(|s| s.weight_bytes).sum();
        assert_eq!(planned + e.weight_bytes, total, "every byte counted once");
        assert!(on_gpus < 46 * GIB);
        println!(
            "--cpu-moe: cuda:0 {}, cuda:1 {}, cpu:0 {} (experts {})",
            human(all.need_on(0)),
            human(all.need_on(1)),
            human(e.total_bytes()),
            human(e.weight_bytes)
        );
        // The fewest layers whose experts must leave the GPUs.
        let n = (1..=94)
            .find(|&n| plan(&sizes, &gpus, &with(Some(n))).unwrap().fits())
            .expect("some N fits");
        assert!(n < 94, "--n-cpu-moe keeps some experts on the GPUs");
        let p = plan(&sizes, &gpus, &with(Some(n))).unwrap();
        println!(
            "--n-cpu-moe {n}: cuda:0 {}, cuda:1 {}, cpu:0 {}",
            human(p.need_on(0)),
            human(p.need_on(1)),
            human(p.experts.as_ref().map_or(0, PlannedExperts::total_bytes))
        );
        assert!(!plan(&sizes, &gpus, &with(Some(n - 1))).unwrap().fits());
        // The plan that does not fit suggests exactly that N, and so does one asking too few.
        let want = format!("--n-cpu-moe {n} fits (the experts of layers 0..{n} on cpu:0)");
        let suggested = dense.verdict.expect("no fit").suggestion;
        assert_eq!(suggested.as_deref(), Some(want.as_str()));
        let few = plan(&sizes, &gpus, &with(Some(n / 2))).unwrap().verdict;
        assert_eq!(
            few.and_then(|v| v.suggestion).as_deref(),
            Some(want.as_str())
        );
        // Without a host to put experts on, no such suggestion.
        let no_host = PlanOptions {
            expert_host: None,
            ..with(None)
        };
        let v = plan(&sizes, &gpus, &no_host)
            .unwrap()
            .verdict
            .expect("no fit");
        assert!(!v.suggestion.unwrap_or_default().contains("cpu-moe"));
        // Too little host memory for the experts is refused naming the host.
        let small = PlanOptions {
            experts: Some(ExpertsOn {
                device: device("cpu:0", 16),
                layers: 94,
            }),
            ..with(None)
        };
        let v = plan(&sizes, &gpus, &small)
            .unwrap()
            .verdict
            .expect("no fit");
        assert!(
            v.problems.iter().any(|p| p.starts_with("cpu:0 needs")),
            "{v}"
        );
    }

    #[test]
    fn even_split_of_80_layers_as_llama_cpp() {
        let devs = [device("cpu:0", 24), device("cpu:1", 24)];
        let p = plan(&llama_70b(), &devs, &opts(&[1.0, 1.0], 8192)).unwrap();
        // il / 81 < 0.5 for il <= 40.
        assert_eq!(p.stages.len(), 2);
        assert_eq!(
            (p.stages[0].layers.clone(), p.stages[0].head),
            (0..41, false)
        );
        assert_eq!(
            (p.stages[1].layers.clone(), p.stages[1].head),
            (41..80, true)
        );
        assert_eq!(
            p.stages[0].kv_bytes,
            41 * 8192 * 4096,
            "one sequence of the full context"
        );
        assert!(p.fits(), "{:?}", p.verdict);
        assert!(p.warnings.is_empty());
    }

    /// Issue 15: on one device the suggestion is a context alone, one that really fits.
    #[test]
    fn one_device_suggests_a_context_without_a_split() {
        let devs = [device("cpu:0", 48)];
        let p = plan(&llama_70b(), &devs, &opts(&[1.0], 131_072)).unwrap();
        let s = p
            .verdict
            .expect("must not fit")
            .suggestion
            .expect("a suggestion");
        assert!(!s.contains("--split"), "{s}");
        let ctx: usize = s
            .strip_prefix("--ctx ")
            .and_then(|r| r.strip_suffix(" fits"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a context suggestion: {s}"));
        assert!(ctx > 0 && ctx < 131_072, "{s}");
        let again = plan(&llama_70b(), &devs, &opts(&[1.0], ctx)).unwrap();
        assert!(
            again.fits(),
            "the suggested context does not fit: {:?}",
            again.verdict
        );
    }

    #[test]
    fn too_long_a_context_is_refused_with_a_context_that_fits() {
        let devs = [device("cpu:0", 24), device("cpu:1", 24)];
        let p = plan(&llama_70b(), &devs, &opts(&[1.0, 1.0], 65536)).unwrap();
        let v = p.verdict.clone().expect("must not fit");
        assert!(v.problems[0].starts_with("cpu:0 needs"), "{v}");
        let s = v.suggestion.expect("a suggestion");
        let ctx: usize = s
            .strip_prefix("--ctx ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{s}"));
        assert!((8192..65536).contains(&ctx), "{s}");
        // The suggestion really fits.
        let split_arg = s.rsplit("--split ").next().unwrap().trim_end_matches(')');
        let split: Vec<f64> = split_arg.split(',').map(|w| w.parse().unwrap()).collect();
        assert!(
            plan(&llama_70b(), &devs, &opts(&split, ctx))
                .unwrap()
                .fits(),
            "{s}"
        );
    }

    /// Issue 14: the weights alone fit the free memory, but weights and scratch do not. The
    /// message used to say "the weights alone need 1.2 GiB ... 1.2 GiB is free in all".
    #[test]
    fn out_of_budget_message_does_not_contradict_itself() {
        let sizes = ModelSizes {
            n_layer: 4,
            layer_weight_bytes: vec![300 << 20; 4],
            layer_expert_bytes: vec![0; 4],
            expert_scratch_bytes: 0,
            head_weight_bytes: 50 << 20,
            embedding_bytes: 50 << 20,
            kv_bytes_per_layer_position: 1024,
            stage_scratch_bytes: 80 << 20,
            head_scratch_bytes: 10 << 20,
            context_length: 4096,
            kv_types: KvTypes::F16,
        };
        // 1250 MiB of weights, 1290 MiB free: the weights fit, weights + scratch do not.
        let dev = PlanDevice {
            name: "cpu:0".into(),
            gpu: false,
            budget_bytes: 1290 << 20,
            free_bytes: 1290 << 20,
        };
        let p = plan(&sizes, &[dev], &opts(&[1.0], 1024)).unwrap();
        let v = p.verdict.expect("must not fit").to_string();
        assert!(!v.contains("weights alone"), "{v}");
        assert!(v.contains("no split fits even at context 1"), "{v}");
        // The amounts compared differ, so they must read differently.
        let (need, free) = human_pair(1340 << 20, 1290 << 20);
        assert_ne!(need, free);
        assert!(v.contains(&format!("at least {need}")), "{v}");
        assert!(v.contains(&format!("{free} is free")), "{v}");
        assert!(v.contains("add devices or free memory"), "{v}");
        // Same amounts in a shortfall line read differently too.
        assert!(!v.contains("needs 1.3 GiB (weights 1.2 GiB, KV cache 1.0 MiB, scratch 90.0 MiB) but has 1.3 GiB"), "{v}");
    }

    #[test]
    fn amounts_compared_read_differently() {
        assert_eq!(
            human_pair(1 << 30, 1 << 30),
            ("1.0 GiB".into(), "1.0 GiB".into())
        );
        let (a, b) = human_pair(1_300_000_000, 1_290_000_000);
        assert_ne!(a, b);
        let (a, b) = human_pair(1 << 30, (1 << 30) + 1);
        assert_eq!((a.as_str(), b.as_str()), ("1073741824 B", "1073741825 B"));
    }

    #[test]
    fn a_lopsided_split_gets_a_split_that_fits() {
        let devs = [device("cpu:0", 24), device("cpu:1", 24)];
        let p = plan(&llama_70b(), &devs, &opts(&[3.0, 1.0], 4096)).unwrap();
        let s = p.verdict.unwrap().suggestion.unwrap();
        let split: Vec<f64> = s
            .strip_prefix("--split ")
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .split(',')
            .map(|w| w.parse().unwrap())
            .collect();
        let again = plan(&llama_70b(), &devs, &opts(&split, 4096)).unwrap();
        assert!(again.fits(), "{s}: {:?}", again.verdict);
    }

    #[test]
    fn layer_counts_as_weights_reproduce_the_ranges() {
        let devs = [device("a", 100), device("b", 100), device("c", 100)];
        let p = plan(&llama_70b(), &devs, &opts(&[10.0, 30.0, 41.0], 1024)).unwrap();
        let ranges: Vec<_> = p.stages.iter().map(|s| s.layers.clone()).collect();
        assert_eq!(ranges, vec![0..10, 10..40, 40..80]);
        // Every way to cut small models over three devices round-trips through counts.
        for n in 1..40usize {
            let mut sizes = llama_70b();
            sizes.n_layer = n;
            sizes.layer_weight_bytes = vec![1; n];
            for a in 0..=n {
                for b in 0..=n - a {
                    let c = n - a - b;
                    let w = [a as f64, b as f64, c as f64 + 1.0];
                    let p = plan(&sizes, &devs, &opts(&w, 16)).unwrap();
                    let mut layers = [0usize; 3];
                    for s in &p.stages {
                        layers[s.device] += s.layers.len();
                    }
                    assert_eq!(layers, [a, b, c], "{n} layers split {w:?}");
                }
            }
        }
    }

    #[test]
    fn one_device_taking_everything_or_none_is_flagged() {
        let devs = [device("cpu:0", 100), device("cpu:1", 100)];
        let p = plan(&llama_70b(), &devs, &opts(&[1.0, 0.0], 1024)).unwrap();
        assert_eq!(p.stages.len(), 1);
        assert!(p
            .warnings
            .iter()
            .any(|w| w.contains("every layer is on cpu:0")));
        assert!(p
            .warnings
            .iter()
            .any(|w| w.contains("cpu:1 gets no layers")));
    }

    #[test]
    fn default_split_follows_free_memory() {
        let mut devs = [device("cpu:0", 48), device("cpu:1", 48)];
        devs[1].free_bytes = 16 * GIB;
        let p = plan(
            &llama_70b(),
            &devs,
            &PlanOptions {
                split: None,
                gpu_layers: None,
                ctx: 1024,
                experts: None,
                expert_host: None,
            },
        )
        .unwrap();
        assert!((p.split[0] - 0.75).abs() < 1e-9);
        assert_eq!(p.stages[0].layers, 0..61);
    }

    #[test]
    fn gpu_layers_as_ngl() {
        let devs = [
            device("cpu:0", 200),
            device("cuda:0", 24),
            device("cuda:1", 24),
        ];
        let o = |ngl| PlanOptions {
            split: Some(vec![1.0, 1.0]),
            gpu_layers: Some(ngl),
            ctx: 1024,
            experts: None,
            expert_host: None,
        };
        // -ngl 40 (as llama.cpp, checked with its load log): of the 81 layers counting the
        // output, the last 40 go to the GPUs: 0..41 on the CPU, 41..61 and 61..80 + output.
        let p = plan(&llama_70b(), &devs, &o(40)).unwrap();
        let got: Vec<_> = p
            .stages
            .iter()
            .map(|s| (s.device, s.layers.clone(), s.head))
            .collect();
        assert_eq!(
            got,
            vec![(0, 0..41, false), (1, 41..61, false), (2, 61..80, true)]
        );
        // -ngl 81: everything on GPUs, as without it.
        let p = plan(&llama_70b(), &devs, &o(81)).unwrap();
        assert_eq!(p.stages[0].device, 1);
        assert!(p.stages.last().unwrap().head && p.stages.last().unwrap().device == 2);
        // Only CPU devices: refused with an explanation.
        let cpus = [device("cpu:0", 24), device("cpu:1", 24)];
        let e = plan(&llama_70b(), &cpus, &o(10)).unwrap_err();
        assert!(e.to_string().contains("all CPU devices"), "{e}");
    }

    #[test]
    fn too_many_gpu_layers_suggests_fewer() {
        let devs = [device("cpu:0", 200), device("cuda:0", 10)];
        let p = plan(
            &llama_70b(),
            &devs,
            &PlanOptions {
                split: Some(vec![1.0]),
                gpu_layers: Some(40),
                ctx: 1024,
                experts: None,
                expert_host: None,
            },
        )
        .unwrap();
        let s = p.verdict.unwrap().suggestion.unwrap();
        let n: usize = s
            .strip_prefix("--gpu-layers ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(n < 40 && n > 0, "{s}");
    }

    /// The case quantized caches are for: a 70B at 32k context on two 24 GiB GPUs. With an f16
    /// cache it does not fit at any split; with a Q8_0 cache (34 bytes per 32 values instead of
    /// 64) the plan fits, its KV bytes exactly those of the kernels' Q8_0 cache.
    #[test]
    fn a_q8_0_cache_fits_a_70b_at_32k_on_two_24_gib_gpus() {
        let devs = [device("cuda:0", 24), device("cuda:1", 24)];
        let at_32k = |sizes: &ModelSizes| {
            plan(
                sizes,
                &devs,
                &PlanOptions {
                    split: None,
                    gpu_layers: None,
                    ctx: 32768,
                    experts: None,
                    expert_host: None,
                },
            )
            .unwrap()
        };
        let f16 = at_32k(&llama_70b());
        assert!(!f16.fits(), "f16 at 32k must not fit");
        let q8 = KvTypes::both(llmd_kernels::backend::KvType::Q8_0);
        let sizes = ModelSizes {
            kv_types: q8,
            kv_bytes_per_layer_position: kv_cache_bytes(1, 8, 128, q8),
            ..llama_70b()
        };
        assert_eq!(sizes.kv_bytes_per_layer_position, 2 * 8 * 128 / 32 * 34);
        let p = at_32k(&sizes);
        assert!(p.fits(), "{:?}", p.verdict);
        let layers = p.stages[0].layers.len();
        assert_eq!(
            p.stages[0].kv_bytes,
            kv_cache_bytes(32768, 8, 128, q8) * layers as u64
        );
        // Per layer, 34 bytes where f16 takes 64.
        let per_layer = |p: &Plan| p.stages[0].kv_bytes / p.stages[0].layers.len() as u64;
        assert_eq!(per_layer(&p) * 64, per_layer(&f16) * 34);
    }

    #[test]
    fn bad_splits_are_errors() {
        let devs = [device("cpu:0", 24), device("cpu:1", 24)];
        assert!(matches!(
            plan(&llama_70b(), &devs, &opts(&[1.0], 1024)),
            Err(PlanError::BadSplit(_))
        ));
        assert!(matches!(
            plan(&llama_70b(), &devs, &opts(&[0.0, 0.0], 1024)),
            Err(PlanError::BadSplit(_))
        ));
        assert_eq!(
            plan(&llama_70b(), &[], &opts(&[], 1)),
            Err(PlanError::NoDevices)
        );
    }
}
