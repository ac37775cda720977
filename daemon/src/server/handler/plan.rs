//! `plan`: the dry run of a split plan, from the model file's header alone, against the
//! daemon's devices and their free memory. A plan that does not fit is a successful reply with
//! `fits: false`, the shortfall and a suggestion.

use std::path::Path;
use std::sync::Arc;

use llmd_shared::{ErrorCode, ErrorReply, PlanReply, PlanRequest};

use super::Context;
use crate::runtime::{plan_blocking, PlanSpec};
use crate::server::wire;

/// Plans the model.
pub async fn handle(req: PlanRequest, ctx: &Context) -> Result<PlanReply, ErrorReply> {
    if !Path::new(&req.path).is_absolute() {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("model path {:?} must be absolute", req.path),
        ));
    }
    let spec = PlanSpec {
        path: req.path.into(),
        devices: req.devices,
        split: req.split,
        gpu_layers: req.gpu_layers,
        ctx: req.ctx,
        kv_types: wire::requested_cache_types(req.cache_type_k, req.cache_type_v),
        n_cpu_moe: req.n_cpu_moe,
    };
    let state = Arc::clone(&ctx.state);
    let devices = state.devices();
    let planned = tokio::task::spawn_blocking(move || {
        plan_blocking(&spec, &devices, &|d| state.runtime.device_memory(d))
    })
    .await
    .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("the plan task failed: {e}")))??;
    Ok(wire::plan_reply(&planned))
}
