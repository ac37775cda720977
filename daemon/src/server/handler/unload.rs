//! `unload`: removes a model from the registry; its memory is freed once the generations still
//! running on it finish.

use llmd_shared::{ErrorCode, ErrorReply, UnloadReply, UnloadRequest};

use super::Context;

/// Unregisters the model.
pub async fn handle(req: UnloadRequest, ctx: &Context) -> Result<UnloadReply, ErrorReply> {
    let _placement = ctx
        .state
        .placement(format!("unloading {:?}", req.name))
        .await?;
    let model = ctx.state.models().remove(&req.name).ok_or_else(|| {
        ErrorReply::new(
            ErrorCode::NotFound,
            format!("no model named {:?} is loaded", req.name),
        )
    })?;
    ctx.state.changed.notify_one();
    let freed_bytes = model.memory_bytes();
    tracing::info!(model = %req.name, freed_bytes, "model unloaded");
    // Its tokenizer and metadata go with the last reference (requests still running keep it);
    // the weights go on its worker thread, which trims the heap itself.
    drop(model);
    crate::host_memory::trim();
    Ok(UnloadReply {
        name: req.name,
        freed_bytes,
    })
}
