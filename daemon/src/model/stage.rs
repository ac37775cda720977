//! One pipeline stage: a contiguous range of layers on one device, with those layers' KV caches
//! for every live sequence, and (on the last stage) the output head. [`Stage::forward`] is the
//! transformer forward pass for that range, read top to bottom.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use llmd_kernels::backend::{AttentionParams, Backend, BackendError, DeviceActivations, KvTypes};

use super::batch::{Batch, SeqId};
use super::config::ModelConfig;
use super::parts::{DevicePart, PartWeights, Slot};
use super::weights::{HeadWeights, LayerWeights, TensorSource, WeightError};

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
    /// Logits: `(max_tokens, n_vocab)` on the last stage, else empty.
    logits: B::Activations,
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
    /// Host copy of the hidden state rows that want logits (reused).
    picked: Vec<f32>,
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
    /// `loaded()` is called after each layer and after the head, for progress reports.
    #[allow(clippy::too_many_arguments)]
    pub fn load<S: TensorSource + ?Sized>(
        backend: Arc<B>,
        config: Arc<ModelConfig>,
        source: &S,
        layers: Range<usize>,
        with_head: bool,
        max_tokens: usize,
        max_logit_rows: usize,
        loaded: &mut dyn FnMut(),
    ) -> Result<Self, WeightError> {
        let slots = layers.clone().map(Slot::Layer);
        let mut parts = Vec::with_capacity(layers.len() + 1);
        for slot in slots.chain(with_head.then_some(Slot::Head)) {
            let weights = PartWeights::from_source(source, &config, slot)?;
            parts.push(DevicePart::import(&backend, &weights, &[])?);
            loaded();
        }
        let scratch =
            Self::alloc_scratch(&*backend, &config, max_tokens, with_head, max_logit_rows)?;
        Self::from_parts(
            backend,
            config,
            layers,
            parts,
            scratch,
            max_tokens,
            max_logit_rows,
        )
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
        Ok(())
    }

    /// Frees the KV caches of `seq`.
    pub fn remove_sequence(&mut self, seq: SeqId) {
        for layer in &mut self.kv {
            layer.remove(&seq);
        }
    }

    /// Runs this stage's layers over `batch`. `hidden` holds the residual stream in and out,
    /// `(batch.len(), n_embd)` on the host. On the last stage, the logits of the tokens with
    /// `batch.logits[t]` set are written to `logits` in batch order, `n_vocab` each.
    ///
    /// `handoff` lets the residual stream skip the host between stages on devices that can copy
    /// from each other: with `handoff.input` set, it is copied from the previous stage's device
    /// instead of from `hidden`; with `handoff.keep_output` (never on the last stage), it is left
    /// on this device in `handoff.output` and `hidden` is not written.
    pub fn forward(
        &mut self,
        batch: &Batch,
        hidden: &mut [f32],
        logits: &mut Vec<f32>,
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
        let (d, qw) = (c.n_embd, c.q_width());
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

        for (slot, il) in self.layers.clone().enumerate() {
            let w = &self.weights[slot];
            let ff = c.n_ff[il];
            let rope = c.rope[il];

            // Attention block: normalise, project to q/k/v, add biases.
            b.rms_norm_into(&s.x, &w.attn_norm, n, d, c.norm_eps, &mut s.cur)?;
            b.matmul(&w.wq, &s.cur, n, &mut s.q)?;
            b.matmul(&w.wk, &s.cur, n, &mut s.k)?;
            b.matmul(&w.wv, &s.cur, n, &mut s.v)?;
            if let (Some(bq), Some(bk), Some(bv)) = (&w.bq, &w.bk, &w.bv) {
                b.add_bias(&mut s.q, bq, n)?;
                b.add_bias(&mut s.k, bk, n)?;
                b.add_bias(&mut s.v, bv, n)?;
            }
            // Per-head norm of queries and keys (Qwen 3, Gemma 3), then rotary positions (with
            // the model's frequency factors: Llama 3.1, Phi-3).
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                b.rms_norm(&mut s.q, qn, n * c.n_head, c.head_dim, c.norm_eps)?;
                b.rms_norm(&mut s.k, kn, n * c.n_head_kv, c.head_dim, c.norm_eps)?;
            }
            let factors = w.rope_factors.as_ref();
            b.rope(
                &mut s.q,
                n,
                c.n_head,
                c.head_dim,
                &batch.positions,
                rope,
                factors,
            )?;
            b.rope(
                &mut s.k,
                n,
                c.n_head_kv,
                c.head_dim,
                &batch.positions,
                rope,
                factors,
            )?;
            let scale = match c.query_scale {
                Some(qs) => {
                    b.scale(&mut s.q, qs, n * qw)?;
                    1.0
                }
                None => 1.0 / (c.head_dim as f32).sqrt(),
            };
            // Each sequence stores its keys/values and attends over its own cache.
            let params = AttentionParams {
                n_heads: c.n_head,
                n_kv_heads: c.n_head_kv,
                head_dim: c.head_dim,
                scale,
                window: c.window[il],
                softcap: c.attn_softcap,
            };
            for seg in &segments {
                let kv = self
                    .kv
                    .get_mut(slot)
                    .and_then(|layer| layer.get_mut(&seg.seq))
                    .ok_or_else(|| {
                        ForwardError::BadBatch(format!("sequence {} lost its cache", seg.seq))
                    })?;
                let positions = &batch.positions[seg.rows.clone()];
                b.kv_store(kv, &s.k, &s.v, seg.rows.start, positions)?;
                b.attention(&s.q, kv, seg.rows.start, positions, params, &mut s.attn)?;
            }
            // Output projection, optional post-norm, residual.
            b.matmul(&w.wo, &s.attn, n, &mut s.out)?;
            if let Some(pn) = &w.post_attn_norm {
                b.rms_norm(&mut s.out, pn, n, d, c.norm_eps)?;
            }
            b.add(&mut s.x, &s.out, n * d)?;

            // Feed-forward block: normalise, gated activation, down projection, residual.
            b.rms_norm_into(&s.x, &w.ffn_norm, n, d, c.norm_eps, &mut s.cur)?;
            b.matmul(&w.gate, &s.cur, n, &mut s.gate)?;
            b.matmul(&w.up, &s.cur, n, &mut s.up)?;
            b.gated_activation(&mut s.gate, &s.up, n * ff, c.activation)?;
            b.matmul(&w.down, &s.gate, n, &mut s.out)?;
            if let Some(pn) = &w.post_ffn_norm {
                b.rms_norm(&mut s.out, pn, n, d, c.norm_eps)?;
            }
            b.add(&mut s.x, &s.out, n * d)?;
        }
        handoff.output = None;
        if handoff.keep_output && self.head.is_none() {
            handoff.output = b.export_activations(&s.x, n * d)?;
        }
        if handoff.output.is_none() {
            b.read_activations(&s.x, hidden)?;
        }

        // Output head: only the rows that want logits are normalised, projected and (Gemma 2)
        // soft-capped.
        logits.clear();
        if let Some(head) = &self.head {
            let wanted: Vec<usize> = (0..n).filter(|&t| batch.logits[t]).collect();
            if wanted.is_empty() {
                return Ok(());
            }
            self.picked.clear();
            for &t in &wanted {
                self.picked.extend_from_slice(&hidden[t * d..(t + 1) * d]);
            }
            let m = wanted.len();
            b.write_activations(&mut s.cur, &self.picked)?;
            b.rms_norm(&mut s.cur, &head.output_norm, m, d, c.norm_eps)?;
            b.matmul(&head.output, &s.cur, m, &mut s.logits)?;
            if let Some(cap) = c.final_softcap {
                b.softcap(&mut s.logits, cap, m * c.n_vocab)?;
            }
            logits.resize(m * c.n_vocab, 0.0);
            b.read_activations(&s.logits, logits)?;
        }
        Ok(())
    }
}
