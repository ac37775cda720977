//! Running models: each loaded model gets a dedicated worker thread that owns its pipeline;
//! async request handlers talk to it through a [`ModelHandle`], which also reports whether the
//! worker failed ([`WorkerHealth`]). Prompts become tokens off the async runtime in
//! `runtime::prompt`. Inference never runs inside an async task.
//!
//! - [`job`]: what the worker is asked ([`Job`]) and answers ([`GenEvent`]), its limits.
//! - [`worker`]: the loop: jobs in, a forward step over the scheduler's batch, sampling.
//! - `scheduler`: admission (slots, context, KV cache, prefix reuse), cancelled and parked
//!   generations, the composition of each step's batch.
//! - `prefix`: the prefix cache's bookkeeping: which caches hold which prompt prefixes, and the
//!   finished sequences' caches retained within a budget, least recently used evicted first.
//! - `sequence`: one running generation: sampler, text, events on their way out.
//! - [`sampler`] (and [`select`], its top-k/top-p selection): the next token from logits;
//!   [`text`]: text released at complete characters with stop strings held back.

pub mod job;
mod prefix;
pub mod sampler;
mod scheduler;
/// Top-k and argmax over logits: the kernels crate's one copy, which the devices share.
pub use llmd_kernels::select;
mod sequence;
pub mod text;
pub mod worker;

use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};

pub use job::{
    BenchResult, GenEvent, GenerateJob, GenerationSummary, Job, ResplitFn, ResplitOutcome,
    StopReason, WorkerLimits,
};
pub use prefix::PrefixUsage;
pub use sampler::{Sampler, SamplingParams};

use crate::model::Pipeline;

/// Whether a model's worker still serves, and what its prefix cache retains: shared by the
/// worker, which records a failure (a contained panic) and publishes its retained caches, and
/// the handle through which requests, `status`, `list`, the metrics and `doctor` see them.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    /// Why the model failed, once it has.
    failure: Mutex<Option<String>>,
    /// Woken when the model fails, so the `STATUS=` line is refreshed.
    changed: Option<Arc<Notify>>,
    /// What the worker's prefix cache retains now (its scheduler publishes every change).
    prefix: Arc<PrefixUsage>,
}

impl WorkerHealth {
    /// Health that wakes `changed` when the model fails.
    pub fn new(changed: Option<Arc<Notify>>) -> Self {
        WorkerHealth {
            failure: Mutex::new(None),
            changed,
            prefix: Arc::default(),
        }
    }

    /// Where the worker publishes what its prefix cache retains.
    pub fn prefix(&self) -> Arc<PrefixUsage> {
        Arc::clone(&self.prefix)
    }

    /// Why the model failed, if it has.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that the model failed.
    pub fn set_failed(&self, why: String) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        if let Some(changed) = &self.changed {
            changed.notify_one();
        }
    }
}

/// The channel to a model's worker thread. Dropping the handle closes the channel: the worker
/// finishes the generations it is running (or notices their clients are gone), frees the
/// pipeline and exits on its own, so dropping never blocks an async runtime thread.
pub struct ModelHandle {
    /// Sends jobs to the worker.
    jobs: mpsc::Sender<Job>,
    /// The worker's health.
    health: Arc<WorkerHealth>,
    /// Becomes `true` once the worker has exited and freed its pipeline.
    stopped: watch::Receiver<bool>,
}

/// Waits for a model's worker to exit (see [`ModelHandle::stopped`]).
pub struct WorkerStopped(watch::Receiver<bool>);

impl WorkerStopped {
    /// Waits at most `limit` for the worker to exit; whether it did (its pipeline, weights and
    /// caches are then back on the devices' ledgers).
    pub async fn wait(mut self, limit: Duration) -> bool {
        // A closed channel means the thread ended without saying so (it panicked): stopped too.
        tokio::time::timeout(limit, self.0.wait_for(|stopped| *stopped))
            .await
            .is_ok()
    }
}

/// The worker thread no longer takes jobs.
#[derive(Debug, thiserror::Error)]
pub enum WorkerGone {
    /// It failed (a step panicked) and the model must be reloaded.
    #[error("{0}")]
    Failed(String),
    /// It has stopped (the model was unloaded).
    #[error("the model's worker has stopped")]
    Stopped,
}

impl ModelHandle {
    /// Starts a worker thread named `llmd-model-<name>` for `pipeline`; a failure wakes
    /// `changed`.
    pub fn spawn(
        name: &str,
        pipeline: Pipeline,
        tokenizer: Arc<llmd_tokenizer::Tokenizer>,
        limits: WorkerLimits,
        changed: Option<Arc<Notify>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(WorkerHealth::new(changed));
        let worker_health = Arc::clone(&health);
        let (stopped_tx, stopped) = watch::channel(false);
        // The thread is detached: it exits when the channel closes and its work is done.
        std::thread::Builder::new()
            .name(format!("llmd-model-{name}"))
            .spawn(move || {
                worker::Worker::new(pipeline, tokenizer, limits, rx, worker_health).run();
                // The model's weights and caches are freed: give the heap's share back too.
                crate::host_memory::trim();
                stopped_tx.send_replace(true);
            })?;
        Ok(ModelHandle {
            jobs: tx,
            health,
            stopped,
        })
    }

    /// A wait for the worker's exit, which follows the drop of the last handle and the end of
    /// the generations it was running.
    pub fn stopped(&self) -> WorkerStopped {
        WorkerStopped(self.stopped.clone())
    }

    /// Queues a job; refused with the reason once the model has failed.
    pub fn submit(&self, job: Job) -> Result<(), WorkerGone> {
        if let Some(why) = self.health.failure() {
            return Err(WorkerGone::Failed(why));
        }
        self.jobs
            .send(job)
            .map_err(|_| match self.health.failure() {
                Some(why) => WorkerGone::Failed(why),
                None => WorkerGone::Stopped,
            })
    }

    /// Why the model failed, if it has.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Bytes of KV cache the model's prefix cache retains, and how many finished sequences
    /// hold them.
    pub fn prefix_retained(&self) -> (u64, u64) {
        self.health.prefix.get()
    }
}
