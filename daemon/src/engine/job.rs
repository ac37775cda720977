//! What the worker is asked and what it answers: [`Job`]s in (a generation, a benchmark, a
//! closure on the pipeline, a re-split, dropping the retained prefix caches), [`GenEvent`]s out, and the [`WorkerLimits`] it runs
//! under. The types every other engine module and the request handlers share; no logic.

use std::time::Duration;

use tokio::sync::mpsc::Sender;

use super::sampler::SamplingParams;
use crate::model::resplit::LiveSequence;
use crate::model::Pipeline;

/// How long a generation whose client does not read its tokens stays parked before it is
/// dropped (its KV cache and slot freed). The connection itself gives up on such a client
/// after its write timeout (10 s); this bounds the worker's side on its own.
pub const PARK_LIMIT: Duration = Duration::from_secs(30);

/// How long a parked generation keeps its slot when other requests wait for one.
pub const PARK_LIMIT_WHEN_WANTED: Duration = Duration::from_secs(5);

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// The text reached a stop string.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context (KV cache) is full.
    ContextFull,
}

impl StopReason {
    /// The stable name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "eog",
            StopReason::StopString => "stop_string",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextFull => "context_full",
        }
    }
}

/// A generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateJob {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stops: Vec<String>,
}

/// What a generation reports, in order: tokens, then one `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// A generated token and the text it released.
    Token {
        /// Token id.
        id: u32,
        /// Text released with it (may be empty while a character or stop string is pending).
        text: String,
    },
    /// The generation ended.
    Done(GenerationSummary),
    /// The generation failed.
    Failed(String),
}

/// Totals of a finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationSummary {
    /// Every generated token id.
    pub tokens: Vec<u32>,
    /// The generated text (without a stop string).
    pub text: String,
    /// Text released only at the end (an incomplete character turned into U+FFFD); already part
    /// of `text`, but not sent with any token.
    pub flushed: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not computed).
    pub cached_prompt_tokens: usize,
    /// Seconds from admission (a slot and KV cache given) to the first sampled token.
    pub time_to_first_token_s: f64,
    /// Prompt tokens computed (not taken from the prefix cache) per second.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// Result of a benchmark run.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// Prompt tokens processed.
    pub n_prompt: usize,
    /// Tokens generated.
    pub n_gen: usize,
    /// Prompt processing speed (tokens/s), as llama-bench's `pp`.
    pub pp_tokens_per_s: f64,
    /// Generation speed (tokens/s), as llama-bench's `tg`.
    pub tg_tokens_per_s: f64,
}

/// A job for the worker.
pub enum Job {
    /// Generate text; events go to `events` (closed receiver = cancelled).
    Generate(GenerateJob, Sender<GenEvent>),
    /// Measure prefill and decode speed on an empty context.
    Bench {
        /// Prompt tokens.
        n_prompt: usize,
        /// Generated tokens.
        n_gen: usize,
        /// Where the result goes.
        reply: tokio::sync::oneshot::Sender<Result<BenchResult, String>>,
    },
    /// Run a closure on the pipeline between two steps (re-split, inspection of placement).
    WithPipeline(Box<dyn FnOnce(&mut Pipeline) + Send>),
    /// Re-split between two steps: the closure gets the running sequences (whose KV caches must
    /// move with their layers) and says what it did.
    Resplit(ResplitFn),
    /// Drop retained prefix caches now, least recently used first, until `wanted` bytes of KV
    /// memory are free for other work (a load or a re-split that would not fit otherwise:
    /// retained caches never make the daemon refuse what it could do without them).
    DropRetained {
        /// Bytes the other work lacks (`u64::MAX`: drop every retained cache).
        wanted: u64,
        /// Where the bytes freed go (possibly more than `wanted`, a cache being freed whole, or
        /// less when fewer are retained).
        reply: std::sync::mpsc::Sender<u64>,
    },
}

/// A re-split run by the worker between two steps.
pub type ResplitFn = Box<dyn FnOnce(&mut Pipeline, &[LiveSequence]) -> ResplitOutcome + Send>;

/// What a re-split did to the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResplitOutcome {
    /// Nothing changed (refused, or restored after a failure).
    Unchanged,
    /// The new placement is in force; `n_ctx`, if set, is the context for sequences admitted
    /// from now on.
    Applied {
        /// New context length.
        n_ctx: Option<usize>,
    },
    /// The pipeline lost its stages; running generations fail with this message.
    Broken(String),
}

/// Limits of the worker.
#[derive(Clone, Copy, Debug)]
pub struct WorkerLimits {
    /// Context length (KV positions) per sequence at most.
    pub n_ctx: usize,
    /// Tokens per forward step at most (prefill chunk size).
    pub max_batch: usize,
    /// Sequences decoded together at most; further requests wait.
    pub max_sequences: usize,
    /// How long a generation whose client does not read stays parked ([`PARK_LIMIT`]).
    pub park_limit: Duration,
    /// The same while other requests wait for a slot ([`PARK_LIMIT_WHEN_WANTED`]).
    pub park_limit_when_wanted: Duration,
    /// Bytes of KV cache finished generations may keep for later prompts sharing their prefix
    /// (the prefix cache, charged to the devices' ledgers); 0 turns the prefix cache off.
    pub prefix_cache_bytes: u64,
}

impl WorkerLimits {
    /// Limits with the default parking times and no prefix cache.
    pub fn new(n_ctx: usize, max_batch: usize, max_sequences: usize) -> Self {
        WorkerLimits {
            n_ctx,
            max_batch,
            max_sequences,
            park_limit: PARK_LIMIT,
            park_limit_when_wanted: PARK_LIMIT_WHEN_WANTED,
            prefix_cache_bytes: 0,
        }
    }

    /// The same limits with a prefix cache of `bytes` (0: off).
    pub fn with_prefix_cache(mut self, bytes: u64) -> Self {
        self.prefix_cache_bytes = bytes;
        self
    }
}
