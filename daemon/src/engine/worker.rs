//! The model worker: one dedicated thread per loaded model that owns its [`Pipeline`] and runs
//! every request for it. Requests arrive as [`Job`]s over a channel; between two forward steps
//! the worker takes jobs, lets its [`Scheduler`] drop cancelled sequences and admit new ones,
//! and applies re-splits, so running generations are never interrupted mid-step. Each step runs
//! the batch the scheduler composes (one decode token per running sequence plus prompt chunks)
//! and has each sequence with a logits row sample its next token ([`Sequence::sample_next`]).
//!
//! The worker never waits on a client: each generation's events go out through its outbox, and
//! a sequence whose client stopped reading is parked (left out of the batches) while the others
//! keep their speed, then dropped after its park limit ([`PARK_LIMIT`], or
//! [`PARK_LIMIT_WHEN_WANTED`] when other requests wait for its slot).
//!
//! A panic in a step or a job is contained (issue 14): the worker fails every generation with
//! the panic's message, records it in its [`WorkerHealth`] (so `status`, `doctor` and the
//! `STATUS=` line show the model as failed and later requests are refused with the reason),
//! frees the pipeline and exits. A reload builds a new worker.
//!
//! [`Sequence::sample_next`]: super::sequence::Sequence::sample_next

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_tokenizer::Tokenizer;

use super::job::{BenchResult, Job, ResplitFn, ResplitOutcome, WorkerLimits};
#[cfg(doc)]
use super::job::{PARK_LIMIT, PARK_LIMIT_WHEN_WANTED};
use super::scheduler::Scheduler;
use super::select::Selection;
use super::WorkerHealth;
use crate::model::{Batch, HeadOutput, Pipeline, RowRequest, RowResult, SeqId};

/// What a test's look at each logits row of a step is shown: the sequence and its logits.
type Observer<'a> = dyn FnMut(SeqId, &[f32]) + 'a;

/// How often the worker checks its parked generations when nothing else can run.
const PARK_POLL: Duration = Duration::from_millis(20);

/// The worker's state; [`Worker::run`] drives it.
pub struct Worker {
    /// The model's stages on their devices, with every sequence's KV cache.
    pipeline: Pipeline,
    /// Turns sampled tokens into text.
    tokenizer: Arc<Tokenizer>,
    /// Where jobs arrive (closed: the model is being unloaded).
    jobs: Receiver<Job>,
    /// The generations: waiting, running, delivering.
    scheduler: Scheduler,
    /// Where a failure is recorded for the handle (and `status`) to see.
    health: Arc<WorkerHealth>,
    /// The step's batch, reused.
    batch: Batch,
    /// What the step's rows wanting logits ask of the head and what they get, reused.
    head_out: HeadOutput,
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
            jobs,
            scheduler: Scheduler::new(limits, health.prefix()),
            health,
            batch: Batch::default(),
            head_out: HeadOutput::default(),
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
        let next = if self.scheduler.runnable() {
            self.jobs.try_recv().ok()
        } else if self.scheduler.busy() {
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
        self.prepare_step();
        if self.scheduler.runnable() {
            self.step(None);
        }
        true
    }

    /// Between two steps: drops cancelled generations, tends parked ones, admits waiting ones.
    fn prepare_step(&mut self) {
        self.scheduler.drop_cancelled(&mut self.pipeline);
        self.scheduler.tend_parked(&mut self.pipeline);
        self.scheduler.admit(&mut self.pipeline);
    }

    /// Records the failure, fails every generation with it, frees the pipeline and stops. Jobs
    /// still queued are dropped, so their requests see the channel close and report the
    /// failure recorded in `health`.
    fn fail(mut self, panic: String) {
        let message = format!("the model failed (a step panicked: {panic}); reload it");
        tracing::error!("{message}");
        self.health.set_failed(message.clone());
        self.scheduler.abandon(&message);
        // Dropping the stages returns their memory to the devices' ledgers; a second panic
        // while doing so must not take the thread down silently.
        let Worker { pipeline, .. } = self;
        if catch_unwind(AssertUnwindSafe(move || drop(pipeline))).is_err() {
            tracing::error!("freeing the failed model's pipeline panicked too");
        }
    }

    /// Takes one job: queues a generation, or runs a benchmark, a closure or a re-split now.
    fn accept(&mut self, job: Job) {
        match job {
            Job::Generate(g, events) => self.scheduler.enqueue(g, events),
            Job::Bench {
                n_prompt,
                n_gen,
                reply,
            } => {
                let _ = reply.send(self.bench(n_prompt, n_gen));
            }
            Job::WithPipeline(f) => f(&mut self.pipeline),
            Job::Resplit(f) => self.resplit(f),
            Job::DropRetained { wanted, reply } => {
                let freed = self
                    .scheduler
                    .drop_retained(wanted, Some(&mut self.pipeline));
                tracing::debug!(
                    wanted,
                    freed,
                    "prefix cache: retained caches dropped for other work"
                );
                let _ = reply.send(freed);
            }
        }
    }

