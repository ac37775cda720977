//! `status`: version, uptime, pid, socket, config file, devices, resident models, load.

use llmd_shared::{ErrorReply, StatusReply, StatusRequest, PACKAGE_VERSION, PROTOCOL_VERSION};

use super::Context;

/// Snapshot of the daemon's state.
pub async fn handle(_req: StatusRequest, ctx: &Context) -> Result<StatusReply, ErrorReply> {
    let state = &ctx.state;
    let config = state.config();
    Ok(StatusReply {
        daemon_version: PACKAGE_VERSION.to_string(),
        protocol_version: PROTOCOL_VERSION,
        pid: state.pid,
        uptime_secs: state.started.elapsed().as_secs(),
        socket: state.socket_path.display().to_string(),
        config: config
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        devices: state.device_infos(),
        models: state.models().infos(),
        connections: state.connections(),
        requests_running: state.requests_running(),
    })
}
