//! A batch of tokens for one forward pass. Tokens may belong to several sequences, each with its
//! own positions and KV cache; the tokens of one sequence are contiguous and in position order.

use std::ops::Range;

/// Identifies a sequence (one generation) within a loaded model.
pub type SeqId = u64;

/// The tokens of one forward pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// The sequence of each token.
    pub seqs: Vec<SeqId>,
    /// Whether the logits of each token are wanted.
    pub logits: Vec<bool>,
}

/// A run of consecutive batch rows that belong to one sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The sequence.
    pub seq: SeqId,
    /// Its rows in the batch.
    pub rows: Range<usize>,
}

impl Batch {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Removes every token.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.seqs.clear();
        self.logits.clear();
    }

    /// Appends a token.
    pub fn push(&mut self, token: u32, position: u32, seq: SeqId, want_logits: bool) {
        self.tokens.push(token);
        self.positions.push(position);
        self.seqs.push(seq);
        self.logits.push(want_logits);
    }

    /// Number of tokens whose logits are wanted.
    pub fn n_logits(&self) -> usize {
        self.logits.iter().filter(|&&l| l).count()
    }

    /// The runs of rows belonging to one sequence, in batch order.
    pub fn segments(&self) -> Vec<Segment> {
        let mut out: Vec<Segment> = Vec::new();
        for (row, &seq) in self.seqs.iter().enumerate() {
            match out.last_mut() {
                Some(last) if last.seq == seq && last.rows.end == row => last.rows.end = row + 1,
                _ => out.push(Segment {
                    seq,
                    rows: row..row + 1,
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_group_consecutive_rows_of_a_sequence() {
        let mut b = Batch::default();
        b.push(1, 0, 7, false);
        b.push(2, 1, 7, true);
        b.push(3, 5, 9, true);
        b.push(4, 2, 7, true);
        assert_eq!(
            b.segments(),
            vec![
                Segment { seq: 7, rows: 0..2 },
                Segment { seq: 9, rows: 2..3 },
                Segment { seq: 7, rows: 3..4 }
            ]
        );
        assert_eq!(b.n_logits(), 3);
    }
}
