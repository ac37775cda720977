//! Byte-level BPE pre-tokenization: splitting text into words before merges, per
//! `tokenizer.ggml.pre`, exactly as llama.cpp's `unicode_regex_split` does.
//!
//! llama.cpp runs a list of expressions per pre-tokenizer type; each one splits every piece the
//! previous one produced, and both the matches and the text between them become pieces. The
//! common GPT-2, Llama 3 and Qwen2 expressions are hand-written matchers there (not a regex
//! engine), with a few quirks of their own (for example `\s+(?!\S)` never leaves a lone space at
//! the very end of the text): those are ported here as matchers too. The others run through
//! C++ `std::regex` over a "collapsed" text where every non-ASCII codepoint is replaced by one
//! byte naming its category; they are run here the same way with `regex::bytes`, so the two
//! agree on every input.

use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use super::unicode::{self, CpFlags};
use super::TokenizerError;

/// The pre-tokenizer families this crate implements (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// llama.cpp's fallback (`"default"` or a missing `tokenizer.ggml.pre`): punctuation runs,
    /// then the GPT-2 expression, then digit runs and groups of three ASCII digits.
    Default,
    /// The GPT-2 expression alone (`"gpt-2"`, `"phi-2"`, `"jina-es"`, ...).
    Gpt2,
    /// Llama 3 (`"llama3"`, `"llama-bpe"`, `"llama-v3"`, `"falcon3"`, `"pixtral"`, ...): digits in
    /// groups of up to three, merges ignored for words that are whole tokens.
    Llama3,
    /// Qwen2 (`"qwen2"`, `"deepseek-r1-qwen"`, `"megrez"`, `"stablelm2"`, ...): like Llama 3 with
    /// single digits.
    Qwen2,
    /// DeepSeek LLM (`"deepseek-llm"`).
    DeepseekLlm,
    /// DeepSeek Coder (`"deepseek-coder"`).
    DeepseekCoder,
    /// Mistral's Tekken (`"tekken"`: Mistral Nemo, Small 3, Ministral): words split at case
    /// changes, single digits, merges ignored for words that are whole tokens.
    Tekken,
}

impl PreTokenizerKind {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value, or `None` when this crate does not
    /// know the name.
    pub fn from_name(name: &str) -> Option<Self> {
        let kind = match name {
            "default" => Self::Default,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Self::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" => Self::Qwen2,
            "deepseek-llm" => Self::DeepseekLlm,
            "deepseek-coder" => Self::DeepseekCoder,
            "tekken" => Self::Tekken,
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
            | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" | "exaone4" => Self::Gpt2,
            _ => return None,
        };
        Some(kind)
    }

    /// llama.cpp's `ignore_merges`: a word that is itself a token is emitted whole.
    pub fn ignore_merges(self) -> bool {
        matches!(self, Self::Llama3 | Self::Tekken)
    }

    /// llama.cpp's default for `add_bos` with this pre-tokenizer (before the GGUF key overrides it).
    pub fn default_add_bos(self) -> bool {
        matches!(self, Self::Llama3 | Self::Tekken)
    }

    /// llama.cpp's `clean_spaces` (detokenizer clean-up of " ." and " 's") for this pre-tokenizer.
    pub fn clean_spaces(self) -> bool {
        !matches!(
            self,
            Self::Qwen2 | Self::DeepseekLlm | Self::DeepseekCoder | Self::Tekken
        )
    }
}

/// The hand-written matchers.
#[derive(Clone, Copy, Debug)]
enum Custom {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// `(?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// Like [`Custom::Llama3`] with `\p{N}` instead of `\p{N}{1,3}`.
    Qwen2,
    /// Tekken's expression with lookaheads, over the collapsed text (see [`super::tekken`]).
    Tekken,
}

/// One splitting step.
#[derive(Debug)]
enum Step {
    /// A hand-written matcher.
    Custom(Custom),
    /// A byte regex over the collapsed text (one byte per codepoint, see [`collapse`]).
    Collapsed(BytesRegex),
    /// A Unicode regex over the text with non-ASCII whitespace replaced by U+000B.
    Wide(Regex),
}

