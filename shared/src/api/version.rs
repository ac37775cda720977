//! `version`: the daemon's package and protocol versions.

use serde::{Deserialize, Serialize};

/// Asks for the daemon's versions. No arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRequest {}

/// The daemon's versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    /// Package version of the daemon, e.g. "0.1.0".
    pub daemon_version: String,
    /// The daemon's wire protocol version.
    pub protocol_version: u32,
}
