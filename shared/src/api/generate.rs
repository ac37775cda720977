//! `generate` (and `chat`, which sends a conversation), `tokenize` and `bench`, and the checks
//! of their values ([`GenerateRequest::validate`], [`Sampling::validate`]) that every front end
//! (the socket handler, `llmctl` before sending, a later HTTP API) applies the same way.

use serde::{Deserialize, Serialize};

use super::{ErrorCode, ErrorReply};

/// Most tokens one generation may ask for (far beyond any context llmd can hold, but it keeps
/// the reply's token list within a frame).
pub const MAX_TOKENS_LIMIT: u32 = 1 << 20;

/// Most messages one conversation may have: a chat template's step budget grows with the
/// messages, and no context holds more turns than this anyway.
pub const MAX_CHAT_MESSAGES: usize = 10_000;

/// Most stop strings one request may give: each is checked against the text after every token.
pub const MAX_STOP_STRINGS: usize = 32;

/// Longest stop string in bytes: text that might begin a stop string is held back from the
/// client, so a longer one would delay the stream by as much.
pub const MAX_STOP_BYTES: usize = 1024;

/// Largest presence penalty either way: logits rarely leave ±30, so a penalty beyond this only
/// says "never" (or "always"), which `top_k`/`temperature` express better.
pub const MAX_PRESENCE_PENALTY: f32 = 100.0;

/// Largest text `tokenize` accepts, in bytes: its reply (id, length and piece per token, a
/// piece up to three bytes for one input byte when it is a lone byte shown as U+FFFD) must fit
/// one frame of [`crate::MAX_FRAME_BYTES`].
pub const MAX_TOKENIZE_BYTES: usize = 1 << 20;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Plain text, tokenized as llama.cpp's completion tool does (BOS as the model says).
    Raw(String),
    /// A conversation rendered with the model's chat template (with the generation prompt).
    Chat(Vec<ChatMessage>),
}

/// Sampling settings; `None` takes llama.cpp's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Top-k (0 = off).
    pub top_k: Option<u32>,
    /// Top-p (1 = off).
    pub top_p: Option<f32>,
    /// Min-p (0 = off).
    pub min_p: Option<f32>,
    /// Repetition penalty (1 = off).
    pub repeat_penalty: Option<f32>,
    /// Presence penalty (0 = off).
    pub presence_penalty: Option<f32>,
    /// Frequency penalty: subtracted once per recent occurrence of a token (0 = off).
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Seed of the random draw (default: random).
    pub seed: Option<u64>,
}

impl Sampling {
    /// Refuses values the sampler cannot use, naming the valid range: NaN or infinite numbers,
    /// a negative temperature, `top_p`/`min_p` outside 0..=1, a repetition penalty that is not
    /// positive, a presence or frequency penalty beyond ±[`MAX_PRESENCE_PENALTY`].
    pub fn validate(&self) -> Result<(), ErrorReply> {
        let check = |name: &str, value: Option<f32>, ok: fn(f32) -> bool, range: &str| match value {
            Some(v) if !(v.is_finite() && ok(v)) => Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!("{name} {v} is out of range: it must be {range}"),
            )),
            _ => Ok(()),
        };
        check(
            "temperature",
            self.temperature,
            |v| v >= 0.0,
            "a finite number of 0 or more (0 is greedy)",
        )?;
        check(
            "top_p",
            self.top_p,
            |v| (0.0..=1.0).contains(&v),
            "between 0 and 1 (1 disables it)",
        )?;
        check(
            "min_p",
            self.min_p,
            |v| (0.0..=1.0).contains(&v),
            "between 0 and 1 (0 disables it)",
        )?;
        check(
            "repeat_penalty",
            self.repeat_penalty,
            |v| v > 0.0,
            "a finite number greater than 0 (1 disables it)",
        )?;
        check(
            "presence_penalty",
            self.presence_penalty,
            |v| v.abs() <= MAX_PRESENCE_PENALTY,
            "between -100 and 100 (0 disables it)",
        )?;
        check(
            "frequency_penalty",
            self.frequency_penalty,
            |v| v.abs() <= MAX_PRESENCE_PENALTY,
            "between -100 and 100 (0 disables it)",
        )
    }
}

