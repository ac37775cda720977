//! Real chat templates (Qwen2.5, Qwen3, Llama 3.1, Gemma 2, Phi-3.5, Mistral Nemo, DeepSeek-R1
//! distill) rendered by llmd's minijinja set-up give exactly the text Python's jinja2 gives with
//! Hugging Face's `apply_chat_template` settings, including the templates' own
//! `raise_exception` errors. The expected renderings are in
//! `tokenizer/tests/fixtures/chat_templates.json`, made by `scripts/gen-tokenizer-fixtures.py`.

use std::path::PathBuf;

use crate::chat::{ChatError, TemplateOrigin};
use crate::{ChatMessage, ChatTemplate};
use serde::Deserialize;

/// One rendering.
#[derive(Deserialize)]
struct Case {
    /// The conversation.
    messages: Vec<ChatMessage>,
    /// `add_generation_prompt`.
    add_generation_prompt: bool,
    /// jinja2's output, when it rendered.
    rendered: Option<String>,
    /// jinja2's `raise_exception` message, when it failed.
    error: Option<String>,
}

/// One template with its cases.
#[derive(Deserialize)]
struct Template {
    /// Model name.
    name: String,
    /// Jinja source.
    source: String,
    /// Renderings.
    cases: Vec<Case>,
}

/// The fixture file.
#[derive(Deserialize)]
struct Fixture {
    /// Every template.
    templates: Vec<Template>,
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable"))
        .expect("fixture parses")
}

#[test]
fn real_templates_render_like_jinja2() {
    let fixture = fixture();
    assert!(fixture.templates.len() >= 5);
    let mut failures = Vec::new();
    for template in &fixture.templates {
        let compiled = ChatTemplate::from_source(
            template.source.clone(),
            TemplateOrigin::Model,
            "<BOS>".into(),
            "<EOS>".into(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", template.name));
        for case in &template.cases {
            let ours = compiled.render(&case.messages, case.add_generation_prompt);
            match (&ours, &case.rendered, &case.error) {
                (Ok(text), Some(expected), _) if text == expected => {}
                (Err(e), None, Some(message)) if e.to_string().contains(message.as_str()) => {}
                _ => failures.push(format!(
                    "{} ({} messages, add_generation_prompt={}):\n  ours   {:?}\n  jinja2 {:?}",
                    template.name,
                    case.messages.len(),
                    case.add_generation_prompt,
                    ours,
                    case.rendered.as_ref().or(case.error.as_ref())
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The step budget (issue 14) leaves every real template room for long conversations: 2,000
/// alternating turns render within it.
#[test]
fn real_templates_fit_the_step_budget_for_long_conversations() {
    for template in &fixture().templates {
        let compiled = ChatTemplate::from_source(
            template.source.clone(),
            TemplateOrigin::Model,
            "<BOS>".into(),
            "<EOS>".into(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", template.name));
        let mut messages = Vec::new();
        for i in 0..2001 {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            messages.push(ChatMessage::new(
                role,
                format!("message {i} of a long chat"),
            ));
        }
        match compiled.render(&messages, true) {
            Ok(text) => assert!(text.contains("message 2000 of"), "{}", template.name),
            Err(e @ ChatError::OutOfSteps { .. }) => panic!("{}: {e}", template.name),
            // A template's own refusal (e.g. of a role) is not the budget's doing.
            Err(ChatError::Render(_)) => {}
            Err(e) => panic!("{}: {e}", template.name),
        }
    }
}
