//! `llmctl inspect FILE`: what a GGUF file holds, read by the daemon from the header alone.
//! `--json` prints the daemon's `InspectReport` (path, file_size, gguf_version, alignment,
//! metadata_entries, architecture, name, file_type, file_type_name, parameters, tensor_count,
//! weights_bytes, types[{ty, tensors, elements, bytes, supported}], layers, embedding_length,
//! feed_forward_length, heads, kv_heads, head_dim, context_length, vocab_size, sliding_window,
//! experts, tokenizer{model, kind, pre, tokens, merges, bos_token_id, eos_token_id},
//! chat_template, complete, missing_tensors, missing_bytes, description_error).

use llmd_shared::{InspectRequest, Reply, Request};

use super::{unexpected, Ctx};
use crate::cli::InspectArgs;
use crate::CtlError;

/// Asks the daemon to inspect the file and prints the report.
pub fn run(args: InspectArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let path = std::path::absolute(&args.file)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", args.file.display())))?;
    let mut client = ctx.connect()?;
    let reply = client.request(
        &Request::Inspect(InspectRequest {
            path: path.display().to_string(),
        }),
        |_| Ok(()),
    )?;
    let Reply::Inspect(report) = reply else {
        return Err(unexpected("inspect"));
    };
    if ctx.out.json {
        ctx.out.json_line(&report)
    } else {
        ctx.out.text(&report.to_string())
    }
}
