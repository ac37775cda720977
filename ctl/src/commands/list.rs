//! `llmctl list`: resident models and their placement. `--json`: the daemon's `ListReply` as one
//! line, `{"models": [...]}` with one `ModelDetails` per model (name, path, architecture,
//! n_layer, ctx, threads, placement[...], running, cache_type_k, cache_type_v, failed,
//! host_memory {anon_bytes, file_bytes}, prefix_cache {retained_bytes, retained_sequences}: the
//! finished generations' KV kept for prompts sharing their prefix, part of the placement's
//! kv_bytes); `{"models":[]}` when none is loaded, so the output
//! always parses.

use llmd_shared::{ListRequest, Reply, Request};

use super::{placement_table, unexpected, Ctx};
use crate::cli::ListArgs;
use crate::output::human_bytes;
use crate::CtlError;

/// Lists the models.
pub fn run(_args: ListArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut client = ctx.connect()?;
    let reply = client.request(&Request::List(ListRequest {}), |_| Ok(()))?;
    let Reply::List(r) = reply else {
        return Err(unexpected("list"));
    };
    if ctx.out.json {
        return ctx.out.json_line(&r);
    }
    if r.models.is_empty() {
        return ctx.out.text("no models loaded\n");
    }
    let mut text = String::new();
    for m in &r.models {
        if let Some(why) = &m.failed {
            text.push_str(&format!(
                "{} FAILED: {why}\n  {}\n  llmctl reload {} loads it again\n",
                m.name, m.path, m.name
            ));
            continue;
        }
        text.push_str(&format!(
            "{} ({}, {} layers, ctx {}, KV cache {}/{}, {} threads, {} running)\n  {}\n  host \
             memory: {} anonymous, {} file-backed\n  prefix cache: {} in {} finished \
             sequences (part of the KV below)\n{}",
            m.name,
            m.architecture,
            m.n_layer,
            m.ctx,
            m.cache_type_k,
            m.cache_type_v,
            m.threads,
            m.running,
            m.path,
            human_bytes(m.host_memory.anon_bytes),
            human_bytes(m.host_memory.file_bytes),
            human_bytes(m.prefix_cache.retained_bytes),
            m.prefix_cache.retained_sequences,
            placement_table(&m.placement)
        ));
    }
    ctx.out.text(&text)
}
