//! Byte-level BPE tokenization (`tokenizer.ggml.model = "gpt2"`), as llama.cpp's
//! `llm_tokenizer_bpe_session`: each pre-tokenized word (already in GPT-2 byte characters) starts
//! as single characters and the adjacent pair with the lowest merge rank is merged until no pair
//! has a rank.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::merge::{Bigram, Symbol};
use super::Tokenizer;

/// Reusable buffers for tokenizing many words.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Working symbols of the current word.
    symbols: Vec<Symbol>,
    /// Candidate merges.
    queue: BinaryHeap<Bigram<Reverse<u32>>>,
    /// "left right" key buffer for merge look-ups.
    key: String,
}

/// Tokenizes one byte-encoded word, appending ids to `out`.
pub(super) fn tokenize_word(
    vocab: &Tokenizer,
    word: &str,
    scratch: &mut Scratch,
    out: &mut Vec<u32>,
) {
    if word.is_empty() {
        return;
    }
    if vocab.ignore_merges() {
        if let Some(id) = vocab.text_to_token(word) {
            out.push(id);
            return;
        }
    }

    let Scratch {
        symbols,
        queue,
        key,
    } = scratch;
    symbols.clear();
    queue.clear();
    for (i, (start, c)) in word.char_indices().enumerate() {
        let len = c.len_utf8();
        let i = i as i32;
        symbols.push(Symbol {
            prev: i - 1,
            next: if start + len == word.len() { -1 } else { i + 1 },
            start,
            len,
        });
    }

    let mut try_add = |symbols: &[Symbol],
                       queue: &mut BinaryHeap<Bigram<Reverse<u32>>>,
                       left: i32,
                       right: i32| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        let left_text = &word[l.start..l.start + l.len];
        let right_text = &word[r.start..r.start + r.len];
        if let Some(rank) = vocab.merge_rank(key, left_text, right_text) {
            queue.push(Bigram {
                left,
                right,
                priority: Reverse(rank),
                size: l.len + r.len,
            });
        }
    };

    for i in 1..symbols.len() as i32 {
        try_add(symbols, queue, i - 1, i);
    }

    while let Some(bigram) = queue.pop() {
        let (li, ri) = (bigram.left as usize, bigram.right as usize);
        let (l, r) = (symbols[li], symbols[ri]);
        // Both still live and still exactly the pair that was ranked (see module docs of spm.rs:
        // a live left symbol keeps its start, so equal length means equal text).
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        symbols[li].len += r.len;
        symbols[ri].len = 0;
        symbols[li].next = r.next;
        if r.next >= 0 {
            symbols[r.next as usize].prev = bigram.left;
        }
        let prev = symbols[li].prev;
        let next = symbols[li].next;
        try_add(symbols, queue, prev, bigram.left);
        try_add(symbols, queue, bigram.left, next);
    }

    for sym in symbols.iter().filter(|s| s.len > 0) {
        let piece = &word[sym.start..sym.start + sym.len];
        match vocab.text_to_token(piece) {
            Some(id) => out.push(id),
            None => {
                // llama.cpp looks each byte of the piece up as a one-byte token and drops the
                // ones that are not tokens.
                for &b in piece.as_bytes() {
                    if b.is_ascii() {
                        let one = [b];
                        if let Some(id) = std::str::from_utf8(&one)
                            .ok()
                            .and_then(|s| vocab.text_to_token(s))
                        {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}