    /// Runs a re-split with the running sequences' cache lengths and capacities.
    fn resplit(&mut self, f: ResplitFn) {
        let live = self.scheduler.live();
        match f(&mut self.pipeline, &live) {
            ResplitOutcome::Unchanged => {}
            ResplitOutcome::Applied { n_ctx } => {
                // A complete placement is in force again (it may heal a broken pipeline).
                self.scheduler.broken = None;
                if let Some(n) = n_ctx {
                    self.scheduler.limits.n_ctx = n.max(1);
                }
            }
            ResplitOutcome::Broken(msg) => {
                tracing::error!("{msg}");
                self.scheduler.fail_running(&msg, None);
                // The stages, and the retained caches with them, are gone.
                self.scheduler.drop_retained(u64::MAX, None);
                self.scheduler.broken = Some(msg);
            }
        }
    }

    /// One forward step over the batch the scheduler composes. Each row wanting logits asks the
    /// head for what its sequence's sampler needs (only the candidates of a greedy or top-k
    /// sampler, picked on the head's device: [`Sequence::selection`]), or, with `observe`, for
    /// the whole row, which `observe` is shown (the sequence and its logits) before its
    /// sequence samples from it.
    ///
    /// [`Sequence::selection`]: super::sequence::Sequence::selection
    fn step(&mut self, mut observe: Option<&mut Observer<'_>>) {
        self.scheduler.compose(&mut self.batch);
        let n_vocab = self.pipeline.config().n_vocab;
        // The rows wanting logits, in batch order, with their sequences.
        let rows: Vec<SeqId> = (0..self.batch.len())
            .filter(|&t| self.batch.logits[t])
            .map(|t| self.batch.seqs[t])
            .collect();
        let requests = &mut self.head_out.requests;
        requests.clear();
        for &seq_id in &rows {
            let selection = match observe {
                Some(_) => None,
                None => self
                    .scheduler
                    .running_mut(seq_id)
                    .and_then(|seq| seq.selection(n_vocab)),
            };
            requests.push(selection.map_or(RowRequest::Logits, RowRequest::Select));
        }
        if let Err(e) = self.pipeline.forward_rows(&self.batch, &mut self.head_out) {
            tracing::error!(error = %e, "forward pass failed");
            self.scheduler.fail_running(
                &format!("forward pass failed: {e}"),
                Some(&mut self.pipeline),
            );
            return;
        }
        // Sample for every row that produced logits, in batch order.
        let mut finished = Vec::new();
        for (row, seq_id) in rows.into_iter().enumerate() {
            let Some(seq) = self.scheduler.running_mut(seq_id) else {
                continue;
            };
            let Some(result) = self.head_out.row(row) else {
                continue;
            };
            if let (Some(observe), RowResult::Logits(logits)) = (observe.as_mut(), result) {
                observe(seq_id, logits);
            }
            if let Some(reason) = seq.sample_next(&self.tokenizer, result) {
                finished.push((seq_id, reason));
            }
        }
        for (seq_id, reason) in finished {
            self.scheduler.finish(seq_id, reason, &mut self.pipeline);
        }
    }

