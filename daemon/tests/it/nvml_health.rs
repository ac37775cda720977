//! GPU telemetry, power budget, doctor verdicts and metrics against a fake libnvidia-ml.so.1
//! compiled by the test (testkit/fake-nvml): two GPUs with different readings, fields NVML reports
//! as not supported, a function missing from the library, NVML failing to initialize, and no
//! NVML at all.

use std::path::Path;
use std::time::{Duration, Instant};

use llmd::gpu::nvml::collect_once;
use llmd::gpu::sampler::{GpuSampler, SamplerConfig};
use llmd::gpu::{GpuTelemetry, NvmlStatus, P2pState, Reading, ThrottleReason};
use llmd::health::doctor::{self, CheckKind, DeviceLayers, DeviceRef, ModelPlacement, Verdict};
use llmd::health::power::{self, PowerConfig};
use llmd::health::{metrics, render};
use llmd_testkit::fake_nvml::{healthy_pair, troubled_pair, FakeNvml};

/// Samples the fake once.
fn sample(fake: &FakeNvml) -> GpuTelemetry {
    collect_once(&fake.library, std::process::id())
}

fn power(psu_watts: f64) -> PowerConfig {
    PowerConfig {
        psu_watts: Some(psu_watts),
        system_watts: 150.0,
        transient_factor: 1.3,
    }
}

fn split(name: &str, layers: &[(DeviceRef, u32)]) -> ModelPlacement {
    ModelPlacement {
        name: name.to_owned(),
        layers: layers
            .iter()
            .map(|&(device, layers)| DeviceLayers { device, layers })
            .collect(),
    }
}

/// The verdict of the single check of `kind` on `subject`.
fn verdict_of(report: &doctor::DoctorReport, kind: CheckKind, subject: &str) -> Verdict {
    let matching: Vec<_> = report
        .checks
        .iter()
        .filter(|check| check.kind == kind && check.subject.starts_with(subject))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {kind:?} check on {subject}: {report:#?}"
    );
    matching[0].verdict
}

#[test]
fn telemetry_reports_each_gpus_own_readings() {
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let telemetry = sample(&fake);
    assert_eq!(telemetry.nvml, NvmlStatus::Loaded);
    assert_eq!(
        telemetry.driver_version,
        Reading::Value("550.54.14".to_owned())
    );
    assert_eq!(telemetry.cuda_version, Reading::Value("12.4".to_owned()));
    assert_eq!(telemetry.gpus.len(), 2);

    let gpu0 = &telemetry.gpus[0];
    assert_eq!(
        gpu0.name,
        Reading::Value("NVIDIA GeForce RTX 3090".to_owned())
    );
    assert_eq!(
        gpu0.uuid,
        Reading::Value("GPU-00000000-aaaa-bbbb-cccc-000000000000".to_owned())
    );
    assert_eq!(
        gpu0.pci_bus_id,
        Reading::Value("00000000:01:00.0".to_owned())
    );
    let memory = gpu0.memory.get().expect("memory");
    assert_eq!(
        (memory.total_bytes, memory.used_bytes),
        (25_769_803_776, 12_884_901_888)
    );
    assert_eq!(
        gpu0.llmd_memory_bytes,
        Reading::Value(1_073_741_824),
        "only this pid counts"
    );
    let rates = gpu0.utilization.get().expect("utilization");
    assert_eq!((rates.gpu_percent, rates.memory_percent), (97, 60));
    assert_eq!(gpu0.temperature_c, Reading::Value(86));
    assert_eq!(gpu0.temperature_slowdown_c, Reading::Value(90));
    assert_eq!(gpu0.temperature_shutdown_c, Reading::Value(98));
    assert_eq!(gpu0.fan_percent, Reading::Value(75));
    assert_eq!(gpu0.power_draw_w, Reading::Value(345.5));
    assert_eq!(gpu0.power_limits.enforced_w, Reading::Value(350.0));
    assert_eq!(gpu0.power_limits.default_w, Reading::Value(350.0));
    assert_eq!(gpu0.power_limits.min_w, Reading::Value(100.0));
    assert_eq!(gpu0.power_limits.max_w, Reading::Value(400.0));
    assert_eq!(gpu0.energy_j, Reading::Value(123_456.789));
    assert_eq!(gpu0.clock_sm_mhz, Reading::Value(1695));
    assert_eq!(gpu0.clock_memory_mhz, Reading::Value(9751));
    assert_eq!(
        gpu0.throttle_reasons,
        Reading::Value(vec![
            ThrottleReason::SwPowerCap,
            ThrottleReason::SwThermalSlowdown
        ])
    );
    assert_eq!(gpu0.pcie.gen_current, Reading::Value(4));
    assert_eq!(gpu0.pcie.width_current, Reading::Value(8));
    assert_eq!(gpu0.pcie.width_max, Reading::Value(16));
    assert_eq!(gpu0.pcie.tx_kib_s, Reading::Value(1024));
    assert_eq!(gpu0.pcie.rx_kib_s, Reading::Value(2048));
    let nvlink = gpu0.nvlink.get().expect("nvlink");
    assert_eq!((nvlink.links, nvlink.active), (4, 0));

    let gpu1 = &telemetry.gpus[1];
    assert_eq!(
        gpu1.uuid,
        Reading::Value("GPU-11111111-aaaa-bbbb-cccc-111111111111".to_owned())
    );
    assert_eq!(
        gpu1.fan_percent,
        Reading::NotSupported,
        "fan not supported is not an error"
    );
    assert_eq!(gpu1.llmd_memory_bytes, Reading::NotSupported);
    assert_eq!(gpu1.temperature_c, Reading::Value(41));
    assert_eq!(gpu1.power_draw_w, Reading::Value(30.0));
    assert_eq!(gpu1.pcie.gen_current, Reading::Value(1));
    assert_eq!(
        gpu1.throttle_reasons,
        Reading::Value(vec![ThrottleReason::GpuIdle])
    );

    assert_eq!(telemetry.p2p.len(), 1);
    let pair = telemetry.p2p_between(1, 0).expect("pair");
    assert_eq!((pair.gpu_a, pair.gpu_b), (0, 1));
    assert_eq!(pair.read, Reading::Value(P2pState::GpuNotSupported));
    assert_eq!(pair.nvlink, Reading::Value(P2pState::NotSupported));
}

