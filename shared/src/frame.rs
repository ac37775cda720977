//! Framing: one message is one frame, a 4-byte **big-endian** (network order) length prefix
//! followed by that many bytes of bincode 2 (`serde` encoding, standard configuration with a
//! decode limit of [`MAX_FRAME_BYTES`]).
//!
//! The length is checked against the limit as soon as its 4 bytes are known, before any buffer
//! for the payload exists; the payload buffer then grows only as bytes actually arrive, so a peer
//! that announces a large frame and stalls or vanishes costs almost nothing.
//!
//! [`FrameError::Incomplete`] ("need more bytes") is distinct from the protocol errors
//! ([`FrameError::TooLarge`], [`FrameError::Decode`], [`FrameError::TrailingBytes`]), which mean
//! the peer does not speak this protocol and the connection should be dropped.
//!
//! This file holds the pure encode/decode functions and blocking `std::io` helpers; the tokio
//! versions live in [`crate::async_io`].

use std::io::{self, Read, Write};

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::MAX_FRAME_BYTES;

/// Size of the length prefix in front of every frame.
pub const HEADER_BYTES: usize = 4;

/// Initial capacity of a payload buffer; it grows as bytes arrive, up to the announced length.
/// Keeps a hostile "16 MiB follows" prefix from reserving 16 MiB up front.
const INITIAL_PAYLOAD_CAPACITY: usize = 64 * 1024;

/// The bincode configuration of every payload: standard (little-endian varint) encoding, with
/// the decode limit set to [`MAX_FRAME_BYTES`] so that no length field inside a payload can claim
/// more. Only the 4-byte frame prefix is big-endian.
type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_BYTES>>;

fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Why a frame could not be read, decoded or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The buffer ends before the frame does (only from [`decode_frame`] on a partial buffer):
    /// read at least `needed` more bytes and try again. Not a protocol error.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes are needed at least.
        needed: usize,
    },
    /// The peer closed the connection cleanly, between two frames.
    #[error("connection closed by peer")]
    Closed,
    /// The stream ended in the middle of a frame (peer vanished mid-frame).
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        got: usize,
        /// Bytes the frame should have had (prefix included), as far as known.
        expected: usize,
    },
    /// The length prefix announces more than the limit allows; refused before allocating.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or, when sending, the actual) payload length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The payload is not a valid encoding of the expected message type.
    #[error("malformed message: {0}")]
    Decode(bincode::error::DecodeError),
    /// The payload decoded, but did not use all of its bytes.
    #[error("malformed message: {extra} unused bytes at the end of a {len}-byte frame")]
    TrailingBytes {
        /// Payload length.
        len: usize,
        /// Bytes left over after the message.
        extra: usize,
    },
    /// The message could not be encoded (a bug, or a message over the limit).
    #[error("cannot encode message: {0}")]
    Encode(bincode::error::EncodeError),
    /// Reading or writing the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl FrameError {
    /// True for [`FrameError::Incomplete`]: more bytes may complete the frame.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, FrameError::Incomplete { .. })
    }

    /// True when the peer sent something that is not this protocol (oversized, undecodable or
    /// padded frame). The connection cannot be resynchronised and should be closed.
    pub fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. } | FrameError::Decode(_) | FrameError::TrailingBytes { .. }
        )
    }

    /// True when the peer went away ([`FrameError::Closed`], [`FrameError::Truncated`] or a
    /// reset/broken-pipe i/o error).
    pub fn is_disconnect(&self) -> bool {
        match self {
            FrameError::Closed | FrameError::Truncated { .. } => true,
            FrameError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// Encodes `msg` into a complete frame (prefix + payload).
///
/// Fails with [`FrameError::TooLarge`] if the payload would exceed [`MAX_FRAME_BYTES`].
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_BYTES];
    bincode::serde::encode_into_std_write(msg, &mut out, wire_config())
        .map_err(FrameError::Encode)?;
    let len = out.len() - HEADER_BYTES;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_BYTES,
        });
    }
    // `len <= MAX_FRAME_BYTES < u32::MAX`, so the conversion cannot truncate.
    out[..HEADER_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the payload length from a frame prefix and checks it against `max` (at most
/// [`MAX_FRAME_BYTES`]).
pub fn payload_len(header: [u8; HEADER_BYTES], max: usize) -> Result<usize, FrameError> {
    let max = max.min(MAX_FRAME_BYTES);
    let len = u32::from_be_bytes(header);
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        }),
    }
}

