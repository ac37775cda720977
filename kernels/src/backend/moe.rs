//! The mixture-of-experts ops of [`Backend`] as the trait provides them: the routing
//! ([`Backend::route_experts`]) and the weighted sum of the experts' outputs into the residual
//! stream ([`Backend::moe_combine`]) as host arithmetic, each reading its inputs from the device
//! and writing its results back; the fused routed products ([`Backend::matmul_id_pair`],
//! [`Backend::gated_matmul_id`], [`Backend::norm_route_pair`]: the block's norm, router,
//! routing, gate and up, and [`Backend::gated_matmul_id_combine`]: its down and weighted sum)
//! as the single ops they stand for. The trait's provided methods
//! call these (the CPU backend runs them as they are); the CUDA backend overrides them with
//! kernels (`kernels/cuda/moe.cu`, `mmvq.cu`) computing the same values in fewer launches, so
//! that a decode step's experts need no host round trip there.

use super::{shape, Backend, BackendError, GatedActivation};
use crate::moe::{shared_expert_scale, weighted_sum, Routing};

/// [`Backend::route_experts`] on the host.
pub(crate) fn route_experts<B: Backend + ?Sized>(
    b: &B,
    routing: &Routing,
    logits: &mut B::Activations,
    n_tokens: usize,
    ids: &mut B::Activations,
    weights: &mut B::Activations,
) -> Result<(), BackendError> {
    const OP: &str = "route_experts";
    let routing_error = |e: crate::moe::RoutingError| shape(OP, e.to_string());
    routing.check_device().map_err(routing_error)?;
    let (e, k) = (routing.n_expert, routing.n_used);
    let mut probs = vec![0.0; n_tokens * e];
    b.read_activations(logits, &mut probs)?;
    let (mut chosen, mut w) = (vec![0u32; n_tokens * k], vec![0.0; n_tokens * k]);
    routing
        .route(&mut probs, n_tokens, &mut chosen, &mut w)
        .map_err(routing_error)?;
    let chosen: Vec<f32> = chosen.iter().map(|&id| id as f32).collect();
    b.write_activations(logits, &probs)?;
    b.write_activations(ids, &chosen)?;
    b.write_activations(weights, &w)
}

/// [`Backend::moe_combine`] on the host.
#[allow(clippy::too_many_arguments)]
pub(crate) fn moe_combine<B: Backend + ?Sized>(
    b: &B,
    down: &B::Activations,
    weights: &B::Activations,
    n_tokens: usize,
    n_used: usize,
    width: usize,
    shared: Option<(&B::Activations, &B::Activations)>,
    x: &mut B::Activations,
) -> Result<(), BackendError> {
    let (pairs, len) = (n_tokens * n_used, n_tokens * width);
    let mut rows = vec![0.0; pairs * width];
    let mut w = vec![0.0; pairs];
    b.read_activations(down, &mut rows)?;
    b.read_activations(weights, &mut w)?;
    let mut out = vec![0.0; len];
    weighted_sum(&rows, &w, n_tokens, n_used, width, &mut out)
        .map_err(|e| shape("moe_combine", e.to_string()))?;
    if let Some((mlp, gate)) = shared {
        let (mut m, mut g) = (vec![0.0; len], vec![0.0; n_tokens]);
        b.read_activations(mlp, &mut m)?;
        b.read_activations(gate, &mut g)?;
        for ((out, m), &g) in out
            .chunks_exact_mut(width)
            .zip(m.chunks_exact(width))
            .zip(&g)
        {
            let scale = shared_expert_scale(g);
            for (o, &v) in out.iter_mut().zip(m) {
                *o += v * scale;
            }
        }
    }
    let mut residual = vec![0.0; len];
    b.read_activations(x, &mut residual)?;
    for (r, &o) in residual.iter_mut().zip(&out) {
        *r += o;
    }
    b.write_activations(x, &residual)
}