/// Generates text; streams [`crate::Token`] events, then a [`GenerateReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The model's name.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Sampling settings.
    pub sampling: Sampling,
    /// Stop strings: generation ends before the first occurrence of any.
    pub stop: Vec<String>,
}

impl GenerateRequest {
    /// Refuses a request whose values cannot be honoured: `max_tokens` outside
    /// 1..=[`MAX_TOKENS_LIMIT`], a conversation of no or more than [`MAX_CHAT_MESSAGES`] messages,
    /// more than [`MAX_STOP_STRINGS`] stop strings or one that is empty
    /// or longer than [`MAX_STOP_BYTES`], an empty conversation, and the sampling values
    /// [`Sampling::validate`] refuses. Each error names the valid range.
    pub fn validate(&self) -> Result<(), ErrorReply> {
        let bad = |message: String| Err(ErrorReply::new(ErrorCode::BadRequest, message));
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return bad(format!(
                "max_tokens {} is out of range: it must be 1 to {MAX_TOKENS_LIMIT}",
                self.max_tokens
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return bad(format!(
                "{} stop strings given; at most {MAX_STOP_STRINGS} are allowed",
                self.stop.len()
            ));
        }
        if let Some(s) = self
            .stop
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return bad(format!(
                "a stop string of {} bytes is out of range: each must be 1 to {MAX_STOP_BYTES} \
                 bytes",
                s.len()
            ));
        }
        if let Prompt::Chat(messages) = &self.prompt {
            if messages.is_empty() || messages.len() > MAX_CHAT_MESSAGES {
                return bad(format!(
                    "the conversation has {} messages; it must have 1 to {MAX_CHAT_MESSAGES}",
                    messages.len()
                ));
            }
        }
        self.sampling.validate()
    }
}

impl TokenizeRequest {
    /// Refuses a text longer than [`MAX_TOKENIZE_BYTES`] (its reply would not fit a frame).
    pub fn validate(&self) -> Result<(), ErrorReply> {
        if self.text.len() > MAX_TOKENIZE_BYTES {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "the text is {} bytes; tokenize takes at most {MAX_TOKENIZE_BYTES} bytes",
                    self.text.len()
                ),
            ));
        }
        Ok(())
    }
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateReply {
    /// Every generated token id.
    pub tokens: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// Text released only at the end (not sent with any token event).
    pub trailing_text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV came from the prefix cache instead of being computed (protocol
    /// 10).
    pub cached_prompt_tokens: u32,
    /// Seconds from admission (a slot and KV cache given) to the first sampled token (protocol
    /// 10).
    pub time_to_first_token_s: f64,
    /// Speed of the prompt tokens computed (those not from the prefix cache).
    pub prefill_tokens_per_s: f64,
    /// Generation speed after the first token.
    pub decode_tokens_per_s: f64,
    /// Why it ended: "eog", "stop_string", "max_tokens" or "context_full".
    pub stop_reason: String,
    /// Why the output may be poor, e.g. a chat rendered with a fallback template because the
    /// model's file has none.
    pub warning: Option<String>,
}

/// Tokenizes text with a model's tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeRequest {
    /// The model's name.
    pub model: String,
    /// The text.
    pub text: String,
    /// Add BOS/EOS as the model says.
    pub add_special: bool,
    /// Recognise special-token text (e.g. `<start_of_turn>`).
    pub parse_special: bool,
}

/// One token of a tokenization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPiece {
    /// Token id.
    pub id: u32,
    /// Its text (bytes that are not UTF-8 shown as U+FFFD).
    pub piece: String,
}

/// The tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeReply {
    /// The tokens in order.
    pub tokens: Vec<TokenPiece>,
}

/// Measures prompt processing and generation speed, as llama-bench does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchRequest {
    /// The model's name.
    pub model: String,
    /// Prompt tokens (`pp` test); 0 skips it.
    pub n_prompt: u32,
    /// Generated tokens (`tg` test, decoding after the `n_prompt` prompt tokens); 0 skips it.
    pub n_gen: u32,
    /// Repetitions; the reply gives the mean.
    pub repetitions: u32,
}

