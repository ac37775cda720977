//! The daemon's side of declared models (`[[models]]`): turns the configuration in force into
//! the runtime's load specifications and starts a reconciliation in the background (at start,
//! after READY, and after each reload), and drives the keep-alive clock.

use std::sync::Arc;

use crate::config::Config;
use crate::runtime::keep_alive::KEEP_ALIVE_TICK;
use crate::runtime::reconcile::Resolved;
use crate::runtime::LoadSpec;
use crate::server::wire;
use crate::state::State;

/// Each `[[models]]` entry of `config` with the load specification it makes: its file
/// resolved against `models_dir`, its devices, split, context, threads, cache types, GPU
/// layers and prefix cache budget.
pub fn resolved(config: &Config) -> Vec<Resolved> {
    let dir = config.models_dir();
    config
        .models
        .iter()
        .map(|d| {
            let spec = LoadSpec {
                path: d.resolved_path(dir),
                ctx: d.ctx,
                threads: d.threads,
                devices: d.devices.iter().map(ToString::to_string).collect(),
                split: d.split.clone(),
                kv_types: wire::requested_cache_types(d.cache_type_k, d.cache_type_v),
                gpu_layers: d.gpu_layers,
                n_cpu_moe: d.n_cpu_moe,
                prefix_cache_bytes: config.prefix_cache_bytes(Some(d)),
            };
            (d.clone(), spec)
        })
        .collect()
}

/// Reconciles the resident declared models with the configuration in force, in the
/// background (`Runtime::reconcile`).
pub fn spawn_reconcile(state: &Arc<State>) {
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let new = resolved(&state.config().config);
        state.runtime.reconcile(new).await;
    });
}

/// Unloads idle declared models every [`KEEP_ALIVE_TICK`] until aborted.
pub async fn keep_alive(state: Arc<State>) {
    let mut ticker = tokio::time::interval(KEEP_ALIVE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        state.runtime.unload_idle().await;
    }
}
