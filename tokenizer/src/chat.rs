//! Chat templates: the model's `tokenizer.chat_template` (Jinja) rendered with minijinja, with
//! the Python-flavoured helpers real templates use, or a documented fallback when the model has
//! none.
//!
//! Render context (as Hugging Face's `apply_chat_template`): `messages` (a list of
//! `{role, content}`), `add_generation_prompt`, `bos_token`, `eos_token`; functions
//! `raise_exception(msg)` and `strftime_now(format)` (UTC); Python string and dict methods
//! (`.strip()`, `.startswith()`, `.split()`, `.items()`, ...) through minijinja-contrib's pycompat
//! callback; blocks trimmed as Hugging Face does (`trim_blocks`, `lstrip_blocks`).
//!
//! A template is code from the model file, so every render runs on a step budget (minijinja's
//! fuel): [`TEMPLATE_FUEL_BASE`] plus [`TEMPLATE_FUEL_PER_MESSAGE`] per message. A template that
//! loops without end fails with [`ChatError::OutOfSteps`] instead of running for ever. The
//! budget bounds steps, not the cost of one step (one step may copy a long string), so callers
//! also render off their async runtime with a time limit (`server::prepare`).
//!
//! Fallback when a model has no template, chosen from its vocabulary:
//! - `<start_of_turn>` / `<end_of_turn>` present (Gemma): Gemma's turn format, a system message
//!   folded into the first user turn, BOS first.
//! - `<|im_start|>` / `<|im_end|>` present (Qwen and other ChatML models): ChatML.
//! - otherwise: plain `User: ...` / `Assistant: ...` lines.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};

use super::Tokenizer;

/// Name of the template inside the environment.
const TEMPLATE_NAME: &str = "chat";

/// Steps (minijinja instructions) a render may take besides those per message. The real
/// templates in `tests/fixtures/tokenizer/chat_templates.json` (Qwen 2.5 and 3, Llama 3.1,
/// Phi-3.5, Mistral Nemo, DeepSeek-R1) take 110 to 260 steps for a two-message conversation;
/// a runaway loop exhausts this in about 3 ms.
pub const TEMPLATE_FUEL_BASE: u64 = 100_000;

/// Steps a render may take per message: the same templates take 28 to 66 per message (1,000
/// messages: 27,555 to 65,118 steps), so this leaves fifteen times that.
pub const TEMPLATE_FUEL_PER_MESSAGE: u64 = 1_000;

/// Gemma's turn format (used when a Gemma model has no template).
const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
{{- message['content'] | trim }}
{{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\n' }}
{%- endif -%}"#;

/// ChatML (used when a model with `<|im_start|>` has no template).
const CHATML_TEMPLATE: &str = r#"{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|im_start|>assistant\n' }}
{%- endif -%}"#;

/// Plain text turns (the last resort).
const PLAIN_TEMPLATE: &str = r#"{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ message['content'] + '\n\n' }}
{%- elif message['role'] == 'user' -%}
{{ 'User: ' + message['content'] + '\n' }}
{%- else -%}
{{ 'Assistant: ' + message['content'] + '\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ 'Assistant:' }}
{%- endif -%}"#;

/// Errors compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template does not compile.
    #[error("chat template does not compile: {0}")]
    Compile(String),
    /// Rendering failed (including the template's own `raise_exception`).
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// The render used up its step budget: the template loops without end, or far longer than
    /// any real template for this many messages.
    #[error(
        "the chat template did not finish within its budget of {steps} steps for {messages} \
         messages (does it loop without end?); use --raw to bypass it"
    )]
    OutOfSteps {
        /// The budget it had.
        steps: u64,
        /// Messages in the conversation.
        messages: usize,
    },
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant" (or whatever roles the template knows).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Where a template came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// `tokenizer.chat_template` of the model.
    Model,
    /// The Gemma fallback.
    FallbackGemma,
    /// The ChatML fallback.
    FallbackChatMl,
    /// The plain-text fallback.
    FallbackPlain,
}

/// A compiled chat template and the special token texts it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    /// The environment holding the compiled template.
    env: Environment<'static>,
    /// Where it came from.
    origin: TemplateOrigin,
    /// `bos_token` in the render context.
    bos_token: String,
    /// `eos_token` in the render context.
    eos_token: String,
}

