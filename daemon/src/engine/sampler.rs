//! Choosing the next token from logits: greedy, or llama.cpp's default chain of penalties,
//! top-k, top-p, min-p, temperature and a seeded draw, so that a seed makes a run reproducible.

use serde::{Deserialize, Serialize};

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
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
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

/// A token candidate: id and logit (later probability).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    value: f32,
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
}

/// The index of the largest value (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler with these settings.
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
        }
    }

    /// Picks the next token given the logits and the tokens so far (prompt and generated).
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
        // Sort by logit, descending (stable, so ties keep id order).
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
        // Temperature on the surviving tokens' log-probabilities, then a draw.
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
