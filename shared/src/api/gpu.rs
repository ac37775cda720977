//! GPU telemetry data: what NVML reports about each GPU (sampled by the daemon's `gpu` module),
//! carried by `status`, `doctor` and `metrics` replies.
//!
//! Only serde attributes bincode supports are used (externally tagged enums). In JSON a reading
//! is `{"value": 42}`, `"not_supported"` or `{"error": "why"}`.

use serde::{Deserialize, Serialize};

/// One telemetry field. A GPU that lacks a sensor or a feature reports [`Reading::NotSupported`]
/// (shown as such, never as a failure); anything else that went wrong is [`Reading::Error`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading<T> {
    /// The value NVML reported.
    Value(T),
    /// This GPU (or driver) does not support the query.
    NotSupported,
    /// The query failed; the message says why (e.g. a function missing from an old driver).
    Error(String),
}

impl<T> Reading<T> {
    /// The value, if there is one.
    pub fn value(&self) -> Option<&T> {
        match self {
            Reading::Value(value) => Some(value),
            Reading::NotSupported | Reading::Error(_) => None,
        }
    }

    /// Applies `f` to the value, keeping "not supported" and errors as they are.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reading<U> {
        match self {
            Reading::Value(value) => Reading::Value(f(value)),
            Reading::NotSupported => Reading::NotSupported,
            Reading::Error(message) => Reading::Error(message),
        }
    }
}

impl<T: Copy> Reading<T> {
    /// The value, copied, if there is one.
    pub fn get(&self) -> Option<T> {
        self.value().copied()
    }
}

/// Whether NVML could be used for the latest sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlStatus {
    /// The sampler has not finished its first sample yet (the first second after start).
    NotSampledYet,
    /// NVML is loaded and initialized.
    Loaded,
    /// The library is absent (no NVIDIA driver installed): a CPU-only machine, or a broken install.
    LibraryMissing {
        /// The loader's message, naming the library path tried.
        reason: String,
    },
    /// The library loaded but `nvmlInit` failed (driver not loaded, no permission, ...).
    InitFailed {
        /// NVML's error, in words.
        reason: String,
    },
}

impl NvmlStatus {
    /// Why there is no GPU data, or `None` when NVML is loaded.
    pub fn unavailable_reason(&self) -> Option<String> {
        match self {
            NvmlStatus::NotSampledYet => Some("GPU telemetry not sampled yet".to_owned()),
            NvmlStatus::Loaded => None,
            NvmlStatus::LibraryMissing { reason } => {
                Some(format!("NVML library could not be loaded: {reason}"))
            }
            NvmlStatus::InitFailed { reason } => {
                Some(format!("NVML failed to initialize: {reason}"))
            }
        }
    }
}

/// One sample of every GPU NVML sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuTelemetry {
    /// Whether NVML was usable; when it was not, `gpus` is empty and this says why.
    pub nvml: NvmlStatus,
    /// The NVIDIA driver version, e.g. "550.54.14".
    pub driver_version: Reading<String>,
    /// The highest CUDA version the driver supports, e.g. "12.4".
    pub cuda_version: Reading<String>,
    /// One entry per GPU, in NVML index order.
    pub gpus: Vec<GpuSnapshot>,
    /// Peer-to-peer status for each unordered pair of GPUs (`gpu_a < gpu_b`).
    pub p2p: Vec<P2pPair>,
    /// When the sample was taken, in milliseconds since the Unix epoch (0: never).
    pub sampled_at_unix_ms: u64,
}

impl GpuTelemetry {
    /// The telemetry before the first sample.
    pub fn not_sampled_yet() -> Self {
        Self::unavailable(NvmlStatus::NotSampledYet, 0)
    }

    /// Telemetry without GPU data, for when NVML is unusable.
    pub fn unavailable(nvml: NvmlStatus, sampled_at_unix_ms: u64) -> Self {
        let reason = nvml.unavailable_reason().unwrap_or_default();
        Self {
            nvml,
            driver_version: Reading::Error(reason.clone()),
            cuda_version: Reading::Error(reason),
            gpus: Vec::new(),
            p2p: Vec::new(),
            sampled_at_unix_ms,
        }
    }

