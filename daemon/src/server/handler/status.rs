//! `status`: version, uptime, pid, socket, config file, devices, resident models, load, the
//! latest GPU telemetry sample, the power budget and each model's layers per device.

use llmd_shared::{
    DaemonMemory, ErrorReply, StatusReply, StatusRequest, PACKAGE_VERSION, PROTOCOL_VERSION,
};

use super::Context;
use crate::health::power;
use crate::server::wire;

/// Snapshot of the daemon's state. GPU data is the sampler's latest sample: never waits on NVML.
pub async fn handle(_req: StatusRequest, ctx: &Context) -> Result<Box<StatusReply>, ErrorReply> {
    let state = &ctx.state;
    let config = state.config();
    let telemetry = state.gpu_telemetry();
    let gpus = state.gpu_index(&telemetry);
    let (models, model_layers) = {
        let registry = state.runtime.models();
        (
            wire::model_infos(&registry),
            wire::model_placements(&registry, &gpus),
        )
    };
    Ok(Box::new(StatusReply {
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
        models,
        connections: state.connections(),
        // Not counting this request itself.
        requests_running: state.requests_running().saturating_sub(1),
        cuda: crate::devices::cuda_report(),
        power: power::budget(&config.config.power, &telemetry),
        gpu: (*telemetry).clone(),
        model_layers,
        declared: state.runtime.declared.infos(),
        memory: {
            let m = crate::host_memory::ResidentMemory::of_self();
            DaemonMemory {
                rss_bytes: m.rss,
                anon_bytes: m.anon,
                file_bytes: m.file,
                peak_bytes: m.peak,
            }
        },
    }))
}
