//! Who is at the other end of a connection: the client's credentials, read once when it is
//! accepted and used by the connection's logs, the access check (`server::access`) and the
//! handlers (`server::handler`).

use tokio::net::UnixStream;

/// The client's credentials (SO_PEERCRED), for logging and authorisation (`server::access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// User id of the client process (`u32::MAX` if unknown).
    pub uid: u32,
    /// Group id of the client process (`u32::MAX` if unknown).
    pub gid: u32,
    /// Process id of the client (0 if unknown).
    pub pid: i32,
}

impl Peer {
    /// The credentials of the process at the other end of `stream`.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid().unwrap_or(0),
            },
            Err(e) => {
                tracing::warn!("cannot read peer credentials: {e}");
                Peer {
                    uid: u32::MAX,
                    gid: u32::MAX,
                    pid: 0,
                }
            }
        }
    }
}
