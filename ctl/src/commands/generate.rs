//! `llmctl generate NAME PROMPT`: streams the generated text. Without `--raw` the prompt goes
//! through the model's chat template as one user message. `--json` prints one line per token
//! (`{"id", "text"}`) and a final line with the daemon's `GenerateReply` (tokens, text,
//! trailing_text, prompt_tokens, prefill_tokens_per_s, decode_tokens_per_s, stop_reason).

use std::io::Write;

use llmd_shared::{
    ChatMessage, Event, GenerateReply, GenerateRequest, Prompt, Reply, Request, Sampling,
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
        seed: args.seed,
    }
}

/// Sends a generation request and streams its tokens to stdout; returns the final reply.
pub fn stream(ctx: &Ctx, request: GenerateRequest) -> Result<GenerateReply, CtlError> {
    let mut client = ctx.connect()?;
    client.set_reply_timeout(None)?;
    let json = ctx.out.json;
    let reply = client.request(&Request::Generate(request), |event| {
        if let Event::Token(t) = event {
            if json {
                ctx.out.json_line(&t)?;
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(t.text.as_bytes()).map_err(CtlError::Output)?;
                out.flush().map_err(CtlError::Output)?;
            }
        }
        Ok(())
    })?;
    let Reply::Generate(r) = reply else {
        return Err(unexpected("generate"));
    };
    if !json {
        ctx.out.text(&r.trailing_text)?;
    }
    Ok(r)
}

/// Generates and prints.
pub fn run(args: GenerateArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let prompt = if args.raw {
        Prompt::Raw(args.prompt)
    } else {
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: args.prompt,
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
            "\n[{} prompt tokens, {} generated, prefill {:.1} tok/s, decode {:.1} tok/s, stop: {}]",
            r.prompt_tokens,
            r.tokens.len(),
            r.prefill_tokens_per_s,
            r.decode_tokens_per_s,
            r.stop_reason
        );
        Ok(())
    }
}
