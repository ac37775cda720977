//! GPU and PSU health end to end (issue 6): a real daemon loads a fake `libnvidia-ml.so.1`
//! (compiled here from testkit/fake-nvml/fake_nvml.c, via `LLMD_NVML_LIB`), and the real `llmctl`
//! shows its readings in `status` (human and `--json`, once and `--watch`), `metrics` and
//! `doctor` (each verdict and its exit code). Also: NVML failing to initialize, and no NVML at
//! all. Every wait is bounded.

use llmd_testkit::e2e as common;
use llmd_testkit::fake_nvml as nvml_support;

use std::io::Read;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use nvml_support::{healthy_pair, troubled_pair, FakeNvml};
use serde_json::{json, Value};

/// Upper bound for the daemon's sampler to publish a sample matching what a test waits for
/// (the config samples every 100 ms; the first sample lands within a few).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon config: one CPU device, fast sampling, and `power` as the `[power]` section body.
fn config(power: &str) -> String {
    format!(
        "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n\n[gpu]\nsample_interval_ms = \
         100\n\n[power]\n{power}\n"
    )
}

/// Starts a daemon loading `library` as NVML.
fn start(library: &str, power: &str) -> Daemon {
    Daemon::builder()
        .env("LLMD_NVML_LIB", library)
        .config(&config(power))
        .start()
}

/// Polls `status --json` until `ready` holds for it (bounded), and returns it.
fn status_when(d: &Daemon, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SAMPLE_TIMEOUT;
    loop {
        let status = d.status_json();
        if ready(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what} within {SAMPLE_TIMEOUT:?}; last: {}\ndaemon log:\n{}",
            status["gpu"],
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the latest sample has NVML loaded with `count` GPUs.
fn loaded_with(status: &Value, count: usize) -> bool {
    status["gpu"]["nvml"] == json!("loaded")
        && status["gpu"]["gpus"].as_array().map(Vec::len) == Some(count)
}

/// stdout as text.
fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `llmctl doctor` (human) and returns its exit code and text.
fn doctor(d: &Daemon) -> (i32, String) {
    let out = d.llmctl(&["doctor"]);
    let code = out
        .status
        .code()
        .expect("llmctl doctor was killed by a signal");
    (code, stdout(&out))
}

/// The verdict of the one check of `kind` whose subject starts with `subject` in a
/// `doctor --json` report.
fn verdict<'a>(report: &'a Value, kind: &str, subject: &str) -> &'a str {
    let matching: Vec<&Value> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|check| {
            check["kind"] == kind
                && check["subject"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(subject))
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {kind} check on {subject:?} in {report}"
    );
    matching[0]["verdict"].as_str().expect("verdict")
}