    /// Prefill of `n_prompt` tokens in batches of the step limit (llama-bench's `pp` test), then
    /// `n_gen` single-token steps continuing the same sequence at positions `n_prompt..` (the
    /// `tg` test at a depth of `n_prompt`, as llama-bench's `-d` runs it: decode speed with a
    /// context to attend over, not on an empty cache), on a scratch sequence. The steps ask
    /// for greedy selection (the argmax picked on the head's device), as a greedy generation
    /// does.
    fn bench(&mut self, n_prompt: usize, n_gen: usize) -> Result<BenchResult, String> {
        if let Some(msg) = &self.scheduler.broken {
            return Err(msg.clone());
        }
        let n_vocab = self.pipeline.config().n_vocab as u32;
        let capacity = (n_prompt + n_gen).max(1);
        if capacity > self.scheduler.limits.n_ctx {
            return Err(format!(
                "{capacity} tokens do not fit the context of {}",
                self.scheduler.limits.n_ctx
            ));
        }
        let id = self.scheduler.next_id();
        // Pseudo-random but valid token ids, as llama-bench uses.
        let token = |i: usize| ((i as u64 * 2_654_435_761) % n_vocab as u64) as u32;
        self.head_out.requests.clear();
        self.head_out
            .requests
            .push(RowRequest::Select(Selection::Argmax));
        let mut run = || -> Result<(f64, f64), String> {
            // Retained prefix caches make room for it as for a generation.
            self.scheduler
                .allocate_evicting(&mut self.pipeline, id, None, capacity)
                .map_err(|e| e.to_string())?;
            let mut pp = 0.0;
            if n_prompt > 0 {
                let start = Instant::now();
                let mut done = 0;
                while done < n_prompt {
                    let take = (n_prompt - done).min(self.scheduler.limits.max_batch);
                    self.batch.clear();
                    for i in done..done + take {
                        self.batch.push(token(i), i as u32, id, i + 1 == n_prompt);
                    }
                    self.pipeline
                        .forward_rows(&self.batch, &mut self.head_out)
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
                        .forward_rows(&self.batch, &mut self.head_out)
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

#[cfg(test)]
mod prefix_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::{GenEvent, GenerateJob, SamplingParams};
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

    /// A tiny random llama (Q8_0 weights) on one CPU device charging `memory`, with its
    /// tokenizer, set up for `limits`.
    pub(super) fn tiny_model(
        dir: &std::path::Path,
        memory: &Arc<DeviceMemory>,
        limits: WorkerLimits,
    ) -> (Pipeline, Arc<Tokenizer>) {
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
        (pipeline, tokenizer)
    }

    /// [`tiny_model`] run by a worker thread with `limits`.
    fn tiny_worker(
        dir: &std::path::Path,
        memory: &Arc<DeviceMemory>,
        limits: WorkerLimits,
    ) -> ModelHandle {
        let (pipeline, tokenizer) = tiny_model(dir, memory, limits);
        ModelHandle::spawn("tiny", pipeline, tokenizer, limits, None).expect("worker")
    }

    pub(super) fn generation(max_tokens: usize) -> GenerateJob {
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

    /// The steps of `worker` until every generation queued in it has ended, on this thread;
    /// returns each sequence's logits rows (as bits) in the order it got them, and whether some
    /// step mixed a prompt chunk of one sequence with rows of another.
    pub(super) fn run_to_end(worker: &mut Worker) -> (BTreeMap<SeqId, Vec<Vec<u32>>>, bool) {
        let mut rows: BTreeMap<SeqId, Vec<Vec<u32>>> = BTreeMap::new();
        let mut mixed = false;
        for _ in 0..10_000 {
            worker.prepare_step();
            if !worker.scheduler.runnable() {
                return (rows, mixed);
            }
            worker.step(Some(&mut |id, logits: &[f32]| {
                rows.entry(id)
                    .or_default()
                    .push(logits.iter().map(|v| v.to_bits()).collect());
            }));
            let batch = &worker.batch;
            let seqs: std::collections::BTreeSet<SeqId> = batch.seqs.iter().copied().collect();
            mixed |= seqs.len() > 1 && batch.len() > seqs.len();
        }
        panic!("the generations did not end within 10,000 steps");
    }

    /// The missing test of issue 22: k sequences submitted together, so that steps mix one
    /// sequence's prompt chunks with other sequences' decode tokens, each get bit for bit the
    /// logits (and so the greedy tokens) they get running alone, on the CPU.
    #[test]
    fn sequences_batched_together_are_bit_identical_to_running_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = DeviceMemory::new(1 << 30);
        // Eight rows a step: the longer prompts take several steps, while the shorter ones
        // already decode.
        let limits = WorkerLimits::new(256, 8, 4);
        let (pipeline, tokenizer) = tiny_model(dir.path(), &memory, limits);
        let (_jobs, rx) = std::sync::mpsc::channel();
        let health = Arc::new(WorkerHealth::default());
        let mut worker = Worker::new(pipeline, tokenizer, limits, rx, health);
        let prompts: Vec<Vec<u32>> = [3usize, 11, 19, 26]
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                (0..len)
                    .map(|i| 5 + ((i * 7 + k * 13) % 200) as u32)
                    .collect()
            })
            .collect();
        let job = |prompt: &Vec<u32>| GenerateJob {
            prompt: prompt.clone(),
            ..generation(12)
        };
        // Receivers kept open (and large enough never to park anyone) for the whole test.
        let mut receivers = Vec::new();
        let mut alone = Vec::new();
        for prompt in &prompts {
            let (tx, rx) = channel(1 << 12);
            receivers.push(rx);
            worker.scheduler.enqueue(job(prompt), tx);
            let (rows, _) = run_to_end(&mut worker);
            assert_eq!(rows.len(), 1, "one sequence alone");
            alone.extend(rows.into_values());
        }
        for prompt in &prompts {
            let (tx, rx) = channel(1 << 12);
            receivers.push(rx);
            worker.scheduler.enqueue(job(prompt), tx);
        }
        let (together, mixed) = run_to_end(&mut worker);
        assert!(mixed, "no step mixed prefill with other sequences' rows");
        // Sequence ids are given in admission order, which is submission order here.
        let together: Vec<Vec<Vec<u32>>> = together.into_values().collect();
        assert_eq!(together.len(), prompts.len());
        for (k, (want, got)) in alone.iter().zip(&together).enumerate() {
            assert!(!want.is_empty(), "sequence {k} produced no logits");
            assert_eq!(want.len(), got.len(), "sequence {k}: steps with logits");
            for (step, (w, g)) in want.iter().zip(got).enumerate() {
                assert!(
                    w == g,
                    "sequence {k}: the logits of step {step} differ in bits"
                );
            }
        }
    }
}
