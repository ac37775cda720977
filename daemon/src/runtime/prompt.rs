//! Turning a request's prompt into token ids, off the async runtime.
//!
//! A chat template is code from the model file and a prompt may be megabytes long, so neither
//! runs on the runtime's threads (issue 14: a looping template or a 15 MiB prompt there starved
//! every other client). Each model has [`PromptSlots`]: at most [`RENDER_SLOTS`] template
//! renders and [`TOKENIZE_SLOTS`] tokenizations at once, each on a blocking thread.
//!
//! - A render runs on its step budget (`tokenizer::chat`) and the request waits for it at most
//!   [`TEMPLATE_TIMEOUT`], slot included: past that the request gets `timeout` (or `busy` when
//!   every slot is still held by renders that overran), while the render thread finishes its
//!   budget holding its slot. Raw prompts and other models never wait for renders.
//! - A prompt longer in bytes than the context can hold for this vocabulary
//!   ([`check_prompt_bytes`]) is refused before tokenizing. Tokenization then always finishes
//!   in time proportional to the text, so it is waited for without a limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_shared::Prompt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ErrorKind, RuntimeError};
use llmd_tokenizer::chat::{ChatMessage, ChatTemplate};
use llmd_tokenizer::Tokenizer;

/// How long a request waits for its chat template to render (slot and render together). Real
/// templates render in milliseconds (1,000 messages: under 5 ms); a render still running
/// after this is a template that misbehaves.
pub const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(2);

/// Chat template renders of one model running at once. A render that overruns
/// [`TEMPLATE_TIMEOUT`] keeps its slot until its step budget ends it, so this also bounds the
/// threads one misbehaving template can occupy.
pub const RENDER_SLOTS: usize = 2;

/// Tokenizations of one model running at once: bounds the CPU and memory (the text and its
/// ids) that concurrent long prompts take.
pub const TOKENIZE_SLOTS: usize = 4;

/// Limits on the prompt work one model runs at once.
#[derive(Debug)]
pub struct PromptSlots {
    /// Chat template renders ([`RENDER_SLOTS`]).
    render: Arc<Semaphore>,
    /// Tokenizations ([`TOKENIZE_SLOTS`]).
    tokenize: Arc<Semaphore>,
}

impl Default for PromptSlots {
    fn default() -> Self {
        PromptSlots {
            render: Arc::new(Semaphore::new(RENDER_SLOTS)),
            tokenize: Arc::new(Semaphore::new(TOKENIZE_SLOTS)),
        }
    }
}

/// A model's tokenizer, chat template and slots: what preparing its prompts needs.
#[derive(Clone, Copy)]
pub struct PromptModel<'a> {
    /// The model's name, for messages.
    pub name: &'a str,
    /// Its tokenizer.
    pub tokenizer: &'a Arc<Tokenizer>,
    /// Its chat template.
    pub chat: &'a Arc<ChatTemplate>,
    /// Its slots.
    pub slots: &'a PromptSlots,
}

/// Refuses a prompt of `bytes` bytes that cannot fit a context of `n_ctx` tokens: a prompt must
/// leave at least one position to generate into, and no token of `tokenizer` stands for more
/// than [`Tokenizer::max_token_bytes`] bytes of text.
pub fn check_prompt_bytes(
    bytes: usize,
    n_ctx: usize,
    tokenizer: &Tokenizer,
) -> Result<(), RuntimeError> {
    let per_token = tokenizer.max_token_bytes();
    let most = n_ctx.saturating_sub(1).saturating_mul(per_token);
    if bytes > most {
        return Err(RuntimeError::new(
            ErrorKind::BadRequest,
            format!(
                "the prompt is {bytes} bytes, more than a context of {n_ctx} tokens can hold for \
                 this model ({most} bytes: no token of its vocabulary stands for more than \
                 {per_token}); shorten the prompt or load the model with a larger --ctx"
            ),
        ));
    }
    Ok(())
}

/// The token ids of `prompt` for a generation with a context of `n_ctx` tokens: raw text
/// tokenized as llama.cpp's completion tool does, or a conversation rendered through the chat
/// template (on its budget and time limit) and tokenized with special tokens parsed.
pub async fn prompt_tokens(
    model: PromptModel<'_>,
    prompt: Prompt,
    n_ctx: usize,
) -> Result<Vec<u32>, RuntimeError> {
    match prompt {
        Prompt::Raw(text) => {
            check_prompt_bytes(text.len(), n_ctx, model.tokenizer)?;
            let tokenizer = Arc::clone(model.tokenizer);
            run_tokenizer(model, move || tokenizer.encode(&text, true, true)).await
        }
        Prompt::Chat(messages) => {
            let messages = messages
                .into_iter()
                .map(|m| ChatMessage::new(m.role, m.content))
                .collect();
            let text = render(model, messages).await?;
            check_prompt_bytes(text.len(), n_ctx, model.tokenizer)?;
            let (tokenizer, chat) = (Arc::clone(model.tokenizer), Arc::clone(model.chat));
            run_tokenizer(model, move || chat.encode_rendered(&tokenizer, &text)).await
        }
    }
}

/// Token ids and their pieces for `llmctl tokenize`, computed off the runtime.
pub async fn tokenize_with_pieces(
    model: PromptModel<'_>,
    text: String,
    add_special: bool,
    parse_special: bool,
) -> Result<Vec<(u32, String)>, RuntimeError> {
    let tokenizer = Arc::clone(model.tokenizer);
    run_tokenizer(model, move || {
        tokenizer
            .encode(&text, add_special, parse_special)
            .into_iter()
            .map(|id| {
                let piece = String::from_utf8_lossy(tokenizer.token_to_piece(id, true));
                (id, piece.into_owned())
            })
            .collect()
    })
    .await
}

