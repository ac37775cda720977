//! The model worker: one dedicated thread per loaded model that owns its [`Pipeline`] and runs
//! every request for it. Requests arrive as [`Job`]s over a channel; between two forward steps
//! the worker admits new sequences, drops cancelled ones and applies re-splits, so running
//! generations are never interrupted mid-step. Concurrent generations are batched together:
//! each step carries one decode token per running sequence plus a prefill chunk.
//!
//! The worker never waits on a client. Each generation's events go out through its [`Outbox`]:
//! when the channel to the request handler is full (its client stopped reading), the events
//! queue in the outbox and the sequence is **parked** (left out of the batches) while the other
//! sequences keep their speed. A parked sequence is dropped after [`PARK_LIMIT`], or after
//! [`PARK_LIMIT_WHEN_WANTED`] when other requests wait for its slot.
//!
//! A panic in a step or a job is contained (issue 14): the worker fails every generation with
//! the panic's message, records it in its [`WorkerHealth`] (so `status`, `doctor` and the
//! `STATUS=` line show the model as failed and later requests are refused with the reason),
//! frees the pipeline and exits. A reload builds a new worker.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use super::sampler::{Sampler, SamplingParams};
use super::text::TextStream;
use super::WorkerHealth;
use crate::model::resplit::LiveSequence;
use crate::model::{Batch, Pipeline, SeqId};
use llmd_tokenizer::Tokenizer;

/// How long a generation whose client does not read its tokens stays parked before it is
/// dropped (its KV cache and slot freed). The connection itself gives up on such a client
/// after its write timeout (10 s); this bounds the worker's side on its own.
pub const PARK_LIMIT: Duration = Duration::from_secs(30);

/// How long a parked generation keeps its slot when other requests wait for one.
pub const PARK_LIMIT_WHEN_WANTED: Duration = Duration::from_secs(5);

/// How often the worker checks its parked generations when nothing else can run.
const PARK_POLL: Duration = Duration::from_millis(20);

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// The text reached a stop string.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context (KV cache) is full.
    ContextFull,
}

impl StopReason {
    /// The stable name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "eog",
            StopReason::StopString => "stop_string",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextFull => "context_full",
        }
    }
}

/// A generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateJob {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stops: Vec<String>,
}

/// What a generation reports, in order: tokens, then one `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// A generated token and the text it released.
    Token {
        /// Token id.
        id: u32,
        /// Text released with it (may be empty while a character or stop string is pending).
        text: String,
    },
    /// The generation ended.
    Done(GenerationSummary),
    /// The generation failed.
    Failed(String),
}

/// Totals of a finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationSummary {
    /// Every generated token id.
    pub tokens: Vec<u32>,
    /// The generated text (without a stop string).
    pub text: String,
    /// Text released only at the end (an incomplete character turned into U+FFFD); already part
    /// of `text`, but not sent with any token.
    pub flushed: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// Result of a benchmark run.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// Prompt tokens processed.
    pub n_prompt: usize,
    /// Tokens generated.
    pub n_gen: usize,
    /// Prompt processing speed (tokens/s), as llama-bench's `pp`.
    pub pp_tokens_per_s: f64,
    /// Generation speed (tokens/s), as llama-bench's `tg`.
    pub tg_tokens_per_s: f64,
}

/// A job for the worker.
pub enum Job {
    /// Generate text; events go to `events` (closed receiver = cancelled).
    Generate(GenerateJob, Sender<GenEvent>),
    /// Measure prefill and decode speed on an empty context.
    Bench {
        /// Prompt tokens.
        n_prompt: usize,
        /// Generated tokens.
        n_gen: usize,
        /// Where the result goes.
        reply: tokio::sync::oneshot::Sender<Result<BenchResult, String>>,
    },
    /// Run a closure on the pipeline between two steps (re-split, inspection of placement).
    WithPipeline(Box<dyn FnOnce(&mut Pipeline) + Send>),
    /// Re-split between two steps: the closure gets the running sequences (whose KV caches must
    /// move with their layers) and says what it did.
    Resplit(ResplitFn),
}

/// A re-split run by the worker between two steps.
pub type ResplitFn = Box<dyn FnOnce(&mut Pipeline, &[LiveSequence]) -> ResplitOutcome + Send>;

