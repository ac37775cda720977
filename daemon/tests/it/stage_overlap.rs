//! Stage overlap (issue 18): a step of several sequences over two stages runs as micro-batches
//! the stages work on at once (`Pipeline::forward`), and must decode the tokens the whole batch
//! decodes. Greedy decoding of 2 to 4 sequences on a tiny Llama split 1,1, with overlap and
//! without (`Pipeline::with_stage_overlap`: `Always` against `Off`; decode steps are below
//! `Auto`'s threshold): on two CPU stages here, and on the strict
//! fake driver over `cuda:0 + cuda:1` and `cuda:0 + cpu`, where the driver's counters per step
//! are printed for both and the host synchronisations held to the step's one read-back when the
//! stages hand over device to device.

use std::collections::BTreeMap;

use llmd::model::{Batch, Pipeline, SeqId, StageBackend, StageOverlap};
use llmd_testkit::fake_cuda::{is_child, stats};

use crate::gpu::{require_cuda, run_on_fake_driver};
use crate::gpu_check::{cpu, gpu_on, make, pipeline};

/// Decode steps after the prompts.
const STEPS: usize = 8;
/// Sequence counts decoded together.
const SEQUENCES: [usize; 3] = [2, 3, 4];

/// The index of the largest of `row`.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The fake driver's counters (empty on the CPU).
fn counters() -> BTreeMap<String, i64> {
    if is_child() {
        stats()
    } else {
        BTreeMap::new()
    }
}

/// Greedy tokens of `n` sequences (each prompted on its own, with prompts of different
/// lengths) decoded together for [`STEPS`] steps, and the driver's counters per step after the
/// first decode step (launches, host synchronisations).
fn decode(p: &mut Pipeline, n: usize) -> (Vec<Vec<u32>>, BTreeMap<String, f64>) {
    let n_vocab = p.config().n_vocab;
    let seqs: Vec<SeqId> = (1..=n as SeqId).collect();
    let mut next = Vec::new();
    let mut logits = Vec::new();
    let mut batch = Batch::default();
    for &seq in &seqs {
        let prompt = 3 + seq as usize;
        p.add_sequence(seq, prompt + STEPS + 1).expect("KV caches");
        batch.clear();
        for i in 0..prompt {
            let token = ((i * 7919 + seq as usize * 131 + 13) % n_vocab) as u32;
            batch.push(token, i as u32, seq, i + 1 == prompt);
        }
        p.forward(&batch, &mut logits).expect("prompt");
        next.push(argmax(&logits[..n_vocab]));
    }
    let mut out: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    let mut before = BTreeMap::new();
    for step in 0..STEPS {
        if step == 1 {
            before = counters();
        }
        batch.clear();
        for (j, &seq) in seqs.iter().enumerate() {
            let pos = 3 + seq as usize + step;
            batch.push(next[j], pos as u32, seq, true);
        }
        p.forward(&batch, &mut logits).expect("decode step");
        assert_eq!(logits.len(), n * n_vocab, "one row of logits per sequence");
        for j in 0..n {
            next[j] = argmax(&logits[j * n_vocab..(j + 1) * n_vocab]);
            out[j].push(next[j]);
        }
    }
    let after = counters();
    for &seq in &seqs {
        p.remove_sequence(seq);
    }
    let per_step = ["launches", "host_syncs", "h2d_copies"]
        .iter()
        .map(|&k| {
            let d = after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
            (k.to_string(), d as f64 / (STEPS - 1) as f64)
        })
        .collect();
    (out, per_step)
}

/// Decodes on `backends` with overlap and without; asserts equal tokens and returns the
/// counters per step (with, without) for each sequence count.
fn compare(what: &str, backends: &[StageBackend]) -> Vec<(usize, [BTreeMap<String, f64>; 2])> {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = make(dir.path(), "llama", "q4_k", &["--layers", "4"]);
    let mut with = pipeline(&model, backends).with_stage_overlap(StageOverlap::Always);
    let mut without = pipeline(&model, backends).with_stage_overlap(StageOverlap::Off);
    let mut out = Vec::new();
    for n in SEQUENCES {
        let (a, ca) = decode(&mut with, n);
        let (b, cb) = decode(&mut without, n);
        assert_eq!(a, b, "{what}, {n} sequences: overlap changed the tokens");
        println!(
            "{what}, {n} sequences: tokens equal; per step with overlap {ca:?}, without {cb:?}"
        );
        out.push((n, [ca, cb]));
    }
    out
}

#[test]
fn overlapped_stages_decode_the_same_tokens_on_the_cpu() {
    compare("cpu + cpu", &[cpu("cpu:0"), cpu("cpu:1")]);
}

#[test]
fn overlapped_stages_on_the_fake_driver() {
    run_on_fake_driver(
        "stage_overlap::overlapped_gpu_stages_decode_the_same_tokens",
        &[("LLMD_FAKE_CUDA_DEVICES", "2")],
        "overlap kept the tokens",
    );
}

/// The same on GPU stages: two GPUs handing over device to device, and a GPU before a CPU
/// stage (through the host).
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn overlapped_gpu_stages_decode_the_same_tokens() {
    require_cuda();
    let second = usize::from(llmd_kernels::backend::cuda_available().is_ok_and(|n| n > 1));
    for (n, [with, _]) in compare(
        "cuda:0 + cuda:1",
        &[gpu_on("cuda:0", 0), gpu_on("cuda:1", second)],
    ) {
        // Device to device: the logits' read-back is the step's one host synchronisation.
        if is_child() {
            assert!(
                with["host_syncs"] <= 1.0 + 1e-9,
                "{n} sequences: {} host syncs per step with overlap",
                with["host_syncs"]
            );
        }
    }
    compare("cuda:0 + cpu", &[gpu_on("cuda:0", 0), cpu("cpu:0")]);
    println!("overlap kept the tokens");
}
