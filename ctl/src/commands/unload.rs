//! `llmctl unload NAME`: frees a resident model. `--json`: `{name, freed_bytes}`.

use llmd_shared::{Reply, Request, UnloadRequest};

use super::{unexpected, Ctx};
use crate::cli::UnloadArgs;
use crate::output::human_bytes;
use crate::CtlError;

/// Sends the unload request.
pub fn run(args: UnloadArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut client = ctx.connect()?;
    let reply = client.request(&Request::Unload(UnloadRequest { name: args.name }), |_| {
        Ok(())
    })?;
    let Reply::Unload(r) = reply else {
        return Err(unexpected("unload"));
    };
    if ctx.out.json {
        ctx.out.json_line(&r)
    } else {
        ctx.out.text(&format!(
            "unloaded {} ({} freed)\n",
            r.name,
            human_bytes(r.freed_bytes)
        ))
    }
}
