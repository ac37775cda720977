//! The devices models can be placed on: the configured ones (or, with none configured, every GPU
//! the CUDA driver reports plus the CPU), each with its memory budget and, for a device that
//! cannot be used (a `cuda:N` without a driver or beyond the GPUs present), the reason.
//!
//! CUDA is probed once per process: whether the driver loads ([`cuda_status`]) and, per GPU, its
//! name and free memory at first sight. A GPU's default budget is that free memory less a margin
//! for the CUDA context, activation buffers and matmul scratch, which the memory ledger does not
//! charge. Probing once keeps the budget stable across configuration reloads, when resident
//! models already occupy the GPU (its free memory then says nothing about the budget).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use llmd_kernels::backend::{cuda_available, cuda_device_info, CudaDeviceInfo};
use llmd_shared::{CudaStatus, DeviceKind};

use crate::config::{default_cpu_budget, DeviceId, DeviceKindKey, LoadedConfig, ResolvedDevice};

/// Bytes kept free on a GPU whose budget is not configured: 1 GiB plus 2% of the card, for the
/// CUDA context, the stages' activation buffers and prefill scratch (not charged to the ledger).
const GPU_MARGIN_FIXED: u64 = 1 << 30;
/// The proportional part of the GPU margin, in percent of total memory.
const GPU_MARGIN_PERCENT: u64 = 2;

/// A device models may be placed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `<kind>:<index>`, e.g. "cpu:0", "cuda:1".
    pub name: String,
    /// Kind of device.
    pub kind: DeviceKind,
    /// Index among devices of its kind (the CUDA ordinal for GPUs).
    pub index: u32,
    /// Bytes of its memory the daemon may use.
    pub memory_budget_bytes: u64,
    /// What it is ("NVIDIA H200, 139.8 GiB", "host memory").
    pub description: String,
    /// Why models cannot be placed on it, if they cannot.
    pub unavailable: Option<String>,
    /// A GPU's UUID as CUDA reports it (NVML's form), to find its NVML index.
    pub uuid: Option<String>,
    /// A GPU's PCI bus id ("00000000:01:00.0"), the other way to find its NVML index.
    pub pci_bus_id: Option<String>,
}

impl Device {
    /// Whether it is a GPU.
    pub fn is_gpu(&self) -> bool {
        self.kind == DeviceKind::Cuda
    }
}

/// Whether the device called `name` is a CPU device (`cpu:N`), whose memory is host memory.
pub fn is_cpu_device(name: &str) -> bool {
    name.starts_with("cpu:")
}

/// Whether CUDA can be used in this process (asked of the driver once, then remembered).
pub fn cuda_status() -> CudaStatus {
    static STATUS: OnceLock<CudaStatus> = OnceLock::new();
    STATUS
        .get_or_init(|| match cuda_available() {
            Ok(n) => {
                tracing::info!("CUDA: the driver reports {n} GPU(s)");
                CudaStatus {
                    devices: n as u32,
                    unavailable: None,
                    peers: Vec::new(),
                }
            }
            Err(reason) => {
                tracing::info!("CUDA is unavailable ({reason}); serving CPU devices");
                CudaStatus {
                    devices: 0,
                    unavailable: Some(reason),
                    peers: Vec::new(),
                }
            }
        })
        .clone()
}

/// [`cuda_status`] with how each pair of GPUs opened so far copies between them (peer to peer,
/// or through host memory and why), for `status` and `doctor`.
pub fn cuda_report() -> CudaStatus {
    let mut status = cuda_status();
    status.peers = llmd_kernels::backend::cuda_peer_paths()
        .into_iter()
        .map(|(a, b, path)| {
            let reason = match path {
                llmd_kernels::backend::PeerPath::Direct => None,
                llmd_kernels::backend::PeerPath::ThroughHost(why) => Some(why),
            };
            llmd_shared::CudaPeer {
                gpu_a: format!("cuda:{a}"),
                gpu_b: format!("cuda:{b}"),
                direct: reason.is_none(),
                reason,
            }
        })
        .collect();
    status
}

