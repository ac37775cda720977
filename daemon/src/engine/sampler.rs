//! Choosing the next token from logits: greedy (a plain argmax), or llama.cpp's default chain of
//! penalties, top-k, top-p, min-p, temperature and a seeded draw, so that a seed makes a run
//! reproducible. The chain never sorts the vocabulary: top-k is a partial selection
//! ([`super::select`]), and top-p and min-p work on the candidates it keeps.
//!
//! A sampler says what it needs of a logits row ([`Sampler::device_selection`]): greedy
//! decoding only the argmax, a top-k chain without penalties only the k best; the head's device
//! then picks those and [`Sampler::sample_candidates`] continues the chain from them, drawing
//! the token (and advancing the random state) exactly as [`Sampler::sample`] does from the
//! whole row.

use serde::{Deserialize, Serialize};

pub use super::select::argmax;
use super::select::{sort_ranked, top_k, Candidate, Selection, MAX_DEVICE_TOP_K};

/// How to pick tokens. The defaults match llama.cpp's command-line tools.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; `<= 0` picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to `top_p` (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// Subtract this from the logits of recently seen tokens (0 = off).
    pub presence_penalty: f32,
    /// Subtract this times the number of times a token was seen recently (0 = off).
    pub frequency_penalty: f32,
    /// How many of the latest tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether any repetition penalty is on (they change the logits of recent tokens).
    fn has_penalties(&self) -> bool {
        self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// A small, fast, seedable generator (SplitMix64); reproducible across platforms.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples tokens for one sequence.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// The settings.
    params: SamplingParams,
    /// Random state.
    rng: SplitMix64,
    /// Reused candidate list.
    candidates: Vec<Candidate>,
    /// Reused copy of the logits with the repetition penalties applied (empty without them).
    penalised: Vec<f32>,
    /// Reused list of the distinct recent tokens the penalties apply to.
    seen: Vec<u32>,
}

/// Candidates the full-vocabulary top-p cut (top-k off) ranks first; it ranks eight times more
/// each time they do not reach `top_p`, so a peaked distribution never ranks the vocabulary.
const FIRST_TOP_P_CANDIDATES: usize = 64;

impl Sampler {
    /// A sampler with these settings.
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
            penalised: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Picks the next token given the logits and the tokens so far (prompt and generated).
    ///
    /// Greedy decoding is a plain [`argmax`]. Otherwise the chain is llama.cpp's: penalties,
    /// top-k (a partial selection, never a sort of the vocabulary), softmax, top-p, min-p,
    /// temperature, a seeded draw.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let Sampler {
            params: p,
            rng,
            candidates,
            penalised,
            seen,
        } = self;
        let is_penalised = p.has_penalties();
        if p.temperature <= 0.0 && !is_penalised {
            return argmax(logits);
        }
        let values: &[f32] = if is_penalised {
            penalised.clear();
            penalised.extend_from_slice(logits);
            let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
            seen.clear();
            seen.extend_from_slice(recent);
            seen.sort_unstable();
            // As llama.cpp's penalties sampler: each distinct recent token once, the repetition
            // penalty, then its count times the frequency penalty and the presence penalty.
            for run in seen.chunk_by(|a, b| a == b) {
                if let Some(v) = penalised.get_mut(run[0] as usize) {
                    *v = if *v > 0.0 {
                        *v / p.repeat_penalty
                    } else {
                        *v * p.repeat_penalty
                    };
                    *v -= run.len() as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
            penalised
        } else {
            logits
        };
        if p.temperature <= 0.0 {
            return argmax(values);
        }
        if values.is_empty() {
            return 0;
        }
        if p.top_k > 0 && p.top_k < values.len() {
            top_k(values, p.top_k, candidates);
            cut_top_p(p, candidates);
        } else {
            full_vocabulary(values, p.top_p, p.min_p, candidates);
        }
        min_p_and_draw(p, rng, candidates)
    }

    /// What this sampler needs of a logits row of `n_vocab` values when it is less than the
    /// row, for the device to pick: the argmax for greedy decoding, the `top_k` best for a
    /// chain whose top-k keeps fewer than the vocabulary and at most [`MAX_DEVICE_TOP_K`].
    /// `None` (the whole row is needed) with repetition penalties, which change the logits of
    /// recent tokens first, or with top-k off or larger.
    pub fn device_selection(&self, n_vocab: usize) -> Option<Selection> {
        let p = &self.params;
        if p.has_penalties() {
            return None;
        }
        if p.temperature <= 0.0 {
            return (n_vocab > 0).then_some(Selection::Argmax);
        }
        (p.top_k > 0 && p.top_k < n_vocab && p.top_k <= MAX_DEVICE_TOP_K)
            .then_some(Selection::TopK(p.top_k))
    }

    /// Picks the next token from the candidates [`Sampler::device_selection`] asked for (in
    /// rank order): the argmax's, or the rest of the chain after top-k (softmax over them,
    /// top-p, min-p, temperature, the seeded draw), giving the token and random state that
    /// [`Sampler::sample`] gives from the whole row.
    pub fn sample_candidates(&mut self, picked: &[Candidate]) -> u32 {
        let Sampler {
            params: p,
            rng,
            candidates,
            ..
        } = self;
        if p.temperature <= 0.0 {
            return picked.first().map_or(0, |c| c.id);
        }
        if picked.is_empty() {
            return 0;
        }
        candidates.clear();
        candidates.extend_from_slice(picked);
        cut_top_p(p, candidates);
        min_p_and_draw(p, rng, candidates)
    }
}

