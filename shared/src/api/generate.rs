//! `generate` (and `chat`, which sends a conversation), `tokenize` and `bench`.

use serde::{Deserialize, Serialize};

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
    /// Seed of the random draw (default: random).
    pub seed: Option<u64>,
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
    /// Prompt processing speed.
    pub prefill_tokens_per_s: f64,
    /// Generation speed after the first token.
    pub decode_tokens_per_s: f64,
    /// Why it ended: "eog", "stop_string", "max_tokens" or "context_full".
    pub stop_reason: String,
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
