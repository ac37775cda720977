//! Running models: each loaded model gets a dedicated worker thread ([`worker`]) that owns its
//! pipeline; async request handlers talk to it through a [`ModelHandle`]. Inference never runs
//! inside an async task.

pub mod sampler;
pub mod select;
pub mod text;
pub mod worker;

use std::sync::mpsc;

pub use sampler::{Sampler, SamplingParams};
pub use worker::{
    BenchResult, GenEvent, GenerateJob, GenerationSummary, Job, ResplitFn, ResplitOutcome,
    StopReason, WorkerLimits,
};

use crate::model::Pipeline;

/// The channel to a model's worker thread. Dropping the handle closes the channel: the worker
/// finishes the generations it is running (or notices their clients are gone), frees the
/// pipeline and exits on its own, so dropping never blocks an async runtime thread.
pub struct ModelHandle {
    /// Sends jobs to the worker.
    jobs: mpsc::Sender<Job>,
}

/// The worker thread has exited (it panicked or the model was unloaded).
#[derive(Debug, thiserror::Error)]
#[error("the model's worker has stopped")]
pub struct WorkerGone;

impl ModelHandle {
    /// Starts a worker thread named `llmd-model-<name>` for `pipeline`.
    pub fn spawn(
        name: &str,
        pipeline: Pipeline,
        tokenizer: std::sync::Arc<crate::tokenizer::Tokenizer>,
        limits: WorkerLimits,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        // The thread is detached: it exits when the channel closes and its work is done.
        std::thread::Builder::new()
            .name(format!("llmd-model-{name}"))
            .spawn(move || worker::Worker::new(pipeline, tokenizer, limits, rx).run())?;
        Ok(ModelHandle { jobs: tx })
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) -> Result<(), WorkerGone> {
        self.jobs.send(job).map_err(|_| WorkerGone)
    }
}
