//! Typed model metadata: [`ModelDescription`] (architecture and hyperparameters, read from the
//! `{arch}.*` keys the way llama.cpp names them) and [`TokenizerMetadata`] (the `tokenizer.*`
//! keys). A missing required key or a value of the wrong type is a [`MetadataError`] naming it.

use super::file::GgufFile;
use super::parse::Metadata;
use super::value::{MetadataArray, MetadataValue};

/// Why typed metadata could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetadataError {
    /// A key the model cannot be described without is absent.
    #[error("missing required key {0}")]
    Missing(String),
    /// A key holds a value of the wrong type.
    #[error("key {key} at byte {offset}: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// Where its value is stored.
        offset: u64,
        /// What was expected.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// A key holds a number outside the range of the field it fills.
    #[error("key {key} at byte {offset}: value {value} out of range ({expected})")]
    OutOfRange {
        /// The key.
        key: String,
        /// Where its value is stored.
        offset: u64,
        /// The value, printed.
        value: String,
        /// The range expected.
        expected: &'static str,
    },
    /// A per-layer array does not have one entry per layer.
    #[error(
        "key {key} at byte {offset}: array has {len} entries, expected {expected} (one per layer)"
    )]
    WrongLength {
        /// The key.
        key: String,
        /// Where its value is stored.
        offset: u64,
        /// Entries found.
        len: usize,
        /// Entries expected.
        expected: usize,
    },
}

