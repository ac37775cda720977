//! `llmctl reload NAME --split 3,1 [--devices ..] [--ctx N] [--cpu-moe | --n-cpu-moe N]`:
//! re-splits a loaded model live, its experts moving to or from the host as asked.
//! `--json` prints the daemon's `ResplitReply` (name, ctx, plan{...}, placement[...], secs,
//! bytes_moved, layers_moved, sequences_moved).

use llmd_shared::{Reply, Request, ResplitRequest};

use super::load::{parse_split, split_list};
use super::{placement_table, unexpected, Ctx};
use crate::cli::ReloadArgs;
use crate::output::human_bytes;
use crate::CtlError;

/// Sends the re-split and prints the result.
pub fn run(args: ReloadArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let request = Request::Resplit(ResplitRequest {
        name: args.name,
        devices: args.devices.map(|d| split_list(&d)).unwrap_or_default(),
        split: match args.split {
            Some(s) => parse_split(&s)?,
            None => Vec::new(),
        },
        ctx: args.ctx,
        n_cpu_moe: args.experts.n_cpu_moe(),
    });
    let mut client = ctx.connect()?;
    client.set_reply_timeout(None)?;
    let reply = client.request(&request, |_| Ok(()))?;
    let Reply::Resplit(r) = reply else {
        return Err(unexpected("resplit"));
    };
    if ctx.out.json {
        return ctx.out.json_line(&r);
    }
    let mut text = format!(
        "re-split {} (ctx {}) in {:.3}s: {} layers moved, {} copied, {} running generations \
         carried over\n{}",
        r.name,
        r.ctx,
        r.secs,
        r.layers_moved,
        human_bytes(r.bytes_moved),
        r.sequences_moved,
        placement_table(&r.placement)
    );
    for w in &r.plan.warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    ctx.out.text(&text)
}
