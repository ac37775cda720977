//! `unload`: removes a model from the registry; its memory is freed once the generations still
//! running on it finish. An idle model's memory is back on the devices' ledgers when the reply
//! goes out (within [`IDLE_FREE_WAIT`]), so a `status` or a load right after sees it free.

use std::sync::atomic::Ordering;
use std::time::Duration;

use llmd_shared::{ErrorReply, UnloadReply, UnloadRequest};

use super::Context;

/// How long the reply waits for an idle model's worker to free its pipeline (normally
/// milliseconds; a bound, so a wedged worker cannot hold the client).
const IDLE_FREE_WAIT: Duration = Duration::from_secs(10);

/// Unregisters the model.
pub async fn handle(req: UnloadRequest, ctx: &Context) -> Result<UnloadReply, ErrorReply> {
    let model = ctx.state.runtime.unload(&req.name).await?;
    let freed_bytes = model.memory_bytes();
    let idle = model.running.load(Ordering::SeqCst) == 0;
    let stopped = model.handle.stopped();
    // Its tokenizer and metadata go with the last reference (requests still running keep it);
    // the weights go on its worker thread, which trims the heap itself.
    drop(model);
    crate::host_memory::trim();
    if idle && !stopped.wait(IDLE_FREE_WAIT).await {
        tracing::warn!(
            model = %req.name,
            "the unloaded model's worker had not freed its memory after {IDLE_FREE_WAIT:?}"
        );
    }
    Ok(UnloadReply {
        name: req.name,
        freed_bytes,
    })
}
