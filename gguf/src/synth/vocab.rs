//! Real tokenizer vocabularies for synthetic models, learned deterministically from a built-in
//! English and code sample ([`SAMPLE_TEXT`]) by a small BPE trainer:
//! - byte-level BPE (`tokenizer.ggml.model = "gpt2"`): the GPT-2 byte-to-unicode alphabet, learned
//!   merges, and the architecture's special tokens (`<|im_start|>`, `<|eot_id|>`, ...);
//! - SentencePiece-style (`"llama"`): `<unk>`/`<s>`/`</s>` (or Gemma's specials), byte-fallback
//!   tokens `<0x00>`..`<0xFF>`, `▁`-prefixed pieces with log-probability-like scores.
//!
//! The sample text holds a few thousand merges at most; slots beyond what it yields are filled
//! with `<unusedN>` tokens of type "unused", which no tokenizer ever produces (as real
//! vocabularies pad their reserved ids).

use std::collections::HashMap;

/// The training text.
pub const SAMPLE_TEXT: &str = include_str!("sample.txt");

/// GGUF token type: a normal token.
pub const TOKEN_NORMAL: i32 = 1;
/// GGUF token type: the unknown token.
pub const TOKEN_UNKNOWN: i32 = 2;
/// GGUF token type: a control token (BOS, EOS, turn markers).
pub const TOKEN_CONTROL: i32 = 3;
/// GGUF token type: a reserved, unused id.
pub const TOKEN_UNUSED: i32 = 5;
/// GGUF token type: a byte-fallback token `<0xNN>`.
pub const TOKEN_BYTE: i32 = 6;

/// SentencePiece's word-boundary marker.
const SPM_SPACE: char = '▁';

/// Why a vocabulary could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabError {
    /// The requested size cannot hold the fixed tokens.
    #[error(
        "vocabulary size {requested} is too small: this tokenizer needs at least {minimum} tokens"
    )]
    TooSmall {
        /// Requested size.
        requested: usize,
        /// Smallest size that works.
        minimum: usize,
    },
}

/// Which tokenizer family to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum VocabKind {
    /// Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`).
    Bpe,
    /// SentencePiece with byte fallback (`tokenizer.ggml.model = "llama"`).
    Spm,
}

/// Which special tokens and chat template to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Llama 3: `<|begin_of_text|>`, header ids, `<|eot_id|>`.
    Llama,
    /// Qwen: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (ChatML).
    Qwen,
    /// Gemma: `<pad>`, `<eos>`, `<bos>`, `<unk>`, turn markers.
    Gemma,
    /// Phi-3: `<|endoftext|>` (which llama.cpp requires of a phi3 vocabulary) and the
    /// `<|user|>` / `<|assistant|>` / `<|end|>` turn markers.
    Phi3,
}

/// A complete tokenizer vocabulary, ready to be written as `tokenizer.*` metadata.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// `tokenizer.ggml.model`.
    pub model: &'static str,
    /// `tokenizer.ggml.pre`.
    pub pre: &'static str,
    /// Token texts by id.
    pub tokens: Vec<String>,
    /// Token types by id.
    pub token_types: Vec<i32>,
    /// Scores by id (SentencePiece only).
    pub scores: Option<Vec<f32>>,
    /// Merges "a b" in priority order (BPE only).
    pub merges: Option<Vec<String>>,
    /// Beginning-of-sequence id.
    pub bos: u32,
    /// End-of-sequence id.
    pub eos: u32,
    /// End-of-turn id.
    pub eot: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// Whether to prepend BOS.
    pub add_bos: bool,
    /// Whether SentencePiece adds a leading space (`None` for BPE).
    pub add_space_prefix: Option<bool>,
    /// The Jinja chat template.
    pub chat_template: &'static str,
    /// How many tokens were learned by the trainer (merged tokens / pieces).
    pub learned: usize,
}

const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";
const PHI3_TEMPLATE: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";
const LLAMA2_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}";

/// Phi-3's special tokens beyond SentencePiece's own, end of turn last.
const PHI3_SPECIALS: [&str; 5] = [
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
];

/// Builds a vocabulary of exactly `n_vocab` tokens.
pub fn build(kind: VocabKind, flavor: Flavor, n_vocab: usize) -> Result<Vocab, VocabError> {
    match kind {
        VocabKind::Bpe => build_bpe(flavor, n_vocab),
        VocabKind::Spm => build_spm(flavor, n_vocab),
    }
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to
/// themselves, the rest to code points from U+0100 up, in byte order.
pub fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    table
}

