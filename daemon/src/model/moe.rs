//! The mixture-of-experts feed-forward block of one layer (Mixtral, Qwen3-MoE), as llama.cpp's
//! `build_moe_ffn` computes it: router logits, softmax, the top `k` experts per token with their
//! probabilities (normalised to sum 1), each chosen expert's gated MLP, and the weighted sum of
//! the `k` results in slot order.
//!
//! The experts run batched, with buffers allocated once. Where the backend has a routed kernel
//! for the batch ([`Backend::routes`]: the GPU, for decode-sized batches of block-quantized
//! experts), everything stays on the device ([`MoeOutput::Device`]): the routing
//! ([`Backend::route_experts`]) leaves each token's expert ids and weights in device buffers,
//! every (token, expert) pair's gate and up run in one routed matmul
//! ([`Backend::matmul_id_pair`], ggml's `mul_mat_id`, reading those ids), its activation and
//! down in another ([`Backend::gated_matmul_id`]), and the caller adds the
//! weighted sum to the residual where it lies ([`Backend::moe_combine`]), so a decode step needs
//! no host round trip and can be captured in a CUDA graph. Otherwise ([`MoeOutput::Host`]: the
//! CPU, prefill-sized batches) the logits are read and routed on the host, the tokens grouped by
//! expert ([`llmd_kernels::moe::ExpertGroups`]) and each expert multiplies all of its rows in
//! one matmul of the backend's kernels (so prefill never goes token by token), its results read
//! per expert and summed on the host. Either way every row's dot products are the ones ggml's
//! `mul_mat_id` computes, and the routing and the sums are the same arithmetic. Experts on
//! another device than the layer's attention ([`DeviceExperts`]) take their input from host
//! memory and hand their output back there ([`finish_on_host`]).

use std::sync::{Arc, Mutex, PoisonError};

use llmd_kernels::backend::{
    Backend, BackendError, GatedActivation, Lease, RouteBuffers, RouteWeights, WeightView,
};
use llmd_kernels::moe::{weighted_sum, ExpertGroups};

use super::backend::AnyExperts;
use super::config::{ModelConfig, MoeConfig};
use super::weights::{ExpertWeights, WeightError};

/// Buffers of the mixture-of-experts block for batches of up to `max_tokens` tokens, on the
/// experts' device and on the host.
pub struct MoeScratch<B: Backend> {
    /// Normalised input when it comes from another device: `(max_tokens, n_embd)`.
    pub input: B::Activations,
    /// Router logits: `(max_tokens, n_expert)`.
    logits: B::Activations,
    /// The rows routed to one expert: `(max_tokens, n_embd)`.
    rows: B::Activations,
    /// Expert gate: `(max_tokens, n_ff_exp)`.
    gate: B::Activations,
    /// Expert up: `(max_tokens, n_ff_exp)`.
    up: B::Activations,
    /// Expert output: `(max_tokens, n_embd)`.
    pub down: B::Activations,
    /// Chosen experts on the device, as exact f32 values: `(max_tokens, k)`.
    route_ids: B::Activations,
    /// Their weights on the device: `(max_tokens, k)`.
    pub route_weights: B::Activations,
    /// Router probabilities on the host: `(max_tokens, n_expert)`.
    host_logits: Vec<f32>,
    /// Chosen experts: `(max_tokens, k)`.
    ids: Vec<u32>,
    /// Their weights: `(max_tokens, k)`.
    weights: Vec<f32>,
    /// The batch's rows grouped by expert.
    groups: ExpertGroups,
    /// One expert's output on the host: `(max_tokens, n_embd)`.
    host_down: Vec<f32>,
    /// Each token's weighted expert outputs by slot: `(max_tokens, k, n_embd)`, summed in slot
    /// order as llama.cpp adds them.
    slots: Vec<f32>,
    /// The block's output on the host: `(max_tokens, n_embd)`.
    pub out: Vec<f32>,
    /// Tokens per call at most.
    max_tokens: usize,
    /// The buffers' bytes charged to the ledger of the device whose memory they are (a CPU
    /// device: all of them are host memory; `None` on a GPU, whose ledger counts weights and
    /// caches only), returned when the buffers are freed.
    _lease: Option<Lease>,
}

