//! The OpenAI request bodies this API reads, and their translation into the runtime's
//! [`GenerateRequest`] (whose checks, `GenerateRequest::validate`, are llmctl's). Fields other
//! clients send and this server does not use (`user`, `metadata`, ...) are ignored; fields that
//! would change the answer and are not supported are refused by name.

use llmd_shared::api::MAX_TOKENS_LIMIT;
use llmd_shared::{ChatMessage, GenerateRequest, Prompt, Sampling};
use serde::Deserialize;

use super::error::ApiError;

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// What chat and text completions share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// The model's name.
    pub model: String,
    /// Tokens to generate at most (the older name).
    pub max_tokens: Option<u32>,
    /// Tokens to generate at most (the newer name; wins over `max_tokens`).
    pub max_completion_tokens: Option<u32>,
    /// Softmax temperature; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Seed of the random draw.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Subtracted from the logits of tokens already seen.
    pub presence_penalty: Option<f32>,
    /// Not supported unless 0 (the sampler has no count-scaled penalty).
    pub frequency_penalty: Option<f32>,
    /// Choices per request: only 1.
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Log probabilities: not supported.
    pub logprobs: Option<serde_json::Value>,
}

/// A message's content: text, or parts of which only text is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    /// "text" (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    pub text: Option<String>,
}

/// A message of a conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// "system", "user", "assistant" (or "developer", read as "system").
    pub role: String,
    /// Its text; absent or null for an assistant message that only called tools.
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// The rest.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /v1/completions`'s prompt: one string (arrays of several are refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CompletionPrompt {
    /// One prompt.
    One(String),
    /// Several prompts (only one is accepted).
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The text to continue.
    pub prompt: CompletionPrompt,
    /// The rest.
    #[serde(flatten)]
    pub common: Common,
}

impl Common {
    /// The runtime's request for `prompt` with these settings; refuses what this server does
    /// not do. A request without a token limit may generate until the context is full.
    pub fn generate_request(&self, prompt: Prompt) -> Result<GenerateRequest, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request(
                "n must be 1: this server returns one choice per request",
            ));
        }
        let logprobs = match &self.logprobs {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => false,
            Some(_) => true,
        };
        if logprobs {
            return Err(ApiError::bad_request("logprobs are not supported"));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        Ok(GenerateRequest {
            model: self.model.clone(),
            prompt,
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .unwrap_or(MAX_TOKENS_LIMIT),
            sampling: Sampling {
                temperature: self.temperature,
                top_p: self.top_p,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed,
                ..Sampling::default()
            },
            stop,
        })
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

impl ChatRequest {
    /// The conversation as the runtime takes it.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let messages = self
            .messages
            .iter()
            .map(|m| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::bad_request(format!(
                                        "message content of type {kind:?} is not supported: \
                                         only text"
                                    )))
                                }
                            }
                        }
                        text
                    }
                };
                let role = if m.role == "developer" {
                    "system".to_owned()
                } else {
                    m.role.clone()
                };
                Ok(ChatMessage { role, content })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prompt::Chat(messages))
    }
}

impl CompletionRequest {
    /// The prompt as the runtime takes it.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        match &self.prompt {
            CompletionPrompt::One(p) => Ok(Prompt::Raw(p.clone())),
            CompletionPrompt::Many(v) if v.len() == 1 => Ok(Prompt::Raw(v[0].clone())),
            CompletionPrompt::Many(_) => Err(ApiError::bad_request(
                "prompt must be one string: this server completes one prompt per request",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_become_runtime_requests() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"}]}],
                "max_completion_tokens":5,"max_tokens":9,"temperature":0,"stop":"x","seed":3,
                "user":"ignored"}"#,
        )
        .unwrap();
        let g = r.common.generate_request(r.prompt().unwrap()).unwrap();
        assert_eq!(g.max_tokens, 5);
        assert_eq!(g.stop, vec!["x".to_owned()]);
        assert_eq!(g.sampling.temperature, Some(0.0));
        assert_eq!(g.sampling.seed, Some(3));
        match g.prompt {
            Prompt::Chat(m) => {
                assert_eq!(m[0].role, "system");
                assert_eq!(m[1].content, "hi");
            }
            Prompt::Raw(_) => panic!("a chat became raw"),
        }
    }

    #[test]
    fn unsupported_values_are_refused_by_name() {
        let r: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":"a","n":2}"#).unwrap();
        let e = r.common.generate_request(r.prompt().unwrap()).unwrap_err();
        assert!(e.message.contains("n must be 1"), "{}", e.message);
        let r: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":["a","b"]}"#).unwrap();
        assert!(r.prompt().is_err());
    }

    #[test]
    fn penalties_reach_the_sampling_settings() {
        let r: CompletionRequest = serde_json::from_str(
            r#"{"model":"m","prompt":"a","frequency_penalty":0.5,"presence_penalty":-0.25}"#,
        )
        .unwrap();
        let g = r
            .common
            .generate_request(Prompt::Raw("a".into()))
            .expect("penalties are accepted");
        assert_eq!(g.sampling.frequency_penalty, Some(0.5));
        assert_eq!(g.sampling.presence_penalty, Some(-0.25));
    }
}
