//! `load`: makes a model resident (or replaces one atomically), reporting progress per stage.
//!
//! The file is opened and its header read (`prepare_load`) before the placement lock is taken,
//! so a slow or stalled file holds up only its own load; the wait for the lock is bounded
//! (`State::placement`), and the lock then moves with the load to its thread, so a client that
//! hangs up cannot release it while the load still allocates.

use std::path::Path;
use std::sync::Arc;

use llmd_shared::{ErrorCode, ErrorReply, LoadReply, LoadRequest};

use super::{with_progress, Context};
use crate::models::{default_name, prepare_load, PreparedLoad};
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

/// Loads a prepared model under the placement lock held by `placement` (`runtime::place`),
/// forwarding its progress to the client, and registers it under `name`.
pub(super) async fn place(
    req: LoadRequest,
    name: String,
    prepared: PreparedLoad,
    placement: PlacementGuard,
    ctx: &Context,
) -> Result<LoadReply, ErrorReply> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let load = crate::runtime::place(&ctx.state, req, name, prepared, placement, tx);
    with_progress(ctx, rx, load).await
}
