//! Host memory of the real daemon (issue 20): a model loaded on CPU devices is resident once (its
//! owned weights, no page of its file mapped beside them), `status` and `list` report it
//! (anonymous and file-backed) with the daemon's own resident memory, the metrics export it, and
//! a re-split, a `--replace` and an unload give the memory back, measured from
//! `/proc/PID/status`. Every wait is bounded.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::split_util::{daemon_with_devices, greedy, last_json, load, ok};
use llmd_testkit::e2e::{command, rss_kib, run_bounded, Daemon};

/// Slack for allocator bookkeeping, thread stacks and buffers, in KiB: small beside the model.
const SLACK_KIB: u64 = 24 << 10;

/// Writes a llama of two layers of width 2048 (about 110 MB of Q8_0 weights) at `path`.
fn model_at(path: &Path) {
    let mut cmd = command("llmd");
    cmd.args([
        "make-model",
        "--arch",
        "llama",
        "--preset",
        "tiny",
        "--layers",
        "2",
        "--embd",
        "2048",
        "--ff",
        "5632",
        "--heads",
        "16",
        "--kv-heads",
        "4",
        "--type",
        "q8_0",
        "--fill",
        "tiled",
        "-o",
    ])
    .arg(path);
    let out = run_bounded(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "make-model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The daemon's resident KiB once it settles (freed memory can take a moment to go back).
fn settled_rss(d: &Daemon, at_most: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rss = rss_kib(d.pid());
        if rss <= at_most || Instant::now() > deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_resident_copy_reported_and_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("wide.gguf");
    model_at(&file);
    let file_kib = std::fs::metadata(&file).expect("stat").len() / 1024;
    let d = daemon_with_devices(&["4GiB", "4GiB"]);
    let idle = rss_kib(d.pid());

    load(&d, &file, "m", &["--devices", "cpu:0", "--ctx", "256"]);
    greedy(&d, "m", 4);
    let loaded = rss_kib(d.pid());
    assert!(
        loaded >= idle + file_kib * 8 / 10,
        "the weights are not resident: {idle} KiB idle, {loaded} KiB loaded, file {file_kib} KiB"
    );
    assert!(
        loaded <= idle + file_kib + SLACK_KIB,
        "more than one copy resident: {idle} KiB idle, {loaded} KiB loaded, file {file_kib} KiB"
    );

    // status and list report it.
    let status = d.status_json();
    let model = &status["models"][0];
    let anon = model["host_memory"]["anon_bytes"].as_u64().expect("anon");
    assert!(anon >= file_kib * 1024 * 9 / 10, "{model}");
    assert_eq!(model["host_memory"]["file_bytes"], 0, "{model}");
    let memory = &status["memory"];
    let rss = memory["rss_bytes"].as_u64().expect("rss");
    assert!(
        rss >= anon && memory["peak_bytes"].as_u64() >= Some(rss),
        "{memory}"
    );
    assert!(memory["anon_bytes"].as_u64() >= Some(anon), "{memory}");
    let listed = last_json(&ok(&d, &["list", "--json"]))["models"][0].clone();
    assert_eq!(
        listed["host_memory"]["anon_bytes"].as_u64(),
        Some(anon),
        "{listed}"
    );
    let metrics = ok(&d, &["metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("llmd_resident_memory_bytes{kind=\"anon\"} ")),
        "{metrics}"
    );

    // A re-split onto two devices and back: the moved layers' old copies are freed.
    ok(
        &d,
        &["reload", "m", "--devices", "cpu:0,cpu:1", "--split", "1,1"],
    );
    ok(&d, &["reload", "m", "--devices", "cpu:1", "--split", "1"]);
    let after = settled_rss(&d, loaded + SLACK_KIB);
    assert!(
        after <= loaded + SLACK_KIB,
        "re-splits kept memory: {loaded} KiB before, {after} KiB after"
    );

    // --replace: the old copy goes once the new one serves.
    load(
        &d,
        &file,
        "m",
        &["--devices", "cpu:0", "--ctx", "256", "--replace"],
    );
    greedy(&d, "m", 4);
    let after = settled_rss(&d, loaded + SLACK_KIB);
    assert!(
        after <= loaded + SLACK_KIB,
        "--replace kept the old copy: {loaded} KiB before, {after} KiB after"
    );

    ok(&d, &["unload", "m"]);
    let after = settled_rss(&d, idle + SLACK_KIB);
    assert!(
        after <= idle + SLACK_KIB,
        "the unload kept memory: {idle} KiB idle, {after} KiB after"
    );
}
