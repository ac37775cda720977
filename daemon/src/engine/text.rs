//! A generation's text: the tokenizer's [`StreamDecoder`] releases text only at complete UTF-8
//! characters, and text that might be the start of a stop string is held here until it is known
//! not to be one.

use llmd_tokenizer::{StreamDecoder, Tokenizer};

/// Accumulates generated tokens and releases text.
#[derive(Clone, Debug)]
pub struct TextStream {
    /// Token ids to text, holding back an incomplete trailing character.
    decoder: StreamDecoder,
    /// Decoded text not yet released (may be the start of a stop string).
    held: String,
    /// Stop strings; generation ends at the first occurrence of any.
    stops: Vec<String>,
    /// All text released so far.
    released: String,
}

/// What pushing a token produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Text that may be shown now.
    pub text: String,
    /// A stop string was completed; generation must end (the stop string is not released).
    pub stopped: bool,
}

impl TextStream {
    /// A stream that stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            // A continuation: every piece as it is, control tokens not rendered.
            decoder: StreamDecoder::new(false),
            held: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            released: String::new(),
        }
    }

    /// Everything released so far.
    pub fn released(&self) -> &str {
        &self.released
    }

    /// Adds generated token `id`.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Pushed {
        let text = self.decoder.push(tokenizer, id);
        self.held.push_str(&text);
        self.release()
    }

    /// Releases whatever is held at the end of generation (an incomplete character becomes
    /// U+FFFD).
    pub fn finish(&mut self) -> String {
        let tail = self.decoder.finish();
        self.held.push_str(&tail);
        let out = std::mem::take(&mut self.held);
        self.released.push_str(&out);
        out
    }

    /// Releases the held text up to a stop string (ending the stream), or up to the longest
    /// suffix that may still become one.
    fn release(&mut self) -> Pushed {
        if let Some((at, _)) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
            .min()
        {
            let text: String = self.held[..at].to_string();
            self.held.clear();
            // Bytes after the stop string are never shown, not even at `finish`.
            self.decoder = StreamDecoder::new(false);
            self.released.push_str(&text);
            return Pushed {
                text,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.held.ends_with(&stop[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let text: String = self.held[..cut].to_string();
        self.held.drain(..cut);
        self.released.push_str(&text);
        Pushed {
            text,
            stopped: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use llmd_tokenizer::testing::spm;

    use super::*;

    /// A vocabulary of the 256 byte tokens (and three specials): text in, one token per byte.
    fn bytes() -> Tokenizer {
        Tokenizer::from_metadata(&spm(&[])).expect("tokenizer")
    }

    /// Pushes the byte tokens of `b`; returns the text released.
    fn push(s: &mut TextStream, t: &Tokenizer, b: &[u8]) -> Pushed {
        let mut out = Pushed {
            text: String::new(),
            stopped: false,
        };
        for &byte in b {
            let p = s.push(t, 3 + u32::from(byte));
            out.text.push_str(&p.text);
            out.stopped |= p.stopped;
        }
        out
    }

    #[test]
    fn multibyte_character_split_across_tokens_is_released_once_complete() {
        let t = bytes();
        let mut s = TextStream::new(vec![]);
        let euro = "€".as_bytes();
        assert_eq!(push(&mut s, &t, &euro[..1]).text, "");
        assert_eq!(push(&mut s, &t, &euro[1..2]).text, "");
        assert_eq!(push(&mut s, &t, &euro[2..]).text, "€");
        assert_eq!(push(&mut s, &t, b" ok").text, " ok");
        assert_eq!(s.released(), "€ ok");
    }

    #[test]
    fn stop_string_is_held_then_cut() {
        let t = bytes();
        let mut s = TextStream::new(vec!["\nUser:".into()]);
        assert_eq!(push(&mut s, &t, b"Hello").text, "Hello");
        assert_eq!(push(&mut s, &t, b"\nUs").text, "");
        let p = push(&mut s, &t, b"er:");
        assert_eq!(
            p,
            Pushed {
                text: String::new(),
                stopped: true
            }
        );
        assert_eq!(s.released(), "Hello");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn held_prefix_released_when_it_diverges_and_invalid_bytes_become_replacement() {
        let t = bytes();
        let mut s = TextStream::new(vec!["STOP".into()]);
        assert_eq!(push(&mut s, &t, b"ST").text, "");
        assert_eq!(push(&mut s, &t, b"AR").text, "STAR");
        assert_eq!(push(&mut s, &t, &[0xff, b'a']).text, "\u{fffd}a");
        assert_eq!(push(&mut s, &t, &[0xe2, 0x82]).text, "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
