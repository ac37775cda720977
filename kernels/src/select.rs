//! Picking the best entries of a logit vector without sorting it: the plain argmax of greedy
//! decoding, and the `k` best candidates in rank order for the sampler's top-k / top-p cuts.
//! The host's one copy of these rules: the daemon's sampler uses it on full logits rows, the CPU
//! backend's [`crate::backend::Backend::select`] uses it on its logits, and the CUDA kernels
//! (`kernels/cuda/select.cu`) are tested equal to it.
//!
//! Rank order is the one a stable descending sort by [`f32::total_cmp`] gives: larger values
//! first, equal values by ascending id. Both functions scan the vector once, skipping blocks of
//! [`SCAN_BLOCK`] values that cannot enter the result with one vectorizable comparison of their
//! ordering keys, so a 262k-entry vocabulary costs one streaming pass.
//!
//! A device selection ([`Selection`]) hands its candidates back as pairs of f32 values (the
//! value, then the id's bits: [`CANDIDATE_FLOATS`]), which [`decode_candidates`] reads.

use std::cmp::Ordering;

/// Most candidates a device selection returns per row ([`Selection::TopK`]): above llama.cpp's
/// default top-k of 40 and the common 50, so default sampling selects on the device, while
/// the selection's cost (k rounds of a block-wide arg-max per chunk of a row, then k over the
/// chunks' candidates) and its read-back (8 bytes a candidate: 512 per row) stay small. A
/// sampler asking more reads full logits rows.
pub const MAX_DEVICE_TOP_K: usize = 64;

/// f32 values per candidate in a device selection's output: the value, then the id's bits.
pub const CANDIDATE_FLOATS: usize = 2;

/// What a selection over logits rows picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The one entry [`argmax`] picks (greedy decoding: first index on ties, NaN never wins
    /// unless the first value is NaN).
    Argmax,
    /// The `k` best entries in rank order, as [`top_k`] picks them (`1..=MAX_DEVICE_TOP_K`).
    TopK(usize),
}

impl Selection {
    /// Candidates it picks per row.
    pub fn k(self) -> usize {
        match self {
            Selection::Argmax => 1,
            Selection::TopK(k) => k,
        }
    }

    /// Fails unless it can pick from rows of `n` values: `k` in `1..=MAX_DEVICE_TOP_K` and at
    /// most `n` (and `n` fits a u32 id).
    pub fn check(self, n: usize) -> Result<(), String> {
        let k = self.k();
        if k == 0 || k > MAX_DEVICE_TOP_K || k > n || u32::try_from(n).is_err() {
            return Err(format!(
                "{self:?} over rows of {n} values (k must be 1..={MAX_DEVICE_TOP_K} and at most \
                 the row)"
            ));
        }
        Ok(())
    }

    /// Its candidates of one row of `values`, into `out` (cleared first).
    pub fn pick(self, values: &[f32], out: &mut Vec<Candidate>) {
        match self {
            Selection::Argmax => {
                out.clear();
                if !values.is_empty() {
                    let id = argmax(values);
                    out.push(Candidate {
                        id,
                        value: values[id as usize],
                    });
                }
            }
            Selection::TopK(k) => top_k(values, k, out),
        }
    }
}

/// `sel`'s candidates of each of the `m` rows of `n` values of `values`, written to `out` as
/// [`CANDIDATE_FLOATS`] values each, `sel.k()` per row (the host version of the device op;
/// `sel` checked against `n` by the caller).
pub fn select_rows(values: &[f32], m: usize, n: usize, sel: Selection, out: &mut [f32]) {
    let k = sel.k();
    let mut picked = Vec::with_capacity(k);
    for (row, dst) in values
        .chunks_exact(n.max(1))
        .take(m)
        .zip(out.chunks_exact_mut(k * CANDIDATE_FLOATS))
    {
        sel.pick(row, &mut picked);
        for (c, slot) in picked.iter().zip(dst.chunks_exact_mut(CANDIDATE_FLOATS)) {
            slot[0] = c.value;
            slot[1] = f32::from_bits(c.id);
        }
    }
}

/// The candidates a device selection wrote ([`CANDIDATE_FLOATS`] values each), appended to
/// `out`.
pub fn decode_candidates(raw: &[f32], out: &mut Vec<Candidate>) {
    out.extend(raw.chunks_exact(CANDIDATE_FLOATS).map(|c| Candidate {
        id: c[1].to_bits(),
        value: c[0],
    }));
}

/// Values compared at once when scanning for candidates: a block whose largest key does not beat
/// the current cut-off is skipped as a whole (16 f32 lanes: one AVX-512 or two AVX2 registers).
const SCAN_BLOCK: usize = 16;

/// A token candidate: id and logit (later probability).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The token id.
    pub id: u32,
    /// Its logit, then its probability as the sampler's chain goes on.
    pub value: f32,
}

/// Rank order: `Less` when `a` comes first (larger value, then smaller id).
fn ranks_before(a: &Candidate, b: &Candidate) -> Ordering {
    b.value.total_cmp(&a.value).then(a.id.cmp(&b.id))
}

