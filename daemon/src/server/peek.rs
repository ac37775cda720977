//! Looking at a client socket without reading from it: whether its peer has hung up, without
//! taking any byte a request may need and without blocking.

use std::os::fd::RawFd;

/// Looks at the next byte of socket `fd` without consuming it or blocking: `Ok(0)` at the end
/// of the stream, `Ok(1)` when a byte waits, `WouldBlock` when none does yet.
pub fn peek_one(fd: RawFd) -> std::io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: the caller passes the open descriptor of a socket it owns or borrows for the
    // duration of the call; `byte` is one writable byte and the length passed is 1. MSG_PEEK
    // leaves the data in the socket, MSG_DONTWAIT makes the call non-blocking.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// True when the peer of socket `fd` has closed its end (end of stream, or an error such as a
/// reset), as far as can be told now without blocking.
pub fn has_hung_up(fd: RawFd) -> bool {
    match peek_one(fd) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn tells_waiting_data_from_a_hang_up() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        assert_eq!(
            peek_one(ours.as_raw_fd()).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(!has_hung_up(ours.as_raw_fd()));
        theirs.write_all(b"x").unwrap();
        assert_eq!(peek_one(ours.as_raw_fd()).unwrap(), 1);
        assert_eq!(
            peek_one(ours.as_raw_fd()).unwrap(),
            1,
            "a peek takes nothing"
        );
        assert!(!has_hung_up(ours.as_raw_fd()), "data first, the end after");
        drop(theirs);
        let (ours2, theirs2) = UnixStream::pair().unwrap();
        drop(theirs2);
        assert!(has_hung_up(ours2.as_raw_fd()));
    }
}
