//! `llmctl doctor`: the daemon's health checks, one line each (OK / WARN / FAIL) with a fix line
//! under each that is not OK. `--json` prints the report as one line: `{"checks": [{kind,
//! subject, verdict, summary, fix}]}`. The exit code is the report's: 0 all OK, 1 any WARN, 2 any
//! FAIL (errors keep llmctl's codes: 1 daemon error, 3 unreachable).

use llmd_shared::render::render_doctor;
use llmd_shared::{DoctorRequest, Reply, Request};

use super::{unexpected, Ctx};
use crate::cli::DoctorArgs;
use crate::CtlError;

/// Asks the daemon for the checks, prints them and returns the verdict's exit code.
pub fn run(_args: DoctorArgs, ctx: &Ctx) -> Result<u8, CtlError> {
    let mut client = ctx.connect()?;
    let reply = client.request(&Request::Doctor(DoctorRequest {}), |_| Ok(()))?;
    let Reply::Doctor(report) = reply else {
        return Err(unexpected("doctor"));
    };
    if ctx.out.json {
        ctx.out.json_line(&report)?;
    } else {
        ctx.out.text(&render_doctor(&report))?;
    }
    // exit_code() is 0, 1 or 2; anything else would be a protocol bug, reported as a FAIL.
    Ok(u8::try_from(report.exit_code()).unwrap_or(2))
}
