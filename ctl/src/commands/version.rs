//! `llmctl version`: llmctl's version and protocol, and the daemon's. When the daemon cannot be
//! reached, llmctl's own version is still printed, then the error (exit 3). `--json` fields:
//! client_version, client_protocol_version, daemon_version, daemon_protocol_version (the
//! daemon's fields are null when it could not be asked).

use llmd_shared::{Reply, Request, VersionRequest, PACKAGE_VERSION, PROTOCOL_VERSION};
use serde::Serialize;

use super::{unexpected, Ctx};
use crate::cli::VersionArgs;
use crate::CtlError;

/// The `--json` form.
#[derive(Debug, Serialize)]
struct VersionJson {
    client_version: &'static str,
    client_protocol_version: u32,
    daemon_version: Option<String>,
    daemon_protocol_version: Option<u32>,
}

/// Prints both sides' versions.
pub fn run(_args: VersionArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let daemon = ask_daemon(ctx);
    let (daemon_version, daemon_protocol) = match &daemon {
        Ok((v, p)) => (Some(v.clone()), Some(*p)),
        Err(CtlError::VersionMismatch {
            daemon_version,
            daemon_protocol_version,
            ..
        }) => (Some(daemon_version.clone()), Some(*daemon_protocol_version)),
        Err(_) => (None, None),
    };
    if ctx.out.json {
        ctx.out.json_line(&VersionJson {
            client_version: PACKAGE_VERSION,
            client_protocol_version: PROTOCOL_VERSION,
            daemon_version,
            daemon_protocol_version: daemon_protocol,
        })?;
    } else {
        let mut text = format!("llmctl {PACKAGE_VERSION} (protocol {PROTOCOL_VERSION})\n");
        if let (Some(v), Some(p)) = (daemon_version, daemon_protocol) {
            text.push_str(&format!("llmd   {v} (protocol {p})\n"));
        }
        ctx.out.text(&text)?;
    }
    daemon.map(|_| ())
}

fn ask_daemon(ctx: &Ctx) -> Result<(String, u32), CtlError> {
    let mut client = ctx.connect()?;
    match client.request(&Request::Version(VersionRequest {}), |_| Ok(()))? {
        Reply::Version(v) => Ok((v.daemon_version, v.protocol_version)),
        _ => Err(unexpected("version")),
    }
}
