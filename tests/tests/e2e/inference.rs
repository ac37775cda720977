//! End-to-end inference on the CPU backend with the real Gemma 3 270M model: load, generate
//! (raw and chat, greedy and seeded), tokenize, list, bench, unload; cancellation frees the KV
//! cache; bad model files and models that do not fit get clear errors while the daemon keeps
//! serving what is loaded.

use llmd_testkit::e2e as common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{ChildGuard, Daemon};
use serde_json::Value;

/// The real model, or `None` (with a SKIPPED line) when the test data is not installed.
fn gemma() -> Option<PathBuf> {
    common::test_data("LLMD_GEMMA_GGUF")
}

/// Runs llmctl and returns stdout, asserting success.
fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = d.llmctl(args);
    assert!(
        out.status.success(),
        "llmctl {args:?} failed ({}): {}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.stderr()
    );
    String::from_utf8(out.stdout).expect("llmctl printed invalid UTF-8")
}

/// The JSON lines of an output.
/// The models of `llmctl list --json` (`{"models": [...]}`).
fn listed(s: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}"));
    v["models"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no models in {v}"))
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn load_gemma(d: &Daemon, model: &std::path::Path) -> Value {
    let out = ok(
        d,
        &[
            "load",
            model.to_str().expect("utf-8 path"),
            "--name",
            "gemma",
            "--threads",
            "2",
            "--json",
        ],
    );
    json_lines(&out).pop().expect("load printed nothing")
}

/// A daemon with the prefix cache off: these tests pin each device's memory to the weights once
/// generations end (`prefix_cache.rs` checks what the cache keeps).
fn daemon_without_prefix_cache() -> Daemon {
    Daemon::builder().config("prefix_cache_mib = 0\n").start()
}

fn used_bytes(d: &Daemon) -> u64 {
    d.status_json()["devices"][0]["memory_used_bytes"]
        .as_u64()
        .expect("memory_used_bytes")
}

#[test]
fn load_generate_tokenize_bench_unload() {
    let Some(model) = gemma() else { return };
    let d = daemon_without_prefix_cache();
    let loaded = load_gemma(&d, &model);
    assert_eq!(loaded["architecture"], "gemma3");
    assert_eq!(loaded["n_layer"], 18);
    let placement = loaded["placement"].as_array().expect("placement");
    assert_eq!(placement.len(), 1);
    assert_eq!(placement[0]["device"], "cpu:0");
    assert_eq!(
        (
            placement[0]["layer_start"].as_u64(),
            placement[0]["layer_end"].as_u64()
        ),
        (Some(0), Some(18))
    );
    assert_eq!(placement[0]["output"], true);
    let weights = placement[0]["weight_bytes"].as_u64().expect("weight bytes");
    assert!(weights > 200 << 20, "{weights} bytes of weights");
    assert_eq!(
        used_bytes(&d),
        weights,
        "after load only the weights are resident"
    );

    // Greedy raw generation: token lines, then the summary; reproducible.
    let args = [
        "generate",
        "gemma",
        "The capital of France is",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "12",
        "--json",
    ];
    let lines = json_lines(&ok(&d, &args));
    let summary = lines.last().expect("summary line");
    let tokens: Vec<u64> = summary["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(tokens.len(), 12, "{summary}");
    assert_eq!(summary["stop_reason"], "max_tokens");
    assert_eq!(summary["prompt_tokens"], 6, "BOS + 5 words");
    assert!(summary["decode_tokens_per_s"].as_f64().expect("speed") > 0.0);
    let streamed: Vec<u64> = lines[..lines.len() - 1]
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    assert_eq!(streamed, tokens, "one token line per generated token");
    let text: String = lines[..lines.len() - 1]
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    assert_eq!(text, summary["text"].as_str().expect("text"));
    assert!(
        text.to_lowercase().contains("paris") || text.contains("capital"),
        "{text:?}"
    );
    let again = json_lines(&ok(&d, &args));
    assert_eq!(
        again.last().expect("summary")["tokens"],
        summary["tokens"],
        "greedy is deterministic"
    );

    // Seeded sampling is reproducible; different seeds diverge on a long enough run.
    let seeded = |seed: &str| {
        let out = ok(
            &d,
            &[
                "generate",
                "gemma",
                "Once upon a time",
                "--raw",
                "--temperature",
                "1.2",
                "--seed",
                seed,
                "-n",
                "24",
                "--json",
            ],
        );
        json_lines(&out).pop().expect("summary")["tokens"].clone()
    };
    assert_eq!(seeded("7"), seeded("7"));
    assert_ne!(seeded("7"), seeded("8"));

    // Chat (through the template) and stop strings.
    let chat = json_lines(&ok(
        &d,
        &[
            "generate",
            "gemma",
            "Say hello.",
            "--temperature",
            "0",
            "-n",
            "8",
            "--json",
        ],
    ));
    assert!(
        chat.last().expect("summary")["prompt_tokens"]
            .as_u64()
            .expect("prompt tokens")
            > 5
    );
    let stopped = json_lines(&ok(
        &d,
        &[
            "generate",
            "gemma",
            "1, 2, 3, 4,",
            "--raw",
            "--temperature",
            "0",
            "-n",
            "24",
            "--stop",
            "7",
            "--json",
        ],
    ));
    let s = stopped.last().expect("summary");
    if s["stop_reason"] == "stop_string" {
        assert!(!s["text"].as_str().expect("text").contains('7'), "{s}");
    }

    // Tokenize.
    let tok = json_lines(&ok(&d, &["tokenize", "gemma", "Hello world", "--json"]));
    let ids: Vec<u64> = tok[0]["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![2, 9259, 1902]);

    // List shows the placement; bench gives both speeds.
    let list = listed(&ok(&d, &["list", "--json"]));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "gemma");
    assert_eq!(
        list[0]["placement"][0]["kv_bytes"], 0,
        "no sequence is running"
    );
    let bench = json_lines(&ok(
        &d,
        &["bench", "gemma", "-p", "16", "-n", "4", "-r", "1", "--json"],
    ));
    assert!(
        bench[0]["pp"].as_f64().expect("pp") > 0.0 && bench[0]["tg"].as_f64().expect("tg") > 0.0,
        "{}",
        bench[0]
    );
    assert_eq!(used_bytes(&d), weights, "bench freed its sequence");

    // Unload frees everything.
    let un = json_lines(&ok(&d, &["unload", "gemma", "--json"]));
    assert_eq!(un[0]["freed_bytes"].as_u64(), Some(weights));
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_bytes(&d) != 0 {
        assert!(
            Instant::now() < deadline,
            "memory not returned after unload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = d.llmctl(&["generate", "gemma", "hi", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not_found"));
}

#[test]
fn cancelled_generation_stops_and_frees_its_kv_cache() {
    let Some(model) = gemma() else { return };
    let d = daemon_without_prefix_cache();
    let weights = load_gemma(&d, &model)["placement"][0]["weight_bytes"]
        .as_u64()
        .expect("weights");
    let mut cmd = common::command("llmctl");
    cmd.arg("--socket")
        .arg(&d.socket)
        .args([
            "generate",
            "gemma",
            "Tell me a very long story.",
            "--raw",
            "-n",
            "100000",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = ChildGuard(cmd.spawn().expect("spawn llmctl"));
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..3 {
        lines.next().expect("a token line").expect("read");
    }
    assert!(
        used_bytes(&d) > weights,
        "a running generation holds a KV cache"
    );
    // The client goes away (as with Ctrl-C).
    let _ = child.0.kill();
    let _ = child.0.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_bytes(&d) != weights {
        assert!(
            Instant::now() < deadline,
            "KV cache not freed after the client left:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(listed(&ok(&d, &["list", "--json"]))[0]["running"], 0);
}

#[test]
fn bad_model_files_get_clear_errors_and_loaded_models_keep_serving() {
    let Some(model) = gemma() else { return };
    let d = Daemon::start();
    load_gemma(&d, &model);
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.gguf");
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all, just text").expect("write");
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&model).expect("read model");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).expect("write");
    for (file, want) in [
        (&missing, "missing.gguf"),
        (&garbage, "magic"),
        (&truncated, ""),
    ] {
        let out = d.llmctl(&["load", file.to_str().expect("utf-8"), "--name", "bad"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{file:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("error"), "{err}");
        assert!(err.contains(&want.to_lowercase()), "{file:?}: {err}");
    }
    // Same name twice is refused; an unknown device is refused.
    let out = d.llmctl(&["load", model.to_str().expect("utf-8"), "--name", "gemma"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already loaded"));
    let out = d.llmctl(&[
        "load",
        model.to_str().expect("utf-8"),
        "--name",
        "g2",
        "--devices",
        "cuda:7",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device"));
    // The loaded model still answers.
    let lines = json_lines(&ok(
        &d,
        &[
            "generate",
            "gemma",
            "Hello",
            "--raw",
            "--temperature",
            "0",
            "-n",
            "3",
            "--json",
        ],
    ));
    assert_eq!(
        lines.last().expect("summary")["tokens"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[test]
fn a_model_that_does_not_fit_is_refused_and_nothing_stays_allocated() {
    let Some(model) = gemma() else { return };
    let d = Daemon::builder()
        .config("[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"100MiB\"\n")
        .start();
    let out = d.llmctl(&[
        "load",
        model.to_str().expect("utf-8"),
        "--name",
        "gemma",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("does_not_fit"), "{stdout}");
    assert_eq!(used_bytes(&d), 0, "a refused load leaves nothing behind");
    assert_eq!(d.status_json()["models"].as_array().map(Vec::len), Some(0));
}
