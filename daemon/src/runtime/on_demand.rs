//! The model for a request, loaded first when the configuration declares it on demand
//! ([`Runtime::acquire`], the one entry point every front end uses), and loads of declared
//! models ([`Runtime::load_declared`]) that evict idle on-demand models, least recently used
//! first, when memory is short.

use std::sync::Arc;

use llmd_shared::DeclaredState;
use tokio::sync::mpsc::UnboundedSender;

use super::book::Book;
use super::error::{ErrorKind, RuntimeError};
use super::load::{prepare_load, Loaded};
use super::{ResidentModel, Runtime};
use crate::config::LoadPolicy;

/// Idle on-demand models evicted at most for one load: each eviction is followed by a new try,
/// and a model that does not fit with every idle one gone is refused with the planner's reason.
const MAX_EVICTIONS_PER_LOAD: usize = 16;

/// A model held by a request. While any is alive a declared model is neither unloaded by its
/// keep-alive nor evicted; dropping it restarts the model's keep-alive clock.
pub struct InUse {
    /// The model.
    pub model: ResidentModel,
    /// To note the end of the use.
    book: Arc<Book>,
}

impl std::ops::Deref for InUse {
    type Target = ResidentModel;
    fn deref(&self) -> &ResidentModel {
        &self.model
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.book.end_use(&self.model.name);
    }
}

impl Runtime {
    /// The model `name` for a request (generate, chat, tokenize): the resident one, or, when
    /// the configuration declares `name` with `load = "on_demand"` and it is not resident, the
    /// one loaded now, sending `(stages done, stages)` to `progress` (a request that finds
    /// another's load of it under way waits for that one). A declared start model that is not
    /// resident is refused with the reason its load failed.
    pub async fn acquire(
        &self,
        name: &str,
        progress: UnboundedSender<(usize, usize)>,
    ) -> Result<InUse, RuntimeError> {
        if let Some(model) = self.in_use(name) {
            return Ok(model);
        }
        let Some(entry) = self.declared.get(name) else {
            return Err(not_loaded(name));
        };
        if entry.decl.load != LoadPolicy::OnDemand {
            let why = match entry.state {
                DeclaredState::Failed { reason } => format!("its load failed: {reason}"),
                DeclaredState::Waiting | DeclaredState::Loading { .. } => {
                    "it is still being loaded (see llmctl status)".to_owned()
                }
                _ => "it is not resident".to_owned(),
            };
            return Err(RuntimeError::new(
                ErrorKind::NotFound,
                format!("model {name:?} is declared in the configuration but not loaded: {why}"),
            ));
        }
        self.load_declared(name, progress, false).await?;
        self.in_use(name).ok_or_else(|| not_loaded(name))
    }

    /// The resident model `name` as an [`InUse`].
    fn in_use(&self, name: &str) -> Option<InUse> {
        // The use is noted under the registry lock, so the keep-alive (which checks users under
        // that lock) cannot unload the model between the look-up and the note.
        let registry = self.models();
        let model = registry.get(name).cloned()?;
        self.declared.begin_use(name);
        drop(registry);
        Some(InUse {
            model,
            book: Arc::clone(&self.declared),
        })
    }

    /// Loads the declared model `name` as its book entry says (replacing a resident copy
    /// atomically), keeping the book current (loading with progress, resident, or failed with
    /// the reason) and forwarding progress to `progress`. When it does not fit, idle on-demand
    /// models are evicted, least recently used first, and the load is tried again. `fresh`:
    /// load it even if it is resident (a reload whose file or settings changed); otherwise a
    /// copy that became resident while this waited for the placement lock is taken as is.
    pub async fn load_declared(
        &self,
        name: &str,
        progress: UnboundedSender<(usize, usize)>,
        fresh: bool,
    ) -> Result<Option<Loaded>, RuntimeError> {
        let result = self.load_declared_inner(name, progress, fresh).await;
        match &result {
            Ok(_) => self.declared.set_state(name, DeclaredState::Resident),
            Err(e) => {
                tracing::error!(model = %name, "declared model failed to load: {}", e.message);
                self.declared.set_state(
                    name,
                    DeclaredState::Failed {
                        reason: e.message.clone(),
                    },
                );
            }
        }
        self.changed.notify_one();
        result
    }

