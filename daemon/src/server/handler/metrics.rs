//! `metrics`: the latest telemetry sample, the power budget and the daemon's resident memory in
//! the Prometheus text format. Never waits on NVML.

use llmd_shared::{ErrorReply, MetricsReply, MetricsRequest};

use super::Context;
use crate::health::{metrics, power};

/// Renders the metrics.
pub async fn handle(_req: MetricsRequest, ctx: &Context) -> Result<MetricsReply, ErrorReply> {
    let state = &ctx.state;
    let telemetry = state.gpu_telemetry();
    let budget = power::budget(&state.config().config.power, &telemetry);
    Ok(MetricsReply {
        text: metrics::render(&telemetry, Some(&budget))
            + &metrics::render_process(&crate::host_memory::ResidentMemory::of_self()),
    })
}
