//! SentencePiece-style tokenization (`tokenizer.ggml.model = "llama"`), as llama.cpp's
//! `llm_tokenizer_spm_session`: start from single characters and repeatedly merge the adjacent
//! pair whose concatenation is the highest-scoring vocabulary token; characters that end up in
//! no token fall back to byte tokens (`<0xXX>`).
//!
//! The caller has already escaped spaces as `▁` and added the space prefix.

use std::collections::BinaryHeap;

use super::merge::{Bigram, Symbol};
use super::Tokenizer;

/// Tokenizes one escaped text fragment, appending ids to `out`.
pub(super) fn tokenize(vocab: &Tokenizer, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8();
        let i = i as i32;
        symbols.push(Symbol {
            prev: i - 1,
            next: if start + len == text.len() { -1 } else { i + 1 },
            start,
            len,
        });
    }
    if symbols.is_empty() {
        return;
    }

    let mut queue = BinaryHeap::new();
    let try_add =
        |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram<f32>>, left: i32, right: i32| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (symbols[left as usize], symbols[right as usize]);
            let size = l.len + r.len;
            let Some(piece) = text.get(l.start..l.start + size) else {
                return;
            };
            if let Some(id) = vocab.text_to_token(piece) {
                queue.push(Bigram {
                    left,
                    right,
                    priority: vocab.score(id),
                    size,
                });
            }
        };

    for i in 1..symbols.len() as i32 {
        try_add(&symbols, &mut queue, i - 1, i);
    }

    while let Some(bigram) = queue.pop() {
        let (li, ri) = (bigram.left as usize, bigram.right as usize);
        let (l, r) = (symbols[li], symbols[ri]);
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
        try_add(&symbols, &mut queue, prev, bigram.left);
        try_add(&symbols, &mut queue, bigram.left, next);
    }

    let mut i: i32 = 0;
    while i != -1 {
        let sym = symbols[i as usize];
        let piece = &text[sym.start..sym.start + sym.len];
        match vocab.text_to_token(piece) {
            Some(id) => out.push(id),
            // Only single characters can be missing from the vocabulary (every merge produced a
            // token): spell them as bytes.
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = vocab.byte_token(b) {
                        out.push(id);
                    }
                }
            }
        }
        i = sym.next;
    }
}
