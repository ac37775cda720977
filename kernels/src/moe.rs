//! Mixture-of-experts routing, on the host: each token's router logits turned into the experts
//! it uses and their weights (as llama.cpp's `build_moe_ffn` computes them on its CPU backend),
//! and the tokens grouped by expert, so that each expert multiplies all of its rows of a batch
//! in one matmul instead of token by token.
//!
//! The arithmetic follows ggml's ops one by one: `soft_max` (f32 exponentials, a double sum,
//! one f32 reciprocal), `argsort` descending then the first `k` (`ggml_argsort_top_k`; ties keep
//! the lower expert first), `get_rows` of the probabilities, and with normalisation `sum_rows`
//! (a double sum), `clamp` to f16's smallest normal value and one f32 division per weight.

use thiserror::Error;

use crate::cpu::ops::softmax;

/// The smallest weight sum llama.cpp divides by (f16's smallest normal value, 2^-14), so that a
/// token whose chosen probabilities all underflow does not divide by zero.
const MIN_WEIGHT_SUM: f32 = 1.0 / 16384.0;

/// Most experts a token may use where the routing runs on a device (`MOE_MAX_USED` of
/// `kernels/cuda/moe.cu`: the top-k list each token keeps in registers); models use 1 to 8.
pub const MAX_DEVICE_USED: usize = 32;

/// Most experts per layer where the routing runs on a device: expert ids travel there as f32
/// values, exact below 2^24.
pub const MAX_DEVICE_EXPERTS: usize = 1 << 24;

/// How a model turns router logits into expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    /// Experts per layer.
    pub n_expert: usize,
    /// Experts each token uses (`k` of top-k).
    pub n_used: usize,
    /// Whether the chosen experts' probabilities are divided by their sum (Mixtral, Qwen3-MoE),
    /// or used as they are (Qwen2-MoE).
    pub normalize: bool,
}

/// A routing that cannot be computed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoutingError {
    /// The expert counts are impossible.
    #[error("{n_used} experts used of {n_expert}: need 1 <= used <= experts")]
    Counts {
        /// Experts per layer.
        n_expert: usize,
        /// Experts used per token.
        n_used: usize,
    },
    /// The counts are beyond what routing on a device handles.
    #[error(
        "{n_used} experts used of {n_expert}: routing on a device takes at most \
         {MAX_DEVICE_USED} used of {MAX_DEVICE_EXPERTS}"
    )]
    DeviceLimits {
        /// Experts per layer.
        n_expert: usize,
        /// Experts used per token.
        n_used: usize,
    },
    /// A buffer has the wrong length.
    #[error("routing buffers: {0}")]
    Buffers(String),
}

impl Routing {
    /// Checks the counts.
    pub fn check(&self) -> Result<(), RoutingError> {
        if self.n_used == 0 || self.n_used > self.n_expert || self.n_expert > u32::MAX as usize {
            return Err(RoutingError::Counts {
                n_expert: self.n_expert,
                n_used: self.n_used,
            });
        }
        Ok(())
    }

    /// Checks the counts for routing on a device ([`MAX_DEVICE_USED`], [`MAX_DEVICE_EXPERTS`]).
    pub fn check_device(&self) -> Result<(), RoutingError> {
        self.check()?;
        if self.n_used > MAX_DEVICE_USED || self.n_expert > MAX_DEVICE_EXPERTS {
            return Err(RoutingError::DeviceLimits {
                n_expert: self.n_expert,
                n_used: self.n_used,
            });
        }
        Ok(())
    }

    /// Routes `n_tokens` tokens: `logits` holds `n_expert` router logits per token (turned into
    /// probabilities in place); `ids` and `weights` receive `n_used` experts and weights per
    /// token, in slot order (highest probability first).
    pub fn route(
        &self,
        logits: &mut [f32],
        n_tokens: usize,
        ids: &mut [u32],
        weights: &mut [f32],
    ) -> Result<(), RoutingError> {
        self.check()?;
        let (e, k) = (self.n_expert, self.n_used);
        if logits.len() < n_tokens * e || ids.len() < n_tokens * k || weights.len() < n_tokens * k {
            return Err(RoutingError::Buffers(format!(
                "{} logits, {} ids, {} weights for {n_tokens} tokens of {e} experts, {k} used",
                logits.len(),
                ids.len(),
                weights.len()
            )));
        }
        for t in 0..n_tokens {
            let probs = &mut logits[t * e..(t + 1) * e];
            softmax(probs);
            let ids = &mut ids[t * k..(t + 1) * k];
            top_k(probs, ids);
            let w = &mut weights[t * k..(t + 1) * k];
            for (w, &id) in w.iter_mut().zip(ids.iter()) {
                *w = probs[id as usize];
            }
            if self.normalize {
                let sum = w.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
                let sum = sum.max(MIN_WEIGHT_SUM);
                for v in w.iter_mut() {
                    *v /= sum;
                }
            }
        }
        Ok(())
    }
}

