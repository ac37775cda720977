//! Fuzz target: chat templates (code from model files) rendered the way the daemon renders them,
//! on their step budget. Input: a template source, then NUL-separated messages (roles
//! alternate user / assistant / system). Any panic, abort or hang is a bug; a template that
//! loops must end with `OutOfSteps`.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run chat_template` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_tokenizer::chat::{ChatMessage, ChatTemplate, TemplateOrigin};

/// Roles given to the messages in turn.
const ROLES: [&str; 3] = ["user", "assistant", "system"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default().to_owned();
    let messages: Vec<ChatMessage> = parts
        .take(64)
        .enumerate()
        .map(|(i, content)| ChatMessage::new(ROLES[i % ROLES.len()], content))
        .collect();
    let Ok(template) = ChatTemplate::from_source(
        source,
        TemplateOrigin::Model,
        "<bos>".into(),
        "<eos>".into(),
    ) else {
        return;
    };
    let _ = template.render(&messages, true);
    let _ = template.render(&messages, false);
});
