//! `doctor`: the health checks over the latest telemetry sample, the `[power]` config in force
//! and the resident models' splits. Never waits on NVML.

use llmd_shared::api::health::DoctorReport;
use llmd_shared::{DoctorRequest, ErrorReply};

use super::Context;
use crate::health::doctor;

/// Runs every check.
pub async fn handle(_req: DoctorRequest, ctx: &Context) -> Result<DoctorReport, ErrorReply> {
    let state = &ctx.state;
    let telemetry = state.gpu_telemetry();
    let models = state.models().placements();
    Ok(doctor::run(
        &telemetry,
        &state.config().config.power,
        &models,
    ))
}