/// The routed output of `n_tokens` tokens into `out` (`n_tokens * width` values):
/// `out[t] = sum over slots j of down[t * n_used + j] * weights[t * n_used + j]`, each product
/// rounded before the sum and the slots added in order (llama.cpp adds the views of the weighted
/// experts one by one), as the device's `moe_combine_f32` computes it.
pub fn weighted_sum(
    down: &[f32],
    weights: &[f32],
    n_tokens: usize,
    n_used: usize,
    width: usize,
    out: &mut [f32],
) -> Result<(), RoutingError> {
    let pairs = n_tokens * n_used;
    if n_used == 0
        || down.len() < pairs * width
        || weights.len() < pairs
        || out.len() < n_tokens * width
    {
        return Err(RoutingError::Buffers(format!(
            "{} expert outputs, {} weights and {} outputs for {n_tokens} tokens of {n_used} \
             experts, rows of {width}",
            down.len(),
            weights.len(),
            out.len()
        )));
    }
    for (t, out) in out[..n_tokens * width].chunks_exact_mut(width).enumerate() {
        let pair = |j: usize| &down[(t * n_used + j) * width..(t * n_used + j + 1) * width];
        let w = &weights[t * n_used..(t + 1) * n_used];
        for (o, &v) in out.iter_mut().zip(pair(0)) {
            *o = v * w[0];
        }
        for (j, &wj) in w.iter().enumerate().skip(1) {
            for (o, &v) in out.iter_mut().zip(pair(j)) {
                *o += v * wj;
            }
        }
    }
    Ok(())
}

/// The scale of a shared expert's output (Qwen2-MoE): the sigmoid of its gate logit `g` as
/// llama.cpp computes it, ggml's `silu(g) / g` with `silu(g) = g / (1 + e^-g)`.
pub fn shared_expert_scale(g: f32) -> f32 {
    g / (1.0 + (-g).exp()) / g
}

/// The `ids.len()` largest of `probs`, largest first (a lower index first among equals).
fn top_k(probs: &[f32], ids: &mut [u32]) {
    let k = ids.len();
    let mut filled = 0usize;
    for (i, &p) in probs.iter().enumerate() {
        // Insertion into the sorted prefix: k is small (2 to 8).
        let mut at = filled;
        while at > 0 && probs[ids[at - 1] as usize] < p {
            at -= 1;
        }
        if at >= k {
            continue;
        }
        let end = filled.min(k - 1);
        ids.copy_within(at..end, at + 1);
        ids[at] = i as u32;
        filled = (filled + 1).min(k);
    }
}

/// A batch's routed rows grouped by expert: for each expert, the tokens it takes (in token
/// order) and the slot (`token * n_used + slot`) each result goes to. The buffers keep their
/// capacity between steps, so regrouping does not allocate once they have grown.
#[derive(Debug, Default)]
pub struct ExpertGroups {
    /// Where each expert's entries start in `tokens`/`slots`; `n_expert + 1` values.
    starts: Vec<usize>,
    /// Token (row of the batch) of each entry, grouped by expert.
    tokens: Vec<u32>,
    /// Result slot of each entry (`token * n_used + slot`), parallel to `tokens`.
    slots: Vec<u32>,
}

impl ExpertGroups {
    /// Groups the `ids` (`n_used` per token, as [`Routing::route`] wrote them) by expert.
    pub fn group(
        &mut self,
        ids: &[u32],
        n_expert: usize,
        n_used: usize,
    ) -> Result<(), RoutingError> {
        if n_used == 0 {
            return Err(RoutingError::Buffers("no expert used per token".into()));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n_expert) {
            return Err(RoutingError::Buffers(format!("expert {bad} of {n_expert}")));
        }
        self.starts.clear();
        self.starts.resize(n_expert + 1, 0);
        for &id in ids {
            self.starts[id as usize + 1] += 1;
        }
        for e in 0..n_expert {
            self.starts[e + 1] += self.starts[e];
        }
        self.tokens.clear();
        self.tokens.resize(ids.len(), 0);
        self.slots.clear();
        self.slots.resize(ids.len(), 0);
        // A running cursor per expert; `starts` is shifted back afterwards.
        for (slot, &id) in ids.iter().enumerate() {
            let e = id as usize;
            let at = self.starts[e];
            self.slots[at] = slot as u32;
            self.tokens[at] = (slot / n_used) as u32;
            self.starts[e] += 1;
        }
        for e in (1..=n_expert).rev() {
            self.starts[e] = self.starts[e - 1];
        }
        self.starts[0] = 0;
        Ok(())
    }

