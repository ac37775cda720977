//! `load`: makes a model resident (or replaces one atomically) through
//! [`Runtime::load`](crate::runtime::Runtime::load), reporting progress per stage as events.

use llmd_shared::{ErrorReply, Event, LoadReply, LoadRequest, Progress};

use super::Context;
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
    };
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let load = ctx.state.runtime.load(
        spec,
        req.name,
        req.replace,
        ctx.state.devices(),
        progress_tx,
    );
    tokio::pin!(load);
    // Progress is forwarded while the load runs; the sender drops with the load, so the
    // events still queued are sent before the reply.
    let loaded = loop {
        tokio::select! {
            Some((done, total)) = progress_rx.recv() => send_progress(ctx, done, total).await?,
            loaded = &mut load => break loaded?,
        }
    };
    while let Ok((done, total)) = progress_rx.try_recv() {
        send_progress(ctx, done, total).await?;
    }
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

/// Tells the client `done` of `total` stages are loaded.
async fn send_progress(ctx: &Context, done: usize, total: usize) -> Result<(), ErrorReply> {
    ctx.event(Event::Progress(Progress {
        done: done as u64,
        total: total as u64,
        what: "layers".into(),
    }))
    .await
}
