//! Which GPU is which (issue 23): CUDA numbers GPUs fastest first, NVML by PCI bus, so on a box
//! with two different cards `cuda:0` can be NVML's GPU 1. A daemon on the fake CUDA driver (two
//! GPUs with set UUIDs) and the fake NVML (the same GPUs listed the other way round) must show a
//! model on `cuda:0` against NVML's GPU 1, the one with `cuda:0`'s UUID, in `status` and
//! `doctor`. Every wait is bounded.

use llmd_testkit::e2e as common;
use llmd_testkit::fake_nvml as nvml_support;

use std::time::{Duration, Instant};

use common::Daemon;
use nvml_support::{healthy_pair, FakeNvml};
use serde_json::{json, Value};

/// The two GPUs' UUIDs, in CUDA's order.
const CUDA_UUIDS: [&str; 2] = [
    "GPU-aaaaaaaa-0000-4000-8000-000000000000",
    "GPU-bbbbbbbb-0000-4000-8000-000000000001",
];

/// Upper bound for the sampler's first sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn cuda_and_nvml_numbering_are_matched_by_uuid() {
    // The fake driver also beside a real one: the checks below assert the fake GPUs' UUIDs.
    let Some(cuda) = llmd_testkit::fake_cuda::driver_for_daemon().expect("fake CUDA driver") else {
        return;
    };
    // NVML lists cuda:1 first and cuda:0 second, and gives them different PCI slots.
    let nvml_config = healthy_pair()
        .replace(
            "gpu0.uuid GPU-0000",
            &format!("gpu0.uuid {}", CUDA_UUIDS[1]),
        )
        .replace(
            "gpu1.uuid GPU-1111",
            &format!("gpu1.uuid {}", CUDA_UUIDS[0]),
        )
        .replace("gpu1.temp 55", "gpu1.temp 77");
    let nvml = FakeNvml::standard(&nvml_config);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = Daemon::builder()
        .env("LD_LIBRARY_PATH", cuda.to_str().expect("utf-8 path"))
        .env("LLMD_FAKE_CUDA_DEVICES", "2")
        .env("LLMD_FAKE_CUDA_UUIDS", &CUDA_UUIDS.join(","))
        .env("LLMD_NVML_LIB", nvml.library.to_str().expect("utf-8 path"))
        .config(
            "[[devices]]\nid = \"cuda:0\"\n\n[[devices]]\nid = \"cuda:1\"\n\n\
             [gpu]\nsample_interval_ms = 100\n",
        )
        .start();
    let deadline = Instant::now() + SAMPLE_TIMEOUT;
    while d.status_json()["gpu"]["gpus"].as_array().map(Vec::len) != Some(2) {
        assert!(Instant::now() < deadline, "no NVML sample: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let model = common::tiny_model(dir.path(), "f32", Some(2));
    let out = d.llmctl(&[
        "load",
        model.to_str().expect("utf-8 path"),
        "--name",
        "tiny",
        "--devices",
        "cuda:0",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", d.stderr());
    let status: Value = d.status_json();
    let layers = &status["model_layers"][0]["layers"];
    assert_eq!(
        layers[0]["device"],
        json!({ "gpu": 1 }),
        "cuda:0 is NVML's GPU 1 (same UUID): {status}"
    );
    assert_eq!(status["gpu"]["gpus"][1]["uuid"]["value"], CUDA_UUIDS[0]);
    // The doctor's split check names the NVML GPU that holds nothing: GPU 0 (cuda:1).
    let doctor = d.llmctl(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.contains("every layer on GPU 1 while GPU 0 holds nothing"),
        "{report}"
    );
}