/// What a re-split did to the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResplitOutcome {
    /// Nothing changed (refused, or restored after a failure).
    Unchanged,
    /// The new placement is in force; `n_ctx`, if set, is the context for sequences admitted
    /// from now on.
    Applied {
        /// New context length.
        n_ctx: Option<usize>,
    },
    /// The pipeline lost its stages; running generations fail with this message.
    Broken(String),
}

/// Limits of the worker.
#[derive(Clone, Copy, Debug)]
pub struct WorkerLimits {
    /// Context length (KV positions) per sequence at most.
    pub n_ctx: usize,
    /// Tokens per forward step at most (prefill chunk size).
    pub max_batch: usize,
    /// Sequences decoded together at most; further requests wait.
    pub max_sequences: usize,
    /// How long a generation whose client does not read stays parked ([`PARK_LIMIT`]).
    pub park_limit: Duration,
    /// The same while other requests wait for a slot ([`PARK_LIMIT_WHEN_WANTED`]).
    pub park_limit_when_wanted: Duration,
}

impl WorkerLimits {
    /// Limits with the default parking times.
    pub fn new(n_ctx: usize, max_batch: usize, max_sequences: usize) -> Self {
        WorkerLimits {
            n_ctx,
            max_batch,
            max_sequences,
            park_limit: PARK_LIMIT,
            park_limit_when_wanted: PARK_LIMIT_WHEN_WANTED,
        }
    }
}

/// The events of one generation on their way to its request handler, without ever waiting:
/// what the channel cannot take now queues here, in order.
struct Outbox {
    /// The channel to the handler (closed: the client went away).
    events: Sender<GenEvent>,
    /// Events the channel could not take yet, oldest first.
    backlog: VecDeque<GenEvent>,
    /// When the channel was first found full, while the backlog is not empty.
    stalled_since: Option<Instant>,
}

impl Outbox {
    fn new(events: Sender<GenEvent>) -> Self {
        Outbox {
            events,
            backlog: VecDeque::new(),
            stalled_since: None,
        }
    }

    /// Sends `event`, or queues it behind events still waiting.
    fn send(&mut self, event: GenEvent) {
        self.backlog.push_back(event);
        self.flush();
    }

    /// Moves queued events into the channel while it has room; returns true when none is left.
    fn flush(&mut self) -> bool {
        while let Some(event) = self.backlog.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return false;
                }
                // Nobody will read them: the sequence is dropped at the next step.
                Err(TrySendError::Closed(_)) => self.backlog.clear(),
            }
        }
        self.stalled_since = None;
        true
    }

    /// True while events wait for the client to read (the sequence is parked).
    fn stalled(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// How long the client has not been reading, if it is not.
    fn stalled_for(&self, now: Instant) -> Option<Duration> {
        self.stalled_since.map(|t| now.duration_since(t))
    }

    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

/// A running generation.
struct Sequence {
    id: SeqId,
    job: GenerateJob,
    /// Where its events go.
    out: Outbox,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Every token so far (prompt, then generated).
    history: Vec<u32>,
    /// Generated tokens.
    generated: Vec<u32>,
    sampler: Sampler,
    text: TextStream,
    /// KV capacity.
    capacity: usize,
    started: Instant,
    prefill_done: Option<Instant>,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.prefilled < self.job.prompt.len()
    }
}

/// The worker's state; [`Worker::run`] drives it.
pub struct Worker {
    pipeline: Pipeline,
    tokenizer: Arc<Tokenizer>,
    limits: WorkerLimits,
    jobs: Receiver<Job>,
    waiting: VecDeque<(GenerateJob, Sender<GenEvent>)>,
    running: Vec<Sequence>,
    /// Finished generations whose last events wait for their client to read them.
    draining: Vec<Outbox>,
    /// Where a failure is recorded for the handle (and `status`) to see.
    health: Arc<WorkerHealth>,
    next_seq: SeqId,
    /// Set when a failed re-split left the pipeline without stages: every generation fails
    /// with this message until a re-split succeeds or the model is unloaded.
    broken: Option<String>,
    batch: Batch,
    logits: Vec<f32>,
}

