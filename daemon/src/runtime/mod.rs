//! The model runtime: the domain layer both front ends (the Unix socket's handlers in
//! `server::handler`, the HTTP API in `http`) call, so that every line of model logic is shared.
//! It never speaks a wire protocol: operations take domain specs and return domain types and a
//! [`RuntimeError`]; each front end converts them to its own replies.
//!
//! - [`Runtime`]: the registry of resident models, the devices' memory ledgers and the placement
//!   lock that makes loads, unloads and re-splits take turns.
//! - `model`: a resident model ([`LoadedModel`]) and its placement.
//! - `load`: plans and loads ([`LoadSpec`], [`PlanSpec`]); `unload` here; `resplit`: live
//!   re-splits and the recovery of a failed model; `reclaim`: retained prefix caches dropped
//!   when a load or a re-split does not fit because of them.
//! - `generate`: a generation with its stream of token events ([`Generation`]).
//! - `on_demand`: the model for a request, loaded first when the configuration declares it on
//!   demand ([`Runtime::acquire`]), declared loads with least-recently-used eviction of idle
//!   on-demand models ([`Runtime::load_declared`]).
//! - [`book`]: where each declared model (`[[models]]`) stands; [`reconcile`]: makes the
//!   resident declared models match the configuration; [`keep_alive`]: unloads idle on-demand
//!   models.

pub mod book;
mod error;
mod generate;
pub mod keep_alive;
mod load;
mod model;
mod on_demand;
pub mod prompt;
mod reclaim;
pub mod reconcile;
mod registry;
mod resplit;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use llmd_kernels::backend::DeviceMemory;
use llmd_kernels::cpu::ComputePool;
use tokio::sync::Notify;

use crate::devices::Device;
use crate::health::registry::Metrics;

pub use error::{ErrorKind, RuntimeError};
pub use generate::{GenerateParams, Generation, Step};
pub use load::{
    check_name, default_name, plan_blocking, prepare_load, resolve_ctx, LoadSpec, Loaded, PlanSpec,
    PlannedModel, PreparedLoad,
};
pub use model::{placement_of, LoadedModel, StagePlacement, DEFAULT_CTX, MAX_BATCH, MAX_SEQUENCES};
pub use on_demand::InUse;
pub use registry::{release, ModelRegistry, ResidentModel};
pub use resplit::{Resplit, ResplitSpec};

/// How long a load, unload or re-split waits for the one before it (a large model loads in
/// minutes, so waits are long, but not unbounded: a wedged operation must not wedge every
/// later one).
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(120);

/// The resident models and what placing them needs.
pub struct Runtime {
    /// Resident models.
    models: Mutex<ModelRegistry>,
    /// Woken whenever the model set changes or a model fails, so the daemon's status line can be
    /// refreshed (shared with the models' workers).
    changed: Arc<Notify>,
    /// Memory ledgers of devices by name, shared by every model placed on them; kept across
    /// configuration reloads so that accounting stays right while models are resident.
    device_memory: Mutex<BTreeMap<String, Arc<DeviceMemory>>>,
    /// Serialises loads, unloads and re-splits, so that memory checks and placement see a
    /// stable set of models. Taken through [`Runtime::placement`], which bounds the wait.
    placement_lock: Arc<tokio::sync::Mutex<()>>,
    /// What holds `placement_lock` now and since when, for the `busy` message of a wait that
    /// runs out.
    placement_holder: Arc<Mutex<Option<(String, Instant)>>>,
    /// Where generations record their tokens and latencies.
    metrics: Arc<Metrics>,
    /// The devices in force as configured (replaced on reload); [`Runtime::devices`] marks the
    /// GPUs that failed since.
    devices: RwLock<Arc<Vec<Device>>>,
    /// Where each model the configuration declares (`[[models]]`) stands; shared with the
    /// [`InUse`] guards that note the end of each request.
    pub declared: Arc<book::Book>,
    /// The one compute pool of the process: every model's CPU stages run on a share of it.
    compute: Arc<ComputePool>,
}

impl Runtime {
    /// An empty runtime on `devices` that wakes `changed` when its models change, records
    /// generations in `metrics` and computes on shares of `compute`.
    pub fn new(
        changed: Arc<Notify>,
        devices: Vec<Device>,
        metrics: Arc<Metrics>,
        compute: Arc<ComputePool>,
    ) -> Self {
        Runtime {
            models: Mutex::new(ModelRegistry::default()),
            changed,
            device_memory: Mutex::new(BTreeMap::new()),
            placement_lock: Arc::new(tokio::sync::Mutex::new(())),
            placement_holder: Arc::new(Mutex::new(None)),
            metrics,
            devices: RwLock::new(Arc::new(devices)),
            declared: Arc::default(),
            compute,
        }
    }

