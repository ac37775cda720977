//! One pipeline stage: a contiguous range of layers on one device, with those layers' KV caches
//! for every live sequence, and (on the last stage) the output head. [`Stage::forward`] is the
//! transformer forward pass for that range, read top to bottom.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use llmd_kernels::backend::{
    AttentionParams, Backend, BackendError, DeviceActivations, HostStaging, KvTypes, QkvParams,
};
use llmd_kernels::select::{decode_candidates, Candidate, Selection, CANDIDATE_FLOATS};

use super::backend::AnyExperts;
use super::batch::{Batch, Segment, SeqId};
use super::config::ModelConfig;
use super::graphs::{GraphCounts, StepGraphs, StepShape, MAX_GRAPH_ROWS};
use super::head_output::{device_select_enabled, HeadOutput, RowRequest, SELECTED_FLOATS_PER_ROW};
use super::host_tensors::{OwnedTensor, PartSource};
use super::moe::{
    finish_pairs, norm_moe_ffn, ExpertLoader, ExpertsElsewhere, MoeOutput, MoeScratch,
};
use super::parts::{DevicePart, PartWeights, Slot};
use super::shared_expert::{add_shared_expert, run_shared_mlp, SharedBuffers, SharedScratch};
use super::weights::{
    ExpertWeights, FeedForward, HeadWeights, LayerWeights, WeightError, OUTPUT,
    OUTPUT_NORM as NORM, TOKEN_EMBD,
};

/// Activation buffers of one stage, sized once for the largest batch so the forward pass never
/// allocates.
pub struct Scratch<B: Backend> {
    /// Residual stream: `(max_tokens, n_embd)`.
    x: B::Activations,
    /// Normalised input of a block: `(max_tokens, n_embd)`.
    cur: B::Activations,
    /// Queries: `(max_tokens, n_head * head_dim)`.
    q: B::Activations,
    /// Keys: `(max_tokens, n_head_kv * head_dim)`.
    k: B::Activations,
    /// Values: `(max_tokens, n_head_kv * head_dim)`.
    v: B::Activations,
    /// Attention output: `(max_tokens, n_head * head_dim)`.
    attn: B::Activations,
    /// Block output before the residual add: `(max_tokens, n_embd)`.
    out: B::Activations,
    /// Feed-forward gate: `(max_tokens, n_ff)`.
    gate: B::Activations,
    /// Feed-forward up: `(max_tokens, n_ff)`.
    up: B::Activations,
    /// Logits: `(max_logit_rows, n_vocab)` on the last stage, else empty.
    logits: B::Activations,
    /// The candidates the device picks of the logits rows ([`Backend::select`]), argmax ones
    /// then top-k ones: `(max_logit_rows, SELECTED_FLOATS_PER_ROW)` on the last stage, else
    /// empty.
    selected: B::Activations,
    /// The rows wanting logits gathered for the head, those of every micro-batch of a step one
    /// after the other: `(max_logit_rows, n_embd)` on the last stage, else empty.
    head_in: B::Activations,
    /// The mixture-of-experts block's buffers, for a model with experts.
    moe: Option<MoeScratch<B>>,
    /// The shared expert's buffers, for a model with one (Qwen2-MoE).
    shared: Option<SharedScratch<B>>,
}

/// A range of layers resident on one device.
pub struct Stage<B: Backend> {
    /// The device.
    backend: Arc<B>,
    /// Model hyperparameters.
    config: Arc<ModelConfig>,
    /// Global indices of the layers this stage runs.
    layers: Range<usize>,
    /// Weights of `layers`, in order.
    weights: Vec<LayerWeights<B::Weight>>,
    /// The output head, on the last stage only.
    head: Option<HeadWeights<B::Weight>>,
    /// KV caches of this stage's layers by sequence: `kv[il - layers.start][seq]`.
    kv: Vec<HashMap<SeqId, B::KvCache>>,
    /// Reusable activation buffers.
    scratch: Scratch<B>,
    /// Tokens per forward call at most.
    max_tokens: usize,
    /// Tokens per forward call whose logits may be wanted, at most.
    max_logit_rows: usize,
    /// Bytes of weights resident.
    weight_bytes: u64,
    /// The experts of each layer (`experts[il - layers.start]`) that live on another device
    /// (`--cpu-moe`); `None` where they are in the layer's weights.
    experts: Vec<Option<AnyExperts>>,
    /// The normalised input and the output of a block whose experts are elsewhere, on the
    /// host: `(2, max_tokens, n_embd)` when any are, else empty.
    host_ffn: Vec<f32>,
    /// Page-locked host memory the logits are read into (`max_logit_rows * n_vocab` values),
    /// allocated at the first step that wants logits when the device offers it.
    logits_host: LogitsHost,
    /// CUDA graphs of decode steps by shape; dropped whenever the KV caches or weights they
    /// address change, and with the stage.
    graphs: StepGraphs,
    /// Whether the head picks the candidates rows ask for on the device, reading back only
    /// them ([`device_select_enabled`] unless [`Stage::set_device_select`] says otherwise);
    /// off, it reads the logits rows and picks on the host.
    device_select: bool,
    /// The candidates read back from the device, as [`CANDIDATE_FLOATS`] values each, where
    /// the device offers no page-locked memory (reused).
    selected_host: Vec<f32>,
    /// One row's candidates picked on the host (reused).
    picked: Vec<Candidate>,
}

/// How the residual stream enters and leaves a stage when it need not cross the host (see
/// [`Stage::forward`]).
#[derive(Debug, Default)]
pub struct Handoff {
    /// Activations the previous stage left on its device, to copy from directly.
    pub input: Option<DeviceActivations>,
    /// Whether to leave the output on this device for the next stage.
    pub keep_output: bool,
    /// The output left on this device (set by `forward` when `keep_output` could be honoured).
    pub output: Option<DeviceActivations>,
    /// On the last stage: rows wanting logits that earlier micro-batches of this step have
    /// already gathered for the head (this one's go after them).
    pub head_row: usize,
    /// On the last stage: only gather the rows wanting logits, leaving the head to
    /// [`Stage::head`] once every micro-batch of the step has been through (one read-back).
    pub defer_head: bool,
}