/// Splits text into pre-tokens roughly as GPT-2-style regexes do: letter runs and punctuation
/// runs with one optional leading space, single digits, whitespace runs.
fn bpe_pretokenize(text: &str) -> Vec<&str> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Letter,
        Digit,
        Space,
        Other,
    }
    let class = |c: char| {
        if c.is_alphabetic() || c == '\'' {
            Class::Letter
        } else if c.is_numeric() {
            Class::Digit
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let start = chars[i].0;
        let mut j = i;
        // One leading space joins a following letter or punctuation run.
        if chars[j].1 == ' ' && j + 1 < chars.len() {
            let next = class(chars[j + 1].1);
            if next == Class::Letter || next == Class::Other {
                j += 1;
            }
        }
        let c = class(chars[j].1);
        j += 1;
        if c != Class::Digit {
            while j < chars.len() && class(chars[j].1) == c {
                j += 1;
            }
        }
        let end = chars.get(j).map_or(text.len(), |&(p, _)| p);
        out.push(&text[start..end]);
        i = j;
    }
    out
}

/// Learns up to `max_merges` merges over `words` (symbol sequences with counts). Ties are
/// broken by the symbols' ids, so the result is deterministic.
fn train(words: Vec<(Vec<String>, u64)>, max_merges: usize) -> Vec<(String, String)> {
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let intern = |s: &str, ids: &mut HashMap<String, u32>, names: &mut Vec<String>| {
        *ids.entry(s.to_owned()).or_insert_with(|| {
            names.push(s.to_owned());
            (names.len() - 1) as u32
        })
    };
    let mut seqs: Vec<(Vec<u32>, u64)> = words
        .iter()
        .map(|(syms, n)| {
            (
                syms.iter()
                    .map(|s| intern(s, &mut ids, &mut names))
                    .collect(),
                *n,
            )
        })
        .collect();
    let mut merges = Vec::new();
    let mut counts: HashMap<(u32, u32), u64> = HashMap::new();
    while merges.len() < max_merges {
        counts.clear();
        for (seq, n) in &seqs {
            for w in seq.windows(2) {
                *counts.entry((w[0], w[1])).or_default() += n;
            }
        }
        let Some((&best, _)) = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        else {
            break;
        };
        let merged = format!("{}{}", names[best.0 as usize], names[best.1 as usize]);
        let new_id = intern(&merged, &mut ids, &mut names);
        for (seq, _) in &mut seqs {
            let mut k = 0;
            while k + 1 < seq.len() {
                if seq[k] == best.0 && seq[k + 1] == best.1 {
                    seq[k] = new_id;
                    seq.remove(k + 1);
                }
                k += 1;
            }
        }
        merges.push((
            names[best.0 as usize].clone(),
            names[best.1 as usize].clone(),
        ));
    }
    merges
}

/// Counts equal pre-tokens, in first-seen order (for determinism).
fn count_words<'a>(pieces: impl Iterator<Item = &'a str>) -> Vec<(&'a str, u64)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(&str, u64)> = Vec::new();
    for p in pieces {
        match index.get(p) {
            Some(&i) => out[i].1 += 1,
            None => {
                index.insert(p, out.len());
                out.push((p, 1));
            }
        }
    }
    out
}

/// Pads `tokens`/`types` (and `scores`) to `n_vocab` with `<unusedN>` tokens.
fn pad(
    tokens: &mut Vec<String>,
    types: &mut Vec<i32>,
    scores: Option<&mut Vec<f32>>,
    n_vocab: usize,
) {
    let start = tokens.len();
    for i in 0..n_vocab.saturating_sub(start) {
        tokens.push(format!("<unused{i}>"));
        types.push(TOKEN_UNUSED);
    }
    if let Some(s) = scores {
        s.resize(n_vocab, 0.0);
    }
}

