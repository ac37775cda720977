//! Takes one telemetry sample through nvml-wrapper.
//!
//! The library is opened by path ([`library_path`]): the `nvml_library` config key, else the
//! `LLMD_NVML_LIB` environment variable (tests point it at a fake library), else
//! `libnvidia-ml.so.1` (the runtime name every driver install provides; nvml-wrapper's default,
//! `libnvidia-ml.so`, only exists where the development package is installed).
//!
//! nvml-wrapper resolves each NVML function when it is first called, so a function missing from
//! an older driver fails only the fields that need it; they read [`Reading::Error`] naming it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nvml_wrapper::enum_wrappers::device::{
    Clock, P2pCapabilitiesIndex, P2pStatus, PcieUtilCounter, TemperatureSensor,
    TemperatureThreshold,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{
    GpuSnapshot, GpuTelemetry, MemoryReading, NvLinkReading, NvmlStatus, P2pPair, P2pState,
    PcieReading, PowerLimits, Reading, ThrottleReason, Utilization,
};

/// The NVML library every NVIDIA driver install provides.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// Environment variable naming the NVML library to load (used when the config does not).
pub const LIBRARY_ENV: &str = "LLMD_NVML_LIB";

/// NVML's upper bound on NVLink links per GPU (NVML_NVLINK_MAX_LINKS).
const MAX_NVLINK_LINKS: u32 = 18;

/// The NVML library to load: `configured`, else `$LLMD_NVML_LIB`, else [`DEFAULT_LIBRARY`].
pub fn library_path(configured: Option<&Path>) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    match std::env::var_os(LIBRARY_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_LIBRARY),
    }
}

/// Loads and initializes NVML from `library`; on failure, the status saying why.
pub fn open(library: &Path) -> Result<Nvml, NvmlStatus> {
    Nvml::builder()
        .lib_path(library.as_os_str())
        .init()
        .map_err(|error| match error {
            NvmlError::LibloadingError(error) => NvmlStatus::LibraryMissing {
                reason: format!("{}: {error}", library.display()),
            },
            NvmlError::FailedToLoadSymbol(error) => NvmlStatus::InitFailed {
                reason: format!("{}: {error}", library.display()),
            },
            other => NvmlStatus::InitFailed {
                reason: describe(&other),
            },
        })
}

/// Opens NVML from `library`, samples every GPU once and shuts NVML down again. `own_pid` is the
/// process whose VRAM is reported as llmd's.
pub fn collect_once(library: &Path, own_pid: u32) -> GpuTelemetry {
    match open(library) {
        Ok(nvml) => collect(&nvml, own_pid),
        Err(status) => GpuTelemetry::unavailable(status, now_unix_ms()),
    }
}

/// Samples every GPU of an initialized NVML.
pub fn collect(nvml: &Nvml, own_pid: u32) -> GpuTelemetry {
    let driver_version = reading(nvml.sys_driver_version());
    let cuda_version = reading(nvml.sys_cuda_driver_version()).map(format_cuda_version);
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(error) => {
            return GpuTelemetry {
                nvml: NvmlStatus::InitFailed {
                    reason: format!("counting GPUs: {}", describe(&error)),
                },
                driver_version,
                cuda_version,
                gpus: Vec::new(),
                p2p: Vec::new(),
                sampled_at_unix_ms: now_unix_ms(),
            };
        }
    };
    let devices: Vec<(u32, Result<Device<'_>, NvmlError>)> = (0..count)
        .map(|index| (index, nvml.device_by_index(index)))
        .collect();
    let gpus = devices
        .iter()
        .map(|(index, device)| match device {
            Ok(device) => sample_device(*index, device, own_pid),
            Err(error) => GpuSnapshot::unreadable(*index, &describe(error)),
        })
        .collect();
    let mut p2p = Vec::new();
    for (a, device_a) in &devices {
        for (b, device_b) in devices.iter().filter(|(b, _)| b > a) {
            let (read, nvlink) = match (device_a, device_b) {
                (Ok(device_a), Ok(device_b)) => (
                    p2p_reading(device_a.p2p_status(device_b, P2pCapabilitiesIndex::Read)),
                    p2p_reading(device_a.p2p_status(device_b, P2pCapabilitiesIndex::NvLink)),
                ),
                _ => {
                    let message = "GPU handle unavailable".to_owned();
                    (Reading::Error(message.clone()), Reading::Error(message))
                }
            };
            p2p.push(P2pPair {
                gpu_a: *a,
                gpu_b: *b,
                read,
                nvlink,
            });
        }
    }
    GpuTelemetry {
        nvml: NvmlStatus::Loaded,
        driver_version,
        cuda_version,
        gpus,
        p2p,
        sampled_at_unix_ms: now_unix_ms(),
    }
}

