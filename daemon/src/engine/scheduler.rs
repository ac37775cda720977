//! Which generations run, and what each step computes: requests wait in order until a slot and
//! their KV cache are free (admission, refusing what can never fit the context), cancelled and
//! long-stalled generations are dropped, and each step's batch is composed of one decode token
//! per running sequence first, then prompt chunks, within the step's row budget. Sequences whose
//! client does not read are parked: left out of batches until it does.
//!
//! The prefix cache (`prefix`): a new sequence whose prompt starts with tokens some running or
//! retained sequence's KV cache already holds gets its cache as a copy of those positions (one
//! device copy per layer) and prefills only the rest, always at least its last token (whose
//! logits it samples from). A finished sequence's cache is retained, shrunk to the positions it
//! holds, within the budget (least recently used evicted first); retained caches are evicted
//! before a new request is refused for lack of KV memory, move with their layers in a re-split
//! (they are in [`Scheduler::live`]) and are dropped with the pipeline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use llmd_kernels::backend::BackendError;
use tokio::sync::mpsc::Sender;

use super::job::{GenEvent, GenerateJob, StopReason, WorkerLimits};
use super::prefix::{Hit, PrefixCache, PrefixUsage};
use super::sequence::{Outbox, Sequence};
use crate::model::resplit::LiveSequence;
use crate::model::{Batch, Pipeline, SeqId};

/// The generations of one model: waiting, running, and finished but still delivering.
pub(super) struct Scheduler {
    /// The context, batch and sequence limits (the context may change with a re-split).
    pub(super) limits: WorkerLimits,
    /// Requests not admitted yet, oldest first.
    waiting: VecDeque<(GenerateJob, Sender<GenEvent>)>,
    /// Admitted generations, each with its KV cache in the pipeline.
    pub(super) running: Vec<Sequence>,
    /// Finished generations whose last events wait for their client to read them.
    draining: Vec<Outbox>,
    /// The id the next sequence (or benchmark run) gets.
    next_seq: SeqId,
    /// Set when a failed re-split left the pipeline without stages: every generation fails
    /// with this message until a re-split succeeds or the model is unloaded.
    pub(super) broken: Option<String>,
    /// Which caches hold which prompt prefixes, and the finished sequences retained for theirs.
    pub(super) prefix: PrefixCache,
}

impl Scheduler {
    /// No generations yet, under `limits`; what the prefix cache retains is published to
    /// `usage`.
    pub(super) fn new(limits: WorkerLimits, usage: Arc<PrefixUsage>) -> Self {
        Scheduler {
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
            draining: Vec::new(),
            next_seq: 1,
            broken: None,
            prefix: PrefixCache::new(limits.prefix_cache_bytes).with_usage(usage),
        }
    }

    /// Queues a generation request.
    pub(super) fn enqueue(&mut self, job: GenerateJob, events: Sender<GenEvent>) {
        self.waiting.push_back((job, events));
    }

    /// A fresh sequence id.
    pub(super) fn next_id(&mut self) -> SeqId {
        let id = self.next_seq;
        self.next_seq += 1;
        id
    }

    /// True when some running sequence can take part in a step (is not parked).
    pub(super) fn runnable(&self) -> bool {
        self.running.iter().any(|s| !s.out.stalled())
    }

    /// True when anything is left: running, waiting or still-delivering generations.
    pub(super) fn busy(&self) -> bool {
        !self.running.is_empty() || !self.draining.is_empty() || !self.waiting.is_empty()
    }

    /// The sequences whose KV caches a re-split moves with their layers: the running ones and
    /// the retained ones, with their cached lengths and capacities.
    pub(super) fn live(&self) -> Vec<LiveSequence> {
        let running = self.running.iter().map(|s| LiveSequence {
            id: s.id,
            len: s.cached_len(),
            capacity: s.capacity,
            retained: false,
        });
        let retained = self.prefix.retained().into_iter().filter_map(|id| {
            let (len, capacity) = self.prefix.retained_shape(id)?;
            Some(LiveSequence {
                id,
                len,
                capacity,
                retained: true,
            })
        });
        running.chain(retained).collect()
    }

    /// Whether the prefix cache is on (a budget above 0).
    fn caching(&self) -> bool {
        self.prefix.budget() > 0
    }