/// A compiled pre-tokenizer.
#[derive(Debug)]
pub struct PreTokenizer {
    /// Which family this is.
    kind: PreTokenizerKind,
    /// The steps, applied in order.
    steps: Vec<Step>,
}

/// `\s` as C++ `std::regex` sees it after llama.cpp maps non-ASCII whitespace to U+000B.
const ASCII_SPACE_CLASS: &str = r"[\t\n\x0B\x0C\r ]";

/// `\p{P}` after collapsing: the category byte plus ASCII punctuation.
const COLLAPSED_PUNCT: &str = r"\xD3!-#%-*,-/:-;?-@\[-\]_\{\}";

/// `\p{N}` after collapsing.
const COLLAPSED_NUMBER: &str = r"\xD10-9";

/// `\p{L}` after collapsing.
const COLLAPSED_LETTER: &str = r"\xD2A-Za-z";

/// The letters of DeepSeek LLM's second expression (from its tokenizer.json), as regex escapes.
const DEEPSEEK_LETTERS: &str = concat!(
    r"A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}",
    r"\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}",
    r"\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}",
    r"\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}",
    r"\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}",
    r"\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}",
    r"\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}",
    r"\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}",
    r"\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}",
    r"\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}",
    r"\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}",
    r"\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}",
    r"\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}",
    r"\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}",
    r"\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}",
    r"\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}",
    r"\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}",
    r"\x{1E900}-\x{1E943}",
);

/// The CJK runs both DeepSeek pre-tokenizers isolate.
const DEEPSEEK_CJK: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

impl PreTokenizer {
    /// Compiles the steps of `kind`.
    pub fn new(kind: PreTokenizerKind) -> Result<Self, TokenizerError> {
        let collapsed = |pattern: String| -> Result<Step, TokenizerError> {
            BytesRegex::new(&format!("(?-u){pattern}"))
                .map(Step::Collapsed)
                .map_err(|e| TokenizerError::Regex(e.to_string()))
        };
        let wide = |pattern: String| -> Result<Step, TokenizerError> {
            Regex::new(&pattern)
                .map(Step::Wide)
                .map_err(|e| TokenizerError::Regex(e.to_string()))
        };
        let s = ASCII_SPACE_CLASS;
        let steps = match kind {
            PreTokenizerKind::Default => vec![
                collapsed(format!(r"[{COLLAPSED_PUNCT}\$\+<=>\^~\|]+"))?,
                Step::Custom(Custom::Gpt2),
                collapsed(format!("[{COLLAPSED_NUMBER}]+"))?,
                wide("[0-9][0-9][0-9]".to_owned())?,
            ],
            PreTokenizerKind::Gpt2 => vec![Step::Custom(Custom::Gpt2)],
            PreTokenizerKind::Llama3 => vec![Step::Custom(Custom::Llama3)],
            PreTokenizerKind::Qwen2 => vec![Step::Custom(Custom::Qwen2)],
            PreTokenizerKind::Tekken => vec![Step::Custom(Custom::Tekken)],
            PreTokenizerKind::DeepseekLlm => vec![
                wide(r"[\r\n]".to_owned())?,
                wide(format!("{s}?[{DEEPSEEK_LETTERS}]+"))?,
                wide(format!(
                    r"{s}?[!-/:-~\x{{FF01}}-\x{{FF0F}}\x{{FF1A}}-\x{{FF5E}}\x{{2018}}-\x{{201F}}\x{{3000}}-\x{{3002}}]+"
                ))?,
                wide(format!("{s}+$"))?,
                wide(DEEPSEEK_CJK.to_owned())?,
                collapsed(format!("[{COLLAPSED_NUMBER}]+"))?,
            ],
            PreTokenizerKind::DeepseekCoder => vec![
                wide(r"[\r\n]".to_owned())?,
                collapsed(format!(r"\s?[{COLLAPSED_LETTER}]+"))?,
                collapsed(format!(r"\s?[{COLLAPSED_PUNCT}]+"))?,
                wide(DEEPSEEK_CJK.to_owned())?,
                collapsed(format!("[{COLLAPSED_NUMBER}]"))?,
            ],
        };
        Ok(Self { kind, steps })
    }

    /// Which family this is.
    pub fn kind(&self) -> PreTokenizerKind {
        self.kind
    }