impl<B: Backend> MoeScratch<B> {
    /// Buffers for batches of up to `max_tokens` tokens of width `n_embd`.
    pub fn alloc(
        b: &B,
        moe: &MoeConfig,
        n_embd: usize,
        max_tokens: usize,
    ) -> Result<Self, BackendError> {
        let (n, d) = (max_tokens, n_embd);
        let (e, k, ff) = (moe.routing.n_expert, moe.routing.n_used, moe.n_ff_exp);
        let lease = b.charge_host_buffers(
            "mixture-of-experts buffers",
            scratch_bytes(moe, n_embd, max_tokens),
        )?;
        Ok(MoeScratch {
            _lease: lease,
            input: b.alloc_activations(n * d)?,
            logits: b.alloc_activations(n * e)?,
            rows: b.alloc_activations(n * d)?,
            gate: b.alloc_activations(n * ff)?,
            up: b.alloc_activations(n * ff)?,
            down: b.alloc_activations(n * d)?,
            route_ids: b.alloc_activations(n * k)?,
            route_weights: b.alloc_activations(n * k)?,
            host_logits: vec![0.0; n * e],
            ids: vec![0; n * k],
            weights: vec![0.0; n * k],
            groups: ExpertGroups::default(),
            host_down: vec![0.0; n * d],
            slots: vec![0.0; n * k * d],
            out: vec![0.0; n * d],
            max_tokens,
        })
    }

    /// Whether [`moe_ffn`] keeps a batch of `n` tokens through the experts `w` on the device
    /// ([`MoeOutput::Device`]: a step that can be captured in a CUDA graph): the backend routes
    /// each of gate, up and down for `n` tokens, the batch's pairs fit the buffers and the
    /// routing's counts are within the device's limits.
    pub fn on_device(
        &self,
        b: &B,
        w: &ExpertWeights<B::Weight>,
        moe: &MoeConfig,
        n: usize,
    ) -> bool {
        n * moe.routing.n_used <= self.max_tokens
            && moe.routing.check_device().is_ok()
            && [&w.gate, &w.up, &w.down]
                .into_iter()
                .all(|experts| experts.first().is_some_and(|first| b.routes(first, n)))
    }
}

/// f32 values of device activations [`MoeScratch`] takes for `moe`.
pub fn scratch_floats(moe: &MoeConfig, n_embd: usize, max_tokens: usize) -> usize {
    max_tokens * (3 * n_embd + moe.routing.n_expert + 2 * moe.n_ff_exp + 2 * moe.routing.n_used)
}

/// Bytes of the host buffers [`MoeScratch`] keeps beside its device activations: router
/// probabilities, chosen experts and their weights, one expert's output, the weighted slots
/// and the block's output.
pub fn host_scratch_bytes(moe: &MoeConfig, n_embd: usize, max_tokens: usize) -> u64 {
    let (n, d) = (max_tokens as u64, n_embd as u64);
    let (e, k) = (moe.routing.n_expert as u64, moe.routing.n_used as u64);
    4 * n * (e + 2 * k + d + k * d + d)
}

/// Bytes of every buffer of [`MoeScratch`] for `moe`: what a CPU device's ledger is charged
/// for it and what a planner counts.
pub fn scratch_bytes(moe: &MoeConfig, n_embd: usize, max_tokens: usize) -> u64 {
    4 * scratch_floats(moe, n_embd, max_tokens) as u64 + host_scratch_bytes(moe, n_embd, max_tokens)
}

/// Which buffer holds the block's normalised input.
pub enum MoeInput<'a, B: Backend> {
    /// A buffer of the experts' device (the layer runs there).
    Device(&'a B::Activations),
    /// [`MoeScratch::input`], written by the caller from another device.
    Scratch,
}

/// Where [`moe_ffn`] left the block's routed output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeOutput {
    /// Summed on the host, in [`MoeScratch::out`].
    Host,
    /// On the device, not yet summed: each pair's expert output in [`MoeScratch::down`]
    /// (`n * k` rows), its weight in [`MoeScratch::route_weights`], for [`finish_on_host`]
    /// (experts on another device than their layer's; [`norm_moe_ffn`] never leaves it).
    Device,
    /// On the device, routed, each pair's gate and up in the scratch but not yet its down
    /// ([`norm_moe_ffn`]'s device path): [`finish_pairs`] runs the down and adds the weighted
    /// sum into the residual in one step.
    Pairs,
}

