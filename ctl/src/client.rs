//! A blocking connection to llmd: connect, handshake, then requests one after another, each
//! answered by zero or more events and one final reply or error.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use llmd_shared::frame::{read_frame, read_frame_with_limit, write_frame};
use llmd_shared::handshake::MAX_HELLO_BYTES;
use llmd_shared::{
    Event, FrameError, Hello, HelloReply, Reply, Request, Response, PROTOCOL_VERSION,
};

use crate::CtlError;

/// How long the daemon has to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default limit on the silence between two frames of a reply (an event resets it).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long writing a request may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// An open, handshaken connection to the daemon.
pub struct Client {
    /// Buffered read half.
    reader: BufReader<UnixStream>,
    /// Write half (the same socket).
    writer: UnixStream,
    /// The daemon's package version, from the handshake.
    daemon_version: String,
    /// The daemon's protocol version, from the handshake.
    daemon_protocol_version: u32,
    /// Current limit on the silence between reply frames (`None`: wait forever).
    reply_timeout: Option<Duration>,
}

impl Client {
    /// Connects to the daemon at `path` and performs the version handshake.
    pub fn connect(path: &Path) -> Result<Client, CtlError> {
        let stream = UnixStream::connect(path).map_err(|source| CtlError::Unreachable {
            path: path.to_path_buf(),
            source,
        })?;
        let setup = |e: std::io::Error| CtlError::Unreachable {
            path: path.to_path_buf(),
            source: e,
        };
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(setup)?;
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(setup)?;
        let mut writer = stream.try_clone().map_err(setup)?;
        let mut reader = BufReader::new(stream);
        write_frame(&mut writer, &Hello::current())
            .map_err(|e| frame_error(e, HANDSHAKE_TIMEOUT))?;
        let reply: HelloReply = read_frame_with_limit(&mut reader, MAX_HELLO_BYTES)
            .map_err(|e| frame_error(e, HANDSHAKE_TIMEOUT))?;
        match reply {
            HelloReply::Accepted {
                protocol_version,
                server_version,
            } => {
                let mut client = Client {
                    reader,
                    writer,
                    daemon_version: server_version,
                    daemon_protocol_version: protocol_version,
                    reply_timeout: None,
                };
                client.set_reply_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
                Ok(client)
            }
            // A rejection by a daemon of our own protocol is not about versions: it is at a
            // connection limit and says so.
            HelloReply::Rejected {
                protocol_version: PROTOCOL_VERSION,
                message,
                ..
            } => Err(CtlError::Refused(message)),
            HelloReply::Rejected {
                protocol_version,
                server_version,
                message,
            } => Err(CtlError::VersionMismatch {
                message,
                daemon_version: server_version,
                daemon_protocol_version: protocol_version,
            }),
        }
    }

    /// The daemon's package version.
    pub fn daemon_version(&self) -> &str {
        &self.daemon_version
    }

    /// The daemon's protocol version.
    pub fn daemon_protocol_version(&self) -> u32 {
        self.daemon_protocol_version
    }

    /// Sets the limit on the silence between two frames of a reply (`None`: no limit, for
    /// operations whose events may be far apart).
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) -> Result<(), CtlError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|e| CtlError::Protocol(format!("cannot set the read timeout: {e}")))?;
        self.reply_timeout = timeout;
        Ok(())
    }

    /// Sends `request`, passes each event to `on_event`, and returns the final reply (or the
    /// daemon's error as [`CtlError::Daemon`]).
    pub fn request(
        &mut self,
        request: &Request,
        mut on_event: impl FnMut(Event) -> Result<(), CtlError>,
    ) -> Result<Reply, CtlError> {
        let timeout = self.reply_timeout.unwrap_or(Duration::MAX);
        write_frame(&mut self.writer, request).map_err(|e| frame_error(e, WRITE_TIMEOUT))?;
        loop {
            let response: Response =
                read_frame(&mut self.reader).map_err(|e| frame_error(e, timeout))?;
            match response {
                Response::Event(event) => on_event(event)?,
                Response::Reply(reply) => return Ok(reply),
                Response::Error(err) => return Err(CtlError::Daemon(err)),
            }
        }
    }
}

fn frame_error(e: FrameError, timeout: Duration) -> CtlError {
    match e {
        FrameError::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            CtlError::Timeout(timeout)
        }
        e if e.is_disconnect() => CtlError::Disconnected(e),
        e => CtlError::Protocol(e.to_string()),
    }
}