#[test]
fn json_carries_every_field_with_its_state() {
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let telemetry = sample(&fake);
    let json = serde_json::to_value(&telemetry).expect("json");
    assert_eq!(json["nvml"], "loaded");
    assert_eq!(json["gpus"][0]["temperature_c"]["value"], 86);
    assert_eq!(
        json["gpus"][0]["power_limits"]["enforced_w"]["value"],
        350.0
    );
    assert_eq!(
        json["gpus"][0]["throttle_reasons"]["value"][1],
        "sw_thermal_slowdown"
    );
    assert_eq!(json["gpus"][0]["pcie"]["width_current"]["value"], 8);
    assert_eq!(json["gpus"][1]["fan_percent"], "not_supported");
    assert_eq!(json["p2p"][0]["read"]["value"], "gpu_not_supported");
    let back: GpuTelemetry = serde_json::from_value(json).expect("parse back");
    assert_eq!(back, telemetry);

    let missing = collect_once(Path::new("/nonexistent/libnvidia-ml.so.1"), 1);
    let json = serde_json::to_value(&missing).expect("json");
    let reason = json["nvml"]["library_missing"]["reason"]
        .as_str()
        .expect("reason");
    assert!(reason.contains("/nonexistent/libnvidia-ml.so.1"), "{json}");
}

#[test]
fn telemetry_and_doctor_reports_survive_the_wire_encoding() {
    // The protocol frames messages with bincode, which supports fewer serde features than JSON.
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let telemetry = sample(&fake);
    let frame = llmd_shared::encode_frame(&telemetry).expect("encode telemetry");
    let (back, used): (GpuTelemetry, usize) = llmd_shared::decode_frame(&frame).expect("decode");
    assert_eq!((back, used), (telemetry.clone(), frame.len()));

    let models = [split(
        "llama",
        &[(DeviceRef::Gpu(0), 10), (DeviceRef::Cpu, 22)],
    )];
    let report = doctor::run(&telemetry, &power(1000.0), &models, true);
    let frame = llmd_shared::encode_frame(&report).expect("encode report");
    let (back, _): (doctor::DoctorReport, usize) =
        llmd_shared::decode_frame(&frame).expect("decode");
    assert_eq!(back, report);
    let frame = llmd_shared::encode_frame(&models[0]).expect("encode placement");
    let (back, _): (ModelPlacement, usize) = llmd_shared::decode_frame(&frame).expect("decode");
    assert_eq!(back, models[0]);

    let budget = power::budget(&power(1000.0), &telemetry);
    let frame = llmd_shared::encode_frame(&budget).expect("encode budget");
    let (back, _): (power::PowerBudget, usize) = llmd_shared::decode_frame(&frame).expect("decode");
    assert_eq!(back, budget);

    let unavailable = GpuTelemetry::unavailable(
        NvmlStatus::InitFailed {
            reason: "driver not loaded".to_owned(),
        },
        7,
    );
    let frame = llmd_shared::encode_frame(&unavailable).expect("encode");
    let (back, _): (GpuTelemetry, usize) = llmd_shared::decode_frame(&frame).expect("decode");
    assert_eq!(back, unavailable);
}