/// Runs the block over `n` rows of width `d` of the residual stream `x` on the layer's device,
/// its norm (`norm`, `eps`) first, writing the normalised rows into `normed` (which the shared
/// expert reads after) and leaving its output where [`MoeOutput`] says. On the device path the
/// norm, the router, the routing and gate and up run as one fused step
/// ([`Backend::norm_route_pair`]: on the GPU, the normalised rows quantized once for all three
/// products), leaving [`MoeOutput::Pairs`] for [`finish_pairs`]; elsewhere as [`moe_ffn`] of the
/// normalised rows.
#[allow(clippy::too_many_arguments)]
pub fn norm_moe_ffn<B: Backend>(
    b: &B,
    w: &ExpertWeights<B::Weight>,
    moe: &MoeConfig,
    act: GatedActivation,
    s: &mut MoeScratch<B>,
    x: &B::Activations,
    (norm, eps): (&B::Weight, f32),
    normed: &mut B::Activations,
    n: usize,
    d: usize,
) -> Result<MoeOutput, BackendError> {
    if !s.on_device(b, w, moe, n) {
        b.rms_norm_into(x, norm, n, d, eps, normed)?;
        return moe_ffn(b, w, moe, act, s, MoeInput::Device(normed), n, d);
    }
    let weights = RouteWeights {
        norm,
        router: &w.router,
        gate: &w.gate,
        up: &w.up,
    };
    let bufs = RouteBuffers {
        normed,
        logits: &mut s.logits,
        ids: &mut s.route_ids,
        weights: &mut s.route_weights,
        gate: &mut s.gate,
        up: &mut s.up,
    };
    b.norm_route_pair(x, weights, &moe.routing, n, d, eps, bufs)?;
    Ok(MoeOutput::Pairs)
}

/// Finishes a [`MoeOutput::Pairs`] block over `n` rows of width `d` into the residual stream
/// `x`: every pair's activation and down, weighted and summed with the shared expert's scaled
/// output (`shared`: its output and gate logit per token, where the layer has one) into `x`
/// ([`Backend::gated_matmul_id_combine`]: on the GPU, one routed launch after the activation,
/// the pairs' products never written).
#[allow(clippy::too_many_arguments)]
pub fn finish_pairs<B: Backend>(
    b: &B,
    w: &ExpertWeights<B::Weight>,
    moe: &MoeConfig,
    act: GatedActivation,
    s: &mut MoeScratch<B>,
    shared: Option<(&B::Activations, &B::Activations)>,
    x: &mut B::Activations,
    n: usize,
    d: usize,
) -> Result<(), BackendError> {
    let (k, ff) = (moe.routing.n_used, moe.n_ff_exp);
    b.gated_matmul_id_combine(
        &mut s.gate,
        &s.up,
        ff,
        act,
        &w.down,
        n,
        k,
        &s.route_ids,
        &s.route_weights,
        d,
        shared,
        &mut s.down,
        x,
    )
}

