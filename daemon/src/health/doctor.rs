//! `llmctl doctor`: checks of the box's health, each OK / WARN / FAIL with one line on how to
//! fix it. Pure functions over a telemetry sample, the power config and the model placements.
//!
//! Exit code: 0 when every check is OK, 1 when any is WARN (and none FAIL), 2 on any FAIL.
//! A check that does not apply is OK, so that `doctor` can serve as a health check: on a
//! machine without GPUs (no GPU device in force and none in the telemetry) a missing NVML
//! library and an unset PSU rating are expected, not warnings.

pub use llmd_shared::api::health::{
    Check, CheckKind, DeviceLayers, DeviceRef, DoctorReport, ModelPlacement, Verdict,
};

use super::power::{self, PowerConfig};
use crate::gpu::{GpuSnapshot, GpuTelemetry, NvmlStatus, P2pState, Reading, ThrottleReason};

/// Below this worst-case headroom (percent of the PSU rating) the PSU check warns.
pub const MIN_PSU_HEADROOM_PERCENT: f64 = 20.0;

/// A GPU this close (°C) to its slowdown temperature gets a warning; this close to its shutdown
/// temperature, a failure.
pub const TEMPERATURE_MARGIN_C: u32 = 5;

/// Below this GPU utilization (percent) a GPU counts as idle, and a PCIe link generation below
/// the maximum is expected (the link drops to a slower generation to save power).
pub const IDLE_UTILIZATION_PERCENT: u32 = 10;

/// Consumer and workstation GPUs with an NVLink connector, for drivers that report "not
/// supported" for NVLink state when no bridge is fitted. Matched as substrings of the NVML name.
pub const NVLINK_CAPABLE_NAMES: &[&str] = &[
    "RTX 3090",
    "RTX 2080 Ti",
    "RTX 2080 SUPER",
    "RTX 2080",
    "RTX 2070 SUPER",
    "TITAN RTX",
    "RTX A6000",
    "RTX A5500",
    "RTX A5000",
    "RTX A4500",
    "Quadro RTX 8000",
    "Quadro RTX 6000",
    "Quadro RTX 5000",
    "Quadro GV100",
    "Quadro GP100",
];

/// Runs every check. `gpu_devices`: whether any GPU device is in force (configured, or found
/// by the driver); without one, and with no GPU in the telemetry, the GPU checks do not apply.
pub fn run(
    telemetry: &GpuTelemetry,
    power: &PowerConfig,
    models: &[ModelPlacement],
    gpu_devices: bool,
) -> DoctorReport {
    let mut checks = vec![check_nvml(telemetry, gpu_devices)];
    if telemetry.nvml == NvmlStatus::Loaded {
        checks.extend(telemetry.gpus.iter().map(check_pcie));
        checks.extend(telemetry.gpus.iter().map(check_thermal));
    }
    checks.push(check_psu(telemetry, power));
    checks.extend(check_splits(telemetry, models));
    if telemetry.nvml == NvmlStatus::Loaded {
        checks.extend(check_nvlink(telemetry));
        checks.extend(check_p2p(telemetry, models));
    }
    DoctorReport { checks }
}

/// Whether the GPU devices can compute: FAIL for a configured `cuda:N` that cannot hold models
/// (no driver, no such GPU), OK naming the GPUs when CUDA works; no check on a machine without
/// CUDA and without GPU devices. `gpus` are the GPU devices in force: name and, when unusable,
/// the reason.
pub fn check_cuda(
    cuda: &llmd_shared::CudaStatus,
    gpus: &[(String, Option<String>)],
) -> Option<Check> {
    let subject = "system";
    let broken: Vec<String> = gpus
        .iter()
        .filter_map(|(name, why)| why.as_ref().map(|why| format!("{name}: {why}")))
        .collect();
    if !broken.is_empty() {
        return Some(check(
            CheckKind::Cuda,
            subject,
            Verdict::Fail,
            format!("configured GPUs cannot hold models ({})", broken.join("; ")),
            Some("install the NVIDIA driver (libcuda.so.1), check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or fix the device ids in [[devices]]"),
        ));
    }
    match &cuda.unavailable {
        // A driver too old for the kernels fails even when no GPU is configured: the machine has
        // GPUs that llmd cannot use until the driver is updated.
        Some(reason) if reason.contains("or newer is required") => {
            return Some(check(
                CheckKind::Cuda,
                subject,
                Verdict::Fail,
                reason.clone(),
                Some("update the NVIDIA driver (e.g. the distribution's nvidia-driver-550 or newer package) and reboot"),
            ));
        }
        Some(_) => return None,
        None => {}
    }
    let names: Vec<&str> = gpus.iter().map(|(name, _)| name.as_str()).collect();
    Some(check(
        CheckKind::Cuda,
        subject,
        Verdict::Ok,
        format!(
            "CUDA works: the driver reports {} GPU(s); devices in use: {}",
            cuda.devices,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ),
        None,
    ))
}

