//! `generate`: checks the request's values, turns the prompt into tokens off the runtime (raw,
//! or through the chat template on its step budget and time limit: `engine::prompt`), queues it
//! on the model's worker and streams tokens back. If the client goes away, dropping this handler
//! closes the event channel and the worker frees the sequence before its next step.

use std::sync::atomic::Ordering;

use llmd_shared::{
    ChatMessage, ErrorCode, ErrorReply, Event, GenerateReply, GenerateRequest, Prompt, Sampling,
    Token,
};

use super::{model_for_request, Context};
use crate::engine::prompt::prompt_tokens;
use crate::engine::{GenEvent, GenerateJob, Job, SamplingParams};

/// Token events buffered between the worker and a slow client.
const EVENT_BUFFER: usize = 256;

/// Runs the generation.
pub async fn handle(req: GenerateRequest, ctx: &Context) -> Result<GenerateReply, ErrorReply> {
    req.validate()?;
    let model = model_for_request(ctx, &req.model).await?;
    // The config's defaults for this model, where the request leaves a value unset.
    let declared = ctx.state.config().config.declared(&req.model).cloned();
    let (prompt, s) = match &declared {
        Some(d) => (
            with_system_prompt(req.prompt, d.system_prompt.as_deref()),
            with_defaults(&req.sampling, &d.sampling()),
        ),
        None => (req.prompt, req.sampling.clone()),
    };
    let prompt = prompt_tokens(model.prompt_model(), prompt, model.ctx() as usize).await?;
    let defaults = SamplingParams::default();
    let s = &s;
    let sampling = SamplingParams {
        temperature: s.temperature.unwrap_or(defaults.temperature),
        top_k: s.top_k.map_or(defaults.top_k, |k| k as usize),
        top_p: s.top_p.unwrap_or(defaults.top_p),
        min_p: s.min_p.unwrap_or(defaults.min_p),
        repeat_penalty: s.repeat_penalty.unwrap_or(defaults.repeat_penalty),
        presence_penalty: s.presence_penalty.unwrap_or(defaults.presence_penalty),
        penalty_last_n: defaults.penalty_last_n,
        seed: s.seed.unwrap_or_else(random_seed),
    };
    let job = GenerateJob {
        prompt,
        max_tokens: req.max_tokens as usize,
        sampling,
        stops: req.stop.clone(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
    model.submit(Job::Generate(job, tx))?;
    model.running.fetch_add(1, Ordering::SeqCst);
    let _running = RunningGuard(&model.running);
    while let Some(event) = rx.recv().await {
        match event {
            GenEvent::Token { id, text } => ctx.event(Event::Token(Token { id, text })).await?,
            GenEvent::Done(s) => {
                return Ok(GenerateReply {
                    tokens: s.tokens,
                    text: s.text,
                    trailing_text: s.flushed,
                    prompt_tokens: s.prompt_tokens as u32,
                    prefill_tokens_per_s: s.prefill_tokens_per_s,
                    decode_tokens_per_s: s.decode_tokens_per_s,
                    stop_reason: s.stop_reason.as_str().to_string(),
                })
            }
            GenEvent::Failed(message) => {
                return Err(ErrorReply::new(ErrorCode::BadRequest, message))
            }
        }
    }
    // The channel closed without a final event: the model failed, or its worker dropped the
    // generation because this client stopped reading its tokens.
    Err(model.unavailable(
        "the generation ended without a result: the model's worker dropped it (was its client \
         reading?) or stopped",
    ))
}

/// `prompt` with `system` put first when it is a conversation that has no system message.
fn with_system_prompt(prompt: Prompt, system: Option<&str>) -> Prompt {
    match (prompt, system) {
        (Prompt::Chat(mut messages), Some(system))
            if messages.first().is_none_or(|m| m.role != "system") =>
        {
            messages.insert(
                0,
                ChatMessage {
                    role: "system".into(),
                    content: system.into(),
                },
            );
            Prompt::Chat(messages)
        }
        (prompt, _) => prompt,
    }
}

/// The request's sampling values, each unset one taken from `defaults`.
fn with_defaults(req: &Sampling, defaults: &Sampling) -> Sampling {
    Sampling {
        temperature: req.temperature.or(defaults.temperature),
        top_k: req.top_k.or(defaults.top_k),
        top_p: req.top_p.or(defaults.top_p),
        min_p: req.min_p.or(defaults.min_p),
        repeat_penalty: req.repeat_penalty.or(defaults.repeat_penalty),
        presence_penalty: req.presence_penalty.or(defaults.presence_penalty),
        seed: req.seed.or(defaults.seed),
    }
}

/// Counts a running generation until dropped.
struct RunningGuard<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A seed for requests that do not give one.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
