//! `load`: makes a model resident (or replaces one atomically), reporting progress per stage.
//!
//! The file is opened and its header read (`prepare_load`) before the placement lock is taken,
//! so a slow or stalled file holds up only its own load; the wait for the lock is bounded
//! (`State::placement`), and the lock then moves with the load to its thread, so a client that
//! hangs up cannot release it while the load still allocates.

use std::path::Path;
use std::sync::Arc;

use llmd_shared::{ErrorCode, ErrorReply, Event, LoadReply, LoadRequest, Progress};

use super::Context;
use crate::models::{default_name, load_blocking, prepare_load, PreparedLoad};
use crate::state::PlacementGuard;

/// Longest model name accepted.
const MAX_NAME_LEN: usize = 128;

/// Checks a model name: printable, no slashes or whitespace, not too long.
pub fn check_name(name: &str) -> Result<(), ErrorReply> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/');
    if ok {
        Ok(())
    } else {
        Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!(
                "invalid model name {name:?}: 1 to {MAX_NAME_LEN} characters, no spaces or slashes"
            ),
        ))
    }
}

/// Loads the model and registers it.
pub async fn handle(req: LoadRequest, ctx: &Context) -> Result<LoadReply, ErrorReply> {
    let path = Path::new(&req.path);
    if !path.is_absolute() {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("model path {:?} must be absolute", req.path),
        ));
    }
    let name = req.name.clone().unwrap_or_else(|| default_name(path));
    check_name(&name)?;
    let state = Arc::clone(&ctx.state);
    let prepared = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || prepare_load(&path))
            .await
            .map_err(|e| {
                ErrorReply::new(ErrorCode::Internal, format!("the load task failed: {e}"))
            })??
    };
    let placement = state.placement(format!("loading {name:?}")).await?;
    if !req.replace && state.models().get(&name).is_some() {
        return Err(ErrorReply::new(
            ErrorCode::AlreadyExists,
            format!("a model named {name:?} is already loaded (unload it, or load with --replace)"),
        ));
    }
    place(req, name, prepared, placement, ctx).await
}

/// Loads a prepared model under the placement lock held by `placement`, forwarding progress,
/// and registers it under `name` (replacing a model of that name). The lock goes to the load's
/// thread and comes back with its result, so it is held until the model is registered even if
/// the request is cancelled meanwhile.
pub(super) async fn place(
    req: LoadRequest,
    name: String,
    prepared: PreparedLoad,
    placement: PlacementGuard,
    ctx: &Context,
) -> Result<LoadReply, ErrorReply> {
    let state = Arc::clone(&ctx.state);
    let devices = state.devices();
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let state = Arc::clone(&state);
        let req = req.clone();
        let name = name.clone();
        let changed = Some(Arc::clone(&state.changed));
        tokio::task::spawn_blocking(move || {
            let loaded = load_blocking(
                &req,
                name,
                prepared,
                &devices,
                &|d| state.device_memory(d),
                changed,
                |done, total| {
                    let _ = progress_tx.send((done, total));
                },
            );
            (loaded, placement)
        })
    };
    while let Some((done, total)) = progress_rx.recv().await {
        ctx.event(Event::Progress(Progress {
            done: done as u64,
            total: total as u64,
            what: "layers".into(),
        }))
        .await?;
    }
    let (loaded, _placement) = task
        .await
        .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("the load task failed: {e}")))?;
    let (model, load_secs, bytes_loaded) = loaded?;
    let (cache_type_k, cache_type_v) = model.cache_types();
    let reply = LoadReply {
        name: name.clone(),
        path: req.path.clone(),
        architecture: model.architecture.clone(),
        n_layer: model.config.n_layer as u32,
        ctx: model.ctx(),
        placement: model.placement(),
        load_secs,
        bytes_loaded,
        replaced: false,
        cache_type_k,
        cache_type_v,
    };
    let old = state.models().replace(name.clone(), Arc::new(model));
    state.changed.notify_one();
    tracing::info!(model = %name, path = %req.path, load_secs, bytes_loaded, replaced = old.is_some(), "model loaded");
    Ok(LoadReply {
        replaced: old.is_some(),
        ..reply
    })
}
