//! `plan`: the dry run of a split plan, from the model file's header alone, against the
//! daemon's devices and their free memory. A plan that does not fit is a successful reply with
//! `fits: false`, the shortfall and a suggestion.

use std::path::Path;
use std::sync::Arc;

use llmd_shared::{ErrorCode, ErrorReply, PlanReply, PlanRequest};

use super::Context;
use crate::models::plan_blocking;

/// Plans the model.
pub async fn handle(req: PlanRequest, ctx: &Context) -> Result<PlanReply, ErrorReply> {
    if !Path::new(&req.path).is_absolute() {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("model path {:?} must be absolute", req.path),
        ));
    }
    let state = Arc::clone(&ctx.state);
    let devices = state.devices();
    tokio::task::spawn_blocking(move || plan_blocking(&req, &devices, &|d| state.device_memory(d)))
        .await
        .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("the plan task failed: {e}")))?
}
