//! `load`: makes a model resident (or replaces one atomically), reporting progress per stage.

use std::path::Path;
use std::sync::Arc;

use llmd_shared::{ErrorCode, ErrorReply, Event, LoadReply, LoadRequest, Progress};

use super::Context;
use crate::models::{default_name, load_blocking};

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
    let _placement = state.placement_lock.lock().await;
    if !req.replace && state.models().get(&name).is_some() {
        return Err(ErrorReply::new(
            ErrorCode::AlreadyExists,
            format!("a model named {name:?} is already loaded (unload it, or load with --replace)"),
        ));
    }
    let devices = state.devices();
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let state = Arc::clone(&state);
        let req = req.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || {
            load_blocking(
                &req,
                name,
                &devices,
                &|d| state.device_memory(d),
                |done, total| {
                    let _ = progress_tx.send((done, total));
                },
            )
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
    let (model, load_secs, bytes_loaded) = task.await.map_err(|e| {
        ErrorReply::new(ErrorCode::Internal, format!("the load task failed: {e}"))
    })??;
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
