//! Streaming detokenization: token ids in, text out only at complete UTF-8 characters.
//!
//! A token's bytes may end inside a multi-byte character (byte-fallback tokens `<0xE4>` ..., or
//! BPE tokens that split an emoji); [`StreamDecoder`] holds such a tail back until the rest
//! arrives. Bytes that can never become valid UTF-8 are emitted as U+FFFD, and an incomplete tail
//! is flushed as U+FFFD by [`StreamDecoder::finish`]. Concatenating every returned string equals
//! `String::from_utf8_lossy` of the concatenated pieces.

use super::Tokenizer;

/// Incremental ids-to-text decoder.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    /// Bytes of an incomplete character waiting for the next token.
    pending: Vec<u8>,
    /// Render control tokens (`token_to_piece(.., special)`).
    special: bool,
    /// No token seen yet.
    at_start: bool,
    /// Drop a leading BOS (the first token only).
    skip_bos: bool,
    /// Remove one leading space from the first rendered token (SentencePiece space prefix).
    strip_space: bool,
}

impl StreamDecoder {
    /// A decoder for a continuation (tokens generated after a prompt): every piece is emitted as
    /// it is, as llama.cpp's generation tools print `token_to_piece` per token.
    pub fn new(special: bool) -> Self {
        Self {
            pending: Vec::new(),
            special,
            at_start: true,
            skip_bos: false,
            strip_space: false,
        }
    }

    /// A decoder for a whole sequence from its first token, matching
    /// [`Tokenizer::decode`]`(ids, remove_special = true, special)`: a leading BOS the model adds
    /// is dropped, and when there is none, the space the SentencePiece tokenizer prefixed to the
    /// text is removed from the first token. (llama.cpp's clean-up of spaces before punctuation,
    /// which some BPE vocabularies ask for, needs the whole text and is not applied.)
    pub fn for_sequence(tokenizer: &Tokenizer, special: bool) -> Self {
        Self {
            pending: Vec::new(),
            special,
            at_start: true,
            skip_bos: tokenizer.add_bos,
            strip_space: tokenizer.add_space_prefix,
        }
    }

    /// Feeds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        let mut piece = tokenizer.token_to_piece(id, self.special);
        if self.at_start {
            self.at_start = false;
            if self.skip_bos && tokenizer.bos == Some(id) {
                return String::new();
            }
            if self.strip_space {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
        }
        self.pending.extend_from_slice(piece);
        self.drain(false)
    }

    /// Ends the stream: returns what is left, an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes every complete (or definitely invalid) prefix out of `pending`.
    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut pos = 0;
        while pos < self.pending.len() {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid` is UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(&self.pending[pos..pos + valid]));
                    pos += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            pos += bad;
                        }
                        None => {
                            if at_end {
                                out.push('\u{FFFD}');
                                pos = self.pending.len();
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..pos);
        out
    }
}