    /// Splits `text` into words, each returned byte-encoded (GPT-2 byte characters) as the BPE
    /// merges expect.
    pub fn split(&self, text: &str) -> Vec<String> {
        let cpts: Vec<char> = text.chars().collect();
        let mut offsets = vec![cpts.len()];
        let mut collapsed_text: Option<Vec<u8>> = None;
        for step in &self.steps {
            offsets = match step {
                Step::Custom(custom) => split_custom(*custom, &cpts, &offsets),
                Step::Collapsed(regex) => {
                    let bytes = collapsed_text.get_or_insert_with(|| collapse(&cpts));
                    split_bytes_regex(regex, bytes, &offsets)
                }
                Step::Wide(regex) => split_wide_regex(regex, &cpts, &offsets),
            };
        }
        let mut words = Vec::with_capacity(offsets.len());
        let mut start = 0;
        let mut utf8 = String::new();
        for len in offsets {
            utf8.clear();
            utf8.extend(&cpts[start..start + len]);
            let mut word = String::with_capacity(utf8.len() * 2);
            unicode::byte_encode(&utf8, &mut word);
            words.push(word);
            start += len;
        }
        words
    }
}

/// The collapsed text: ASCII stays, non-ASCII whitespace becomes 0x0B, a letter 0xD2, a number
/// 0xD1, punctuation 0xD3, a mark 0xD4, a symbol 0xD5, anything else 0xD0.
fn collapse(cpts: &[char]) -> Vec<u8> {
    cpts.iter()
        .map(|&c| {
            if c.is_ascii() {
                return c as u8;
            }
            let f = unicode::flags(c);
            if f.is_whitespace() {
                0x0B
            } else if f.is_number() {
                0xD1
            } else if f.is_letter() {
                0xD2
            } else if f.is_punctuation() {
                0xD3
            } else if f.is_mark() {
                0xD4
            } else if f.is_symbol() {
                0xD5
            } else {
                0xD0
            }
        })
        .collect()
}

/// Splits each piece by the matches of `regex` over the collapsed text.
fn split_bytes_regex(regex: &BytesRegex, collapsed: &[u8], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let piece = &collapsed[start..start + len];
        let mut prev = 0;
        for m in regex.find_iter(piece) {
            if m.start() > prev {
                out.push(m.start() - prev);
            }
            out.push(m.end() - m.start());
            prev = m.end();
        }
        if prev < len {
            out.push(len - prev);
        }
        start += len;
    }
    out.retain(|&n| n > 0);
    out
}

/// Splits each piece by the matches of `regex` over the codepoints, non-ASCII whitespace
/// replaced by U+000B (llama.cpp's `std::wregex` path).
fn split_wide_regex(regex: &Regex, cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    let mut haystack = String::new();
    // byte offset in `haystack` -> codepoint index within the piece
    let mut byte_to_cp: Vec<usize> = Vec::new();
    for &len in offsets {
        haystack.clear();
        byte_to_cp.clear();
        for (i, &c) in cpts[start..start + len].iter().enumerate() {
            let c = if !c.is_ascii() && unicode::flags(c).is_whitespace() {
                '\u{0B}'
            } else {
                c
            };
            for _ in 0..c.len_utf8() {
                byte_to_cp.push(i);
            }
            haystack.push(c);
        }
        byte_to_cp.push(len);
        let mut prev = 0;
        for m in regex.find_iter(&haystack) {
            let (ms, me) = (byte_to_cp[m.start()], byte_to_cp[m.end()]);
            if ms > prev {
                out.push(ms - prev);
            }
            out.push(me - ms);
            prev = me;
        }
        if prev < len {
            out.push(len - prev);
        }
        start += len;
    }
    out.retain(|&n| n > 0);
    out
}

/// Runs a hand-written matcher over each piece.
fn split_custom(custom: Custom, cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let piece = &cpts[start..start + len];
        match custom {
            Custom::Gpt2 => split_gpt2(piece, &mut out),
            Custom::Llama3 => split_llama3(piece, 3, &mut out),
            Custom::Qwen2 => split_llama3(piece, 1, &mut out),
            Custom::Tekken => super::tekken::split(&collapse(piece), &mut out),
        }
        start += len;
    }
    out
}

