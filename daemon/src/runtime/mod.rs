//! The domain calls that make models resident, shared by every front end (the socket's
//! handlers, and an HTTP front end): placing a prepared model in the registry ([`place`]),
//! getting a model for a request, loading it first when the configuration declares it on demand
//! ([`acquire`]), loading a declared model with least-recently-used eviction of idle on-demand
//! models when memory is short ([`load_declared`]).
//!
//! - [`book`]: where each `[[models]]` entry stands (for `status` and `STATUS=`).
//! - [`reconcile`]: makes the resident set match the configuration, at start and on reload.
//! - [`keep_alive`]: unloads on-demand models idle past their `keep_alive`.
//!
//! None of this speaks the wire protocol beyond its reply types: progress goes to a channel the
//! caller forwards as it likes.

pub mod book;
pub mod keep_alive;
pub mod reconcile;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_shared::{DeclaredState, ErrorCode, ErrorReply, LoadReply, LoadRequest, Progress};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{LoadPolicy, ModelDecl};
use crate::models::{load_blocking, prepare_load, PreparedLoad};
use crate::state::{PlacementGuard, ResidentModel, State};

/// Idle on-demand models evicted at most for one load: each eviction is followed by a new try,
/// and a model that does not fit with every idle one gone is refused with the planner's reason.
const MAX_EVICTIONS_PER_LOAD: usize = 16;

/// How long an eviction waits for the evicted model's worker to return its memory to the
/// ledgers before the load is tried anyway (the worker frees its pipeline between two steps,
/// normally within milliseconds).
const EVICTION_WAIT: Duration = Duration::from_secs(10);

/// How often that wait looks at the ledgers.
const EVICTION_POLL: Duration = Duration::from_millis(20);

/// Loads a prepared model under the placement lock held by `placement`, sending progress
/// (stages loaded) to `progress`, and registers it under `name` (replacing a model of that
/// name). The lock goes to the load's thread and comes back with its result, so it is held
/// until the model is registered even if the caller is cancelled meanwhile.
pub async fn place(
    state: &Arc<State>,
    req: LoadRequest,
    name: String,
    prepared: PreparedLoad,
    placement: PlacementGuard,
    progress: UnboundedSender<Progress>,
) -> Result<LoadReply, ErrorReply> {
    let devices = state.devices();
    let task = {
        let state = Arc::clone(state);
        let req = req.clone();
        let name = name.clone();
        let changed = Some(Arc::clone(&state.changed));
        tokio::task::spawn_blocking(move || {
            let loaded = load_blocking(
                &req,
                name.clone(),
                prepared,
                &devices,
                &|d| state.device_memory(d),
                changed,
                |done, total| {
                    let _ = progress.send(Progress {
                        done: done as u64,
                        total: total as u64,
                        what: "layers".into(),
                    });
                },
            );
            // Registered before the lock is released, so the next placement sees it.
            let registered = loaded.map(|(model, secs, bytes)| {
                let model = Arc::new(model);
                let old = state.models().replace(name.clone(), Arc::clone(&model));
                (model, secs, bytes, old.is_some())
            });
            drop(placement);
            registered
        })
    };
    let (model, load_secs, bytes_loaded, replaced) = task.await.map_err(|e| {
        ErrorReply::new(ErrorCode::Internal, format!("the load task failed: {e}"))
    })??;
    state.changed.notify_one();
    let (cache_type_k, cache_type_v) = model.cache_types();
    tracing::info!(model = %name, path = %req.path, load_secs, bytes_loaded, replaced, "model loaded");
    Ok(LoadReply {
        name,
        path: req.path.clone(),
        architecture: model.architecture.clone(),
        n_layer: model.config.n_layer as u32,
        ctx: model.ctx(),
        placement: model.placement(),
        load_secs,
        bytes_loaded,
        replaced,
        cache_type_k,
        cache_type_v,
    })
}

/// A model held by a request. While any is alive a declared model is not unloaded by its
/// keep-alive nor evicted; dropping it restarts the model's keep-alive clock.
pub struct InUse {
    /// The model.
    pub model: ResidentModel,
    /// To note the end of the use.
    state: Arc<State>,
}