impl ChatTemplate {
    /// The model's template (`chat_template`, from `tokenizer.chat_template`), or the fallback
    /// for `tokenizer`'s vocabulary when it has none.
    pub fn new(chat_template: Option<&str>, tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let (source, origin) = match chat_template {
            Some(t) if !t.trim().is_empty() => (t.to_owned(), TemplateOrigin::Model),
            _ => {
                let has = |t: &str| tokenizer.text_to_token(t).is_some();
                if has("<start_of_turn>") && has("<end_of_turn>") {
                    (GEMMA_TEMPLATE.to_owned(), TemplateOrigin::FallbackGemma)
                } else if has("<|im_start|>") && has("<|im_end|>") {
                    (CHATML_TEMPLATE.to_owned(), TemplateOrigin::FallbackChatMl)
                } else {
                    (PLAIN_TEMPLATE.to_owned(), TemplateOrigin::FallbackPlain)
                }
            }
        };
        let text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
                .to_owned()
        };
        Self::from_source(source, origin, text(tokenizer.bos()), text(tokenizer.eos()))
    }

    /// Compiles `source` with the given BOS / EOS texts.
    pub fn from_source(
        source: String,
        origin: TemplateOrigin,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| ChatError::Compile(describe(&e)))?;
        Ok(Self {
            env,
            origin,
            bos_token,
            eos_token,
        })
    }

    /// Where the template came from.
    pub fn origin(&self) -> TemplateOrigin {
        self.origin
    }

    /// When the model's file has no chat template: a warning naming the fallback used, that a
    /// base model may answer with junk, and `--raw` (for `status` and chat replies).
    pub fn fallback_warning(&self) -> Option<String> {
        let fallback = match self.origin {
            TemplateOrigin::Model => return None,
            TemplateOrigin::FallbackGemma => "Gemma",
            TemplateOrigin::FallbackChatMl => "ChatML",
            TemplateOrigin::FallbackPlain => "plain-text",
        };
        Some(format!(
            "the model's file has no chat template, so a {fallback} fallback template was used: a \
             base (non-chat) model may answer with junk; use --raw for plain completion, or set a \
             chat_template"
        ))
    }

    /// Renders `messages` to the prompt text.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let steps = fuel_for(messages.len());
        // Fuel is a setting of the environment; a clone shares the compiled template.
        let mut env = self.env.clone();
        env.set_fuel(Some(steps));
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Render(describe(&e)))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::OutOfFuel => ChatError::OutOfSteps {
                    steps,
                    messages: messages.len(),
                },
                _ => ChatError::Render(describe(&e)),
            })
    }

    /// Renders `messages` and tokenizes the prompt with special tokens parsed. BOS is added as
    /// the model asks unless the rendered text already starts with it, so it is never doubled.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let prompt = self.render(messages, add_generation_prompt)?;
        Ok(self.encode_rendered(tokenizer, &prompt))
    }

    /// Tokenizes a prompt this template rendered, with special tokens parsed; BOS is added as
    /// the model asks unless the text already starts with it.
    pub fn encode_rendered(&self, tokenizer: &Tokenizer, prompt: &str) -> Vec<u32> {
        let starts_with_bos = !self.bos_token.is_empty() && prompt.starts_with(&self.bos_token);
        tokenizer.encode(prompt, !starts_with_bos, true)
    }
}

/// The step budget of a render of `messages` messages.
pub fn fuel_for(messages: usize) -> u64 {
    TEMPLATE_FUEL_BASE.saturating_add(TEMPLATE_FUEL_PER_MESSAGE.saturating_mul(messages as u64))
}

/// An error with its chain of causes, for messages.
fn describe(e: &JinjaError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `raise_exception(message)`: fails the render with the template's message.
fn raise_exception(message: String) -> Result<minijinja::Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// `tojson(value, indent=None)` as Hugging Face's chat templates define it: Python's
/// `json.dumps(value, ensure_ascii=False, indent=indent)`, so `", "` and `": "` separators and
/// map keys in insertion order.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, 0, &mut out)?;
    Ok(minijinja::Value::from_safe_string(out))
}