/// Decodes one complete payload (the bytes after the prefix) into a message; every byte must be
/// used.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, used) =
        bincode::serde::decode_from_slice(payload, wire_config()).map_err(FrameError::Decode)?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes {
            len: payload.len(),
            extra: payload.len() - used,
        });
    }
    Ok(msg)
}

/// Decodes the frame at the start of `buf`, returning the message and the number of bytes it
/// took (prefix included). [`FrameError::Incomplete`] when `buf` holds only part of it.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<(T, usize), FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Incomplete {
            needed: HEADER_BYTES - buf.len(),
        });
    };
    let len = payload_len(*header, MAX_FRAME_BYTES)?;
    let total = HEADER_BYTES + len;
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total - buf.len(),
        });
    }
    let msg = decode_payload(&buf[HEADER_BYTES..total])?;
    Ok((msg, total))
}

/// Reads one frame from a blocking reader and decodes it. [`FrameError::Closed`] if the stream
/// ends cleanly before the first byte.
pub fn read_frame<R: Read, T: DeserializeOwned>(reader: &mut R) -> Result<T, FrameError> {
    read_frame_with_limit(reader, MAX_FRAME_BYTES)
}

/// [`read_frame`] with a smaller payload limit (the daemon uses one for the handshake).
pub fn read_frame_with_limit<R: Read, T: DeserializeOwned>(
    reader: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got,
                    expected: HEADER_BYTES,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = payload_len(header, max)?;
    let mut payload = Vec::with_capacity(initial_capacity(len));
    Read::take(&mut *reader, len as u64).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(FrameError::Truncated {
            got: HEADER_BYTES + payload.len(),
            expected: HEADER_BYTES + len,
        });
    }
    decode_payload(&payload)
}

/// Encodes `msg` and writes it as one frame to a blocking writer, then flushes.
pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Capacity to reserve for a payload of `len` bytes before any of it arrived.
pub(crate) fn initial_capacity(len: usize) -> usize {
    len.min(INITIAL_PAYLOAD_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_big_endian() {
        let frame = encode_frame(&"abc".to_string()).unwrap();
        assert_eq!(&frame[..4], &[0, 0, 0, 4]);
        assert_eq!(frame.len(), 8);
    }

    #[test]
    fn oversized_prefix_refused_before_payload() {
        let err = decode_frame::<String>(&[0xFF, 0xFF, 0xFF, 0xFF]).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    len: 0xFFFF_FFFF,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_protocol_error());
    }

    #[test]
    fn partial_buffers_are_incomplete_not_errors() {
        let frame = encode_frame(&vec![1u32, 2, 3]).unwrap();
        for cut in 0..frame.len() {
            let err = decode_frame::<Vec<u32>>(&frame[..cut]).unwrap_err();
            assert!(err.is_incomplete(), "cut {cut}: {err}");
        }
        let (v, used) = decode_frame::<Vec<u32>>(&frame).unwrap();
        assert_eq!((v, used), (vec![1, 2, 3], frame.len()));
    }

    #[test]
    fn trailing_bytes_are_a_protocol_error() {
        let mut frame = encode_frame(&7u8).unwrap();
        frame.push(0);
        frame[3] += 1;
        let err = decode_frame::<u8>(&frame).unwrap_err();
        assert!(
            matches!(err, FrameError::TrailingBytes { extra: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn sync_reader_distinguishes_closed_and_truncated() {
        let frame = encode_frame(&"hello".to_string()).unwrap();
        let err = read_frame::<_, String>(&mut &[][..]).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
        for cut in 1..frame.len() {
            let err = read_frame::<_, String>(&mut &frame[..cut]).unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut {cut}: {err}"
            );
            assert!(err.is_disconnect());
        }
        let msg: String = read_frame(&mut &frame[..]).unwrap();
        assert_eq!(msg, "hello");
    }

    #[test]
    fn smaller_limit_applies() {
        let frame = encode_frame(&"x".repeat(100)).unwrap();
        let err = read_frame_with_limit::<_, String>(&mut &frame[..], 50).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len: 101, max: 50 }),
            "{err}"
        );
    }
}