/// Runs `work` on a blocking thread once one of the model's tokenize slots is free.
async fn run_tokenizer<T: Send + 'static>(
    model: PromptModel<'_>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    let slot = acquire(&model.slots.tokenize).await?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    })
    .await
    .map_err(|e| RuntimeError::new(ErrorKind::Internal, format!("tokenizing failed: {e}")))
}

/// Renders `messages` through the model's chat template (with the generation prompt) on a
/// blocking thread, waiting at most [`TEMPLATE_TIMEOUT`] for a slot and the render together.
async fn render(
    model: PromptModel<'_>,
    messages: Vec<ChatMessage>,
) -> Result<String, RuntimeError> {
    let deadline = Instant::now() + TEMPLATE_TIMEOUT;
    let slots = Arc::clone(&model.slots.render);
    let slot = match tokio::time::timeout_at(deadline.into(), acquire(&slots)).await {
        Ok(slot) => slot?,
        Err(_) => {
            return Err(RuntimeError::new(
                ErrorKind::Busy,
                format!(
                    "every chat template render of model {:?} is still busy after {} s (its \
                     template runs long); retry later, or use --raw",
                    model.name,
                    TEMPLATE_TIMEOUT.as_secs()
                ),
            ))
        }
    };
    let chat = Arc::clone(model.chat);
    let task = tokio::task::spawn_blocking(move || {
        // Held until the render really ends, even after the request gave up on it.
        let _slot = slot;
        chat.render(&messages, true)
    });
    match tokio::time::timeout_at(deadline.into(), task).await {
        Ok(Ok(Ok(text))) => Ok(text),
        Ok(Ok(Err(e))) => Err(RuntimeError::new(ErrorKind::BadRequest, e.to_string())),
        Ok(Err(e)) => Err(RuntimeError::new(
            ErrorKind::Internal,
            format!("the chat template render failed: {e}"),
        )),
        Err(_) => {
            tracing::warn!(
                model = model.name,
                "a chat template render overran {TEMPLATE_TIMEOUT:?}; it keeps a render slot \
                 until its step budget ends it"
            );
            Err(RuntimeError::new(
                ErrorKind::Timeout,
                format!(
                    "the chat template of model {:?} did not finish rendering within {} s; use \
                     --raw to bypass it",
                    model.name,
                    TEMPLATE_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

/// A slot of `slots` (which are never closed).
async fn acquire(slots: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, RuntimeError> {
    Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(|e| RuntimeError::new(ErrorKind::Internal, format!("prompt slots closed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_tokenizer::chat::TemplateOrigin;
    use llmd_tokenizer::testing::spm;
    use llmd_tokenizer::token_type::NORMAL;

    /// A byte-fallback SentencePiece vocabulary with the words "▁hello" and "▁world" (which
    /// only bound the longest token: merges need their parts too).
    fn tokenizer() -> Arc<Tokenizer> {
        let meta = spm(&[("▁hello", -1.0, NORMAL), ("▁world", -1.0, NORMAL)]);
        Arc::new(Tokenizer::from_metadata(&meta).expect("tokenizer"))
    }

    fn template(source: &str) -> Arc<ChatTemplate> {
        Arc::new(
            ChatTemplate::from_source(
                source.to_owned(),
                TemplateOrigin::Model,
                "<s>".into(),
                "</s>".into(),
            )
            .expect("compiles"),
        )
    }

    #[test]
    fn prompts_too_long_for_the_context_are_refused_from_their_length() {
        let t = tokenizer();
        // "▁hello" renders as " hello": 6 bytes per token at most.
        assert_eq!(t.max_token_bytes(), 6);
        check_prompt_bytes(60, 11, &t).expect("10 tokens of 6 bytes fit a context of 11");
        let err = check_prompt_bytes(61, 11, &t).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(err.message.contains("61 bytes"), "{}", err.message);
        assert!(err.message.contains("--ctx"), "{}", err.message);
        assert!(check_prompt_bytes(1, 1, &t).is_err(), "no room to generate");
    }

    #[tokio::test]
    async fn a_runaway_template_gets_an_error_in_time_and_raw_prompts_still_work() {
        let tokenizer = tokenizer();
        let chat = template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        let slots = PromptSlots::default();
        let model = PromptModel {
            name: "m",
            tokenizer: &tokenizer,
            chat: &chat,
            slots: &slots,
        };
        let started = Instant::now();
        let messages = vec![ChatMessage::new("user", "hi")];
        let err = prompt_tokens(model, Prompt::Chat(to_wire(&messages)), 64)
            .await
            .unwrap_err();
        assert!(started.elapsed() < TEMPLATE_TIMEOUT + Duration::from_secs(1));
        assert!(
            matches!(err.kind, ErrorKind::BadRequest | ErrorKind::Timeout),
            "{err:?}"
        );
        assert!(err.message.contains("chat template"), "{}", err.message);
        let ids = prompt_tokens(model, Prompt::Raw("hello world".into()), 64)
            .await
            .expect("raw prompt");
        assert_eq!(ids, tokenizer.encode("hello world", true, true));
    }

    fn to_wire(messages: &[ChatMessage]) -> Vec<llmd_shared::ChatMessage> {
        messages
            .iter()
            .map(|m| llmd_shared::ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect()
    }
}
