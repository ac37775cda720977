//! `tokenize`: a model's token ids and pieces for a text.

use llmd_shared::{ErrorReply, TokenPiece, TokenizeReply, TokenizeRequest};

use super::{model_named, Context};

/// Tokenizes the text.
pub async fn handle(req: TokenizeRequest, ctx: &Context) -> Result<TokenizeReply, ErrorReply> {
    let model = model_named(ctx, &req.model)?;
    let ids = model
        .tokenizer
        .encode(&req.text, req.add_special, req.parse_special);
    let tokens = ids
        .into_iter()
        .map(|id| TokenPiece {
            id,
            piece: String::from_utf8_lossy(model.tokenizer.token_to_piece(id, true)).into_owned(),
        })
        .collect();
    Ok(TokenizeReply { tokens })
}
