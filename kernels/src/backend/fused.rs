//! The fused steps of a transformer layer that [`Backend`] offers beside its single ops: the
//! products of one input with several weights, an RMS norm feeding them, the output
//! projections added to the residual stream, and the rope and KV store of a layer's fresh
//! queries, keys and values. Each is defined here as the sequence of single ops it stands for
//! (the trait's provided methods call these, so the CPU backend runs them as they are); a GPU
//! backend overrides them to run the sequence in fewer launches and conversions, with the same
//! results up to float rounding.

use std::ops::Range;

use super::{AttentionParams, Backend, BackendError, GatedActivation, RopeParams};

/// What [`Backend::rope_store`] does to a layer's fresh queries, keys and values before the
/// keys and values are stored: biases, per-head norms, rope and a query scale, in that order.
pub struct QkvParams<'a, W> {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Biases of q, k and v, added first (Qwen 2).
    pub biases: Option<(&'a W, &'a W, &'a W)>,
    /// Per-head RMS norm weights of q and k (Qwen 3, Gemma 3).
    pub qk_norm: Option<(&'a W, &'a W)>,
    /// The norms' epsilon.
    pub norm_eps: f32,
    /// Rotary embedding of q and k.
    pub rope: RopeParams,
    /// Rope frequency factors (Llama 3.1, Phi-3).
    pub freq_factors: Option<&'a W>,
    /// Multiplier of the queries after rope (Gemma's query scale), if any.
    pub q_scale: Option<f32>,
}

/// [`Backend::matmuls`] as single products.
pub(crate) fn matmuls<B: Backend + ?Sized>(
    b: &B,
    ws: &[&B::Weight],
    x: &B::Activations,
    n_tokens: usize,
    outs: &mut [&mut B::Activations],
) -> Result<(), BackendError> {
    check_pairs("matmuls", ws.len(), outs.len())?;
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        b.matmul(w, x, n_tokens, out)?;
    }
    Ok(())
}

/// [`Backend::norm_matmuls`] as an RMS norm into `normed` and single products of it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_matmuls<B: Backend + ?Sized>(
    b: &B,
    x: &B::Activations,
    norm: &B::Weight,
    n_rows: usize,
    dim: usize,
    eps: f32,
    normed: &mut B::Activations,
    ws: &[&B::Weight],
    outs: &mut [&mut B::Activations],
) -> Result<(), BackendError> {
    b.rms_norm_into(x, norm, n_rows, dim, eps, normed)?;
    b.matmuls(ws, normed, n_rows, outs)
}

/// [`Backend::matmul_residual`] as a product into `scratch`, its optional norm, and an add.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_residual<B: Backend + ?Sized>(
    b: &B,
    w: &B::Weight,
    x: &B::Activations,
    n_tokens: usize,
    width: usize,
    post_norm: Option<(&B::Weight, f32)>,
    scratch: &mut B::Activations,
    residual: &mut B::Activations,
) -> Result<(), BackendError> {
    b.matmul(w, x, n_tokens, scratch)?;
    if let Some((norm, eps)) = post_norm {
        b.rms_norm(scratch, norm, n_tokens, width, eps)?;
    }
    b.add(residual, scratch, n_tokens * width)
}

/// [`Backend::gated_matmul_residual`] as the gated activation in `gate`, then
/// [`matmul_residual`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_matmul_residual<B: Backend + ?Sized>(
    b: &B,
    gate: &mut B::Activations,
    up: &B::Activations,
    ff: usize,
    act: GatedActivation,
    w: &B::Weight,
    n_tokens: usize,
    width: usize,
    post_norm: Option<(&B::Weight, f32)>,
    scratch: &mut B::Activations,
    residual: &mut B::Activations,
) -> Result<(), BackendError> {
    b.gated_activation(gate, up, n_tokens * ff, act)?;
    b.matmul_residual(w, gate, n_tokens, width, post_norm, scratch, residual)
}

/// [`Backend::rope_store`] as biases, per-head norms, two ropes, a scale and one KV store per
/// segment.
pub(crate) fn rope_store<B: Backend + ?Sized>(
    b: &B,
    q: &mut B::Activations,
    k: &mut B::Activations,
    v: &mut B::Activations,
    positions: &[u32],
    p: &QkvParams<'_, B::Weight>,
    caches: &mut [(&mut B::KvCache, Range<usize>)],
) -> Result<(), BackendError> {
    let n = positions.len();
    if let Some((bq, bk, bv)) = p.biases {
        b.add_bias(q, bq, n)?;
        b.add_bias(k, bk, n)?;
        b.add_bias(v, bv, n)?;
    }
    if let Some((qn, kn)) = p.qk_norm {
        b.rms_norm(q, qn, n * p.n_heads, p.head_dim, p.norm_eps)?;
        b.rms_norm(k, kn, n * p.n_kv_heads, p.head_dim, p.norm_eps)?;
    }
    b.rope(
        q,
        n,
        p.n_heads,
        p.head_dim,
        positions,
        p.rope,
        p.freq_factors,
    )?;
    b.rope(
        k,
        n,
        p.n_kv_heads,
        p.head_dim,
        positions,
        p.rope,
        p.freq_factors,
    )?;
    if let Some(s) = p.q_scale {
        b.scale(q, s, n * p.n_heads * p.head_dim)?;
    }
    for (kv, rows) in caches.iter_mut() {
        check_rows("rope_store", rows, n)?;
        b.kv_store(kv, k, v, rows.start, &positions[rows.clone()])?;
    }
    Ok(())
}

/// [`Backend::attention_batch`] as one attention call per segment.
pub(crate) fn attention_batch<B: Backend + ?Sized>(
    b: &B,
    q: &B::Activations,
    caches: &[(&B::KvCache, Range<usize>)],
    positions: &[u32],
    params: AttentionParams,
    out: &mut B::Activations,
) -> Result<(), BackendError> {
    for (kv, rows) in caches {
        check_rows("attention_batch", rows, positions.len())?;
        b.attention(q, kv, rows.start, &positions[rows.clone()], params, out)?;
    }
    Ok(())
}

/// Fails `op` unless it has as many weights as outputs.
fn check_pairs(op: &'static str, weights: usize, outs: usize) -> Result<(), BackendError> {
    if weights != outs {
        return Err(super::shape(
            op,
            format!("{weights} weights for {outs} outputs"),
        ));
    }
    Ok(())
}

/// Fails `op` unless `rows` lies within a batch of `n` tokens.
pub(crate) fn check_rows(
    op: &'static str,
    rows: &Range<usize>,
    n: usize,
) -> Result<(), BackendError> {
    if rows.start > rows.end || rows.end > n {
        return Err(super::shape(
            op,
            format!("rows {rows:?} of a batch of {n} tokens"),
        ));
    }
    Ok(())
}
