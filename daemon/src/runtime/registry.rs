//! The models resident in memory ([`ModelRegistry`]), by the name they were loaded under.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::model::LoadedModel;

/// A model resident in memory: shared by the registry and the requests using it, so that
/// unloading or replacing it lets running generations finish on it.
pub type ResidentModel = Arc<LoadedModel>;

/// How long an unload of an idle model waits for its worker to free the pipeline (normally
/// milliseconds; a bound, so a wedged worker holds neither a client nor the placement lock).
pub const FREE_WAIT: Duration = Duration::from_secs(10);

/// Drops this reference to a model taken out of the registry and, when it was idle, waits (at
/// most [`FREE_WAIT`]) until its worker has freed the weights and caches, so that the devices'
/// ledgers show the memory free when the caller answers or plans. A model still generating is
/// freed when its generations finish; that is not waited for. Returns whether it was freed.
pub async fn release(model: ResidentModel) -> bool {
    let idle = model.running.load(std::sync::atomic::Ordering::SeqCst) == 0;
    let stopped = model.handle.stopped();
    let name = model.name.clone();
    drop(model);
    if !idle {
        return false;
    }
    let freed = stopped.wait(FREE_WAIT).await;
    if !freed {
        tracing::warn!(model = %name, "the model's worker had not freed its memory after {FREE_WAIT:?}");
    }
    freed
}

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
}
