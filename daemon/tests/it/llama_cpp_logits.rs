//! Shared by the tests that compare llmd's logits with llama.cpp's (tiny_vs_llama_cpp.rs,
//! quant_types_vs_llama_cpp.rs): running a model file through the CPU backend, and comparing
//! logits position by position.

// Each test binary that includes this module uses a part of it.

use std::path::Path;
use std::sync::Arc;

use llmd::engine::sampler::argmax;
use llmd::model::load::{build_pipeline, OpenedModel, StageSpec};
use llmd::model::Batch;
use llmd::model::StageBackend;
use llmd_kernels::backend::{CpuBackend, DeviceMemory};
use llmd_kernels::cpu::ThreadPool;

/// The f32 values of a little-endian file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The logits of every position of `tokens` (one sequence, one batch) on the CPU backend, for a
/// model loaded with context `n_ctx` (as llama.cpp ran it: it picks Phi-3's rope factors).
pub fn cpu_logits(file: &Path, tokens: &[u32], n_vocab: usize, n_ctx: usize) -> Vec<f32> {
    let model = OpenedModel::open(file)
        .expect("open model")
        .with_context(n_ctx);
    assert_eq!(model.config.n_vocab, n_vocab);
    let pool = Arc::new(ThreadPool::new(2).expect("threads"));
    let backend = StageBackend::Cpu(Arc::new(CpuBackend::new(
        "cpu:0",
        DeviceMemory::new(u64::MAX),
        pool,
    )));
    let stages = vec![StageSpec {
        backend,
        layers: 0..model.config.n_layer,
        head: true,
    }];
    let mut p = build_pipeline(&model, stages, 64, tokens.len(), |_, _| {}).expect("pipeline");
    p.add_sequence(1, tokens.len()).expect("kv");
    let mut batch = Batch::default();
    for (i, &t) in tokens.iter().enumerate() {
        batch.push(t, i as u32, 1, true);
    }
    let mut logits = Vec::new();
    p.forward(&batch, &mut logits).expect("forward");
    logits
}

/// A top-1 margin below this fraction of the step's logit spread is a near-tie: past the first
/// one, llama.cpp's greedy continuation may fairly differ from ours.
pub const NEAR_TIE: f64 = 0.005;

/// Free-running greedy continuation of `prompt` (`n` tokens) on the CPU backend, for a model
/// loaded with context `n_ctx`.
pub fn cpu_greedy(file: &Path, prompt: &[u32], n: usize, n_ctx: usize) -> Vec<u32> {
    let model = OpenedModel::open(file)
        .expect("open model")
        .with_context(n_ctx);
    let pool = Arc::new(ThreadPool::new(2).expect("threads"));
    let backend = StageBackend::Cpu(Arc::new(CpuBackend::new(
        "cpu:0",
        DeviceMemory::new(u64::MAX),
        pool,
    )));
    let stages = vec![StageSpec {
        backend,
        layers: 0..model.config.n_layer,
        head: true,
    }];
    let mut p = build_pipeline(&model, stages, 64, 1, |_, _| {}).expect("pipeline");
    p.add_sequence(1, prompt.len() + n).expect("kv");
    let mut logits = Vec::new();
    let mut batch = Batch::default();
    for (i, &t) in prompt.iter().enumerate() {
        batch.push(t, i as u32, 1, i + 1 == prompt.len());
    }
    p.forward(&batch, &mut logits).expect("forward");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = argmax(&logits);
        out.push(t);
        let mut batch = Batch::default();
        batch.push(t, (prompt.len() + i) as u32, 1, true);
        p.forward(&batch, &mut logits).expect("forward");
    }
    out
}

/// Checks our greedy continuation against llama.cpp's up to its first near-tie (see
/// [`NEAR_TIE`]; `margins` are llama.cpp's top-1 margins over each step's spread). Returns how
/// many tokens were compared.
pub fn compare_greedy(name: &str, ours: &[u32], theirs: &[u32], margins: &[f64]) -> usize {
    compare_greedy_within(name, ours, theirs, margins, NEAR_TIE)
}

/// [`compare_greedy`] with a near-tie of `near_tie` (a fraction of each step's spread), for
/// models whose logits are known to agree more tightly than [`NEAR_TIE`] assumes.
pub fn compare_greedy_within(
    name: &str,
    ours: &[u32],
    theirs: &[u32],
    margins: &[f64],
    near_tie: f64,
) -> usize {
    let first_tie = margins
        .iter()
        .position(|&m| m < near_tie)
        .unwrap_or(theirs.len());
    assert_eq!(
        ours[..first_tie],
        theirs[..first_tie],
        "{name}: greedy continuation differs before llama.cpp's first near-tie (step {first_tie})"
    );
    first_tie
}

/// Checks `ours` against llama.cpp's `theirs` (`n_vocab` logits per position): every logit
/// within `tol` of its position's spread (max - min), and the same argmax wherever llama.cpp's
/// best two logits are more than twice that apart. Returns the worst |diff| / spread.
pub fn compare_logits(name: &str, ours: &[f32], theirs: &[f32], n_vocab: usize, tol: f32) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{name}: logit count");
    let mut worst = 0.0f32;
    for (pos, (ours, theirs)) in ours
        .chunks_exact(n_vocab)
        .zip(theirs.chunks_exact(n_vocab))
        .enumerate()
    {
        let (lo, hi) = theirs
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let spread = (hi - lo).max(1e-6);
        let max_diff = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(max_diff / spread);
        assert!(
            max_diff <= tol * spread,
            "{name} position {pos}: max |diff| {max_diff} exceeds {tol} of the spread {spread}"
        );
        let mut sorted: Vec<f32> = theirs.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 2.0 * tol * spread {
            assert_eq!(
                argmax(ours),
                argmax(theirs),
                "{name} position {pos}: argmax differs"
            );
        }
    }
    worst
}
