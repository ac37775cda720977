//! Issue 17: a tiny qwen3moe model from make-model in a real daemon with three CPU devices
//! (cpu:0 standing in for the host, cpu:1 and cpu:2 for GPUs) gives the same greedy tokens on
//! one device, split 1,1 over two, and with `--cpu-moe` (experts on cpu:0, the rest on cpu:1);
//! `plan --n-cpu-moe` counts the experts on the host, `list` shows where they are, and a live
//! re-split of a model with experts elsewhere is refused with the reason.

use std::time::Duration;

use crate::split_util::{daemon_with_devices, greedy, last_json, load, ok};
use llmd_testkit::e2e::{command, run_bounded};

/// Tokens per generation.
const N: u32 = 16;

#[test]
fn cpu_moe_gives_the_single_device_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("qwen3moe.gguf");
    let mut cmd = command("llmd");
    cmd.args(["make-model", "--arch", "qwen3moe", "--type", "q8_0", "-o"])
        .arg(&file);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "make-model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = daemon_with_devices(&["1GiB", "1GiB", "1GiB"]);
    let path = file.to_str().expect("utf-8 path");

    load(&d, &file, "one", &["--devices", "cpu:1"]);
    let reference = greedy(&d, "one", N);
    assert_eq!(reference.len(), N as usize);

    let split = load(
        &d,
        &file,
        "split",
        &["--devices", "cpu:1,cpu:2", "--split", "1,1"],
    );
    assert_eq!(split["placement"].as_array().map(Vec::len), Some(2));
    assert_eq!(greedy(&d, "split", N), reference, "split 1,1 differs");

    let moe = load(&d, &file, "moe", &["--devices", "cpu:1", "--cpu-moe"]);
    let stage = &moe["placement"][0];
    assert_eq!(stage["device"], "cpu:1", "{moe}");
    assert_eq!(stage["expert_device"], "cpu:0", "{moe}");
    assert_eq!(stage["expert_layers"], serde_json::json!([0, 2]), "{moe}");
    assert!(stage["expert_bytes"].as_u64().unwrap_or(0) > 0, "{moe}");
    assert_eq!(greedy(&d, "moe", N), reference, "--cpu-moe differs");

    let list = ok(&d, &["list"]);
    assert!(list.contains("experts of layers 0..2"), "{list}");

    let plan = last_json(&ok(
        &d,
        &[
            "plan",
            path,
            "--devices",
            "cpu:1",
            "--n-cpu-moe",
            "1",
            "--json",
        ],
    ));
    assert_eq!(plan["experts"]["device"], "cpu:0", "{plan}");
    assert_eq!(plan["experts"]["layer_end"], 1, "{plan}");
    assert!(plan["experts"]["weight_bytes"].as_u64().unwrap_or(0) > 0);

    let refused = d.llmctl(&["reload", "moe", "--devices", "cpu:2"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--cpu-moe"), "{err}");
    // The model still serves.
    assert_eq!(greedy(&d, "moe", N), reference);
}