/// Benchmark results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReply {
    /// The model's name.
    pub model: String,
    /// Prompt tokens per run.
    pub n_prompt: u32,
    /// Generated tokens per run.
    pub n_gen: u32,
    /// Threads used.
    pub threads: u32,
    /// Prompt processing, tokens per second (mean over repetitions).
    pub pp: f64,
    /// Generation, tokens per second (mean over repetitions).
    pub tg: f64,
    /// Standard deviation of `pp`.
    pub pp_stddev: f64,
    /// Standard deviation of `tg`.
    pub tg_stddev: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sampling: Sampling) -> GenerateRequest {
        GenerateRequest {
            model: "m".into(),
            prompt: Prompt::Raw("hi".into()),
            max_tokens: 8,
            sampling,
            stop: Vec::new(),
        }
    }

    #[test]
    fn hostile_sampling_values_are_refused_naming_the_range() {
        let cases: [(Sampling, &str); 11] = [
            (
                Sampling {
                    temperature: Some(f32::NAN),
                    ..Default::default()
                },
                "temperature NaN",
            ),
            (
                Sampling {
                    temperature: Some(-0.5),
                    ..Default::default()
                },
                "0 or more",
            ),
            (
                Sampling {
                    top_p: Some(5.0),
                    ..Default::default()
                },
                "between 0 and 1",
            ),
            (
                Sampling {
                    min_p: Some(2.0),
                    ..Default::default()
                },
                "min_p 2",
            ),
            (
                Sampling {
                    repeat_penalty: Some(0.0),
                    ..Default::default()
                },
                "greater than 0",
            ),
            (
                Sampling {
                    repeat_penalty: Some(-1.0),
                    ..Default::default()
                },
                "greater than 0",
            ),
            (
                Sampling {
                    presence_penalty: Some(f32::INFINITY),
                    ..Default::default()
                },
                "presence_penalty inf",
            ),
            (
                Sampling {
                    presence_penalty: Some(-1e6),
                    ..Default::default()
                },
                "-100 and 100",
            ),
            (
                Sampling {
                    frequency_penalty: Some(f32::NAN),
                    ..Default::default()
                },
                "frequency_penalty NaN",
            ),
            (
                Sampling {
                    frequency_penalty: Some(101.0),
                    ..Default::default()
                },
                "-100 and 100",
            ),
            (
                Sampling {
                    temperature: Some(f32::INFINITY),
                    ..Default::default()
                },
                "finite",
            ),
        ];
        for (sampling, want) in cases {
            let err = request(sampling.clone()).validate().unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.contains(want), "{sampling:?}: {}", err.message);
        }
    }

    #[test]
    fn ordinary_values_pass() {
        let ok = Sampling {
            temperature: Some(0.0),
            top_k: Some(0),
            top_p: Some(1.0),
            min_p: Some(0.0),
            repeat_penalty: Some(1.1),
            presence_penalty: Some(-0.5),
            frequency_penalty: Some(0.5),
            seed: Some(1),
        };
        request(ok).validate().unwrap();
        request(Sampling::default()).validate().unwrap();
    }

    #[test]
    fn lengths_and_stops_are_bounded() {
        let mut r = request(Sampling::default());
        r.max_tokens = 0;
        assert!(r.validate().unwrap_err().message.contains("1 to"));
        r.max_tokens = MAX_TOKENS_LIMIT + 1;
        assert!(r.validate().is_err());
        r.max_tokens = 4;
        r.stop = vec![String::new()];
        assert!(r.validate().is_err());
        r.stop = vec!["x".repeat(MAX_STOP_BYTES + 1)];
        assert!(r.validate().is_err());
        r.stop = vec!["x".into(); MAX_STOP_STRINGS + 1];
        assert!(r.validate().is_err());
        r.stop = vec!["</s>".into()];
        r.prompt = Prompt::Chat(Vec::new());
        assert!(r.validate().is_err());
        let t = TokenizeRequest {
            model: "m".into(),
            text: "a".repeat(MAX_TOKENIZE_BYTES + 1),
            add_special: true,
            parse_special: true,
        };
        assert!(t.validate().is_err());
    }
}