    async fn load_declared_inner(
        &self,
        name: &str,
        progress: UnboundedSender<(usize, usize)>,
        fresh: bool,
    ) -> Result<Option<Loaded>, RuntimeError> {
        let mut evicted = 0;
        loop {
            let entry = self.declared.get(name).ok_or_else(|| {
                RuntimeError::new(
                    ErrorKind::NotFound,
                    format!("model {name:?} is no longer declared in the configuration"),
                )
            })?;
            let spec = entry.spec.clone();
            let template = entry.decl.chat_template.clone();
            let path = spec.path.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                let prepared = prepare_load(&path)?;
                match template {
                    Some(t) => prepared.with_chat_template(&t),
                    None => Ok(prepared),
                }
            })
            .await
            .map_err(|e| {
                RuntimeError::new(ErrorKind::Internal, format!("the load task failed: {e}"))
            })??;
            let placement = self
                .placement(format!("loading declared model {name:?}"))
                .await?;
            // Another request may have loaded it while this one waited for the lock.
            if !fresh && self.models().get(name).is_some() {
                return Ok(None);
            }
            self.declared
                .set_state(name, DeclaredState::Loading { done: 0, total: 0 });
            self.changed.notify_one();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, usize)>();
            let book_progress = async {
                while let Some((done, total)) = rx.recv().await {
                    self.declared.set_state(
                        name,
                        DeclaredState::Loading {
                            done: done as u64,
                            total: total as u64,
                        },
                    );
                    self.changed.notify_one();
                    let _ = progress.send((done, total));
                }
            };
            let place = self.place(
                spec,
                name.to_owned(),
                prepared,
                placement,
                self.devices(),
                tx,
            );
            let (result, ()) = tokio::join!(place, book_progress);
            match result {
                Err(e) if e.kind == ErrorKind::DoesNotFit && evicted < MAX_EVICTIONS_PER_LOAD => {
                    if !self.evict_lru(name).await? {
                        return Err(e);
                    }
                    evicted += 1;
                }
                other => return other.map(Some),
            }
        }
    }

    /// Unloads the least recently used idle on-demand model other than `for_name` (resident,
    /// no request on it) to make room for `for_name`, and waits (bounded) for its memory to
    /// come back. False when there is none.
    async fn evict_lru(&self, for_name: &str) -> Result<bool, RuntimeError> {
        let _placement = self
            .placement(format!("evicting an idle model for {for_name:?}"))
            .await?;
        let victim = {
            let registry = self.models();
            let mut candidates: Vec<_> = self
                .declared
                .snapshot()
                .into_iter()
                .filter(|e| {
                    e.decl.name != for_name
                        && e.decl.load == LoadPolicy::OnDemand
                        && e.state == DeclaredState::Resident
                        && e.users == 0
                        && registry.get(&e.decl.name).is_some_and(|m| {
                            m.running.load(std::sync::atomic::Ordering::SeqCst) == 0
                        })
                })
                .collect();
            candidates.sort_by_key(|e| e.last_used);
            candidates.into_iter().next()
        };
        let Some(victim) = victim else {
            return Ok(false);
        };
        let name = victim.decl.name;
        let idle = victim.last_used.elapsed();
        let Some(model) = self.models().remove(&name) else {
            return Ok(false);
        };
        let bytes = model.memory_bytes();
        // The load that follows plans with the memory this frees.
        let freed = super::release(model).await;
        let note = format!(
            "evicted after {} s idle to make room for {for_name:?}",
            idle.as_secs()
        );
        tracing::info!(model = %name, freed_bytes = bytes, "{note}");
        self.declared.update(&name, |e| {
            e.state = DeclaredState::NotLoaded;
            e.note = Some(note);
        });
        self.changed.notify_one();
        if !freed {
            tracing::warn!(model = %name, "trying the load although the evicted model's memory is not free yet");
        }
        Ok(true)
    }
}

fn not_loaded(name: &str) -> RuntimeError {
    RuntimeError::new(
        ErrorKind::NotFound,
        format!("no model named {name:?} is loaded"),
    )
}
