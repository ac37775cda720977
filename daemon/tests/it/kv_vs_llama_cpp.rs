//! Quantized KV caches against llama.cpp's: tiny random models of every architecture, written by
//! `llmd make-model` with a fixed seed, run on the CPU backend with Q8_0, Q4_0 and mixed caches.
//! The fixture (scripts/gen-kv-logits.py, llama.cpp with `type_k`/`type_v` and flash attention,
//! which a quantized V cache needs) holds llama.cpp's logits at every position of a prompt
//! evaluated as one batch, then its greedy continuation decoded one token at a time with the
//! logits of each step; llama.cpp rotates the keys and values of a quantized cache (and the
//! queries and outputs) by a Walsh-Hadamard matrix before quantizing, as llmd does. llmd's
//! logits must be within the tolerances of `tiny_vs_llama_cpp`
//! (relative to each position's spread), and its own greedy tokens the same as llama.cpp's until
//! the first step where llama.cpp's best two logits are nearly tied.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use llmd::engine::sampler::argmax;
use llmd::model::load::{build_pipeline, OpenedModel, StageSpec};
use llmd::model::Batch;
use llmd::model::StageBackend;
use llmd_kernels::backend::{CpuBackend, DeviceMemory, KvType, KvTypes};
use llmd_kernels::cpu::ThreadPool;
use serde_json::Value;

/// Largest allowed |ours - llama.cpp| for a logit, relative to the spread (max - min) of that
/// step's logits, by weight type: `tiny_vs_llama_cpp`'s. With f32 weights the caches hold the
/// same quantized values on both sides (the same quantizers on nearly the same activations), so
/// what remains is summation order and exp/tanh; a Q8_0 cache alone moves logits by about
/// 5e-3 of the spread from an f16 cache's and Q4_0 by about 0.1, so these tolerances tell the
/// types apart.
fn tolerance(ty: &str) -> f32 {
    match ty {
        "f32" => 2e-3,
        _ => 3e-2,
    }
}

fn fixture_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kv"))
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// The largest |ours - theirs| over one step's logits, and their spread.
fn diff(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    let (lo, hi) = theirs
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let max = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    (max, (hi - lo).max(1e-6))
}

/// Whether llama.cpp's best two logits are closer than two tolerances of the spread.
fn near_tie(theirs: &[f32], tol: f32, spread: f32) -> bool {
    let mut sorted = theirs.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted[1] <= 2.0 * tol * spread
}

/// Checks one model: `Ok` with a summary line, or `Err` with the first disagreement.
fn check_model(name: &str, meta: &Value) -> Result<String, String> {
    let info = &meta["models"][name];
    let field = |k: &str| info[k].as_str().unwrap_or_else(|| panic!("{name}: {k}"));
    let (arch, ty) = (field("arch"), field("type"));
    let types = KvTypes {
        k: field("cache_type_k").parse::<KvType>().expect("K type"),
        v: field("cache_type_v").parse::<KvType>().expect("V type"),
    };
    let tol = tolerance(ty);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{name}.gguf"));
    let made = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["make-model", "--arch", arch])
        .args(["--preset", meta["preset"].as_str().expect("preset")])
        .args(["--type", ty, "--seed", &meta["seed"].to_string(), "-o"])
        .arg(&file)
        .output()
        .expect("run llmd make-model");
    assert!(
        made.status.success(),
        "make-model failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let prompt = ids(&info["tokens"]);
    let greedy = ids(&info["greedy"]);
    let n_vocab = info["n_vocab"].as_u64().expect("n_vocab") as usize;
    let reference = read_f32(&fixture_dir().join(format!("{name}.logits.f32")));
    assert_eq!(reference.len(), (prompt.len() + greedy.len()) * n_vocab);
    let rows: Vec<&[f32]> = reference.chunks_exact(n_vocab).collect();

    let model = OpenedModel::open(&file).expect("open tiny model");
    let backend = StageBackend::Cpu(Arc::new(CpuBackend::new(
        "cpu:0",
        DeviceMemory::new(u64::MAX),
        Arc::new(ThreadPool::new(2).expect("threads")),
    )));
    let stages = vec![StageSpec {
        backend,
        layers: 0..model.config.n_layer,
        head: true,
    }];
    let mut p = build_pipeline(&model, stages, 64, prompt.len(), |_, _| {})
        .expect("pipeline")
        .with_kv_types(types);
    p.add_sequence(1, prompt.len() + greedy.len()).expect("kv");

    // The prompt as one batch (prefill), every position's logits.
    let mut batch = Batch::default();
    for (i, &t) in prompt.iter().enumerate() {
        batch.push(t, i as u32, 1, true);
    }
    let mut logits = Vec::new();
    p.forward(&batch, &mut logits).expect("prefill");
    let mut worst = 0.0f32;
    for (pos, (ours, theirs)) in logits.chunks_exact(n_vocab).zip(&rows).enumerate() {
        let (max, spread) = diff(ours, theirs);
        worst = worst.max(max / spread);
        if max > tol * spread {
            return Err(format!(
                "{name} prompt position {pos}: max |diff| {max} exceeds {tol} of the spread \
                 {spread}"
            ));
        }
    }

    // Then greedy decoding one token at a time, on our own tokens.
    let mut last = logits[(prompt.len() - 1) * n_vocab..].to_vec();
    let mut agreed = 0;
    for (step, &want) in greedy.iter().enumerate() {
        let theirs = rows[prompt.len() - 1 + step];
        let (_, spread) = diff(&last, theirs);
        let token = argmax(&last) as u32;
        if token != want {
            if !near_tie(theirs, tol, spread) {
                return Err(format!(
                    "{name} step {step}: greedy token {token}, llama.cpp's {want} without a \
                     near-tie"
                ));
            }
            break;
        }
        agreed += 1;
        let mut batch = Batch::default();
        batch.push(token, (prompt.len() + step) as u32, 1, true);
        p.forward(&batch, &mut logits).expect("decode");
        let (max, spread) = diff(&logits, rows[prompt.len() + step]);
        worst = worst.max(max / spread);
        if max > tol * spread {
            return Err(format!(
                "{name} decode step {step}: max |diff| {max} exceeds {tol} of the spread {spread}"
            ));
        }
        last.clone_from(&logits);
    }
    Ok(format!(
        "{name}: worst |diff| / spread = {worst:.2e}; greedy tokens agree for {agreed} of {}",
        greedy.len()
    ))
}

#[test]
fn quantized_kv_caches_match_llama_cpp_logits_and_greedy_tokens() {
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("models.json")).expect("models.json"),
    )
    .expect("models.json is JSON");
    let names: Vec<String> = meta["models"]
        .as_object()
        .expect("models")
        .keys()
        .cloned()
        .collect();
    let covered = |k: &str, v: &str| names.iter().any(|n| n.ends_with(&format!("-k{k}-v{v}")));
    assert!(
        covered("q8_0", "q8_0") && covered("q4_0", "q4_0") && names.len() >= 8,
        "every architecture with q8_0 and q4_0 caches: {names:?}"
    );
    let mut failures = Vec::new();
    for name in &names {
        match check_model(name, &meta) {
            Ok(summary) => println!("{summary}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
