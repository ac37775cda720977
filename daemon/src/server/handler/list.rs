//! `list`: resident models with their placement (layers and bytes per device).

use llmd_shared::{ErrorReply, ListReply, ListRequest};

use super::Context;
use crate::server::wire;

/// Lists the models, refreshing each one's placement from its worker.
pub async fn handle(_req: ListRequest, ctx: &Context) -> Result<ListReply, ErrorReply> {
    let models = ctx.state.runtime.list().await;
    Ok(ListReply {
        models: models.iter().map(|m| wire::model_details(m)).collect(),
    })
}
