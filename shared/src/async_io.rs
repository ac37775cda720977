//! Frame read/write helpers over tokio's `AsyncRead` / `AsyncWrite` (feature `tokio`), with the
//! same semantics as the blocking ones in [`crate::frame`]: the length is checked before any
//! payload buffer exists, and the buffer grows only as bytes arrive.
//!
//! These functions have no timeouts of their own; callers that face untrusted peers wrap them in
//! `tokio::time::timeout`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{decode_payload, encode_frame, initial_capacity, payload_len, HEADER_BYTES};
use crate::{FrameError, MAX_FRAME_BYTES};

/// Reads one frame and decodes it. [`FrameError::Closed`] if the stream ends cleanly before the
/// first byte, [`FrameError::Truncated`] if it ends inside the frame.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_with_limit(reader, MAX_FRAME_BYTES).await
}

/// [`read_frame`] with a smaller payload limit (the daemon uses one for the handshake).
pub async fn read_frame_with_limit<R, T>(reader: &mut R, max: usize) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let header = read_header(reader).await?;
    read_payload(reader, header, max).await
}

/// Reads the 4-byte prefix of the next frame. Split from [`read_payload`] so that a server can
/// wait for the next request without a deadline, then bound the rest of the frame with one.
pub async fn read_header<R>(reader: &mut R) -> Result<[u8; HEADER_BYTES], FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match reader.read(&mut header[got..]).await? {
            0 if got == 0 => return Err(FrameError::Closed),
            0 => {
                return Err(FrameError::Truncated {
                    got,
                    expected: HEADER_BYTES,
                })
            }
            n => got += n,
        }
    }
    Ok(header)
}

/// Reads and decodes the payload announced by `header`, refusing lengths over `max` (itself
/// capped at [`MAX_FRAME_BYTES`]) before reading anything.
pub async fn read_payload<R, T>(
    reader: &mut R,
    header: [u8; HEADER_BYTES],
    max: usize,
) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let len = payload_len(header, max)?;
    let mut payload = Vec::with_capacity(initial_capacity(len));
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await?;
    if payload.len() < len {
        return Err(FrameError::Truncated {
            got: HEADER_BYTES + payload.len(),
            expected: HEADER_BYTES + len,
        });
    }
    decode_payload(&payload)
}

/// Reads and decodes a payload of exactly `len` bytes whose length the caller has already
/// checked (with [`payload_len`](crate::frame::payload_len)) and accounted for: the buffer is
/// reserved whole, so it never grows past `len` (a growing buffer may briefly hold twice as
/// much while it is copied). For servers that budget the memory of frames in flight.
pub async fn read_payload_of_len<R, T>(reader: &mut R, len: usize) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut payload = Vec::with_capacity(len);
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await?;
    if payload.len() < len {
        return Err(FrameError::Truncated {
            got: HEADER_BYTES + payload.len(),
            expected: HEADER_BYTES + len,
        });
    }
    decode_payload(&payload)
}

/// Encodes `msg`, writes it as one frame and flushes.
pub async fn write_frame<W, T>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(msg)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn async_round_trip_and_eof() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &"one".to_string()).await.unwrap();
            write_frame(&mut a, &vec![0u8; 1000]).await.unwrap();
        });
        let one: String = read_frame(&mut b).await.unwrap();
        let big: Vec<u8> = read_frame(&mut b).await.unwrap();
        writer.await.unwrap();
        assert_eq!(one, "one");
        assert_eq!(big.len(), 1000);
        let end = read_frame::<_, String>(&mut b).await.unwrap_err();
        assert!(matches!(end, FrameError::Closed), "{end}");
    }

    #[tokio::test]
    async fn payload_of_a_known_length() {
        let frame = encode_frame(&"sized".to_string()).unwrap();
        let len = payload_len(frame[..HEADER_BYTES].try_into().unwrap(), MAX_FRAME_BYTES).unwrap();
        let mut rest = &frame[HEADER_BYTES..];
        let msg: String = read_payload_of_len(&mut rest, len).await.unwrap();
        assert_eq!(msg, "sized");
        let mut short = &frame[HEADER_BYTES..frame.len() - 1];
        let err = read_payload_of_len::<_, String>(&mut short, len)
            .await
            .unwrap_err();
        assert!(err.is_disconnect(), "{err}");
        let err = read_payload_of_len::<_, String>(&mut &[][..], MAX_FRAME_BYTES + 1)
            .await
            .unwrap_err();
        assert!(err.is_protocol_error(), "{err}");
    }

    #[tokio::test]
    async fn async_refuses_huge_prefix() {
        let mut input: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3];
        let err = read_frame::<_, String>(&mut input).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }
}