/// Reads every field of one GPU.
fn sample_device(index: u32, device: &Device<'_>, own_pid: u32) -> GpuSnapshot {
    let constraints = reading(device.power_management_limit_constraints());
    GpuSnapshot {
        index,
        name: reading(device.name()),
        uuid: reading(device.uuid()),
        pci_bus_id: reading(device.pci_info()).map(|info| info.bus_id),
        memory: reading(device.memory_info()).map(|info| MemoryReading {
            total_bytes: info.total,
            used_bytes: info.used,
            free_bytes: info.free,
        }),
        llmd_memory_bytes: reading(device.running_compute_processes()).map(|processes| {
            processes
                .iter()
                .filter(|process| process.pid == own_pid)
                .map(|process| match process.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                })
                .sum()
        }),
        utilization: reading(device.utilization_rates()).map(|rates| Utilization {
            gpu_percent: rates.gpu,
            memory_percent: rates.memory,
        }),
        temperature_c: reading(device.temperature(TemperatureSensor::Gpu)),
        temperature_slowdown_c: reading(
            device.temperature_threshold(TemperatureThreshold::Slowdown),
        ),
        temperature_shutdown_c: reading(
            device.temperature_threshold(TemperatureThreshold::Shutdown),
        ),
        fan_percent: reading(device.fan_speed(0)),
        power_draw_w: reading(device.power_usage()).map(milliwatts),
        power_limits: PowerLimits {
            enforced_w: reading(device.enforced_power_limit()).map(milliwatts),
            default_w: reading(device.power_management_limit_default()).map(milliwatts),
            min_w: constraints
                .clone()
                .map(|limits| milliwatts(limits.min_limit)),
            max_w: constraints.map(|limits| milliwatts(limits.max_limit)),
        },
        energy_j: reading(device.total_energy_consumption())
            .map(|millijoules| millijoules as f64 / 1000.0),
        clock_sm_mhz: reading(device.clock_info(Clock::SM)),
        clock_memory_mhz: reading(device.clock_info(Clock::Memory)),
        throttle_reasons: reading(device.current_throttle_reasons())
            .map(|reasons| ThrottleReason::decode(reasons.bits())),
        pcie: PcieReading {
            gen_current: reading(device.current_pcie_link_gen()),
            gen_max: reading(device.max_pcie_link_gen()),
            width_current: reading(device.current_pcie_link_width()),
            width_max: reading(device.max_pcie_link_width()),
            tx_kib_s: reading(device.pcie_throughput(PcieUtilCounter::Send)),
            rx_kib_s: reading(device.pcie_throughput(PcieUtilCounter::Receive)),
        },
        nvlink: nvlink_reading(device),
    }
}

/// Counts the GPU's NVLink links and how many are up. NVML answers "not supported" for link 0 on
/// GPUs without NVLink, and "invalid argument" past the last link of GPUs with it.
fn nvlink_reading(device: &Device<'_>) -> Reading<NvLinkReading> {
    let mut links = 0;
    let mut active = 0;
    for link in 0..MAX_NVLINK_LINKS {
        match device.link_wrapper_for(link).is_active() {
            Ok(is_active) => {
                links += 1;
                active += u32::from(is_active);
            }
            Err(error) if link == 0 => return reading(Err(error)),
            Err(_) => break,
        }
    }
    Reading::Value(NvLinkReading { links, active })
}

/// Converts a peer-to-peer query result.
fn p2p_reading(result: Result<P2pStatus, NvmlError>) -> Reading<P2pState> {
    reading(result).map(|status| match status {
        P2pStatus::Ok => P2pState::Ok,
        P2pStatus::ChipsetNotSupported => P2pState::ChipsetNotSupported,
        P2pStatus::GpuNotSupported => P2pState::GpuNotSupported,
        P2pStatus::IohTopologyNotSupported => P2pState::TopologyNotSupported,
        P2pStatus::DisabledByRegkey => P2pState::DisabledByRegkey,
        P2pStatus::NotSupported => P2pState::NotSupported,
        P2pStatus::Unknown => P2pState::Unknown,
    })
}

/// Turns an NVML result into a [`Reading`]: "not supported" stays distinct from errors.
fn reading<T>(result: Result<T, NvmlError>) -> Reading<T> {
    match result {
        Ok(value) => Reading::Value(value),
        Err(NvmlError::NotSupported) => Reading::NotSupported,
        Err(error) => Reading::Error(describe(&error)),
    }
}

/// An NVML error in words.
fn describe(error: &NvmlError) -> String {
    match error {
        NvmlError::FailedToLoadSymbol(message) => {
            format!("function missing from the NVML library (driver too old?): {message}")
        }
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_owned(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".to_owned(),
        other => other.to_string(),
    }
}

/// NVML's CUDA version number (1000 × major + 10 × minor) as "major.minor".
fn format_cuda_version(version: i32) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

/// Milliwatts to watts.
fn milliwatts(value: u32) -> f64 {
    f64::from(value) / 1000.0
}

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_cuda_versions() {
        assert_eq!(format_cuda_version(12040), "12.4");
        assert_eq!(format_cuda_version(11080), "11.8");
    }

    #[test]
    fn a_missing_library_is_reported_with_its_path() {
        let telemetry = collect_once(Path::new("/nonexistent/libnvidia-ml.so.1"), 1);
        match &telemetry.nvml {
            NvmlStatus::LibraryMissing { reason } => {
                assert!(
                    reason.contains("/nonexistent/libnvidia-ml.so.1"),
                    "{reason}"
                )
            }
            other => panic!("expected LibraryMissing, got {other:?}"),
        }
        assert!(telemetry.gpus.is_empty());
        assert!(telemetry.sampled_at_unix_ms > 0);
    }
}