/// What the driver said of GPU `ordinal` when first asked in this process.
fn gpu_info(ordinal: u32) -> Result<CudaDeviceInfo, String> {
    static SEEN: OnceLock<Mutex<BTreeMap<u32, Result<CudaDeviceInfo, String>>>> = OnceLock::new();
    if let Some(reason) = cuda_status().unavailable {
        return Err(format!("CUDA is unavailable: {reason}"));
    }
    let seen = SEEN.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    seen.entry(ordinal)
        .or_insert_with(|| cuda_device_info(ordinal as usize))
        .clone()
}

/// The default budget of a GPU: its free memory less the margin.
pub fn gpu_default_budget(info: &CudaDeviceInfo) -> u64 {
    let margin = GPU_MARGIN_FIXED + info.total_bytes / 100 * GPU_MARGIN_PERCENT;
    info.free_bytes.saturating_sub(margin)
}

/// "139.8 GiB".
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// A configured device made concrete: its default budget filled in, a GPU probed.
fn resolve(d: &ResolvedDevice) -> Device {
    let name = d.id.to_string();
    match d.id.kind {
        DeviceKindKey::Cpu => Device {
            name,
            kind: DeviceKind::Cpu,
            index: d.id.index,
            memory_budget_bytes: d.memory_budget_bytes.unwrap_or_else(default_cpu_budget),
            description: "host memory".into(),
            unavailable: None,
            uuid: None,
            pci_bus_id: None,
        },
        DeviceKindKey::Cuda => match gpu_info(d.id.index) {
            Ok(info) => Device {
                name,
                kind: DeviceKind::Cuda,
                index: d.id.index,
                memory_budget_bytes: d
                    .memory_budget_bytes
                    .unwrap_or_else(|| gpu_default_budget(&info)),
                description: format!("{}, {}", info.name, gib(info.total_bytes)),
                unavailable: None,
                uuid: info.uuid.clone(),
                pci_bus_id: info.pci_bus_id.clone(),
            },
            Err(reason) => Device {
                name,
                kind: DeviceKind::Cuda,
                index: d.id.index,
                memory_budget_bytes: d.memory_budget_bytes.unwrap_or(0),
                description: "NVIDIA GPU".into(),
                unavailable: Some(reason),
                uuid: None,
                pci_bus_id: None,
            },
        },
    }
}

/// The devices a configuration describes. With no `[[devices]]`: every GPU CUDA reports, then
/// `cpu:0`. A configured `cuda:N` that cannot be used is kept (with the reason) so that `status`
/// shows it, and loads onto it are refused with that reason; the daemon serves the others.
pub fn from_config(config: &LoadedConfig) -> Vec<Device> {
    let configured = config.config.resolved_devices();
    let resolved: Vec<ResolvedDevice> = if configured.is_empty() {
        let gpus = (0..cuda_status().devices).map(|index| ResolvedDevice {
            id: DeviceId {
                kind: DeviceKindKey::Cuda,
                index,
            },
            memory_budget_bytes: None,
        });
        let cpu = ResolvedDevice {
            id: DeviceId {
                kind: DeviceKindKey::Cpu,
                index: 0,
            },
            memory_budget_bytes: None,
        };
        gpus.chain(std::iter::once(cpu)).collect()
    } else {
        configured
    };
    let devices: Vec<Device> = resolved.iter().map(resolve).collect();
    for d in &devices {
        match &d.unavailable {
            Some(reason) => tracing::warn!("device {} cannot hold models: {reason}", d.name),
            None => tracing::info!(
                "device {} ({}): budget {}",
                d.name,
                d.description,
                gib(d.memory_budget_bytes)
            ),
        }
    }
    devices
}

/// `devices` with each GPU that has failed since (a sticky kernel fault: its context answers
/// every call with the error until the daemon restarts) marked unavailable with the reason, so
/// that `status` shows it, `doctor` fails it and loads are refused there.
pub fn with_faults(devices: &[Device]) -> Vec<Device> {
    devices
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if d.is_gpu() && d.unavailable.is_none() {
                if let Some(fault) = llmd_kernels::backend::cuda_gpu_fault(d.index as usize) {
                    d.unavailable = Some(format!(
                        "GPU failed: {fault}; restart llmd (or reset the GPU) to use it again"
                    ));
                }
            }
            d
        })
        .collect()
}

