//! `POST /v1/chat/completions` and `POST /v1/completions`: the OpenAI request turned into the
//! runtime's checked [`GenerateParams`], the generation started by
//! [`Runtime::generate`](crate::runtime::Runtime::generate), the answer as one JSON body or as
//! server-sent events ending with `data: [DONE]`. A streaming client that disconnects drops the
//! stream, which drops the generation: the worker frees its sequence before its next step.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::openai::{ChatRequest, Common, CompletionRequest};
use super::{ApiState, RequestSlot};
use crate::engine::{GenerationSummary, StopReason};
use crate::runtime::{GenerateParams, Generation, Step};

/// Which endpoint answers: they differ only in the shape of their JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(api): State<Arc<ApiState>>,
    Extension(slot): Extension<RequestSlot>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&api, body)?;
    let prompt = req.prompt()?;
    run(api, slot, Kind::Chat, &req.common, prompt).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(api): State<Arc<ApiState>>,
    Extension(slot): Extension<RequestSlot>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&api, body)?;
    let prompt = req.prompt()?;
    run(api, slot, Kind::Text, &req.common, prompt).await
}

/// The body as `T`: 413 over the size limit, 400 when it is not the JSON expected.
fn parse<T: serde::de::DeserializeOwned>(
    api: &ApiState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(api.max_body_bytes)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// Starts the generation and answers in the form asked.
async fn run(
    api: Arc<ApiState>,
    slot: RequestSlot,
    kind: Kind,
    common: &Common,
    prompt: llmd_shared::Prompt,
) -> Result<Response, ApiError> {
    let request = api
        .state
        .runtime
        .with_declared_defaults(common.generate_request(prompt)?);
    let params = GenerateParams::from_request(request)?;
    let generation = api.state.runtime.generate(params).await?;
    let meta = Meta {
        kind,
        id: format!("{}-{}", kind.id_prefix(), api.next_id()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: common.model.clone(),
    };
    if common.stream {
        Ok(stream(generation, meta, common.include_usage(), slot).into_response())
    } else {
        whole(generation, meta).await
    }
}

/// What every chunk and answer repeats.
struct Meta {
    /// Which endpoint.
    kind: Kind,
    /// The completion's id.
    id: String,
    /// Unix seconds at the start.
    created: u64,
    /// The model as asked.
    model: String,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        }
    }
}

/// OpenAI's `finish_reason` of a stop reason.
fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndOfGeneration | StopReason::StopString => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

/// The `usage` object, with OpenAI's `prompt_tokens_details.cached_tokens`: the prompt tokens
/// the prefix cache served.
fn usage(s: &GenerationSummary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.tokens.len(),
        "total_tokens": s.prompt_tokens + s.tokens.len(),
        "prompt_tokens_details": { "cached_tokens": s.cached_prompt_tokens },
    })
}

/// Waits for the whole generation and answers it as one JSON body.
async fn whole(mut generation: Generation, meta: Meta) -> Result<Response, ApiError> {
    let summary = loop {
        if let Step::Done(s) = generation.next().await? {
            break s;
        }
    };
    let finish = finish_reason(summary.stop_reason);
    let body = match meta.kind {
        Kind::Chat => json!({
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": summary.text},
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage(&summary),
        }),
        Kind::Text => json!({
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0,
                "text": summary.text,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage(&summary),
        }),
    };
    Ok(Json(body).into_response())
}

/// One chunk of a stream: `text` as the delta (chat) or text (completions), with
/// `finish_reason` on the last.
fn chunk(meta: &Meta, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
    match meta.kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({
                "id": meta.id,
                "object": "chat.completion.chunk",
                "created": meta.created,
                "model": meta.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        }
        Kind::Text => json!({
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}],
        }),
    }
}

/// Where a stream is.
enum Phase {
    /// The first chunk (the assistant's role, for chat) is still to be sent.
    Start,
    /// Tokens are flowing.
    Tokens,
    /// The usage chunk (when asked) and `[DONE]` are to be sent.
    Finish(Option<Value>),
    /// `[DONE]` is to be sent.
    Done,
    /// Everything was sent.
    Ended,
}

/// The generation as server-sent events. The stream owns the generation and the request slot,
/// so both are released when it ends or the client goes away.
fn stream(
    generation: Generation,
    meta: Meta,
    include_usage: bool,
    slot: RequestSlot,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let data = |v: Value| Event::default().data(v.to_string());
    let state = (generation, meta, Phase::Start, slot);
    let events = futures_util::stream::unfold(state, move |(g, meta, phase, slot)| async move {
        match phase {
            Phase::Start => {
                let first = match meta.kind {
                    Kind::Chat => Some(data(chunk(&meta, Some(""), true, None))),
                    Kind::Text => None,
                };
                match first {
                    Some(e) => Some((Ok(e), (g, meta, Phase::Tokens, slot))),
                    None => next_token(g, meta, include_usage, slot, data).await,
                }
            }
            Phase::Tokens => next_token(g, meta, include_usage, slot, data).await,
            Phase::Finish(Some(usage)) => {
                let mut v = chunk(&meta, None, false, None);
                v["choices"] = json!([]);
                v["usage"] = usage;
                Some((Ok(data(v)), (g, meta, Phase::Done, slot)))
            }
            Phase::Finish(None) | Phase::Done => Some((
                Ok(Event::default().data("[DONE]")),
                (g, meta, Phase::Ended, slot),
            )),
            Phase::Ended => None,
        }
    });
    Sse::new(events)
}

/// The event after the next step of the generation: a token's text, or the last chunk with
/// the finish reason (and any text held back until the end), or an error event.
async fn next_token(
    mut g: Generation,
    meta: Meta,
    include_usage: bool,
    slot: RequestSlot,
    data: impl Fn(Value) -> Event,
) -> Option<(
    Result<Event, Infallible>,
    (Generation, Meta, Phase, RequestSlot),
)> {
    loop {
        match g.next().await {
            Ok(Step::Token { text, .. }) if text.is_empty() => continue,
            Ok(Step::Token { text, .. }) => {
                let e = data(chunk(&meta, Some(&text), false, None));
                return Some((Ok(e), (g, meta, Phase::Tokens, slot)));
            }
            Ok(Step::Done(s)) => {
                let trailing = (!s.flushed.is_empty()).then_some(s.flushed.as_str());
                let finish = finish_reason(s.stop_reason);
                let e = data(chunk(&meta, trailing, false, Some(finish)));
                let usage = include_usage.then(|| usage(&s));
                return Some((Ok(e), (g, meta, Phase::Finish(usage), slot)));
            }
            Err(e) => {
                let e = data(ApiError::from(e).body());
                return Some((Ok(e), (g, meta, Phase::Done, slot)));
            }
        }
    }
}
