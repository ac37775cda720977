//! Retained prefix caches give way to other work: a load (explicit, on demand, or from the
//! `[[models]]` reconciler) or a live re-split that would not fit because of them has the
//! resident models on the devices concerned drop their retained caches (a `Job::DropRetained`
//! to each worker, between two of its steps), then plans again. Retained caches are a cache:
//! they never make the daemon refuse what it could do without them.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ResidentModel;
use crate::engine::Job;

/// How long a reclaim waits for all the workers asked to answer: each answers between two
/// forward steps, so a busy worker answers within one step (a 512-token prefill chunk of a
/// large model on a CPU can take seconds). A worker that does not answer in time is passed over
/// (its caches stay; the plan then sees what was freed).
const RECLAIM_WAIT: Duration = Duration::from_secs(30);

/// Whether `model` holds anything (stages, or experts kept for them) on one of `devices`.
fn touches(model: &ResidentModel, devices: &[String]) -> bool {
    model.last_placement().iter().any(|s| {
        devices.contains(&s.device)
            || s.expert_device
                .as_ref()
                .is_some_and(|d| devices.contains(d))
    })
}

/// Asks every model of `models` holding memory on one of `devices` to drop its retained prefix
/// caches, and waits (at most [`RECLAIM_WAIT`] in all) for their answers; returns the bytes
/// freed (already returned to the devices' ledgers when this returns). Blocking: call it off
/// the async runtime, holding the placement lock.
pub(super) fn drop_retained_blocking(models: &[ResidentModel], devices: &[String]) -> u64 {
    let (tx, rx) = mpsc::channel();
    let mut asked = 0usize;
    for model in models.iter().filter(|m| touches(m, devices)) {
        if model.submit(Job::DropRetained(tx.clone())).is_ok() {
            asked += 1;
        }
    }
    drop(tx);
    let deadline = Instant::now() + RECLAIM_WAIT;
    let mut freed = 0u64;
    for _ in 0..asked {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => freed += bytes,
            // Every worker left answered or stopped (an unloaded model frees its caches anyway).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    "a model's worker did not drop its retained prefix caches within \
                     {RECLAIM_WAIT:?}; planning with what the others freed"
                );
                break;
            }
        }
    }
    if freed > 0 {
        tracing::info!(
            freed_bytes = freed,
            devices = ?devices,
            "dropped retained prefix caches to make room"
        );
    }
    freed
}
