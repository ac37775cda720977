//! Tiny mixture-of-experts models (qwen3moe; qwen2moe, whose raw routing weights and sigmoid-gated
//! shared expert a mistake would move far; and mixtral: a llama file with experts), written by
//! `llmd make-model` with a fixed seed and run on the CPU backend: the logits at every position
//! of a fixed token sequence must be within a small tolerance of llama.cpp's, the argmax the same
//! wherever llama.cpp's best two logits are not near-tied, and the greedy continuation of a
//! short prompt the same up to llama.cpp's first near-tie (fixture made by
//! scripts/gen-moe-logits.py with the llama.cpp reference build). A routing that differed from
//! llama.cpp's (top-k, normalisation, the weighted sum) moves logits far beyond the tolerance.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::llama_cpp_logits::{
    compare_greedy_within, compare_logits, cpu_greedy, cpu_logits, read_f32, NEAR_TIE,
};
use serde_json::Value;

/// Largest allowed |ours - llama.cpp| for a logit, relative to the spread of that position's
/// logits, by weight type (as tiny_vs_llama_cpp.rs: f32 differs only in summation order and
/// exp; quantized activations may move a quantized value by one step).
fn tolerance(ty: &str) -> f32 {
    match ty {
        "f32" => 2e-3,
        _ => 3e-2,
    }
}

/// The top-1 margin (fraction of the step's spread) below which llama.cpp's greedy step counts
/// as a near-tie, by weight type. With f32 weights the logits agree within 2e-4 of the spread
/// (seen), so a margin of 1e-3 cannot flip; the tiny random models' margins are often below the
/// general [`NEAR_TIE`], which would leave almost nothing to compare.
fn near_tie(ty: &str) -> f64 {
    match ty {
        "f32" => 1e-3,
        _ => NEAR_TIE,
    }
}

/// Greedy tokens the f32 cases must agree on at least (their first near-ties, from the fixture,
/// come later), so the comparison cannot pass vacuously.
const MIN_F32_GREEDY: usize = 8;

fn fixture_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/moe"
    ))
}

fn meta() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("models.json")).expect("models.json"),
    )
    .expect("models.json is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// Writes case `name`'s model into `dir` with make-model.
fn make_model(dir: &Path, name: &str, meta: &Value) -> PathBuf {
    let info = &meta["models"][name];
    let file = dir.join(format!("{name}.gguf"));
    let out = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["make-model", "--arch", info["arch"].as_str().expect("arch")])
        .args(["--preset", meta["preset"].as_str().expect("preset")])
        .args(["--type", info["type"].as_str().expect("type")])
        .args(["--seed", &meta["seed"].to_string()])
        .arg("-o")
        .arg(&file)
        .output()
        .expect("run llmd make-model");
    assert!(
        out.status.success(),
        "make-model failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

#[test]
fn tiny_moe_models_match_llama_cpp_logits_and_greedy() {
    let meta = meta();
    let names: Vec<String> = meta["models"]
        .as_object()
        .expect("models")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        names.len(),
        7,
        "qwen3moe x3 types, qwen2moe x2 types, mixtral x2 types"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for name in &names {
        let info = &meta["models"][name.as_str()];
        let file = make_model(dir.path(), name, &meta);
        let n_vocab = info["n_vocab"].as_u64().expect("n_vocab") as usize;
        let n_ctx = info["n_ctx"].as_u64().expect("n_ctx") as usize;
        let tokens = ids(&info["tokens"]);
        let reference = read_f32(&fixture_dir().join(format!("{name}.logits.f32")));
        assert_eq!(reference.len(), tokens.len() * n_vocab);
        let logits = cpu_logits(&file, &tokens, n_vocab, n_ctx);
        let tol = tolerance(info["type"].as_str().expect("type"));
        let worst = compare_logits(name, &logits, &reference, n_vocab, tol);

        let prompt = ids(&info["greedy_prompt"]);
        let theirs = ids(&info["greedy"]);
        let margins: Vec<f64> = info["greedy_margins"]
            .as_array()
            .expect("margins")
            .iter()
            .map(|m| m.as_f64().expect("margin"))
            .collect();
        let ours = cpu_greedy(&file, &prompt, theirs.len(), n_ctx);
        let ty = info["type"].as_str().expect("type");
        let same = compare_greedy_within(name, &ours, &theirs, &margins, near_tie(ty));
        if ty == "f32" {
            assert!(
                same >= MIN_F32_GREEDY,
                "{name}: only {same} greedy tokens compared"
            );
        }
        println!(
            "{name}: worst |diff| / spread = {worst:.5} over {} positions; greedy equal for \
             {same} tokens (llama.cpp's first near-tie)",
            tokens.len()
        );
    }
}
