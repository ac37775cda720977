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
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use llmd_shared::api::health::{DeviceLayers, DeviceRef, ModelPlacement};
use llmd_shared::{DeviceInfo, ErrorCode, ErrorReply, ModelInfo};
use tokio::sync::Notify;

use llmd_kernels::backend::DeviceMemory;

use crate::config::LoadedConfig;
use crate::devices;
use crate::gpu::sampler::GpuSampler;
use crate::gpu::{GpuTelemetry, NvmlStatus};
use crate::models::LoadedModel;

pub use crate::devices::Device;

/// A model resident in memory: shared by the registry and the requests using it, so that
/// unloading or replacing it lets running generations finish on it.
pub type ResidentModel = Arc<LoadedModel>;

/// The models resident in memory, by the name they were loaded under.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    /// Sorted by name, so listings are stable.
    models: BTreeMap<String, ResidentModel>,
}

impl ModelRegistry {
    /// Number of resident models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is resident.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The model registered under `name`.
    pub fn get(&self, name: &str) -> Option<&ResidentModel> {
        self.models.get(name)
    }

    /// Registers `model` under `name`; returns it back if the name is taken.
    pub fn insert(&mut self, name: String, model: ResidentModel) -> Result<(), ResidentModel> {
        match self.models.entry(name) {
            std::collections::btree_map::Entry::Occupied(_) => Err(model),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(model);
                Ok(())
            }
        }
    }

    /// Removes and returns the model registered under `name`.
    pub fn remove(&mut self, name: &str) -> Option<ResidentModel> {
        self.models.remove(name)
    }

    /// Replaces the model registered under `name` (or registers it); returns the old one.
    pub fn replace(&mut self, name: String, model: ResidentModel) -> Option<ResidentModel> {
        self.models.insert(name, model)
    }

    /// Every resident model, sorted by name.
    pub fn all(&self) -> Vec<ResidentModel> {
        self.models.values().cloned().collect()
    }

    /// Names of the resident models that failed, sorted.
    pub fn failed(&self) -> Vec<String> {
        self.models
            .iter()
            .filter(|(_, m)| m.failure().is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every failed model with the reason, sorted by name (for `doctor`).
    pub fn failures(&self) -> Vec<(String, String)> {
        self.models
            .iter()
            .filter_map(|(name, m)| m.failure().map(|why| (name.clone(), why)))
            .collect()
    }

    /// Bytes used on the device named `device` by all resident models.
    pub fn bytes_on(&self, device: &str) -> u64 {
        self.models.values().map(|m| m.bytes_on(device)).sum()
    }

    /// Wire descriptions of every resident model, sorted by name.
    pub fn infos(&self) -> Vec<ModelInfo> {
        self.models
            .iter()
            .map(|(name, m)| {
                let mut devices: Vec<String> =
                    m.placement().into_iter().map(|s| s.device).collect();
                devices.dedup();
                let (cache_type_k, cache_type_v) = m.cache_types();
                ModelInfo {
                    name: name.clone(),
                    path: m.path.display().to_string(),
                    devices,
                    memory_bytes: m.memory_bytes(),
                    host_memory: m.host_memory(),
                    cache_type_k,
                    cache_type_v,
                    failed: m.failure(),
                }
            })
            .collect()
    }

    /// Every resident model's layers per device, one entry per pipeline stage, sorted by name
    /// (for `status` and the doctor's split and peer-to-peer checks), each GPU by its NVML index
    /// as `gpus` finds it.
    pub fn placements(&self, gpus: &GpuIndex) -> Vec<ModelPlacement> {
        self.models
            .iter()
            .map(|(name, m)| ModelPlacement {
                name: name.clone(),
                layers: m
                    .placement()
                    .into_iter()
                    .filter_map(|stage| {
                        gpus.device_ref(&stage.device).map(|device| DeviceLayers {
                            device,
                            layers: stage.layer_end.saturating_sub(stage.layer_start),
                        })
                    })
                    .collect(),
            })
            .collect()
    }
}

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
    /// The devices in force; replaced on reload.
    devices: RwLock<Arc<Vec<Device>>>,
    /// Resident models.
    pub models: Mutex<ModelRegistry>,
    /// Open client connections.
    connections: AtomicU64,
    /// Requests being processed.
    requests_running: AtomicU64,
    /// Woken whenever a counter or the model set changes or a model fails, so the status line
    /// can be refreshed (shared with the models' workers).
    pub changed: Arc<Notify>,
    /// Memory ledgers of devices by name, shared by every model placed on them; kept across
    /// configuration reloads so that accounting stays right while models are resident.
    device_memory: Mutex<BTreeMap<String, Arc<DeviceMemory>>>,
    /// Serialises loads, unloads and re-splits, so that memory checks and placement see a
    /// stable set of models. Taken through [`State::placement`], which bounds the wait.
    placement_lock: Arc<tokio::sync::Mutex<()>>,
    /// What holds `placement_lock` now and since when, for the `busy` message of a wait that
    /// runs out.
    placement_holder: Arc<Mutex<Option<(String, Instant)>>>,
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
        Arc::new(State {
            started: Instant::now(),
            pid: std::process::id(),
            socket_path,
            config: RwLock::new(Arc::new(config)),
            devices: RwLock::new(Arc::new(devices)),
            models: Mutex::new(ModelRegistry::default()),
            connections: AtomicU64::new(0),
            requests_running: AtomicU64::new(0),
            changed: Arc::new(Notify::new()),
            device_memory: Mutex::new(BTreeMap::new()),
            placement_lock: Arc::new(tokio::sync::Mutex::new(())),
            placement_holder: Arc::new(Mutex::new(None)),
            gpu,
        })
    }

    /// Which NVML index each CUDA GPU in force has, by the latest telemetry sample.
    pub fn gpu_index(&self, telemetry: &GpuTelemetry) -> GpuIndex {
        GpuIndex::new(&self.devices(), telemetry)
    }

    /// Takes the placement lock for `what` (e.g. "loading gemma"), waiting at most
    /// [`PLACEMENT_WAIT`]; then `busy`, naming what holds it and for how long. The guard may
    /// move to the thread doing the work, so the lock is held until the work really ends even if
    /// the request is cancelled.
    pub async fn placement(&self, what: String) -> Result<PlacementGuard, ErrorReply> {
        let lock = Arc::clone(&self.placement_lock);
        match tokio::time::timeout(PLACEMENT_WAIT, lock.lock_owned()).await {
            Ok(guard) => {
                *self
                    .placement_holder
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((what, Instant::now()));
                Ok(PlacementGuard {
                    _guard: guard,
                    holder: Arc::clone(&self.placement_holder),
                })
            }
            Err(_) => {
                let holder = self
                    .placement_holder
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let held = match holder {
                    Some((what, since)) => {
                        format!("{what} ({} s so far)", since.elapsed().as_secs())
                    }
                    None => "another load, unload or re-split".to_owned(),
                };
                Err(ErrorReply::new(
                    ErrorCode::Busy,
                    format!(
                        "models are being placed: {held} did not finish within {} s; retry when \
                         it has",
                        PLACEMENT_WAIT.as_secs()
                    ),
                ))
            }
        }
    }

    /// The latest GPU telemetry sample; never blocks on NVML.
    pub fn gpu_telemetry(&self) -> Arc<GpuTelemetry> {
        match &self.gpu {
            GpuSource::Sampler(sampler) => sampler.latest(),
            GpuSource::Failed(telemetry) => Arc::clone(telemetry),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<LoadedConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The devices in force, each GPU that has failed since marked unavailable with the reason
    /// ([`devices::with_faults`]).
    pub fn devices(&self) -> Arc<Vec<Device>> {
        let configured = self
            .devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Arc::new(devices::with_faults(&configured))
    }

    /// Installs a reloaded configuration (and the devices it describes).
    pub fn replace_config(&self, config: LoadedConfig) {
        let devices = devices::from_config(&config);
        *self.devices.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(devices);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        self.changed.notify_one();
    }

    /// Locks the model registry (a poisoned lock is taken over: the registry stays consistent
    /// because every mutation is a single map operation).
    pub fn models(&self) -> std::sync::MutexGuard<'_, ModelRegistry> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The memory ledger of a device (created on first use with the device's budget).
    pub fn device_memory(&self, device: &Device) -> Arc<DeviceMemory> {
        let mut map = self
            .device_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(device.name.clone())
                .or_insert_with(|| DeviceMemory::new(device.memory_budget_bytes)),
        )
    }

    /// Bytes in use on a device: its ledger where there is one, else what models report.
    fn used_on(&self, device: &Device) -> u64 {
        let ledger = self
            .device_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&device.name)
            .cloned();
        match ledger {
            Some(l) => l.used(),
            None => self.models().bytes_on(&device.name),
        }
    }

    /// Wire descriptions of the devices, with the bytes resident models use on each.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices()
            .iter()
            .map(|d| DeviceInfo {
                name: d.name.clone(),
                kind: d.kind,
                memory_budget_bytes: d.memory_budget_bytes,
                memory_used_bytes: self.used_on(d),
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
    /// failed models named ("2 models resident (1 failed: gemma), ...").
    pub fn status_line(&self) -> String {
        let (models, failed) = {
            let registry = self.models();
            (registry.len(), registry.failed())
        };
        let requests = self.requests_running();
        let failed = if failed.is_empty() {
            String::new()
        } else {
            format!(" ({} failed: {})", failed.len(), failed.join(", "))
        };
        format!(
            "{models} model{} resident{failed}, {requests} request{} running",
            if models == 1 { "" } else { "s" },
            if requests == 1 { "" } else { "s" },
        )
    }

    fn counter(&self, which: Counter) -> &AtomicU64 {
        match which {
            Counter::Connections => &self.connections,
            Counter::Requests => &self.requests_running,
        }
    }
}

/// How long a load, unload or re-split waits for the one before it (a large model loads in
/// minutes, so waits are long, but not unbounded: a wedged operation must not wedge every
/// later one).
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(120);

/// Holds the placement lock (see [`State::placement`]); releases it when dropped.
pub struct PlacementGuard {
    /// The lock.
    _guard: tokio::sync::OwnedMutexGuard<()>,
    /// Cleared on drop.
    holder: Arc<Mutex<Option<(String, Instant)>>>,
}

impl Drop for PlacementGuard {
    fn drop(&mut self) {
        // Cleared before the lock itself is released (fields drop after this).
        *self.holder.lock().unwrap_or_else(PoisonError::into_inner) = None;
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

    /// Issue 14: a wedged placement no longer wedges every later load, unload and re-split.
    #[tokio::test(start_paused = true)]
    async fn a_held_placement_lock_makes_later_waits_busy_naming_the_holder() {
        let state = State::new("/tmp/s".into(), LoadedConfig::default());
        let held = state.placement("loading \"big\"".into()).await.unwrap();
        let err = match state.placement("unloading \"x\"".into()).await {
            Ok(_) => panic!("the lock was taken twice"),
            Err(e) => e,
        };
        assert_eq!(err.code, ErrorCode::Busy);
        assert!(err.message.contains("loading \"big\""), "{}", err.message);
        assert!(err.message.contains("120 s"), "{}", err.message);
        drop(held);
        let again = state.placement("unloading \"x\"".into()).await;
        assert!(again.is_ok());
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