    /// The GPU with NVML index `index`.
    pub fn gpu(&self, index: u32) -> Option<&GpuSnapshot> {
        self.gpus.iter().find(|gpu| gpu.index == index)
    }

    /// The peer-to-peer status between two GPUs, in either order.
    pub fn p2p_between(&self, a: u32, b: u32) -> Option<&P2pPair> {
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        self.p2p
            .iter()
            .find(|pair| pair.gpu_a == low && pair.gpu_b == high)
    }
}

/// Everything sampled about one GPU. Power is in watts, energy in joules, clocks in MHz.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSnapshot {
    /// NVML's index of the GPU (also llmd's GPU device number).
    pub index: u32,
    /// Product name, e.g. "NVIDIA GeForce RTX 3090".
    pub name: Reading<String>,
    /// Stable identifier, e.g. "GPU-8f6c...".
    pub uuid: Reading<String>,
    /// PCI bus id, e.g. "00000000:01:00.0".
    pub pci_bus_id: Reading<String>,
    /// VRAM totals.
    pub memory: Reading<MemoryReading>,
    /// VRAM held by this process (llmd) on the GPU.
    pub llmd_memory_bytes: Reading<u64>,
    /// GPU and memory-controller busy percentages over the driver's last sample period.
    pub utilization: Reading<Utilization>,
    /// Core temperature in °C.
    pub temperature_c: Reading<u32>,
    /// Temperature at which the GPU starts slowing down to cool off, in °C.
    pub temperature_slowdown_c: Reading<u32>,
    /// Temperature at which the GPU shuts down, in °C.
    pub temperature_shutdown_c: Reading<u32>,
    /// Speed of the first fan, in percent of its maximum.
    pub fan_percent: Reading<u32>,
    /// Power draw (NVML's average over about a second; misses millisecond spikes), in W.
    pub power_draw_w: Reading<f64>,
    /// Power limits.
    pub power_limits: PowerLimits,
    /// Energy used since the driver was loaded, in J.
    pub energy_j: Reading<f64>,
    /// Streaming-multiprocessor clock, in MHz.
    pub clock_sm_mhz: Reading<u32>,
    /// Memory clock, in MHz.
    pub clock_memory_mhz: Reading<u32>,
    /// Why clocks are held below their maximum right now (empty: not throttled).
    pub throttle_reasons: Reading<Vec<ThrottleReason>>,
    /// PCIe link state and traffic.
    pub pcie: PcieReading,
    /// NVLink links of this GPU.
    pub nvlink: Reading<NvLinkReading>,
}

impl GpuSnapshot {
    /// A snapshot whose every field is `Error(message)` (the GPU handle itself failed).
    pub fn unreadable(index: u32, message: &str) -> Self {
        fn error<T>(message: &str) -> Reading<T> {
            Reading::Error(message.to_owned())
        }
        Self {
            index,
            name: error(message),
            uuid: error(message),
            pci_bus_id: error(message),
            memory: error(message),
            llmd_memory_bytes: error(message),
            utilization: error(message),
            temperature_c: error(message),
            temperature_slowdown_c: error(message),
            temperature_shutdown_c: error(message),
            fan_percent: error(message),
            power_draw_w: error(message),
            power_limits: PowerLimits {
                enforced_w: error(message),
                default_w: error(message),
                min_w: error(message),
                max_w: error(message),
            },
            energy_j: error(message),
            clock_sm_mhz: error(message),
            clock_memory_mhz: error(message),
            throttle_reasons: error(message),
            pcie: PcieReading {
                gen_current: error(message),
                gen_max: error(message),
                width_current: error(message),
                width_max: error(message),
                tx_kib_s: error(message),
                rx_kib_s: error(message),
            },
            nvlink: error(message),
        }
    }
}

