//! The listening socket: bound by the daemon at the resolved path (replacing a stale socket file,
//! refusing to steal a live one), or inherited from systemd socket activation (`LISTEN_FDS`).
//!
//! A bound socket gets mode 0660 and, optionally, the configured group before it becomes visible
//! at its path: it is bound under a temporary name in the same directory, its permissions set,
//! and then renamed into place.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Permissions of the socket file: owner and group may connect, others may not.
pub const SOCKET_MODE: u32 = 0o660;

/// Permissions of a socket directory the daemon creates itself (e.g. `$XDG_RUNTIME_DIR/llmd`).
const SOCKET_DIR_MODE: u32 = 0o755;

/// Why the daemon could not obtain its listening socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Another daemon answers on this socket.
    #[error(
        "another llmd is already listening on {}; stop it first (systemctl stop llmd) or choose \
         another socket with --socket",
        path.display()
    )]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket occupies the path.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A filesystem or socket operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot bind".
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The configured `socket_group` does not exist or cannot be looked up.
    #[error("socket_group `{group}`: {reason}")]
    Group {
        /// The configured group.
        group: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// systemd passed file descriptors that cannot be used.
    #[error("socket activation: {0}")]
    Activation(String),
}

/// The listening socket, and what to clean up when the daemon stops.
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    /// The path clients connect to.
    pub path: PathBuf,
    /// `(device, inode)` of the socket file if we created it; at shutdown it is removed only if
    /// the path still refers to that file. `None` under socket activation (systemd owns it).
    created: Option<(u64, u64)>,
}

impl BoundSocket {
    /// True when the socket came from systemd socket activation.
    pub fn is_activated(&self) -> bool {
        self.created.is_none()
    }

    /// Removes the socket file, if we created it and it is still ours.
    pub fn remove_file(&self) {
        let Some((dev, ino)) = self.created else {
            return;
        };
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == dev && m.ino() == ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!("cannot remove socket {}: {e}", self.path.display());
                }
            }
            Ok(_) => tracing::warn!(
                "socket {} was replaced by another process; leaving it",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// Takes the first socket passed by systemd socket activation, if any, unsetting `LISTEN_PID`
/// and `LISTEN_FDS` (`LISTEN_PID` must name this process). Call before any other thread starts:
/// it modifies the environment.
pub fn take_activated_socket() -> Result<Option<StdUnixListener>, ListenerError> {
    let mut fds = sd_notify::listen_fds().map_err(|e| ListenerError::Activation(e.to_string()))?;
    let Some(first) = fds.next() else {
        return Ok(None);
    };
    let extra = fds.count();
    if extra > 0 {
        tracing::warn!(
            "socket activation passed {} sockets; using the first",
            extra + 1
        );
    }
    // SAFETY: `sd_notify::listen_fds` reports descriptors systemd opened for this process (it
    // checked LISTEN_PID) and unset the variables, so no other code takes ownership of `first`;
    // we own it from here on and close it exactly once via OwnedFd.
    let fd = unsafe { OwnedFd::from_raw_fd(first) };
    let listener = StdUnixListener::from(fd);
    listener.local_addr().map_err(|e| {
        ListenerError::Activation(format!("descriptor {first} is not a Unix socket: {e}"))
    })?;
    Ok(Some(listener))
}

/// Wraps an activated socket for tokio. Its path (for `status`) comes from the socket itself.
pub fn from_activated(listener: StdUnixListener) -> Result<BoundSocket, ListenerError> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_default();
    let io_err = |source| ListenerError::Activation(format!("{source}"));
    listener.set_nonblocking(true).map_err(io_err)?;
    let listener = UnixListener::from_std(listener).map_err(io_err)?;
    Ok(BoundSocket {
        listener,
        path,
        created: None,
    })
}

/// Binds a new socket at `path` with [`SOCKET_MODE`] and the optional group (name or numeric
/// id). A stale socket file (nobody accepting) is replaced; a live one is an error. Must run
/// inside a tokio runtime.
pub fn bind(path: &Path, group: Option<&str>) -> Result<BoundSocket, ListenerError> {
    let gid = group.map(lookup_group).transpose()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(SOCKET_DIR_MODE)
                .create(dir)
                .map_err(|source| ListenerError::Io {
                    what: "cannot create socket directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    check_existing(path)?;

    let tmp = temporary_name(path);
    let _ = std::fs::remove_file(&tmp);
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| ListenerError::Io {
            what,
            path: p,
            source,
        }
    };
    let std_listener = StdUnixListener::bind(&tmp).map_err(io("cannot bind", path))?;
    let prepared = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io("cannot set permissions of", path))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .map_err(io("cannot change the group of", path))?;
        }
        std::fs::rename(&tmp, path).map_err(io("cannot move socket into place at", path))
    })();
    if let Err(e) = prepared {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let meta = std::fs::symlink_metadata(path).map_err(io("cannot stat", path))?;
    std_listener
        .set_nonblocking(true)
        .map_err(io("cannot configure", path))?;
    let listener = UnixListener::from_std(std_listener).map_err(io("cannot register", path))?;
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        created: Some((meta.dev(), meta.ino())),
    })
}

/// Fails if a live daemon owns `path`; removes a stale socket file.
fn check_existing(path: &Path) -> Result<(), ListenerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenerError::Io {
                what: "cannot stat",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match StdUnixStream::connect(path) {
        Ok(_) => Err(ListenerError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!("replacing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ListenerError::Io {
                what: "cannot remove stale socket",
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ListenerError::Io {
            what: "cannot check existing socket",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Resolves a group name (or a numeric gid) to a gid.
pub fn lookup_group(group: &str) -> Result<u32, ListenerError> {
    crate::users::lookup_group(group).map_err(|e| ListenerError::Group {
        group: group.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve() {
        assert_eq!(lookup_group("0").unwrap(), 0);
        assert_eq!(lookup_group("root").unwrap(), 0);
        let err = lookup_group("no-such-group-llmd-test").unwrap_err();
        assert!(err.to_string().contains("no such group"), "{err}");
    }

    #[tokio::test]
    async fn bind_sets_mode_and_replaces_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/llmd.sock");
        let first = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        // Live: a second bind must refuse.
        let err = bind(&path, None).err().expect("second bind succeeded");
        assert!(matches!(err, ListenerError::AlreadyRunning { .. }), "{err}");
        // Stale: once the listener is gone, the file is replaced.
        drop(first);
        assert!(path.exists());
        let second = bind(&path, Some("0")).unwrap();
        second.remove_file();
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llmd.sock");
        std::fs::write(&path, "x").unwrap();
        let err = check_existing(&path).unwrap_err();
        assert!(matches!(err, ListenerError::NotASocket { .. }), "{err}");
    }
}
