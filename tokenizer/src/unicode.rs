//! Unicode helpers the tokenizers share: per-codepoint category flags (the classes llama.cpp's
//! pre-tokenizers test: letter, number, mark, punctuation, symbol, whitespace) and the GPT-2
//! byte <-> printable-character mapping used by byte-level BPE vocabularies.
//!
//! The category tables come from `regex-syntax`'s Unicode data, so `\p{L}` here means exactly what
//! it means to the regular expressions in [`super::pretokenize`].

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// Highest Unicode scalar value plus one: the size of the flag table.
const CODEPOINT_LIMIT: usize = 0x11_0000;

/// Category flags of one codepoint (a bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpFlags(u8);

impl CpFlags {
    /// `\p{L}`.
    pub const LETTER: u8 = 1 << 0;
    /// `\p{N}`.
    pub const NUMBER: u8 = 1 << 1;
    /// `\p{M}`.
    pub const MARK: u8 = 1 << 2;
    /// `\p{P}`.
    pub const PUNCTUATION: u8 = 1 << 3;
    /// `\p{S}`.
    pub const SYMBOL: u8 = 1 << 4;
    /// `\s`: the Unicode White_Space property.
    pub const WHITESPACE: u8 = 1 << 5;
    /// Set on every codepoint that exists, so that "a codepoint past the end of the text" (no
    /// flags at all) can be told from "a codepoint of no interesting category", as llama.cpp does.
    pub const PRESENT: u8 = 1 << 6;

    /// The flags of a position past the end of the text.
    pub const NONE: CpFlags = CpFlags(0);

    /// True for `\p{L}`.
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    /// True for `\p{N}`.
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    /// True for `\p{M}`.
    pub fn is_mark(self) -> bool {
        self.0 & Self::MARK != 0
    }
    /// True for `\p{P}`.
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    /// True for `\p{S}`.
    pub fn is_symbol(self) -> bool {
        self.0 & Self::SYMBOL != 0
    }
    /// True for `\s`.
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    /// False only for [`CpFlags::NONE`] (a position outside the text).
    pub fn is_present(self) -> bool {
        self.0 != 0
    }
}

/// The flag table, one byte per codepoint, built once on first use (about 1.1 MB).
fn flag_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![CpFlags::PRESENT; CODEPOINT_LIMIT];
        let classes = [
            (r"\p{L}", CpFlags::LETTER),
            (r"\p{N}", CpFlags::NUMBER),
            (r"\p{M}", CpFlags::MARK),
            (r"\p{P}", CpFlags::PUNCTUATION),
            (r"\p{S}", CpFlags::SYMBOL),
            (r"\p{White_Space}", CpFlags::WHITESPACE),
        ];
        for (pattern, bit) in classes {
            for (lo, hi) in class_ranges(pattern) {
                for cp in lo..=hi {
                    table[cp as usize] |= bit;
                }
            }
        }
        table
    })
}

/// The codepoint ranges of a Unicode class expression such as `\p{L}`.
fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    // The patterns are fixed strings known to be valid; a failure here is a build defect that
    // every test would show, so an empty class (no codepoint gets the flag) is the only fallback.
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// The category flags of `cp`.
pub fn flags(cp: char) -> CpFlags {
    CpFlags(flag_table()[cp as usize])
}

/// The GPT-2 byte-to-character table: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes map in order to U+0100 and up.
fn byte_to_char_table() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut next = 256u32;
        for (byte, slot) in table.iter_mut().enumerate() {
            let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if printable {
                byte as u32
            } else {
                let cp = next;
                next += 1;
                cp
            };
            // Every value is below 0x144, a valid scalar value.
            *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
        }
        table
    })
}

/// The character that stands for `byte` in a byte-level BPE vocabulary.
pub fn byte_to_char(byte: u8) -> char {
    byte_to_char_table()[byte as usize]
}

/// The byte a byte-level BPE character stands for, or `None` for a character outside the table.
pub fn char_to_byte(c: char) -> Option<u8> {
    static REVERSE: OnceLock<[Option<u8>; 0x144]> = OnceLock::new();
    let reverse = REVERSE.get_or_init(|| {
        let mut reverse = [None; 0x144];
        for (byte, &c) in byte_to_char_table().iter().enumerate() {
            reverse[c as usize] = Some(byte as u8);
        }
        reverse
    });
    reverse.get(c as usize).copied().flatten()
}

/// Encodes `text`'s UTF-8 bytes as GPT-2 byte characters.
pub fn byte_encode(text: &str, out: &mut String) {
    for &b in text.as_bytes() {
        out.push(byte_to_char(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_match_unicode() {
        assert!(flags('a').is_letter());
        assert!(flags('é').is_letter());
        assert!(flags('中').is_letter());
        assert!(flags('7').is_number());
        assert!(flags('½').is_number());
        assert!(flags('\u{0301}').is_mark());
        assert!(flags('!').is_punctuation());
        assert!(flags('$').is_symbol());
        assert!(flags('😀').is_symbol());
        for ws in [
            ' ', '\t', '\n', '\r', '\u{0B}', '\u{0C}', '\u{85}', '\u{A0}', '\u{3000}',
        ] {
            assert!(flags(ws).is_whitespace(), "{ws:?}");
        }
        assert!(!flags('\u{200B}').is_whitespace());
        assert!(flags('\u{200D}').is_present());
        assert!(!CpFlags::NONE.is_present());
    }

    #[test]
    fn gpt2_byte_map_round_trips() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('中'), None);
    }
}