#[test]
fn status_shows_both_fake_gpus_and_unsupported_fields() {
    let fake = FakeNvml::standard(&troubled_pair(0));
    let library = fake.library.to_str().expect("utf-8 path");
    let d = start(library, "psu_watts = 1000");
    // The fake attributes 1 GiB on GPU 0 to this pid: the daemon's own VRAM.
    fake.set_config(&troubled_pair(d.pid()));
    let status = status_when(&d, "GPU 0 memory held by llmd", |s| {
        loaded_with(s, 2)
            && s["gpu"]["gpus"][0]["llmd_memory_bytes"] == json!({"value": 1073741824u64})
    });
    let gpu = &status["gpu"];
    assert_eq!(gpu["driver_version"], json!({"value": "550.54.14"}));
    assert_eq!(gpu["cuda_version"], json!({"value": "12.4"}));
    let (gpu0, gpu1) = (&gpu["gpus"][0], &gpu["gpus"][1]);
    assert_eq!(gpu0["index"], 0);
    assert_eq!(gpu1["index"], 1);
    assert_eq!(gpu0["name"], json!({"value": "NVIDIA GeForce RTX 3090"}));
    assert_eq!(
        gpu1["uuid"],
        json!({"value": "GPU-11111111-aaaa-bbbb-cccc-111111111111"})
    );
    assert_eq!(gpu0["temperature_c"], json!({"value": 86}));
    assert_eq!(gpu1["temperature_c"], json!({"value": 41}));
    assert_eq!(gpu0["fan_percent"], json!({"value": 75}));
    assert_eq!(gpu1["fan_percent"], json!("not_supported"));
    assert_eq!(gpu1["llmd_memory_bytes"], json!("not_supported"));
    assert_eq!(gpu0["power_draw_w"], json!({"value": 345.5}));
    assert_eq!(gpu1["power_limits"]["enforced_w"], json!({"value": 350.0}));
    assert_eq!(
        gpu0["throttle_reasons"],
        json!({"value": ["sw_power_cap", "sw_thermal_slowdown"]})
    );
    assert_eq!(gpu0["pcie"]["width_current"], json!({"value": 8}));
    assert_eq!(gpu1["pcie"]["gen_current"], json!({"value": 1}));
    assert_eq!(gpu0["nvlink"], json!({"value": {"links": 4, "active": 0}}));
    assert_eq!(gpu["p2p"][0]["read"], json!({"value": "gpu_not_supported"}));
    let power = &status["power"];
    assert_eq!(power["psu_watts"], json!(1000.0));
    assert_eq!(power["worst_case_watts"], json!(1060.0));
    assert_eq!(power["gpu_draw_watts"], json!(375.5));
    // CPU devices are still listed; no model is resident.
    assert_eq!(status["devices"][0]["name"], "cpu:0");
    assert_eq!(status["model_layers"], json!([]));

    let out = d.llmctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    println!("llmctl status against the fake two-GPU NVML:\n{text}");
    for needle in [
        "cpu:0",
        "NVIDIA driver 550.54.14, CUDA 12.4, 2 GPU(s)",
        "GPU 0  NVIDIA GeForce RTX 3090  (GPU-00000000-aaaa-bbbb-cccc-000000000000, 00000000:01:00.0)",
        "  VRAM      12.0 GiB / 24.0 GiB used (llmd 1.0 GiB), 12.0 GiB free",
        "  temp      86 °C (slowdown 90 °C, shutdown 98 °C), fan 75%",
        "  temp      41 °C (slowdown 90 °C, shutdown 98 °C), fan n/a",
        "  throttle  power cap, thermal slowdown (driver)",
        "  PCIe      gen 4/4, x8/x16",
        "  NVLink    0 of 4 links active",
        "P2P GPU 0 <-> GPU 1: GPU does not support it",
        "Power: PSU 1000 W",
        "worst case 1060 W (GPU limits 700 W × 1.30 + system 150 W), -6% headroom",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn metrics_print_the_fake_readings_in_prometheus_format() {
    let fake = FakeNvml::standard(&troubled_pair(0));
    let d = start(
        fake.library.to_str().expect("utf-8 path"),
        "psu_watts = 1000",
    );
    status_when(&d, "two GPUs", |s| loaded_with(s, 2));
    let out = d.llmctl(&["metrics"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for line in [
        "# TYPE llmd_nvml_up gauge",
        "llmd_nvml_up 1",
        "llmd_gpu_temperature_celsius{gpu=\"0\"} 86",
        "llmd_gpu_temperature_celsius{gpu=\"1\"} 41",
        "llmd_gpu_power_draw_watts{gpu=\"0\"} 345.5",
        "llmd_gpu_pcie_link_width{gpu=\"0\",kind=\"current\"} 8",
        "llmd_gpu_p2p_supported{gpu_a=\"0\",gpu_b=\"1\"} 0",
        "llmd_power_psu_watts 1000",
        "llmd_power_worst_case_watts 1060",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        !text.contains("llmd_gpu_fan_speed_percent{gpu=\"1\"}"),
        "GPU 1 has no fan reading: left out, not zero:\n{text}"
    );

    let out = d.llmctl(&["metrics", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: Value =
        serde_json::from_slice(&out.stdout).expect("metrics --json is one JSON object");
    let in_json = json["text"].as_str().expect("text field");
    assert!(
        in_json.contains("llmd_power_worst_case_watts 1060"),
        "{in_json}"
    );
}

#[test]
fn doctor_exit_code_follows_the_worst_verdict() {
    // Healthy pair, big PSU: all OK, exit 0.
    let fake = FakeNvml::standard(&healthy_pair());
    let library = fake.library.to_str().expect("utf-8 path");
    let mut d = start(library, "psu_watts = 1600");
    status_when(&d, "two GPUs", |s| loaded_with(s, 2));
    let (code, text) = doctor(&d);
    println!("llmctl doctor, healthy pair, 1600 W PSU (exit {code}):\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("OK    nvml     system: NVML loaded: driver 550.54.14, CUDA 12.4, 2 GPU(s)"),
        "{text}"
    );
    assert!(text.ends_with("0 WARN, 0 FAIL\n"), "{text}");

    // [power] is applied again on reload (SIGHUP); the sampler keeps running.
    // 700 W of limits × 1.3 + 150 W = 1060 W on a 1200 W PSU: 12% headroom, WARN, exit 1.
    std::fs::write(&d.config, config("psu_watts = 1200")).expect("rewrite the config");
    common::signal(d.pid(), "HUP");
    d.notify.expect_line("RELOADING=1");
    d.notify.expect_line("READY=1");
    assert_eq!(d.status_json()["power"]["psu_watts"], json!(1200.0));
    let out = d.llmctl(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout)
        .expect("utf-8")
        .lines()
        .collect();
    assert_eq!(lines.len(), 1, "doctor --json prints one line: {lines:?}");
    let report: Value = serde_json::from_str(lines[0]).expect("JSON report");
    assert_eq!(verdict(&report, "psu", "system"), "warn");
    assert_eq!(verdict(&report, "nvml", "system"), "ok");
    assert_eq!(verdict(&report, "pcie", "GPU 0"), "ok");
    drop(d);

    // The troubled pair on a 1000 W PSU: the worst case is over the rating, FAIL, exit 2.
    let fake = FakeNvml::standard(&troubled_pair(0));
    let d = start(
        fake.library.to_str().expect("utf-8 path"),
        "psu_watts = 1000",
    );
    status_when(&d, "two GPUs", |s| loaded_with(s, 2));
    let (code, text) = doctor(&d);
    println!("llmctl doctor, troubled pair, 1000 W PSU (exit {code}):\n{text}");
    assert_eq!(code, 2, "{text}");
    for needle in [
        "FAIL  psu      system: worst case 1060 W",
        "WARN  pcie     GPU 0 (NVIDIA GeForce RTX 3090): PCIe gen 4/4, x8/x16",
        "fix: move the card to a slot wired for x16",
        "WARN  thermal  GPU 0",
        "WARN  nvlink   GPU 0 + GPU 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let out = d.llmctl(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(verdict(&report, "psu", "system"), "fail");
    let psu = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["kind"] == "psu"))
        .expect("psu check");
    assert!(
        psu["fix"].as_str().is_some_and(|fix| !fix.is_empty()),
        "{psu}"
    );
}

#[test]
fn nvml_failing_to_initialize_is_explained_by_status_and_doctor() {
    let fake = FakeNvml::standard("init_error 9\n");
    let d = start(
        fake.library.to_str().expect("utf-8 path"),
        "psu_watts = 1000",
    );
    let status = status_when(&d, "an NVML verdict", |s| {
        s["gpu"]["nvml"] != json!("not_sampled_yet")
    });
    let reason = status["gpu"]["nvml"]["init_failed"]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("expected init_failed, got {}", status["gpu"]["nvml"]));
    assert!(reason.contains("driver is not loaded"), "{reason}");
    assert_eq!(status["gpu"]["gpus"], json!([]));
    assert_eq!(status["devices"][0]["name"], "cpu:0");

    let out = d.llmctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("GPUs: none available (NVML failed to initialize: the NVIDIA kernel driver is not loaded"),
        "{text}"
    );
    assert!(text.contains("cpu:0"), "{text}");

    let (code, text) = doctor(&d);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("FAIL  nvml     system: no GPU data: NVML failed to initialize"),
        "{text}"
    );
}

#[test]
fn without_nvml_status_and_doctor_say_why_gpu_data_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("libnvidia-ml.so.1");
    let missing = missing.to_str().expect("utf-8 path");
    let d = start(missing, "psu_watts = 500");
    let status = status_when(&d, "an NVML verdict", |s| {
        s["gpu"]["nvml"] != json!("not_sampled_yet")
    });
    let reason = status["gpu"]["nvml"]["library_missing"]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("expected library_missing, got {}", status["gpu"]["nvml"]));
    assert!(reason.contains(missing), "{reason}");
    assert_eq!(status["power"]["worst_case_watts"], json!(150.0));

    let text = stdout(&d.llmctl(&["status"]));
    assert!(
        text.contains(&format!(
            "GPUs: none available (NVML library could not be loaded: {missing}"
        )),
        "{text}"
    );
    assert!(text.contains("cpu:0"), "{text}");

    // A CPU-only box: the GPU checks do not apply, so they do not raise the exit code.
    let (code, text) = doctor(&d);
    println!("llmctl doctor without NVML (exit {code}):\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("OK    nvml     system: no GPU in use and no NVIDIA driver"),
        "{text}"
    );
    assert!(text.contains("OK    psu      system"), "{text}");

    let metrics = stdout(&d.llmctl(&["metrics"]));
    assert!(metrics.lines().any(|l| l == "llmd_nvml_up 0"), "{metrics}");
}

