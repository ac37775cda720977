//! The Prometheus text exposition (version 0.0.4) of the telemetry and power budget, for a
//! node-exporter textfile collector or a script. Fields a GPU does not report are left out, as
//! Prometheus expects, rather than exported as zero.

use std::fmt::Write as _;

use super::power::PowerBudget;
use crate::gpu::{GpuSnapshot, GpuTelemetry, NvmlStatus, P2pState, ThrottleReason};
use crate::host_memory::ResidentMemory;

/// One metric family being written: its HELP/TYPE header and samples.
struct Family<'a> {
    /// The output buffer.
    out: &'a mut String,
}

impl<'a> Family<'a> {
    /// Writes the HELP and TYPE lines.
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    /// Writes one sample.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (position, (key, label)) in labels.iter().enumerate() {
                if position > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(label));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Formats a sample value (integers without a fraction).
fn format_value(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// A per-GPU gauge: one sample per GPU that reports it.
fn gpu_gauge(
    out: &mut String,
    telemetry: &GpuTelemetry,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&GpuSnapshot) -> Option<f64>,
) {
    let samples: Vec<(String, f64)> = telemetry
        .gpus
        .iter()
        .filter_map(|gpu| value(gpu).map(|value| (gpu.index.to_string(), value)))
        .collect();
    if samples.is_empty() {
        return;
    }
    let mut family = Family::new(out, name, kind, help);
    for (gpu, value) in &samples {
        family.sample(name, &[("gpu", gpu)], *value);
    }
}

/// Renders the daemon process's resident memory: `llmd_resident_memory_bytes` by `kind`
/// (`total`, `anon`, `file`) and `llmd_resident_memory_peak_bytes`.
pub fn render_process(memory: &ResidentMemory) -> String {
    let mut out = String::new();
    let name = "llmd_resident_memory_bytes";
    let mut family = Family::new(
        &mut out,
        name,
        "gauge",
        "Resident memory of the llmd process (total, anonymous, file-backed).",
    );
    for (kind, bytes) in [
        ("total", memory.rss),
        ("anon", memory.anon),
        ("file", memory.file),
    ] {
        family.sample(name, &[("kind", kind)], bytes as f64);
    }
    let name = "llmd_resident_memory_peak_bytes";
    Family::new(
        &mut out,
        name,
        "gauge",
        "The most memory the llmd process has had resident.",
    )
    .sample(name, &[], memory.peak as f64);
    out
}

