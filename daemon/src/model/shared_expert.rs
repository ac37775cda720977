//! The shared expert of a Qwen2-MoE layer, as llama.cpp's `qwen2moe` graph computes it: a gated
//! MLP every token goes through beside its routed experts, its output scaled per token by
//! `sigmoid(gate_inp · x)` (ggml's `silu(g) / g`) and added to the routed experts' weighted sum
//! before the residual. It runs on its layer's device (it is a layer weight; `--cpu-moe` moves
//! the routed experts only), reading the block's normalised input there: where the routed
//! experts' output stayed on the device, the device adds it with theirs
//! ([`Backend::moe_combine`] of [`run_shared_mlp`]'s results); where it came to the host, it is
//! added there ([`add_shared_expert`]), with the same arithmetic.

use llmd_kernels::backend::{Backend, BackendError, GatedActivation};
use llmd_kernels::moe::shared_expert_scale;

use super::weights::SharedExpert;

/// Buffers of the shared expert for batches of up to `max_tokens` tokens, beside the stage's
/// feed-forward buffers (whose gate, up and output it reuses).
pub struct SharedScratch<B: Backend> {
    /// Its gate logit per token on the device: `(max_tokens)`.
    gate_logit: B::Activations,
    /// The gate logits on the host: `(max_tokens)`.
    host_gate: Vec<f32>,
    /// The shared expert's output on the host: `(max_tokens, n_embd)`.
    host_out: Vec<f32>,
    /// Tokens per call at most.
    max_tokens: usize,
}

impl<B: Backend> SharedScratch<B> {
    /// The gate logits [`run_shared_mlp`] wrote: `(n)` of its `n` rows.
    pub fn gate_logit(&self) -> &B::Activations {
        &self.gate_logit
    }

    /// Buffers for batches of up to `max_tokens` tokens of width `n_embd`.
    pub fn alloc(b: &B, n_embd: usize, max_tokens: usize) -> Result<Self, BackendError> {
        Ok(SharedScratch {
            gate_logit: b.alloc_activations(max_tokens)?,
            host_gate: vec![0.0; max_tokens],
            host_out: vec![0.0; max_tokens * n_embd],
            max_tokens,
        })
    }
}

/// f32 values of device activations [`SharedScratch`] takes.
pub fn scratch_floats(max_tokens: usize) -> usize {
    max_tokens
}

/// The device buffers the shared expert computes in, borrowed from the stage's feed-forward
/// scratch.
pub struct SharedBuffers<'a, B: Backend> {
    /// The block's normalised input: `(n, n_embd)`.
    pub input: &'a B::Activations,
    /// Gate (then the gated activation): at least `(n, n_ff_shexp)`.
    pub gate: &'a mut B::Activations,
    /// Up: at least `(n, n_ff_shexp)`.
    pub up: &'a mut B::Activations,
    /// The MLP's output: at least `(n, n_embd)`.
    pub out: &'a mut B::Activations,
}

/// Runs the shared expert `w` (`n_ff` wide) over `n` rows of width `d` on its device: its
/// gated MLP's output in `bufs.out` and its gate logit per token in `s.gate_logit`.
#[allow(clippy::too_many_arguments)]
pub fn run_shared_mlp<B: Backend>(
    b: &B,
    w: &SharedExpert<B::Weight>,
    n_ff: usize,
    act: GatedActivation,
    s: &mut SharedScratch<B>,
    bufs: &mut SharedBuffers<'_, B>,
    n: usize,
) -> Result<(), BackendError> {
    if n > s.max_tokens {
        return Err(BackendError::Shape {
            op: "shared_expert",
            detail: format!("{n} tokens (at most {})", s.max_tokens),
        });
    }
    let SharedBuffers {
        input,
        gate,
        up,
        out,
    } = bufs;
    // The gated MLP, as a dense feed-forward block computes it.
    b.matmuls(&[&w.gate, &w.up], input, n, &mut [&mut **gate, &mut **up])?;
    b.gated_activation(gate, up, n * n_ff, act)?;
    b.matmul(&w.down, gate, n, out)?;
    // Its gate: one logit per token.
    b.matmul(&w.gate_inp, input, n, &mut s.gate_logit)
}

/// Adds the shared expert `w` (`n_ff` wide) over `n` rows of width `d` into `routed`, the
/// routed experts' output on the host (`n * d` values): `routed += mlp(x) * sigmoid(gate_inp · x)`.
#[allow(clippy::too_many_arguments)]
pub fn add_shared_expert<B: Backend>(
    b: &B,
    w: &SharedExpert<B::Weight>,
    n_ff: usize,
    act: GatedActivation,
    s: &mut SharedScratch<B>,
    bufs: SharedBuffers<'_, B>,
    n: usize,
    d: usize,
    routed: &mut [f32],
) -> Result<(), BackendError> {
    if n > s.max_tokens || routed.len() != n * d {
        return Err(BackendError::Shape {
            op: "shared_expert",
            detail: format!(
                "{n} tokens (at most {}), {} routed values for rows of {d}",
                s.max_tokens,
                routed.len()
            ),
        });
    }
    let mut bufs = bufs;
    run_shared_mlp(b, w, n_ff, act, s, &mut bufs, n)?;
    b.read_activations(bufs.out, &mut s.host_out[..n * d])?;
    b.read_activations(&s.gate_logit, &mut s.host_gate[..n])?;
    // Scaled by the sigmoid of the logit and added to the routed output, in ggml's order: the
    // product first, then the sum.
    for ((row, mlp), &g) in routed
        .chunks_exact_mut(d)
        .zip(s.host_out.chunks_exact(d))
        .zip(&s.host_gate[..n])
    {
        let scale = shared_expert_scale(g);
        for (r, &m) in row.iter_mut().zip(mlp) {
            *r += m * scale;
        }
    }
    Ok(())
}