impl Worker {
    /// A worker for `pipeline` fed by `jobs`, recording a failure in `health`.
    pub fn new(
        pipeline: Pipeline,
        tokenizer: Arc<Tokenizer>,
        limits: WorkerLimits,
        jobs: Receiver<Job>,
        health: Arc<WorkerHealth>,
    ) -> Self {
        Worker {
            pipeline,
            tokenizer,
            limits,
            jobs,
            waiting: VecDeque::new(),
            running: Vec::new(),
            draining: Vec::new(),
            health,
            next_seq: 1,
            broken: None,
            batch: Batch::default(),
            logits: Vec::new(),
        }
    }

    /// Runs until every sender of the job channel is gone and no work is left, or until a
    /// panic fails the model (see the module documentation).
    pub fn run(mut self) {
        loop {
            let outcome = catch_unwind(AssertUnwindSafe(|| self.turn()));
            match outcome {
                Ok(true) => {}
                Ok(false) => return,
                Err(panic) => return self.fail(panic_message(panic.as_ref())),
            }
        }
    }

    /// One turn of the loop: take jobs, tend parked generations, admit, step. False when the
    /// job channel is closed and no work is left.
    fn turn(&mut self) -> bool {
        let runnable = self.running.iter().any(|s| !s.out.stalled());
        let next = if runnable {
            self.jobs.try_recv().ok()
        } else if !self.running.is_empty() || !self.draining.is_empty() || !self.waiting.is_empty()
        {
            // Only parked generations (or requests waiting for their slots): look again soon.
            match self.jobs.recv_timeout(PARK_POLL) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
            }
        } else {
            // Idle: block for work.
            match self.jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return false,
            }
        };
        if let Some(job) = next {
            self.accept(job);
            while let Ok(job) = self.jobs.try_recv() {
                self.accept(job);
            }
        }
        self.drop_cancelled();
        self.tend_parked();
        self.admit();
        if self.running.iter().any(|s| !s.out.stalled()) {
            self.step();
        }
        true
    }

    /// Records the failure, fails every generation with it, frees the pipeline and stops. Jobs
    /// still queued are dropped, so their requests see the channel close and report the
    /// failure recorded in `health`.
    fn fail(mut self, panic: String) {
        let message = format!("the model failed (a step panicked: {panic}); reload it");
        tracing::error!("{message}");
        self.health.set_failed(message.clone());
        let failed = || GenEvent::Failed(message.clone());
        for s in self.running.drain(..) {
            let _ = s.out.events.try_send(failed());
        }
        for (_, events) in self.waiting.drain(..) {
            let _ = events.try_send(failed());
        }
        self.draining.clear();
        // Dropping the stages returns their memory to the devices' ledgers; a second panic
        // while doing so must not take the thread down silently.
        let Worker { pipeline, .. } = self;
        if catch_unwind(AssertUnwindSafe(move || drop(pipeline))).is_err() {
            tracing::error!("freeing the failed model's pipeline panicked too");
        }
    }

    /// Delivers what parked generations' clients now read; drops a generation parked longer
    /// than its park limit ([`PARK_LIMIT`], or [`PARK_LIMIT_WHEN_WANTED`] while requests wait for
    /// a slot), and finished ones whose last events cannot be delivered in that time.
    fn tend_parked(&mut self) {
        let now = Instant::now();
        let limit = if self.waiting.is_empty() {
            self.limits.park_limit
        } else {
            self.limits.park_limit_when_wanted
        };
        let mut i = 0;
        while i < self.running.len() {
            let out = &mut self.running[i].out;
            if out.stalled() && !out.flush() && out.stalled_for(now).is_some_and(|t| t > limit) {
                let seq = self.running.swap_remove(i);
                self.pipeline.remove_sequence(seq.id);
                tracing::warn!(
                    seq = seq.id,
                    "generation dropped: its client read no tokens for {limit:?}"
                );
            } else {
                i += 1;
            }
        }
        let limit = self.limits.park_limit;
        self.draining
            .retain_mut(|out| !out.flush() && out.stalled_for(now).is_none_or(|t| t <= limit));
    }

    fn accept(&mut self, job: Job) {
        match job {
            Job::Generate(g, events) => self.waiting.push_back((g, events)),
            Job::Bench {
                n_prompt,
                n_gen,
                reply,
            } => {
                let _ = reply.send(self.bench(n_prompt, n_gen));
            }
            Job::WithPipeline(f) => f(&mut self.pipeline),
            Job::Resplit(f) => self.resplit(f),
        }
    }

    /// Runs a re-split with the running sequences' cache lengths and capacities.
    fn resplit(&mut self, f: ResplitFn) {
        let live: Vec<LiveSequence> = self
            .running
            .iter()
            .map(|s| LiveSequence {
                id: s.id,
                // A prefilling sequence has its first `prefilled` prompt tokens cached; a
                // decoding one everything but its last token, which the next step feeds.
                len: if s.prefilling() {
                    s.prefilled
                } else {
                    s.history.len().saturating_sub(1)
                },
                capacity: s.capacity,
            })
            .collect();
        match f(&mut self.pipeline, &live) {
            ResplitOutcome::Unchanged => {}
            ResplitOutcome::Applied { n_ctx } => {
                // A complete placement is in force again (it may heal a broken pipeline).
                self.broken = None;
                if let Some(n) = n_ctx {
                    self.limits.n_ctx = n.max(1);
                }
            }
            ResplitOutcome::Broken(msg) => {
                tracing::error!("{msg}");
                for mut s in self.running.drain(..) {
                    s.out.send(GenEvent::Failed(msg.clone()));
                    self.draining.push(s.out);
                }
                self.broken = Some(msg);
            }
        }
    }

    /// Frees sequences whose client went away (closed the event channel).
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].out.is_closed() {
                let seq = self.running.swap_remove(i);
                self.pipeline.remove_sequence(seq.id);
                tracing::info!(seq = seq.id, "generation cancelled by the client");
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|(_, events)| !events.is_closed());
    }

    /// Starts waiting generations while there is room.
    fn admit(&mut self) {
        while self.running.len() < self.limits.max_sequences {
            let Some((job, events)) = self.waiting.pop_front() else {
                break;
            };
            if let Some(msg) = &self.broken {
                let _ = events.try_send(GenEvent::Failed(msg.clone()));
                continue;
            }
            if job.prompt.is_empty() {
                let _ = events.try_send(GenEvent::Failed("the prompt is empty".into()));
                continue;
            }
            if job.prompt.len() >= self.limits.n_ctx {
                let _ = events.try_send(GenEvent::Failed(format!(
                    "the prompt has {} tokens; the context holds {}",
                    job.prompt.len(),
                    self.limits.n_ctx
                )));
                continue;
            }
            let capacity = (job.prompt.len() + job.max_tokens).min(self.limits.n_ctx);
            let id = self.next_seq;
            self.next_seq += 1;
            if let Err(e) = self.pipeline.add_sequence(id, capacity) {
                let _ = events.try_send(GenEvent::Failed(format!(
                    "cannot allocate the KV cache: {e}"
                )));
                continue;
            }
            self.running.push(Sequence {
                id,
                history: job.prompt.clone(),
                sampler: Sampler::new(job.sampling.clone()),
                text: TextStream::new(job.stops.clone()),
                job,
                out: Outbox::new(events),
                prefilled: 0,
                generated: Vec::new(),
                capacity,
                started: Instant::now(),
                prefill_done: None,
            });
        }
    }

    /// One forward step over every running sequence.
    fn step(&mut self) {
        self.batch.clear();
        let mut budget = self.limits.max_batch;
        // Decoding sequences first: one token each. Parked ones wait.
        for s in self
            .running
            .iter()
            .filter(|s| !s.prefilling() && !s.out.stalled())
        {
            if budget == 0 {
                break;
            }
            let pos = (s.history.len() - 1) as u32;
            if let Some(&last) = s.history.last() {
                self.batch.push(last, pos, s.id, true);
                budget -= 1;
            }
        }
        // Then prompt chunks with the remaining room.
        for s in self
            .running
            .iter_mut()
            .filter(|s| s.prefilling() && !s.out.stalled())
        {
            if budget == 0 {
                break;
            }
            let take = (s.job.prompt.len() - s.prefilled).min(budget);
            for i in s.prefilled..s.prefilled + take {
                let last = i + 1 == s.job.prompt.len();
                self.batch.push(s.job.prompt[i], i as u32, s.id, last);
            }
            s.prefilled += take;
            budget -= take;
        }
        if let Err(e) = self.pipeline.forward(&self.batch, &mut self.logits) {
            tracing::error!(error = %e, "forward pass failed");
            for mut s in self.running.drain(..) {
                self.pipeline.remove_sequence(s.id);
                s.out
                    .send(GenEvent::Failed(format!("forward pass failed: {e}")));
                self.draining.push(s.out);
            }
            return;
        }
        // Sample for every row that produced logits, in batch order.
        let n_vocab = self.pipeline.config().n_vocab;
        let rows: Vec<(usize, SeqId)> = (0..self.batch.len())
            .filter(|&t| self.batch.logits[t])
            .map(|t| self.batch.seqs[t])
            .enumerate()
            .collect();
        let mut finished = Vec::new();
        for (row, seq_id) in rows {
            let Some(idx) = self.running.iter().position(|s| s.id == seq_id) else {
                continue;
            };
            let logits = &self.logits[row * n_vocab..(row + 1) * n_vocab];
            if let Some(reason) = sample_one(&mut self.running[idx], &self.tokenizer, logits) {
                finished.push((seq_id, reason));
            }
        }
        for (seq_id, reason) in finished {
            if let Some(idx) = self.running.iter().position(|s| s.id == seq_id) {
                let mut s = self.running.swap_remove(idx);
                self.pipeline.remove_sequence(s.id);
                let tail = s.text.finish();
                let summary = summarize(&s, reason, tail);
                s.out.send(GenEvent::Done(summary));
                if s.out.stalled() {
                    self.draining.push(s.out);
                }
            }
        }
    }
}

