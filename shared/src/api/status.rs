//! `status`: the daemon's state (version, uptime, pid, socket, devices, resident models, GPU
//! telemetry, power budget, layers per device).

use serde::{Deserialize, Serialize};

use super::cache::KvCacheType;
use super::gpu::GpuTelemetry;
use super::health::{ModelPlacement, PowerBudget};

/// Asks for the daemon's state. No arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {}

/// The daemon's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Package version of the daemon, e.g. "0.1.0".
    pub daemon_version: String,
    /// The daemon's wire protocol version.
    pub protocol_version: u32,
    /// Process id of the daemon.
    pub pid: u32,
    /// Whole seconds since the daemon started.
    pub uptime_secs: u64,
    /// Path of the socket the daemon listens on.
    pub socket: String,
    /// Path of the configuration file in force ("" when running on built-in defaults).
    pub config: String,
    /// Devices the daemon may place models on.
    pub devices: Vec<DeviceInfo>,
    /// Models resident in memory.
    pub models: Vec<ModelInfo>,
    /// Client connections open now (including the one asking).
    pub connections: u64,
    /// Requests being processed now, not counting the `status` request itself.
    pub requests_running: u64,
    /// Whether CUDA works here (checked once at start-up), and if not, why.
    pub cuda: CudaStatus,
    /// The latest GPU telemetry sample, taken in the background (status never waits on NVML).
    /// When NVML is unusable, `gpu.nvml` says why and `gpu.gpus` is empty.
    pub gpu: GpuTelemetry,
    /// The PSU power budget: that sample's draw and power limits against the `[power]` config.
    pub power: PowerBudget,
    /// Each resident model's layers per device, one entry per pipeline stage (CPU devices as
    /// `cpu`, GPUs by NVML index), sorted by model name.
    pub model_layers: Vec<ModelPlacement>,
    /// The models the configuration declares (`[[models]]`), in its order, with where each
    /// stands: waiting, loading, resident, not loaded (on demand), or failed with the reason.
    pub declared: Vec<DeclaredModel>,
    /// The daemon process's resident memory.
    pub memory: DaemonMemory,
}

/// One `[[models]]` entry of the configuration in force and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredModel {
    /// Its name.
    pub name: String,
    /// Its file, resolved against `models_dir`.
    pub path: String,
    /// Whether it loads at its first request (`load = "on_demand"`) rather than at start.
    pub on_demand: bool,
    /// How long it stays without requests: "forever" or seconds ("300s").
    pub keep_alive: String,
    /// Where it stands.
    pub state: DeclaredState,
    /// The last thing that happened to it besides loading, e.g. "unloaded after 300 s without
    /// requests" or "evicted to make room for \"big\"".
    pub note: Option<String>,
}

/// Where a declared model stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclaredState {
    /// A start model waiting for the models before it to load.
    Waiting,
    /// Being loaded: `done` of `total` stages.
    Loading {
        /// Stages loaded so far.
        done: u64,
        /// Stages in all.
        total: u64,
    },
    /// Resident and serving.
    Resident,
    /// Not resident: an on-demand model before its first request or after its keep-alive.
    NotLoaded,
    /// Its load (or re-split) failed; it is retried on the next reload (an on-demand model also
    /// on its next request).
    Failed {
        /// Why.
        reason: String,
    },
}

impl DeclaredState {
    /// A short word for tables: waiting, loading, resident, not loaded, failed.
    pub fn word(&self) -> &'static str {
        match self {
            DeclaredState::Waiting => "waiting",
            DeclaredState::Loading { .. } => "loading",
            DeclaredState::Resident => "resident",
            DeclaredState::NotLoaded => "not loaded",
            DeclaredState::Failed { .. } => "failed",
        }
    }
}