/// The tokenizer description stored in a GGUF file's `tokenizer.*` keys.
#[derive(Debug, Clone, Default)]
pub struct TokenizerMetadata {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece), "gpt2" (byte-level BPE), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name for BPE vocabularies ("qwen2", "llama-bpe", ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: every token's text, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: per-token scores (SentencePiece log-probabilities).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: per-token type (1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: BPE merges, "left right", highest priority first.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`: end of turn.
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`: end of message.
    pub eom_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.seperator_token_id` (llama.cpp's spelling).
    pub sep_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`: the Jinja chat template.
    pub chat_template: Option<String>,
    /// `general.name`: llama.cpp gives some models' special tokens whitespace-stripping
    /// attributes by name (Phi-3's strip the whitespace after them).
    pub model_name: Option<String>,
    /// `general.architecture`: as `model_name`, for the architectures named by such rules.
    pub architecture: Option<String>,
}

/// GGUF keys of the tokenizer metadata.
pub mod keys {
    /// Tokenizer model kind.
    pub const MODEL: &str = "tokenizer.ggml.model";
    /// Pre-tokenizer name.
    pub const PRE: &str = "tokenizer.ggml.pre";
    /// Token texts.
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    /// Token scores.
    pub const SCORES: &str = "tokenizer.ggml.scores";
    /// Token types.
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    /// BPE merges.
    pub const MERGES: &str = "tokenizer.ggml.merges";
    /// Beginning of sequence.
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    /// End of sequence.
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    /// End of turn.
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    /// End of message.
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    /// Unknown token.
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    /// Padding.
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    /// Separator (misspelt as llama.cpp does).
    pub const SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
    /// Whether to prepend BOS.
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    /// Whether to append EOS.
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    /// Whether SentencePiece adds a leading space.
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// Jinja chat template.
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
    /// Architecture name.
    pub const ARCHITECTURE: &str = "general.architecture";
    /// Model name.
    pub const NAME: &str = "general.name";
    /// File type (llama_ftype).
    pub const FILE_TYPE: &str = "general.file_type";
    /// Quantization version.
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
}

/// Typed access to a [`Metadata`] with errors naming the key.
struct Typed<'a>(&'a Metadata);

impl Typed<'_> {
    fn wrong(&self, key: &str, expected: &'static str) -> MetadataError {
        match self.0.entry(key) {
            Some(e) => MetadataError::WrongType {
                key: key.to_owned(),
                offset: e.offset,
                expected,
                found: e.value.type_description(),
            },
            None => MetadataError::Missing(key.to_owned()),
        }
    }

    fn offset(&self, key: &str) -> u64 {
        self.0.entry(key).map_or(0, |e| e.offset)
    }

    fn u32_opt(&self, key: &str) -> Result<Option<u32>, MetadataError> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let i = v.as_i128().ok_or_else(|| self.wrong(key, "an integer"))?;
        u32::try_from(i)
            .map(Some)
            .map_err(|_| MetadataError::OutOfRange {
                key: key.to_owned(),
                offset: self.offset(key),
                value: i.to_string(),
                expected: "0 to 4294967295",
            })
    }

    fn u32_req(&self, key: &str) -> Result<u32, MetadataError> {
        self.u32_opt(key)?
            .ok_or_else(|| MetadataError::Missing(key.to_owned()))
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>, MetadataError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| self.wrong(key, "a number")),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>, MetadataError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a bool")),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<String>, MetadataError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| self.wrong(key, "a string")),
        }
    }

    fn str_req(&self, key: &str) -> Result<String, MetadataError> {
        self.str_opt(key)?
            .ok_or_else(|| MetadataError::Missing(key.to_owned()))
    }

    fn strings_opt(&self, key: &str) -> Result<Option<Vec<String>>, MetadataError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(MetadataValue::Array(MetadataArray::String(v))) => Ok(Some(v.clone())),
            Some(_) => Err(self.wrong(key, "an array of strings")),
        }
    }

    fn f32s_opt(&self, key: &str) -> Result<Option<Vec<f32>>, MetadataError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(MetadataValue::Array(MetadataArray::F32(v))) => Ok(Some(v.clone())),
            Some(MetadataValue::Array(a)) => a
                .to_f64_vec()
                .map(|v| Some(v.into_iter().map(|x| x as f32).collect()))
                .ok_or_else(|| self.wrong(key, "an array of numbers")),
            Some(_) => Err(self.wrong(key, "an array of numbers")),
        }
    }

    fn i32s_opt(&self, key: &str) -> Result<Option<Vec<i32>>, MetadataError> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let ints = v
            .as_array()
            .and_then(MetadataArray::to_i128_vec)
            .ok_or_else(|| self.wrong(key, "an array of integers"))?;
        ints.into_iter()
            .map(|i| {
                i32::try_from(i).map_err(|_| MetadataError::OutOfRange {
                    key: key.to_owned(),
                    offset: self.offset(key),
                    value: i.to_string(),
                    expected: "an i32",
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A value that is either one integer for every layer or an array with one per layer.
    fn per_layer_opt(&self, key: &str, n_layer: u32) -> Result<Option<Vec<u32>>, MetadataError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(MetadataValue::Array(a)) => {
                let ints = a
                    .to_i128_vec()
                    .ok_or_else(|| self.wrong(key, "an integer or an array of integers"))?;
                if ints.len() != n_layer as usize {
                    return Err(MetadataError::WrongLength {
                        key: key.to_owned(),
                        offset: self.offset(key),
                        len: ints.len(),
                        expected: n_layer as usize,
                    });
                }
                ints.into_iter()
                    .map(|i| {
                        u32::try_from(i).map_err(|_| MetadataError::OutOfRange {
                            key: key.to_owned(),
                            offset: self.offset(key),
                            value: i.to_string(),
                            expected: "0 to 4294967295",
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            }
            Some(_) => {
                let v = self.u32_req(key)?;
                Ok(Some(vec![v; n_layer as usize]))
            }
        }
    }
}

impl TokenizerMetadata {
    /// Reads the `tokenizer.*` keys. `tokenizer.ggml.model` and `tokenizer.ggml.tokens` are
    /// required; everything else is optional.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, MetadataError> {
        Self::from_metadata(file.metadata())
    }

    /// Reads the `tokenizer.*` keys from parsed metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self, MetadataError> {
        let t = Typed(md);
        let tokens = t
            .strings_opt(keys::TOKENS)?
            .ok_or_else(|| MetadataError::Missing(keys::TOKENS.to_owned()))?;
        let n = tokens.len();
        let check_len = |key: &str, len: usize| {
            if len == n {
                Ok(())
            } else {
                Err(MetadataError::WrongLength {
                    key: key.to_owned(),
                    offset: t.offset(key),
                    len,
                    expected: n,
                })
            }
        };
        let scores = t.f32s_opt(keys::SCORES)?;
        if let Some(s) = &scores {
            check_len(keys::SCORES, s.len())?;
        }
        let token_types = t.i32s_opt(keys::TOKEN_TYPE)?;
        if let Some(s) = &token_types {
            check_len(keys::TOKEN_TYPE, s.len())?;
        }
        Ok(TokenizerMetadata {
            model: t.str_req(keys::MODEL)?,
            pre: t.str_opt(keys::PRE)?,
            tokens,
            scores,
            token_types,
            merges: t.strings_opt(keys::MERGES)?,
            bos_token_id: t.u32_opt(keys::BOS_ID)?,
            eos_token_id: t.u32_opt(keys::EOS_ID)?,
            eot_token_id: t.u32_opt(keys::EOT_ID)?,
            eom_token_id: t.u32_opt(keys::EOM_ID)?,
            unknown_token_id: t.u32_opt(keys::UNK_ID)?,
            padding_token_id: t.u32_opt(keys::PAD_ID)?,
            sep_token_id: t.u32_opt(keys::SEP_ID)?,
            add_bos_token: t.bool_opt(keys::ADD_BOS)?,
            add_eos_token: t.bool_opt(keys::ADD_EOS)?,
            add_space_prefix: t.bool_opt(keys::ADD_SPACE_PREFIX)?,
            chat_template: t.str_opt(keys::CHAT_TEMPLATE)?,
            model_name: t.str_opt(keys::NAME)?,
            architecture: t.str_opt(keys::ARCHITECTURE)?,
        })
    }
}

/// Which normalisation the epsilon belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm (`{arch}.attention.layer_norm_rms_epsilon`).
    Rms,
    /// LayerNorm (`{arch}.attention.layer_norm_epsilon`).
    Layer,
}

/// Rotary position embedding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// `{arch}.rope.freq_base` (default 10000).
    pub freq_base: f32,
    /// `{arch}.rope.freq_base_swa`: the base for sliding-window layers, if the file sets one
    /// (llama.cpp's default for such layers is 10000).
    pub freq_base_swa: Option<f32>,
    /// `{arch}.rope.dimension_count`: how many dimensions of each head are rotated
    /// (default: the key head dimension).
    pub dimension_count: u32,
    /// `{arch}.rope.scaling.type` ("none", "linear", "yarn", "llama3", ...).
    pub scaling_type: Option<String>,
    /// `{arch}.rope.scaling.factor`, else the older `{arch}.rope.scale_linear` (as llama.cpp
    /// reads them).
    pub scaling_factor: Option<f32>,
    /// `{arch}.rope.scaling.original_context_length`.
    pub scaling_original_context: Option<u32>,
    /// `{arch}.rope.scaling.attn_factor`.
    pub scaling_attn_factor: Option<f32>,
}

/// Which layers use sliding-window attention, when the file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlidingWindowPattern {
    /// `{arch}.attention.sliding_window_pattern` as an integer n: in each group of n layers the
    /// last is global and the others use the sliding window (n = 0: every layer is windowed).
    Period(u32),
    /// `{arch}.attention.sliding_window_pattern` as a bool array: `true` for windowed layers.
    PerLayer(Vec<bool>),
}

/// A model's architecture and hyperparameters, as its GGUF metadata states them.
#[derive(Debug, Clone)]
pub struct ModelDescription {
    /// `general.architecture` ("llama", "qwen2", "gemma3", ...); whether it is supported is for
    /// the inference code to decide.
    pub architecture: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// `{arch}.block_count`: number of transformer layers.
    pub n_layer: u32,
    /// `{arch}.embedding_length`: hidden size.
    pub n_embd: u32,
    /// `{arch}.feed_forward_length` per layer (a scalar in the file is repeated).
    pub n_ff: Vec<u32>,
    /// `{arch}.attention.head_count` per layer.
    pub n_head: Vec<u32>,
    /// `{arch}.attention.head_count_kv` per layer (default: `n_head`).
    pub n_head_kv: Vec<u32>,
    /// `{arch}.attention.key_length` (default `n_embd / n_head`).
    pub head_dim_k: u32,
    /// `{arch}.attention.value_length` (default `n_embd / n_head`).
    pub head_dim_v: u32,
    /// Rotary position embedding settings.
    pub rope: RopeConfig,
    /// `{arch}.attention.sliding_window`: window size of sliding-window layers, if any.
    pub sliding_window: Option<u32>,
    /// `{arch}.attention.sliding_window_pattern`, if present.
    pub sliding_window_pattern: Option<SlidingWindowPattern>,
    /// Normalisation epsilon.
    pub norm_eps: f32,
    /// Which normalisation `norm_eps` is for.
    pub norm_kind: NormKind,
    /// `{arch}.context_length`: the training context.
    pub context_length: u32,
    /// `{arch}.vocab_size`, or the number of tokens.
    pub vocab_size: u32,
    /// `general.file_type` (llama.cpp's `llama_ftype`), if present.
    pub file_type: Option<u32>,
    /// `{arch}.attn_logit_softcapping`, if present.
    pub attn_logit_softcapping: Option<f32>,
    /// `{arch}.final_logit_softcapping`, if present.
    pub final_logit_softcapping: Option<f32>,
    /// `{arch}.expert_count`: experts per MoE layer, if the model is a mixture of experts.
    pub expert_count: Option<u32>,
    /// `{arch}.expert_used_count`: experts used per token, if MoE.
    pub expert_used_count: Option<u32>,
    /// `{arch}.expert_feed_forward_length`: the feed-forward width of each expert, where it
    /// differs from `feed_forward_length` (Qwen3-MoE).
    pub expert_feed_forward_length: Option<u32>,
    /// `{arch}.expert_shared_feed_forward_length`: the width of the shared expert every token
    /// goes through beside its routed ones (Qwen2-MoE), where the file states it.
    pub expert_shared_feed_forward_length: Option<u32>,
    /// The tokenizer.
    pub tokenizer: TokenizerMetadata,
}

impl ModelDescription {
    /// Reads the typed description from a file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, MetadataError> {
        Self::from_metadata(file.metadata())
    }

    /// Reads the typed description from parsed metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self, MetadataError> {
        let t = Typed(md);
        let arch = t.str_req(keys::ARCHITECTURE)?;
        let k = |suffix: &str| format!("{arch}.{suffix}");
        let nonzero = |key: String, v: u32| {
            if v == 0 {
                Err(MetadataError::OutOfRange {
                    offset: t.offset(&key),
                    key,
                    value: "0".into(),
                    expected: "must be nonzero",
                })
            } else {
                Ok(v)
            }
        };

        let n_layer = nonzero(k("block_count"), t.u32_req(&k("block_count"))?)?;
        let n_embd = nonzero(k("embedding_length"), t.u32_req(&k("embedding_length"))?)?;
        let n_ff = t
            .per_layer_opt(&k("feed_forward_length"), n_layer)?
            .ok_or_else(|| MetadataError::Missing(k("feed_forward_length")))?;
        let n_head = t
            .per_layer_opt(&k("attention.head_count"), n_layer)?
            .ok_or_else(|| MetadataError::Missing(k("attention.head_count")))?;
        let n_head0 = nonzero(k("attention.head_count"), n_head[0])?;
        let n_head_kv = t
            .per_layer_opt(&k("attention.head_count_kv"), n_layer)?
            .unwrap_or_else(|| n_head.clone());
        let head_dim_k = match t.u32_opt(&k("attention.key_length"))? {
            Some(v) => nonzero(k("attention.key_length"), v)?,
            None => n_embd / n_head0,
        };
        let head_dim_v = match t.u32_opt(&k("attention.value_length"))? {
            Some(v) => nonzero(k("attention.value_length"), v)?,
            None => n_embd / n_head0,
        };

        let rope = RopeConfig {
            freq_base: t.f32_opt(&k("rope.freq_base"))?.unwrap_or(10000.0),
            freq_base_swa: t.f32_opt(&k("rope.freq_base_swa"))?,
            dimension_count: t.u32_opt(&k("rope.dimension_count"))?.unwrap_or(head_dim_k),
            scaling_type: t.str_opt(&k("rope.scaling.type"))?,
            scaling_factor: match t.f32_opt(&k("rope.scaling.factor"))? {
                Some(f) => Some(f),
                None => t.f32_opt(&k("rope.scale_linear"))?,
            },
            scaling_original_context: t.u32_opt(&k("rope.scaling.original_context_length"))?,
            scaling_attn_factor: t.f32_opt(&k("rope.scaling.attn_factor"))?,
        };

        let pattern_key = k("attention.sliding_window_pattern");
        let sliding_window_pattern = match md.get(&pattern_key) {
            None => None,
            Some(MetadataValue::Array(MetadataArray::Bool(v))) => {
                if v.len() != n_layer as usize {
                    return Err(MetadataError::WrongLength {
                        offset: t.offset(&pattern_key),
                        key: pattern_key,
                        len: v.len(),
                        expected: n_layer as usize,
                    });
                }
                Some(SlidingWindowPattern::PerLayer(v.clone()))
            }
            Some(MetadataValue::Array(_)) => {
                return Err(t.wrong(&pattern_key, "an integer or an array of bools"))
            }
            Some(_) => Some(SlidingWindowPattern::Period(t.u32_req(&pattern_key)?)),
        };

        let (norm_eps, norm_kind) = match t.f32_opt(&k("attention.layer_norm_rms_epsilon"))? {
            Some(e) => (e, NormKind::Rms),
            None => match t.f32_opt(&k("attention.layer_norm_epsilon"))? {
                Some(e) => (e, NormKind::Layer),
                None => {
                    return Err(MetadataError::Missing(k(
                        "attention.layer_norm_rms_epsilon",
                    )))
                }
            },
        };

        let tokenizer = TokenizerMetadata::from_metadata(md)?;
        let vocab_size = match t.u32_opt(&k("vocab_size"))? {
            Some(v) => v,
            None => {
                u32::try_from(tokenizer.tokens.len()).map_err(|_| MetadataError::OutOfRange {
                    key: keys::TOKENS.to_owned(),
                    offset: t.offset(keys::TOKENS),
                    value: tokenizer.tokens.len().to_string(),
                    expected: "at most 4294967295 tokens",
                })?
            }
        };

        Ok(ModelDescription {
            name: t.str_opt(keys::NAME)?,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            rope,
            sliding_window: t.u32_opt(&k("attention.sliding_window"))?,
            sliding_window_pattern,
            norm_eps,
            norm_kind,
            context_length: t.u32_req(&k("context_length"))?,
            vocab_size,
            file_type: t.u32_opt(keys::FILE_TYPE)?,
            attn_logit_softcapping: t.f32_opt(&k("attn_logit_softcapping"))?,
            final_logit_softcapping: t.f32_opt(&k("final_logit_softcapping"))?,
            expert_count: t.u32_opt(&k("expert_count"))?,
            expert_used_count: t.u32_opt(&k("expert_used_count"))?,
            expert_feed_forward_length: t.u32_opt(&k("expert_feed_forward_length"))?,
            expert_shared_feed_forward_length: t
                .u32_opt(&k("expert_shared_feed_forward_length"))?,
            tokenizer,
            architecture: arch,
        })
    }

    /// Whether layer `il` uses sliding-window attention, as far as the metadata says: only when
    /// a window is set; a pattern from the file wins, otherwise `default_period` (llama.cpp uses
    /// 6 for gemma3) is applied.
    pub fn is_sliding_window_layer(&self, il: u32, default_period: u32) -> bool {
        self.sliding_window.unwrap_or(0) != 0 && self.in_swa_pattern(il, default_period)
    }

    /// Whether the sliding-window pattern marks layer `il` as windowed, whether or not the file
    /// states a window (Gemma 2 has a default one): the file's pattern, else `default_period`.
    pub fn in_swa_pattern(&self, il: u32, default_period: u32) -> bool {
        match &self.sliding_window_pattern {
            Some(SlidingWindowPattern::PerLayer(v)) => v.get(il as usize).copied().unwrap_or(false),
            Some(SlidingWindowPattern::Period(n)) => period_is_swa(il, *n),
            None => period_is_swa(il, default_period),
        }
    }
}

/// llama.cpp's `set_swa_pattern` rule: in each group of `n` layers all but the last are windowed.
fn period_is_swa(il: u32, n: u32) -> bool {
    n == 0 || il % n < n - 1
}
