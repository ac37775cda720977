//! The book of declared models: for each `[[models]]` entry of the configuration in force, the
//! declaration last applied, where it stands (waiting, loading, resident, not loaded, failed),
//! when it was last used and by how many requests now. `status`, the `STATUS=` line, the
//! reconciler, on-demand loading and the keep-alive all read and write it here.
//!
//! Models loaded by hand (`llmctl load`) are not in the book: the registry holds them, and
//! nothing here touches them.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use llmd_shared::{DeclaredModel, DeclaredState};

use super::LoadSpec;
use crate::config::{LoadPolicy, ModelDecl};

/// One declared model.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its declaration as last applied (the one its resident copy was loaded or moved with).
    pub decl: ModelDecl,
    /// What loading it takes: its file (`decl.path` resolved against `models_dir`), devices,
    /// split, context, threads, cache types, GPU layers.
    pub spec: LoadSpec,
    /// Where it stands.
    pub state: DeclaredState,
    /// When a request last started or ended on it: the keep-alive clock and the LRU order.
    pub last_used: Instant,
    /// Requests holding it now (an [`super::InUse`] each): it is never unloaded under them.
    pub users: u32,
    /// The last thing that happened to it besides loading (evicted, unloaded when idle).
    pub note: Option<String>,
}

impl Entry {
    fn new(decl: ModelDecl, spec: LoadSpec) -> Self {
        let state = match decl.load {
            LoadPolicy::Start => DeclaredState::Waiting,
            LoadPolicy::OnDemand => DeclaredState::NotLoaded,
        };
        Entry {
            decl,
            spec,
            state,
            last_used: Instant::now(),
            users: 0,
            note: None,
        }
    }
}

/// Every declared model, in the configuration's order.
#[derive(Debug, Default)]
pub struct Book {
    /// The entries; a handful, so a vector searched by name.
    entries: Mutex<Vec<Entry>>,
    /// Serialises reconciliations (start, then each reload), so each sees the one before done.
    pub(super) reconcile: tokio::sync::Mutex<()>,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of every entry.
    pub fn snapshot(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// A copy of the entry for `name`.
    pub fn get(&self, name: &str) -> Option<Entry> {
        self.lock().iter().find(|e| e.decl.name == name).cloned()
    }

    /// Whether `name` is declared.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().iter().any(|e| e.decl.name == name)
    }

    /// Runs `f` on the entry for `name`, if declared.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().iter_mut().find(|e| e.decl.name == name) {
            f(e);
        }
    }

    /// Sets the state of `name`.
    pub fn set_state(&self, name: &str, state: DeclaredState) {
        self.update(name, |e| e.state = state);
    }

    /// Makes the book list exactly `new` (declaration and load specification each), in that order:
    /// entries of names kept keep their state, clock and users (their declaration is replaced
    /// by the reconciler once applied, [`Book::applied`]); new names start waiting (start
    /// models) or not loaded (on demand).
    pub fn set_declared(&self, new: &[(ModelDecl, LoadSpec)]) {
        let mut entries = self.lock();
        let mut next = Vec::with_capacity(new.len());
        for (decl, spec) in new {
            match entries.iter().position(|e| e.decl.name == decl.name) {
                Some(i) => next.push(entries.swap_remove(i)),
                None => next.push(Entry::new(decl.clone(), spec.clone())),
            }
        }
        *entries = next;
    }

    /// Records `decl` (as `spec`) as applied to its model.
    pub fn applied(&self, decl: &ModelDecl, spec: &LoadSpec) {
        self.update(&decl.name, |e| {
            e.decl = decl.clone();
            e.spec = spec.clone();
        });
    }

    /// Notes one more request on `name` (if declared) and restarts its keep-alive clock.
    pub fn begin_use(&self, name: &str) {
        self.update(name, |e| {
            e.users += 1;
            e.last_used = Instant::now();
        });
    }

    /// Notes the end of a request on `name` and restarts its keep-alive clock.
    pub fn end_use(&self, name: &str) {
        self.update(name, |e| {
            e.users = e.users.saturating_sub(1);
            e.last_used = Instant::now();
        });
    }

    /// The wire form for `status`.
    pub fn infos(&self) -> Vec<DeclaredModel> {
        self.lock()
            .iter()
            .map(|e| DeclaredModel {
                name: e.decl.name.clone(),
                path: e.spec.path.display().to_string(),
                on_demand: e.decl.load == LoadPolicy::OnDemand,
                keep_alive: e.decl.keep_alive().to_string(),
                state: e.state.clone(),
                note: e.note.clone(),
            })
            .collect()
    }

    /// The declared models' part of systemd's `STATUS=` line, empty when none are declared:
    /// "; declared 2/3 resident, loading gemma 5/18, 1 failed: big".
    pub fn status_suffix(&self) -> String {
        let entries = self.lock();
        if entries.is_empty() {
            return String::new();
        }
        let resident = entries
            .iter()
            .filter(|e| e.state == DeclaredState::Resident)
            .count();
        let mut parts = vec![format!("declared {resident}/{} resident", entries.len())];
        for e in entries.iter() {
            if let DeclaredState::Loading { done, total } = e.state {
                parts.push(format!("loading {} {done}/{total}", e.decl.name));
            }
        }
        let waiting = entries
            .iter()
            .filter(|e| e.state == DeclaredState::Waiting)
            .count();
        if waiting > 0 {
            parts.push(format!("{waiting} waiting"));
        }
        let failed: Vec<&str> = entries
            .iter()
            .filter(|e| matches!(e.state, DeclaredState::Failed { .. }))
            .map(|e| e.decl.name.as_str())
            .collect();
        if !failed.is_empty() {
            parts.push(format!("{} failed: {}", failed.len(), failed.join(", ")));
        }
        format!("; {}", parts.join(", "))
    }
}
