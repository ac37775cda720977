//! Hand-made vocabularies for unit tests, here and in crates that use the tokenizer (behind the
//! `testing` feature, which only dev-dependencies enable; never part of a shipped build).

use llmd_gguf::TokenizerMetadata;

use crate::token_type::{BYTE, CONTROL, UNKNOWN};

/// A SentencePiece vocabulary: `<unk> <s> </s>`, the 256 byte tokens, then `extra` as
/// (text, score, [`token_type`](crate::token_type)).
pub fn spm(extra: &[(&str, f32, i32)]) -> TokenizerMetadata {
    let mut meta = TokenizerMetadata {
        model: "llama".into(),
        ..Default::default()
    };
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut scores = vec![0.0, 0.0, 0.0];
    let mut types = vec![UNKNOWN, CONTROL, CONTROL];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(BYTE);
    }
    for &(text, score, ty) in extra {
        tokens.push(text.to_owned());
        scores.push(score);
        types.push(ty);
    }
    meta.tokens = tokens;
    meta.scores = Some(scores);
    meta.token_types = Some(types);
    meta
}