/// VRAM totals, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReading {
    /// Installed VRAM usable by applications.
    pub total_bytes: u64,
    /// VRAM in use by all processes and the driver.
    pub used_bytes: u64,
    /// VRAM available.
    pub free_bytes: u64,
}

/// Busy percentages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Utilization {
    /// Percent of time a kernel ran on the GPU.
    pub gpu_percent: u32,
    /// Percent of time device memory was read or written.
    pub memory_percent: u32,
}

/// Power limits, in W.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerLimits {
    /// The limit in force (the lowest of the user's, the driver's and the board's).
    pub enforced_w: Reading<f64>,
    /// The limit the board ships with.
    pub default_w: Reading<f64>,
    /// The lowest limit that can be set.
    pub min_w: Reading<f64>,
    /// The highest limit that can be set.
    pub max_w: Reading<f64>,
}

/// PCIe link state and traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcieReading {
    /// Current link generation (idle GPUs drop to a lower one to save power).
    pub gen_current: Reading<u32>,
    /// Highest generation the GPU and slot support together.
    pub gen_max: Reading<u32>,
    /// Current link width (lanes).
    pub width_current: Reading<u32>,
    /// Highest width the GPU and slot support together.
    pub width_max: Reading<u32>,
    /// Traffic from the GPU, in KiB/s.
    pub tx_kib_s: Reading<u32>,
    /// Traffic to the GPU, in KiB/s.
    pub rx_kib_s: Reading<u32>,
}

/// NVLink links of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvLinkReading {
    /// Links the GPU has (those NVML answers for).
    pub links: u32,
    /// Links that are up (0 with links > 0: NVLink-capable, bridge missing or not seated).
    pub active: u32,
}

/// Peer-to-peer status between two GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct P2pPair {
    /// The lower NVML index.
    pub gpu_a: u32,
    /// The higher NVML index.
    pub gpu_b: u32,
    /// Whether one GPU can read the other's memory directly (over PCIe or NVLink).
    pub read: Reading<P2pState>,
    /// Whether the two are connected over NVLink.
    pub nvlink: Reading<P2pState>,
}

/// NVML's peer-to-peer verdict for a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum P2pState {
    /// Supported.
    Ok,
    /// The chipset does not allow it.
    ChipsetNotSupported,
    /// The GPUs do not support it (most GeForce cards over PCIe).
    GpuNotSupported,
    /// The GPUs hang off different root complexes / IO hubs.
    TopologyNotSupported,
    /// Disabled by a driver registry key.
    DisabledByRegkey,
    /// Not supported, no reason given.
    NotSupported,
    /// NVML did not know.
    Unknown,
}

impl P2pState {
    /// The state in words.
    pub fn describe(self) -> &'static str {
        match self {
            P2pState::Ok => "ok",
            P2pState::ChipsetNotSupported => "chipset does not support it",
            P2pState::GpuNotSupported => "GPU does not support it",
            P2pState::TopologyNotSupported => "GPUs on different PCIe root complexes",
            P2pState::DisabledByRegkey => "disabled by a driver registry key",
            P2pState::NotSupported => "not supported",
            P2pState::Unknown => "unknown",
        }
    }
}

/// Why a GPU's clocks are held down (NVML's clock throttle reason bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleReason {
    /// Nothing is running: clocks are low on purpose.
    GpuIdle,
    /// Application clocks were set below the maximum.
    ApplicationsClocksSetting,
    /// The power limit holds clocks down (software power capping).
    SwPowerCap,
    /// Hardware slowdown: overheating or an external power-brake signal.
    HwSlowdown,
    /// Held in sync with other GPUs (sync boost).
    SyncBoost,
    /// The driver slows down because the GPU or memory is too hot.
    SwThermalSlowdown,
    /// The hardware slows down because the GPU is too hot.
    HwThermalSlowdown,
    /// The hardware slows down because the power supply asserted power brake.
    HwPowerBrakeSlowdown,
    /// The display clock setting holds clocks down.
    DisplayClockSetting,
}

