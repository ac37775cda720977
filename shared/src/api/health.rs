//! Health data of the box beyond raw telemetry: the PSU power budget, `doctor` check results,
//! and how each resident model is split across devices. Computed by the daemon's `health`
//! module; carried by `status`, `doctor` and `metrics` replies.

use serde::{Deserialize, Serialize};

/// The computed budget. All figures in W, headroom in percent of the PSU rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerBudget {
    /// The PSU rating, if configured.
    pub psu_watts: Option<f64>,
    /// The configured system estimate.
    pub system_watts: f64,
    /// The configured transient factor.
    pub transient_factor: f64,
    /// Sum of the GPUs' current draw (those that report it).
    pub gpu_draw_watts: f64,
    /// `gpu_draw_watts + system_watts`.
    pub current_watts: f64,
    /// Sum of the GPUs' enforced power limits (default limit where the enforced one is missing).
    pub gpu_limits_watts: f64,
    /// `gpu_limits_watts × transient_factor + system_watts`.
    pub worst_case_watts: f64,
    /// `(psu − current) / psu × 100`, when the PSU rating is known.
    pub current_headroom_percent: Option<f64>,
    /// `(psu − worst case) / psu × 100`, when the PSU rating is known (negative: over budget).
    pub worst_case_headroom_percent: Option<f64>,
    /// GPUs whose draw is unknown (not counted in `gpu_draw_watts`).
    pub gpus_without_draw: Vec<u32>,
    /// GPUs without any power limit reading (not counted in the worst case).
    pub gpus_without_limit: Vec<u32>,
}

impl PowerBudget {
    /// Whether every GPU contributed to both sums.
    pub fn is_complete(&self) -> bool {
        self.gpus_without_draw.is_empty() && self.gpus_without_limit.is_empty()
    }
}

/// A check's outcome, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// Works, but something costs performance or safety margin.
    Warn,
    /// Broken, or likely to fail (e.g. a PSU that will trip).
    Fail,
}

impl Verdict {
    /// "OK", "WARN" or "FAIL".
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// What a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// NVML and the NVIDIA driver are usable.
    Nvml,
    /// PCIe link generation and width against the maximum.
    Pcie,
    /// PSU worst case and headroom.
    Psu,
    /// How a model's layers are split across devices.
    Split,
    /// NVLink bridges between NVLink-capable GPUs.
    Nvlink,
    /// Peer-to-peer access between GPUs holding parts of one model.
    P2p,
    /// Temperature and throttling.
    Thermal,
    /// CUDA (the driver's compute library) usable for the configured GPUs.
    Cuda,
    /// A resident model still serves (its worker has not failed).
    Model,
}

impl CheckKind {
    /// Short name for the human report and JSON.
    pub fn label(self) -> &'static str {
        match self {
            CheckKind::Nvml => "nvml",
            CheckKind::Pcie => "pcie",
            CheckKind::Psu => "psu",
            CheckKind::Split => "split",
            CheckKind::Nvlink => "nvlink",
            CheckKind::P2p => "p2p",
            CheckKind::Thermal => "thermal",
            CheckKind::Cuda => "cuda",
            CheckKind::Model => "model",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub kind: CheckKind,
    /// What it was checked on, e.g. "GPU 0", "GPU 0 + GPU 1", "model qwen2-7b", "system".
    pub subject: String,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found, in one line.
    pub summary: String,
    /// How to fix it, in one line (absent when OK).
    pub fix: Option<String>,
}

/// All checks of one doctor run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// Every check, in the order they ran.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// The worst verdict (OK when there are no checks).
    pub fn worst(&self) -> Verdict {
        self.checks
            .iter()
            .map(|check| check.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }

    /// The process exit code: 0 all OK, 1 any WARN, 2 any FAIL.
    pub fn exit_code(&self) -> i32 {
        match self.worst() {
            Verdict::Ok => 0,
            Verdict::Warn => 1,
            Verdict::Fail => 2,
        }
    }
}

/// A device that can hold model layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRef {
    /// Host memory and CPU kernels.
    Cpu,
    /// The GPU with this NVML index.
    Gpu(u32),
}

impl std::fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceRef::Cpu => write!(f, "CPU"),
            DeviceRef::Gpu(index) => write!(f, "GPU {index}"),
        }
    }
}

/// How many layers of a model one device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLayers {
    /// The device.
    pub device: DeviceRef,
    /// Transformer layers resident on it.
    pub layers: u32,
}

/// A loaded model and its split across devices (filled from the model registry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPlacement {
    /// The model's name as `llmctl status` shows it.
    pub name: String,
    /// Every device the split assigned, including those that ended up with no layers.
    pub layers: Vec<DeviceLayers>,
}

impl ModelPlacement {
    /// Its layers per device, `"CPU 10, GPU 1 8"`, each count followed by `unit` (`""`,
    /// `" layers"`).
    pub fn split_summary(&self, unit: &str) -> String {
        self.layers
            .iter()
            .map(|entry| format!("{} {}{unit}", entry.device, entry.layers))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The GPUs holding at least one layer, in index order.
    pub fn gpus_with_layers(&self) -> Vec<u32> {
        let mut gpus: Vec<u32> = self
            .layers
            .iter()
            .filter_map(|entry| match entry.device {
                DeviceRef::Gpu(index) if entry.layers > 0 => Some(index),
                _ => None,
            })
            .collect();
        gpus.sort_unstable();
        gpus.dedup();
        gpus
    }
}
