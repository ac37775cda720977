//! The memory request frames may hold across all connections.
//!
//! One frame may announce up to `MAX_FRAME_BYTES` (16 MiB), and the daemon holds a frame's bytes
//! until its request is answered (the decoded request keeps its text). Without a shared limit,
//! 200 connections each half-sending a 16 MiB frame made the daemon hold 1.6 GiB (issue 14).
//! So a frame larger than [`FREE_FRAME_BYTES`] first reserves its length from a budget of
//! [`MAX_FRAME_BYTES_IN_FLIGHT`] bytes, waiting at most [`RESERVE_WAIT`]; its bytes are read
//! only then. Small frames (every request but long prompts) need no reservation: at most
//! `MAX_CONNECTIONS` of them fit in `MAX_CONNECTIONS * FREE_FRAME_BYTES` (32 MiB).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames up to this size need no reservation.
pub const FREE_FRAME_BYTES: usize = 64 * 1024;

/// Bytes all reserved frames may hold together: four frames of the largest size.
pub const MAX_FRAME_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// How long a large frame waits for room in the budget before its request is refused `busy`.
pub const RESERVE_WAIT: Duration = Duration::from_secs(5);

/// The budget of bytes large frames may hold.
#[derive(Debug)]
pub struct FrameBudget {
    /// One permit per byte.
    bytes: Arc<Semaphore>,
}

impl Default for FrameBudget {
    fn default() -> Self {
        FrameBudget {
            bytes: Arc::new(Semaphore::new(MAX_FRAME_BYTES_IN_FLIGHT)),
        }
    }
}

/// Bytes reserved for one frame and its request; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    /// The reserved bytes (`None` for a frame small enough to need none).
    _permit: Option<OwnedSemaphorePermit>,
}

impl FrameBudget {
    /// Reserves room for a frame of `len` bytes, waiting at most [`RESERVE_WAIT`]; `None` when
    /// there is still no room then. Frames up to [`FREE_FRAME_BYTES`] get an empty reservation
    /// at once. Cancel-safe.
    pub async fn reserve(&self, len: usize) -> Option<Reservation> {
        if len <= FREE_FRAME_BYTES {
            return Some(Reservation { _permit: None });
        }
        let n = u32::try_from(len.min(MAX_FRAME_BYTES_IN_FLIGHT)).ok()?;
        let acquire = Arc::clone(&self.bytes).acquire_many_owned(n);
        match tokio::time::timeout(RESERVE_WAIT, acquire).await {
            Ok(Ok(permit)) => Some(Reservation {
                _permit: Some(permit),
            }),
            _ => None,
        }
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn large_frames_share_the_budget_and_small_ones_pass() {
        let budget = FrameBudget::default();
        let big = 16 << 20;
        let held: Vec<Reservation> = reserve_n(&budget, big, 4).await;
        assert_eq!(budget.available(), 0);
        // A fifth large frame waits, then gives up.
        assert!(budget.reserve(big).await.is_none());
        // A small one passes at once.
        assert!(budget.reserve(FREE_FRAME_BYTES).await.is_some());
        drop(held);
        assert_eq!(budget.available(), MAX_FRAME_BYTES_IN_FLIGHT);
        assert!(budget.reserve(big).await.is_some());
    }

    async fn reserve_n(budget: &FrameBudget, len: usize, n: usize) -> Vec<Reservation> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(budget.reserve(len).await.expect("room"));
        }
        out
    }
}