/// Runs the block over `n` rows of width `d`, leaving its output where [`MoeOutput`] says.
#[allow(clippy::too_many_arguments)]
pub fn moe_ffn<B: Backend>(
    b: &B,
    w: &ExpertWeights<B::Weight>,
    moe: &MoeConfig,
    act: GatedActivation,
    s: &mut MoeScratch<B>,
    input: MoeInput<'_, B>,
    n: usize,
    d: usize,
) -> Result<MoeOutput, BackendError> {
    let (e, k, ff) = (moe.routing.n_expert, moe.routing.n_used, moe.n_ff_exp);
    let shape = |detail: String| BackendError::Shape {
        op: "moe_ffn",
        detail,
    };
    if n > s.max_tokens || w.gate.len() != e || w.up.len() != e || w.down.len() != e {
        return Err(shape(format!(
            "{n} tokens (at most {}), {}/{}/{} experts of {e}",
            s.max_tokens,
            w.gate.len(),
            w.up.len(),
            w.down.len()
        )));
    }
    let x = match input {
        MoeInput::Device(x) => x,
        MoeInput::Scratch => &s.input,
    };
    b.matmul(&w.router, x, n, &mut s.logits)?;
    // Decode-sized batches where the backend has the routed kernel: the routing on the device,
    // gate and up of every (token, expert) pair in one launch, the activation and down in
    // another (on the GPU).
    if s.on_device(b, w, moe, n) {
        let ids = &mut s.route_ids;
        b.route_experts(&moe.routing, &mut s.logits, n, ids, &mut s.route_weights)?;
        b.matmul_id_pair(&w.gate, &w.up, x, n, k, ids, &mut s.gate, &mut s.up)?;
        b.gated_matmul_id(&mut s.gate, &s.up, ff, act, &w.down, n, k, ids, &mut s.down)?;
        return Ok(MoeOutput::Device);
    }
    // Otherwise on the host: the softmax, top-k and weights, then the experts by group.
    b.read_activations(&s.logits, &mut s.host_logits[..n * e])?;
    let (ids, weights) = (&mut s.ids[..n * k], &mut s.weights[..n * k]);
    let routing_error = |err: llmd_kernels::moe::RoutingError| shape(err.to_string());
    moe.routing
        .route(&mut s.host_logits, n, ids, weights)
        .map_err(routing_error)?;
    s.groups.group(ids, e, k).map_err(routing_error)?;
    // Each expert with tokens: its rows gathered, gate and up in one pass, the gated
    // activation, down; each result row weighted into its token's slot.
    for ex in 0..e {
        let (tokens, slots) = s.groups.expert(ex);
        let m = tokens.len();
        if m == 0 {
            continue;
        }
        b.gather_rows(x, tokens, d, 0, &mut s.rows)?;
        b.matmuls(
            &[&w.gate[ex], &w.up[ex]],
            &s.rows,
            m,
            &mut [&mut s.gate, &mut s.up],
        )?;
        b.gated_activation(&mut s.gate, &s.up, m * ff, act)?;
        b.matmul(&w.down[ex], &s.gate, m, &mut s.down)?;
        b.read_activations(&s.down, &mut s.host_down[..m * d])?;
        for (row, &slot) in s.host_down.chunks_exact(d).zip(slots) {
            let slot = slot as usize;
            let wgt = s.weights[slot];
            for (o, &v) in s.slots[slot * d..(slot + 1) * d].iter_mut().zip(row) {
                *o = v * wgt;
            }
        }
    }
    // The k weighted results of each token added in slot order.
    for t in 0..n {
        let out = &mut s.out[t * d..(t + 1) * d];
        out.copy_from_slice(&s.slots[t * k * d..(t * k + 1) * d]);
        for j in 1..k {
            let slot = &s.slots[(t * k + j) * d..(t * k + j + 1) * d];
            for (o, &v) in out.iter_mut().zip(slot) {
                *o += v;
            }
        }
    }
    Ok(MoeOutput::Host)
}

/// Sums a [`MoeOutput::Device`] result on the host into `s.out[..n * d]`, as
/// [`Backend::moe_combine`] sums it on the device: the output of experts whose block hands its
/// result to another device.
pub fn finish_on_host<B: Backend>(
    b: &B,
    s: &mut MoeScratch<B>,
    k: usize,
    n: usize,
    d: usize,
) -> Result<(), BackendError> {
    let pairs = n * k;
    if pairs > s.max_tokens {
        return Err(BackendError::Shape {
            op: "moe_ffn",
            detail: format!("{pairs} expert pairs (at most {})", s.max_tokens),
        });
    }
    b.read_activations(&s.down, &mut s.slots[..pairs * d])?;
    b.read_activations(&s.route_weights, &mut s.weights[..pairs])?;
    weighted_sum(&s.slots, &s.weights, n, k, d, &mut s.out).map_err(|e| BackendError::Shape {
        op: "moe_ffn",
        detail: e.to_string(),
    })
}

