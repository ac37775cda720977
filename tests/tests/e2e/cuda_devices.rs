//! `cuda:N` devices in the daemon's configuration. Without an NVIDIA driver (CI) the daemon still
//! starts, `status` says why CUDA is unavailable (for the daemon and for each configured GPU),
//! a load onto the GPU is refused with that reason, and the CPU device keeps serving. On a
//! machine with a GPU (or on the fake CUDA driver, whose kernels run under host emulation) a
//! model loads onto `cuda:0`, and onto `cuda:0` named twice as two pipeline stages, and
//! generates the CPU's greedy tokens; tokens whose candidates the GPU picks are those of whole
//! logits rows (`LLMD_GPU_SELECT=0`), greedy and seeded top-k.

use crate::split_util;
use llmd_testkit::e2e as common;

use common::{Daemon, DaemonBuilder};
use split_util::{greedy, last_json, ok};

/// Tokens generated per comparison.
const N: u32 = 12;

/// The tiny model of these tests: F32 weights, so the CPU and GPU products differ only by
/// rounding order (~1e-5 of the logits' spread) and even the near-ties of random weights give
/// the same greedy tokens.
fn tiny_model(dir: &std::path::Path) -> std::path::PathBuf {
    common::tiny_model(dir, "f32", Some(4))
}

/// Makes the tiny model and loads it as `cpu` on `cpu:0`: its path and the greedy tokens the
/// CPU gives, which every other placement must reproduce.
fn reference_on_cpu(d: &Daemon) -> (String, Vec<u64>) {
    let model = tiny_model(d.dir.path());
    let path = model.to_str().expect("utf-8 path").to_owned();
    ok(d, &["load", &path, "--name", "cpu", "--devices", "cpu:0"]);
    let on_cpu = greedy(d, "cpu", N);
    assert_eq!(on_cpu.len(), N as usize);
    (path, on_cpu)
}