/// The key of `v` whose signed integer order is [`f32::total_cmp`]'s order.
#[inline(always)]
fn key(v: f32) -> i32 {
    let bits = v.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The largest key of a block (vectorizes: a lane-wise max of integers).
#[inline(always)]
fn block_max_key(block: &[f32]) -> i32 {
    block.iter().fold(i32::MIN, |m, &v| m.max(key(v)))
}

/// The index of the largest value, the first one on ties, as llama.cpp's greedy sampler; values
/// that are NaN never win (and a NaN first value wins, as a `>` scan from it would keep it).
pub fn argmax(values: &[f32]) -> u32 {
    let Some(&first) = values.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    // Lane-wise maxima (the compiler turns this into SIMD max operations), then the first index
    // holding the maximum.
    let mut lanes = [f32::NEG_INFINITY; SCAN_BLOCK];
    let mut blocks = values.chunks_exact(SCAN_BLOCK);
    for block in &mut blocks {
        for (m, &v) in lanes.iter_mut().zip(block) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut best = lanes.iter().fold(first, |m, &v| if v > m { v } else { m });
    for &v in blocks.remainder() {
        if v > best {
            best = v;
        }
    }
    values.iter().position(|&v| v == best).unwrap_or(0) as u32
}

/// Fills `out` with the `k` best entries of `values` (ids are indices) in rank order, using
/// `out` as the working buffer; fewer when `values` is shorter. Equal to sorting every entry in
/// rank order and keeping the first `k`, without the sort.
pub fn top_k(values: &[f32], k: usize, out: &mut Vec<Candidate>) {
    out.clear();
    let k = k.min(values.len());
    if k == 0 {
        return;
    }
    // Collect candidates until the buffer holds `cap`, then keep the best `k`: from then on a
    // value must beat the k-th best's key to enter (a later id loses a tie).
    let cap = (2 * k).max(4 * SCAN_BLOCK);
    let mut cutoff: Option<i32> = None;
    let mut base = 0;
    for block in values.chunks(SCAN_BLOCK) {
        if cutoff.is_none_or(|c| block_max_key(block) > c) {
            for (i, &v) in block.iter().enumerate() {
                if cutoff.is_some_and(|c| key(v) <= c) {
                    continue;
                }
                out.push(Candidate {
                    id: (base + i) as u32,
                    value: v,
                });
                if out.len() == cap {
                    out.select_nth_unstable_by(k - 1, ranks_before);
                    out.truncate(k);
                    cutoff = Some(key(out[k - 1].value));
                }
            }
        }
        base += block.len();
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, ranks_before);
        out.truncate(k);
    }
    sort_ranked(out);
}

/// Sorts candidates in rank order (ids are distinct, so the order is total).
pub fn sort_ranked(candidates: &mut [Candidate]) {
    candidates.sort_unstable_by(ranks_before);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: every entry sorted in rank order (stable sort, so ties keep id order).
    fn sorted_prefix(values: &[f32], k: usize) -> Vec<Candidate> {
        let mut all: Vec<Candidate> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Candidate {
                id: i as u32,
                value: v,
            })
            .collect();
        all.sort_by(|a, b| b.value.total_cmp(&a.value));
        all.truncate(k);
        all
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *seed >> 33
    }

    #[test]
    fn top_k_equals_the_sorted_prefix() {
        let mut seed = 7;
        let mut out = Vec::new();
        for n in [0usize, 1, 5, 16, 17, 100, 1000, 5003] {
            // Few distinct values (many ties), signed zeros and infinities included.
            let values: Vec<f32> = (0..n)
                .map(|_| match lcg(&mut seed) % 23 {
                    0 => -0.0,
                    1 => 0.0,
                    2 => f32::NEG_INFINITY,
                    3 => f32::INFINITY,
                    r => (r as f32 - 11.0) * 0.5,
                })
                .collect();
            for k in [1usize, 2, 3, 40, 64, 65, 999, 6000] {
                top_k(&values, k, &mut out);
                assert_eq!(out, sorted_prefix(&values, k), "n {n} k {k}");
            }
        }
    }

    #[test]
    fn top_k_on_random_logits() {
        let mut seed = 99;
        let mut out = Vec::new();
        let values: Vec<f32> = (0..70_000)
            .map(|_| (lcg(&mut seed) % 100_000) as f32 * 1e-3 - 50.0)
            .collect();
        for k in [1usize, 10, 40, 1000] {
            top_k(&values, k, &mut out);
            assert_eq!(out, sorted_prefix(&values, k));
        }
    }

    #[test]
    fn selected_rows_round_trip_through_their_encoding() {
        let mut seed = 5;
        let (m, n) = (3, 777);
        let values: Vec<f32> = (0..m * n).map(|_| (lcg(&mut seed) % 40) as f32).collect();
        for sel in [Selection::Argmax, Selection::TopK(1), Selection::TopK(64)] {
            sel.check(n).expect("valid");
            let mut raw = vec![0.0; m * sel.k() * CANDIDATE_FLOATS];
            select_rows(&values, m, n, sel, &mut raw);
            let mut got = Vec::new();
            decode_candidates(&raw, &mut got);
            let mut want = Vec::new();
            for row in values.chunks(n) {
                let mut one = Vec::new();
                sel.pick(row, &mut one);
                want.extend(one);
            }
            assert_eq!(got, want, "{sel:?}");
        }
        assert!(Selection::TopK(0).check(10).is_err());
        assert!(Selection::TopK(MAX_DEVICE_TOP_K + 1).check(1000).is_err());
        assert!(Selection::TopK(11).check(10).is_err());
        assert!(Selection::Argmax.check(0).is_err());
    }

    #[test]
    fn argmax_is_the_first_maximum() {
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut v = vec![0.0f32; 1000];
        v[517] = 2.0;
        v[900] = 2.0;
        assert_eq!(argmax(&v), 517);
        v[3] = f32::NAN;
        assert_eq!(argmax(&v), 517);
        v[0] = f32::NAN;
        assert_eq!(argmax(&v), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), 0);
        let mut seed = 3;
        for _ in 0..50 {
            let v: Vec<f32> = (0..333).map(|_| (lcg(&mut seed) % 50) as f32).collect();
            let mut best = 0;
            for (i, &x) in v.iter().enumerate() {
                if x > v[best] {
                    best = i;
                }
            }
            assert_eq!(argmax(&v), best as u32);
        }
    }
}
