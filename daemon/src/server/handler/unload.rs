//! `unload`: removes a model from the registry; its memory is freed once the generations still
//! running on it finish.

use llmd_shared::{ErrorReply, UnloadReply, UnloadRequest};

use super::Context;

/// Unregisters the model.
pub async fn handle(req: UnloadRequest, ctx: &Context) -> Result<UnloadReply, ErrorReply> {
    let model = ctx.state.runtime.unload(&req.name).await?;
    let freed_bytes = model.memory_bytes();
    // Its tokenizer and metadata go with the last reference (requests still running keep it);
    // the weights go on its worker thread, which trims the heap itself.
    drop(model);
    crate::host_memory::trim();
    Ok(UnloadReply {
        name: req.name,
        freed_bytes,
    })
}