/// The devices a load uses when the request names none: every usable GPU (the model is split
/// over them by free memory, as llama.cpp does with all GPUs), else the first usable device.
pub fn default_load_devices(devices: &[Device]) -> Vec<&Device> {
    let gpus: Vec<&Device> = devices
        .iter()
        .filter(|d| d.is_gpu() && d.unavailable.is_none())
        .collect();
    if gpus.is_empty() {
        devices
            .iter()
            .find(|d| d.unavailable.is_none())
            .into_iter()
            .collect()
    } else {
        gpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Config};

    fn loaded(toml: &str) -> LoadedConfig {
        LoadedConfig {
            config: parse(toml, std::path::Path::new("/tmp/t.toml")).expect("valid config"),
            ..LoadedConfig::default()
        }
    }

    #[test]
    fn gpu_budget_leaves_a_margin() {
        let info = CudaDeviceInfo {
            name: "NVIDIA GeForce RTX 3090".into(),
            total_bytes: 24 << 30,
            free_bytes: 23 << 30,
            uuid: None,
            pci_bus_id: None,
        };
        let margin = (1u64 << 30) + (24u64 << 30) / 100 * 2;
        assert_eq!(gpu_default_budget(&info), (23 << 30) - margin);
        let tiny = CudaDeviceInfo {
            free_bytes: 1 << 20,
            ..info.clone()
        };
        assert_eq!(gpu_default_budget(&tiny), 0);
    }

    #[test]
    fn cuda_devices_without_a_driver_are_listed_with_the_reason() {
        let devices = from_config(&loaded(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n[[devices]]\nid = \"cuda:7\"\n",
        ));
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].memory_budget_bytes, 1 << 30);
        assert!(devices[0].unavailable.is_none());
        let gpu = &devices[1];
        assert_eq!((gpu.name.as_str(), gpu.index), ("cuda:7", 7));
        match cuda_status().unavailable {
            // No driver (CI): the reason names the driver library.
            Some(reason) => {
                let why = gpu
                    .unavailable
                    .as_deref()
                    .expect("unavailable without CUDA");
                assert!(why.contains(&reason), "{why}");
            }
            // A machine with fewer than 8 GPUs: the driver's count is the reason.
            None if cuda_status().devices <= 7 => {
                let why = gpu.unavailable.as_deref().expect("no such GPU");
                assert!(why.contains("no CUDA device 7"), "{why}");
            }
            None => assert!(gpu.unavailable.is_none()),
        }
        // Loads without devices go to the usable GPUs, else the first usable device, even when
        // an unusable GPU is listed first.
        let chosen = default_load_devices(&devices);
        assert!(!chosen.is_empty() && chosen.iter().all(|d| d.unavailable.is_none()));
        let gpu_first = from_config(&loaded(
            "[[devices]]\nid = \"cuda:7\"\n[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n",
        ));
        if gpu_first[0].unavailable.is_some() {
            let chosen = default_load_devices(&gpu_first);
            assert_eq!(chosen.len(), 1);
            assert_eq!(chosen[0].name, "cpu:0");
        }
    }

    #[test]
    fn defaults_are_the_gpus_then_the_cpu() {
        let devices = from_config(&LoadedConfig {
            config: Config::default(),
            ..LoadedConfig::default()
        });
        let gpus = cuda_status().devices as usize;
        assert_eq!(devices.len(), gpus + 1);
        assert_eq!(devices[gpus].name, "cpu:0");
        assert!(devices[gpus].memory_budget_bytes > 0);
        let chosen = default_load_devices(&devices);
        if gpus == 0 {
            assert_eq!(chosen.len(), 1);
            assert_eq!(chosen[0].name, "cpu:0");
        } else {
            assert!(chosen.iter().all(|d| d.is_gpu()));
        }
    }
}
