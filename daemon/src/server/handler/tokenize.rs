//! `tokenize`: a model's token ids and pieces for a text, computed off the runtime
//! (`runtime::prompt`).

use llmd_shared::{ErrorReply, TokenPiece, TokenizeReply, TokenizeRequest};

use super::{model_for_request, Context};
use crate::runtime::prompt::tokenize_with_pieces;

/// Tokenizes the text.
pub async fn handle(req: TokenizeRequest, ctx: &Context) -> Result<TokenizeReply, ErrorReply> {
    req.validate()?;
    let model = model_for_request(ctx, &req.model).await?;
    let pieces = tokenize_with_pieces(
        model.prompt_model(),
        req.text,
        req.add_special,
        req.parse_special,
    )
    .await?;
    let tokens = pieces
        .into_iter()
        .map(|(id, piece)| TokenPiece { id, piece })
        .collect();
    Ok(TokenizeReply { tokens })
}