/// How each pair of GPUs in use copies between them: OK peer to peer, WARN through host memory
/// with the reason (every stage boundary and re-split between them then crosses the host).
pub fn check_cuda_peers(cuda: &llmd_shared::CudaStatus) -> Vec<Check> {
    cuda.peers
        .iter()
        .map(|peer| {
            let subject = format!("{} + {}", peer.gpu_a, peer.gpu_b);
            match &peer.reason {
                None => check(
                    CheckKind::P2p,
                    subject,
                    Verdict::Ok,
                    "copies go peer to peer (peer access and memory pools enabled)".to_owned(),
                    None,
                ),
                Some(reason) => check(
                    CheckKind::P2p,
                    subject,
                    Verdict::Warn,
                    format!("copies go through host memory: {reason}"),
                    Some("activations and re-splits between these GPUs cross the host: fit an NVLink bridge, put both cards under the same CPU root complex, or disable ACS/IOMMU isolation in the BIOS"),
                ),
            }
        })
        .collect()
}

/// FAIL for each resident model whose worker failed (`failures`: name and reason), naming how
/// to recover; nothing for models that serve.
pub fn check_models(failures: &[(String, String)]) -> Vec<Check> {
    failures
        .iter()
        .map(|(name, why)| {
            let fix = format!(
                "llmctl reload {name} loads it again from its file (or: llmctl load FILE --name \
                 {name} --replace); the daemon log has the failure's details"
            );
            check(
                CheckKind::Model,
                format!("model {name}"),
                Verdict::Fail,
                format!("not serving: {why}"),
                Some(&fix),
            )
        })
        .collect()
}

/// FAIL for each declared model (`[[models]]`) whose load failed (`failures`: name and
/// reason), naming the fix; nothing for the others.
pub fn check_declared(failures: &[(String, String)]) -> Vec<Check> {
    failures
        .iter()
        .map(|(name, why)| {
            check(
                CheckKind::Model,
                format!("model {name}"),
                Verdict::Fail,
                format!("declared in the config but not loaded: {why}"),
                Some(
                    "fix the [[models]] entry (or the file: it must be readable by the daemon's \
                     user), then `systemctl reload llmd` loads it",
                ),
            )
        })
        .collect()
}

/// Builds a check.
fn check(
    kind: CheckKind,
    subject: impl Into<String>,
    verdict: Verdict,
    summary: String,
    fix: Option<&str>,
) -> Check {
    Check {
        kind,
        subject: subject.into(),
        verdict,
        summary,
        fix: fix.map(str::to_owned),
    }
}

/// "GPU 0 (NVIDIA GeForce RTX 3090)".
fn gpu_subject(gpu: &GpuSnapshot) -> String {
    match gpu.name.value() {
        Some(name) => format!("GPU {} ({name})", gpu.index),
        None => format!("GPU {}", gpu.index),
    }
}

