//! `list`: resident models with their placement (layers and bytes per device).

use llmd_shared::{ErrorReply, ListReply, ListRequest};

use super::Context;

/// Lists the models, refreshing each one's placement from its worker.
pub async fn handle(_req: ListRequest, ctx: &Context) -> Result<ListReply, ErrorReply> {
    let models = ctx.state.models().all();
    let mut out = Vec::with_capacity(models.len());
    for m in models {
        m.refresh_placement().await;
        out.push(m.details());
    }
    Ok(ListReply { models: out })
}
