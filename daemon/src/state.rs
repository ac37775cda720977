//! The daemon's shared state, one [`State`] behind an `Arc`, read by every request handler.
//!
//! Locks here are `std::sync` locks held only for short, non-async sections (copying a snapshot
//! out); long work (loading, inference) happens on dedicated threads and never under these locks.
//!
//! GPU telemetry comes from a [`GpuSampler`] started with the state: its thread samples NVML in
//! the background and handlers only clone the latest sample ([`State::gpu_telemetry`]), so
//! `status`, `doctor` and `metrics` never wait on the driver. The sampler keeps the `[gpu]`
//! settings the daemon started with: a reload does not restart it (changes take effect on
//! restart, as the config documents), while `[power]` is read from the config in force on every
//! request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use llmd_kernels::cpu::ComputePool;
use llmd_shared::api::health::DeviceRef;
use llmd_shared::DeviceInfo;
use tokio::sync::Notify;

use crate::config::LoadedConfig;
use crate::devices;
use crate::gpu::sampler::GpuSampler;
use crate::gpu::{GpuTelemetry, NvmlStatus};
use crate::health::registry::{Metrics, ModelLoad};
use crate::health::{metrics, power};
use crate::runtime::Runtime;

pub use crate::devices::Device;

/// The doctor's view of a device name as written: `cpu:N` is the CPU, `cuda:N` GPU number N.
/// `None` for a name of neither form. [`GpuIndex::device_ref`] turns the CUDA number into the
/// NVML index.
pub fn device_ref(name: &str) -> Option<DeviceRef> {
    let (kind, index) = name.split_once(':')?;
    match kind {
        "cpu" => Some(DeviceRef::Cpu),
        "cuda" => index.parse().ok().map(DeviceRef::Gpu),
        _ => None,
    }
}

