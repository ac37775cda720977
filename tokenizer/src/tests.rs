//! Unit tests on small hand-made vocabularies (the real vocabularies are checked against
//! llama.cpp in `src/it/reference.rs`).

use super::*;
use crate::testing::spm;
use crate::token_type::{CONTROL, NORMAL, USER_DEFINED as USER};

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.text_to_token(text).expect(text)
}

fn byte(b: u8) -> u32 {
    3 + u32::from(b)
}

#[test]
fn spm_merges_by_score_with_byte_fallback_and_space_prefix() {
    let t = Tokenizer::from_metadata(&spm(&[
        ("▁", -1.0, NORMAL),
        ("a", -1.0, NORMAL),
        ("b", -1.0, NORMAL),
        ("ab", -2.0, NORMAL),
        ("▁a", -3.0, NORMAL),
        ("▁ab", -0.5, NORMAL),
    ]))
    .expect("builds");
    assert_eq!(t.bos(), Some(1));
    assert_eq!(t.eos(), Some(2));
    // Default SentencePiece rules: BOS added, a space prefixed.
    assert_eq!(t.encode("ab", true, false), vec![1, id(&t, "▁ab")]);
    // "▁a" + "b": "ab" scores higher than "▁a", so "a"+"b" merge first, then "▁"+"ab".
    assert_eq!(t.encode("ab", false, false), vec![id(&t, "▁ab")]);
    // A character missing from the vocabulary is spelled in bytes.
    assert_eq!(
        t.encode("a€", false, false),
        vec![id(&t, "▁a"), byte(0xE2), byte(0x82), byte(0xAC)]
    );
    // Pieces: ▁ renders as a space, byte tokens as their byte, control tokens only on request.
    assert_eq!(t.token_to_piece(id(&t, "▁ab"), false), b" ab");
    assert_eq!(t.token_to_piece(byte(0xE2), false), &[0xE2]);
    assert_eq!(t.token_to_piece(1, false), b"");
    assert_eq!(t.token_to_piece(1, true), b"<s>");
    assert_eq!(t.token_to_piece(u32::MAX, true), b"");
    // decode drops the BOS and then, as llama.cpp, keeps the prefixed space; without BOS it
    // removes it.
    assert_eq!(
        t.decode(&t.encode("a€ b", true, false), true, false),
        " a€ b".as_bytes()
    );
    assert_eq!(
        t.decode(&t.encode("a€ b", false, false), true, false),
        "a€ b".as_bytes()
    );
}

#[test]
fn special_tokens_are_split_out_as_llama_cpp_does() {
    let t = Tokenizer::from_metadata(&spm(&[
        ("▁", -1.0, NORMAL),
        ("a", -1.0, NORMAL),
        ("▁a", -0.5, NORMAL),
        ("<tag>", 0.0, USER),
        ("<ctl>", 0.0, CONTROL),
        ("<", -1.0, NORMAL),
        (">", -1.0, NORMAL),
    ]))
    .expect("builds");
    let (tag, ctl, a, space_a) = (id(&t, "<tag>"), id(&t, "<ctl>"), id(&t, "a"), id(&t, "▁a"));
    // User-defined tokens are always split out, and text after a special token gets the space
    // prefix again.
    assert_eq!(
        t.encode("a<tag>a", false, false),
        vec![space_a, tag, space_a]
    );
    // Control tokens only with parse_special.
    assert_eq!(t.encode("<ctl>a", false, true), vec![ctl, space_a]);
    let as_text = t.encode("<ctl>", false, false);
    assert!(!as_text.contains(&ctl));
    assert!(as_text.contains(&id(&t, "<")));
    assert_eq!(t.encode("", true, false), vec![1]);
    assert_eq!(t.encode("", false, false), Vec::<u32>::new());
    let _ = a;
}

#[test]
fn end_of_generation_tokens_are_detected_by_text() {
    let t = Tokenizer::from_metadata(&spm(&[
        ("<end_of_turn>", 0.0, CONTROL),
        ("<|im_end|>", 0.0, NORMAL),
        ("<unused0>", 0.0, CONTROL),
    ]))
    .expect("builds");
    let eot = id(&t, "<end_of_turn>");
    let im_end = id(&t, "<|im_end|>");
    assert_eq!(t.eot(), Some(eot));
    assert!(t.is_eog(2) && t.is_eog(eot) && t.is_eog(im_end));
    assert!(!t.is_eog(1));
    // A normal-typed end token becomes a control token, as llama.cpp overrides it.
    assert!(t.is_control(im_end));
    assert_eq!(t.token_to_piece(im_end, false), b"");
}

