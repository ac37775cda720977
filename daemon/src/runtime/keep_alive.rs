//! Keep-alive: unloads declared models idle longer than their `keep_alive` (on-demand models;
//! start models keep `forever`). Idle means no request holds the model (`InUse`) and no
//! generation runs on it; the clock restarts at the start and end of every request. An unloaded
//! on-demand model loads again at its next request.

use std::sync::Arc;
use std::time::Duration;

use llmd_shared::DeclaredState;

use crate::config::KeepAlive;
use crate::state::State;

/// How often idle models are looked for: the precision of a keep-alive (a few hundred
/// milliseconds late at most), cheap since it only reads the book.
pub const KEEP_ALIVE_TICK: Duration = Duration::from_millis(250);

/// How long the keep-alive waits for the placement lock before trying again at a later tick (a
/// load in progress must not stall it, nor it the load).
const LOCK_WAIT: Duration = Duration::from_millis(100);

/// Runs until the daemon stops.
pub async fn run(state: Arc<State>) {
    let mut ticker = tokio::time::interval(KEEP_ALIVE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (name, limit) in expired(&state) {
            unload_idle(&state, &name, limit).await;
        }
    }
}

/// Resident declared models whose keep-alive ran out, with their limits.
fn expired(state: &State) -> Vec<(String, Duration)> {
    state
        .declared
        .snapshot()
        .into_iter()
        .filter_map(|e| match e.decl.keep_alive() {
            KeepAlive::After(limit)
                if e.state == DeclaredState::Resident
                    && e.users == 0
                    && e.last_used.elapsed() >= limit =>
            {
                Some((e.decl.name, limit))
            }
            _ => None,
        })
        .collect()
}

/// Unloads `name` if it is still idle past `limit`, under the placement lock.
async fn unload_idle(state: &Arc<State>, name: &str, limit: Duration) {
    let Ok(Ok(_placement)) = tokio::time::timeout(
        LOCK_WAIT,
        state.placement(format!("unloading idle model {name:?}")),
    )
    .await
    else {
        return;
    };
    let removed = {
        let mut registry = state.models();
        let still_idle = state.declared.get(name).is_some_and(|e| {
            e.state == DeclaredState::Resident && e.users == 0 && e.last_used.elapsed() >= limit
        });
        let running = registry
            .get(name)
            .is_some_and(|m| m.running.load(std::sync::atomic::Ordering::SeqCst) > 0);
        if still_idle && !running {
            registry.remove(name)
        } else {
            None
        }
    };
    let Some(model) = removed else { return };
    let note = format!(
        "unloaded after {} s without requests (keep_alive)",
        limit.as_secs_f64()
    );
    tracing::info!(model = %name, freed_bytes = model.memory_bytes(), "{note}");
    state.declared.update(name, |e| {
        e.state = DeclaredState::NotLoaded;
        e.note = Some(note);
    });
    state.changed.notify_one();
}
