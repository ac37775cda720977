//! Retained prefix caches give way to other work: a load (explicit, on demand, or from the
//! `[[models]]` reconciler) or a live re-split that would not fit because of them has the
//! resident models on the devices concerned drop retained caches (a `Job::DropRetained` to each
//! worker, between two of its steps), least recently used first and only as many bytes as the
//! work lacks, then plans again. Retained caches are a cache: they never make the daemon refuse
//! what it could do without them.

use std::sync::atomic::Ordering;
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

/// The models to ask, in the order they are asked: those holding memory on one of `devices`
/// and retaining caches, idle ones (no generation running, so their caches are the least
/// likely to be hit soon) first, then those retaining more first (fewer models disturbed).
fn in_order(models: &[ResidentModel], devices: &[String]) -> Vec<ResidentModel> {
    let mut asked: Vec<(bool, std::cmp::Reverse<u64>, ResidentModel)> = models
        .iter()
        .filter(|m| touches(m, devices))
        .filter_map(|m| {
            let (bytes, _) = m.handle.prefix_retained();
            let busy = m.running.load(Ordering::Relaxed) > 0;
            (bytes > 0).then(|| (busy, std::cmp::Reverse(bytes), m.clone()))
        })
        .collect();
    asked.sort_by_key(|(busy, bytes, _)| (*busy, *bytes));
    asked.into_iter().map(|(_, _, m)| m).collect()
}

/// Asks the models of `models` holding memory on one of `devices`, one after the other (see
/// [`in_order`]), to drop their least recently used retained prefix caches until `wanted`
/// bytes are freed in all (`u64::MAX`: every retained cache), waiting at most
/// [`RECLAIM_WAIT`] in all for their answers; returns the bytes freed (already returned to the
/// devices' ledgers when this returns). Blocking: call it off the async runtime, holding the
/// placement lock.
pub(super) fn drop_retained_blocking(
    models: &[ResidentModel],
    devices: &[String],
    wanted: u64,
) -> u64 {
    let deadline = Instant::now() + RECLAIM_WAIT;
    let mut freed = 0u64;
    for model in in_order(models, devices) {
        if freed >= wanted {
            break;
        }
        let (tx, rx) = mpsc::channel();
        let job = Job::DropRetained {
            wanted: wanted - freed,
            reply: tx,
        };
        if model.submit(job).is_err() {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => freed = freed.saturating_add(bytes),
            // The worker stopped (an unloaded model frees its caches anyway).
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    model = %model.name,
                    "a model's worker did not drop its retained prefix caches within \
                     {RECLAIM_WAIT:?}; planning with what the others freed"
                );
                break;
            }
        }
    }
    if freed > 0 {
        tracing::info!(
            wanted_bytes = wanted,
            freed_bytes = freed,
            devices = ?devices,
            "dropped retained prefix caches to make room"
        );
    }
    freed
}
