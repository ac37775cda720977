//! Issue 17: a tiny qwen3moe model from make-model in a real daemon with three CPU devices
//! (cpu:0 standing in for the host, cpu:1 and cpu:2 for GPUs) gives the same greedy tokens on
//! one device, split 1,1 over two, and with `--cpu-moe` (experts on cpu:0, the rest on cpu:1);
//! `plan --n-cpu-moe` counts the experts on the host, `list` shows where they are, `status`
//! counts the experts and their buffers in the host's used memory; a live
//! re-split moves the layers of a model with experts on the host and leaves the experts there,
//! and `reload --cpu-moe` / `--n-cpu-moe N` / `--n-cpu-moe 0` move experts to and from the host
//! under a running generation without changing its tokens.

use std::time::Duration;

use crate::split_util::{daemon_with_devices, greedy, last_json, load, ok, Background};
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
    // The host's ledger holds the experts and their buffers, as the plan counts them.
    let planned = last_json(&ok(
        &d,
        &["plan", path, "--devices", "cpu:1", "--cpu-moe", "--json"],
    ));
    let buffers = planned["experts"]["scratch_bytes"].as_u64().unwrap_or(0);
    assert!(buffers > 0, "{planned}");
    let status = d.status_json();
    let host = status["devices"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == "cpu:0"))
        .unwrap_or_else(|| panic!("no cpu:0 in {status}"));
    assert_eq!(
        host["memory_used_bytes"].as_u64(),
        Some(stage["expert_bytes"].as_u64().unwrap_or(0) + buffers),
        "{status}"
    );

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

    // The layers move live; the experts stay on the host.
    let moved = last_json(&ok(&d, &["reload", "moe", "--devices", "cpu:2", "--json"]));
    let stage = &moved["placement"][0];
    assert_eq!(stage["device"], "cpu:2", "{moved}");
    assert_eq!(stage["expert_device"], "cpu:0", "{moved}");
    assert_eq!(stage["expert_layers"], serde_json::json!([0, 2]), "{moved}");
    assert_eq!(greedy(&d, "moe", N), reference);
}

/// Writes make-model's tiny qwen3moe with `layers` layers to `file`.
fn make_qwen3moe(file: &std::path::Path, layers: &str) {
    let mut cmd = command("llmd");
    cmd.args([
        "make-model",
        "--arch",
        "qwen3moe",
        "--type",
        "q8_0",
        "--layers",
        layers,
        "-o",
    ])
    .arg(file);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "make-model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `(device, expert_device, expert_layers)` of each stage of a placement array.
fn experts_of(placement: &serde_json::Value) -> Vec<(String, Option<String>, serde_json::Value)> {
    placement
        .as_array()
        .expect("placement array")
        .iter()
        .map(|s| {
            (
                s["device"].as_str().unwrap_or_default().to_string(),
                s["expert_device"].as_str().map(str::to_string),
                s["expert_layers"].clone(),
            )
        })
        .collect()
}

/// A stage's device, and where its experts live with their layer range (`expert_device`,
/// `expert_layers`), as a re-split step expects them.
type ExpectedStage = (&'static str, (Option<String>, serde_json::Value));

#[test]
fn n_cpu_moe_changes_live_under_a_running_generation() {
    // Long enough that three re-splits land while it runs.
    const LONG: u32 = 768;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("qwen3moe.gguf");
    make_qwen3moe(&file, "4");
    let d = daemon_with_devices(&["1GiB", "1GiB", "1GiB"]);
    load(&d, &file, "m", &["--devices", "cpu:1"]);
    let reference = greedy(&d, "m", LONG);
    assert_eq!(reference.len(), LONG as usize);

    let mut gen = Background::start(&d, "m", LONG);
    let host = |a: u64, b: u64| (Some("cpu:0".to_string()), serde_json::json!([a, b]));
    let none = (None, serde_json::json!([0, 0]));
    let steps: [(&[&str], Vec<ExpectedStage>); 3] = [
        (&["--cpu-moe"], vec![("cpu:1", host(0, 4))]),
        (
            &[
                "--devices",
                "cpu:1,cpu:2",
                "--split",
                "1,1",
                "--n-cpu-moe",
                "1",
            ],
            vec![("cpu:1", host(0, 1)), ("cpu:2", none.clone())],
        ),
        (
            &["--devices", "cpu:2", "--n-cpu-moe", "0"],
            vec![("cpu:2", none.clone())],
        ),
    ];
    for (i, (args, want)) in steps.iter().enumerate() {
        assert!(
            gen.wait_lines(3 + 6 * i),
            "the generation ended early: {:?}",
            gen.seen
        );
        let mut cmd = vec!["reload", "m", "--json"];
        cmd.extend_from_slice(args);
        let r = last_json(&ok(&d, &cmd));
        let want: Vec<_> = want
            .iter()
            .map(|(dev, (ed, el))| (dev.to_string(), ed.clone(), el.clone()))
            .collect();
        assert_eq!(experts_of(&r["placement"]), want, "step {i}: {r}");
        assert_eq!(r["sequences_moved"], 1, "not mid-generation: {r}");
        assert!(r["bytes_moved"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    let done = gen.finish();
    assert_eq!(
        crate::split_util::tokens_of(&done),
        reference,
        "moving experts changed the tokens"
    );
    // Every expert is home on cpu:2: the host and cpu:1 hold nothing of the model.
    let status = d.status_json();
    for dev in status["devices"].as_array().expect("devices") {
        if dev["name"] == "cpu:0" || dev["name"] == "cpu:1" {
            assert_eq!(dev["memory_used_bytes"].as_u64(), Some(0), "{status}");
        }
    }
    assert_eq!(greedy(&d, "m", 8), reference[..8]);
}
