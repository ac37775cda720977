//! `unload`: removes a model from the registry; its memory is freed once the generations still
//! running on it finish.

use llmd_shared::{ErrorReply, UnloadReply, UnloadRequest};

use super::Context;

/// Unregisters the model.
pub async fn handle(req: UnloadRequest, ctx: &Context) -> Result<UnloadReply, ErrorReply> {
    let model = ctx.state.runtime.unload(&req.name).await?;
    Ok(UnloadReply {
        name: req.name,
        freed_bytes: model.memory_bytes(),
    })
}
