//! `llmctl tokenize NAME TEXT`: token ids and pieces. `--json`: `{tokens: [{id, piece}]}`.

use llmd_shared::{Reply, Request, TokenizeRequest};

use super::{unexpected, Ctx};
use crate::cli::TokenizeArgs;
use crate::CtlError;

/// Tokenizes the text.
pub fn run(args: TokenizeArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let request = TokenizeRequest {
        model: args.name,
        text: args.text,
        add_special: !args.no_special,
        parse_special: !args.no_parse_special,
    };
    request.validate().map_err(|e| CtlError::Usage(e.message))?;
    let request = Request::Tokenize(request);
    let mut client = ctx.connect()?;
    let reply = client.request(&request, |_| Ok(()))?;
    let Reply::Tokenize(r) = reply else {
        return Err(unexpected("tokenize"));
    };
    if ctx.out.json {
        return ctx.out.json_line(&r);
    }
    let text: String = r
        .tokens
        .iter()
        .map(|t| format!("{:>8} {:?}\n", t.id, t.piece))
        .collect();
    ctx.out.text(&text)
}
