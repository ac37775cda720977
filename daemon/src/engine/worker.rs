//! The model worker: one dedicated thread per loaded model that owns its [`Pipeline`] and runs
//! every request for it. Requests arrive as [`Job`]s over a channel; between two forward steps
//! the worker admits new sequences, drops cancelled ones and applies re-splits, so running
//! generations are never interrupted mid-step. Concurrent generations are batched together:
//! each step carries one decode token per running sequence plus a prefill chunk.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;

use super::sampler::{Sampler, SamplingParams};
use super::text::TextStream;
use crate::model::resplit::LiveSequence;
use crate::model::{Batch, Pipeline, SeqId};
use crate::tokenizer::Tokenizer;

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
}

/// A running generation.
struct Sequence {
    id: SeqId,
    job: GenerateJob,
    events: Sender<GenEvent>,
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

/// The worker's state; [`run`] drives it.
pub struct Worker {
    pipeline: Pipeline,
    tokenizer: Arc<Tokenizer>,
    limits: WorkerLimits,
    jobs: Receiver<Job>,
    waiting: VecDeque<(GenerateJob, Sender<GenEvent>)>,
    running: Vec<Sequence>,
    next_seq: SeqId,
    /// Set when a failed re-split left the pipeline without stages: every generation fails
    /// with this message until a re-split succeeds or the model is unloaded.
    broken: Option<String>,
    batch: Batch,
    logits: Vec<f32>,
}

impl Worker {
    /// A worker for `pipeline` fed by `jobs`.
    pub fn new(
        pipeline: Pipeline,
        tokenizer: Arc<Tokenizer>,
        limits: WorkerLimits,
        jobs: Receiver<Job>,
    ) -> Self {
        Worker {
            pipeline,
            tokenizer,
            limits,
            jobs,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_seq: 1,
            broken: None,
            batch: Batch::default(),
            logits: Vec::new(),
        }
    }

    /// Runs until every sender of the job channel is gone and no work is left.
    pub fn run(mut self) {
        loop {
            // Block for work only when idle.
            let idle = self.running.is_empty() && self.waiting.is_empty();
            let next = if idle {
                match self.jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                }
            } else {
                match self.jobs.recv_timeout(Duration::ZERO) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
                }
            };
            if let Some(job) = next {
                self.accept(job);
                while let Ok(job) = self.jobs.try_recv() {
                    self.accept(job);
                }
            }
            self.drop_cancelled();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
        }
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
                for s in self.running.drain(..) {
                    let _ = s.events.try_send(GenEvent::Failed(msg.clone()));
                }
                self.broken = Some(msg);
            }
        }
    }

    /// Frees sequences whose client went away (closed the event channel).
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
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
                events,
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
        // Decoding sequences first: one token each.
        for s in self.running.iter().filter(|s| !s.prefilling()) {
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
        for s in self.running.iter_mut().filter(|s| s.prefilling()) {
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
            for s in self.running.drain(..) {
                self.pipeline.remove_sequence(s.id);
                let _ = s
                    .events
                    .try_send(GenEvent::Failed(format!("forward pass failed: {e}")));
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
                let _ = s.events.blocking_send(GenEvent::Done(summary));
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
        if s.events
            .blocking_send(GenEvent::Token {
                id,
                text: pushed.text,
            })
            .is_err()
        {
            // The client is gone; the next step frees the sequence.
            return None;
        }
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