/// A layer's experts resident on a device other than the layer's, of backend type `E`
/// (llama.cpp's `--cpu-moe`: the experts in host memory, attention on a GPU; [`AnyExperts`]
/// holds either type). The block's normalised input crosses to that device through host memory
/// and its output comes back the same way, like a stage boundary.
pub struct DeviceExperts<E: Backend> {
    /// The experts' device.
    backend: Arc<E>,
    /// The router and experts, resident on `backend`.
    weights: ExpertWeights<E::Weight>,
    /// Expert counts and routing.
    moe: MoeConfig,
    /// The experts' gated activation.
    act: GatedActivation,
    /// Width of the residual stream.
    n_embd: usize,
    /// The block's buffers on `backend` and the host, shared by every layer's experts on that
    /// device (layers run one at a time), so they are allocated once, not once per layer.
    scratch: Arc<Mutex<MoeScratch<E>>>,
    /// Bytes of `weights`.
    weight_bytes: u64,
}

impl<E: Backend> DeviceExperts<E> {
    /// Copies `weights` (one layer's experts, in the file or on another device) to `backend`,
    /// computing in `scratch` (the device's shared buffers; allocated here for batches of up to
    /// `max_tokens` tokens when `None`).
    pub fn load(
        backend: Arc<E>,
        config: &ModelConfig,
        weights: &ExpertWeights<WeightView<'_>>,
        scratch: &mut Option<Arc<Mutex<MoeScratch<E>>>>,
        max_tokens: usize,
    ) -> Result<Self, WeightError> {
        let moe = config
            .moe
            .ok_or_else(|| WeightError::Misplaced("experts of a model that has none".into()))?;
        let weights = weights.try_map(&mut |t| backend.import_weight(t))?;
        let weight_bytes = weights.tensors().map(|w| backend.weight_bytes(w)).sum();
        let scratch = match scratch {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(Mutex::new(MoeScratch::alloc(
                    &*backend,
                    &moe,
                    config.n_embd,
                    max_tokens,
                )?));
                *scratch = Some(Arc::clone(&s));
                s
            }
        };
        Ok(DeviceExperts {
            backend,
            weights,
            moe,
            act: config.activation,
            n_embd: config.n_embd,
            scratch,
            weight_bytes,
        })
    }

    /// The experts' device.
    pub fn device_name(&self) -> &str {
        self.backend.device_name()
    }

    /// Bytes of weights resident there.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The router and experts as another device copies them (a live re-split bringing them
    /// back to their layer's device).
    pub fn weight_views(&self) -> Result<ExpertWeights<WeightView<'_>>, BackendError> {
        self.weights.try_map(&mut |w| self.backend.weight_view(w))
    }

    /// Runs the block over the `n` rows of `input` (`n * n_embd` values on the host) into as
    /// many values of `output`.
    pub fn forward(
        &mut self,
        input: &[f32],
        n: usize,
        output: &mut [f32],
    ) -> Result<(), BackendError> {
        let d = self.n_embd;
        if input.len() != n * d || output.len() < n * d {
            return Err(BackendError::Shape {
                op: "experts",
                detail: format!(
                    "{} values in and {} out for {n} rows of {d}",
                    input.len(),
                    output.len()
                ),
            });
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &mut *scratch;
        self.backend.write_activations(&mut s.input, input)?;
        let routed = moe_ffn(
            &*self.backend,
            &self.weights,
            &self.moe,
            self.act,
            s,
            MoeInput::Scratch,
            n,
            d,
        )?;
        if routed == MoeOutput::Device {
            finish_on_host(&*self.backend, s, self.moe.routing.n_used, n, d)?;
        }
        output[..n * d].copy_from_slice(&s.out[..n * d]);
        Ok(())
    }
}

/// Uploads one layer's router and experts (in the file or on another device) onto the experts'
/// device.
pub type ExpertLoader<'a> =
    dyn Fn(&ExpertWeights<WeightView<'_>>) -> Result<AnyExperts, WeightError> + 'a;

/// The layers whose experts a stage loads onto another device, and how.
pub struct ExpertsElsewhere<'a> {
    /// The layers (global indices) whose experts move.
    pub layers: std::ops::Range<usize>,
    /// Loads one layer's experts (as found in the file) onto their device.
    pub load: &'a ExpertLoader<'a>,
}
