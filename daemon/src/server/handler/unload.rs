//! `unload`: removes a model from the registry; its memory is freed once the generations still
//! running on it finish. An idle model's memory is back on the devices' ledgers when the reply
//! goes out, so a `status` or a load right after sees it free.

use llmd_shared::{ErrorReply, UnloadReply, UnloadRequest};

use super::Context;

/// Unregisters the model.
pub async fn handle(req: UnloadRequest, ctx: &Context) -> Result<UnloadReply, ErrorReply> {
    // The weights go on the model's worker thread, which trims the heap itself; its tokenizer
    // and metadata with the last reference (requests still running keep it).
    let freed_bytes = ctx.state.runtime.unload(&req.name).await?;
    crate::host_memory::trim();
    Ok(UnloadReply {
        name: req.name,
        freed_bytes,
    })
}