#[test]
fn a_function_missing_from_the_library_shows_as_an_error_in_that_field_only() {
    let fake = FakeNvml::new("no-energy", &["-DFAKE_NVML_OMIT_ENERGY"], &healthy_pair());
    let d = start(
        fake.library.to_str().expect("utf-8 path"),
        "psu_watts = 1600",
    );
    let status = status_when(&d, "two GPUs", |s| loaded_with(s, 2));
    for gpu in status["gpu"]["gpus"].as_array().expect("gpus") {
        let message = gpu["energy_j"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error reading, got {}", gpu["energy_j"]));
        assert!(
            message.contains("nvmlDeviceGetTotalEnergyConsumption"),
            "{message}"
        );
        assert_eq!(
            gpu["temperature_c"],
            json!({"value": 55}),
            "other fields still read"
        );
    }
    let text = stdout(&d.llmctl(&["status"]));
    let power_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("  power ")).collect();
    assert_eq!(power_lines.len(), 2, "{text}");
    for line in power_lines {
        assert!(
            line.contains("250 W of 350 W limit")
                && line.contains("error: ")
                && line.contains("nvmlDeviceGetTotalEnergyConsumption"),
            "the energy figure says why it is missing: {line}"
        );
    }
    let metrics = stdout(&d.llmctl(&["metrics"]));
    assert!(
        !metrics.contains("llmd_gpu_energy_joules_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("llmd_gpu_temperature_celsius{gpu=\"1\"} 55"),
        "{metrics}"
    );
    let (code, text) = doctor(&d);
    assert_eq!(
        code, 0,
        "a missing energy counter is no health problem: {text}"
    );
}

/// Runs `llmctl status --watch 1` plus `extra` for about 2.5 s, then kills it; returns stdout.
fn watch_for_a_while(d: &Daemon, extra: &[&str]) -> String {
    let mut child = common::command("llmctl")
        .arg("--socket")
        .arg(&d.socket)
        .args(["status", "--watch", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn llmctl");
    std::thread::sleep(Duration::from_millis(2500));
    let still_running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "status --watch exited on its own");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    out
}

#[test]
fn status_watch_refreshes_until_interrupted() {
    let fake = FakeNvml::standard(&healthy_pair());
    let d = start(
        fake.library.to_str().expect("utf-8 path"),
        "psu_watts = 1600",
    );
    status_when(&d, "two GPUs", |s| loaded_with(s, 2));

    let json_lines = watch_for_a_while(&d, &["--json"]);
    let lines: Vec<&str> = json_lines.lines().collect();
    assert!(
        (2..=4).contains(&lines.len()),
        "one line per second: {lines:?}"
    );
    for line in lines {
        let status: Value = serde_json::from_str(line).expect("one JSON status per line");
        assert!(loaded_with(&status, 2), "{line}");
    }

    let human = watch_for_a_while(&d, &[]);
    let redraws = human.matches("\x1b[H\x1b[2J").count();
    assert!((2..=4).contains(&redraws), "{redraws} redraws in:\n{human}");
    assert_eq!(
        human.matches("NVIDIA driver 550.54.14").count(),
        redraws,
        "{human}"
    );
}

#[test]
fn layers_per_device_in_status_and_the_split_check_in_doctor() {
    let fake = FakeNvml::standard(&healthy_pair());
    let d = Daemon::builder()
        .env("LLMD_NVML_LIB", fake.library.to_str().expect("utf-8 path"))
        .config(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n\n[[devices]]\nid = \
             \"cpu:1\"\nmemory_budget = \"1GiB\"\n\n[gpu]\nsample_interval_ms = 100\n\n[power]\n\
             psu_watts = 1600\n",
        )
        .start();
    status_when(&d, "two GPUs", |s| loaded_with(s, 2));
    let model = common::tiny_model(d.dir.path(), "q8_0", Some(6));
    let model = model.to_str().expect("utf-8 path");

    // Split over both CPU devices: two stages, every layer placed, the split check is OK.
    let out = d.llmctl(&[
        "load",
        model,
        "--name",
        "tiny",
        "--devices",
        "cpu:0,cpu:1",
        "--split",
        "1,1",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", d.stderr());
    let status = d.status_json();
    let placement = &status["model_layers"][0];
    assert_eq!(placement["name"], "tiny");
    let stages = placement["layers"].as_array().expect("layers");
    assert_eq!(stages.len(), 2, "{placement}");
    assert!(
        stages
            .iter()
            .all(|s| s["device"] == "cpu" && s["layers"].as_u64() > Some(0)),
        "{placement}"
    );
    let (first, second) = (
        stages[0]["layers"].as_u64().unwrap_or(0),
        stages[1]["layers"].as_u64().unwrap_or(0),
    );
    let text = stdout(&d.llmctl(&["status"]));
    assert!(
        text.contains(&format!("  tiny                 CPU {first}, CPU {second}")),
        "{text}"
    );
    let (code, text) = doctor(&d);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "OK    split    model tiny: split [CPU {first}, CPU {second}]"
        )),
        "{text}"
    );

    // Every layer on one device while both GPUs hold nothing: WARN, exit 1.
    let out = d.llmctl(&[
        "load",
        model,
        "--name",
        "tiny",
        "--devices",
        "cpu:0",
        "--replace",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", d.stderr());
    let status = d.status_json();
    assert_eq!(
        status["model_layers"][0]["layers"],
        json!([{"device": "cpu", "layers": first + second}])
    );
    let (code, text) = doctor(&d);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "WARN  split    model tiny: every layer on CPU while GPU 0, GPU 1 holds nothing"
        ),
        "{text}"
    );
}

/// Issue 15: on a CPU-only box with nothing wrong (no NVIDIA driver, no `[power]` rating),
/// `doctor` exits 0, so it can serve as a health check.
#[test]
fn doctor_exits_0_on_a_healthy_cpu_only_box() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("libnvidia-ml.so.1");
    let d = start(missing.to_str().expect("utf-8 path"), "");
    status_when(&d, "an NVML verdict", |s| {
        s["gpu"]["nvml"] != json!("not_sampled_yet")
    });
    let (code, text) = doctor(&d);
    println!("llmctl doctor on a CPU-only box (exit {code}):\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("OK    psu      system: no GPU power data and no PSU rating"),
        "{text}"
    );
    assert!(text.ends_with("0 WARN, 0 FAIL\n"), "{text}");
}
