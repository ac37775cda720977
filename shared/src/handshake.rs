//! The version handshake, the first exchange on every connection: the client sends [`Hello`],
//! the server answers [`HelloReply`]. Only after an `Accepted` reply may requests follow.
//!
//! These two types are **frozen**: they must decode identically in every past and future version,
//! so that a client and a daemon of different protocol versions can still tell each other (and
//! the user) exactly which versions disagree. Never add, remove or reorder their fields or
//! variants; everything else belongs behind [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

use crate::{PACKAGE_VERSION, PROTOCOL_VERSION};

/// Largest handshake frame the daemon accepts: a `Hello` is a few dozen bytes, so anything
/// bigger is not a client of ours and is refused without reading it.
pub const MAX_HELLO_BYTES: usize = 4096;

/// First message of a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The [`PROTOCOL_VERSION`] the client speaks.
    pub protocol_version: u32,
    /// The client's package version (for logs and `llmctl version`), e.g. "0.1.0".
    pub client_version: String,
}

impl Hello {
    /// The `Hello` of this build.
    pub fn current() -> Self {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            client_version: PACKAGE_VERSION.to_string(),
        }
    }
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Same protocol: requests may follow on this connection.
    Accepted {
        /// The server's [`PROTOCOL_VERSION`] (equal to the client's).
        protocol_version: u32,
        /// The server's package version.
        server_version: String,
    },
    /// Different protocol: the server closes the connection after this reply.
    Rejected {
        /// The server's [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// The server's package version.
        server_version: String,
        /// Human-readable explanation naming both protocol versions.
        message: String,
    },
}

impl HelloReply {
    /// The answer of a server of this build to `hello`.
    pub fn for_hello(hello: &Hello) -> Self {
        if hello.protocol_version == PROTOCOL_VERSION {
            HelloReply::Accepted {
                protocol_version: PROTOCOL_VERSION,
                server_version: PACKAGE_VERSION.to_string(),
            }
        } else {
            HelloReply::Rejected {
                protocol_version: PROTOCOL_VERSION,
                server_version: PACKAGE_VERSION.to_string(),
                message: version_mismatch_message(
                    hello.protocol_version,
                    &hello.client_version,
                    PROTOCOL_VERSION,
                    PACKAGE_VERSION,
                ),
            }
        }
    }
}

/// The error text for a client speaking protocol `client_protocol` to a server speaking
/// `server_protocol`. Shared so that both sides word it the same way.
pub fn version_mismatch_message(
    client_protocol: u32,
    client_version: &str,
    server_protocol: u32,
    server_version: &str,
) -> String {
    format!(
        "protocol version mismatch: the client (version {client_version}) speaks protocol \
         {client_protocol}, the daemon llmd (version {server_version}) speaks protocol \
         {server_protocol}; install matching llmd and llmctl versions"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, encode_frame};

    #[test]
    fn hello_round_trip_and_acceptance() {
        let hello = Hello::current();
        let frame = encode_frame(&hello).unwrap();
        let (back, _) = decode_frame::<Hello>(&frame).unwrap();
        assert_eq!(back, hello);
        assert!(matches!(
            HelloReply::for_hello(&back),
            HelloReply::Accepted { .. }
        ));
    }

    #[test]
    fn wrong_version_names_both() {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION + 41,
            client_version: "9.9.9".into(),
        };
        let HelloReply::Rejected { message, .. } = HelloReply::for_hello(&hello) else {
            panic!("accepted a wrong protocol version");
        };
        assert!(
            message.contains(&format!("protocol {}", PROTOCOL_VERSION + 41)),
            "{message}"
        );
        assert!(
            message.contains(&format!("protocol {PROTOCOL_VERSION}")),
            "{message}"
        );
    }

    /// Pins the wire bytes of the frozen types: if this fails, the handshake changed and old
    /// peers can no longer report version mismatches.
    #[test]
    fn handshake_encoding_is_frozen() {
        let hello = Hello {
            protocol_version: 1,
            client_version: "0.1.0".into(),
        };
        assert_eq!(
            encode_frame(&hello).unwrap(),
            [0, 0, 0, 7, 1, 5, b'0', b'.', b'1', b'.', b'0']
        );
        let reply = HelloReply::Rejected {
            protocol_version: 2,
            server_version: "1".into(),
            message: "m".into(),
        };
        assert_eq!(
            encode_frame(&reply).unwrap(),
            [0, 0, 0, 6, 1, 2, 1, b'1', 1, b'm']
        );
    }
}