#[test]
fn power_budget_compares_draw_and_worst_case_with_the_psu() {
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let budget = power::budget(&power(1000.0), &sample(&fake));
    assert!((budget.gpu_draw_watts - 375.5).abs() < 1e-9, "{budget:?}");
    assert!((budget.current_watts - 525.5).abs() < 1e-9);
    assert!((budget.gpu_limits_watts - 700.0).abs() < 1e-9);
    assert!((budget.worst_case_watts - 1060.0).abs() < 1e-9);
    let headroom = budget.worst_case_headroom_percent.expect("headroom");
    assert!((headroom - -6.0).abs() < 1e-9, "{headroom}");
    let current = budget.current_headroom_percent.expect("headroom");
    assert!((current - 47.45).abs() < 1e-9, "{current}");
    assert!(budget.is_complete());
    let text = render::render_power(&budget);
    assert!(text.contains("PSU 1000 W"), "{text}");
    assert!(
        text.contains("worst case 1060 W (GPU limits 700 W × 1.30 + system 150 W), -6% headroom"),
        "{text}"
    );
}

#[test]
fn doctor_flags_each_problem_of_the_troubled_pair() {
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let telemetry = sample(&fake);
    let models = [
        split("qwen", &[(DeviceRef::Gpu(0), 28), (DeviceRef::Gpu(1), 0)]),
        split("llama", &[(DeviceRef::Gpu(0), 10), (DeviceRef::Gpu(1), 22)]),
    ];
    let report = doctor::run(&telemetry, &power(1000.0), &models, true);
    assert_eq!(verdict_of(&report, CheckKind::Nvml, "system"), Verdict::Ok);
    assert_eq!(
        verdict_of(&report, CheckKind::Pcie, "GPU 0"),
        Verdict::Warn,
        "x8 of x16"
    );
    assert_eq!(
        verdict_of(&report, CheckKind::Pcie, "GPU 1"),
        Verdict::Ok,
        "gen 1 while idle"
    );
    assert_eq!(
        verdict_of(&report, CheckKind::Thermal, "GPU 0"),
        Verdict::Warn,
        "86 of 90 °C"
    );
    assert_eq!(
        verdict_of(&report, CheckKind::Thermal, "GPU 1"),
        Verdict::Ok
    );
    assert_eq!(
        verdict_of(&report, CheckKind::Psu, "system"),
        Verdict::Fail,
        "1060 W > 1000 W"
    );
    assert_eq!(
        verdict_of(&report, CheckKind::Split, "model qwen"),
        Verdict::Warn,
        "GPU 1 empty"
    );
    assert_eq!(
        verdict_of(&report, CheckKind::Split, "model llama"),
        Verdict::Ok
    );
    assert_eq!(
        verdict_of(&report, CheckKind::Nvlink, "GPU 0 + GPU 1"),
        Verdict::Warn
    );
    assert_eq!(
        verdict_of(&report, CheckKind::P2p, "model llama"),
        Verdict::Warn
    );
    assert!(
        !report
            .checks
            .iter()
            .any(|check| check.subject.starts_with("model qwen: GPU")),
        "qwen holds layers on one GPU only: no P2P check"
    );
    assert!(report
        .checks
        .iter()
        .all(|check| (check.verdict == Verdict::Ok) == check.fix.is_none()));
    assert_eq!(report.exit_code(), 2);

    let text = render::render_doctor(&report);
    assert!(
        text.contains("WARN  pcie     GPU 0 (NVIDIA GeForce RTX 3090): PCIe gen 4/4, x8/x16"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  psu      system: worst case 1060 W"),
        "{text}"
    );
    assert!(text.contains("p2p      model llama: GPU 0 + GPU 1: peer-to-peer unavailable: GPU does not support it"), "{text}");
    assert!(
        text.contains("fix: move the card to a slot wired for x16"),
        "{text}"
    );
    assert!(text.ends_with("4 OK, 5 WARN, 1 FAIL\n"), "{text}");
}

#[test]
fn doctor_exit_codes_follow_the_worst_verdict() {
    let fake = FakeNvml::standard(&healthy_pair());
    let telemetry = sample(&fake);
    let models = [split(
        "llama",
        &[(DeviceRef::Gpu(0), 16), (DeviceRef::Gpu(1), 16)],
    )];
    let healthy = doctor::run(&telemetry, &power(1600.0), &models, true);
    assert!(
        healthy
            .checks
            .iter()
            .all(|check| check.verdict == Verdict::Ok),
        "{healthy:#?}"
    );
    assert_eq!(healthy.exit_code(), 0);
    assert_eq!(
        verdict_of(&healthy, CheckKind::P2p, "model llama"),
        Verdict::Ok
    );
    assert_eq!(
        verdict_of(&healthy, CheckKind::Nvlink, "GPU 0 + GPU 1"),
        Verdict::Ok
    );

    // 1060 W worst case on 1200 W: fits, but only 12% headroom.
    let tight = doctor::run(&telemetry, &power(1200.0), &models, true);
    assert_eq!(verdict_of(&tight, CheckKind::Psu, "system"), Verdict::Warn);
    assert_eq!(tight.exit_code(), 1);

    // Everything on GPU 0 while GPU 1 holds nothing.
    let lopsided = [split("llama", &[(DeviceRef::Gpu(0), 32)])];
    let report = doctor::run(&telemetry, &power(1600.0), &lopsided, true);
    assert_eq!(
        verdict_of(&report, CheckKind::Split, "model llama"),
        Verdict::Warn
    );
    assert_eq!(report.exit_code(), 1);

    // Hardware thermal slowdown on GPU 1 is a failure; 94 of 98 °C as well.
    let hot = healthy_pair().replace("gpu1.throttle 0\n", "gpu1.throttle 0x40\n");
    fake.set_config(&hot);
    let report = doctor::run(&sample(&fake), &power(1600.0), &models, true);
    assert_eq!(
        verdict_of(&report, CheckKind::Thermal, "GPU 1"),
        Verdict::Fail
    );
    assert_eq!(report.exit_code(), 2);
    let near_shutdown = healthy_pair().replace("gpu0.temp 55\n", "gpu0.temp 94\n");
    fake.set_config(&near_shutdown);
    let report = doctor::run(&sample(&fake), &power(1600.0), &models, true);
    assert_eq!(
        verdict_of(&report, CheckKind::Thermal, "GPU 0"),
        Verdict::Fail
    );

    // Busy at a lower PCIe generation than the card supports.
    let slow = healthy_pair().replace("gpu1.pcie_gen 4\n", "gpu1.pcie_gen 3\n");
    fake.set_config(&slow);
    let report = doctor::run(&sample(&fake), &power(1600.0), &models, true);
    assert_eq!(verdict_of(&report, CheckKind::Pcie, "GPU 1"), Verdict::Warn);

    // No PSU rating configured.
    let report = doctor::run(&telemetry, &PowerConfig::default(), &models, true);
    assert_eq!(verdict_of(&report, CheckKind::Psu, "system"), Verdict::Warn);
}

#[test]
fn metrics_export_the_same_figures() {
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let telemetry = sample(&fake);
    let budget = power::budget(&power(1000.0), &telemetry);
    let text = metrics::render(&telemetry, Some(&budget));
    for line in [
        "# HELP llmd_nvml_up Whether NVML was usable for the latest sample (1) or not (0).",
        "# TYPE llmd_nvml_up gauge",
        "llmd_nvml_up 1",
        "llmd_gpu_info{gpu=\"0\",uuid=\"GPU-00000000-aaaa-bbbb-cccc-000000000000\",name=\"NVIDIA GeForce RTX 3090\",pci_bus_id=\"00000000:01:00.0\",driver_version=\"550.54.14\",cuda_version=\"12.4\"} 1",
        "# TYPE llmd_gpu_temperature_celsius gauge",
        "llmd_gpu_temperature_celsius{gpu=\"0\"} 86",
        "llmd_gpu_temperature_celsius{gpu=\"1\"} 41",
        "llmd_gpu_fan_speed_percent{gpu=\"0\"} 75",
        "llmd_gpu_memory_llmd_bytes{gpu=\"0\"} 1073741824",
        "llmd_gpu_memory_total_bytes{gpu=\"1\"} 25769803776",
        "llmd_gpu_power_draw_watts{gpu=\"0\"} 345.5",
        "llmd_gpu_power_limit_watts{gpu=\"1\",kind=\"enforced\"} 350",
        "llmd_gpu_power_limit_watts{gpu=\"0\",kind=\"max\"} 400",
        "# TYPE llmd_gpu_energy_joules_total counter",
        "llmd_gpu_energy_joules_total{gpu=\"0\"} 123456.789",
        "llmd_gpu_clock_hertz{gpu=\"0\",clock=\"sm\"} 1695000000",
        "llmd_gpu_throttle_active{gpu=\"0\",reason=\"sw_thermal_slowdown\"} 1",
        "llmd_gpu_throttle_active{gpu=\"0\",reason=\"hw_slowdown\"} 0",
        "llmd_gpu_pcie_link_width{gpu=\"0\",kind=\"current\"} 8",
        "llmd_gpu_pcie_link_generation{gpu=\"1\",kind=\"max\"} 4",
        "llmd_gpu_pcie_throughput_bytes_per_second{gpu=\"0\",direction=\"rx\"} 2097152",
        "llmd_gpu_nvlink_active_links{gpu=\"1\"} 0",
        "llmd_gpu_p2p_supported{gpu_a=\"0\",gpu_b=\"1\"} 0",
        "llmd_power_psu_watts 1000",
        "llmd_power_worst_case_watts 1060",
        "llmd_power_worst_case_headroom_percent -6",
    ] {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
    }
    assert!(
        !text.contains("llmd_gpu_fan_speed_percent{gpu=\"1\"}"),
        "unsupported fields are left out"
    );
    // Every sample line belongs to a family announced by HELP and TYPE before it.
    let mut announced = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            announced.push(rest.split(' ').next().expect("name").to_owned());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().expect("name");
            assert!(
                announced.iter().any(|family| family == name),
                "{name} without TYPE"
            );
        }
    }
}

