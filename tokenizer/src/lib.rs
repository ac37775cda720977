//! Tokenizers built from GGUF metadata, token-for-token the same as llama.cpp's `llama-vocab.cpp`.
//!
//! - [`Tokenizer`]: the vocabulary with its special tokens; [`Tokenizer::encode`] (text to ids,
//!   with llama.cpp's `add_special` / `parse_special` semantics), [`Tokenizer::token_to_piece`]
//!   and [`Tokenizer::decode`] (ids to bytes), [`Tokenizer::is_eog`].
//! - `spm`: SentencePiece-style merges by score with byte fallback (`"llama"` vocabularies,
//!   e.g. Gemma 3). `bpe` and [`pretokenize`]: byte-level BPE (`"gpt2"` vocabularies, e.g.
//!   Llama 3, Qwen2) with the pre-tokenizer of `tokenizer.ggml.pre` (`tekken`: Mistral's,
//!   whose lookaheads get a matcher of their own).
//! - [`stream`]: [`StreamDecoder`], which turns a stream of ids into text only at complete
//!   UTF-8 characters. [`chat`]: chat templates.
//! - `unicode`: codepoint categories and the GPT-2 byte map.
//! - `testing` (feature `testing`, for other crates' unit tests): hand-made vocabularies.
//! - `tests`: unit tests on hand-made vocabularies; the real ones are compared with llama.cpp in
//!   `src/it/reference.rs` and `src/it/chat.rs`.
//!
//! Depends on the GGUF crate for [`TokenizerMetadata`] and on nothing of the daemon: no async
//! runtime, no device library, no wire protocol.

mod bpe;
pub mod chat;
#[cfg(test)]
mod it;
mod merge;
pub mod pretokenize;
mod spm;
pub mod stream;
mod tekken;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod unicode;

use std::collections::{BTreeSet, HashMap};

pub use chat::{ChatError, ChatMessage, ChatTemplate, TemplateOrigin};
pub use llmd_gguf::TokenizerMetadata;
pub use pretokenize::PreTokenizerKind;
pub use stream::StreamDecoder;

use pretokenize::PreTokenizer;

/// The least [`Tokenizer::max_token_bytes`] reports: one UTF-8 character, the most input a
/// character missing from the vocabulary (and without byte tokens) takes with it.
pub const MIN_TOKEN_COVER_BYTES: usize = 4;

/// Errors building a [`Tokenizer`] from metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("unsupported tokenizer model '{0}' (supported: 'llama' SentencePiece, 'gpt2' byte-level BPE)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.tokens` is empty.
    #[error("the vocabulary (tokenizer.ggml.tokens) is empty")]
    EmptyVocab,
    /// The vocabulary is too large: more tokens than ids can address, or more than 4 GiB of
    /// token text.
    #[error("the vocabulary of {0} tokens is too large to index")]
    TooManyTokens(usize),
    /// A per-token array is shorter than the vocabulary.
    #[error("{key} has {got} entries but the vocabulary has {tokens} tokens")]
    ShortArray {
        /// The GGUF key of the array.
        key: &'static str,
        /// Its length.
        got: usize,
        /// The vocabulary size.
        tokens: usize,
    },
    /// Two tokens have the same text (llama.cpp refuses such a vocabulary too).
    #[error("token text {text:?} appears twice (ids {first} and {second})")]
    DuplicateToken {
        /// The text.
        text: String,
        /// The first id with it.
        first: u32,
        /// The second id with it.
        second: u32,
    },
    /// A byte-level BPE vocabulary without `tokenizer.ggml.merges`.
    #[error("byte-level BPE vocabulary without tokenizer.ggml.merges")]
    MissingMerges,
    /// A pre-tokenizer expression failed to compile (a defect in this crate).
    #[error("pre-tokenizer expression failed to compile: {0}")]
    Regex(String),
}

