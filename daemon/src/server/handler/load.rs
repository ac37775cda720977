//! `load`: makes a model resident (or replaces one atomically) through
//! [`Runtime::load`](crate::runtime::Runtime::load), reporting progress per stage as events.

use llmd_shared::{ErrorReply, LoadReply, LoadRequest};

use super::{with_progress, Context};
use crate::runtime::LoadSpec;
use crate::server::wire;

/// Loads the model and registers it.
pub async fn handle(req: LoadRequest, ctx: &Context) -> Result<LoadReply, ErrorReply> {
    let spec = LoadSpec {
        path: req.path.clone().into(),
        ctx: req.ctx,
        threads: req.threads,
        devices: req.devices,
        split: req.split,
        kv_types: wire::requested_cache_types(req.cache_type_k, req.cache_type_v),
        gpu_layers: req.gpu_layers,
        n_cpu_moe: req.n_cpu_moe,
        prefix_cache_bytes: ctx.state.config().config.prefix_cache_bytes(None),
    };
    let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let load = async {
        ctx.state
            .runtime
            .load(
                spec,
                req.name,
                req.replace,
                ctx.state.devices(),
                progress_tx,
            )
            .await
            .map_err(ErrorReply::from)
    };
    let loaded = with_progress(ctx, progress_rx, load).await?;
    let model = &loaded.model;
    let kv = model.kv_types();
    Ok(LoadReply {
        name: model.name.clone(),
        path: req.path,
        architecture: model.architecture.clone(),
        n_layer: model.config.n_layer as u32,
        ctx: model.ctx(),
        placement: wire::placement(model.placement()),
        load_secs: loaded.load_secs,
        bytes_loaded: loaded.bytes_loaded,
        replaced: loaded.replaced,
        cache_type_k: wire::wire_cache_type(kv.k),
        cache_type_v: wire::wire_cache_type(kv.v),
    })
}
