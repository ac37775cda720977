//! Keep-alive: unloads declared models idle longer than their `keep_alive` (on-demand models;
//! start models keep `forever`). Idle means no request holds the model (`InUse`) and no
//! generation runs on it; the clock restarts at the start and end of every request. An unloaded
//! on-demand model loads again at its next request.

use std::time::Duration;

use llmd_shared::DeclaredState;

use super::Runtime;
use crate::config::KeepAlive;

/// How often the daemon looks for idle models (`Runtime::unload_idle`): the precision of a keep-alive (a few hundred
/// milliseconds late at most), cheap since it only reads the book.
pub const KEEP_ALIVE_TICK: Duration = Duration::from_millis(250);

/// How long the keep-alive waits for the placement lock before trying again at a later tick (a
/// load in progress must not stall it, nor it the load).
const LOCK_WAIT: Duration = Duration::from_millis(100);

impl Runtime {
    /// Unloads every declared model idle past its keep-alive (the daemon calls it every
    /// [`KEEP_ALIVE_TICK`]).
    pub async fn unload_idle(&self) {
        for (name, limit) in self.expired() {
            self.unload_if_idle(&name, limit).await;
        }
    }

    /// Resident declared models whose keep-alive ran out, with their limits.
    fn expired(&self) -> Vec<(String, Duration)> {
        self.declared
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
    async fn unload_if_idle(&self, name: &str, limit: Duration) {
        let Ok(Ok(_placement)) = tokio::time::timeout(
            LOCK_WAIT,
            self.placement(format!("unloading idle model {name:?}")),
        )
        .await
        else {
            return;
        };
        let removed = {
            let mut registry = self.models();
            let still_idle = self.declared.get(name).is_some_and(|e| {
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
        // The book says "not loaded" once the memory is free.
        super::release(model).await;
        self.declared.update(name, |e| {
            e.state = DeclaredState::NotLoaded;
            e.note = Some(note);
        });
        self.changed.notify_one();
    }
}
