//! One running generation: its progress through prompt and reply, its sampler, its text (the
//! tokenizer's stream decoder with stop strings held back, [`TextStream`]) and its events on
//! their way to the request handler without ever waiting ([`Outbox`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use llmd_tokenizer::Tokenizer;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use super::job::{GenEvent, GenerateJob, GenerationSummary, StopReason};
use super::sampler::Sampler;
use super::select::Selection;
use super::text::TextStream;
use crate::model::RowResult;
use crate::model::SeqId;

/// The events of one generation on their way to its request handler, without ever waiting:
/// what the channel cannot take now queues here, in order.
pub(super) struct Outbox {
    /// The channel to the handler (closed: the client went away).
    events: Sender<GenEvent>,
    /// Events the channel could not take yet, oldest first.
    backlog: VecDeque<GenEvent>,
    /// When the channel was first found full, while the backlog is not empty.
    stalled_since: Option<Instant>,
}

impl Outbox {
    /// An outbox in front of `events`.
    pub(super) fn new(events: Sender<GenEvent>) -> Self {
        Outbox {
            events,
            backlog: VecDeque::new(),
            stalled_since: None,
        }
    }

    /// Sends `event`, or queues it behind events still waiting.
    pub(super) fn send(&mut self, event: GenEvent) {
        self.backlog.push_back(event);
        self.flush();
    }

    /// Sends `event` now if the channel has room, else drops it (a failure report to a client
    /// that may be gone: nothing waits for it).
    pub(super) fn try_send_now(&self, event: GenEvent) {
        let _ = self.events.try_send(event);
    }

    /// Moves queued events into the channel while it has room; returns true when none is left.
    pub(super) fn flush(&mut self) -> bool {
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
    pub(super) fn stalled(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// How long the client has not been reading, if it is not.
    pub(super) fn stalled_for(&self, now: Instant) -> Option<Duration> {
        self.stalled_since.map(|t| now.duration_since(t))
    }

    /// True when the client went away (the receiver is dropped).
    pub(super) fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

/// A running generation.
pub(super) struct Sequence {
    /// Its id in the pipeline (its KV cache).
    pub(super) id: SeqId,
    /// The request: prompt, limits, sampling settings, stop strings.
    pub(super) job: GenerateJob,
    /// Where its events go.
    pub(super) out: Outbox,
    /// Prompt tokens already in the KV cache.
    pub(super) prefilled: usize,
    /// Every token so far (prompt, then generated).
    pub(super) history: Vec<u32>,
    /// Generated tokens.
    generated: Vec<u32>,
    /// Picks each next token from the logits (and the history, for repetition penalties).
    sampler: Sampler,
    /// The generated text released so far, with what is held back.
    text: TextStream,
    /// KV capacity.
    pub(super) capacity: usize,
    /// Prompt tokens whose KV was copied from another sequence's cache at admission (the prefix
    /// cache), not computed.
    pub(super) cached_prompt: usize,
    /// When it was admitted (before its prefix was looked up and copied; the start of its
    /// prefill).
    started: Instant,
    /// When its first token was sampled (the end of its prefill).
    prefill_done: Option<Instant>,
}

impl Sequence {
    /// Generation `id` of `job` admitted at `started` with a KV cache of `capacity` positions
    /// whose first `cached` hold the prompt's first tokens already, reporting to `events`.
    pub(super) fn new(
        id: SeqId,
        job: GenerateJob,
        events: Sender<GenEvent>,
        capacity: usize,
        cached: usize,
        started: Instant,
    ) -> Self {
        Sequence {
            id,
            history: job.prompt.clone(),
            sampler: Sampler::new(job.sampling.clone()),
            text: TextStream::new(job.stops.clone()),
            job,
            out: Outbox::new(events),
            prefilled: cached,
            generated: Vec::new(),
            capacity,
            cached_prompt: cached,
            started,
            prefill_done: None,
        }
    }

    /// True while prompt tokens remain to be fed.
    pub(super) fn prefilling(&self) -> bool {
        self.prefilled < self.job.prompt.len()
    }

    /// Tokens in its KV cache: a prefilling sequence has its first `prefilled` prompt tokens
    /// cached; a decoding one everything but its last token, which the next step feeds.
    pub(super) fn cached_len(&self) -> usize {
        if self.prefilling() {
            self.prefilled
        } else {
            self.history.len().saturating_sub(1)
        }
    }

    /// What its sampler needs of a logits row of `n_vocab` values, when less than the row (see
    /// [`Sampler::device_selection`]).
    pub(super) fn selection(&self, n_vocab: usize) -> Option<Selection> {
        self.sampler.device_selection(n_vocab)
    }

    /// Samples the next token from its logits row, or from the candidates its sampler asked
    /// for, and sends it with the text it releases; returns why the generation stopped, if it
    /// did.
    pub(super) fn sample_next(
        &mut self,
        tokenizer: &Tokenizer,
        row: RowResult<'_>,
    ) -> Option<StopReason> {
        if self.prefill_done.is_none() {
            self.prefill_done = Some(Instant::now());
        }
        let id = match row {
            RowResult::Logits(logits) => self.sampler.sample(logits, &self.history),
            RowResult::Candidates(picked) => self.sampler.sample_candidates(picked),
        };
        if tokenizer.is_eog(id) {
            return Some(StopReason::EndOfGeneration);
        }
        self.generated.push(id);
        self.history.push(id);
        let pushed = self.text.push(tokenizer, id);
        // Never waits: a client that does not read parks the sequence; one that is gone has
        // its sequence freed before the next step.
        self.out.send(GenEvent::Token {
            id,
            text: pushed.text,
        });
        if pushed.stopped {
            Some(StopReason::StopString)
        } else if self.generated.len() >= self.job.max_tokens {
            Some(StopReason::MaxTokens)
        } else if self.history.len() > self.capacity {
            Some(StopReason::ContextFull)
        } else {
            None
        }
    }

    /// Ends the generation for `reason`: sends its summary (with the text held back until now)
    /// and returns its outbox, which may still hold events for a slow client.
    pub(super) fn finish(mut self, reason: StopReason) -> Outbox {
        let flushed = self.text.finish();
        let summary = self.summary(reason, flushed);
        self.out.send(GenEvent::Done(summary));
        self.out
    }

    /// The totals of the generation as it ends for `reason`, `flushed` being the text released
    /// only at the end.
    fn summary(&self, reason: StopReason, flushed: String) -> GenerationSummary {
        let now = Instant::now();
        let prefill_end = self.prefill_done.unwrap_or(now);
        let prefill_s = prefill_end.duration_since(self.started).as_secs_f64();
        let decode_s = now.duration_since(prefill_end).as_secs_f64();
        let decoded_after_first = self.generated.len().saturating_sub(1);
        let computed = self.job.prompt.len() - self.cached_prompt;
        GenerationSummary {
            tokens: self.generated.clone(),
            text: self.text.released().to_string(),
            flushed,
            prompt_tokens: self.job.prompt.len(),
            cached_prompt_tokens: self.cached_prompt,
            time_to_first_token_s: prefill_s,
            prefill_tokens_per_s: if prefill_s > 0.0 {
                computed as f64 / prefill_s
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
}
