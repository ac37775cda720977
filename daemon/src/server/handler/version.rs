//! `version`: the daemon's package and protocol versions.

use llmd_shared::{ErrorReply, VersionReply, VersionRequest, PACKAGE_VERSION, PROTOCOL_VERSION};

use super::Context;

/// The daemon's versions.
pub async fn handle(_req: VersionRequest, _ctx: &Context) -> Result<VersionReply, ErrorReply> {
    Ok(VersionReply {
        daemon_version: PACKAGE_VERSION.to_string(),
        protocol_version: PROTOCOL_VERSION,
    })
}
