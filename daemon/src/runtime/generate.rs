//! A generation: [`GenerateParams`] (a request's values checked and the sampler's defaults
//! filled in), started by [`Runtime::generate`], which turns the prompt into tokens off the
//! runtime (raw, or through the chat template on its step budget and time limit:
//! `runtime::prompt`) and queues it on the model's worker; the [`Generation`] it returns
//! streams the worker's events. Dropping a `Generation` closes its channel, and the worker frees
//! the sequence before its next step: that is how a client that goes away cancels.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use llmd_shared::{GenerateRequest, Prompt};
use tokio::sync::mpsc;

use super::error::{ErrorKind, RuntimeError};
use super::prompt::prompt_tokens;
use super::{InUse, ResidentModel, Runtime};
use crate::engine::{GenEvent, GenerateJob, GenerationSummary, Job, SamplingParams};
use crate::health::registry::Metrics;

/// Token events buffered between the worker and a slow client.
const EVENT_BUFFER: usize = 256;

/// What to generate, checked.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// The model's name.
    pub model: String,
    /// The prompt: raw text or a conversation.
    pub prompt: Prompt,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// The sampler's settings, every value given.
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before the first occurrence of any.
    pub stops: Vec<String>,
}

impl GenerateParams {
    /// Checks `req` as llmctl's requests are checked (`GenerateRequest::validate`: token
    /// counts, stop strings, sampling ranges) and fills in the sampler's defaults (a random seed
    /// where none is given).
    pub fn from_request(req: GenerateRequest) -> Result<Self, RuntimeError> {
        req.validate()
            .map_err(|e| RuntimeError::new(ErrorKind::BadRequest, e.message))?;
        let defaults = SamplingParams::default();
        let s = &req.sampling;
        let sampling = SamplingParams {
            temperature: s.temperature.unwrap_or(defaults.temperature),
            top_k: s.top_k.map_or(defaults.top_k, |k| k as usize),
            top_p: s.top_p.unwrap_or(defaults.top_p),
            min_p: s.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: s.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            presence_penalty: s.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: s.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            penalty_last_n: defaults.penalty_last_n,
            seed: s.seed.unwrap_or_else(random_seed),
        };
        Ok(GenerateParams {
            model: req.model,
            prompt: req.prompt,
            max_tokens: req.max_tokens as usize,
            sampling,
            stops: req.stop,
        })
    }
}

/// What a generation produced next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A generated token and the text it released (may be empty while a character or stop
    /// string is pending).
    Token {
        /// Token id.
        id: u32,
        /// Text released with it.
        text: String,
    },
    /// The generation ended; its totals.
    Done(GenerationSummary),
}

/// A generation running on a model's worker. Read its events with [`Generation::next`]; drop
/// it to cancel.
pub struct Generation {
    /// The model it runs on (kept resident while it runs, even if unloaded meanwhile; a
    /// declared model's keep-alive waits for it).
    model: InUse,
    /// Prompt length in tokens.
    prompt_tokens: usize,
    /// The worker's events for it.
    events: mpsc::Receiver<GenEvent>,
    /// Where its tokens and latencies are recorded.
    metrics: Arc<Metrics>,
    /// When it started (before its prompt was tokenized), for the time to the first token.
    started: Instant,
    /// When its latest token came, for the time per token.
    last_token: Option<Instant>,
}

impl Generation {
    /// The model it runs on.
    pub fn model(&self) -> &ResidentModel {
        &self.model.model
    }

