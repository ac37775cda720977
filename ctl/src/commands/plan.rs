//! `llmctl plan FILE`: the daemon's split plan for a model file, without loading it. `--json`
//! prints the daemon's `PlanReply` (path, architecture, n_layer, ctx, batch, cache_type_k,
//! cache_type_v, embedding_bytes,
//! devices[{name, budget_bytes, free_bytes, need_bytes, split}], stages[{device, layer_start,
//! layer_end, output, weight_bytes, kv_bytes, scratch_bytes}], fits, problems, suggestion,
//! warnings, experts{device, layer_start, layer_end, weight_bytes, scratch_bytes} (with
//! `--cpu-moe` / `--n-cpu-moe`)). A plan that does not fit is printed, then reported as a `does_not_fit` error
//! (exit status 1).

use llmd_shared::{ErrorCode, ErrorReply, PlanReply, PlanRequest, Reply, Request};

use super::load::{parse_split, split_list};
use super::{unexpected, Ctx};
use crate::cli::PlanArgs;
use crate::output::human_bytes;
use crate::CtlError;

/// Asks for the plan and prints it.
pub fn run(args: PlanArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let path = std::path::absolute(&args.file)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", args.file.display())))?;
    let request = Request::Plan(PlanRequest {
        path: path.display().to_string(),
        devices: args.devices.map(|d| split_list(&d)).unwrap_or_default(),
        split: match args.split {
            Some(s) => parse_split(&s)?,
            None => Vec::new(),
        },
        gpu_layers: args.gpu_layers,
        ctx: args.ctx,
        cache_type_k: args.cache.cache_type_k,
        cache_type_v: args.cache.cache_type_v,
        n_cpu_moe: args.experts.n_cpu_moe(),
    });
    let mut client = ctx.connect()?;
    let reply = client.request(&request, |_| Ok(()))?;
    let Reply::Plan(r) = reply else {
        return Err(unexpected("plan"));
    };
    if ctx.out.json {
        ctx.out.json_line(&r)?;
    } else {
        ctx.out.text(&plan_text(&r))?;
    }
    if r.fits {
        Ok(())
    } else {
        let mut message = format!("does not fit: {}", r.problems.join("; "));
        if let Some(s) = &r.suggestion {
            message.push_str(&format!(". {s}"));
        }
        Err(CtlError::Daemon(ErrorReply::new(
            ErrorCode::DoesNotFit,
            message,
        )))
    }
}

/// The human-readable plan: one line per stage, one per device, then warnings.
pub fn plan_text(r: &PlanReply) -> String {
    let mut out = format!(
        "{} ({}, {} layers) at ctx {}, batch {}, KV cache {}/{}; embedding {} stays in the \
         mapped file\n",
        r.path,
        r.architecture,
        r.n_layer,
        r.ctx,
        r.batch,
        r.cache_type_k,
        r.cache_type_v,
        human_bytes(r.embedding_bytes)
    );
    for s in &r.stages {
        let layers = if s.layer_start < s.layer_end {
            format!("layers {:>3}..{:<3}", s.layer_start, s.layer_end)
        } else {
            "no layers      ".to_string()
        };
        out.push_str(&format!(
            "  {:<8} {} {:<7} weights {:>10}  kv {:>10}  scratch {:>10}\n",
            s.device,
            layers,
            if s.output { "+output" } else { "" },
            human_bytes(s.weight_bytes),
            human_bytes(s.kv_bytes),
            human_bytes(s.scratch_bytes)
        ));
    }
    if let Some(e) = &r.experts {
        out.push_str(&format!(
            "  {:<8} experts of layers {}..{}: weights {:>10}  scratch {:>10}\n",
            e.device,
            e.layer_start,
            e.layer_end,
            human_bytes(e.weight_bytes),
            human_bytes(e.scratch_bytes)
        ));
    }
    for d in &r.devices {
        out.push_str(&format!(
            "  {:<8} needs {:>10} of {:>10} free (budget {}, split {:.3}){}\n",
            d.name,
            human_bytes(d.need_bytes),
            human_bytes(d.free_bytes),
            human_bytes(d.budget_bytes),
            d.split,
            if d.need_bytes > d.free_bytes {
                "  DOES NOT FIT"
            } else {
                ""
            }
        ));
    }
    out.push_str(
        "  (kv: one generation of the full context; each running generation has its own)\n",
    );
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str(if r.fits { "fits\n" } else { "does not fit\n" });
    out
}
