//! `resplit` (`llmctl reload NAME --split ..`): changes a loaded model's placement live. The new
//! plan is checked first (a plan that does not fit is refused and the old placement keeps
//! serving); the switch happens on the model's worker between two forward steps, so running
//! generations continue with the tokens they would have produced.
//!
//! A model whose worker failed (issue 14) has no pipeline left to move: for it, `reload` loads
//! the model again from its file onto its last placement (with the request's changes) and puts
//! it back under its name, which recovers it.

use std::path::Path;
use std::sync::Arc;

use llmd_shared::{ErrorCode, ErrorReply, PlanRequest, ResplitReply, ResplitRequest};

use super::load::place;
use super::{model_named, Context};
use crate::models::{plan_blocking, prepare_load};
use crate::state::{PlacementGuard, ResidentModel};

/// Re-splits the model.
pub async fn handle(req: ResplitRequest, ctx: &Context) -> Result<ResplitReply, ErrorReply> {
    let state = Arc::clone(&ctx.state);
    // Loads, unloads and re-splits take turns, so the free memory the plan sees stays true.
    let placement = state
        .placement(format!("re-splitting {:?}", req.name))
        .await?;
    let model = model_named(ctx, &req.name)?;
    if model.failure().is_some() {
        return recover(&req, model, placement, ctx).await;
    }
    let devices = state.devices();
    let memory_of = |d: &crate::state::Device| state.device_memory(d);
    let reply = model.resplit(&req, &devices, &memory_of).await?;
    drop(placement);
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

/// Loads the failed `model` again from its file, as [`LoadedModel::reload_request`] says, and
/// registers it in its place.
///
/// [`LoadedModel::reload_request`]: crate::models::LoadedModel::reload_request
async fn recover(
    req: &ResplitRequest,
    model: ResidentModel,
    placement: PlacementGuard,
    ctx: &Context,
) -> Result<ResplitReply, ErrorReply> {
    let load = model.reload_request(req);
    tracing::info!(model = %req.name, path = %load.path, "reloading a failed model from its file");
    let state = Arc::clone(&ctx.state);
    let plan_request = PlanRequest {
        path: load.path.clone(),
        devices: load.devices.clone(),
        split: load.split.clone(),
        gpu_layers: None,
        ctx: load.ctx,
        cache_type_k: load.cache_type_k,
        cache_type_v: load.cache_type_v,
        n_cpu_moe: load.n_cpu_moe,
    };
    let path = load.path.clone();
    let blocking = tokio::task::spawn_blocking(move || {
        let plan = plan_blocking(&plan_request, &state.devices(), &|d| state.device_memory(d))?;
        let prepared = prepare_load(Path::new(&path))?;
        Ok::<_, ErrorReply>((plan, prepared))
    });
    let (plan, prepared) = blocking.await.map_err(|e| {
        ErrorReply::new(ErrorCode::Internal, format!("the reload task failed: {e}"))
    })??;
    let loaded = place(load, req.name.clone(), prepared, placement, ctx).await?;
    Ok(ResplitReply {
        name: loaded.name,
        ctx: loaded.ctx,
        plan: Box::new(plan),
        placement: loaded.placement,
        secs: loaded.load_secs,
        bytes_moved: loaded.bytes_loaded,
        layers_moved: loaded.n_layer,
        sequences_moved: 0,
    })
}