/// NVML or the driver missing (expected, so OK, on a machine with no GPU device in force).
fn check_nvml(telemetry: &GpuTelemetry, gpu_devices: bool) -> Check {
    let subject = "system";
    match &telemetry.nvml {
        NvmlStatus::LibraryMissing { reason } if !gpu_devices => check(
            CheckKind::Nvml,
            subject,
            Verdict::Ok,
            format!("no GPU in use and no NVIDIA driver ({reason}): GPU checks do not apply"),
            None,
        ),
        NvmlStatus::NotSampledYet if !gpu_devices => check(
            CheckKind::Nvml,
            subject,
            Verdict::Ok,
            "no GPU in use; GPU telemetry has not been sampled yet".to_owned(),
            None,
        ),
        NvmlStatus::Loaded if telemetry.gpus.is_empty() => check(
            CheckKind::Nvml,
            subject,
            Verdict::Warn,
            "NVML is loaded but reports no GPU".to_owned(),
            Some("check `nvidia-smi`; GPUs may be hidden by CUDA_VISIBLE_DEVICES, a container, or not detected by the driver"),
        ),
        NvmlStatus::Loaded => {
            let driver = telemetry.driver_version.value().map_or("unknown", String::as_str);
            let cuda = telemetry.cuda_version.value().map_or("unknown", String::as_str);
            check(
                CheckKind::Nvml,
                subject,
                Verdict::Ok,
                format!("NVML loaded: driver {driver}, CUDA {cuda}, {} GPU(s)", telemetry.gpus.len()),
                None,
            )
        }
        NvmlStatus::NotSampledYet => check(
            CheckKind::Nvml,
            subject,
            Verdict::Warn,
            "GPU telemetry has not been sampled yet".to_owned(),
            Some("run doctor again in a few seconds"),
        ),
        NvmlStatus::LibraryMissing { reason } => check(
            CheckKind::Nvml,
            subject,
            Verdict::Warn,
            format!("no GPU data: NVML library not found ({reason})"),
            Some("install the NVIDIA driver (it provides libnvidia-ml.so.1); ignore on a CPU-only machine"),
        ),
        NvmlStatus::InitFailed { reason } => check(
            CheckKind::Nvml,
            subject,
            Verdict::Fail,
            format!("no GPU data: NVML failed to initialize ({reason})"),
            Some("check `nvidia-smi` and `dmesg`; reboot after a driver update, and make sure the nvidia module is loaded"),
        ),
    }
}

/// PCIe link narrower or slower than the maximum.
fn check_pcie(gpu: &GpuSnapshot) -> Check {
    let pcie = &gpu.pcie;
    let (Some(gen), Some(gen_max), Some(width), Some(width_max)) = (
        pcie.gen_current.get(),
        pcie.gen_max.get(),
        pcie.width_current.get(),
        pcie.width_max.get(),
    ) else {
        return check(
            CheckKind::Pcie,
            gpu_subject(gpu),
            Verdict::Ok,
            "PCIe link state not reported by this GPU".to_owned(),
            None,
        );
    };
    let link = format!("PCIe gen {gen}/{gen_max}, x{width}/x{width_max}");
    if width < width_max {
        return check(
            CheckKind::Pcie,
            gpu_subject(gpu),
            Verdict::Warn,
            format!("{link}: link narrower than the card supports"),
            Some("move the card to a slot wired for x16 (check the board manual: slots often share lanes), reseat it, or replace the riser"),
        );
    }
    if gen < gen_max {
        let utilization = gpu.utilization.value().map(|rates| rates.gpu_percent);
        if utilization.is_some_and(|percent| percent < IDLE_UTILIZATION_PERCENT) {
            return check(
                CheckKind::Pcie,
                gpu_subject(gpu),
                Verdict::Ok,
                format!("{link}: lower generation while idle is normal power saving"),
                None,
            );
        }
        return check(
            CheckKind::Pcie,
            gpu_subject(gpu),
            Verdict::Warn,
            format!("{link}: link slower than the card supports while busy"),
            Some("set the slot to the card's PCIe generation in the BIOS, reseat the card, or replace the riser (re-check under load)"),
        );
    }
    check(CheckKind::Pcie, gpu_subject(gpu), Verdict::Ok, link, None)
}

