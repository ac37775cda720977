//! Human rendering: the GPU/power/model part of `llmctl status` and the `llmctl doctor` report.
//! Fields a GPU does not support read "n/a"; failed reads say "error: <why>". Lives in the
//! protocol crate so that `llmctl` (which depends on nothing else) and the daemon's tests share it.

use std::fmt::Write as _;

use crate::api::gpu::{GpuSnapshot, GpuTelemetry, Reading};
use crate::api::health::{DoctorReport, ModelPlacement, PowerBudget, Verdict};

/// Bytes per GiB.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Text for a reading: the formatted value, "n/a" or "error: ...".
fn text<T>(reading: &Reading<T>, format: impl Fn(&T) -> String) -> String {
    match reading {
        Reading::Value(value) => format(value),
        Reading::NotSupported => "n/a".to_owned(),
        Reading::Error(message) => format!("error: {message}"),
    }
}

/// Bytes as GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

/// Renders the GPU section: driver line, one block per GPU, peer-to-peer pairs.
pub fn render_gpus(telemetry: &GpuTelemetry) -> String {
    let mut out = String::new();
    if let Some(reason) = telemetry.nvml.unavailable_reason() {
        let _ = writeln!(out, "GPUs: none available ({reason})");
        return out;
    }
    let _ = writeln!(
        out,
        "NVIDIA driver {}, CUDA {}, {} GPU(s)",
        text(&telemetry.driver_version, String::clone),
        text(&telemetry.cuda_version, String::clone),
        telemetry.gpus.len()
    );
    for gpu in &telemetry.gpus {
        render_gpu(&mut out, gpu);
    }
    for pair in &telemetry.p2p {
        let _ = writeln!(
            out,
            "P2P GPU {} <-> GPU {}: {} (over NVLink: {})",
            pair.gpu_a,
            pair.gpu_b,
            text(&pair.read, |state| state.describe().to_owned()),
            text(&pair.nvlink, |state| state.describe().to_owned()),
        );
    }
    out
}

/// Renders one GPU block.
fn render_gpu(out: &mut String, gpu: &GpuSnapshot) {
    let _ = writeln!(
        out,
        "GPU {}  {}  ({}, {})",
        gpu.index,
        text(&gpu.name, String::clone),
        text(&gpu.uuid, String::clone),
        text(&gpu.pci_bus_id, String::clone)
    );
    let llmd = text(&gpu.llmd_memory_bytes, |bytes| gib(*bytes));
    let _ = writeln!(
        out,
        "  VRAM      {}",
        text(&gpu.memory, |memory| format!(
            "{} / {} used (llmd {llmd}), {} free",
            gib(memory.used_bytes),
            gib(memory.total_bytes),
            gib(memory.free_bytes)
        ))
    );
    let _ = writeln!(
        out,
        "  load      {}",
        text(&gpu.utilization, |rates| format!(
            "GPU {}%, memory {}%",
            rates.gpu_percent, rates.memory_percent
        ))
    );
    let _ = writeln!(
        out,
        "  temp      {} (slowdown {}, shutdown {}), fan {}",
        text(&gpu.temperature_c, |c| format!("{c} °C")),
        text(&gpu.temperature_slowdown_c, |c| format!("{c} °C")),
        text(&gpu.temperature_shutdown_c, |c| format!("{c} °C")),
        text(&gpu.fan_percent, |percent| format!("{percent}%"))
    );
    let limits = &gpu.power_limits;
    let watts = |w: &f64| format!("{w:.0} W");
    let _ = writeln!(
        out,
        "  power     {} of {} limit (default {}, range {} to {}), {} used",
        text(&gpu.power_draw_w, watts),
        text(&limits.enforced_w, watts),
        text(&limits.default_w, watts),
        text(&limits.min_w, watts),
        text(&limits.max_w, watts),
        text(&gpu.energy_j, |joules| format!("{:.3} kWh", joules / 3.6e6))
    );
    let _ = writeln!(
        out,
        "  clocks    SM {}, memory {}",
        text(&gpu.clock_sm_mhz, |mhz| format!("{mhz} MHz")),
        text(&gpu.clock_memory_mhz, |mhz| format!("{mhz} MHz"))
    );
    let _ = writeln!(
        out,
        "  throttle  {}",
        text(&gpu.throttle_reasons, |reasons| if reasons.is_empty() {
            "none".to_owned()
        } else {
            reasons
                .iter()
                .map(|reason| reason.describe())
                .collect::<Vec<_>>()
                .join(", ")
        })
    );
    let pcie = &gpu.pcie;
    let number = |n: &u32| n.to_string();
    let _ = writeln!(
        out,
        "  PCIe      gen {}/{}, x{}/x{}, tx {} rx {}",
        text(&pcie.gen_current, number),
        text(&pcie.gen_max, number),
        text(&pcie.width_current, number),
        text(&pcie.width_max, number),
        text(&pcie.tx_kib_s, |kib| format!(
            "{:.1} MiB/s",
            f64::from(*kib) / 1024.0
        )),
        text(&pcie.rx_kib_s, |kib| format!(
            "{:.1} MiB/s",
            f64::from(*kib) / 1024.0
        )),
    );
    let _ = writeln!(
        out,
        "  NVLink    {}",
        text(&gpu.nvlink, |nvlink| format!(
            "{} of {} links active",
            nvlink.active, nvlink.links
        ))
    );
}

/// Renders the power budget in two lines.
pub fn render_power(budget: &PowerBudget) -> String {
    let percent =
        |value: Option<f64>| value.map_or_else(String::new, |p| format!(", {p:.0}% headroom"));
    let psu = budget.psu_watts.map_or_else(
        || "PSU rating not configured (power.psu_watts)".to_owned(),
        |w| format!("PSU {w:.0} W"),
    );
    format!(
        "Power: {psu}\n  now        {:.0} W (GPUs {:.0} W + system {:.0} W){}\n  worst case {:.0} W (GPU limits {:.0} W × {:.2} + system {:.0} W){}\n",
        budget.current_watts,
        budget.gpu_draw_watts,
        budget.system_watts,
        percent(budget.current_headroom_percent),
        budget.worst_case_watts,
        budget.gpu_limits_watts,
        budget.transient_factor,
        budget.system_watts,
        percent(budget.worst_case_headroom_percent),
    )
}

/// Renders the models with their layers per device.
pub fn render_models(models: &[ModelPlacement]) -> String {
    if models.is_empty() {
        return "Models: none resident\n".to_owned();
    }
    let mut out = "Models:\n".to_owned();
    for model in models {
        let _ = writeln!(out, "  {}: {}", model.name, model.split_summary(" layers"));
    }
    out
}

/// Renders the doctor report: one line per check, a fix line under each that is not OK, and a
/// closing count.
pub fn render_doctor(report: &DoctorReport) -> String {
    let mut out = String::new();
    for check in &report.checks {
        let _ = writeln!(
            out,
            "{:<4}  {:<7}  {}: {}",
            check.verdict.label(),
            check.kind.label(),
            check.subject,
            check.summary
        );
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "               fix: {fix}");
        }
    }
    let count = |verdict| {
        report
            .checks
            .iter()
            .filter(|check| check.verdict == verdict)
            .count()
    };
    let _ = writeln!(
        out,
        "{} OK, {} WARN, {} FAIL",
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail)
    );
    out
}
