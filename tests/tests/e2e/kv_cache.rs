//! Quantized KV caches end to end: Gemma 3 270M loaded with `--cache-type-k q8_0
//! --cache-type-v q8_0` over two CPU devices reports its cache types in load, list and status;
//! a greedy generation re-split live twice (the quantized caches moving between devices as
//! bytes) gives exactly the tokens of an undisturbed run; the running generation's cache holds
//! exactly the bytes `plan` counts for its positions at those types; and cache types a model's
//! heads cannot hold, or that do not exist, are refused with the reason.

use crate::split_util;
use llmd_testkit::e2e as common;

use std::time::Duration;

use common::{command, run_bounded};
use split_util::{daemon_with_devices, gemma, greedy, last_json, load, ok, Background};

/// Tokens of the long generation: enough that two re-splits land while it runs.
const N: u32 = 96;

const Q8: [&str; 4] = ["--cache-type-k", "q8_0", "--cache-type-v", "q8_0"];

/// Sum of `kv_bytes` over a placement or a plan's stages.
fn kv_bytes(stages: &serde_json::Value) -> u64 {
    stages
        .as_array()
        .unwrap_or_else(|| panic!("no stages in {stages}"))
        .iter()
        .map(|s| s["kv_bytes"].as_u64().expect("kv_bytes"))
        .sum()
}

#[test]
fn q8_0_cache_generates_and_moves_live_with_unchanged_tokens() {
    let Some(file) = gemma() else { return };
    let d = daemon_with_devices(&["1GiB", "1GiB"]);
    let two = ["--devices", "cpu:0,cpu:1", "--split", "1,1"];
    let r = load(&d, &file, "m", &[&two[..], &Q8[..]].concat());
    assert_eq!(
        (&r["cache_type_k"], &r["cache_type_v"]),
        (&"q8_0".into(), &"q8_0".into()),
        "{r}"
    );
    let listed = last_json(&ok(&d, &["list", "--json"]))["models"][0].clone();
    assert_eq!(listed["cache_type_k"], "q8_0", "{listed}");
    let status = d.status_json();
    assert_eq!(status["models"][0]["cache_type_v"], "q8_0", "{status}");
    let text = ok(&d, &["list"]);
    assert!(text.contains("KV cache q8_0/q8_0"), "{text}");

    let reference = greedy(&d, "m", N);
    assert_eq!(reference.len(), N as usize);

    let mut gen = Background::start(&d, "m", N);
    assert!(
        gen.wait_lines(3),
        "the generation ended early: {:?}",
        gen.seen
    );
    let running = last_json(&ok(&d, &["list", "--json"]))["models"][0].clone();
    let held = kv_bytes(&running["placement"]);
    assert!(held > 0, "a running generation holds a cache: {running}");
    let steps: [&[&str]; 2] = [&["--split", "3,1"], &["--devices", "cpu:0", "--split", "1"]];
    for (i, args) in steps.iter().enumerate() {
        assert!(
            gen.wait_lines(6 + 6 * i),
            "the generation ended early: {:?}",
            gen.seen
        );
        let mut cmd = vec!["reload", "m", "--json"];
        cmd.extend_from_slice(args);
        let r = last_json(&ok(&d, &cmd));
        assert_eq!(r["sequences_moved"], 1, "not mid-generation: {r}");
        assert_eq!(
            r["plan"]["cache_type_k"], "q8_0",
            "a re-split keeps the type: {r}"
        );
        assert_eq!(
            kv_bytes(&r["placement"]),
            held,
            "the cache moved as it was: {r}"
        );
    }
    let done = gen.finish();
    assert_eq!(
        split_util::tokens_of(&done),
        reference,
        "re-splits changed the tokens"
    );

    // The generation held one sequence of prompt + N positions: what plan counts for a context
    // of that length at these types, and 34/64 of what it counts for f16.
    let capacity =
        (done["prompt_tokens"].as_u64().expect("prompt_tokens") + u64::from(N)).to_string();
    let f = file.to_str().expect("UTF-8 path");
    let plan = |types: &[&str]| {
        let mut args = vec!["plan", f, "--ctx", &capacity, "--json"];
        args.extend_from_slice(&two);
        args.extend_from_slice(types);
        last_json(&ok(&d, &args))
    };
    let q8 = plan(&Q8);
    assert_eq!(q8["cache_type_v"], "q8_0", "{q8}");
    assert_eq!(kv_bytes(&q8["stages"]), held, "{q8}");
    let f16 = plan(&[]);
    assert_eq!(f16["cache_type_k"], "f16", "{f16}");
    assert_eq!(kv_bytes(&f16["stages"]) * 34, held * 64, "{f16}");
    let q4 = plan(&["--cache-type-k", "q4_0", "--cache-type-v", "q4_0"]);
    assert_eq!(
        kv_bytes(&q4["stages"]) * 64,
        kv_bytes(&f16["stages"]) * 18,
        "{q4}"
    );
}

#[test]
fn cache_types_that_do_not_fit_the_heads_or_do_not_exist_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heads48.gguf");
    let mut make = command("llmd");
    make.args([
        "make-model",
        "--arch",
        "llama",
        "--preset",
        "tiny",
        "--type",
        "f32",
    ])
    .args(["--head-dim", "48", "-o"])
    .arg(&path);
    let out = run_bounded(make, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = daemon_with_devices(&["1GiB"]);
    let f = path.to_str().unwrap();
    for cmd in ["load", "plan"] {
        let out = d.llmctl(&[cmd, f, "--cache-type-v", "q4_0"]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("q4_0 V cache") && err.contains("multiple of 32") && err.contains("48"),
            "{cmd}: {err}"
        );
    }
    // f16 suits any head.
    let r = last_json(&ok(&d, &["load", f, "--name", "t", "--json"]));
    assert_eq!(r["cache_type_k"], "f16", "{r}");

    let out = d.llmctl(&["load", f, "--cache-type-k", "q5_1"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("valid: f16, q8_0, q4_0"), "{err}");
}