/// Temperature near slowdown/shutdown and active thermal or power throttling.
fn check_thermal(gpu: &GpuSnapshot) -> Check {
    let subject = gpu_subject(gpu);
    let temperature = gpu.temperature_c.get();
    let slowdown = gpu.temperature_slowdown_c.get();
    let shutdown = gpu.temperature_shutdown_c.get();
    let reasons: Vec<ThrottleReason> = gpu.throttle_reasons.value().cloned().unwrap_or_default();
    let throttling: Vec<&str> = reasons
        .iter()
        .filter(|reason| reason.is_thermal_or_power())
        .map(|reason| reason.describe())
        .collect();
    let temp_text = match (temperature, slowdown) {
        (Some(temp), Some(slowdown)) => format!("{temp} °C (slowdown at {slowdown} °C)"),
        (Some(temp), None) => format!("{temp} °C"),
        _ => "temperature not reported".to_owned(),
    };
    let near = |limit: Option<u32>| match (temperature, limit) {
        (Some(temp), Some(limit)) => temp + TEMPERATURE_MARGIN_C >= limit,
        _ => false,
    };
    let hardware = reasons.iter().any(|reason| {
        matches!(
            reason,
            ThrottleReason::HwSlowdown
                | ThrottleReason::HwThermalSlowdown
                | ThrottleReason::HwPowerBrakeSlowdown
        )
    });
    let throttle_text = if throttling.is_empty() {
        String::new()
    } else {
        format!(", throttling: {}", throttling.join(", "))
    };
    let summary = format!("{temp_text}{throttle_text}");
    if near(shutdown) || hardware {
        return check(
            CheckKind::Thermal,
            subject,
            Verdict::Fail,
            summary,
            Some("improve airflow or fan curve now; hardware slowdown/power brake also fires when the PSU or its cables cannot deliver"),
        );
    }
    if near(slowdown) || reasons.contains(&ThrottleReason::SwThermalSlowdown) {
        return check(
            CheckKind::Thermal,
            subject,
            Verdict::Warn,
            summary,
            Some("improve case airflow or the fan curve, or lower the power limit (`nvidia-smi -pl WATTS`)"),
        );
    }
    if reasons.contains(&ThrottleReason::SwPowerCap) {
        return check(
            CheckKind::Thermal,
            subject,
            Verdict::Warn,
            summary,
            Some("the power limit holds clocks down: raise it (`nvidia-smi -pl WATTS`) if the PSU budget allows, or accept it"),
        );
    }
    check(CheckKind::Thermal, subject, Verdict::Ok, summary, None)
}

/// PSU worst case above its rating, or headroom under [`MIN_PSU_HEADROOM_PERCENT`].
fn check_psu(telemetry: &GpuTelemetry, config: &PowerConfig) -> Check {
    let subject = "system";
    let Some(psu) = config.psu_watts else {
        if telemetry.gpus.is_empty() {
            return check(
                CheckKind::Psu,
                subject,
                Verdict::Ok,
                "no GPU power data and no PSU rating configured: the power budget does not \
                 apply"
                    .to_owned(),
                None,
            );
        }
        return check(
            CheckKind::Psu,
            subject,
            Verdict::Warn,
            "PSU rating not configured: power budget cannot be checked".to_owned(),
            Some("set `psu_watts` in the [power] section of /etc/llmd/llmd.toml"),
        );
    };
    if telemetry.gpus.is_empty() {
        let verdict = if config.system_watts > psu {
            Verdict::Fail
        } else {
            Verdict::Ok
        };
        return check(
            CheckKind::Psu,
            subject,
            verdict,
            format!(
                "no GPU power data; system estimate {:.0} W of {psu:.0} W",
                config.system_watts
            ),
            (verdict == Verdict::Fail).then_some("check power.system_watts and power.psu_watts"),
        );
    }
    let budget = power::budget(config, telemetry);
    let headroom = budget.worst_case_headroom_percent.unwrap_or(0.0);
    let summary = format!(
        "worst case {:.0} W (GPU limits {:.0} W × {:.2} + system {:.0} W) on a {psu:.0} W PSU: {headroom:.0}% headroom",
        budget.worst_case_watts, budget.gpu_limits_watts, budget.transient_factor, budget.system_watts
    );
    if budget.worst_case_watts > psu {
        return check(
            CheckKind::Psu,
            subject,
            Verdict::Fail,
            summary,
            Some("lower the GPUs' power limits (`nvidia-smi -pl WATTS`) until the worst case fits, or fit a larger PSU"),
        );
    }
    if headroom < MIN_PSU_HEADROOM_PERCENT {
        return check(
            CheckKind::Psu,
            subject,
            Verdict::Warn,
            summary,
            Some("keep 20% headroom for transients: lower the GPU power limits slightly or fit a larger PSU"),
        );
    }
    if !budget.is_complete() {
        return check(
            CheckKind::Psu,
            subject,
            Verdict::Warn,
            format!("{summary}; some GPUs report no power limit or draw"),
            Some("the budget misses GPUs without power readings; treat it as a lower bound"),
        );
    }
    check(CheckKind::Psu, subject, Verdict::Ok, summary, None)
}