/// After top-k: the candidates' probabilities, then the shortest rank-order prefix whose
/// probabilities reach `top_p` (when it is below 1).
fn cut_top_p(p: &SamplingParams, candidates: &mut Vec<Candidate>) {
    softmax(candidates, 1.0);
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = candidates.len();
        for (i, c) in candidates.iter().enumerate() {
            cum += c.value;
            if cum >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        candidates.truncate(keep.max(1));
    }
}

/// The end of the chain over candidates with their probabilities: the min-p cut, temperature
/// on the survivors' log-probabilities, and the seeded draw.
fn min_p_and_draw(
    p: &SamplingParams,
    rng: &mut SplitMix64,
    candidates: &mut Vec<Candidate>,
) -> u32 {
    if p.min_p > 0.0 {
        // Whenever min-p is on, the candidates are in rank order here.
        let threshold = candidates[0].value * p.min_p;
        let keep = candidates
            .iter()
            .take_while(|c| c.value >= threshold)
            .count();
        candidates.truncate(keep.max(1));
    }
    // Temperature on the surviving tokens' log-probabilities, then a draw.
    for c in candidates.iter_mut() {
        c.value = c.value.max(f32::MIN_POSITIVE).ln() / p.temperature;
    }
    softmax(candidates, 1.0);
    let r = rng.next_f64();
    let mut cum = 0.0f64;
    for c in candidates.iter() {
        cum += c.value as f64;
        if r < cum {
            return c.id;
        }
    }
    candidates.last().map_or(0, |c| c.id)
}

/// The candidates of the whole vocabulary (top-k off) with their probabilities. With top-p:
/// the shortest rank-order prefix whose probabilities add up to `top_p`, found by ranking ever
/// longer prefixes rather than the whole vocabulary. Without top-p but with min-p: the tokens at
/// least `min_p` times as likely as the best one, in rank order. With neither: every token, in
/// id order. The softmax sums the vocabulary in id order.
fn full_vocabulary(values: &[f32], top_p: f32, min_p: f32, out: &mut Vec<Candidate>) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = values.iter().map(|&v| (v - max).exp()).sum();
    let prob = |v: f32| (v - max).exp() / sum;
    if top_p < 1.0 {
        let mut m = FIRST_TOP_P_CANDIDATES;
        loop {
            top_k(values, m, out);
            let mut cum = 0.0;
            let mut keep = None;
            for (i, c) in out.iter_mut().enumerate() {
                c.value = prob(c.value);
                cum += c.value;
                if cum >= top_p {
                    keep = Some(i + 1);
                    break;
                }
            }
            if let Some(keep) = keep {
                out.truncate(keep);
                return;
            }
            if m >= values.len() {
                return;
            }
            m = m.saturating_mul(8);
        }
    }
    out.clear();
    if min_p > 0.0 {
        let threshold = prob(max) * min_p;
        out.extend(values.iter().enumerate().filter_map(|(i, &v)| {
            (prob(v) >= threshold).then_some(Candidate {
                id: i as u32,
                value: v,
            })
        }));
        sort_ranked(out);
    } else {
        out.extend(values.iter().enumerate().map(|(i, &v)| Candidate {
            id: i as u32,
            value: v,
        }));
    }
    for c in out.iter_mut() {
        c.value = prob(c.value);
    }
}

