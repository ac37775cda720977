//! Shutdown signalling between the accept loop and the connection tasks (mini-redis style).
//!
//! The server holds a [`ShutdownTrigger`]; every connection task holds a [`Shutdown`] (to learn
//! that it must stop) and a [`ShutdownGuard`] (dropped when it has stopped). The server fires the
//! trigger, then waits, bounded in time, until every guard is gone.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Fires shutdown and waits for the tasks to finish.
pub struct ShutdownTrigger {
    /// Broadcasts `true` once shutdown has begun.
    notify: watch::Sender<bool>,
    /// Cloned into every [`ShutdownGuard`]; never sent on, only dropped.
    done_tx: mpsc::Sender<()>,
    /// Yields `None` once every guard (and our sender) has been dropped.
    done_rx: mpsc::Receiver<()>,
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownTrigger {
    /// A trigger that has not fired.
    pub fn new() -> Self {
        let (notify, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        ShutdownTrigger {
            notify,
            done_tx,
            done_rx,
        }
    }

    /// A listener and a guard for one new task.
    pub fn subscribe(&self) -> (Shutdown, ShutdownGuard) {
        (
            Shutdown {
                rx: self.notify.subscribe(),
            },
            ShutdownGuard {
                _tx: self.done_tx.clone(),
            },
        )
    }

    /// Tells every task to stop, then waits at most `grace` for all of them to finish. Returns
    /// true if they all finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let ShutdownTrigger {
            notify,
            done_tx,
            mut done_rx,
        } = self;
        notify.send_replace(true);
        drop(done_tx);
        tokio::time::timeout(grace, done_rx.recv()).await.is_ok()
    }
}

/// A task's view of the shutdown signal.
#[derive(Clone)]
pub struct Shutdown {
    /// `true` once shutdown has begun.
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// True once shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once shutdown has begun (at once if it already has). Cancel-safe.
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.rx.wait_for(|&down| down).await;
    }
}

/// Held by a task while it runs; dropping it tells the server the task is done.
pub struct ShutdownGuard {
    /// Only its drop matters.
    _tx: mpsc::Sender<()>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_guards_and_bounds_the_wait() {
        let trigger = ShutdownTrigger::new();
        let (mut shutdown, guard) = trigger.subscribe();
        let task = tokio::spawn(async move {
            shutdown.recv().await;
            drop(guard);
        });
        assert!(trigger.shutdown(Duration::from_secs(5)).await);
        task.await.unwrap();

        let trigger = ShutdownTrigger::new();
        let (_shutdown, _stuck_guard) = trigger.subscribe();
        let start = std::time::Instant::now();
        assert!(!trigger.shutdown(Duration::from_millis(50)).await);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
