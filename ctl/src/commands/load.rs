//! `llmctl load FILE`: makes a model resident; shows progress on a terminal. `--json` prints the
//! daemon's `LoadReply` (name, path, architecture, n_layer, ctx, placement[{device, layer_start,
//! layer_end, output, weight_bytes, kv_bytes, expert_device, expert_layers, expert_bytes}],
//! load_secs, bytes_loaded, replaced, cache_type_k, cache_type_v).

use std::io::{IsTerminal, Write};

use llmd_shared::{Event, LoadRequest, Reply, Request};

use super::{placement_table, unexpected, Ctx};
use crate::cli::LoadArgs;
use crate::output::human_bytes;
use crate::CtlError;

/// Sends the load request and prints the result.
pub fn run(args: LoadArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let path = std::path::absolute(&args.file)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", args.file.display())))?;
    let request = Request::Load(LoadRequest {
        path: path.display().to_string(),
        name: args.name,
        ctx: args.ctx,
        threads: args.threads,
        devices: args.devices.map(|d| split_list(&d)).unwrap_or_default(),
        split: match args.split {
            Some(s) => parse_split(&s)?,
            None => Vec::new(),
        },
        replace: args.replace,
        cache_type_k: args.cache.cache_type_k,
        cache_type_v: args.cache.cache_type_v,
        gpu_layers: args.gpu_layers,
        n_cpu_moe: args.experts.n_cpu_moe(),
    });
    let mut client = ctx.connect()?;
    client.set_reply_timeout(None)?;
    let show_progress = !ctx.out.json && std::io::stderr().is_terminal();
    let reply = client.request(&request, |event| {
        if let (true, Event::Progress(p)) = (show_progress, event) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\rloading: {}/{} {}", p.done, p.total, p.what);
            let _ = err.flush();
        }
        Ok(())
    })?;
    if show_progress {
        eprintln!();
    }
    let Reply::Load(r) = reply else {
        return Err(unexpected("load"));
    };
    if ctx.out.json {
        return ctx.out.json_line(&r);
    }
    let verb = if r.replaced { "replaced" } else { "loaded" };
    ctx.out.text(&format!(
        "{verb} {} ({}, {} layers, ctx {}, KV cache {}/{}) in {:.2}s, {} of weights\n{}",
        r.name,
        r.architecture,
        r.n_layer,
        r.ctx,
        r.cache_type_k,
        r.cache_type_v,
        r.load_secs,
        human_bytes(r.bytes_loaded),
        placement_table(&r.placement)
    ))
}

/// Splits a comma-separated list, dropping empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses split weights such as `3,1`.
pub fn parse_split(s: &str) -> Result<Vec<f32>, CtlError> {
    split_list(s)
        .iter()
        .map(|w| match w.parse::<f32>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(CtlError::Usage(format!(
                "invalid split weight {w:?} (expected numbers like 3,1)"
            ))),
        })
        .collect()
}