/// Loads the model as `twice` on `device` named twice (two pipeline stages split 1,1) and checks
/// that it runs as two stages there with the CPU's tokens.
fn load_twice(d: &Daemon, path: &str, device: &str, on_cpu: &[u64]) {
    let devices = format!("{device},{device}");
    ok(
        d,
        &[
            "load",
            path,
            "--name",
            "twice",
            "--devices",
            &devices,
            "--split",
            "1,1",
        ],
    );
    // `list --json` prints `{"models": [...]}`, sorted by name: "twice" comes last.
    let all = last_json(&ok(d, &["list", "--json"]));
    let list = all["models"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_else(|| panic!("no models in {all}"));
    assert_eq!(list["name"], "twice", "{list}");
    let stages: Vec<&str> = list["placement"]
        .as_array()
        .expect("placement")
        .iter()
        .map(|s| s["device"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(stages, [device, device], "{list}");
    assert_eq!(greedy(d, "twice", N), on_cpu, "{devices} vs cpu:0");
}

/// The fake driver's directory for [`on_fake_driver`], also on a machine with a real GPU (see
/// [`llmd_testkit::fake_cuda::driver_for_daemon`]): the checks below assert the fake devices
/// they were given.
fn fake_driver() -> Option<std::path::PathBuf> {
    llmd_testkit::fake_cuda::driver_for_daemon().expect("fake CUDA driver")
}

/// A daemon on the fake CUDA driver in `dir`, with `gpus` fake GPUs.
fn on_fake_driver(dir: &std::path::Path, gpus: &str) -> DaemonBuilder {
    Daemon::builder()
        .env("LD_LIBRARY_PATH", dir.to_str().expect("utf-8 path"))
        .env("LLMD_FAKE_CUDA_DEVICES", gpus)
}

#[test]
fn configured_gpus_without_a_driver_are_reported_and_refused_while_the_cpu_serves() {
    let d = Daemon::builder()
        .config(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"2GiB\"\n\n\
             [[devices]]\nid = \"cuda:0\"\n",
        )
        .start();
    let (path, on_cpu) = reference_on_cpu(&d);
    let path = path.as_str();
    let status = d.status_json();
    let gpu = &status["devices"][1];
    assert_eq!(gpu["name"], "cuda:0");

    if let Some(reason) = status["cuda"]["unavailable"].as_str() {
        println!("no CUDA here ({reason}): checking the refusal path");
        assert_eq!(status["cuda"]["devices"], 0);
        let why = gpu["unavailable"].as_str().expect("the GPU says why");
        assert!(why.contains(reason), "{why}");
        let human = ok(&d, &["status"]);
        assert!(human.contains("cuda:     unavailable ("), "{human}");
        assert!(human.contains("cuda:0   cuda  unavailable: "), "{human}");
        let out = d.llmctl(&["load", path, "--name", "gpu", "--devices", "cuda:0"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("device cuda:0 cannot hold models") && err.contains(reason),
            "{err}"
        );
        // The doctor fails the configured GPU with the reason (exit code 2).
        let out = d.llmctl(&["doctor"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("FAIL") && report.contains("configured GPUs cannot hold models"),
            "{report}"
        );
        // The CPU model is untouched and still serves.
        assert_eq!(greedy(&d, "cpu", N), on_cpu);
        // One device named twice runs as a two-stage pipeline, as `cuda:0,cuda:0` does, with
        // the one-stage tokens (the CPU backend is exact across splits).
        load_twice(&d, path, "cpu:0", &on_cpu);
        return;
    }

    gpu_path(&d, path, &on_cpu);
}

/// The same on the fake CUDA driver (llmd_testkit::fake_cuda: the kernels run under host
/// emulation), so CI drives the daemon's GPU path end to end: devices, budgets, loads onto
/// `cuda:0` and onto `cuda:0` twice, generation and a live re-split between GPU and CPU.
#[test]
fn the_gpu_path_end_to_end_on_the_fake_cuda_driver() {
    let Some(dir) = fake_driver() else {
        return;
    };
    let d = on_fake_driver(&dir, "2")
        .config(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"2GiB\"\n\n\
             [[devices]]\nid = \"cuda:0\"\n\n[[devices]]\nid = \"cuda:1\"\n",
        )
        .start();
    let status = d.status_json();
    assert_eq!(status["cuda"]["devices"], 2, "{status}");
    let gpu = &status["devices"][1];
    let description = gpu["description"].as_str().expect("description");
    assert!(description.contains("fake CUDA device 0"), "{gpu}");
    // Default budget: free memory (16 GiB) less 1 GiB and 2%.
    let budget = gpu["memory_budget_bytes"].as_u64().expect("budget");
    assert_eq!(
        budget,
        (16u64 << 30) - (1 << 30) - (16u64 << 30) / 100 * 2,
        "{gpu}"
    );
    let (path, on_cpu) = reference_on_cpu(&d);
    let path = path.as_str();
    gpu_path(&d, path, &on_cpu);
    // Two GPUs: the activations cross between their contexts with a peer copy.
    ok(
        &d,
        &[
            "load",
            path,
            "--name",
            "pair",
            "--devices",
            "cuda:0,cuda:1",
            "--split",
            "1,1",
        ],
    );
    assert_eq!(greedy(&d, "pair", N), on_cpu, "cuda:0,cuda:1 vs cpu:0");
    // Live re-splits between the two GPUs: layers and their caches copied peer to peer, first
    // one way, then both ways at once (the GPUs trade places).
    for (devices, split) in [("cuda:0,cuda:1", "3,1"), ("cuda:1,cuda:0", "1,1")] {
        let reply = last_json(&ok(
            &d,
            &[
                "reload",
                "pair",
                "--devices",
                devices,
                "--split",
                split,
                "--json",
            ],
        ));
        assert!(reply["bytes_moved"].as_u64().unwrap_or(0) > 0, "{reply}");
        assert_eq!(
            greedy(&d, "pair", N),
            on_cpu,
            "after a re-split to {devices} {split}"
        );
    }
    // (Its exit code reflects the NVML checks: this machine has no NVML.)
    let doctor = d.llmctl(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.contains("CUDA works: the driver reports 2 GPU(s); devices in use: cuda:0, cuda:1"),
        "{report}"
    );
}

/// Loads the model onto `cuda:0` and onto `cuda:0` named twice, and checks that both give the
/// CPU's greedy tokens, also after a live re-split to
/// `cuda:0,cpu:0`; unloading them returns the GPU's memory.
fn gpu_path(d: &Daemon, path: &str, on_cpu: &[u64]) {
    let status = d.status_json();
    let gpu = &status["devices"][1];
    assert!(gpu["unavailable"].is_null(), "{gpu}");
    ok(d, &["load", path, "--name", "gpu", "--devices", "cuda:0"]);
    assert_eq!(greedy(d, "gpu", N), on_cpu, "cuda:0 vs cpu:0");
    load_twice(d, path, "cuda:0", on_cpu);
    ok(
        d,
        &[
            "reload",
            "twice",
            "--devices",
            "cuda:0,cpu:0",
            "--split",
            "1,1",
        ],
    );
    assert_eq!(
        greedy(d, "twice", N),
        on_cpu,
        "after a re-split to cuda:0,cpu:0"
    );
    ok(d, &["unload", "gpu"]);
    ok(d, &["unload", "twice"]);
    let status = d.status_json();
    assert_eq!(status["devices"][1]["memory_used_bytes"], 0, "{status}");
}

/// A GPU that runs out of memory although the budget allowed the load (another process took
/// the memory): the load, or a re-split onto it, fails with the driver's error, the memory it had
/// taken is returned, and the daemon keeps serving what it had loaded.
#[test]
fn a_gpu_out_of_memory_fails_the_load_cleanly_on_the_fake_cuda_driver() {
    let Some(dir) = fake_driver() else {
        return;
    };
    // The fake GPU has 8 MiB; the configured budget claims 1 GiB.
    let d = on_fake_driver(&dir, "1")
        .env("LLMD_FAKE_CUDA_MEMORY", &(8u64 << 20).to_string())
        .config(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"2GiB\"\n\n\
             [[devices]]\nid = \"cuda:0\"\nmemory_budget = \"1GiB\"\n",
        )
        .start();
    let (path, on_cpu) = reference_on_cpu(&d);
    let path = path.as_str();
    let out = d.llmctl(&["load", path, "--name", "gpu", "--devices", "cuda:0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(
        err.contains("out of memory on cuda:0") && err.contains("less free memory than the budget"),
        "{err}"
    );
    let status = d.status_json();
    assert_eq!(status["devices"][1]["memory_used_bytes"], 0, "{status}");
    assert_eq!(greedy(&d, "cpu", N), on_cpu);
    // A live re-split onto the GPU runs out of memory part way: the layers already copied move
    // back, and the model keeps serving from the CPU with the same tokens.
    let out = d.llmctl(&["reload", "cpu", "--devices", "cuda:0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("out of memory on cuda:0") && err.contains("previous placement was restored"),
        "{err}"
    );
    let status = d.status_json();
    assert_eq!(status["devices"][1]["memory_used_bytes"], 0, "{status}");
    assert_eq!(greedy(&d, "cpu", N), on_cpu, "after the failed re-split");
}

/// The prefix cache on a GPU (the fake driver): a repeated long prompt on `cuda:0` copies its
/// cached prefix on the device (`import_kv` within the GPU's context) and still gives the CPU's
/// greedy tokens, also after a live re-split moved the retained cache to the CPU and back.
#[test]
fn a_prefix_cache_hit_on_the_fake_gpu_gives_the_cpus_tokens() {
    let Some(dir) =
        llmd_testkit::fake_cuda::driver_for_tests(llmd_kernels::backend::cuda_available().is_ok())
            .expect("fake CUDA driver")
    else {
        return;
    };
    let d = on_fake_driver(&dir, "1")
        .config(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"2GiB\"\n\n\
             [[devices]]\nid = \"cuda:0\"\n",
        )
        .start();
    let model = tiny_model(d.dir.path());
    let path = model.to_str().expect("utf-8 path");
    ok(&d, &["load", path, "--name", "cpu", "--devices", "cpu:0"]);
    ok(&d, &["load", path, "--name", "gpu", "--devices", "cuda:0"]);
    let prompt = "Once upon a time, in a city by a river, there lived a baker who rose before \
                  dawn every day to light the ovens and knead the dough for the whole street.";
    let run = |model: &str| {
        last_json(&ok(
            &d,
            &[
                "generate",
                model,
                prompt,
                "--raw",
                "--temperature",
                "0",
                "-n",
                "8",
                "--json",
            ],
        ))
    };
    let want = split_util::tokens_of(&run("cpu"));
    let first = run("gpu");
    assert_eq!(first["cached_prompt_tokens"], 0, "{first}");
    assert_eq!(
        split_util::tokens_of(&first),
        want,
        "cuda:0, nothing cached"
    );
    let n = first["prompt_tokens"].as_u64().expect("prompt_tokens");
    for step in ["repeated", "after a re-split to the CPU and back"] {
        if step != "repeated" {
            ok(&d, &["reload", "gpu", "--devices", "cpu:0", "--split", "1"]);
            ok(
                &d,
                &["reload", "gpu", "--devices", "cuda:0", "--split", "1"],
            );
        }
        let again = run("gpu");
        assert_eq!(
            again["cached_prompt_tokens"].as_u64(),
            Some(n - 1),
            "{step}: {again}"
        );
        assert_eq!(
            split_util::tokens_of(&again),
            want,
            "{step}: cuda:0 with a cached prefix"
        );
    }
}

/// Issue 18: the head's device picks the tokens' candidates (the argmax, the top-k) and reads
/// back only them; a daemon that reads whole logits rows instead (`LLMD_GPU_SELECT=0`) generates
/// the same tokens, greedy and seeded top-k with temperature, on `cuda:0` and on `cuda:0` named
/// twice (split 1,1).
#[test]
fn tokens_picked_on_the_fake_gpu_are_those_of_whole_logits_rows() {
    let Some(dir) = fake_driver() else {
        return;
    };
    let config = "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"2GiB\"\n\n\
                  [[devices]]\nid = \"cuda:0\"\n";
    let settings: [&[&str]; 3] = [
        &["--temperature", "0"],
        &["--temperature", "0.9", "--top-k", "40", "--seed", "7"],
        &[
            "--temperature",
            "1.5",
            "--top-k",
            "64",
            "--top-p",
            "1",
            "--min-p",
            "0",
            "--seed",
            "3",
        ],
    ];
    let run = |select: &str| -> Vec<Vec<u64>> {
        let d = on_fake_driver(&dir, "1")
            .env("LLMD_GPU_SELECT", select)
            .config(config)
            .start();
        let model = tiny_model(d.dir.path());
        let path = model.to_str().expect("utf-8 path");
        ok(&d, &["load", path, "--name", "one", "--devices", "cuda:0"]);
        ok(
            &d,
            &[
                "load",
                path,
                "--name",
                "two",
                "--devices",
                "cuda:0,cuda:0",
                "--split",
                "1,1",
            ],
        );
        let mut out = Vec::new();
        for name in ["one", "two"] {
            for extra in settings {
                let n = N.to_string();
                let mut args = vec!["generate", name, split_util::PROMPT, "--raw", "-n", &n];
                args.extend_from_slice(extra);
                args.push("--json");
                let tokens = split_util::tokens_of(&last_json(&ok(&d, &args)));
                assert!(!tokens.is_empty(), "{name} {extra:?}: no tokens");
                out.push(tokens);
            }
        }
        out
    };
    let picked = run("1");
    let whole = run("0");
    assert_eq!(picked, whole, "tokens picked on the GPU vs from whole rows");
}