/// Samples the next token of `s`; returns why it stopped, if it did.
fn sample_one(s: &mut Sequence, tokenizer: &Tokenizer, logits: &[f32]) -> Option<StopReason> {
    {
        if s.prefill_done.is_none() {
            s.prefill_done = Some(Instant::now());
        }
        let id = s.sampler.sample(logits, &s.history);
        if tokenizer.is_eog(id) {
            return Some(StopReason::EndOfGeneration);
        }
        s.generated.push(id);
        s.history.push(id);
        let pushed = s.text.push(tokenizer.token_to_piece(id, false));
        // Never waits: a client that does not read parks the sequence; one that is gone has
        // its sequence freed before the next step.
        s.out.send(GenEvent::Token {
            id,
            text: pushed.text,
        });
        if pushed.stopped {
            Some(StopReason::StopString)
        } else if s.generated.len() >= s.job.max_tokens {
            Some(StopReason::MaxTokens)
        } else if s.history.len() > s.capacity {
            Some(StopReason::ContextFull)
        } else {
            None
        }
    }
}

impl Worker {
    /// Prefill of `n_prompt` tokens in batches of the step limit (llama-bench's `pp` test), then
    /// `n_gen` single-token steps continuing the same sequence at positions `n_prompt..` (the
    /// `tg` test at a depth of `n_prompt`, as llama-bench's `-d` runs it: decode speed with a
    /// context to attend over, not on an empty cache), on a scratch sequence.
    fn bench(&mut self, n_prompt: usize, n_gen: usize) -> Result<BenchResult, String> {
        if let Some(msg) = &self.broken {
            return Err(msg.clone());
        }
        let n_vocab = self.pipeline.config().n_vocab as u32;
        let capacity = (n_prompt + n_gen).max(1);
        if capacity > self.limits.n_ctx {
            return Err(format!(
                "{capacity} tokens do not fit the context of {}",
                self.limits.n_ctx
            ));
        }
        let id = self.next_seq;
        self.next_seq += 1;
        // Pseudo-random but valid token ids, as llama-bench uses.
        let token = |i: usize| ((i as u64 * 2_654_435_761) % n_vocab as u64) as u32;
        let mut run = || -> Result<(f64, f64), String> {
            self.pipeline
                .add_sequence(id, capacity)
                .map_err(|e| e.to_string())?;
            let mut pp = 0.0;
            if n_prompt > 0 {
                let start = Instant::now();
                let mut done = 0;
                while done < n_prompt {
                    let take = (n_prompt - done).min(self.limits.max_batch);
                    self.batch.clear();
                    for i in done..done + take {
                        self.batch.push(token(i), i as u32, id, i + 1 == n_prompt);
                    }
                    self.pipeline
                        .forward(&self.batch, &mut self.logits)
                        .map_err(|e| e.to_string())?;
                    done += take;
                }
                pp = n_prompt as f64 / start.elapsed().as_secs_f64();
            }
            let mut tg = 0.0;
            if n_gen > 0 {
                let start = Instant::now();
                for i in n_prompt..n_prompt + n_gen {
                    self.batch.clear();
                    self.batch.push(token(i), i as u32, id, true);
                    self.pipeline
                        .forward(&self.batch, &mut self.logits)
                        .map_err(|e| e.to_string())?;
                }
                tg = n_gen as f64 / start.elapsed().as_secs_f64();
            }
            Ok((pp, tg))
        };
        let result = run();
        self.pipeline.remove_sequence(id);
        let (pp, tg) = result?;
        Ok(BenchResult {
            n_prompt,
            n_gen,
            pp_tokens_per_s: pp,
            tg_tokens_per_s: tg,
        })
    }
}

