//! Running models: each loaded model gets a dedicated worker thread ([`worker`]) that owns its
//! pipeline; async request handlers talk to it through a [`ModelHandle`]. Inference never runs
//! inside an async task.

pub mod sampler;
pub mod text;
pub mod worker;

use std::sync::mpsc;
use std::thread::JoinHandle;

pub use sampler::{Sampler, SamplingParams};
pub use worker::{
    BenchResult, GenEvent, GenerateJob, GenerationSummary, Job, ResplitFn, ResplitOutcome,
    StopReason, WorkerLimits,
};

use crate::model::Pipeline;

/// The channel to a model's worker thread.
pub struct ModelHandle {
    /// Sends jobs to the worker; dropping it lets the worker finish and exit.
    jobs: Option<mpsc::Sender<Job>>,
    /// The worker thread, joined on drop.
    thread: Option<JoinHandle<()>>,
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
        let thread = std::thread::Builder::new()
            .name(format!("llmd-model-{name}"))
            .spawn(move || worker::Worker::new(pipeline, tokenizer, limits, rx).run())?;
        Ok(ModelHandle {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) -> Result<(), WorkerGone> {
        self.jobs
            .as_ref()
            .ok_or(WorkerGone)?
            .send(job)
            .map_err(|_| WorkerGone)
    }
}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        // Closing the channel ends the worker once its running generations finish or notice
        // that their clients are gone.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            // Joining could block an async runtime thread; let the worker exit on its own.
            drop(t);
        }
    }
}