/// A model whose split leaves a device with no layers, or puts every layer on one device while
/// another GPU holds nothing at all.
fn check_splits(telemetry: &GpuTelemetry, models: &[ModelPlacement]) -> Vec<Check> {
    let idle_gpus: Vec<u32> = telemetry
        .gpus
        .iter()
        .map(|gpu| gpu.index)
        .filter(|index| {
            !models
                .iter()
                .any(|model| model.gpus_with_layers().contains(index))
        })
        .collect();
    models
        .iter()
        .map(|model| {
            let subject = format!("model {}", model.name);
            let split = model.split_summary("");
            let empty: Vec<String> = model
                .layers
                .iter()
                .filter(|entry| entry.layers == 0)
                .map(|entry| entry.device.to_string())
                .collect();
            if !empty.is_empty() {
                return check(
                    CheckKind::Split,
                    subject,
                    Verdict::Warn,
                    format!("split [{split}] leaves {} with no layers", empty.join(", ")),
                    Some("adjust the model's split so every listed device gets layers, or drop the device from it"),
                );
            }
            let holding: Vec<&DeviceLayers> = model.layers.iter().filter(|entry| entry.layers > 0).collect();
            if holding.len() == 1 && !idle_gpus.is_empty() {
                let idle = idle_gpus.iter().map(|index| format!("GPU {index}")).collect::<Vec<_>>().join(", ");
                return check(
                    CheckKind::Split,
                    subject,
                    Verdict::Warn,
                    format!("every layer on {} while {idle} holds nothing", holding[0].device),
                    Some("split the model across the GPUs (more room for context, less VRAM pressure), or load another model on the idle GPU"),
                );
            }
            check(CheckKind::Split, subject, Verdict::Ok, format!("split [{split}]"), None)
        })
        .collect()
}

/// Whether the GPU has NVLink, by NVML's link count or, failing that, by its name.
fn nvlink_capable(gpu: &GpuSnapshot) -> bool {
    match &gpu.nvlink {
        Reading::Value(nvlink) => nvlink.links > 0,
        Reading::NotSupported | Reading::Error(_) => gpu.name.value().is_some_and(|name| {
            NVLINK_CAPABLE_NAMES
                .iter()
                .any(|capable| name.contains(capable))
        }),
    }
}

/// Two GPUs of an NVLink-capable type without an active link.
fn check_nvlink(telemetry: &GpuTelemetry) -> Vec<Check> {
    let mut checks = Vec::new();
    for (position, a) in telemetry.gpus.iter().enumerate() {
        for b in &telemetry.gpus[position + 1..] {
            if !(nvlink_capable(a) && nvlink_capable(b) && a.name == b.name) {
                continue;
            }
            let subject = format!("GPU {} + GPU {}", a.index, b.index);
            let active = |gpu: &GpuSnapshot| gpu.nvlink.value().map_or(0, |nvlink| nvlink.active);
            let bridged = telemetry
                .p2p_between(a.index, b.index)
                .and_then(|pair| pair.nvlink.get())
                == Some(P2pState::Ok);
            if active(a) == 0 || active(b) == 0 {
                checks.push(check(
                    CheckKind::Nvlink,
                    subject,
                    Verdict::Warn,
                    format!(
                        "both GPUs support NVLink but links are down ({} and {} active)",
                        active(a),
                        active(b)
                    ),
                    Some("fit (or reseat) an NVLink bridge of the right slot spacing; without it layer transfers cross PCIe"),
                ));
            } else {
                let via = if bridged {
                    ", peer access over NVLink"
                } else {
                    ""
                };
                checks.push(check(
                    CheckKind::Nvlink,
                    subject,
                    Verdict::Ok,
                    format!(
                        "NVLink up ({} and {} links active{via})",
                        active(a),
                        active(b)
                    ),
                    None,
                ));
            }
        }
    }
    checks
}