/// The text of a panic's payload (a `&str` or `String` for `panic!` with a message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn summarize(s: &Sequence, reason: StopReason, flushed: String) -> GenerationSummary {
    let now = Instant::now();
    let prefill_end = s.prefill_done.unwrap_or(now);
    let prefill_s = prefill_end.duration_since(s.started).as_secs_f64();
    let decode_s = now.duration_since(prefill_end).as_secs_f64();
    let decoded_after_first = s.generated.len().saturating_sub(1);
    GenerationSummary {
        tokens: s.generated.clone(),
        text: s.text.released().to_string(),
        flushed,
        prompt_tokens: s.job.prompt.len(),
        prefill_tokens_per_s: if prefill_s > 0.0 {
            s.job.prompt.len() as f64 / prefill_s
        } else {
            0.0
        },
        decode_tokens_per_s: if decode_s > 0.0 {
            decoded_after_first as f64 / decode_s
        } else {
            0.0
        },
        stop_reason: reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ModelHandle, WorkerGone};
    use crate::make_model::{self, MakeModelArgs};
    use crate::model::load::{build_pipeline, OpenedModel, StageSpec};
    use crate::model::StageBackend;
    use clap::Parser;
    use llmd_kernels::backend::{CpuBackend, DeviceMemory};
    use llmd_kernels::cpu::ThreadPool;
    use tokio::sync::mpsc::{channel, Receiver as EventReceiver};

    /// `llmd make-model`'s arguments, parsed as the command line would be.
    #[derive(Parser)]
    struct MakeModelCli {
        #[command(flatten)]
        args: MakeModelArgs,
    }

    /// A tiny random llama on one CPU device charging `memory`, run by a worker with `limits`.
    fn tiny_worker(
        dir: &std::path::Path,
        memory: &Arc<DeviceMemory>,
        limits: WorkerLimits,
    ) -> ModelHandle {
        let path = dir.join("tiny.gguf");
        let out = path.to_str().expect("utf-8 temp path");
        let cli = MakeModelCli::try_parse_from([
            "make-model",
            "--arch",
            "llama",
            "--preset",
            "tiny",
            "--type",
            "q8_0",
            "--seed",
            "5",
            "--threads",
            "1",
            "-o",
            out,
        ])
        .expect("valid make-model arguments");
        make_model::run(cli.args).expect("make-model");
        let model = OpenedModel::open(&path).expect("open");
        let tokenizer =
            Arc::new(Tokenizer::from_metadata(&model.description.tokenizer).expect("tokenizer"));
        let pool = Arc::new(ThreadPool::new(1).expect("pool"));
        let backend = CpuBackend::new("cpu:0", Arc::clone(memory), pool);
        let spec = StageSpec {
            backend: StageBackend::Cpu(Arc::new(backend)),
            layers: 0..model.config.n_layer,
            head: true,
        };
        let pipeline = build_pipeline(
            &model,
            vec![spec],
            limits.max_batch,
            limits.max_sequences,
            |_, _| {},
        )
        .expect("pipeline");
        ModelHandle::spawn("tiny", pipeline, tokenizer, limits, None).expect("worker")
    }

    fn generation(max_tokens: usize) -> GenerateJob {
        GenerateJob {
            prompt: vec![1, 2, 3, 4],
            max_tokens,
            sampling: SamplingParams::greedy(),
            stops: Vec::new(),
        }
    }

    /// Reads events until the final one (or the channel closing), at most 20 s.
    fn finish(rx: &mut EventReceiver<GenEvent>) -> (usize, Option<GenEvent>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tokens = 0;
        while Instant::now() < deadline {
            match rx.try_recv() {
                Ok(GenEvent::Token { .. }) => tokens += 1,
                Ok(last) => return (tokens, Some(last)),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return (tokens, None),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
            }
        }
        panic!("no final event within 20 s ({tokens} tokens)");
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Issue 14: a panic in the worker is contained: the model is marked failed with the panic's
    /// message, running and later requests are refused with it, and its memory is freed.
    #[test]
    fn a_panic_fails_the_model_with_its_message_and_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = DeviceMemory::new(1 << 30);
        let handle = tiny_worker(dir.path(), &memory, WorkerLimits::new(4096, 64, 4));
        assert!(memory.used() > 0);
        // A long prompt keeps the generation in prefill (64 tokens a step) when the fault comes,
        // so it is running then whatever tokens the model would pick (an end-of-generation
        // token could end a short one first).
        let (tx, mut running) = channel(1 << 16);
        let long = GenerateJob {
            prompt: (0..2000).map(|i| 5 + i % 900).collect(),
            ..generation(16)
        };
        handle.submit(Job::Generate(long, tx)).expect("submit");
        handle
            .submit(Job::WithPipeline(Box::new(|_| panic!("injected fault"))))
            .expect("submit");
        let (_, last) = finish(&mut running);
        match last {
            Some(GenEvent::Failed(why)) => assert!(why.contains("injected fault"), "{why}"),
            other => panic!("the running generation ended with {other:?}"),
        }
        wait_until("the failure is recorded", || handle.failure().is_some());
        let why = handle.failure().unwrap_or_default();
        assert!(
            why.contains("injected fault") && why.contains("reload"),
            "{why}"
        );
        let (tx, _rx) = channel(16);
        match handle.submit(Job::Generate(generation(4), tx)) {
            Err(WorkerGone::Failed(m)) => assert!(m.contains("injected fault"), "{m}"),
            other => panic!("a failed model took a job: {other:?}"),
        }
        wait_until("the pipeline's memory is returned", || memory.used() == 0);
    }

    /// Issue 14: a client that stops reading parks its own generation; another generation on
    /// the same model runs to its end meanwhile, and the parked one is dropped after its limit.
    #[test]
    fn a_client_that_stops_reading_is_parked_then_dropped_without_slowing_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = DeviceMemory::new(1 << 30);
        let limits = WorkerLimits {
            park_limit: Duration::from_millis(500),
            ..WorkerLimits::new(4096, 64, 4)
        };
        let handle = tiny_worker(dir.path(), &memory, limits);
        // The stalled client: room for one event, never read until the end.
        let (stalled_tx, mut stalled) = channel(1);
        handle
            .submit(Job::Generate(generation(2000), stalled_tx))
            .expect("submit");
        let (tx, mut reader) = channel(1 << 16);
        let started = Instant::now();
        handle
            .submit(Job::Generate(generation(200), tx))
            .expect("submit");
        let (tokens, last) = finish(&mut reader);
        let took = started.elapsed();
        assert!(matches!(last, Some(GenEvent::Done(_))), "{last:?}");
        assert!(tokens > 0);
        assert!(took < Duration::from_secs(10), "{took:?}");
        // The parked generation is dropped after its limit: its channel closes after the one
        // event it held.
        std::thread::sleep(Duration::from_millis(600));
        let (held, last) = finish(&mut stalled);
        assert!(held <= 1, "{held} tokens went past a full channel");
        assert!(last.is_none(), "{last:?}");
    }
}
