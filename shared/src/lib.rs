//! The llmd wire protocol: the request and reply types that `llmd` and `llmctl` exchange over the
//! Unix socket, their framing (a 4-byte length prefix plus bincode 2) and the version handshake.
