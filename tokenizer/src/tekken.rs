//! The Tekken pre-tokenizer (Mistral Nemo, Mistral Small 3, Ministral: `tokenizer.ggml.pre =
//! "tekken"`), as llama.cpp runs it: its one expression
//!
//! ```text
//! [^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+
//! |[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*
//! |\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! goes through C++ `std::regex` (ECMAScript: the first alternative that matches at the leftmost
//! position wins, quantifiers backtrack) over the "collapsed" text, where every non-ASCII
//! codepoint is one byte naming its category. So a non-ASCII letter counts as both "not a-z"
//! and "not A-Z" (upper and lower case at once), and only ASCII letters have a case. The
//! lookaheads put it beyond the `regex` crate; this is a hand-written matcher of the same
//! expression over the same collapsed bytes, backtracking exactly where ECMAScript would.

/// `\s` of `std::regex` on the collapsed text: ASCII whitespace, and 0x0B for every non-ASCII
/// whitespace codepoint.
fn space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

/// `\p{L}` after collapsing: ASCII letters and the letter category byte.
fn letter(b: u8) -> bool {
    b == COLLAPSED_LETTER || b.is_ascii_alphabetic()
}

/// `\p{N}` after collapsing.
fn number(b: u8) -> bool {
    b == COLLAPSED_NUMBER || b.is_ascii_digit()
}

/// `(?=[\p{L}])([^a-z])`: a letter that is not ASCII lower case.
fn upper(b: u8) -> bool {
    letter(b) && !b.is_ascii_lowercase()
}

/// `(?=[\p{L}])([^A-Z])`: a letter that is not ASCII upper case.
fn lower(b: u8) -> bool {
    letter(b) && !b.is_ascii_uppercase()
}

/// `[^\r\n\p{L}\p{N}]`: what may precede a word.
fn word_prefix(b: u8) -> bool {
    !(b == b'\r' || b == b'\n' || letter(b) || number(b))
}

/// The collapsed byte of a non-ASCII letter (llama.cpp's `k_ucat_cpt`).
const COLLAPSED_LETTER: u8 = 0xD2;
/// The collapsed byte of a non-ASCII number.
const COLLAPSED_NUMBER: u8 = 0xD1;

/// How many bytes from `at` satisfy `class`.
fn run(text: &[u8], at: usize, class: fn(u8) -> bool) -> usize {
    text.get(at..)
        .map_or(0, |rest| rest.iter().take_while(|&&b| class(b)).count())
}

/// Length of the match at `p` (there always is one: every byte fits some alternative).
fn match_at(text: &[u8], p: usize) -> usize {
    // The optional word prefix, taken first (greedy), then left out.
    let prefixes = || {
        [1, 0]
            .into_iter()
            .filter(|&o| o == 0 || word_prefix(text[p]))
    };
    // 1: prefix, upper-ish letters (giving back as needed), at least one lower-ish letter.
    for o in prefixes() {
        let q = p + o;
        for k in (0..=run(text, q, upper)).rev() {
            let w = run(text, q + k, lower);
            if w > 0 {
                return o + k + w;
            }
        }
    }
    // 2: prefix, at least one upper-ish letter, lower-ish letters.
    for o in prefixes() {
        let q = p + o;
        let u = run(text, q, upper);
        if u > 0 {
            return o + u + run(text, q + u, lower);
        }
    }
    // 3: one digit.
    if number(text[p]) {
        return 1;
    }
    // 4: optional space, a run of what is neither space, letter nor digit, then line breaks
    // and slashes.
    for s in [1, 0].into_iter().filter(|&s| s == 0 || text[p] == b' ') {
        let other = run(text, p + s, |b| !(space(b) || letter(b) || number(b)));
        if other > 0 {
            let end = p + s + other;
            return end - p + run(text, end, |b| matches!(b, b'\r' | b'\n' | b'/'));
        }
    }
    let ws = run(text, p, space);
    // 5: whitespace up to and including its last line break.
    if let Some(last) = (0..ws)
        .rev()
        .find(|&k| matches!(text[p + k], b'\r' | b'\n'))
    {
        return last + 1;
    }
    // 6: whitespace not followed by a non-space: all of it at the end of the text, else all but
    // the last (which then starts the next match).
    if p + ws == text.len() {
        return ws;
    }
    if ws > 1 {
        return ws - 1;
    }
    // 7: any whitespace; a byte nothing matches (there is none) stands alone.
    ws.max(1)
}

/// Splits one piece of collapsed text into word lengths (in codepoints, one byte each).
pub(super) fn split(collapsed: &[u8], out: &mut Vec<usize>) {
    let mut p = 0;
    while p < collapsed.len() {
        let len = match_at(collapsed, p);
        out.push(len);
        p += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        let mut lens = Vec::new();
        split(text.as_bytes(), &mut lens);
        let mut at = 0;
        lens.iter()
            .map(|&n| {
                at += n;
                &text[at - n..at]
            })
            .collect()
    }

    #[test]
    fn case_runs_split_words_as_the_expression_does() {
        assert_eq!(words("Hello World"), ["Hello", " World"]);
        assert_eq!(words("HTTPServer"), ["HTTPServer"]);
        assert_eq!(words("camelCase"), ["camel", "Case"]);
        assert_eq!(words("ABC"), ["ABC"]);
        assert_eq!(words("(word)"), ["(word", ")"]);
    }

    #[test]
    fn digits_punctuation_and_whitespace() {
        assert_eq!(words("x 2024!"), ["x", " ", "2", "0", "2", "4", "!"]);
        assert_eq!(words("a/b://c"), ["a", "/b", "://", "c"]);
        assert_eq!(words("..\n\nx"), ["..\n\n", "x"]);
        assert_eq!(words("a  \n  b"), ["a", "  \n", " ", " b"]);
        assert_eq!(words("end   "), ["end", "   "]);
        assert_eq!(words("a   b"), ["a", "  ", " b"]);
        assert_eq!(words("\t"), ["\t"]);
    }

    #[test]
    fn non_ascii_letters_are_both_cases() {
        // Collapsed: a non-ASCII letter is 0xD2, in both case classes.
        let text = [b'A', COLLAPSED_LETTER, b'b', b' ', COLLAPSED_LETTER, b'C'];
        let mut lens = Vec::new();
        split(&text, &mut lens);
        assert_eq!(lens, [3, 2, 1]);
    }
}