    /// Frees sequence `s`'s KV cache, or keeps it in the prefix cache (shrunk to the positions it
    /// holds) when it is on and the cache fits its budget.
    fn release(&mut self, s: &Sequence, pipeline: &mut Pipeline) {
        self.prefix.forget(s.id);
        let len = s.cached_len();
        if !self.caching() || len == 0 {
            pipeline.remove_sequence(s.id);
            return;
        }
        // A cache with room to spare is copied into one of exactly `len` positions, so the
        // budget holds only what can be reused.
        let mut kept = (s.id, s.capacity);
        if s.capacity > len {
            let id = self.next_id();
            if pipeline.fork_sequence(s.id, id, len, len).is_ok() {
                pipeline.remove_sequence(s.id);
                kept = (id, len);
            }
        }
        let bytes = pipeline.sequence_kv_bytes(kept.0);
        let tokens = s.history[..len].to_vec();
        for evicted in self.prefix.retain(kept.0, tokens, kept.1, bytes) {
            pipeline.remove_sequence(evicted);
            tracing::debug!(seq = evicted, "prefix cache: evicted");
        }
        tracing::debug!(
            seq = kept.0,
            len,
            retained_bytes = self.prefix.retained_bytes(),
            "prefix cache: retained"
        );
    }

    /// Frees running sequence `s`'s KV cache without retaining it (its cache may be unsound).
    fn discard(&mut self, s: &Sequence, pipeline: Option<&mut Pipeline>) {
        self.prefix.forget(s.id);
        if let Some(p) = pipeline {
            p.remove_sequence(s.id);
        }
    }

    /// Drops retained caches, least recently used first, until they held `wanted` bytes or
    /// none is left (`u64::MAX`: every one); they are freed in `pipeline` when given (a
    /// pipeline without stages holds none). Returns the bytes they held.
    pub(super) fn drop_retained(&mut self, wanted: u64, pipeline: Option<&mut Pipeline>) -> u64 {
        let (ids, bytes) = self.prefix.drop_lru(wanted);
        if let Some(p) = pipeline {
            for id in ids {
                p.remove_sequence(id);
            }
        }
        bytes
    }

