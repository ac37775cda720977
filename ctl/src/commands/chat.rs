//! `llmctl chat NAME`: an interactive conversation. Each line read from stdin is a user turn;
//! the whole conversation goes through the model's chat template every turn. An empty line or
//! end of input ends the chat; `/reset` starts over. With `--json`, each reply's final
//! `GenerateReply` is printed as one line after its token lines.

use std::io::{BufRead, IsTerminal, Write};

use llmd_shared::{ChatMessage, GenerateRequest, Prompt};

use super::generate::{sampling, stream};
use super::Ctx;
use crate::cli::ChatArgs;
use crate::CtlError;

/// Runs the conversation.
pub fn run(args: ChatArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: system.clone(),
        });
    }
    let interactive = std::io::stdin().is_terminal() && !ctx.out.json;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "> ");
            let _ = err.flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(CtlError::Output)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if line == "/reset" {
            messages.retain(|m| m.role == "system");
            continue;
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: line.to_string(),
        });
        let request = GenerateRequest {
            model: args.name.clone(),
            prompt: Prompt::Chat(messages.clone()),
            max_tokens: args.max_tokens,
            sampling: sampling(&args.sampling),
            stop: Vec::new(),
        };
        let reply = stream(ctx, request)?;
        if ctx.out.json {
            ctx.out.json_line(&reply)?;
        } else {
            ctx.out.text("\n")?;
        }
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: reply.text,
        });
    }
    Ok(())
}