fn build_bpe(flavor: Flavor, n_vocab: usize) -> Result<Vocab, VocabError> {
    let specials: &[&str] = match flavor {
        Flavor::Qwen => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        Flavor::Llama => &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        Flavor::Gemma => &["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        Flavor::Phi3 => &PHI3_SPECIALS,
    };
    let minimum = 256 + specials.len();
    if n_vocab < minimum {
        return Err(VocabError::TooSmall {
            requested: n_vocab,
            minimum,
        });
    }
    let table = byte_to_unicode();
    let map =
        |s: &str| -> Vec<String> { s.bytes().map(|b| table[b as usize].to_string()).collect() };
    let words = count_words(bpe_pretokenize(SAMPLE_TEXT).into_iter())
        .into_iter()
        .map(|(w, n)| (map(w), n))
        .collect();
    let merges = train(words, n_vocab - minimum);

    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    let mut types = vec![TOKEN_NORMAL; 256];
    // Two merges can produce the same text ("ab"+"c", "a"+"bc"); the token appears once.
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    for (a, b) in &merges {
        let t = format!("{a}{b}");
        if seen.insert(t.clone()) {
            tokens.push(t);
            types.push(TOKEN_NORMAL);
        }
    }
    let first_special = tokens.len() as u32;
    for s in specials {
        tokens.push((*s).to_owned());
        types.push(TOKEN_CONTROL);
    }
    pad(&mut tokens, &mut types, None, n_vocab);
    let id = |i: u32| first_special + i;
    let (bos, eos, eot, pad_id, add_bos, pre, template) = match flavor {
        Flavor::Qwen => (
            id(0),
            id(2),
            Some(id(2)),
            Some(id(0)),
            false,
            "qwen2",
            CHATML_TEMPLATE,
        ),
        Flavor::Llama => (
            id(0),
            id(1),
            Some(id(4)),
            None,
            true,
            "llama-bpe",
            LLAMA3_TEMPLATE,
        ),
        Flavor::Gemma => (
            id(0),
            id(1),
            Some(id(3)),
            None,
            true,
            "default",
            GEMMA_TEMPLATE,
        ),
        // Phi-4's cl100k-style pre-tokenizer.
        Flavor::Phi3 => (
            id(0),
            id(0),
            Some(id(4)),
            None,
            false,
            "dbrx",
            PHI3_TEMPLATE,
        ),
    };
    Ok(Vocab {
        model: "gpt2",
        pre,
        learned: merges.len(),
        merges: Some(
            merges
                .into_iter()
                .map(|(a, b)| format!("{a} {b}"))
                .collect(),
        ),
        tokens,
        token_types: types,
        scores: None,
        bos,
        eos,
        eot,
        pad: pad_id,
        unk: None,
        add_bos,
        add_space_prefix: None,
        chat_template: template,
    })
}

fn build_spm(flavor: Flavor, n_vocab: usize) -> Result<Vocab, VocabError> {
    // (text, type) of the fixed leading tokens.
    let specials: &[(&str, i32)] = match flavor {
        Flavor::Gemma => &[
            ("<pad>", TOKEN_CONTROL),
            ("<eos>", TOKEN_CONTROL),
            ("<bos>", TOKEN_CONTROL),
            ("<unk>", TOKEN_UNKNOWN),
            ("<start_of_turn>", TOKEN_CONTROL),
            ("<end_of_turn>", TOKEN_CONTROL),
        ],
        Flavor::Llama | Flavor::Qwen => &[
            ("<unk>", TOKEN_UNKNOWN),
            ("<s>", TOKEN_CONTROL),
            ("</s>", TOKEN_CONTROL),
        ],
        Flavor::Phi3 => &[
            ("<unk>", TOKEN_UNKNOWN),
            ("<s>", TOKEN_CONTROL),
            ("</s>", TOKEN_CONTROL),
            (PHI3_SPECIALS[0], TOKEN_CONTROL),
            (PHI3_SPECIALS[1], TOKEN_CONTROL),
            (PHI3_SPECIALS[2], TOKEN_CONTROL),
            (PHI3_SPECIALS[3], TOKEN_CONTROL),
            (PHI3_SPECIALS[4], TOKEN_CONTROL),
        ],
    };
    // Words: each space-separated word gets the boundary marker; newlines are their own pieces.
    let mut pieces: Vec<String> = Vec::new();
    for line in SAMPLE_TEXT.split_inclusive('\n') {
        for word in line
            .trim_end_matches('\n')
            .split(' ')
            .filter(|w| !w.is_empty())
        {
            pieces.push(format!("{SPM_SPACE}{word}"));
        }
        if line.ends_with('\n') {
            pieces.push("\n".to_owned());
        }
    }
    let mut chars: Vec<char> = SAMPLE_TEXT
        .chars()
        .filter(|&c| c != ' ')
        .chain([SPM_SPACE])
        .collect();
    chars.sort_unstable();
    chars.dedup();
    let minimum = specials.len() + 256 + chars.len();
    if n_vocab < minimum {
        return Err(VocabError::TooSmall {
            requested: n_vocab,
            minimum,
        });
    }
    let words = count_words(pieces.iter().map(String::as_str))
        .into_iter()
        .map(|(w, n)| (w.chars().map(String::from).collect(), n))
        .collect();
    let merges = train(words, n_vocab - minimum);

    let mut tokens = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    let mut scores = Vec::with_capacity(n_vocab);
    for (t, ty) in specials {
        tokens.push((*t).to_owned());
        types.push(*ty);
        scores.push(0.0);
    }
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TOKEN_BYTE);
        scores.push(0.0);
    }
    // Merged pieces: earlier merges are more frequent, so they score higher; single
    // characters score below every merge.
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let n_merges = merges.len();
    for (i, (a, b)) in merges.iter().enumerate() {
        let piece = format!("{a}{b}");
        if seen.insert(piece.clone()) {
            tokens.push(piece);
            types.push(TOKEN_NORMAL);
            scores.push(-(i as f32) - 1.0);
        }
    }
    for (i, c) in chars.iter().enumerate() {
        let piece = c.to_string();
        if seen.insert(piece.clone()) {
            tokens.push(piece);
            types.push(TOKEN_NORMAL);
            scores.push(-((n_merges + i) as f32) - 1.0);
        }
    }
    pad(&mut tokens, &mut types, Some(&mut scores), n_vocab);
    let (bos, eos, eot, pad_id, unk, template) = match flavor {
        Flavor::Gemma => (2, 1, Some(5), Some(0), 3, GEMMA_TEMPLATE),
        Flavor::Llama | Flavor::Qwen => (1, 2, None, None, 0, LLAMA2_TEMPLATE),
        // Phi-3.5: BOS <s>, EOS <|endoftext|>, end of turn <|end|>.
        Flavor::Phi3 => (1, 3, Some(7), None, 0, PHI3_TEMPLATE),
    };
    Ok(Vocab {
        model: "llama",
        pre: "default",
        learned: n_merges,
        tokens,
        token_types: types,
        scores: Some(scores),
        merges: None,
        bos,
        eos,
        eot,
        pad: pad_id,
        unk: Some(unk),
        add_bos: true,
        add_space_prefix: Some(flavor != Flavor::Gemma),
        chat_template: template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printable_chars() {
        let t = byte_to_unicode();
        let mut v: Vec<char> = t.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
    }

    #[test]
    fn pretokenizer_keeps_leading_spaces_and_splits_digits() {
        assert_eq!(
            bpe_pretokenize("Hello world, 1969!\n  x"),
            ["Hello", " world", ",", " ", "1", "9", "6", "9", "!", "\n  ", "x"]
        );
    }

    #[test]
    fn bpe_vocab_is_exact_size_deterministic_and_consistent() {
        let v = build(VocabKind::Bpe, Flavor::Qwen, 1000).unwrap();
        assert_eq!(v.tokens.len(), 1000);
        assert_eq!(v.token_types.len(), 1000);
        let merges = v.merges.as_ref().unwrap();
        assert_eq!(merges.len(), 1000 - 256 - 3);
        // Tokens are unique; every merge's result is a token, its parts are tokens before it.
        let index: HashMap<&str, usize> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        assert_eq!(index.len(), 1000);
        for m in merges {
            let (a, b) = m.split_once(' ').unwrap();
            let ab = index[format!("{a}{b}").as_str()];
            assert!(ab >= 256 && index[a] < ab && index[b] < ab, "merge {m}");
        }
        assert!(merges
            .iter()
            .any(|m| m == "Ġ t" || m == "Ġt h" || m == "t h"));
        assert_eq!(v.tokens[v.eos as usize], "<|im_end|>");
        let again = build(VocabKind::Bpe, Flavor::Qwen, 1000).unwrap();
        assert_eq!(again.tokens, v.tokens);
        // A big request is padded with unused tokens once the text runs out of merges.
        let big = build(VocabKind::Bpe, Flavor::Llama, 20_000).unwrap();
        assert_eq!(big.tokens.len(), 20_000);
        assert!(big.learned > 1000 && big.learned < 20_000 - 261);
        assert_eq!(big.token_types[19_999], TOKEN_UNUSED);
        assert!(matches!(
            build(VocabKind::Bpe, Flavor::Qwen, 100),
            Err(VocabError::TooSmall { .. })
        ));
    }

    #[test]
    fn spm_vocab_has_byte_fallback_and_scores() {
        let v = build(VocabKind::Spm, Flavor::Gemma, 2000).unwrap();
        assert_eq!(v.tokens.len(), 2000);
        let scores = v.scores.as_ref().unwrap();
        assert_eq!(scores.len(), 2000);
        assert_eq!(v.tokens[6], "<0x00>");
        assert_eq!(v.token_types[6 + 255], TOKEN_BYTE);
        assert_eq!(v.tokens[v.bos as usize], "<bos>");
        assert!(v.tokens.iter().any(|t| t == "▁the"));
        let mut uniq = v.tokens.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 2000, "tokens must be unique");
    }
}
