//! Byte-level BPE tokenization (`tokenizer.ggml.model = "gpt2"`), as llama.cpp's
//! `llm_tokenizer_bpe_session`: each pre-tokenized word (already in GPT-2 byte characters) starts
//! as single characters and the adjacent pair with the lowest merge rank is merged until no pair
//! has a rank.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Tokenizer;

/// One symbol of the working word: a byte range, linked to its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    /// Index of the previous live symbol, or -1.
    prev: i32,
    /// Index of the next live symbol, or -1.
    next: i32,
    /// Byte offset in the word.
    start: usize,
    /// Byte length; 0 once merged into its left neighbour.
    len: usize,
}

/// A candidate merge.
#[derive(Debug)]
struct Bigram {
    /// Left symbol index.
    left: i32,
    /// Right symbol index.
    right: i32,
    /// Merge rank (lower merges first).
    rank: u32,
    /// Byte length of the merged text, to detect stale candidates.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// `BinaryHeap` pops the greatest: lowest rank first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Reusable buffers for tokenizing many words.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Working symbols of the current word.
    symbols: Vec<Symbol>,
    /// Candidate merges.
    queue: BinaryHeap<Bigram>,
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

    let mut try_add =
        |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, left: i32, right: i32| {
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
                    rank,
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
