//! `resplit` (`llmctl reload NAME --split ..`): changes a loaded model's placement live. The new
//! plan is checked first (a plan that does not fit is refused and the old placement keeps
//! serving); the switch happens on the model's worker between two forward steps, so running
//! generations continue with the tokens they would have produced.

use std::sync::Arc;

use llmd_shared::{ErrorReply, ResplitReply, ResplitRequest};

use super::{model_named, Context};

/// Re-splits the model.
pub async fn handle(req: ResplitRequest, ctx: &Context) -> Result<ResplitReply, ErrorReply> {
    let state = Arc::clone(&ctx.state);
    // Loads, unloads and re-splits take turns, so the free memory the plan sees stays true.
    let _placement = state
        .placement(format!("re-splitting {:?}", req.name))
        .await?;
    let model = model_named(ctx, &req.name)?;
    let devices = state.devices();
    let memory_of = |d: &crate::state::Device| state.device_memory(d);
    let reply = model.resplit(&req, &devices, &memory_of).await?;
    state.changed.notify_one();
    tracing::info!(
        model = %req.name,
        secs = reply.secs,
        bytes_moved = reply.bytes_moved,
        layers_moved = reply.layers_moved,
        sequences = reply.sequences_moved,
        "model re-split"
    );
    Ok(reply)
}
