//! `generate`: the request's values checked and the generation started by the runtime
//! ([`Runtime::generate`](crate::runtime::Runtime::generate)), its tokens streamed back as
//! events. If the client goes away, dropping this handler drops the generation and the worker
//! frees the sequence before its next step.

use llmd_shared::{ErrorReply, Event, GenerateReply, GenerateRequest, Token};

use super::{with_progress, Context};
use crate::runtime::{GenerateParams, Step};

/// Runs the generation.
pub async fn handle(req: GenerateRequest, ctx: &Context) -> Result<GenerateReply, ErrorReply> {
    let runtime = &ctx.state.runtime;
    let chat = matches!(req.prompt, llmd_shared::Prompt::Chat(_));
    let params = GenerateParams::from_request(runtime.with_declared_defaults(req))?;
    let (progress, rx) = tokio::sync::mpsc::unbounded_channel();
    let start = async {
        runtime
            .generate_with_progress(params, progress)
            .await
            .map_err(ErrorReply::from)
    };
    let mut generation = with_progress(ctx, rx, start).await?;
    loop {
        match generation.next().await? {
            Step::Token { id, text } => ctx.event(Event::Token(Token { id, text })).await?,
            Step::Done(s) => {
                return Ok(GenerateReply {
                    tokens: s.tokens,
                    text: s.text,
                    trailing_text: s.flushed,
                    prompt_tokens: s.prompt_tokens as u32,
                    cached_prompt_tokens: s.cached_prompt_tokens as u32,
                    time_to_first_token_s: s.time_to_first_token_s,
                    prefill_tokens_per_s: s.prefill_tokens_per_s,
                    decode_tokens_per_s: s.decode_tokens_per_s,
                    stop_reason: s.stop_reason.as_str().to_string(),
                    warning: if chat {
                        generation.model().chat.fallback_warning()
                    } else {
                        None
                    },
                })
            }
        }
    }
}