#[test]
fn status_rendering_shows_values_and_unsupported_fields() {
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let text = render::render_gpus(&sample(&fake));
    assert!(
        text.starts_with("NVIDIA driver 550.54.14, CUDA 12.4, 2 GPU(s)\n"),
        "{text}"
    );
    assert!(text.contains("GPU 0  NVIDIA GeForce RTX 3090  (GPU-00000000-aaaa-bbbb-cccc-000000000000, 00000000:01:00.0)"), "{text}");
    assert!(
        text.contains("  VRAM      12.0 GiB / 24.0 GiB used (llmd 1.0 GiB), 12.0 GiB free"),
        "{text}"
    );
    assert!(
        text.contains("  temp      86 °C (slowdown 90 °C, shutdown 98 °C), fan 75%"),
        "{text}"
    );
    assert!(
        text.contains("  temp      41 °C (slowdown 90 °C, shutdown 98 °C), fan n/a"),
        "{text}"
    );
    assert!(
        text.contains("  throttle  power cap, thermal slowdown (driver)"),
        "{text}"
    );
    assert!(
        text.contains("  PCIe      gen 4/4, x8/x16, tx 1.0 MiB/s rx 2.0 MiB/s"),
        "{text}"
    );
    assert!(text.contains("  NVLink    0 of 4 links active"), "{text}");
    assert!(
        text.contains("P2P GPU 0 <-> GPU 1: GPU does not support it (over NVLink: not supported)"),
        "{text}"
    );
    let models = render::render_models(&[split(
        "qwen",
        &[(DeviceRef::Gpu(0), 20), (DeviceRef::Cpu, 8)],
    )]);
    assert_eq!(models, "Models:\n  qwen: GPU 0 20 layers, CPU 8 layers\n");
}

