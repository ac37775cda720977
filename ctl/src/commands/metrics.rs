//! `llmctl metrics`: the daemon's GPU telemetry and power budget in the Prometheus text format,
//! printed as is (ready for a node-exporter textfile collector). `--json` prints `{"text": ...}`.

use llmd_shared::{MetricsRequest, Reply, Request};

use super::{unexpected, Ctx};
use crate::cli::MetricsArgs;
use crate::CtlError;

/// Asks the daemon for the metrics and prints them.
pub fn run(_args: MetricsArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut client = ctx.connect()?;
    let reply = client.request(&Request::Metrics(MetricsRequest {}), |_| Ok(()))?;
    let Reply::Metrics(metrics) = reply else {
        return Err(unexpected("metrics"));
    };
    if ctx.out.json {
        ctx.out.json_line(&metrics)
    } else {
        ctx.out.text(&metrics.text)
    }
}