/// The weights [`Backend::norm_route_pair`] reads: the first half of a routed
/// mixture-of-experts block.
pub struct RouteWeights<'a, W> {
    /// The feed-forward norm's weight (`ffn_norm`), applied to the residual first.
    pub norm: &'a W,
    /// The router (`ffn_gate_inp`), whose logits choose each token's experts.
    pub router: &'a W,
    /// The experts' gate projections (`ffn_gate_exps`), one per expert.
    pub gate: &'a [W],
    /// Their up projections (`ffn_up_exps`), one per expert.
    pub up: &'a [W],
}

/// The buffers [`Backend::norm_route_pair`] writes.
pub struct RouteBuffers<'a, A> {
    /// The normalised rows: `(n_tokens, dim)` (the shared expert reads them after).
    pub normed: &'a mut A,
    /// The router's logits, turned into probabilities: `(n_tokens, n_expert)`.
    pub logits: &'a mut A,
    /// The chosen experts as exact f32 values: `(n_tokens, n_used)`.
    pub ids: &'a mut A,
    /// Their weights: `(n_tokens, n_used)`.
    pub weights: &'a mut A,
    /// Each pair's gate product: `(n_tokens * n_used, n_ff)`.
    pub gate: &'a mut A,
    /// Each pair's up product: `(n_tokens * n_used, n_ff)`.
    pub up: &'a mut A,
}

/// [`Backend::norm_route_pair`] as the single ops: the norm, the router's product, the routing,
/// the routed gate and up.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_route_pair<B: Backend + ?Sized>(
    b: &B,
    x: &B::Activations,
    w: RouteWeights<'_, B::Weight>,
    routing: &Routing,
    n_tokens: usize,
    dim: usize,
    eps: f32,
    out: RouteBuffers<'_, B::Activations>,
) -> Result<(), BackendError> {
    b.rms_norm_into(x, w.norm, n_tokens, dim, eps, out.normed)?;
    b.matmul(w.router, out.normed, n_tokens, out.logits)?;
    b.route_experts(routing, out.logits, n_tokens, out.ids, out.weights)?;
    let k = routing.n_used;
    b.matmul_id_pair(
        w.gate, w.up, out.normed, n_tokens, k, out.ids, out.gate, out.up,
    )
}

/// [`Backend::matmul_id_pair`] as two routed products.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_id_pair<B: Backend + ?Sized>(
    b: &B,
    gate: &[B::Weight],
    up: &[B::Weight],
    x: &B::Activations,
    n_tokens: usize,
    n_used: usize,
    ids: &B::Activations,
    gate_out: &mut B::Activations,
    up_out: &mut B::Activations,
) -> Result<(), BackendError> {
    b.matmul_id(gate, x, n_tokens, n_used, false, ids, gate_out)?;
    b.matmul_id(up, x, n_tokens, n_used, false, ids, up_out)
}

/// [`Backend::gated_matmul_id`] as the activation and a routed product.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_matmul_id<B: Backend + ?Sized>(
    b: &B,
    gate: &mut B::Activations,
    up: &B::Activations,
    ff: usize,
    act: GatedActivation,
    down: &[B::Weight],
    n_tokens: usize,
    n_used: usize,
    ids: &B::Activations,
    out: &mut B::Activations,
) -> Result<(), BackendError> {
    b.gated_activation(gate, up, n_tokens * n_used * ff, act)?;
    b.matmul_id(down, gate, n_tokens, n_used, true, ids, out)
}

/// [`Backend::gated_matmul_id_combine`] as the routed down into `scratch` and the weighted sum.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_matmul_id_combine<B: Backend + ?Sized>(
    b: &B,
    gate: &mut B::Activations,
    up: &B::Activations,
    ff: usize,
    act: GatedActivation,
    down: &[B::Weight],
    n_tokens: usize,
    n_used: usize,
    ids: &B::Activations,
    weights: &B::Activations,
    width: usize,
    shared: Option<(&B::Activations, &B::Activations)>,
    scratch: &mut B::Activations,
    x: &mut B::Activations,
) -> Result<(), BackendError> {
    b.gated_matmul_id(gate, up, ff, act, down, n_tokens, n_used, ids, scratch)?;
    b.moe_combine(scratch, weights, n_tokens, n_used, width, shared, x)
}