/// Host memory a model holds, split as the kernel counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    /// Anonymous memory the daemon owns: weights and KV caches on CPU devices and the host copy
    /// of the token embedding table (none when it is shared with a tied head on a CPU device).
    pub anon_bytes: u64,
    /// Pages of the model file mapped and resident: none, the file is read, never mapped.
    pub file_bytes: u64,
}

/// What a model's prefix cache retains: finished generations' KV caches kept for later prompts
/// that share their prefix. Part of the model's KV bytes (`kv_bytes` of its stages) and of the
/// devices' used memory, reported apart from the running generations' caches; dropped first
/// when a load or a re-split needs the memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCacheUsage {
    /// Bytes of KV cache retained, over every device.
    pub retained_bytes: u64,
    /// Finished sequences retained.
    pub retained_sequences: u64,
}

/// The daemon process's resident memory (`/proc/self/status`), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonMemory {
    /// Resident now (`VmRSS`).
    pub rss_bytes: u64,
    /// Of which anonymous (`RssAnon`).
    pub anon_bytes: u64,
    /// Of which file-backed (`RssFile`: the binary and libraries).
    pub file_bytes: u64,
    /// The most resident so far (`VmHWM`).
    pub peak_bytes: u64,
}

/// Kind of compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// The host CPU and its RAM.
    Cpu,
    /// An NVIDIA GPU driven through CUDA.
    Cuda,
}

impl DeviceKind {
    /// Lowercase name, as used in device names ("cpu:0") and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One device the daemon knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device name, `<kind>:<index>`, e.g. "cpu:0" or "cuda:1".
    pub name: String,
    /// Device kind.
    pub kind: DeviceKind,
    /// Bytes of this device's memory the daemon may use for models and caches.
    pub memory_budget_bytes: u64,
    /// Bytes currently used by resident models on this device.
    pub memory_used_bytes: u64,
    /// What it is: the GPU's product name and memory ("NVIDIA H200, 139.8 GiB"), or "host
    /// memory" for CPU devices.
    pub description: String,
    /// Why models cannot be placed on it (e.g. no NVIDIA driver), if they cannot.
    pub unavailable: Option<String>,
}

/// Whether this daemon can use CUDA GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaStatus {
    /// GPUs the CUDA driver reports (0 when unavailable).
    pub devices: u32,
    /// Why CUDA cannot be used (no driver library, a driver too old, no devices), if so.
    pub unavailable: Option<String>,
    /// How each pair of GPUs opened so far copies between them, by CUDA number.
    pub peers: Vec<CudaPeer>,
}

/// How activations, weights and caches cross between two GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaPeer {
    /// The first GPU's device name (`cuda:0`).
    pub gpu_a: String,
    /// The second GPU's device name (`cuda:1`).
    pub gpu_b: String,
    /// Whether copies go peer to peer (both contexts and memory pools opened to each other).
    pub direct: bool,
    /// Why they go through host memory instead, if they do.
    pub reason: Option<String>,
}

/// One resident model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Name the model was loaded under.
    pub name: String,
    /// Path of its GGUF file.
    pub path: String,
    /// Names of the devices holding parts of it.
    pub devices: Vec<String>,
    /// Bytes of device memory it occupies in all.
    pub memory_bytes: u64,
    /// Host memory it holds (part of `memory_bytes` on CPU devices, plus its embedding table).
    pub host_memory: HostMemory,
    /// Type of its KV cache's keys.
    pub cache_type_k: KvCacheType,
    /// Type of its KV cache's values.
    pub cache_type_v: KvCacheType,
    /// Why it no longer serves (its worker failed), if so: every request for it is refused with
    /// this reason until `llmctl reload` (or `load --replace`) loads it again.
    pub failed: Option<String>,
    /// When the model's file has no chat template: which fallback chats are rendered with, and
    /// that a base model may answer with junk (`--raw` avoids the template).
    pub template_warning: Option<String>,
    /// What its prefix cache retains (part of `memory_bytes`).
    pub prefix_cache: PrefixCacheUsage,
}