/// Cursor over one piece: positions past its end read as "nothing".
struct Cursor<'a> {
    /// The piece's codepoints.
    cpts: &'a [char],
    /// End of the last word emitted.
    prev_end: usize,
}

impl Cursor<'_> {
    /// The codepoint at `pos`, or `None` past the end.
    fn cpt(&self, pos: usize) -> Option<char> {
        self.cpts.get(pos).copied()
    }

    /// The flags at `pos`, or [`CpFlags::NONE`] past the end.
    fn flags(&self, pos: usize) -> CpFlags {
        self.cpt(pos).map_or(CpFlags::NONE, unicode::flags)
    }

    /// Where the last alternatives of the GPT-2 style patterns end a match at `pos` that starts
    /// with `num_ws` whitespace codepoints: `\s+(?!\S)` (a run followed by more text leaves its
    /// last whitespace to the next word), else `\s+`, else any single codepoint.
    fn whitespace_run_end(&self, pos: usize, num_ws: usize) -> usize {
        if num_ws > 1 && self.cpt(pos + num_ws).is_some() {
            pos + num_ws - 1
        } else if num_ws > 0 {
            pos + num_ws
        } else {
            pos + 1
        }
    }

    /// Emits the word ending at `end` (if non-empty) and returns its length.
    fn emit(&mut self, end: usize, out: &mut Vec<usize>) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            out.push(len);
        }
        self.prev_end = end;
        len
    }
}

/// Length of an English contraction (`'s`, `'t`, `'m`, `'d`: 2; `'re`, `'ve`, `'ll`: 3) starting
/// at `pos`, or 0. `fold` makes it case-insensitive (only ASCII letters fold to these letters).
fn contraction_len(c: &Cursor<'_>, pos: usize, fold: bool) -> usize {
    if c.cpt(pos) != Some('\'') || pos + 1 >= c.cpts.len() {
        return 0;
    }
    let lower = |p: usize| {
        c.cpt(p)
            .map(|ch| if fold { ch.to_ascii_lowercase() } else { ch })
    };
    let next = lower(pos + 1);
    if matches!(next, Some('s' | 't' | 'm' | 'd')) {
        return 2;
    }
    if pos + 2 < c.cpts.len() {
        let pair = (next, lower(pos + 2));
        if matches!(
            pair,
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
        ) {
            return 3;
        }
    }
    0
}