    /// Frees sequences whose client went away (closed the event channel), and forgets waiting
    /// requests whose client did.
    pub(super) fn drop_cancelled(&mut self, pipeline: &mut Pipeline) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].out.is_closed() {
                let seq = self.running.swap_remove(i);
                self.release(&seq, pipeline);
                tracing::info!(seq = seq.id, "generation cancelled by the client");
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|(_, events)| !events.is_closed());
    }

    /// Delivers what parked generations' clients now read; drops a generation parked longer
    /// than its park limit (`park_limit`, or `park_limit_when_wanted` while requests wait for a
    /// slot), and finished ones whose last events cannot be delivered in that time.
    pub(super) fn tend_parked(&mut self, pipeline: &mut Pipeline) {
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
                self.release(&seq, pipeline);
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

    /// Starts waiting generations while there is a slot, each with a KV cache for its prompt
    /// and reply (at most the context); refuses those that can never run.
    pub(super) fn admit(&mut self, pipeline: &mut Pipeline) {
        // Requests waiting for a running sequence to prefill the prefix they share with it.
        let mut deferred = Vec::new();
        while self.running.len() < self.limits.max_sequences {
            let Some((job, events)) = self.waiting.pop_front() else {
                break;
            };
            if !events.is_closed() && self.prefill_to_share(&job.prompt) {
                deferred.push((job, events));
                continue;
            }
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
            let admitted = Instant::now();
            let capacity = (job.prompt.len() + job.max_tokens).min(self.limits.n_ctx);
            let id = self.next_id();
            let hit = match self.allocate(pipeline, id, &job.prompt, capacity) {
                Ok(hit) => hit,
                Err(e) => {
                    let _ = events.try_send(GenEvent::Failed(format!(
                        "cannot allocate the KV cache: {e}"
                    )));
                    continue;
                }
            };
            if self.caching() {
                self.prefix.track(id, &job.prompt);
            }
            let cached = hit.map_or(0, |h| h.len);
            if cached > 0 {
                tracing::debug!(seq = id, cached, "prefix cache hit");
            }
            self.running
                .push(Sequence::new(id, job, events, capacity, cached, admitted));
        }
        // Back at the head of the queue, in their order.
        for item in deferred.into_iter().rev() {
            self.waiting.push_front(item);
        }
    }

    /// Whether `prompt` should wait before its admission: a running sequence that is not parked
    /// is still prefilling a prefix of at least a block it shares with `prompt` (two requests
    /// with the same long prefix arriving together). Admitted now, it would compute that prefix
    /// a second time beside it; waiting, it copies it once computed, and it waits no longer
    /// than computing it itself would take, since the two would share the steps' rows.
    fn prefill_to_share(&self, prompt: &[u32]) -> bool {
        if !self.caching() {
            return false;
        }
        let max = prompt.len().saturating_sub(1);
        let Some(hit) = self.prefix.find(prompt, max, |_| usize::MAX) else {
            return false;
        };
        self.running.iter().any(|s| {
            s.id == hit.source && s.prefilling() && !s.out.stalled() && s.cached_len() < hit.len
        })
    }

    /// Allocates sequence `id`'s KV cache of `capacity` positions, holding the longest prefix
    /// of `prompt` (all but its last token at most) that a running or retained sequence's cache
    /// holds; retained caches are evicted, least recently used first, when memory runs short.
    /// Returns the prefix copied, if any.
    fn allocate(
        &mut self,
        pipeline: &mut Pipeline,
        id: SeqId,
        prompt: &[u32],
        capacity: usize,
    ) -> Result<Option<Hit>, BackendError> {
        let hit = if self.caching() {
            let running = &self.running;
            self.prefix
                .lookup(prompt, prompt.len().saturating_sub(1), |src| {
                    running
                        .iter()
                        .find(|s| s.id == src)
                        .map_or(usize::MAX, Sequence::cached_len)
                })
        } else {
            None
        };
        self.allocate_evicting(pipeline, id, hit, capacity)
    }

    /// Allocates sequence `id`'s KV cache of `capacity` positions, a copy of `hit`'s prefix if
    /// given; when memory runs short, retained caches are evicted (least recently used first,
    /// `hit`'s source last, the prefix then computed) until it fits or none is left. Returns
    /// the prefix copied, if any.
    pub(super) fn allocate_evicting(
        &mut self,
        pipeline: &mut Pipeline,
        id: SeqId,
        mut hit: Option<Hit>,
        capacity: usize,
    ) -> Result<Option<Hit>, BackendError> {
        loop {
            let result = match hit {
                Some(h) => pipeline.fork_sequence(h.source, id, h.len, capacity),
                None => pipeline.add_sequence(id, capacity),
            };
            let Err(e) = result else {
                return Ok(hit);
            };
            let source = hit.map(|h| h.source);
            if let Some(victim) = self.prefix.evict_lru(source) {
                pipeline.remove_sequence(victim);
                tracing::debug!(seq = victim, "prefix cache: evicted for a new sequence");
            } else if let Some(src) = source.filter(|&src| self.prefix.retained_len(src).is_some())
            {
                // The source itself is the last retained cache: free it and compute the prefix.
                self.prefix.forget(src);
                pipeline.remove_sequence(src);
                hit = None;
            } else {
                return Err(e);
            }
        }
    }

    /// Composes the next step into `batch`: one decode token per running sequence that is not
    /// parked, then prompt chunks with the rows left of `max_batch` (advancing the sequences'
    /// prefill as if the step ran).
    pub(super) fn compose(&mut self, batch: &mut Batch) {
        batch.clear();
        let mut budget = self.limits.max_batch;
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
                batch.push(last, pos, s.id, true);
                budget -= 1;
            }
        }
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
                batch.push(s.job.prompt[i], i as u32, s.id, last);
            }
            s.prefilled += take;
            budget -= take;
        }
    }

    /// The running sequence `id`, if it is still running.
    pub(super) fn running_mut(&mut self, id: SeqId) -> Option<&mut Sequence> {
        self.running.iter_mut().find(|s| s.id == id)
    }

    /// Ends the running sequence `id` for `reason`: frees its KV cache, sends its summary, and
    /// keeps its outbox while its client has events to read.
    pub(super) fn finish(&mut self, id: SeqId, reason: StopReason, pipeline: &mut Pipeline) {
        if let Some(idx) = self.running.iter().position(|s| s.id == id) {
            let s = self.running.swap_remove(idx);
            self.release(&s, pipeline);
            let out = s.finish(reason);
            if out.stalled() {
                self.draining.push(out);
            }
        }
    }

    /// Fails every running generation with `msg` (their events are delivered as the clients
    /// read them), freeing their KV caches in `pipeline` when given.
    pub(super) fn fail_running(&mut self, msg: &str, mut pipeline: Option<&mut Pipeline>) {
        let running = std::mem::take(&mut self.running);
        for mut s in running {
            self.discard(&s, pipeline.as_deref_mut());
            s.out.send(GenEvent::Failed(msg.to_owned()));
            self.draining.push(s.out);
        }
    }

    /// Fails every running and waiting generation with `msg` at once, without waiting for any
    /// client, and forgets them (the worker is stopping).
    pub(super) fn abandon(&mut self, msg: &str) {
        for s in self.running.drain(..) {
            s.out.try_send_now(GenEvent::Failed(msg.to_owned()));
        }
        for (_, events) in self.waiting.drain(..) {
            let _ = events.try_send(GenEvent::Failed(msg.to_owned()));
        }
        self.draining.clear();
        self.prefix = PrefixCache::new(0).with_usage(self.prefix.usage());
    }
}
