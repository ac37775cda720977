//! `doctor`: the health checks over the latest telemetry sample, the `[power]` config in force,
//! the resident models' splits and whether each still serves. Never waits on NVML.

use llmd_shared::api::health::DoctorReport;
use llmd_shared::{DoctorRequest, ErrorReply};

use super::Context;
use crate::health::doctor;
use crate::server::wire;

/// Runs every check.
pub async fn handle(_req: DoctorRequest, ctx: &Context) -> Result<DoctorReport, ErrorReply> {
    let state = &ctx.state;
    let telemetry = state.gpu_telemetry();
    let (models, failures) = {
        let registry = state.runtime.models();
        (
            wire::model_placements(&registry, &state.gpu_index(&telemetry)),
            registry.failures(),
        )
    };
    let gpus: Vec<(String, Option<String>)> = state
        .devices()
        .iter()
        .filter(|d| d.is_gpu())
        .map(|d| (d.name.clone(), d.unavailable.clone()))
        .collect();
    let mut report = doctor::run(
        &telemetry,
        &state.config().config.power,
        &models,
        !gpus.is_empty(),
    );
    report.checks.extend(doctor::check_models(&failures));
    let declared_failures: Vec<(String, String)> = state
        .runtime
        .declared
        .snapshot()
        .into_iter()
        .filter_map(|e| match e.state {
            llmd_shared::DeclaredState::Failed { reason } => Some((e.decl.name, reason)),
            _ => None,
        })
        .collect();
    report
        .checks
        .extend(doctor::check_declared(&declared_failures));
    let cuda = crate::devices::cuda_report();
    if let Some(check) = doctor::check_cuda(&cuda, &gpus) {
        report.checks.insert(1, check);
    }
    report.checks.extend(doctor::check_cuda_peers(&cuda));
    Ok(report)
}