    /// Experts in the grouping.
    pub fn n_expert(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Expert `e`'s tokens and their result slots (both empty when no token chose it).
    pub fn expert(&self, e: usize) -> (&[u32], &[u32]) {
        let r = self.starts[e]..self.starts[e + 1];
        (&self.tokens[r.clone()], &self.slots[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_picks_the_largest_in_order_lower_index_first_among_equals() {
        let probs = [0.1, 0.4, 0.2, 0.4, 0.05, 0.3];
        let mut ids = [0u32; 3];
        top_k(&probs, &mut ids);
        assert_eq!(ids, [1, 3, 5]);
        let mut one = [0u32; 1];
        top_k(&probs, &mut one);
        assert_eq!(one, [1]);
        let mut all = [0u32; 6];
        top_k(&probs, &mut all);
        assert_eq!(all, [1, 3, 5, 2, 0, 4]);
    }

    #[test]
    fn routing_normalises_the_chosen_probabilities_as_llama_cpp() {
        let r = Routing {
            n_expert: 4,
            n_used: 2,
            normalize: true,
        };
        let mut logits = vec![1.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5.0];
        let (mut ids, mut w) = (vec![0; 4], vec![0.0; 4]);
        r.route(&mut logits, 2, &mut ids, &mut w).expect("route");
        assert_eq!(&ids[..2], &[1, 2]);
        assert_eq!(ids[2], 3);
        // Token 0: softmax over (1, 3, 2, 0), renormalised over experts 1 and 2.
        let e = [1f32.exp(), 3f32.exp(), 2f32.exp(), 1.0];
        let p: Vec<f32> = e.iter().map(|v| v / e.iter().sum::<f32>()).collect();
        let want1 = p[1] / (p[1] + p[2]);
        assert!((w[0] - want1).abs() < 1e-6, "{} vs {want1}", w[0]);
        assert!((w[0] + w[1] - 1.0).abs() < 1e-6);
        let raw = Routing {
            normalize: false,
            ..r
        };
        let mut logits = vec![1.0, 3.0, 2.0, 0.0];
        raw.route(&mut logits, 1, &mut ids, &mut w).expect("route");
        assert!((w[0] - p[1]).abs() < 1e-6 && (w[1] - p[2]).abs() < 1e-6);
    }

    #[test]
    fn groups_list_each_experts_tokens_in_order() {
        // Three tokens, two experts each, of four.
        let ids = [2, 0, 0, 3, 2, 3];
        let mut g = ExpertGroups::default();
        g.group(&ids, 4, 2).expect("group");
        assert_eq!(g.n_expert(), 4);
        assert_eq!(g.expert(0), (&[0u32, 1][..], &[1u32, 2][..]));
        assert_eq!(g.expert(1), (&[][..], &[][..]));
        assert_eq!(g.expert(2), (&[0u32, 2][..], &[0u32, 4][..]));
        assert_eq!(g.expert(3), (&[1u32, 2][..], &[3u32, 5][..]));
        assert!(g.group(&[4], 4, 1).is_err(), "an expert out of range");
    }

    #[test]
    fn shared_expert_scale_is_the_sigmoid_llama_cpp_computes() {
        for g in [-6.0f32, -0.5, 0.25, 3.0] {
            let want = 1.0 / (1.0 + (-g).exp());
            assert!((shared_expert_scale(g) - want).abs() < 1e-6, "{g}");
        }
    }

    #[test]
    fn weighted_sum_adds_each_tokens_weighted_slots_in_order() {
        // Two tokens, two experts each, rows of 2.
        let down = [1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0];
        let weights = [0.5, 0.25, 2.0, 1.0];
        let mut out = [0.0; 4];
        weighted_sum(&down, &weights, 2, 2, 2, &mut out).expect("sum");
        assert_eq!(out, [3.0, 6.0, 36.0, 48.0]);
        assert!(weighted_sum(&down, &weights, 3, 2, 2, &mut out).is_err());
    }

    #[test]
    fn bad_counts_and_buffers_are_refused() {
        let r = Routing {
            n_expert: 4,
            n_used: 5,
            normalize: true,
        };
        assert!(r.check().is_err());
        let r = Routing { n_used: 2, ..r };
        let mut logits = vec![0.0; 4];
        assert!(r.route(&mut logits, 2, &mut [0; 4], &mut [0.0; 4]).is_err());
    }
}