/// Which NVML index each CUDA GPU has. CUDA numbers GPUs fastest first (unless
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID`), NVML by PCI bus, so on a box with two different cards
/// `cuda:0` may be NVML's GPU 1: the two are matched by UUID, else by PCI bus id.
#[derive(Debug, Default, Clone)]
pub struct GpuIndex {
    /// CUDA ordinal -> NVML index, for the GPUs matched.
    by_ordinal: BTreeMap<u32, u32>,
    /// Whether NVML reported GPUs at all (without it, the CUDA number is all there is).
    nvml_has_gpus: bool,
}

impl GpuIndex {
    /// Matches the CUDA `devices` (their UUIDs and PCI bus ids) with the GPUs of `telemetry`.
    pub fn new(devices: &[Device], telemetry: &GpuTelemetry) -> Self {
        let norm = |pci: &str| llmd_kernels::backend::normalize_pci_bus_id(pci);
        let mut by_ordinal = BTreeMap::new();
        for d in devices.iter().filter(|d| d.is_gpu()) {
            let found = telemetry.gpus.iter().find(|g| {
                let uuid = g.uuid.value().zip(d.uuid.as_ref());
                let pci = g
                    .pci_bus_id
                    .value()
                    .and_then(|p| norm(p))
                    .zip(d.pci_bus_id.as_deref().and_then(norm));
                match (uuid, pci) {
                    (Some((a, b)), _) => a.eq_ignore_ascii_case(b),
                    (None, Some((a, b))) => a == b,
                    _ => false,
                }
            });
            if let Some(g) = found {
                by_ordinal.insert(d.index, g.index);
            }
        }
        GpuIndex {
            by_ordinal,
            nvml_has_gpus: !telemetry.gpus.is_empty(),
        }
    }

    /// The doctor's view of device `name`: the CPU, or the GPU by its NVML index; a GPU NVML
    /// does not know is `None` (its CUDA number is used only when NVML reports no GPU at all).
    pub fn device_ref(&self, name: &str) -> Option<DeviceRef> {
        match device_ref(name)? {
            DeviceRef::Gpu(ordinal) => match self.by_ordinal.get(&ordinal) {
                Some(&index) => Some(DeviceRef::Gpu(index)),
                None if !self.nvml_has_gpus => Some(DeviceRef::Gpu(ordinal)),
                None => None,
            },
            cpu => Some(cpu),
        }
    }
}

/// Where GPU telemetry comes from.
enum GpuSource {
    /// The background sampler (the normal case).
    Sampler(GpuSampler),
    /// The sampler's thread could not be started; this sample says why, forever.
    Failed(Arc<GpuTelemetry>),
}

/// Everything request handlers share.
pub struct State {
    /// When the daemon started, for `uptime`.
    pub started: Instant,
    /// Our process id, reported by `status`.
    pub pid: u32,
    /// The socket we listen on, reported by `status`.
    pub socket_path: PathBuf,
    /// The configuration in force; replaced as a whole on reload.
    config: RwLock<Arc<LoadedConfig>>,
    /// The resident models and what placing them needs: the domain layer every front end
    /// calls.
    pub runtime: Runtime,
    /// Request, token and latency metrics, shared with the runtime and both front ends.
    pub metrics: Arc<Metrics>,
    /// Open client connections.
    connections: AtomicU64,
    /// Requests being processed.
    requests_running: AtomicU64,
    /// Woken whenever a counter or the model set changes or a model fails, so the status line
    /// can be refreshed (shared with the runtime and the models' workers).
    pub changed: Arc<Notify>,
    /// GPU telemetry, sampled in the background with the `[gpu]` settings of start-up.
    gpu: GpuSource,
}

impl State {
    /// Fresh state for a daemon listening on `socket_path` with `config`; starts the GPU
    /// telemetry sampler (a failure to start its thread is logged and reported by `status`).
    pub fn new(socket_path: PathBuf, config: LoadedConfig) -> Arc<State> {
        let devices = devices::from_config(&config);
        let sampler = config.config.gpu.sampler_config();
        tracing::debug!(
            "GPU telemetry: loading {} every {:?}",
            sampler.library.display(),
            sampler.interval
        );
        let gpu = match GpuSampler::start(sampler) {
            Ok(sampler) => GpuSource::Sampler(sampler),
            Err(e) => {
                tracing::error!("cannot start the GPU telemetry thread: {e}");
                GpuSource::Failed(Arc::new(GpuTelemetry::unavailable(
                    NvmlStatus::InitFailed {
                        reason: format!("the telemetry thread could not start: {e}"),
                    },
                    crate::gpu::nvml::now_unix_ms(),
                )))
            }
        };
        let changed = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new());
        let threads = config.config.compute_threads();
        let compute = ComputePool::new(threads).unwrap_or_else(|e| {
            tracing::error!(
                "cannot start the {threads} compute threads ({e}): models compute on their \
                 request threads alone"
            );
            ComputePool::single()
        });
        tracing::info!("compute pool: {} threads", compute.threads());
        Arc::new(State {
            started: Instant::now(),
            pid: std::process::id(),
            socket_path,
            config: RwLock::new(Arc::new(config)),
            runtime: Runtime::new(Arc::clone(&changed), devices, Arc::clone(&metrics), compute),
            metrics,
            connections: AtomicU64::new(0),
            requests_running: AtomicU64::new(0),
            changed,
            gpu,
        })
    }

    /// Which NVML index each CUDA GPU in force has, by the latest telemetry sample.
    pub fn gpu_index(&self, telemetry: &GpuTelemetry) -> GpuIndex {
        GpuIndex::new(&self.devices(), telemetry)
    }

    /// The latest GPU telemetry sample; never blocks on NVML.
    pub fn gpu_telemetry(&self) -> Arc<GpuTelemetry> {
        match &self.gpu {
            GpuSource::Sampler(sampler) => sampler.latest(),
            GpuSource::Failed(telemetry) => Arc::clone(telemetry),
        }
    }

    /// The Prometheus text `llmctl metrics` and `GET /metrics` print: the latest telemetry
    /// sample's GPU gauges and the power budget, then the request metrics with each model's
    /// load now. Never waits on NVML.
    pub fn metrics_text(&self) -> String {
        let telemetry = self.gpu_telemetry();
        let budget = power::budget(&self.config().config.power, &telemetry);
        let gpu = metrics::render(&telemetry, Some(&budget))
            + &metrics::render_process(&crate::host_memory::ResidentMemory::of_self());
        let loads: Vec<ModelLoad> = self
            .runtime
            .models()
            .all()
            .iter()
            .map(|m| {
                let (running, queued) = m.load_now();
                ModelLoad {
                    model: m.name.clone(),
                    running,
                    queued,
                    prefix_cache_bytes: m.handle.prefix_retained().0,
                }
            })
            .collect();
        self.metrics.exposition(&gpu, &loads)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<LoadedConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The devices in force, each GPU that has failed since marked unavailable with the reason
    /// (the runtime holds them: `Runtime::devices`).
    pub fn devices(&self) -> Arc<Vec<Device>> {
        self.runtime.devices()
    }

    /// Installs a reloaded configuration (and the devices it describes).
    pub fn replace_config(&self, config: LoadedConfig) {
        self.runtime.set_devices(devices::from_config(&config));
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        self.changed.notify_one();
    }

    /// Wire descriptions of the devices, with the bytes resident models use on each.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices()
            .iter()
            .map(|d| DeviceInfo {
                name: d.name.clone(),
                kind: d.kind,
                memory_budget_bytes: d.memory_budget_bytes,
                memory_used_bytes: self.runtime.used_on(d),
                description: d.description.clone(),
                unavailable: d.unavailable.clone(),
            })
            .collect()
    }

    /// Open connections now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests running now.
    pub fn requests_running(&self) -> u64 {
        self.requests_running.load(Ordering::Relaxed)
    }

    /// Counts a connection until the returned guard drops.
    pub fn track_connection(self: &Arc<Self>) -> CounterGuard {
        CounterGuard::new(self.clone(), Counter::Connections)
    }

    /// Counts a running request until the returned guard drops.
    pub fn track_request(self: &Arc<Self>) -> CounterGuard {
        CounterGuard::new(self.clone(), Counter::Requests)
    }

    /// The `STATUS=` line for systemd: "N models resident, M requests running", with the
    /// failed models named ("2 models resident (1 failed: gemma), ...") and, when the config
    /// declares models, where they stand ("; declared 1/2 resident, loading big 3/18").
    pub fn status_line(&self) -> String {
        let (models, failed) = {
            let registry = self.runtime.models();
            (registry.len(), registry.failed())
        };
        let requests = self.requests_running();
        let failed = if failed.is_empty() {
            String::new()
        } else {
            format!(" ({} failed: {})", failed.len(), failed.join(", "))
        };
        format!(
            "{models} model{} resident{failed}, {requests} request{} running{}",
            if models == 1 { "" } else { "s" },
            if requests == 1 { "" } else { "s" },
            self.runtime.declared.status_suffix(),
        )
    }

    fn counter(&self, which: Counter) -> &AtomicU64 {
        match which {
            Counter::Connections => &self.connections,
            Counter::Requests => &self.requests_running,
        }
    }
}

/// Which counter a [`CounterGuard`] holds.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Connections,
    Requests,
}

/// Increments a counter of [`State`] while alive; decrements it on drop.
pub struct CounterGuard {
    /// The state owning the counter.
    state: Arc<State>,
    /// Which counter.
    which: Counter,
}

impl CounterGuard {
    fn new(state: Arc<State>, which: Counter) -> Self {
        state.counter(which).fetch_add(1, Ordering::Relaxed);
        state.changed.notify_one();
        CounterGuard { state, which }
    }
}

impl Drop for CounterGuard {
    fn drop(&mut self) {
        self.state
            .counter(self.which)
            .fetch_sub(1, Ordering::Relaxed);
        self.state.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_status_line() {
        let state = State::new("/tmp/s".into(), LoadedConfig::default());
        assert_eq!(state.status_line(), "0 models resident, 0 requests running");
        let a = state.track_request();
        let _c = state.track_connection();
        assert_eq!(state.requests_running(), 1);
        assert_eq!(state.status_line(), "0 models resident, 1 request running");
        drop(a);
        assert_eq!(state.requests_running(), 0);
        assert_eq!(state.connections(), 1);
        assert_eq!(state.devices()[0].name, "cpu:0");
    }

    #[test]
    fn device_names_map_to_doctor_devices() {
        assert_eq!(device_ref("cpu:0"), Some(DeviceRef::Cpu));
        assert_eq!(device_ref("cpu:3"), Some(DeviceRef::Cpu));
        assert_eq!(device_ref("cuda:1"), Some(DeviceRef::Gpu(1)));
        assert_eq!(device_ref("cuda:x"), None);
        assert_eq!(device_ref("tpu:0"), None);
        assert_eq!(device_ref("cuda"), None);
    }
}
