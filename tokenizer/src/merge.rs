//! The pieces the two merge-based tokenizers share (byte-level BPE in `bpe.rs`, SentencePiece in
//! `spm.rs`): the linked list of symbols a word is cut into, and the queue entry of a candidate
//! merge of two neighbours. They differ only in what ranks a merge (a merge rank, lower first;
//! a token score, higher first), which [`MergePriority`] expresses.

use std::cmp::{Ordering, Reverse};

/// One symbol of the working text: a byte range, linked to its neighbours.
#[derive(Clone, Copy, Debug)]
pub(super) struct Symbol {
    /// Index of the previous live symbol, or -1.
    pub prev: i32,
    /// Index of the next live symbol, or -1.
    pub next: i32,
    /// Byte offset in the text.
    pub start: usize,
    /// Byte length; 0 once merged into its left neighbour.
    pub len: usize,
}

/// How candidate merges are ranked: the greater merges first.
pub(super) trait MergePriority: Copy {
    /// Compares two priorities; `Greater` merges first.
    fn compare(&self, other: &Self) -> Ordering;
}

/// BPE: the lowest merge rank first.
impl MergePriority for Reverse<u32> {
    fn compare(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

/// SentencePiece: the highest token score first.
impl MergePriority for f32 {
    fn compare(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug)]
pub(super) struct Bigram<P> {
    /// Left symbol index.
    pub left: i32,
    /// Right symbol index.
    pub right: i32,
    /// Its rank among the candidates.
    pub priority: P,
    /// Byte length of the merged text, to detect stale candidates.
    pub size: usize,
}

impl<P: MergePriority> PartialEq for Bigram<P> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<P: MergePriority> Eq for Bigram<P> {}
impl<P: MergePriority> PartialOrd for Bigram<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P: MergePriority> Ord for Bigram<P> {
    /// `BinaryHeap` pops the greatest: the first-ranked merge, on a tie the leftmost pair (as
    /// llama.cpp's comparators).
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .compare(&other.priority)
            .then_with(|| other.left.cmp(&self.left))
    }
}