    /// The devices in force, each GPU that has failed since marked unavailable with the reason
    /// ([`crate::devices::with_faults`]).
    pub fn devices(&self) -> Arc<Vec<Device>> {
        let configured = self
            .devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Arc::new(crate::devices::with_faults(&configured))
    }

    /// Installs the devices of a reloaded configuration.
    pub fn set_devices(&self, devices: Vec<Device>) {
        *self.devices.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(devices);
    }

    /// Locks the model registry (a poisoned lock is taken over: the registry stays consistent
    /// because every mutation is a single map operation).
    pub fn models(&self) -> std::sync::MutexGuard<'_, ModelRegistry> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The resident model called `name`, or `not_found`.
    pub fn model(&self, name: &str) -> Result<ResidentModel, RuntimeError> {
        self.models().get(name).cloned().ok_or_else(|| {
            RuntimeError::new(
                ErrorKind::NotFound,
                format!("no model named {name:?} is loaded"),
            )
        })
    }

    /// Every resident model, each one's placement refreshed from its worker first.
    pub async fn list(&self) -> Vec<ResidentModel> {
        let models = self.models().all();
        for m in &models {
            m.refresh_placement().await;
        }
        models
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
    pub fn used_on(&self, device: &Device) -> u64 {
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

    /// Takes the placement lock for `what` (e.g. "loading gemma"), waiting at most
    /// [`PLACEMENT_WAIT`]; then `busy`, naming what holds it and for how long. The guard may
    /// move to the thread doing the work, so the lock is held until the work really ends even if
    /// the request is cancelled.
    pub async fn placement(&self, what: String) -> Result<PlacementGuard, RuntimeError> {
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
                Err(RuntimeError::new(
                    ErrorKind::Busy,
                    format!(
                        "models are being placed: {held} did not finish within {} s; retry when \
                         it has",
                        PLACEMENT_WAIT.as_secs()
                    ),
                ))
            }
        }
    }

    /// Unregisters the model called `name`; its memory is freed once the generations still
    /// running on it finish, and for an idle model before this returns (so a status, a load or
    /// a plan right after sees it free). Returns the bytes it held.
    pub async fn unload(&self, name: &str) -> Result<u64, RuntimeError> {
        let _placement = self.placement(format!("unloading {name:?}")).await?;
        let model = self.models().remove(name).ok_or_else(|| {
            RuntimeError::new(
                ErrorKind::NotFound,
                format!("no model named {name:?} is loaded"),
            )
        })?;
        // A declared model unloaded by hand: the book says so (an on-demand one loads again at
        // its next request, a start one at the next reload).
        self.declared.update(name, |e| {
            if e.state == llmd_shared::DeclaredState::Resident {
                e.state = llmd_shared::DeclaredState::NotLoaded;
                e.note = Some("unloaded by hand (llmctl unload)".into());
            }
        });
        self.changed.notify_one();
        let freed_bytes = model.memory_bytes();
        tracing::info!(model = %name, freed_bytes, "model unloaded");
        release(model).await;
        Ok(freed_bytes)
    }
}

/// Holds the placement lock (see [`Runtime::placement`]); releases it when dropped.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: a wedged placement no longer wedges every later load, unload and re-split.
    #[tokio::test(start_paused = true)]
    async fn a_held_placement_lock_makes_later_waits_busy_naming_the_holder() {
        let runtime = Runtime::new(
            Arc::new(Notify::new()),
            Vec::new(),
            Arc::default(),
            ComputePool::single(),
        );
        let held = runtime.placement("loading \"big\"".into()).await.unwrap();
        let err = match runtime.placement("unloading \"x\"".into()).await {
            Ok(_) => panic!("the lock was taken twice"),
            Err(e) => e,
        };
        assert_eq!(err.kind, ErrorKind::Busy);
        assert!(err.message.contains("loading \"big\""), "{}", err.message);
        assert!(err.message.contains("120 s"), "{}", err.message);
        drop(held);
        let again = runtime.placement("unloading \"x\"".into()).await;
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn unknown_models_are_not_found_by_name() {
        let runtime = Runtime::new(
            Arc::new(Notify::new()),
            Vec::new(),
            Arc::default(),
            ComputePool::single(),
        );
        let err = runtime.model("nope").unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("\"nope\""), "{}", err.message);
        let err = runtime.unload("nope").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }
}