impl std::ops::Deref for InUse {
    type Target = ResidentModel;
    fn deref(&self) -> &ResidentModel {
        &self.model
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.state.declared.end_use(&self.model.name);
    }
}

/// The model `name` for a request (generate, chat, tokenize): the resident one, or, when the
/// configuration declares `name` with `load = "on_demand"` and it is not resident, the one
/// loaded now, with the load's progress sent to `progress` (a request waiting on another's load
/// of it waits for that one). A declared start model that is not resident is refused with the
/// reason its load failed. This is the one entry point every front end uses.
pub async fn acquire(
    state: &Arc<State>,
    name: &str,
    progress: UnboundedSender<Progress>,
) -> Result<InUse, ErrorReply> {
    if let Some(model) = in_use(state, name) {
        return Ok(model);
    }
    let Some(entry) = state.declared.get(name) else {
        return Err(not_loaded(name));
    };
    if entry.decl.load != LoadPolicy::OnDemand {
        let why = match entry.state {
            DeclaredState::Failed { reason } => format!("its load failed: {reason}"),
            DeclaredState::Waiting | DeclaredState::Loading { .. } => {
                "it is still being loaded at start (see llmctl status)".to_owned()
            }
            _ => "it is not resident".to_owned(),
        };
        return Err(ErrorReply::new(
            ErrorCode::NotFound,
            format!("model {name:?} is declared in the configuration but not loaded: {why}"),
        ));
    }
    load_declared(state, name, progress, false).await?;
    in_use(state, name).ok_or_else(|| not_loaded(name))
}

/// The resident model `name` as an [`InUse`].
fn in_use(state: &Arc<State>, name: &str) -> Option<InUse> {
    // The use is noted under the registry lock, so the keep-alive (which checks users under
    // that lock) cannot unload the model between the look-up and the note.
    let registry = state.models();
    let model = registry.get(name).cloned()?;
    state.declared.begin_use(name);
    drop(registry);
    Some(InUse {
        model,
        state: Arc::clone(state),
    })
}

fn not_loaded(name: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::NotFound,
        format!("no model named {name:?} is loaded"),
    )
}

/// The load request a declaration makes, for the file at `path`.
pub fn load_request(decl: &ModelDecl, path: &Path) -> LoadRequest {
    LoadRequest {
        path: path.display().to_string(),
        name: Some(decl.name.clone()),
        ctx: decl.ctx,
        threads: decl.threads,
        devices: decl.devices.iter().map(ToString::to_string).collect(),
        split: decl.split.clone(),
        replace: true,
        cache_type_k: decl.cache_type_k,
        cache_type_v: decl.cache_type_v,
        gpu_layers: decl.gpu_layers,
    }
}

/// Loads the declared model `name` as the book's entry says (replacing a resident copy
/// atomically), keeping the book's state current (loading with progress, resident, or failed
/// with the reason) and forwarding progress to `progress`. When it does not fit, idle
/// on-demand models are evicted, least recently used first, and the load is tried again.
/// `fresh`: load it even if it is resident (a reload whose file or context changed); otherwise
/// a copy that became resident while this waited for the placement lock is taken as is.
pub async fn load_declared(
    state: &Arc<State>,
    name: &str,
    progress: UnboundedSender<Progress>,
    fresh: bool,
) -> Result<LoadReply, ErrorReply> {
    let result = load_declared_inner(state, name, progress, fresh).await;
    match &result {
        Ok(_) => state.declared.set_state(name, DeclaredState::Resident),
        Err(e) => {
            tracing::error!(model = %name, "declared model failed to load: {}", e.message);
            state.declared.set_state(
                name,
                DeclaredState::Failed {
                    reason: e.message.clone(),
                },
            );
        }
    }
    state.changed.notify_one();
    result
}