/// Writes `value` the way Python's `json.dumps(.., ensure_ascii=False, indent=indent)` does.
fn write_python_json(
    value: &minijinja::Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), JinjaError> {
    use minijinja::value::ValueKind;
    let json_error =
        |e: serde_json::Error| JinjaError::new(ErrorKind::InvalidOperation, e.to_string());
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            let is_map = value.kind() == ValueKind::Map;
            let (open, close) = if is_map { ('{', '}') } else { ('[', ']') };
            out.push(open);
            let mut empty = true;
            for (i, item) in value.try_iter()?.enumerate() {
                empty = false;
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                if is_map {
                    let key = match item.as_str() {
                        Some(k) => k.to_owned(),
                        None => item.to_string(),
                    };
                    out.push_str(&serde_json::to_string(&key).map_err(json_error)?);
                    out.push_str(": ");
                    let entry = value.get_item(&item)?;
                    write_python_json(&entry, indent, depth + 1, out)?;
                } else {
                    write_python_json(&item, indent, depth + 1, out)?;
                }
            }
            if !empty {
                newline(out, depth);
            }
            out.push(close);
        }
        _ => out.push_str(&serde_json::to_string(value).map_err(json_error)?),
    }
    Ok(())
}

/// `strftime_now(format)`: the current UTC time formatted with the C `strftime` conversions
/// templates use (%Y %m %d %e %H %I %M %S %p %y %j %B %b %A %a %%).
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

/// Formats `secs` since the Unix epoch (UTC) with a `strftime` subset.
fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{hour12:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60 of a leap year.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %a %B %b %j %I%p %y %%", t),
            "2024-02-29 13:05:09 Thursday Thu February Feb 060 01PM 24 %"
        );
        assert_eq!(strftime("%d %B %Y", 0), "01 January 1970");
    }

    fn render(source: &str, messages: &[ChatMessage], gen: bool) -> Result<String, ChatError> {
        ChatTemplate::from_source(
            source.to_owned(),
            TemplateOrigin::Model,
            "<bos>".into(),
            "<eos>".into(),
        )?
        .render(messages, gen)
    }

    #[test]
    fn python_methods_namespace_and_tojson() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}\
                   {{ m.content.strip().upper() }}{% if m.content.startswith(' hi') %}!{% endif %}\
                   {% endfor %}{{ ns.n }}{{ messages[0] | tojson }}";
        let out = render(src, &[ChatMessage::new("user", " hi ")], false).expect("renders");
        assert_eq!(out, r#"HI!1{"role": "user", "content": " hi "}"#);
        let nested = render(
            "{{ {'a': [1, 2.5, 'xé\\n'], 'b': {}} | tojson }}|{{ [1, {'k': none}] | tojson(indent=2) }}",
            &[],
            false,
        )
        .expect("renders");
        assert_eq!(
            nested,
            "{\"a\": [1, 2.5, \"x\u{e9}\\n\"], \"b\": {}}|[\n  1,\n  {\n    \"k\": null\n  }\n]"
        );
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let err =
            render("{{ raise_exception('no system role') }}", &[], false).expect_err("must fail");
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    /// Issue 14: a template that loops (nearly) for ever fails quickly with a clear error.
    #[test]
    fn a_runaway_loop_runs_out_of_steps() {
        let started = std::time::Instant::now();
        let err = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &[ChatMessage::new("user", "hi")],
            true,
        )
        .expect_err("must not finish");
        assert!(
            matches!(err, ChatError::OutOfSteps { steps, messages: 1 } if steps == fuel_for(1)),
            "{err}"
        );
        assert!(err.to_string().contains("loop without end"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn fallbacks_render() {
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Bye"),
        ];
        assert_eq!(
            render(GEMMA_TEMPLATE, &msgs, true).expect("gemma"),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            render(CHATML_TEMPLATE, &msgs[1..2], true).expect("chatml"),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render(PLAIN_TEMPLATE, &msgs, true).expect("plain"),
            "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"
        );
    }
}
