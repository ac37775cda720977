//! What the output head hands back for the rows of a step that want logits: each row's whole
//! logits, or only the candidates its sampler needs ([`RowRequest`]), which a device picks
//! itself ([`llmd_kernels::backend::Backend::select`]) so that a few bytes cross to the host
//! instead of `4 * n_vocab` per row.

use std::ops::Range;

use llmd_kernels::select::{Candidate, Selection, CANDIDATE_FLOATS, MAX_DEVICE_TOP_K};

/// The environment variable that turns the device's selection off (`0`): the head then reads
/// every row's logits and picks candidates on the host (the same candidates, for comparisons
/// and measurements).
pub const DEVICE_SELECT_ENV: &str = "LLMD_GPU_SELECT";

/// f32 values of the head's selection buffer per row: an argmax candidate and up to
/// [`MAX_DEVICE_TOP_K`] top-k candidates (a step may ask both of different rows).
pub const SELECTED_FLOATS_PER_ROW: usize = CANDIDATE_FLOATS * (1 + MAX_DEVICE_TOP_K);

/// Whether heads pick candidates on their device (unless [`DEVICE_SELECT_ENV`] is `0`).
pub fn device_select_enabled() -> bool {
    std::env::var(DEVICE_SELECT_ENV).as_deref() != Ok("0")
}

/// What a row wanting logits asks the head for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RowRequest {
    /// Its whole logits row (a sampler with penalties or without top-k, or a caller that looks
    /// at the logits).
    #[default]
    Logits,
    /// Only the candidates `Selection` picks.
    Select(Selection),
}

/// One row's result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowResult<'a> {
    /// Its logits, `n_vocab` values.
    Logits(&'a [f32]),
    /// The candidates it asked for, in rank order.
    Candidates(&'a [Candidate]),
}

/// The head's results for the rows of a step wanting logits, in batch order; reused across
/// steps.
#[derive(Debug, Default)]
pub struct HeadOutput {
    /// What each row wanting logits asks, in batch order, set by the caller; rows past its end
    /// ask [`RowRequest::Logits`].
    pub requests: Vec<RowRequest>,
    /// The logits of every row (`n_vocab` each, in batch order) when the head read them whole
    /// (some row asked for them, or the device's selection is off), else empty.
    pub logits: Vec<f32>,
    /// The candidates of the rows that asked for a selection, row after row.
    candidates: Vec<Candidate>,
    /// Per row with results, its candidates' range in `candidates` (empty for a row asking
    /// logits).
    ranges: Vec<Range<usize>>,
    /// Values per logits row.
    n_vocab: usize,
}

impl HeadOutput {
    /// An output whose `n` rows all ask `request` (the caller may edit `requests`).
    pub fn asking(request: RowRequest, n: usize) -> Self {
        HeadOutput {
            requests: vec![request; n],
            ..Default::default()
        }
    }

    /// What row `i` asks.
    pub fn request(&self, i: usize) -> RowRequest {
        self.requests.get(i).copied().unwrap_or_default()
    }

    /// Forgets the previous step's results (the requests stay).
    pub fn clear(&mut self) {
        self.logits.clear();
        self.candidates.clear();
        self.ranges.clear();
    }

    /// Starts a step's results over rows of `n_vocab` values.
    pub(super) fn begin(&mut self, n_vocab: usize) {
        self.clear();
        self.n_vocab = n_vocab;
    }

    /// Appends the next row's candidates.
    pub(super) fn push_row(&mut self, candidates: impl IntoIterator<Item = Candidate>) {
        let start = self.candidates.len();
        self.candidates.extend(candidates);
        self.ranges.push(start..self.candidates.len());
    }

    /// How many rows have results.
    pub fn rows(&self) -> usize {
        self.ranges.len()
    }

    /// Row `i`'s result: what it asked for (a row asking a selection gets its candidates even
    /// when the logits were read whole).
    pub fn row(&self, i: usize) -> Option<RowResult<'_>> {
        let range = self.ranges.get(i)?;
        match self.request(i) {
            RowRequest::Select(_) => Some(RowResult::Candidates(&self.candidates[range.clone()])),
            RowRequest::Logits => self
                .logits
                .get(i * self.n_vocab..(i + 1) * self.n_vocab)
                .map(RowResult::Logits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_give_what_they_asked() {
        let mut out = HeadOutput::asking(RowRequest::Logits, 1);
        out.requests.push(RowRequest::Select(Selection::Argmax));
        out.begin(3);
        out.logits.extend([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        out.push_row([]);
        let c = Candidate { id: 2, value: 6.0 };
        out.push_row([c]);
        assert_eq!(out.rows(), 2);
        assert_eq!(out.row(0), Some(RowResult::Logits(&[1.0, 2.0, 3.0])));
        assert_eq!(out.row(1), Some(RowResult::Candidates(&[c])));
        assert_eq!(out.row(2), None);
        out.clear();
        assert_eq!(out.rows(), 0);
        assert_eq!(out.request(1), RowRequest::Select(Selection::Argmax));
    }
}