/// Errors of a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The device failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The batch is inconsistent with this stage.
    #[error("bad batch: {0}")]
    BadBatch(String),
}

impl<B: Backend> Stage<B> {
    /// Loads `layers` (and the head if `with_head`) from `source` onto `backend`, with buffers for
    /// batches of up to `max_tokens` tokens, `max_logit_rows` of which may want logits.
    /// Each part is read into host memory, uploaded and its host copy dropped before the next
    /// (a CPU device's upload is the one copy that stays). The experts of the layers in
    /// `experts.layers` go to another device instead. `loaded()` is called after each layer and
    /// after the head, for progress reports.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        backend: Arc<B>,
        config: Arc<ModelConfig>,
        source: &dyn PartSource,
        layers: Range<usize>,
        with_head: bool,
        max_tokens: usize,
        max_logit_rows: usize,
        experts: Option<&ExpertsElsewhere<'_>>,
        loaded: &mut dyn FnMut(),
    ) -> Result<Self, WeightError> {
        let slots = layers.clone().map(Slot::Layer);
        let mut parts = Vec::with_capacity(layers.len() + 1);
        let mut elsewhere = Vec::with_capacity(layers.len());
        for slot in slots.chain(with_head.then_some(Slot::Head)) {
            if slot == Slot::Head {
                parts.push(Self::load_head(&backend, &config, source)?);
            } else {
                let read = source.read_part(&config, slot)?;
                let mut weights = PartWeights::from_source(&read, &config, slot)?;
                if let (PartWeights::Layer(il, w), Some(to)) = (&mut weights, experts) {
                    let moved = match to.layers.contains(il) {
                        true => std::mem::replace(&mut w.ffn, FeedForward::Elsewhere),
                        false => FeedForward::Elsewhere,
                    };
                    elsewhere.push(match moved {
                        FeedForward::Experts(x) => Some((to.load)(&x)?),
                        _ => None,
                    });
                }
                parts.push(DevicePart::import(&backend, &weights, &[])?);
            }
            loaded();
        }
        let scratch =
            Self::alloc_scratch(&*backend, &config, max_tokens, with_head, max_logit_rows)?;
        let mut stage = Self::from_parts(
            backend,
            config,
            layers,
            parts,
            scratch,
            max_tokens,
            max_logit_rows,
        )?;
        if elsewhere.iter().any(Option::is_some) {
            stage.experts = elsewhere;
            stage.fit_host_ffn();
        }
        Ok(stage)
    }

    /// The output head read from `source` straight into `backend`'s buffers (the vocabulary
    /// projection is often the largest tensor: it is never staged in host memory beside a CPU
    /// device's copy). The token embedding serves as the projection when the model ties them.
    fn load_head(
        backend: &Arc<B>,
        config: &ModelConfig,
        source: &dyn PartSource,
    ) -> Result<DevicePart<B>, WeightError> {
        let load =
            |name: &str, rows: usize, cols: usize| -> Result<Option<B::Weight>, WeightError> {
                let Some((ty, r, c)) = source.shape_of(name) else {
                    return Ok(None);
                };
                if (r, c) != (rows, cols) {
                    return Err(WeightError::Shape {
                        name: name.into(),
                        rows: r,
                        cols: c,
                        want_rows: rows,
                        want_cols: cols,
                    });
                }
                let mut failed = None;
                let uploaded = backend.upload_weight_filled(name, ty, rows, cols, &mut |dst| {
                    source.read_into(name, dst).map_err(|e| {
                        let message = e.to_string();
                        failed = Some(e);
                        BackendError::Device {
                            device: "the model file".into(),
                            message,
                        }
                    })
                });
                match (uploaded, failed) {
                    (Err(_), Some(e)) => Err(e),
                    (uploaded, _) => Ok(Some(uploaded?)),
                }
            };
        let (d, vocab) = (config.n_embd, config.n_vocab);
        let output_norm = load(NORM, 1, d)?.ok_or_else(|| WeightError::Missing(NORM.into()))?;
        let output = match load(OUTPUT, vocab, d)? {
            Some(w) => w,
            None => load(TOKEN_EMBD, vocab, d)?
                .ok_or_else(|| WeightError::Missing(TOKEN_EMBD.into()))?,
        };
        Ok(DevicePart {
            backend: Arc::clone(backend),
            weights: PartWeights::Head(HeadWeights {
                output_norm,
                output,
            }),
            kv: HashMap::new(),
        })
    }

    /// A stage of `parts` (the layers `layers` in order, then the head if it has one), all on
    /// `backend`, computing in `scratch` (see [`Stage::alloc_scratch`]).
    pub fn from_parts(
        backend: Arc<B>,
        config: Arc<ModelConfig>,
        layers: Range<usize>,
        parts: Vec<DevicePart<B>>,
        scratch: Scratch<B>,
        max_tokens: usize,
        max_logit_rows: usize,
    ) -> Result<Self, WeightError> {
        let mut weights = Vec::with_capacity(layers.len());
        let mut kv = Vec::with_capacity(layers.len());
        let mut head = None;
        let mut weight_bytes = 0;
        for part in parts {
            let on_backend = Arc::ptr_eq(&part.backend, &backend);
            weight_bytes += part
                .weights
                .tensors()
                .into_iter()
                .map(|w| backend.weight_bytes(w))
                .sum::<u64>();
            match part.weights {
                PartWeights::Layer(il, w)
                    if on_backend && head.is_none() && il == layers.start + weights.len() =>
                {
                    weights.push(w);
                    kv.push(part.kv);
                }
                PartWeights::Head(h) if on_backend && head.is_none() => head = Some(h),
                other => {
                    return Err(WeightError::Misplaced(format!(
                        "{} does not belong at this place of a stage of layers {layers:?} on {}",
                        other.slot(),
                        backend.device_name()
                    )))
                }
            }
        }
        if weights.len() != layers.len() {
            return Err(WeightError::Misplaced(format!(
                "{} layers for a stage of layers {layers:?}",
                weights.len()
            )));
        }
        Ok(Stage {
            experts: layers.clone().map(|_| None).collect(),
            host_ffn: Vec::new(),
            backend,
            config,
            layers,
            weights,
            head,
            kv,
            scratch,
            max_tokens,
            max_logit_rows: max_logit_rows.clamp(1, max_tokens.max(1)),
            weight_bytes,
            logits_host: LogitsHost::Unasked,
            graphs: StepGraphs::default(),
            device_select: device_select_enabled(),
            selected_host: Vec::new(),
            picked: Vec::new(),
        })
    }

    /// Takes the stage apart into its layers (with their sequences' caches) and its head, still
    /// on the device; the activation buffers are freed.
    pub fn into_parts(self) -> Vec<DevicePart<B>> {
        let backend = self.backend;
        let mut parts: Vec<DevicePart<B>> = self
            .layers
            .zip(self.weights)
            .zip(self.kv)
            .map(|((il, w), kv)| DevicePart {
                backend: Arc::clone(&backend),
                weights: PartWeights::Layer(il, w),
                kv,
            })
            .collect();
        if let Some(h) = self.head {
            parts.push(DevicePart {
                backend,
                weights: PartWeights::Head(h),
                kv: HashMap::new(),
            });
        }
        parts
    }

    /// Activation buffers for batches of up to `max_tokens` tokens, with logits for
    /// `max_logit_rows` of them when the stage has the head.
    pub fn alloc_scratch(
        b: &B,
        c: &ModelConfig,
        max_tokens: usize,
        with_head: bool,
        max_logit_rows: usize,
    ) -> Result<Scratch<B>, BackendError> {
        let logit_rows = if with_head {
            max_logit_rows.clamp(1, max_tokens.max(1))
        } else {
            0
        };
        let n = max_tokens;
        Ok(Scratch {
            x: b.alloc_activations(n * c.n_embd)?,
            cur: b.alloc_activations(n * c.n_embd)?,
            q: b.alloc_activations(n * c.q_width())?,
            k: b.alloc_activations(n * c.kv_width())?,
            v: b.alloc_activations(n * c.kv_width())?,
            attn: b.alloc_activations(n * c.q_width())?,
            out: b.alloc_activations(n * c.n_embd)?,
            gate: b.alloc_activations(n * c.max_ff())?,
            up: b.alloc_activations(n * c.max_ff())?,
            logits: b.alloc_activations(logit_rows * c.n_vocab)?,
            selected: b.alloc_activations(logit_rows * SELECTED_FLOATS_PER_ROW)?,
            head_in: b.alloc_activations(logit_rows * c.n_embd)?,
            moe: match &c.moe {
                Some(moe) => Some(MoeScratch::alloc(b, moe, c.n_embd, n)?),
                None => None,
            },
            shared: match c.moe.and_then(|m| m.n_ff_shexp) {
                Some(_) => Some(SharedScratch::alloc(b, c.n_embd, n)?),
                None => None,
            },
        })
    }

    /// The layers this stage runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// The device's backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        self.backend.device_name()
    }

    /// Bytes of weights resident on the device.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The device holding experts of this stage's layers elsewhere, the layers whose experts
    /// it holds, and their bytes (`--cpu-moe`); `None` when every layer has its experts here.
    pub fn experts_elsewhere(&self) -> Option<(String, Range<usize>, u64)> {
        let held: Vec<(usize, &AnyExperts)> = self
            .experts
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| e.as_ref().map(|e| (self.layers.start + slot, e)))
            .collect();
        let (first, e) = held.first()?;
        let last = held.last().map_or(*first, |(il, _)| *il);
        let bytes = held.iter().map(|(_, e)| e.weight_bytes()).sum();
        Some((e.device_name().to_string(), *first..last + 1, bytes))
    }

    /// Where layer `il` is among this stage's layers.
    fn layer_slot(&self, il: usize) -> Result<usize, WeightError> {
        if self.layers.contains(&il) {
            Ok(il - self.layers.start)
        } else {
            Err(WeightError::Misplaced(format!(
                "layer {il} is not in the stage of layers {:?} on {}",
                self.layers,
                self.device_name()
            )))
        }
    }

    /// Host buffers for blocks whose experts are elsewhere, allocated when the first layer's
    /// experts leave and freed when the last come back.
    fn fit_host_ffn(&mut self) {
        if self.experts.iter().all(Option::is_none) {
            self.host_ffn = Vec::new();
        } else if self.host_ffn.is_empty() {
            self.host_ffn = vec![0.0; 2 * self.max_tokens * self.config.n_embd];
        }
    }

    /// Takes out the experts its layers hold on another device, by layer: a live re-split
    /// carries them, where they are, to the stage their layer goes to ([`Stage::put_experts`]).
    pub fn take_experts(&mut self) -> Vec<(usize, AnyExperts)> {
        let start = self.layers.start;
        let taken = self
            .experts
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, e)| e.take().map(|e| (start + slot, e)))
            .collect();
        self.fit_host_ffn();
        self.experts_moved();
        taken
    }

    /// Gives layer `il`, whose experts live on another device, the [`AnyExperts`] holding
    /// them.
    pub fn put_experts(&mut self, il: usize, experts: AnyExperts) -> Result<(), WeightError> {
        let slot = self.layer_slot(il)?;
        if !matches!(self.weights[slot].ffn, FeedForward::Elsewhere) || self.experts[slot].is_some()
        {
            return Err(WeightError::Misplaced(format!(
                "layer {il} on {} has its experts already",
                self.device_name()
            )));
        }
        self.experts[slot] = Some(experts);
        self.fit_host_ffn();
        self.experts_moved();
        Ok(())
    }

    /// Moves layer `il`'s experts off this device (`--n-cpu-moe` raised live): `load` copies
    /// them where they go, then this device's copy is freed. Returns the bytes copied.
    pub fn experts_out(&mut self, il: usize, load: &ExpertLoader<'_>) -> Result<u64, WeightError> {
        let slot = self.layer_slot(il)?;
        let FeedForward::Experts(own) = &self.weights[slot].ffn else {
            return Err(WeightError::Misplaced(format!(
                "layer {il} on {} holds no experts of its own",
                self.device_name()
            )));
        };
        let views = own.try_map(&mut |w| self.backend.weight_view(w))?;
        let moved = load(&views)?;
        drop(views);
        let freed: u64 = own.tensors().map(|w| self.backend.weight_bytes(w)).sum();
        self.weights[slot].ffn = FeedForward::Elsewhere;
        self.weight_bytes = self.weight_bytes.saturating_sub(freed);
        let bytes = moved.weight_bytes();
        self.experts[slot] = Some(moved);
        self.fit_host_ffn();
        self.experts_moved();
        Ok(bytes)
    }

    /// Brings layer `il`'s experts back onto this device from the one holding them
    /// (`--n-cpu-moe` lowered live), freeing them there. Returns the bytes copied.
    pub fn experts_home(&mut self, il: usize) -> Result<u64, WeightError> {
        let slot = self.layer_slot(il)?;
        let Some(elsewhere) = self.experts[slot].as_ref() else {
            return Err(WeightError::Misplaced(format!(
                "layer {il} on {} has no experts elsewhere",
                self.device_name()
            )));
        };
        let views = elsewhere.weight_views()?;
        let own = views.try_map(&mut |v| self.backend.import_weight(v))?;
        drop(views);
        let bytes: u64 = own.tensors().map(|w| self.backend.weight_bytes(w)).sum();
        self.weights[slot].ffn = FeedForward::Experts(own);
        self.weight_bytes += bytes;
        self.experts[slot] = None;
        self.fit_host_ffn();
        self.experts_moved();
        Ok(bytes)
    }

    /// Drops the stage's CUDA graphs after a layer's experts moved: a graph captured with
    /// experts on this device holds their addresses (in the routed kernels' expert tables), which
    /// a move frees, and one captured before they came back would not read the new ones.
    fn experts_moved(&mut self) {
        self.graphs.clear();
    }

    /// Turns CUDA graphs of decode steps on or off (on by default unless `LLMD_CUDA_GRAPHS=0`),
    /// dropping those held.
    pub fn set_graphs(&mut self, enabled: bool) {
        self.graphs = StepGraphs::new(enabled);
    }

    /// Turns the head's selection of candidates on the device on or off (on by default unless
    /// `LLMD_GPU_SELECT=0`); off, the head reads whole logits rows and picks on the host.
    pub fn set_device_select(&mut self, enabled: bool) {
        self.device_select = enabled;
    }

    /// What its CUDA graphs of decode steps have done so far, and how many it holds.
    pub fn graph_counts(&self) -> (GraphCounts, usize) {
        (self.graphs.counts(), self.graphs.held())
    }

    /// Bytes of KV cache resident on the device, over all sequences.
    pub fn kv_bytes(&self) -> u64 {
        self.kv
            .iter()
            .flat_map(HashMap::values)
            .map(|kv| self.backend.kv_bytes(kv))
            .sum()
    }

    /// Whether this stage holds the output head.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Looks `ids` up in the head's output weight into host memory `out`, where the device holds
    /// weights in host memory (see [`Backend::embed_host`]); `None` otherwise or without a head.
    pub fn embed_from_head(
        &self,
        ids: &[u32],
        scale: f32,
        out: &mut [f32],
    ) -> Option<Result<(), BackendError>> {
        let head = self.head.as_ref()?;
        self.backend.embed_host(&head.output, ids, scale, out)
    }

    /// A host copy of the head's output weight, in the file's layout; `None` without a head.
    pub fn head_output_host(&self) -> Option<Result<OwnedTensor, BackendError>> {
        let head = self.head.as_ref()?;
        Some(self.backend.weight_view(&head.output).and_then(|v| {
            Ok(OwnedTensor {
                name: v.name.to_string(),
                ty: v.ty,
                rows: v.rows,
                cols: v.cols,
                data: v.to_host()?,
            })
        }))
    }

    /// Allocates KV caches of `types` for `seq` with room for `capacity` positions.
    pub fn add_sequence(
        &mut self,
        seq: SeqId,
        capacity: usize,
        types: KvTypes,
    ) -> Result<(), BackendError> {
        let c = &self.config;
        let caches = self
            .kv
            .iter()
            .map(|_| {
                self.backend
                    .alloc_kv(capacity, c.n_head_kv, c.head_dim, types)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (layer, cache) in self.kv.iter_mut().zip(caches) {
            layer.insert(seq, cache);
        }
        self.graphs.clear();
        Ok(())
    }

    /// Allocates KV caches for `seq` with room for `capacity` positions holding the first `len`
    /// positions of `src`'s caches, copied on the device (one [`Backend::import_kv`] per layer:
    /// the bytes as they lie, whatever their type, so the copy is exact).
    pub fn fork_sequence(
        &mut self,
        src: SeqId,
        seq: SeqId,
        len: usize,
        capacity: usize,
    ) -> Result<(), BackendError> {
        let caches = self
            .kv
            .iter()
            .map(|layer| {
                let from = layer.get(&src).ok_or_else(|| BackendError::Shape {
                    op: "fork_sequence",
                    detail: format!("no KV cache for sequence {src}"),
                })?;
                let view = self.backend.kv_view(from, len)?;
                self.backend.import_kv(&view, capacity)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (layer, cache) in self.kv.iter_mut().zip(caches) {
            layer.insert(seq, cache);
        }
        self.graphs.clear();
        Ok(())
    }

    /// Bytes of `seq`'s KV caches on this stage's device.
    pub fn sequence_kv_bytes(&self, seq: SeqId) -> u64 {
        self.kv
            .iter()
            .filter_map(|layer| layer.get(&seq))
            .map(|kv| self.backend.kv_bytes(kv))
            .sum()
    }

    /// Frees the KV caches of `seq`.
    pub fn remove_sequence(&mut self, seq: SeqId) {
        for layer in &mut self.kv {
            layer.remove(&seq);
        }
        self.graphs.clear();
    }

    /// Runs this stage's layers over `batch`. `hidden` holds the residual stream in and out,
    /// `(batch.len(), n_embd)` on the host. On the last stage, the tokens with `batch.logits[t]`
    /// set get what `out.requests` asks for them (see [`Stage::head`]), in batch order.
    ///
    /// `handoff` lets the residual stream skip the host between stages on devices that can copy
    /// from each other: with `handoff.input` set, it is copied from the previous stage's device
    /// instead of from `hidden`; with `handoff.keep_output` (never on the last stage), it is left
    /// on this device in `handoff.output` and `hidden` is not written.
    pub fn forward(
        &mut self,
        batch: &Batch,
        hidden: &mut [f32],
        out: &mut HeadOutput,
        handoff: &mut Handoff,
    ) -> Result<(), ForwardError> {
        let n = batch.len();
        let c = Arc::clone(&self.config);
        let b = Arc::clone(&self.backend);
        if n == 0
            || n > self.max_tokens
            || hidden.len() != n * c.n_embd
            || batch.n_logits() > self.max_logit_rows
        {
            return Err(ForwardError::BadBatch(format!(
                "{n} tokens (at most {}), {} wanting logits (at most {}), hidden of {} values",
                self.max_tokens,
                batch.n_logits(),
                self.max_logit_rows,
                hidden.len()
            )));
        }
        let segments = batch.segments();
        for seg in &segments {
            if !self.kv.iter().all(|layer| layer.contains_key(&seg.seq)) {
                return Err(ForwardError::BadBatch(format!(
                    "sequence {} has no KV cache",
                    seg.seq
                )));
            }
        }
        let seg_rows = segment_rows(&segments)?;
        let d = c.n_embd;
        let s = &mut self.scratch;
        match handoff.input.take() {
            // The host copy is stale when the previous stage kept its output: it must be taken.
            Some(src) => {
                if src.len != n * d || !b.import_activations(&mut s.x, &src)? {
                    return Err(ForwardError::BadBatch(format!(
                        "cannot take {} values from {} on {} for {n} tokens",
                        src.len,
                        src.device,
                        b.device_name()
                    )));
                }
            }
            None => b.write_activations(&mut s.x, hidden)?,
        }

        // The layers: replayed from a CUDA graph of this step's shape where there is one (a
        // decode step on a device with graphs), else run op by op.
        match self.step_shape(batch, &segments) {
            Some(shape) => {
                b.stage_positions(&batch.positions)?;
                let mut graphs = std::mem::replace(&mut self.graphs, StepGraphs::new(false));
                let ran = graphs.run(&*b, shape, &mut || self.run_layers(batch, &seg_rows));
                self.graphs = graphs;
                ran?;
            }
            None => self.run_layers(batch, &seg_rows)?,
        }
        let s = &mut self.scratch;
        handoff.output = None;
        if handoff.keep_output && self.head.is_none() {
            handoff.output = b.export_activations(&s.x, n * d)?;
        }
        // The next stage takes the residual stream from the host unless it copies it from this
        // device; the last stage's stays here (its logits rows are picked on the device).
        if handoff.output.is_none() && self.head.is_none() {
            b.read_activations(&s.x, hidden)?;
        }

        // Output head: only the rows that want logits are picked (after those of the step's
        // earlier micro-batches), then normalised and projected unless the pipeline runs the
        // head once for the whole step.
        out.clear();
        if self.head.is_some() {
            let wanted: Vec<u32> = (0..n as u32)
                .filter(|&t| batch.logits[t as usize])
                .collect();
            let rows = handoff.head_row + wanted.len();
            if rows > self.max_logit_rows {
                return Err(ForwardError::BadBatch(format!(
                    "{rows} rows wanting logits in one step (at most {})",
                    self.max_logit_rows
                )));
            }
            if !wanted.is_empty() {
                b.gather_rows(&s.x, &wanted, d, handoff.head_row, &mut s.head_in)?;
            }
            if !handoff.defer_head {
                self.head(rows, out)?;
            }
        }
        Ok(())
    }

    /// The shape of `batch`'s step for a CUDA graph (see [`StepGraphs`]), or `None` when it is
    /// not one to capture: graphs off, more than [`MAX_GRAPH_ROWS`] rows, a sequence with more
    /// than one row (a prefill), or a layer whose feed-forward block crosses the host (experts
    /// on another device, or experts this batch does not route on the device).
    fn step_shape(&self, batch: &Batch, segments: &[Segment]) -> Option<StepShape> {
        let n = batch.len();
        let on_device = |ffn: &FeedForward<B::Weight>| match ffn {
            FeedForward::Dense { .. } => true,
            FeedForward::Experts(experts) => match (&self.config.moe, &self.scratch.moe) {
                (Some(moe), Some(ms)) => ms.on_device(&*self.backend, experts, moe, n),
                _ => false,
            },
            FeedForward::Elsewhere => false,
        };
        if !self.graphs.enabled()
            || n > MAX_GRAPH_ROWS
            || segments.iter().any(|seg| seg.rows.len() != 1)
            || !self.weights.iter().all(|w| on_device(&w.ffn))
        {
            return None;
        }
        let c = &self.config;
        let params = AttentionParams {
            n_heads: c.n_head,
            n_kv_heads: c.n_head_kv,
            head_dim: c.head_dim,
            scale: 1.0,
            window: None,
            softcap: None,
        };
        let max_context = batch.positions.iter().max().map_or(1, |&p| p as usize + 1);
        Some(StepShape {
            seqs: segments.iter().map(|seg| seg.seq).collect(),
            splits: self.backend.attention_splits(&params, n, max_context),
        })
    }

    /// This stage's layers over `batch` (its residual stream in `scratch.x`), op by op: what a
    /// CUDA graph of the step captures.
    fn run_layers(
        &mut self,
        batch: &Batch,
        seg_rows: &HashMap<SeqId, Range<usize>>,
    ) -> Result<(), ForwardError> {
        let n = batch.len();
        let c = Arc::clone(&self.config);
        let b = Arc::clone(&self.backend);
        let d = c.n_embd;
        let s = &mut self.scratch;
        for (slot, il) in self.layers.clone().enumerate() {
            let w = &self.weights[slot];
            let ff = c.n_ff[il];

            // Attention block: normalise, then project to q, k and v in one pass over the
            // normalised input.
            b.norm_matmuls(
                &s.x,
                &w.attn_norm,
                n,
                d,
                c.norm_eps,
                &mut s.cur,
                &[&w.wq, &w.wk, &w.wv],
                &mut [&mut s.q, &mut s.k, &mut s.v],
            )?;
            // Biases (Qwen 2), per-head norms of queries and keys (Qwen 3, Gemma 3), rotary
            // positions (with the model's frequency factors: Llama 3.1, Phi-3) and Gemma's query
            // scale; then each sequence's keys and values into its own cache.
            let scale = match c.query_scale {
                Some(_) => 1.0,
                None => 1.0 / (c.head_dim as f32).sqrt(),
            };
            let qkv = QkvParams {
                n_heads: c.n_head,
                n_kv_heads: c.n_head_kv,
                head_dim: c.head_dim,
                biases: match (&w.bq, &w.bk, &w.bv) {
                    (Some(bq), Some(bk), Some(bv)) => Some((bq, bk, bv)),
                    _ => None,
                },
                qk_norm: match (&w.q_norm, &w.k_norm) {
                    (Some(qn), Some(kn)) => Some((qn, kn)),
                    _ => None,
                },
                norm_eps: c.norm_eps,
                rope: c.rope[il],
                freq_factors: w.rope_factors.as_ref(),
                q_scale: c.query_scale,
            };
            let mut caches = layer_caches(&mut self.kv[slot], seg_rows)?;
            b.rope_store(
                &mut s.q,
                &mut s.k,
                &mut s.v,
                &batch.positions,
                &qkv,
                &mut caches,
            )?;
            // Each sequence attends over its own cache.
            let params = AttentionParams {
                n_heads: c.n_head,
                n_kv_heads: c.n_head_kv,
                head_dim: c.head_dim,
                scale,
                window: c.window[il],
                softcap: c.attn_softcap,
            };
            let read: Vec<_> = caches
                .iter()
                .map(|(kv, rows)| (&**kv, rows.clone()))
                .collect();
            b.attention_batch(&s.q, &read, &batch.positions, params, &mut s.attn)?;
            // Output projection, optional post-norm (Gemma), residual.
            let post_attn = w.post_attn_norm.as_ref().map(|pn| (pn, c.norm_eps));
            b.matmul_residual(&w.wo, &s.attn, n, d, post_attn, &mut s.out, &mut s.x)?;

            match &w.ffn {
                // Feed-forward block: normalise, gate and up in one pass, gated activation,
                // down projection, optional post-norm, residual.
                FeedForward::Dense { gate, up, down } => {
                    b.norm_matmuls(
                        &s.x,
                        &w.ffn_norm,
                        n,
                        d,
                        c.norm_eps,
                        &mut s.cur,
                        &[gate, up],
                        &mut [&mut s.gate, &mut s.up],
                    )?;
                    let post_ffn = w.post_ffn_norm.as_ref().map(|pn| (pn, c.norm_eps));
                    b.gated_matmul_residual(
                        &mut s.gate,
                        &s.up,
                        ff,
                        c.activation,
                        down,
                        n,
                        d,
                        post_ffn,
                        &mut s.out,
                        &mut s.x,
                    )?;
                }
                // Mixture of experts: normalise, route each token to its experts, each expert
                // over its rows, the weighted sum back into the residual (on the device where
                // the experts' output stayed there: no host round trip).
                FeedForward::Experts(experts) => {
                    let (Some(moe), Some(ms)) = (&c.moe, s.moe.as_mut()) else {
                        return Err(ForwardError::BadBatch(format!(
                            "layer {il} has experts but the model is not a mixture of experts"
                        )));
                    };
                    let routed = norm_moe_ffn(
                        &*b,
                        experts,
                        moe,
                        c.activation,
                        ms,
                        &s.x,
                        (&w.ffn_norm, c.norm_eps),
                        &mut s.cur,
                        n,
                        d,
                    )?;
                    match routed {
                        MoeOutput::Host => {
                            s.add_moe_output(&*b, &c, w, il, n, Routed::Scratch)?;
                        }
                        MoeOutput::Pairs => s.combine_moe_output(&*b, &c, w, experts, il, n)?,
                        // Only experts on another device leave their products unsummed there
                        // (`DeviceExperts::forward` sums them on the host).
                        MoeOutput::Device => {
                            return Err(ForwardError::BadBatch(format!(
                                "layer {il}: its experts' products were left unsummed"
                            )));
                        }
                    }
                }
                // Experts on another device: the normalised input crosses to it through the
                // host, the block's output comes back and joins the residual here.
                FeedForward::Elsewhere => {
                    let Some(experts) = self.experts[slot].as_mut() else {
                        return Err(ForwardError::BadBatch(format!(
                            "layer {il} lost its experts"
                        )));
                    };
                    b.rms_norm_into(&s.x, &w.ffn_norm, n, d, c.norm_eps, &mut s.cur)?;
                    let (input, output) = self.host_ffn.split_at_mut(n * d);
                    b.read_activations(&s.cur, input)?;
                    experts.forward(input, n, &mut output[..n * d])?;
                    s.add_moe_output(&*b, &c, w, il, n, Routed::Host(&mut output[..n * d]))?;
                }
            }
        }
        Ok(())
    }

    /// The output head over the first `m` rows gathered for it (see [`Handoff::defer_head`]):
    /// normalised, projected and (Gemma 2) soft-capped; row `i` gets what `out.request(i)` asks
    /// (see [`HeadOutput`]). Where every row asks a selection the device can make (and its
    /// selection is on), the device picks the candidates and only they are read back; else
    /// every row's logits are read (into `out.logits`) and the candidates picked from them on
    /// the host, the same ones. Either way into page-locked memory where the device offers it:
    /// one direct copy and one wait, where pageable memory costs the driver a staging copy and
    /// a second wait. Nothing is written for `m == 0` or on a stage without the head.
    pub fn head(&mut self, m: usize, out: &mut HeadOutput) -> Result<(), ForwardError> {
        let c = Arc::clone(&self.config);
        let b = Arc::clone(&self.backend);
        let d = c.n_embd;
        let n_vocab = c.n_vocab;
        out.begin(n_vocab);
        let Some(head) = &self.head else {
            return Ok(());
        };
        if m == 0 {
            return Ok(());
        }
        if m > self.max_logit_rows {
            return Err(ForwardError::BadBatch(format!(
                "{m} rows wanting logits (at most {})",
                self.max_logit_rows
            )));
        }
        let s = &mut self.scratch;
        b.norm_matmuls(
            &s.head_in,
            &head.output_norm,
            m,
            d,
            c.norm_eps,
            &mut s.cur,
            &[&head.output],
            &mut [&mut s.logits],
        )?;
        if let Some(cap) = c.final_softcap {
            b.softcap(&mut s.logits, cap, m * n_vocab)?;
        }
        let selections = (0..m)
            .map(|i| match out.request(i) {
                RowRequest::Select(sel) if sel.check(n_vocab).is_ok() => Some(sel),
                _ => None,
            })
            .collect::<Option<Vec<Selection>>>();
        match selections.filter(|_| self.device_select) {
            Some(sels) => self.select_on_device(m, &sels, out)?,
            None => self.read_logits(m, out)?,
        }
        Ok(())
    }

    /// The candidates `sels` (one per row, each checked against the vocabulary) ask of the
    /// first `m` logits rows, picked on the device: one [`Selection::Argmax`] pass over every
    /// row if any row asks it, one top-k pass with the largest k asked (a row's k best are the
    /// first k of those) if any row asks one, and one read-back of both.
    fn select_on_device(
        &mut self,
        m: usize,
        sels: &[Selection],
        out: &mut HeadOutput,
    ) -> Result<(), ForwardError> {
        let b = Arc::clone(&self.backend);
        let n_vocab = self.config.n_vocab;
        let s = &mut self.scratch;
        let greedy = sels.contains(&Selection::Argmax);
        let top_k = sels.iter().map(|sel| match sel {
            Selection::TopK(k) => *k,
            Selection::Argmax => 0,
        });
        let k_max = top_k.max().unwrap_or(0);
        // Candidates: m argmax ones (if any), then m rows of k_max top-k ones (if any).
        let top_at = if greedy { m } else { 0 };
        if greedy {
            b.select(&s.logits, m, n_vocab, Selection::Argmax, &mut s.selected, 0)?;
        }
        if k_max > 0 {
            let sel = Selection::TopK(k_max);
            b.select(&s.logits, m, n_vocab, sel, &mut s.selected, top_at)?;
        }
        let len = (top_at + m * k_max) * CANDIDATE_FLOATS;
        let pinned = pinned_logits(&*b, &mut self.logits_host, self.max_logit_rows * n_vocab)?
            .filter(|host| host.len() >= len);
        let raw: &[f32] = match pinned {
            Some(host) => {
                let values = &mut host.values()?[..len];
                b.read_activations(&s.selected, values)?;
                values
            }
            None => {
                self.selected_host.resize(len, 0.0);
                b.read_activations(&s.selected, &mut self.selected_host)?;
                &self.selected_host
            }
        };
        let picked = &mut self.picked;
        for (i, sel) in sels.iter().enumerate() {
            let (first, k) = match sel {
                Selection::Argmax => (i, 1),
                Selection::TopK(k) => (top_at + i * k_max, *k),
            };
            picked.clear();
            decode_candidates(
                &raw[first * CANDIDATE_FLOATS..(first + k) * CANDIDATE_FLOATS],
                picked,
            );
            out.push_row(picked.iter().copied());
        }
        Ok(())
    }

    /// The first `m` logits rows read whole into `out.logits`, and the candidates of the rows
    /// asking a selection picked from them on the host.
    fn read_logits(&mut self, m: usize, out: &mut HeadOutput) -> Result<(), ForwardError> {
        let b = Arc::clone(&self.backend);
        let n_vocab = self.config.n_vocab;
        let len = m * n_vocab;
        let logits = &mut out.logits;
        match pinned_logits(&*b, &mut self.logits_host, self.max_logit_rows * n_vocab)? {
            Some(host) => {
                let values = &mut host.values()?[..len];
                b.read_activations(&self.scratch.logits, values)?;
                logits.extend_from_slice(values);
            }
            None => {
                logits.resize(len, 0.0);
                b.read_activations(&self.scratch.logits, logits)?;
            }
        }
        for i in 0..m {
            self.picked.clear();
            if let RowRequest::Select(sel) = out.request(i) {
                sel.pick(
                    &out.logits[i * n_vocab..(i + 1) * n_vocab],
                    &mut self.picked,
                );
            }
            out.push_row(self.picked.iter().copied());
        }
        Ok(())
    }
}

/// Where a mixture-of-experts block's routed output lies, on the host.
enum Routed<'a> {
    /// In the stage's own [`MoeScratch::out`]: the experts ran on the layer's device.
    Scratch,
    /// In the caller's buffer: the experts ran on another device ([`AnyExperts`]).
    Host(&'a mut [f32]),
}

impl<B: Backend> Scratch<B> {
    /// Finishes layer `il`'s mixture-of-experts block over `n` rows: adds its shared expert
    /// (Qwen2-MoE), if it has one, into the routed experts' output `routed` (`n * n_embd` values
    /// on the host), which reads the block's normalised input in `cur`; then adds that sum into
    /// the residual stream `x`.
    fn add_moe_output(
        &mut self,
        b: &B,
        c: &ModelConfig,
        w: &LayerWeights<B::Weight>,
        il: usize,
        n: usize,
        routed: Routed<'_>,
    ) -> Result<(), ForwardError> {
        let d = c.n_embd;
        let routed = match routed {
            Routed::Host(routed) => routed,
            Routed::Scratch => match self.moe.as_mut() {
                Some(ms) => &mut ms.out[..n * d],
                None => {
                    return Err(ForwardError::BadBatch(format!(
                        "layer {il} has experts but the model is not a mixture of experts"
                    )))
                }
            },
        };
        if let Some(shared) = &w.shared_expert {
            let (Some(n_ff), Some(scratch)) =
                (c.moe.and_then(|m| m.n_ff_shexp), self.shared.as_mut())
            else {
                return Err(ForwardError::BadBatch(format!(
                    "layer {il} has a shared expert but the model has none"
                )));
            };
            let bufs = SharedBuffers {
                input: &self.cur,
                gate: &mut self.gate,
                up: &mut self.up,
                out: &mut self.out,
            };
            add_shared_expert(b, shared, n_ff, c.activation, scratch, bufs, n, d, routed)?;
        }
        b.write_activations(&mut self.out, routed)?;
        b.add(&mut self.x, &self.out, n * d)?;
        Ok(())
    }
}

impl<B: Backend> Scratch<B> {
    /// Finishes layer `il`'s mixture-of-experts block over `n` rows routed on the device
    /// ([`MoeOutput::Pairs`], the experts' down still to run): runs its shared expert
    /// (Qwen2-MoE), if it has one, over the block's normalised input in `cur`, then the experts'
    /// down with the weighted sum and the shared expert's scaled output into the residual
    /// stream `x` ([`finish_pairs`]).
    #[allow(clippy::too_many_arguments)]
    fn combine_moe_output(
        &mut self,
        b: &B,
        c: &ModelConfig,
        w: &LayerWeights<B::Weight>,
        experts: &ExpertWeights<B::Weight>,
        il: usize,
        n: usize,
    ) -> Result<(), ForwardError> {
        let (Some(moe), Some(ms)) = (c.moe, self.moe.as_mut()) else {
            return Err(ForwardError::BadBatch(format!(
                "layer {il} has experts but the model is not a mixture of experts"
            )));
        };
        let shared = match &w.shared_expert {
            None => None,
            Some(shared) => {
                let (Some(n_ff), Some(scratch)) = (moe.n_ff_shexp, self.shared.as_mut()) else {
                    return Err(ForwardError::BadBatch(format!(
                        "layer {il} has a shared expert but the model has none"
                    )));
                };
                let mut bufs = SharedBuffers {
                    input: &self.cur,
                    gate: &mut self.gate,
                    up: &mut self.up,
                    out: &mut self.out,
                };
                run_shared_mlp(b, shared, n_ff, c.activation, scratch, &mut bufs, n)?;
                Some((&self.out, scratch.gate_logit()))
            }
        };
        finish_pairs(
            b,
            experts,
            &moe,
            c.activation,
            ms,
            shared,
            &mut self.x,
            n,
            c.n_embd,
        )?;
        Ok(())
    }
}

/// Page-locked memory for a stage's logits, as far as its device offers it.
enum LogitsHost {
    /// Not asked for yet.
    Unasked,
    /// The device offers none (the CPU), or allocating it failed once: ordinary memory serves.
    Ordinary,
    /// The buffer.
    Pinned(Box<dyn HostStaging>),
}

/// The page-locked logits buffer of `len` values, allocated from `b` on first use; `None` when
/// ordinary memory serves.
fn pinned_logits<'h, B: Backend>(
    b: &B,
    host: &'h mut LogitsHost,
    len: usize,
) -> Result<Option<&'h mut Box<dyn HostStaging>>, BackendError> {
    if matches!(host, LogitsHost::Unasked) {
        *host = match b.alloc_host_staging(len) {
            Some(Ok(pinned)) => LogitsHost::Pinned(pinned),
            Some(Err(e)) => {
                tracing::warn!("page-locked memory for logits: {e}; using ordinary memory");
                LogitsHost::Ordinary
            }
            None => LogitsHost::Ordinary,
        };
    }
    Ok(match host {
        LogitsHost::Pinned(pinned) => Some(pinned),
        _ => None,
    })
}

/// The rows of each sequence of a batch (`segments` in order), refused when a sequence's tokens
/// are not contiguous (each sequence's cache takes one run of rows).
fn segment_rows(segments: &[Segment]) -> Result<HashMap<SeqId, Range<usize>>, ForwardError> {
    let mut rows = HashMap::with_capacity(segments.len());
    for seg in segments {
        if rows.insert(seg.seq, seg.rows.clone()).is_some() {
            return Err(ForwardError::BadBatch(format!(
                "the tokens of sequence {} are not contiguous",
                seg.seq
            )));
        }
    }
    Ok(rows)
}

/// One layer's caches of the batch's sequences, each with its rows.
fn layer_caches<'c, K>(
    layer: &'c mut HashMap<SeqId, K>,
    rows: &HashMap<SeqId, Range<usize>>,
) -> Result<Vec<(&'c mut K, Range<usize>)>, ForwardError> {
    let caches: Vec<_> = layer
        .iter_mut()
        .filter_map(|(seq, kv)| rows.get(seq).map(|r| (kv, r.clone())))
        .collect();
    if caches.len() != rows.len() {
        return Err(ForwardError::BadBatch(
            "a sequence of the batch lost its cache".into(),
        ));
    }
    Ok(caches)
}