/// Renders every metric. `budget` is absent when no power config applies.
pub fn render(telemetry: &GpuTelemetry, budget: Option<&PowerBudget>) -> String {
    let mut out = String::new();
    let up = f64::from(u8::from(telemetry.nvml == NvmlStatus::Loaded));
    Family::new(
        &mut out,
        "llmd_nvml_up",
        "gauge",
        "Whether NVML was usable for the latest sample (1) or not (0).",
    )
    .sample("llmd_nvml_up", &[], up);
    if !telemetry.gpus.is_empty() {
        let mut family = Family::new(
            &mut out,
            "llmd_gpu_info",
            "gauge",
            "GPU identity; always 1.",
        );
        let driver = telemetry
            .driver_version
            .value()
            .cloned()
            .unwrap_or_default();
        let cuda = telemetry.cuda_version.value().cloned().unwrap_or_default();
        for gpu in &telemetry.gpus {
            let index = gpu.index.to_string();
            let name = gpu.name.value().cloned().unwrap_or_default();
            let uuid = gpu.uuid.value().cloned().unwrap_or_default();
            let bus = gpu.pci_bus_id.value().cloned().unwrap_or_default();
            family.sample(
                "llmd_gpu_info",
                &[
                    ("gpu", &index),
                    ("uuid", &uuid),
                    ("name", &name),
                    ("pci_bus_id", &bus),
                    ("driver_version", &driver),
                    ("cuda_version", &cuda),
                ],
                1.0,
            );
        }
    }
    let bytes = |v: u64| v as f64;
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_memory_total_bytes",
        "gauge",
        "Total VRAM.",
        |g| g.memory.value().map(|m| bytes(m.total_bytes)),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_memory_used_bytes",
        "gauge",
        "VRAM in use by all processes.",
        |g| g.memory.value().map(|m| bytes(m.used_bytes)),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_memory_free_bytes",
        "gauge",
        "VRAM available.",
        |g| g.memory.value().map(|m| bytes(m.free_bytes)),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_memory_llmd_bytes",
        "gauge",
        "VRAM held by llmd.",
        |g| g.llmd_memory_bytes.get().map(bytes),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_utilization_percent",
        "gauge",
        "Percent of time a kernel ran.",
        |g| g.utilization.value().map(|u| f64::from(u.gpu_percent)),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_memory_utilization_percent",
        "gauge",
        "Percent of time device memory was read or written.",
        |g| g.utilization.value().map(|u| f64::from(u.memory_percent)),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_temperature_celsius",
        "gauge",
        "GPU core temperature.",
        |g| g.temperature_c.get().map(f64::from),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_temperature_slowdown_celsius",
        "gauge",
        "Temperature at which the GPU slows down.",
        |g| g.temperature_slowdown_c.get().map(f64::from),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_temperature_shutdown_celsius",
        "gauge",
        "Temperature at which the GPU shuts down.",
        |g| g.temperature_shutdown_c.get().map(f64::from),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_fan_speed_percent",
        "gauge",
        "Speed of the first fan.",
        |g| g.fan_percent.get().map(f64::from),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_power_draw_watts",
        "gauge",
        "Power draw (NVML average).",
        |g| g.power_draw_w.get(),
    );
    let limit_samples: Vec<(String, &str, f64)> = telemetry
        .gpus
        .iter()
        .flat_map(|gpu| {
            let limits = &gpu.power_limits;
            [
                ("enforced", limits.enforced_w.get()),
                ("default", limits.default_w.get()),
                ("min", limits.min_w.get()),
                ("max", limits.max_w.get()),
            ]
            .into_iter()
            .filter_map(move |(kind, value)| {
                value.map(|value| (gpu.index.to_string(), kind, value))
            })
        })
        .collect();
    if !limit_samples.is_empty() {
        let mut family = Family::new(
            &mut out,
            "llmd_gpu_power_limit_watts",
            "gauge",
            "Power limits by kind.",
        );
        for (gpu, kind, value) in &limit_samples {
            family.sample(
                "llmd_gpu_power_limit_watts",
                &[("gpu", gpu), ("kind", kind)],
                *value,
            );
        }
    }
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_energy_joules_total",
        "counter",
        "Energy used since the driver was loaded.",
        |g| g.energy_j.get(),
    );
    let clocks: Vec<(String, &str, f64)> = telemetry
        .gpus
        .iter()
        .flat_map(|gpu| {
            [
                ("sm", gpu.clock_sm_mhz.get()),
                ("memory", gpu.clock_memory_mhz.get()),
            ]
            .into_iter()
            .filter_map(move |(clock, mhz)| {
                mhz.map(|mhz| (gpu.index.to_string(), clock, f64::from(mhz) * 1e6))
            })
        })
        .collect();
    if !clocks.is_empty() {
        let mut family = Family::new(&mut out, "llmd_gpu_clock_hertz", "gauge", "Current clocks.");
        for (gpu, clock, hertz) in &clocks {
            family.sample(
                "llmd_gpu_clock_hertz",
                &[("gpu", gpu), ("clock", clock)],
                *hertz,
            );
        }
    }
    let throttled: Vec<(String, Vec<ThrottleReason>)> = telemetry
        .gpus
        .iter()
        .filter_map(|gpu| {
            gpu.throttle_reasons
                .value()
                .map(|reasons| (gpu.index.to_string(), reasons.clone()))
        })
        .collect();
    if !throttled.is_empty() {
        let mut family = Family::new(
            &mut out,
            "llmd_gpu_throttle_active",
            "gauge",
            "Whether a clock throttle reason is active (1) or not (0).",
        );
        for (gpu, reasons) in &throttled {
            for (reason, _) in ThrottleReason::ALL {
                let active = f64::from(u8::from(reasons.contains(&reason)));
                family.sample(
                    "llmd_gpu_throttle_active",
                    &[("gpu", gpu), ("reason", reason.label())],
                    active,
                );
            }
        }
    }
    let links: Vec<(String, &str, &str, f64)> = telemetry
        .gpus
        .iter()
        .flat_map(|gpu| {
            let pcie = &gpu.pcie;
            [
                ("generation", "current", pcie.gen_current.get()),
                ("generation", "max", pcie.gen_max.get()),
                ("width", "current", pcie.width_current.get()),
                ("width", "max", pcie.width_max.get()),
            ]
            .into_iter()
            .filter_map(move |(what, kind, value)| {
                value.map(|value| (gpu.index.to_string(), what, kind, f64::from(value)))
            })
        })
        .collect();
    for what in ["generation", "width"] {
        let name = format!("llmd_gpu_pcie_link_{what}");
        let samples: Vec<&(String, &str, &str, f64)> =
            links.iter().filter(|sample| sample.1 == what).collect();
        if samples.is_empty() {
            continue;
        }
        let mut family = Family::new(
            &mut out,
            &name,
            "gauge",
            &format!("PCIe link {what}, current and maximum."),
        );
        for (gpu, _, kind, value) in samples {
            family.sample(&name, &[("gpu", gpu), ("kind", kind)], *value);
        }
    }
    let traffic: Vec<(String, &str, f64)> = telemetry
        .gpus
        .iter()
        .flat_map(|gpu| {
            [
                ("tx", gpu.pcie.tx_kib_s.get()),
                ("rx", gpu.pcie.rx_kib_s.get()),
            ]
            .into_iter()
            .filter_map(move |(direction, kib)| {
                kib.map(|kib| (gpu.index.to_string(), direction, f64::from(kib) * 1024.0))
            })
        })
        .collect();
    if !traffic.is_empty() {
        let name = "llmd_gpu_pcie_throughput_bytes_per_second";
        let mut family = Family::new(
            &mut out,
            name,
            "gauge",
            "PCIe traffic (tx: from the GPU, rx: to the GPU).",
        );
        for (gpu, direction, value) in &traffic {
            family.sample(name, &[("gpu", gpu), ("direction", direction)], *value);
        }
    }
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_nvlink_links",
        "gauge",
        "NVLink links the GPU has.",
        |g| g.nvlink.value().map(|n| f64::from(n.links)),
    );
    gpu_gauge(
        &mut out,
        telemetry,
        "llmd_gpu_nvlink_active_links",
        "gauge",
        "NVLink links that are up.",
        |g| g.nvlink.value().map(|n| f64::from(n.active)),
    );
    let pairs: Vec<(String, String, f64)> = telemetry
        .p2p
        .iter()
        .filter_map(|pair| {
            pair.read.get().map(|state| {
                (
                    pair.gpu_a.to_string(),
                    pair.gpu_b.to_string(),
                    f64::from(u8::from(state == P2pState::Ok)),
                )
            })
        })
        .collect();
    if !pairs.is_empty() {
        let name = "llmd_gpu_p2p_supported";
        let mut family = Family::new(
            &mut out,
            name,
            "gauge",
            "Whether two GPUs can access each other's memory directly.",
        );
        for (a, b, value) in &pairs {
            family.sample(name, &[("gpu_a", a), ("gpu_b", b)], *value);
        }
    }
    if let Some(budget) = budget {
        if let Some(psu) = budget.psu_watts {
            Family::new(
                &mut out,
                "llmd_power_psu_watts",
                "gauge",
                "The PSU's configured rating.",
            )
            .sample("llmd_power_psu_watts", &[], psu);
        }
        Family::new(
            &mut out,
            "llmd_power_current_watts",
            "gauge",
            "GPU draw plus the system estimate.",
        )
        .sample("llmd_power_current_watts", &[], budget.current_watts);
        Family::new(
            &mut out,
            "llmd_power_worst_case_watts",
            "gauge",
            "Sum of GPU power limits times the transient factor, plus the system estimate.",
        )
        .sample("llmd_power_worst_case_watts", &[], budget.worst_case_watts);
        if let Some(headroom) = budget.worst_case_headroom_percent {
            Family::new(
                &mut out,
                "llmd_power_worst_case_headroom_percent",
                "gauge",
                "PSU headroom left in the worst case, in percent of its rating.",
            )
            .sample("llmd_power_worst_case_headroom_percent", &[], headroom);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn formats_values() {
        assert_eq!(format_value(350.0), "350");
        assert_eq!(format_value(12.5), "12.5");
    }

    #[test]
    fn without_nvml_only_up_is_exported() {
        let telemetry = GpuTelemetry::unavailable(
            NvmlStatus::LibraryMissing {
                reason: "gone".to_owned(),
            },
            1,
        );
        let text = render(&telemetry, None);
        assert_eq!(
            text,
            "# HELP llmd_nvml_up Whether NVML was usable for the latest sample (1) or not (0).\n# TYPE llmd_nvml_up gauge\nllmd_nvml_up 0\n"
        );
    }

    #[test]
    fn process_memory_is_exported_by_kind() {
        let text = render_process(&ResidentMemory {
            rss: 300,
            anon: 290,
            file: 10,
            peak: 400,
        });
        for line in [
            "llmd_resident_memory_bytes{kind=\"total\"} 300",
            "llmd_resident_memory_bytes{kind=\"anon\"} 290",
            "llmd_resident_memory_bytes{kind=\"file\"} 10",
            "llmd_resident_memory_peak_bytes 400",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
