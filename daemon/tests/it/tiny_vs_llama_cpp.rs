//! Tiny random models of every supported architecture (llama, qwen2, qwen3, gemma2, gemma3,
//! phi3) and rope scaling (Llama 3.1's frequency factors, linear on llama and on Gemma 3's
//! global layers, YaRN past the original context, Phi-3's long and short factors, a
//! Mistral-shaped llama) and Gemma 2's soft-caps, written by `llmd make-model` with a fixed
//! seed, run on the CPU backend: the logits at every position of a fixed token sequence must be
//! within a small tolerance of llama.cpp's (fixture made by scripts/gen-tiny-logits.py with the
//! llama.cpp reference build from the llama-cpp-python package), and the argmax the same
//! wherever llama.cpp's best two logits are not near-tied. Each case loads with the context
//! llama.cpp ran with, which picks Phi-3's long or short factors.

use std::path::Path;
use std::process::Command;

use crate::llama_cpp_logits::{compare_logits, cpu_logits, read_f32};
use serde_json::Value;

/// Largest allowed |ours - llama.cpp| for a logit, relative to the spread (max - min) of that
/// position's logits, by weight type. With f32 weights only summation order, the f16 KV cache
/// and exp/tanh implementations differ (seen: below 5e-4); with Q8_0 weights a rounding
/// difference in an activation can move a quantized value by one step (seen: below 1.2e-2).
fn tolerance(ty: &str) -> f32 {
    match ty {
        "f32" => 2e-3,
        _ => 3e-2,
    }
}

fn fixture_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny"
    ))
}

fn check_model(name: &str, meta: &Value) {
    let info = &meta["models"][name];
    let (arch, ty) = (
        info["arch"].as_str().expect("arch"),
        info["type"].as_str().expect("type"),
    );
    let tol = tolerance(ty);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{name}.gguf"));
    let extra: Vec<&str> = info["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("argument"))
        .collect();
    let status = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args([
            "make-model",
            "--arch",
            arch,
            "--preset",
            meta["preset"].as_str().expect("preset"),
        ])
        .args(["--type", ty, "--seed", &meta["seed"].to_string()])
        .args(&extra)
        .arg("-o")
        .arg(&file)
        .output()
        .expect("run llmd make-model");
    assert!(
        status.status.success(),
        "make-model failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    let tokens: Vec<u32> = info["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect();
    let n_vocab = info["n_vocab"].as_u64().expect("n_vocab") as usize;
    let reference = read_f32(&fixture_dir().join(format!("{name}.logits.f32")));
    assert_eq!(reference.len(), tokens.len() * n_vocab);

    // The context llama.cpp ran with decides Phi-3's long or short rope factors.
    let n_ctx = info["n_ctx"].as_u64().expect("n_ctx") as usize;
    let logits = cpu_logits(&file, &tokens, n_vocab, n_ctx);
    let worst = compare_logits(name, &logits, &reference, n_vocab, tol);
    println!(
        "{name}: worst |diff| / spread = {worst:.5} over {} positions",
        tokens.len()
    );
}

#[test]
fn tiny_models_of_every_architecture_match_llama_cpp_logits() {
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
    assert_eq!(names.len(), 30, "fifteen cases x two weight types");
    for name in &names {
        check_model(name, &meta);
    }
}