/// P2P unavailable between GPUs that hold parts of one model.
fn check_p2p(telemetry: &GpuTelemetry, models: &[ModelPlacement]) -> Vec<Check> {
    let mut checks = Vec::new();
    for model in models {
        let gpus = model.gpus_with_layers();
        for (position, a) in gpus.iter().enumerate() {
            for b in &gpus[position + 1..] {
                let subject = format!("model {}: GPU {a} + GPU {b}", model.name);
                let read = telemetry.p2p_between(*a, *b).map(|pair| pair.read.clone());
                let (verdict, summary) = match read {
                    Some(Reading::Value(P2pState::Ok)) => {
                        (Verdict::Ok, "peer-to-peer access available".to_owned())
                    }
                    Some(Reading::Value(state)) => (
                        Verdict::Warn,
                        format!("peer-to-peer unavailable: {}", state.describe()),
                    ),
                    Some(Reading::NotSupported) => (
                        Verdict::Warn,
                        "peer-to-peer status not reported by the driver".to_owned(),
                    ),
                    Some(Reading::Error(message)) => (
                        Verdict::Warn,
                        format!("peer-to-peer status unknown: {message}"),
                    ),
                    None => (Verdict::Warn, "GPU not present in telemetry".to_owned()),
                };
                let fix = (verdict != Verdict::Ok).then_some(
                    "activations go through host memory: fit an NVLink bridge, put both cards under the same CPU root complex, or disable ACS/IOMMU isolation in the BIOS",
                );
                checks.push(check(CheckKind::P2p, subject, verdict, summary, fix));
            }
        }
    }
    checks
}

#[cfg(test)]
mod cuda_check_tests {
    use super::*;
    use llmd_shared::CudaStatus;

    #[test]
    fn cuda_check_fails_for_unusable_configured_gpus_and_is_absent_on_cpu_only_machines() {
        let none = CudaStatus {
            devices: 0,
            unavailable: Some("libcuda was not found".into()),
            peers: Vec::new(),
        };
        assert_eq!(check_cuda(&none, &[]), None);
        let c = check_cuda(
            &none,
            &[(
                "cuda:0".into(),
                Some("CUDA is unavailable: libcuda was not found".into()),
            )],
        )
        .expect("a check");
        assert_eq!((c.kind, c.verdict), (CheckKind::Cuda, Verdict::Fail));
        assert!(
            c.summary.contains("cuda:0: CUDA is unavailable"),
            "{}",
            c.summary
        );
        let two = CudaStatus {
            devices: 2,
            unavailable: None,
            peers: Vec::new(),
        };
        let c =
            check_cuda(&two, &[("cuda:0".into(), None), ("cuda:1".into(), None)]).expect("a check");
        assert_eq!(c.verdict, Verdict::Ok);
        assert!(
            c.summary
                .contains("2 GPU(s); devices in use: cuda:0, cuda:1"),
            "{}",
            c.summary
        );
        let c = check_cuda(&two, &[("cuda:2".into(), Some("no CUDA device 2".into()))])
            .expect("a check");
        assert_eq!(c.verdict, Verdict::Fail);
    }

    #[test]
    fn a_driver_too_old_fails_the_doctor_with_the_requirement() {
        let reason = llmd_kernels::backend::check_driver(12020).expect_err("535 is too old");
        let old = CudaStatus {
            devices: 0,
            unavailable: Some(reason.clone()),
            peers: Vec::new(),
        };
        let c = check_cuda(&old, &[]).expect("a check even without configured GPUs");
        assert_eq!((c.kind, c.verdict), (CheckKind::Cuda, Verdict::Fail));
        assert_eq!(
            c.summary,
            "NVIDIA driver 550 or newer is required, found a driver for CUDA 12.2 (release 535)"
        );
    }

    #[test]
    fn gpu_pairs_report_peer_to_peer_or_through_the_host() {
        let status = CudaStatus {
            devices: 3,
            unavailable: None,
            peers: vec![
                llmd_shared::CudaPeer {
                    gpu_a: "cuda:0".into(),
                    gpu_b: "cuda:1".into(),
                    direct: true,
                    reason: None,
                },
                llmd_shared::CudaPeer {
                    gpu_a: "cuda:0".into(),
                    gpu_b: "cuda:2".into(),
                    direct: false,
                    reason: Some("the driver reports no peer access from GPU 0 to GPU 2".into()),
                },
            ],
        };
        let checks = check_cuda_peers(&status);
        assert_eq!(checks.len(), 2);
        assert_eq!(
            (checks[0].verdict, checks[0].subject.as_str()),
            (Verdict::Ok, "cuda:0 + cuda:1")
        );
        assert_eq!(checks[1].verdict, Verdict::Warn);
        assert!(checks[1]
            .summary
            .contains("through host memory: the driver reports no peer access"));
    }
}
