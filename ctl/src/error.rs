//! llmctl's errors, their exit codes, hints and JSON form.

use std::path::PathBuf;
use std::time::Duration;

use llmd_shared::{ErrorReply, FrameError};
use serde::Serialize;

/// Exit code: the daemon reported an error (or speaks another protocol).
pub const EXIT_DAEMON_ERROR: u8 = 1;
/// Exit code: usage error (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Hint printed when the daemon cannot be reached.
const UNREACHABLE_HINT: &str = "is llmd running? try `systemctl status llmd`, or point llmctl at \
                                its socket with --socket or LLMD_SOCKET";

/// The hint for a socket at `path` this user may not open: join the group that owns it.
fn permission_hint(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let group = std::fs::metadata(path)
        .ok()
        .map(|m| m.gid())
        .map(|gid| group_name(gid).unwrap_or_else(|| gid.to_string()));
    match group {
        Some(group) => format!(
            "llmd is running, but only members of the group `{group}` may use its socket {}: \
             add yourself with `sudo usermod -aG {group} $USER`, then log in again (or run \
             `newgrp {group}`)",
            path.display()
        ),
        None => format!(
            "you may not open {} (or a directory above it): ask for access to the group that \
             owns llmd's socket (`usermod -aG llmd USER` with the packaged service)",
            path.display()
        ),
    }
}

/// The name of group `gid` from /etc/group, if listed there.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == gid).then(|| name.to_owned())
    })
}

/// Everything that can go wrong in llmctl.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Nothing accepts connections on the socket.
    #[error("cannot connect to llmd at {}: {source}", path.display())]
    Unreachable {
        /// The socket tried.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon closed the connection or died before answering.
    #[error("lost the connection to llmd: {0}")]
    Disconnected(FrameError),
    /// The daemon did not answer in time.
    #[error("llmd did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The daemon speaks another protocol version.
    #[error("{message}")]
    VersionMismatch {
        /// The daemon's explanation, naming both versions.
        message: String,
        /// The daemon's package version.
        daemon_version: String,
        /// The daemon's protocol version.
        daemon_protocol_version: u32,
    },
    /// The daemon refused the connection (its connection limits), saying why.
    #[error("{0}")]
    Refused(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(ErrorReply),
    /// The daemon sent something that is not a valid reply.
    #[error("protocol error talking to llmd: {0}")]
    Protocol(String),
    /// Printing the output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// An argument clap accepted is invalid on closer inspection (a split weight, a path).
    #[error("{0}")]
    Usage(String),
}

/// The JSON form of an error: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Serialize)]
pub struct JsonError {
    /// The error.
    pub error: JsonErrorBody,
}

/// Body of [`JsonError`].
#[derive(Debug, Serialize)]
pub struct JsonErrorBody {
    /// The daemon's error code (`not_found`, ...) or one of llmctl's own: `unreachable`,
    /// `disconnected`, `timeout`, `version_mismatch`, `refused`, `protocol`, `output`.
    pub code: String,
    /// The message printed to stderr.
    pub message: String,
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Unreachable { .. } | CtlError::Disconnected(_) | CtlError::Timeout(_) => {
                EXIT_UNREACHABLE
            }
            CtlError::VersionMismatch { .. }
            | CtlError::Refused(_)
            | CtlError::Daemon(_)
            | CtlError::Protocol(_)
            | CtlError::Output(_) => EXIT_DAEMON_ERROR,
            CtlError::Usage(_) => EXIT_USAGE,
        }
    }

    /// A suggestion printed after the error, if any. A socket the user may not open is not a
    /// daemon that is down: that hint names the socket's group to join.
    pub fn hint(&self) -> Option<String> {
        match self {
            CtlError::Unreachable { path, source }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some(permission_hint(path))
            }
            CtlError::Unreachable { .. } | CtlError::Disconnected(_) | CtlError::Timeout(_) => {
                Some(UNREACHABLE_HINT.to_owned())
            }
            _ => None,
        }
    }

    /// Machine-readable code (see [`JsonErrorBody::code`]).
    pub fn code(&self) -> &str {
        match self {
            CtlError::Unreachable { .. } => "unreachable",
            CtlError::Disconnected(_) => "disconnected",
            CtlError::Timeout(_) => "timeout",
            CtlError::VersionMismatch { .. } => "version_mismatch",
            CtlError::Refused(_) => "refused",
            CtlError::Daemon(e) => e.code.as_str(),
            CtlError::Protocol(_) => "protocol",
            CtlError::Output(_) => "output",
            CtlError::Usage(_) => "usage",
        }
    }

    /// The JSON form of this error.
    pub fn to_json(&self) -> JsonError {
        JsonError {
            error: JsonErrorBody {
                code: self.code().to_string(),
                message: self.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: a user outside the socket's group is told to join it, naming the group, not
    /// asked whether llmd is running.
    #[test]
    fn permission_denied_names_the_group_to_join() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir();
        let gid = std::fs::metadata(&path).expect("temp dir").gid();
        let group = group_name(gid).unwrap_or_else(|| gid.to_string());
        let e = CtlError::Unreachable {
            path: path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let hint = e.hint().expect("a hint");
        assert!(
            hint.contains(&format!("sudo usermod -aG {group} $USER")),
            "{hint}"
        );
        assert!(!hint.contains("is llmd running"), "{hint}");
        let down = CtlError::Unreachable {
            path,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(down.hint().as_deref(), Some(UNREACHABLE_HINT));
    }
}
