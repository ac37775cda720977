//! `llmctl generate NAME PROMPT` (or `--prompt-file FILE`, `-` for stdin): streams the generated
//! text. Without `--raw` the prompt goes through the model's chat template as one user message.
//! The request's values are checked here with the daemon's own rules
//! ([`GenerateRequest::validate`]) before connecting, so a bad value is a usage error (exit 2). `--json` prints one line per token
//! (`{"id", "text"}`) and a final line with the daemon's `GenerateReply` (tokens, text,
//! trailing_text, prompt_tokens, cached_prompt_tokens, time_to_first_token_s,
//! prefill_tokens_per_s, decode_tokens_per_s, stop_reason).

use std::io::{Read, Write};
use std::path::Path;

use llmd_shared::{
    ChatMessage, Event, GenerateReply, GenerateRequest, Prompt, Reply, Request, Sampling,
    MAX_FRAME_BYTES,
};

use super::{unexpected, Ctx};
use crate::cli::{GenerateArgs, SamplingArgs};
use crate::CtlError;

/// The wire sampling settings from the command line.
pub fn sampling(args: &SamplingArgs) -> Sampling {
    Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed: args.seed,
    }
}

/// Sends a generation request and streams its tokens to stdout; returns the final reply.
/// Values the daemon would refuse are a usage error before connecting.
pub fn stream(ctx: &Ctx, request: GenerateRequest) -> Result<GenerateReply, CtlError> {
    request.validate().map_err(|e| CtlError::Usage(e.message))?;
    let mut client = ctx.connect()?;
    client.set_reply_timeout(None)?;
    let json = ctx.out.json;
    // An on-demand model is loaded by the request first: its progress goes to a terminal.
    let show_progress = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let reply = client.request(&Request::Generate(request), |event| {
        match event {
            Event::Token(t) if json => ctx.out.json_line(&t)?,
            Event::Token(t) => {
                let mut out = std::io::stdout().lock();
                out.write_all(t.text.as_bytes()).map_err(CtlError::Output)?;
                out.flush().map_err(CtlError::Output)?;
            }
            Event::Progress(p) if show_progress => {
                let end = if p.done == p.total { "\n" } else { "" };
                eprint!(
                    "\rloading the model: {}/{} {}{end}",
                    p.done, p.total, p.what
                );
            }
            _ => {}
        }
        Ok(())
    })?;
    let Reply::Generate(r) = reply else {
        return Err(unexpected("generate"));
    };
    if !json {
        ctx.out.text(&r.trailing_text)?;
        if let Some(warning) = &r.warning {
            eprintln!("\nllmctl: warning: {warning}");
        }
    }
    Ok(r)
}

/// The prompt text of `--prompt-file`: the file's contents, or standard input for `-`. More than
/// a frame can carry, or text that is not UTF-8, is a usage error naming the file.
fn read_prompt_file(path: &Path) -> Result<String, CtlError> {
    let name = path.display();
    let usage = |what: String| CtlError::Usage(format!("--prompt-file {name}: {what}"));
    let mut bytes = Vec::new();
    // One byte more than the limit, to tell "exactly the limit" from "too long".
    let limit = MAX_FRAME_BYTES as u64 + 1;
    let read = if path == Path::new("-") {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| usage(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(usage(format!(
            "longer than the {} MiB a request can carry",
            MAX_FRAME_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        usage(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Generates and prints.
pub fn run(args: GenerateArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let text = match (args.prompt, &args.prompt_file) {
        (_, Some(path)) => read_prompt_file(path)?,
        (Some(text), None) => text,
        (None, None) => return Err(CtlError::Usage("give a prompt or --prompt-file".into())),
    };
    let prompt = if args.raw {
        Prompt::Raw(text)
    } else {
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: text,
        }])
    };
    let request = GenerateRequest {
        model: args.name,
        prompt,
        max_tokens: args.max_tokens,
        sampling: sampling(&args.sampling),
        stop: args.stop,
    };
    let r = stream(ctx, request)?;
    if ctx.out.json {
        ctx.out.json_line(&r)
    } else {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\n[{} prompt tokens ({} cached), {} generated, first token {:.3} s, prefill {:.1} tok/s, \
             decode {:.1} tok/s, stop: {}]",
            r.prompt_tokens,
            r.cached_prompt_tokens,
            r.tokens.len(),
            r.time_to_first_token_s,
            r.prefill_tokens_per_s,
            r.decode_tokens_per_s,
            r.stop_reason
        );
        Ok(())
    }
}