#[test]
fn a_function_missing_from_the_library_fails_only_its_field() {
    let fake = FakeNvml::new("no-energy", &["-DFAKE_NVML_OMIT_ENERGY"], &troubled_pair(1));
    let telemetry = sample(&fake);
    assert_eq!(telemetry.nvml, NvmlStatus::Loaded);
    for gpu in &telemetry.gpus {
        match &gpu.energy_j {
            Reading::Error(message) => assert!(
                message.contains("nvmlDeviceGetTotalEnergyConsumption")
                    && message.contains("missing from the NVML library"),
                "{message}"
            ),
            other => panic!("expected an error for the missing function, got {other:?}"),
        }
        assert!(gpu.temperature_c.get().is_some(), "other fields still read");
    }
    let text = metrics::render(&telemetry, None);
    assert!(!text.contains("llmd_gpu_energy_joules_total"), "{text}");
    assert!(
        text.contains("llmd_gpu_temperature_celsius{gpu=\"1\"} 41"),
        "{text}"
    );
}

#[test]
fn nvml_failing_to_initialize_is_reported_with_the_reason() {
    let fake = FakeNvml::standard("init_error 9\n");
    let telemetry = sample(&fake);
    match &telemetry.nvml {
        NvmlStatus::InitFailed { reason } => {
            assert!(reason.contains("driver is not loaded"), "{reason}")
        }
        other => panic!("expected InitFailed, got {other:?}"),
    }
    assert!(telemetry.gpus.is_empty());
    let report = doctor::run(&telemetry, &power(1000.0), &[], true);
    assert_eq!(
        verdict_of(&report, CheckKind::Nvml, "system"),
        Verdict::Fail
    );
    assert_eq!(report.exit_code(), 2);
    let text = render::render_gpus(&telemetry);
    assert!(
        text.contains("NVML failed to initialize: the NVIDIA kernel driver is not loaded"),
        "{text}"
    );
}