    /// Prompt length in tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next step: tokens, then `Done`. An error when the generation failed, or when the
    /// worker dropped it without a result (the model failed, or its client stopped reading).
    pub async fn next(&mut self) -> Result<Step, RuntimeError> {
        match self.events.recv().await {
            Some(GenEvent::Token { id, text }) => {
                let now = Instant::now();
                match self.last_token {
                    None => self
                        .metrics
                        .first_token(&self.model.name, now - self.started),
                    Some(last) => self.metrics.next_token(&self.model.name, now - last),
                }
                self.last_token = Some(now);
                Ok(Step::Token { id, text })
            }
            Some(GenEvent::Done(summary)) => {
                self.metrics.finished(
                    &self.model.name,
                    summary.prompt_tokens,
                    summary.tokens.len(),
                );
                self.metrics
                    .prefix_reused(&self.model.name, summary.cached_prompt_tokens);
                Ok(Step::Done(summary))
            }
            Some(GenEvent::Failed(message)) => {
                Err(RuntimeError::new(ErrorKind::BadRequest, message))
            }
            None => Err(self.model.unavailable(
                "the generation ended without a result: the model's worker dropped it (was its \
                 client reading?) or stopped",
            )),
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.model.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runtime {
    /// The model a request for `name` runs on: the resident one, or one the configuration
    /// declares on demand, loaded now ([`Runtime::acquire`], which also reports the load's
    /// progress), else `not_found`.
    pub async fn serving_model(&self, name: &str) -> Result<ResidentModel, RuntimeError> {
        let (progress, _) = mpsc::unbounded_channel();
        Ok(self.acquire(name, progress).await?.model.clone())
    }

    /// Starts a generation: the model for `params.model` ([`Runtime::acquire`]), its prompt
    /// tokenized within its context, queued on its worker.
    pub async fn generate(&self, params: GenerateParams) -> Result<Generation, RuntimeError> {
        let (progress, _) = mpsc::unbounded_channel();
        self.generate_with_progress(params, progress).await
    }

    /// [`Runtime::generate`], sending the progress of an on-demand load of the model, when one
    /// is needed, to `progress` as `(stages done, stages)`.
    pub async fn generate_with_progress(
        &self,
        params: GenerateParams,
        progress: mpsc::UnboundedSender<(usize, usize)>,
    ) -> Result<Generation, RuntimeError> {
        let started = Instant::now();
        let model = self.acquire(&params.model, progress).await?;
        let prompt =
            prompt_tokens(model.prompt_model(), params.prompt, model.ctx() as usize).await?;
        let prompt_tokens = prompt.len();
        let job = GenerateJob {
            prompt,
            max_tokens: params.max_tokens,
            sampling: params.sampling,
            stops: params.stops,
        };
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        model.submit(Job::Generate(job, tx))?;
        model.running.fetch_add(1, Ordering::SeqCst);
        Ok(Generation {
            model,
            prompt_tokens,
            events,
            metrics: Arc::clone(&self.metrics),
            started,
            last_token: None,
        })
    }
}

impl Runtime {
    /// `req` with the configuration's defaults for its model (a `[[models]]` entry's sampling
    /// values and system prompt) where it leaves them unset; unchanged for other models. Front
    /// ends call it before [`GenerateParams::from_request`].
    pub fn with_declared_defaults(&self, mut req: GenerateRequest) -> GenerateRequest {
        let Some(entry) = self.declared.get(&req.model) else {
            return req;
        };
        let d = entry.decl.sampling();
        let s = &mut req.sampling;
        s.temperature = s.temperature.or(d.temperature);
        s.top_k = s.top_k.or(d.top_k);
        s.top_p = s.top_p.or(d.top_p);
        s.min_p = s.min_p.or(d.min_p);
        s.repeat_penalty = s.repeat_penalty.or(d.repeat_penalty);
        s.presence_penalty = s.presence_penalty.or(d.presence_penalty);
        s.frequency_penalty = s.frequency_penalty.or(d.frequency_penalty);
        if let (Prompt::Chat(messages), Some(system)) = (&mut req.prompt, &entry.decl.system_prompt)
        {
            if messages.first().is_none_or(|m| m.role != "system") {
                messages.insert(
                    0,
                    llmd_shared::ChatMessage {
                        role: "system".into(),
                        content: system.clone(),
                    },
                );
            }
        }
        req
    }
}

/// A seed for requests that do not give one.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