async fn load_declared_inner(
    state: &Arc<State>,
    name: &str,
    progress: UnboundedSender<Progress>,
    fresh: bool,
) -> Result<LoadReply, ErrorReply> {
    let mut evicted = 0;
    loop {
        let entry = state.declared.get(name).ok_or_else(|| {
            ErrorReply::new(
                ErrorCode::NotFound,
                format!("model {name:?} is no longer declared in the configuration"),
            )
        })?;
        let req = load_request(&entry.decl, &entry.path);
        let template = entry.decl.chat_template.clone();
        let path = entry.path.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let prepared = prepare_load(&path)?;
            match template {
                Some(t) => prepared.with_chat_template(&t),
                None => Ok(prepared),
            }
        })
        .await
        .map_err(|e| {
            ErrorReply::new(ErrorCode::Internal, format!("the load task failed: {e}"))
        })??;
        let placement = state
            .placement(format!("loading declared model {name:?}"))
            .await?;
        // Another request may have loaded it while this one waited for the lock.
        if !fresh {
            if let Some(model) = state.models().get(name).cloned() {
                drop(placement);
                return Ok(reply_for_resident(&model));
            }
        }
        state
            .declared
            .set_state(name, DeclaredState::Loading { done: 0, total: 0 });
        state.changed.notify_one();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let book_progress = {
            let state = Arc::clone(state);
            let name = name.to_owned();
            let progress = progress.clone();
            async move {
                while let Some(p) = rx.recv().await {
                    state.declared.set_state(
                        &name,
                        DeclaredState::Loading {
                            done: p.done,
                            total: p.total,
                        },
                    );
                    state.changed.notify_one();
                    let _ = progress.send(p);
                }
            }
        };
        let (result, ()) = tokio::join!(
            place(state, req, name.to_owned(), prepared, placement, tx),
            book_progress
        );
        match result {
            Err(e) if e.code == ErrorCode::DoesNotFit && evicted < MAX_EVICTIONS_PER_LOAD => {
                if !evict_lru(state, name).await? {
                    return Err(e);
                }
                evicted += 1;
            }
            other => return other,
        }
    }
}

/// A load reply describing a model already resident (a request that found it loaded by
/// another while it waited).
fn reply_for_resident(model: &ResidentModel) -> LoadReply {
    let (cache_type_k, cache_type_v) = model.cache_types();
    LoadReply {
        name: model.name.clone(),
        path: model.path.display().to_string(),
        architecture: model.architecture.clone(),
        n_layer: model.config.n_layer as u32,
        ctx: model.ctx(),
        placement: model.placement(),
        load_secs: 0.0,
        bytes_loaded: 0,
        replaced: false,
        cache_type_k,
        cache_type_v,
    }
}

/// Unloads the least recently used idle on-demand model other than `for_name` (resident, no
/// request on it) to make room for `for_name`, and waits (bounded) for its memory to come back.
/// False when there is none.
async fn evict_lru(state: &Arc<State>, for_name: &str) -> Result<bool, ErrorReply> {
    let _placement = state
        .placement(format!("evicting an idle model for {for_name:?}"))
        .await?;
    let victim = {
        let registry = state.models();
        let mut candidates: Vec<_> = state
            .declared
            .snapshot()
            .into_iter()
            .filter(|e| {
                e.decl.name != for_name
                    && e.decl.load == LoadPolicy::OnDemand
                    && e.state == DeclaredState::Resident
                    && e.users == 0
                    && registry
                        .get(&e.decl.name)
                        .is_some_and(|m| m.running.load(std::sync::atomic::Ordering::SeqCst) == 0)
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
    let used_before = used_bytes(state);
    let Some(model) = state.models().remove(&name) else {
        return Ok(false);
    };
    let bytes = model.memory_bytes();
    drop(model);
    let note = format!(
        "evicted after {} s idle to make room for {for_name:?}",
        idle.as_secs()
    );
    tracing::info!(model = %name, freed_bytes = bytes, "{note}");
    state.declared.update(&name, |e| {
        e.state = DeclaredState::NotLoaded;
        e.note = Some(note);
    });
    state.changed.notify_one();
    wait_freed(state, used_before.saturating_sub(bytes)).await;
    Ok(true)
}

/// Bytes the ledgers hold on every device.
fn used_bytes(state: &State) -> u64 {
    state
        .device_infos()
        .iter()
        .map(|d| d.memory_used_bytes)
        .sum()
}

/// Waits until the ledgers hold at most `target` bytes, or [`EVICTION_WAIT`].
async fn wait_freed(state: &State, target: u64) {
    let start = Instant::now();
    while used_bytes(state) > target && start.elapsed() < EVICTION_WAIT {
        tokio::time::sleep(EVICTION_POLL).await;
    }
}