#[test]
fn without_nvml_status_doctor_and_metrics_still_work() {
    let missing = Path::new("/nonexistent/llmd-test/libnvidia-ml.so.1");
    let telemetry = collect_once(missing, std::process::id());
    assert!(
        matches!(telemetry.nvml, NvmlStatus::LibraryMissing { .. }),
        "{telemetry:?}"
    );
    let text = render::render_gpus(&telemetry);
    assert!(text.starts_with("GPUs: none available (NVML library could not be loaded: /nonexistent/llmd-test/libnvidia-ml.so.1"), "{text}");
    let models = [split("tiny", &[(DeviceRef::Cpu, 12)])];
    let report = doctor::run(&telemetry, &power(500.0), &models, true);
    assert_eq!(
        verdict_of(&report, CheckKind::Nvml, "system"),
        Verdict::Warn
    );
    assert_eq!(verdict_of(&report, CheckKind::Psu, "system"), Verdict::Ok);
    assert_eq!(
        verdict_of(&report, CheckKind::Split, "model tiny"),
        Verdict::Ok
    );
    assert_eq!(report.exit_code(), 1);
    let doctor_text = render::render_doctor(&report);
    assert!(
        doctor_text.contains("WARN  nvml     system: no GPU data: NVML library not found"),
        "{doctor_text}"
    );
    let metrics_text = metrics::render(&telemetry, Some(&power::budget(&power(500.0), &telemetry)));
    assert!(
        metrics_text.lines().any(|line| line == "llmd_nvml_up 0"),
        "{metrics_text}"
    );
    assert!(!metrics_text.contains("llmd_gpu_"), "{metrics_text}");
}

#[test]
fn sampler_publishes_new_readings_and_never_blocks_readers() {
    let fake = FakeNvml::standard(&troubled_pair(std::process::id()));
    let sampler = GpuSampler::start(SamplerConfig {
        library: fake.library.clone(),
        interval: Duration::from_millis(100),
    })
    .expect("start sampler");
    let first = sampler.wait_for_first_sample(Duration::from_secs(10));
    assert_eq!(first.gpus[0].temperature_c, Reading::Value(86));

    fake.set_config(&troubled_pair(std::process::id()).replace("gpu0.temp 86\n", "gpu0.temp 70\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sampler.latest().gpus[0].temperature_c != Reading::Value(70) {
        assert!(Instant::now() < deadline, "new reading never published");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A driver that takes 3 s per sample: readers still get the last sample at once.
    let slow = format!("count_delay_ms 3000\n{}", troubled_pair(std::process::id()));
    fake.set_config(&slow);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let started = Instant::now();
        let latest = sampler.latest();
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "latest() blocked"
        );
        assert_eq!(latest.gpus.len(), 2);
        std::thread::sleep(Duration::from_millis(25));
    }
    fake.set_config(&troubled_pair(std::process::id()));
    let started = Instant::now();
    drop(sampler);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
}
