//! `metrics`: the daemon's Prometheus text ([`State::metrics_text`](crate::state::State::metrics_text):
//! telemetry, power budget, the daemon's resident memory and the request metrics), the same as
//! the HTTP API's `GET /metrics`. Never waits on NVML.

use llmd_shared::{ErrorReply, MetricsReply, MetricsRequest};

use super::Context;

/// Renders the metrics.
pub async fn handle(_req: MetricsRequest, ctx: &Context) -> Result<MetricsReply, ErrorReply> {
    Ok(MetricsReply {
        text: ctx.state.metrics_text(),
    })
}