/// Turns candidate logits into probabilities in place.
fn softmax(cands: &mut [Candidate], temperature: f32) {
    let max = cands
        .iter()
        .map(|c| c.value)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for c in cands.iter_mut() {
        c.value = ((c.value - max) / temperature).exp();
        sum += c.value;
    }
    for c in cands.iter_mut() {
        c.value /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler as it was before the partial selection (it sorted every candidate), kept to
    /// check that the new one draws the same tokens.
    mod before {
        use super::super::{SamplingParams, SplitMix64};

        #[derive(Clone, Copy)]
        struct Candidate {
            id: u32,
            value: f32,
        }

        pub struct Sampler {
            params: SamplingParams,
            rng: SplitMix64,
            candidates: Vec<Candidate>,
        }

        fn argmax(logits: &[f32]) -> u32 {
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            best as u32
        }

        fn softmax(cands: &mut [Candidate], temperature: f32) {
            let max = cands
                .iter()
                .map(|c| c.value)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for c in cands.iter_mut() {
                c.value = ((c.value - max) / temperature).exp();
                sum += c.value;
            }
            for c in cands.iter_mut() {
                c.value /= sum;
            }
        }

        impl Sampler {
            pub fn new(params: SamplingParams) -> Self {
                let rng = SplitMix64(params.seed);
                Sampler {
                    params,
                    rng,
                    candidates: Vec::new(),
                }
            }

            pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
                let p = &self.params;
                let penalised = p.repeat_penalty != 1.0 || p.presence_penalty != 0.0;
                if p.temperature <= 0.0 && !penalised {
                    return argmax(logits);
                }
                self.candidates.clear();
                self.candidates
                    .extend(logits.iter().enumerate().map(|(i, &v)| Candidate {
                        id: i as u32,
                        value: v,
                    }));
                if penalised {
                    let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
                    let mut seen: Vec<u32> = recent.to_vec();
                    seen.sort_unstable();
                    seen.dedup();
                    for id in seen {
                        if let Some(c) = self.candidates.get_mut(id as usize) {
                            c.value = if c.value > 0.0 {
                                c.value / p.repeat_penalty
                            } else {
                                c.value * p.repeat_penalty
                            };
                            c.value -= p.presence_penalty;
                        }
                    }
                }
                if p.temperature <= 0.0 {
                    let best = self.candidates.iter().enumerate().fold(0, |b, (i, c)| {
                        if c.value > self.candidates[b].value {
                            i
                        } else {
                            b
                        }
                    });
                    return self.candidates[best].id;
                }
                self.candidates.sort_by(|a, b| b.value.total_cmp(&a.value));
                if p.top_k > 0 && p.top_k < self.candidates.len() {
                    self.candidates.truncate(p.top_k);
                }
                softmax(&mut self.candidates, 1.0);
                if p.top_p < 1.0 {
                    let mut cum = 0.0;
                    let mut keep = self.candidates.len();
                    for (i, c) in self.candidates.iter().enumerate() {
                        cum += c.value;
                        if cum >= p.top_p {
                            keep = i + 1;
                            break;
                        }
                    }
                    self.candidates.truncate(keep.max(1));
                }
                if p.min_p > 0.0 {
                    let threshold = self.candidates[0].value * p.min_p;
                    let keep = self
                        .candidates
                        .iter()
                        .take_while(|c| c.value >= threshold)
                        .count();
                    self.candidates.truncate(keep.max(1));
                }
                for c in &mut self.candidates {
                    c.value = c.value.max(f32::MIN_POSITIVE).ln() / p.temperature;
                }
                softmax(&mut self.candidates, 1.0);
                let r = self.rng.next_f64();
                let mut cum = 0.0f64;
                for c in &self.candidates {
                    cum += c.value as f64;
                    if r < cum {
                        return c.id;
                    }
                }
                self.candidates.last().map_or(0, |c| c.id)
            }
        }
    }

    /// Logits shaped like a language model's: a few likely tokens over a long flat tail, with
    /// exact ties among them.
    fn lm_logits(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = SplitMix64(seed);
        (0..n)
            .map(|_| {
                let u = rng.next_f64();
                let tail = (rng.next_u64() % 64) as f32 * 0.05 - 2.0;
                if u < 0.002 {
                    8.0 + (rng.next_u64() % 16) as f32 * 0.25
                } else {
                    tail
                }
            })
            .collect()
    }

    #[test]
    fn same_tokens_as_the_sorting_sampler_for_every_seed() {
        let settings = [
            SamplingParams::default(),
            SamplingParams {
                top_k: 1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.3,
                top_k: 200,
                top_p: 0.8,
                min_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: 0.6,
                top_k: 5000,
                top_p: 1.0,
                min_p: 0.1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 0.9,
                repeat_penalty: 1.3,
                presence_penalty: 0.4,
                ..Default::default()
            },
            SamplingParams {
                temperature: 0.0,
                repeat_penalty: 1.5,
                ..Default::default()
            },
            SamplingParams::greedy(),
        ];
        for (i, params) in settings.iter().enumerate() {
            for seed in 0..40u64 {
                let params = SamplingParams {
                    seed,
                    ..params.clone()
                };
                let mut new = Sampler::new(params.clone());
                let mut old = before::Sampler::new(params);
                let mut history: Vec<u32> = (0..30).map(|t| (t * 977) % 20_000).collect();
                for step in 0..8u64 {
                    let logits = lm_logits(seed * 1000 + step, 20_000);
                    let a = new.sample(&logits, &history);
                    let b = old.sample(&logits, &history);
                    assert_eq!(a, b, "settings {i}, seed {seed}, step {step}");
                    history.push(a);
                }
            }
        }
    }

    /// Issue 18: a sampler that asks the device for candidates draws from them the token (and
    /// leaves the random state) that it draws from the whole row, step after step, for every
    /// setting that asks, seeds and logits with ties and special values.
    #[test]
    fn sampling_from_candidates_equals_sampling_from_the_row() {
        let n_vocab = 5000;
        let mut settings = vec![SamplingParams::greedy(), SamplingParams::default()];
        for (i, &(temperature, top_k, top_p, min_p)) in [
            (0.8f32, 40usize, 0.95f32, 0.05f32),
            (1.0, 1, 1.0, 0.0),
            (1.5, 2, 0.5, 0.0),
            (0.3, 64, 1.0, 0.2),
            (2.0, 17, 0.99, 0.01),
            (0.7, 50, 0.0, 0.0),
            (1.0, 64, 1.0, 0.0),
        ]
        .iter()
        .enumerate()
        {
            settings.push(SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                seed: i as u64,
                ..Default::default()
            });
        }
        for (i, params) in settings.iter().enumerate() {
            for seed in 0..25u64 {
                let params = SamplingParams {
                    seed,
                    ..params.clone()
                };
                let mut whole = Sampler::new(params.clone());
                let mut picked_by_device = Sampler::new(params);
                let sel = whole
                    .device_selection(n_vocab)
                    .expect("these settings select on the device");
                let mut picked = Vec::new();
                for step in 0..6u64 {
                    let mut logits = lm_logits(seed * 977 + step, n_vocab);
                    // Ties at the top, a NaN-free row with an infinity now and then.
                    logits[(step as usize * 31) % n_vocab] = 11.75;
                    logits[(step as usize * 57 + 5) % n_vocab] = 11.75;
                    if step % 3 == 2 {
                        logits[4000] = f32::NEG_INFINITY;
                    }
                    let a = whole.sample(&logits, &[]);
                    sel.pick(&logits, &mut picked);
                    let b = picked_by_device.sample_candidates(&picked);
                    assert_eq!(a, b, "settings {i}, seed {seed}, step {step}");
                }
                assert_eq!(
                    whole.rng.next_u64(),
                    picked_by_device.rng.next_u64(),
                    "settings {i}, seed {seed}: random states"
                );
            }
        }
    }

    #[test]
    fn device_selection_asks_only_what_the_chain_needs() {
        let ask = |params: SamplingParams, n| Sampler::new(params).device_selection(n);
        assert_eq!(ask(SamplingParams::greedy(), 100), Some(Selection::Argmax));
        let default = SamplingParams::default();
        assert_eq!(ask(default.clone(), 1000), Some(Selection::TopK(40)));
        // Top-k keeping the whole vocabulary, off, or above the device's bound.
        assert_eq!(ask(default.clone(), 40), None);
        let top = |top_k| SamplingParams {
            top_k,
            ..default.clone()
        };
        assert_eq!(ask(top(0), 1000), None);
        assert_eq!(ask(top(MAX_DEVICE_TOP_K + 1), 1000), None);
        assert_eq!(ask(top(MAX_DEVICE_TOP_K), 1000), Some(Selection::TopK(64)));
        // Penalties change the row first, greedy or not.
        for penalised in [
            SamplingParams {
                repeat_penalty: 1.1,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..default.clone()
            },
            SamplingParams {
                frequency_penalty: 0.5,
                ..default.clone()
            },
        ] {
            assert_eq!(ask(penalised, 1000), None);
        }
    }

    #[test]
    fn full_vocabulary_cuts_match_their_definition() {
        // Top-k off: the cuts rank only what they need; the draw must still be a token the
        // sorted definition allows, and equal seeds draw equal tokens.
        let logits = lm_logits(5, 50_000);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        for (top_p, min_p) in [(0.9f32, 0.0f32), (1.0, 0.2), (0.5, 0.05), (1.0, 0.0)] {
            let params = SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p,
                min_p,
                seed: 11,
                ..Default::default()
            };
            let mut c = Vec::new();
            full_vocabulary(&logits, top_p, min_p, &mut c);
            if top_p < 1.0 {
                // A rank-order prefix whose mass reaches top_p, one shorter does not.
                let ids: Vec<usize> = c.iter().map(|c| c.id as usize).collect();
                assert_eq!(ids, order[..ids.len()]);
                let mass: f32 = c.iter().map(|c| c.value).sum();
                assert!(mass >= top_p * 0.999 && mass - c.last().unwrap().value < top_p);
            } else if min_p > 0.0 {
                let ids: Vec<usize> = c.iter().map(|c| c.id as usize).collect();
                assert_eq!(ids, order[..ids.len()]);
                let best = c[0].value;
                assert!(c.iter().all(|c| c.value >= best * min_p));
                assert!(logits[order[ids.len()]] < logits[ids[ids.len() - 1]]);
            } else {
                assert_eq!(c.len(), logits.len());
                let total: f32 = c.iter().map(|c| c.value).sum();
                assert!((total - 1.0).abs() < 1e-3);
            }
            let run = || {
                let mut s = Sampler::new(params.clone());
                (0..20).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
            };
            assert_eq!(run(), run());
        }
    }

    #[test]
    fn greedy_picks_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn seed_makes_runs_reproducible_and_top_k_limits_choices() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..Default::default()
        };
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params.clone()
            });
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let mut sorted: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i as u32))
            .collect();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let top5: Vec<u32> = sorted[..5].iter().map(|x| x.1).collect();
        assert!(run(7).iter().all(|id| top5.contains(id)));
    }

    #[test]
    fn repeat_penalty_steers_greedy_away_from_seen_tokens() {
        let params = SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        assert_eq!(s.sample(&[1.0, 1.5, 0.2], &[1]), 0);
    }

    #[test]
    fn frequency_penalty_counts_repeats_and_presence_does_not() {
        // Token 0 seen three times, token 1 once; 0 leads 1 by 0.5 and 2 by 1.
        let logits = [10.0, 9.5, 9.0];
        let history = [0, 0, 1, 0];
        let greedy = |frequency_penalty, presence_penalty| {
            Sampler::new(SamplingParams {
                temperature: 0.0,
                frequency_penalty,
                presence_penalty,
                ..Default::default()
            })
            .sample(&logits, &history)
        };
        // Presence: 9.7 and 9.2, the leader keeps its lead.
        assert_eq!(greedy(0.0, 0.3), 0);
        // Frequency: 10 - 3 * 0.3 = 9.1 against 9.5 - 0.3 = 9.2.
        assert_eq!(greedy(0.3, 0.0), 1);
        // Both: 10 - 1.2 - 0.5 = 8.3, 9.5 - 0.4 - 0.5 = 8.6, the unseen token's 9.0 wins.
        assert_eq!(greedy(0.4, 0.5), 2);
        // Only the last `penalty_last_n` tokens count.
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 0.3,
            penalty_last_n: 1,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &history), 0);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        let logits = [5.0, 4.9, -10.0, -10.0];
        for _ in 0..100 {
            assert!(s.sample(&logits, &[]) < 2);
        }
    }
}
