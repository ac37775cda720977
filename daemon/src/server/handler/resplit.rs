//! `resplit` (`llmctl reload NAME --split ..`): changes a loaded model's placement live, or
//! reloads a failed model from its file ([`Runtime::resplit`](crate::runtime::Runtime::resplit)).

use llmd_shared::{ErrorReply, ResplitReply, ResplitRequest};

use super::Context;
use crate::runtime::ResplitSpec;
use crate::server::wire;

/// Re-splits the model.
pub async fn handle(req: ResplitRequest, ctx: &Context) -> Result<ResplitReply, ErrorReply> {
    let spec = ResplitSpec {
        devices: req.devices,
        split: req.split,
        ctx: req.ctx,
        n_cpu_moe: req.n_cpu_moe,
    };
    let done = ctx
        .state
        .runtime
        .resplit(&req.name, &spec, ctx.state.devices())
        .await?;
    Ok(ResplitReply {
        name: req.name,
        ctx: done.ctx,
        plan: Box::new(wire::plan_reply(&done.plan)),
        placement: wire::placement(done.placement),
        secs: done.secs,
        bytes_moved: done.bytes_moved,
        layers_moved: done.layers_moved,
        sequences_moved: done.sequences_moved,
    })
}