/// Token attributes (llama.cpp's `llama_token_attr`), a bit set.
mod attr {
    /// `<unk>`-like.
    pub const UNKNOWN: u16 = 1 << 0;
    /// Unused slot.
    pub const UNUSED: u16 = 1 << 1;
    /// Ordinary text token.
    pub const NORMAL: u16 = 1 << 2;
    /// Control token (BOS, EOS, turn markers): rendered only on request.
    pub const CONTROL: u16 = 1 << 3;
    /// User-defined token: always split out of text before tokenization, always rendered.
    pub const USER_DEFINED: u16 = 1 << 4;
    /// Byte fallback token `<0xXX>`.
    pub const BYTE: u16 = 1 << 5;
    /// A special token that swallows the whitespace before it when split out of text.
    pub const LSTRIP: u16 = 1 << 6;
    /// A special token that swallows the whitespace after it when split out of text.
    pub const RSTRIP: u16 = 1 << 7;
}

/// C's `isspace` in the "C" locale, which llama.cpp's stripping uses (it includes the vertical
/// tab, which `u8::is_ascii_whitespace` does not).
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// llama.cpp's per-model stripping attributes (`llama_vocab::impl::load`, "set attributes by
/// model/tokenizer/architecture name"): Phi-3's special tokens strip the whitespace after them
/// (except `<unk>`, `<s>` and `<|endoftext|>`), a few encoders' mask token the whitespace before
/// it. `special` are the special tokens' ids.
fn set_strip_attributes(
    tokens: &mut [TokenData],
    token_to_id: &HashMap<String, u32>,
    special: &[u32],
    meta: &TokenizerMetadata,
) {
    let name = meta.model_name.as_deref().unwrap_or("").to_lowercase();
    let pre = meta.pre.as_deref().unwrap_or("");
    let arch = meta.architecture.as_deref().unwrap_or("");
    let contains_any = |s: &str, needles: &[&str]| needles.iter().any(|n| s.contains(n));
    let set = |tokens: &mut [TokenData], text: &str, bit: u16, on: bool| {
        if let Some(&id) = token_to_id.get(text) {
            let t = &mut tokens[id as usize];
            t.attr = if on { t.attr | bit } else { t.attr & !bit };
        }
    };
    if contains_any(pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"])
        || contains_any(arch, &["nomic-bert-moe", "jina-bert-v3"])
    {
        set(tokens, "<mask>", attr::LSTRIP, true);
    } else if contains_any(&name, &["phi-3", "phi3"]) {
        for &id in special {
            tokens[id as usize].attr |= attr::RSTRIP;
        }
        set(tokens, "</s>", attr::RSTRIP, true);
        for text in ["<unk>", "<s>", "<|endoftext|>"] {
            set(tokens, text, attr::RSTRIP, false);
        }
    } else if name.contains("modern-bert") {
        set(tokens, "[MASK]", attr::LSTRIP, true);
    }
}

/// Token type codes of `tokenizer.ggml.token_type`.
pub mod token_type {
    /// Normal.
    pub const NORMAL: i32 = 1;
    /// Unknown.
    pub const UNKNOWN: i32 = 2;
    /// Control.
    pub const CONTROL: i32 = 3;
    /// User-defined.
    pub const USER_DEFINED: i32 = 4;
    /// Unused.
    pub const UNUSED: i32 = 5;
    /// Byte.
    pub const BYTE: i32 = 6;
}

/// Texts llama.cpp takes for an end-of-turn token when the GGUF names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Texts of fill-in-the-middle tokens that end generation (pad, repo, file separator).
const FIM_EOG_TEXTS: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

/// Texts llama.cpp treats as end of generation wherever they appear in a vocabulary.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// `▁` (U+2581), SentencePiece's escaped space.
const SPM_SPACE: &str = "\u{2581}";

/// llama.cpp's defaults for a model type, before the GGUF keys override them.
#[derive(Clone, Copy, Debug)]
struct Defaults {
    /// BOS id.
    bos: Option<u32>,
    /// EOS id.
    eos: Option<u32>,
    /// Unknown-token id.
    unk: Option<u32>,
    /// Add BOS with `add_special`.
    add_bos: bool,
    /// SentencePiece space prefix.
    add_space_prefix: bool,
    /// Detokenizer space clean-up.
    clean_spaces: bool,
    /// BPE: whole-token words skip merges.
    ignore_merges: bool,
}

/// Which algorithm turns text into ids.
#[derive(Debug)]
enum Algorithm {
    /// SentencePiece merges by score (`"llama"`).
    Spm,
    /// Byte-level BPE (`"gpt2"`) with its pre-tokenizer.
    Bpe(PreTokenizer),
}

/// One vocabulary entry.
#[derive(Debug)]
struct TokenData {
    /// The token's text as stored in the GGUF.
    text: String,
    /// SentencePiece score (0 when the file has none).
    score: f32,
    /// [`attr`] bits.
    attr: u16,
}

/// A piece of input text after special tokens are split out.
#[derive(Clone, Copy, Debug)]
enum Fragment {
    /// Plain text, a byte range of the input.
    Text(usize, usize),
    /// A special token found verbatim in the input.
    Token(u32),
}

/// A tokenizer: vocabulary, merges, special tokens and the rules llama.cpp applies to them.
pub struct Tokenizer {
    /// SentencePiece or BPE.
    algorithm: Algorithm,
    /// Entries by id.
    tokens: Vec<TokenData>,
    /// Id by text.
    token_to_id: HashMap<String, u32>,
    /// BPE merge rank by "left right" text (empty for SentencePiece).
    merges: HashMap<String, u32>,
    /// Byte fallback token of each byte (SentencePiece `<0xXX>`).
    byte_tokens: [Option<u32>; 256],
    /// Control, user-defined and unknown tokens, longest text first: the order in which they are
    /// split out of input text.
    special_tokens: Vec<u32>,
    /// Every token's rendering with `special = true` (llama.cpp's piece cache), concatenated.
    piece_bytes: Vec<u8>,
    /// Token `id`'s piece is `piece_bytes[piece_ends[id - 1]..piece_ends[id]]` (0 for id 0).
    piece_ends: Vec<u32>,
    /// Beginning of sequence.
    bos: Option<u32>,
    /// End of sequence.
    eos: Option<u32>,
    /// End of turn.
    eot: Option<u32>,
    /// End of message.
    eom: Option<u32>,
    /// Unknown.
    unk: Option<u32>,
    /// Separator.
    sep: Option<u32>,
    /// Padding.
    pad: Option<u32>,
    /// Every token that ends generation.
    eog: BTreeSet<u32>,
    /// Add BOS when encoding with `add_special`.
    add_bos: bool,
    /// Add EOS when encoding with `add_special`.
    add_eos: bool,
    /// SentencePiece: prefix text that follows the start or a special token with a space.
    add_space_prefix: bool,
    /// Detokenizer clean-up of spaces before punctuation and contractions.
    clean_spaces: bool,
    /// BPE: emit a pre-tokenized word whole when it is a token.
    ignore_merges: bool,
    /// Most bytes of input text one token can stand for (see [`Tokenizer::max_token_bytes`]),
    /// so a prompt too long for a context is refused from its length, before tokenizing.
    max_token_bytes: usize,
}

impl std::fmt::Debug for Tokenizer {
    /// A summary: the vocabulary itself is far too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithm = match &self.algorithm {
            Algorithm::Spm => "spm".to_owned(),
            Algorithm::Bpe(pre) => format!("bpe ({:?})", pre.kind()),
        };
        f.debug_struct("Tokenizer")
            .field("algorithm", &algorithm)
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("special_tokens", &self.special_tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes, with llama.cpp's defaults for whatever it
    /// leaves out. An unknown or missing BPE pre-tokenizer falls back to llama.cpp's
    /// `"default"` expressions with a logged warning (llama.cpp itself refuses unknown names).
    pub fn from_metadata(meta: &TokenizerMetadata) -> Result<Self, TokenizerError> {
        let n_tokens = meta.tokens.len();
        if n_tokens == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n_tokens).is_err() || n_tokens >= i32::MAX as usize {
            return Err(TokenizerError::TooManyTokens(n_tokens));
        }

        // Model type and its defaults (llama_vocab::impl::load).
        let (algorithm, defaults) = match meta.model.as_str() {
            "llama" => (
                Algorithm::Spm,
                Defaults {
                    bos: Some(1),
                    eos: Some(2),
                    unk: Some(0),
                    add_bos: true,
                    add_space_prefix: true,
                    clean_spaces: false,
                    ignore_merges: false,
                },
            ),
            "gpt2" => {
                let kind = match meta.pre.as_deref() {
                    None | Some("") => {
                        tracing::warn!(
                            "tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer; \
                             tokenization quality may be degraded"
                        );
                        PreTokenizerKind::Default
                    }
                    Some(name) => PreTokenizerKind::from_name(name).unwrap_or_else(|| {
                        tracing::warn!(
                            pre = name,
                            "unknown pre-tokenizer: using the 'default' one; \
                             tokenization may differ from the model's"
                        );
                        PreTokenizerKind::Default
                    }),
                };
                (
                    Algorithm::Bpe(PreTokenizer::new(kind)?),
                    Defaults {
                        bos: Some(11),
                        eos: Some(11),
                        unk: None,
                        add_bos: kind.default_add_bos(),
                        add_space_prefix: false,
                        clean_spaces: kind.clean_spaces(),
                        ignore_merges: kind.ignore_merges(),
                    },
                )
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let Defaults {
            mut bos,
            mut eos,
            mut unk,
            mut add_bos,
            add_space_prefix: space_prefix,
            clean_spaces,
            ignore_merges,
        } = defaults;
        let add_space_prefix = meta.add_space_prefix.unwrap_or(space_prefix);

        if let Some(scores) = &meta.scores {
            if scores.len() < n_tokens {
                return Err(TokenizerError::ShortArray {
                    key: "tokenizer.ggml.scores",
                    got: scores.len(),
                    tokens: n_tokens,
                });
            }
        }
        if let Some(types) = &meta.token_types {
            if types.len() < n_tokens {
                return Err(TokenizerError::ShortArray {
                    key: "tokenizer.ggml.token_type",
                    got: types.len(),
                    tokens: n_tokens,
                });
            }
        }

        let mut tokens = Vec::with_capacity(n_tokens);
        let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n_tokens);
        for (i, text) in meta.tokens.iter().enumerate() {
            let id = i as u32;
            let text = if text.is_empty() {
                tracing::warn!(id, "empty token text");
                format!("[EMPTY_{i}]")
            } else {
                text.clone()
            };
            let score = meta.scores.as_ref().map_or(0.0, |s| s[i]);
            let attr = match meta.token_types.as_ref().map(|t| t[i]) {
                None | Some(token_type::NORMAL) => attr::NORMAL,
                Some(token_type::UNKNOWN) => attr::UNKNOWN,
                Some(token_type::CONTROL) => attr::CONTROL,
                Some(token_type::USER_DEFINED) => attr::USER_DEFINED,
                Some(token_type::UNUSED) => attr::UNUSED,
                Some(token_type::BYTE) => attr::BYTE,
                Some(_) => 0,
            };
            if let Some(&first) = token_to_id.get(&text) {
                return Err(TokenizerError::DuplicateToken {
                    text,
                    first,
                    second: id,
                });
            }
            token_to_id.insert(text.clone(), id);
            tokens.push(TokenData { text, score, attr });
        }

        let mut merges = HashMap::new();
        if let Algorithm::Bpe(_) = algorithm {
            let list = meta.merges.as_ref().ok_or(TokenizerError::MissingMerges)?;
            merges.reserve(list.len());
            for (rank, merge) in list.iter().enumerate() {
                // Split at the first space after the first character, as llama.cpp does.
                let Some(split) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1)
                else {
                    continue;
                };
                let key = format!("{} {}", &merge[..split], &merge[split + 1..]);
                merges.entry(key).or_insert(rank as u32);
            }
        }

        // Special token ids: defaults out of range are disabled; GGUF values out of range are
        // ignored (the default stays).
        let in_range = |id: Option<u32>| id.filter(|&id| (id as usize) < n_tokens);
        let pick = |default: Option<u32>, from_file: Option<u32>| -> Option<u32> {
            let default = in_range(default);
            match from_file {
                Some(id) if (id as usize) < n_tokens => Some(id),
                Some(id) => {
                    tracing::warn!(
                        id,
                        "special token id out of vocabulary range; using default"
                    );
                    default
                }
                None => default,
            }
        };
        bos = pick(bos, meta.bos_token_id);
        eos = pick(eos, meta.eos_token_id);
        unk = pick(unk, meta.unknown_token_id);
        let mut eot = pick(None, meta.eot_token_id);
        let mut eom = pick(None, meta.eom_token_id);
        let sep = pick(None, meta.sep_token_id);
        let pad = pick(None, meta.padding_token_id);
        if let Some(v) = meta.add_bos_token {
            add_bos = v;
        }
        let add_eos = meta.add_eos_token.unwrap_or(false);

        // Auto-detected special tokens (by text), in id order for determinism.
        let find = |tokens: &[TokenData], texts: &[&str]| -> Option<u32> {
            (0..n_tokens as u32).find(|&id| texts.contains(&tokens[id as usize].text.as_str()))
        };
        if eot.is_none() {
            eot = find(&tokens, EOT_TEXTS);
            if let Some(id) = eot {
                tokens[id as usize].attr |= attr::CONTROL;
            }
        }
        if eom.is_none() {
            eom = find(&tokens, &["<|eom_id|>"]);
            if let Some(id) = eom {
                tokens[id as usize].attr |= attr::CONTROL;
            }
        }
        let mut eog = BTreeSet::new();
        for texts in FIM_EOG_TEXTS {
            if let Some(id) = find(&tokens, texts) {
                tokens[id as usize].attr |= attr::CONTROL;
                eog.insert(id);
            }
        }
        // Control tokens named like "unused" are unused slots.
        for t in tokens.iter_mut() {
            if t.attr & attr::CONTROL != 0 && t.text.contains("unused") {
                t.attr |= attr::UNUSED;
            }
        }
        for (id, t) in tokens.iter_mut().enumerate() {
            if EOG_TEXTS.contains(&t.text.as_str()) {
                eog.insert(id as u32);
                t.attr |= attr::CONTROL;
            }
        }
        // gpt-oss: these are always rendered.
        for t in tokens.iter_mut() {
            if matches!(
                t.text.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                t.attr = attr::USER_DEFINED;
            }
        }
        eog.extend(eos);
        eog.extend(eot);
        eog.extend(eom);
        // o200k_harmony / solar-open: "<|end|>" is not the end of generation there.
        let eog_id = |tokens: &[TokenData], eog: &BTreeSet<u32>, text: &str| {
            eog.iter()
                .copied()
                .find(|&id| tokens[id as usize].text == text)
        };
        let has = |tokens: &[TokenData], eog: &BTreeSet<u32>, text: &str| {
            eog_id(tokens, eog, text).is_some()
        };
        if (has(&tokens, &eog, "<|return|>") && has(&tokens, &eog, "<|call|>"))
            || (has(&tokens, &eog, "<|calls|>") && has(&tokens, &eog, "<|flush|>"))
        {
            if let Some(end) = eog_id(&tokens, &eog, "<|end|>") {
                eog.remove(&end);
                tokens[end as usize].attr = attr::USER_DEFINED;
            }
        }
        // gemma4 / plamo: "</s>" is an ordinary token there.
        if has(&tokens, &eog, "<|tool_response>") || has(&tokens, &eog, "<|plamo:eos|>") {
            if let Some(s) = eog_id(&tokens, &eog, "</s>") {
                eog.remove(&s);
                tokens[s as usize].attr = attr::NORMAL;
            }
        }

        let mut special_tokens: Vec<u32> = (0..n_tokens as u32)
            .filter(|&id| {
                tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_tokens.sort_by(|&a, &b| {
            tokens[b as usize]
                .text
                .len()
                .cmp(&tokens[a as usize].text.len())
                .then(a.cmp(&b))
        });

        set_strip_attributes(&mut tokens, &token_to_id, &special_tokens, meta);

        let mut byte_tokens = [None; 256];
        if let Algorithm::Spm = algorithm {
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let hex = format!("<0x{b:02X}>");
                *slot = token_to_id.get(&hex).copied().or_else(|| {
                    let one = [b as u8];
                    std::str::from_utf8(&one)
                        .ok()
                        .and_then(|s| token_to_id.get(s).copied())
                });
            }
        }

        let mut tokenizer = Self {
            algorithm,
            tokens,
            token_to_id,
            merges,
            byte_tokens,
            special_tokens,
            piece_bytes: Vec::new(),
            piece_ends: Vec::with_capacity(n_tokens),
            bos,
            eos,
            eot,
            eom,
            unk,
            sep,
            pad,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            ignore_merges,
            max_token_bytes: MIN_TOKEN_COVER_BYTES,
        };
        for id in 0..n_tokens as u32 {
            let piece = tokenizer.render_piece(id);
            tokenizer.max_token_bytes = tokenizer.max_token_bytes.max(piece.len());
            tokenizer.piece_bytes.extend_from_slice(&piece);
            let end = u32::try_from(tokenizer.piece_bytes.len())
                .map_err(|_| TokenizerError::TooManyTokens(n_tokens))?;
            tokenizer.piece_ends.push(end);
        }
        Ok(tokenizer)
    }

    /// Most bytes of input text one token of [`Tokenizer::encode`] can stand for: the longest
    /// token rendering (with special tokens), and at least [`MIN_TOKEN_COVER_BYTES`] (a character
    /// that no token spells is dropped, not tokenized). A text of `n` bytes therefore gives at
    /// least `n / max_token_bytes()` tokens, so one too long for a context can be refused from
    /// its length alone.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (from the GGUF, else detected by text as llama.cpp does).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// End-of-message token.
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }

    /// Unknown token.
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// Separator token.
    pub fn sep(&self) -> Option<u32> {
        self.sep
    }

    /// Padding token.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// True for tokens that end generation: EOS, EOT, EOM and the tokens llama.cpp recognises by
    /// text (`<end_of_turn>`, `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Every end-of-generation token, ascending.
    pub fn eog_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// True for control tokens (rendered only with `special = true`).
    pub fn is_control(&self, id: u32) -> bool {
        self.attr(id) & attr::CONTROL != 0
    }

    /// The token's text as stored in the vocabulary (`▁`-escaped or GPT-2 byte characters).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn text_to_token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The bytes token `id` stands for. Control and unknown tokens render as nothing unless
    /// `special` is set (llama.cpp's `token_to_piece(.., special)`); an id outside the
    /// vocabulary renders as nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> &[u8] {
        let Some(t) = self.tokens.get(id as usize) else {
            return &[];
        };
        if !special && t.attr & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return &[];
        }
        let start = match id {
            0 => 0,
            _ => self.piece_ends[id as usize - 1] as usize,
        };
        &self.piece_bytes[start..self.piece_ends[id as usize] as usize]
    }

    /// Text to token ids, as llama.cpp's `llama_tokenize`.
    ///
    /// `add_special` adds BOS / EOS as the model asks (`tokenizer.ggml.add_bos_token`, ...).
    /// `parse_special` turns the texts of control tokens found in `text` into those tokens;
    /// user-defined tokens are always split out.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.algorithm {
            Algorithm::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(start, end) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[start..end]);
                            let escaped = buf.replace(' ', SPM_SPACE);
                            spm::tokenize(self, &escaped, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Algorithm::Bpe(pre) => {
                let mut scratch = bpe::Scratch::default();
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(start, end) => {
                            for word in pre.split(&text[start..end]) {
                                bpe::tokenize_word(self, &word, &mut scratch, &mut out);
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Token ids to bytes, as llama.cpp's `llama_detokenize`: `remove_special` drops a leading
    /// BOS and trailing EOS the model adds, `unparse_special` renders control tokens; SentencePiece
    /// removes the space the tokenizer prefixed; BPE vocabularies that ask for it get llama.cpp's
    /// space clean-up (" ." to ".", " 's" to "'s", ...).
    pub fn decode(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.bos) {
                if first == bos {
                    remove_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if remove_special && self.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), self.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut text = Vec::new();
        for &id in ids {
            let piece = self.token_to_piece(id, unparse_special);
            let piece = if remove_space {
                piece.strip_prefix(b" ").unwrap_or(piece)
            } else {
                piece
            };
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            text = clean_up_spaces(&text);
        }
        text
    }

    /// The id's attribute bits (0 outside the vocabulary).
    fn attr(&self, id: u32) -> u16 {
        self.tokens.get(id as usize).map_or(0, |t| t.attr)
    }

    /// The SentencePiece score of `id`.
    fn score(&self, id: u32) -> f32 {
        self.tokens.get(id as usize).map_or(0.0, |t| t.score)
    }

    /// The byte-fallback token of `b`.
    fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[b as usize]
    }

    /// Whether BPE skips merges for words that are whole tokens.
    fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// The merge rank of `left` + `right`, using `key` as scratch space.
    fn merge_rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.merges.get(key.as_str()).copied()
    }

    /// Splits special-token texts out of `text` (llama.cpp's `tokenizer_st_partition`): each
    /// special token in turn, longest first, replaces every occurrence in the remaining text,
    /// swallowing the whitespace around it that its strip attributes name.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0, text.len()));
        for &id in &self.special_tokens {
            let data = &self.tokens[id as usize];
            if !parse_special && data.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = data.text.as_str();
            let occurs = fragments.iter().any(|f| match *f {
                Fragment::Text(s, e) => text[s..e].contains(needle),
                Fragment::Token(_) => false,
            });
            if !occurs {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(start, end) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let bytes = text.as_bytes();
                let mut cursor = start;
                while let Some(found) = text[cursor..end].find(needle) {
                    let at = cursor + found;
                    let mut left_end = at;
                    if data.attr & attr::LSTRIP != 0 {
                        while left_end > cursor && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > cursor {
                        next.push(Fragment::Text(cursor, left_end));
                    }
                    next.push(Fragment::Token(id));
                    cursor = at + needle.len();
                    if data.attr & attr::RSTRIP != 0 {
                        while cursor < end && is_c_space(bytes[cursor]) {
                            cursor += 1;
                        }
                    }
                }
                if cursor < end {
                    next.push(Fragment::Text(cursor, end));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Renders `id` as llama.cpp's `token_to_piece(.., special = true)` does.
    fn render_piece(&self, id: u32) -> Vec<u8> {
        let t = &self.tokens[id as usize];
        if t.attr & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return t.text.as_bytes().to_vec();
        }
        if t.attr & attr::NORMAL != 0 {
            return match self.algorithm {
                Algorithm::Spm => t.text.replace(SPM_SPACE, " ").into_bytes(),
                Algorithm::Bpe(_) => decode_byte_chars(&t.text),
            };
        }
        if t.attr & attr::BYTE != 0 {
            // "<0xXX>"
            return t
                .text
                .get(3..5)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .map(|b| vec![b])
                .unwrap_or_default();
        }
        Vec::new()
    }
}

/// GPT-2 byte characters back to bytes; a character outside the map is rendered as llama.cpp's
/// `[UNK_BYTE_0x..]` marker.
fn decode_byte_chars(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match unicode::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).as_bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// llama.cpp's `clean_spaces` passes over detokenized text.
fn clean_up_spaces(text: &[u8]) -> Vec<u8> {
    if text.is_empty() {
        return Vec::new();
    }
    // Pass 1: " ?", " !", " .", " ," lose the space.
    let mut a: Vec<u8> = vec![text[0]];
    for i in 1..text.len() {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    // Pass 2: " ' " loses both spaces (the skipped space reads as NUL afterwards, as in
    // llama.cpp's in-place loop).
    let mut b: Vec<u8> = vec![a[0]];
    let mut i = 1;
    while i < a.len() {
        let x = a[i];
        if x == b'\'' && i + 1 < a.len() && a[i - 1] == b' ' && a[i + 1] == b' ' {
            b.pop();
            b.push(x);
            a[i + 1] = 0;
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    // Pass 3: " 's", " 'm", " 're", " 've" lose the space.
    let mut c: Vec<u8> = vec![b[0]];
    for i in 1..b.len() {
        let x = b[i];
        if b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            let x2 = b.get(i + 2).copied();
            let drop = matches!(x1, b's' | b'm')
                || (i + 2 < b.len() && matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))));
            if drop {
                c.pop();
            }
        }
        c.push(x);
    }
    c
}