impl ThrottleReason {
    /// Every reason with its NVML bit, in bit order.
    pub const ALL: [(ThrottleReason, u64); 9] = [
        (ThrottleReason::GpuIdle, 0x1),
        (ThrottleReason::ApplicationsClocksSetting, 0x2),
        (ThrottleReason::SwPowerCap, 0x4),
        (ThrottleReason::HwSlowdown, 0x8),
        (ThrottleReason::SyncBoost, 0x10),
        (ThrottleReason::SwThermalSlowdown, 0x20),
        (ThrottleReason::HwThermalSlowdown, 0x40),
        (ThrottleReason::HwPowerBrakeSlowdown, 0x80),
        (ThrottleReason::DisplayClockSetting, 0x100),
    ];

    /// Decodes NVML's bit mask; unknown bits are ignored.
    pub fn decode(bits: u64) -> Vec<ThrottleReason> {
        Self::ALL
            .iter()
            .filter(|(_, bit)| bits & bit != 0)
            .map(|(reason, _)| *reason)
            .collect()
    }

    /// The reason in words.
    pub fn describe(self) -> &'static str {
        match self {
            ThrottleReason::GpuIdle => "idle",
            ThrottleReason::ApplicationsClocksSetting => "application clocks setting",
            ThrottleReason::SwPowerCap => "power cap",
            ThrottleReason::HwSlowdown => "hardware slowdown",
            ThrottleReason::SyncBoost => "sync boost",
            ThrottleReason::SwThermalSlowdown => "thermal slowdown (driver)",
            ThrottleReason::HwThermalSlowdown => "thermal slowdown (hardware)",
            ThrottleReason::HwPowerBrakeSlowdown => "power brake (PSU signal)",
            ThrottleReason::DisplayClockSetting => "display clock setting",
        }
    }

    /// The snake_case name used in JSON and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ThrottleReason::GpuIdle => "gpu_idle",
            ThrottleReason::ApplicationsClocksSetting => "applications_clocks_setting",
            ThrottleReason::SwPowerCap => "sw_power_cap",
            ThrottleReason::HwSlowdown => "hw_slowdown",
            ThrottleReason::SyncBoost => "sync_boost",
            ThrottleReason::SwThermalSlowdown => "sw_thermal_slowdown",
            ThrottleReason::HwThermalSlowdown => "hw_thermal_slowdown",
            ThrottleReason::HwPowerBrakeSlowdown => "hw_power_brake_slowdown",
            ThrottleReason::DisplayClockSetting => "display_clock_setting",
        }
    }

    /// Whether the reason means heat or power is limiting performance (worth a doctor warning).
    pub fn is_thermal_or_power(self) -> bool {
        matches!(
            self,
            ThrottleReason::SwPowerCap
                | ThrottleReason::HwSlowdown
                | ThrottleReason::SwThermalSlowdown
                | ThrottleReason::HwThermalSlowdown
                | ThrottleReason::HwPowerBrakeSlowdown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_throttle_bits_into_words() {
        let reasons = ThrottleReason::decode(0x4 | 0x40 | 0x8000);
        assert_eq!(
            reasons,
            vec![
                ThrottleReason::SwPowerCap,
                ThrottleReason::HwThermalSlowdown
            ]
        );
        assert_eq!(reasons[1].describe(), "thermal slowdown (hardware)");
        assert!(ThrottleReason::decode(0).is_empty());
    }

    #[test]
    fn readings_round_trip_through_the_wire_encoding() {
        for reading in [
            Reading::Value(42u32),
            Reading::NotSupported,
            Reading::Error("boom".to_owned()),
        ] {
            let frame = crate::frame::encode_frame(&reading).expect("encode");
            let (back, used): (Reading<u32>, usize) =
                crate::frame::decode_frame(&frame).expect("decode");
            assert_eq!((back, used), (reading, frame.len()));
        }
    }
}