/// The GPT-2 matcher (llama.cpp's `unicode_regex_split_custom_gpt2`).
fn split_gpt2(cpts: &[char], out: &mut Vec<usize>) {
    let mut c = Cursor { cpts, prev_end: 0 };
    let end = cpts.len();
    let mut pos = 0;
    while pos < end {
        let cpt = cpts[pos];
        let flags = unicode::flags(cpt);

        let n = contraction_len(&c, pos, false);
        if n > 0 {
            pos += c.emit(pos + n, out);
            continue;
        }

        let mut flags2 = if cpt == ' ' { c.flags(pos + 1) } else { flags };
        let space = usize::from(cpt == ' ');
        // ` ?\p{L}+`
        if flags2.is_letter() {
            pos += space;
            while flags2.is_letter() {
                pos += 1;
                flags2 = c.flags(pos);
            }
            c.emit(pos, out);
            continue;
        }
        // ` ?\p{N}+`
        if flags2.is_number() {
            pos += space;
            while flags2.is_number() {
                pos += 1;
                flags2 = c.flags(pos);
            }
            c.emit(pos, out);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+`
        let other =
            |f: CpFlags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_present();
        if other(flags2) {
            pos += space;
            while other(flags2) {
                pos += 1;
                flags2 = c.flags(pos);
            }
            c.emit(pos, out);
            continue;
        }

        let mut num_ws = 0;
        while c.flags(pos + num_ws).is_whitespace() {
            num_ws += 1;
        }
        pos = c.whitespace_run_end(pos, num_ws);
        c.emit(pos, out);
    }
}

/// The Llama 3 (`max_digits` 3) and Qwen2 (`max_digits` 1) matcher (llama.cpp's
/// `unicode_regex_split_custom_llama3` and `_qwen2`).
fn split_llama3(cpts: &[char], max_digits: usize, out: &mut Vec<usize>) {
    let mut c = Cursor { cpts, prev_end: 0 };
    let end = cpts.len();
    let mut pos = 0;
    while pos < end {
        let cpt = cpts[pos];
        let flags = unicode::flags(cpt);

        let n = contraction_len(&c, pos, true);
        if n > 0 {
            pos += c.emit(pos + n, out);
            continue;
        }

        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(cpt == '\r' || cpt == '\n' || flags.is_number())
            && (flags.is_letter() || c.flags(pos + 1).is_letter())
        {
            pos += 1;
            while c.flags(pos).is_letter() {
                pos += 1;
            }
            c.emit(pos, out);
            continue;
        }

        // `\p{N}{1,3}` / `\p{N}`
        if flags.is_number() {
            let mut ini = pos;
            while c.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= max_digits {
                    c.emit(pos, out);
                    ini = pos;
                }
            }
            c.emit(pos, out);
            continue;
        }

        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let mut flags2 = if cpt == ' ' { c.flags(pos + 1) } else { flags };
        let other = |f: CpFlags| !(f.is_whitespace() || f.is_letter() || f.is_number());
        if other(flags2) && flags.is_present() {
            pos += usize::from(cpt == ' ');
            while other(flags2) && flags2.is_present() {
                pos += 1;
                flags2 = c.flags(pos);
            }
            while matches!(c.cpt(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            c.emit(pos, out);
            continue;
        }

        let mut num_ws = 0;
        let mut last_end_rn = 0;
        while c.flags(pos + num_ws).is_whitespace() {
            if matches!(c.cpt(pos + num_ws), Some('\r' | '\n')) {
                last_end_rn = pos + num_ws + 1;
            }
            num_ws += 1;
        }
        // `\s*[\r\n]+`
        if last_end_rn > 0 {
            pos = last_end_rn;
            c.emit(pos, out);
            continue;
        }
        pos = c.whitespace_run_end(pos, num_ws);
        c.emit(pos, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits and decodes the words back to plain text for readable assertions.
    fn words(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let pre = PreTokenizer::new(kind).expect("compiles");
        pre.split(text)
            .into_iter()
            .map(|w| {
                let bytes: Vec<u8> = w.chars().filter_map(unicode::char_to_byte).collect();
                String::from_utf8(bytes).expect("utf8")
            })
            .collect()
    }

    #[test]
    fn every_kind_compiles() {
        for kind in [
            PreTokenizerKind::Default,
            PreTokenizerKind::Gpt2,
            PreTokenizerKind::Llama3,
            PreTokenizerKind::Qwen2,
            PreTokenizerKind::DeepseekLlm,
            PreTokenizerKind::DeepseekCoder,
            PreTokenizerKind::Tekken,
        ] {
            PreTokenizer::new(kind).expect("compiles");
        }
    }

    #[test]
    fn llama3_digits_and_spaces() {
        assert_eq!(
            words(
                PreTokenizerKind::Llama3,
                "Hello world 1234567  x\n\n  y's  "
            ),
            vec![
                "Hello", " world", " ", "123", "456", "7", " ", " x", "\n\n", " ", " y", "'s", "  "
            ]
        );
    }

    #[test]
    fn qwen2_single_digits() {
        assert_eq!(
            words(PreTokenizerKind::Qwen2, "ab 123"),
            vec!["ab", " ", "1", "2", "3"]
        );
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words(PreTokenizerKind::Gpt2, "I'm here!!  ok"),
            vec!["I", "'m", " here", "!!", " ", " ok"]
        );
    }

    #[test]
    fn default_splits_punctuation_and_digit_groups() {
        assert_eq!(
            words(PreTokenizerKind::Default, "a+b 12345"),
            vec!["a", "+", "b", " ", "123", "45"]
        );
    }

    #[test]
    fn deepseek_coder_isolates_cjk_and_digits() {
        assert_eq!(
            words(PreTokenizerKind::DeepseekCoder, "x = 12 中文\n"),
            vec!["x", " = ", "1", "2", " ", "中文", "\n"]
        );
    }

    #[test]
    fn emoji_zwj_sequences_stay_one_word() {
        assert_eq!(
            words(PreTokenizerKind::Qwen2, "a 👨\u{200d}👩!"),
            vec!["a", " 👨\u{200d}👩!"]
        );
    }
}