#[test]
fn byte_level_bpe_merges_by_rank() {
    // Byte-level texts: "Ġ" is the space.
    let tokens = ["a", "b", "c", "Ġ", "ab", "abc", "Ġa", "<|endoftext|>"];
    let meta = TokenizerMetadata {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        tokens: tokens.iter().map(|s| s.to_string()).collect(),
        merges: Some(vec!["a b".into(), "ab c".into(), "Ġ a".into()]),
        token_types: Some(vec![
            NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, CONTROL,
        ]),
        bos_token_id: Some(7),
        eos_token_id: Some(7),
        ..Default::default()
    };
    let t = Tokenizer::from_metadata(&meta).expect("builds");
    // "abc" -> a b c -> ab c -> abc; " a" -> Ġ a -> Ġa.
    assert_eq!(t.encode("abc a", false, false), vec![5, 6]);
    // BPE models add no BOS by default.
    assert!(!t.add_bos());
    assert_eq!(t.encode("abc", true, false), vec![5]);
    // A byte with no token is dropped, as llama.cpp does.
    assert_eq!(t.encode("ad", false, false), vec![0]);
    assert_eq!(t.encode("<|endoftext|>ab", false, true), vec![7, 4]);
    assert_eq!(t.token_to_piece(6, false), b" a");
    assert!(t.is_eog(7));
}

#[test]
fn invalid_metadata_is_an_error() {
    let mut meta = spm(&[]);
    meta.model = "bert".into();
    assert!(matches!(
        Tokenizer::from_metadata(&meta),
        Err(TokenizerError::UnsupportedModel(m)) if m == "bert"
    ));

    let empty = TokenizerMetadata {
        model: "llama".into(),
        ..Default::default()
    };
    assert!(matches!(
        Tokenizer::from_metadata(&empty),
        Err(TokenizerError::EmptyVocab)
    ));

    let mut short = spm(&[]);
    if let Some(s) = short.scores.as_mut() {
        s.pop();
    }
    assert!(matches!(
        Tokenizer::from_metadata(&short),
        Err(TokenizerError::ShortArray {
            key: "tokenizer.ggml.scores",
            ..
        })
    ));

    let dup = spm(&[("x", 0.0, NORMAL), ("x", 0.0, NORMAL)]);
    assert!(matches!(
        Tokenizer::from_metadata(&dup),
        Err(TokenizerError::DuplicateToken { .. })
    ));

    let bpe = TokenizerMetadata {
        model: "gpt2".into(),
        tokens: vec!["a".into()],
        ..Default::default()
    };
    assert!(matches!(
        Tokenizer::from_metadata(&bpe),
        Err(TokenizerError::MissingMerges)
    ));
}

#[test]
fn special_ids_out_of_range_fall_back_to_defaults() {
    let mut meta = spm(&[]);
    meta.bos_token_id = Some(1_000_000);
    meta.eos_token_id = Some(0);
    let t = Tokenizer::from_metadata(&meta).expect("builds");
    assert_eq!(t.bos(), Some(1));
    assert_eq!(t.eos(), Some(0));
}

#[test]
fn space_clean_up_matches_llama_cpp() {
    assert_eq!(clean_up_spaces(b"Hello , world !"), b"Hello, world!");
    assert_eq!(clean_up_spaces(b"it ' s"), b"it's");
    assert_eq!(
        clean_up_spaces(b"he 's and we 're but I 'd"),
        b"he's and we're but I 'd"
    );
    // llama.cpp's in-place pass leaves a NUL where it skipped, so the second quote keeps its
    // space.
    assert_eq!(clean_up_spaces(b" ' ' x"), b"'' x");
    assert_eq!(clean_up_spaces(b""), b"");
}

#[test]
fn shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
    send_sync::<ChatTemplate>();
    send_sync::<StreamDecoder>();
}
