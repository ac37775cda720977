//! `inspect`: what a GGUF file holds — architecture, parameter count, file type, tensors and
//! bytes per type, shape, context length, tokenizer, chat template, and the memory the weights
//! need. The daemon builds the report from the file's header alone, so a partly downloaded file
//! can be inspected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Inspects a GGUF file (as the daemon sees it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectRequest {
    /// Absolute path of the file.
    pub path: String,
}

/// Tensors, elements and bytes of one tensor type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStats {
    /// GGML type name ("Q4_K", "F32", ...).
    pub ty: String,
    /// Number of tensors of this type.
    pub tensors: u64,
    /// Elements in those tensors.
    pub elements: u64,
    /// Bytes of data in those tensors.
    pub bytes: u64,
    /// Whether llmd can compute with this type.
    pub supported: bool,
}

/// The tokenizer, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerSummary {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece), "gpt2" (byte-level BPE), ...
    pub model: String,
    /// A readable name of the kind ("SentencePiece", "byte-level BPE", or the model string).
    pub kind: String,
    /// `tokenizer.ggml.pre`, if present.
    pub pre: Option<String>,
    /// Number of tokens.
    pub tokens: u64,
    /// Number of BPE merges (0 if none).
    pub merges: u64,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id.
    pub eos_token_id: Option<u32>,
}

/// Everything `llmctl inspect` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectReport {
    /// The file's path.
    pub path: String,
    /// Size of the file on disk.
    pub file_size: u64,
    /// GGUF version.
    pub gguf_version: u32,
    /// Data alignment.
    pub alignment: u64,
    /// Number of metadata entries.
    pub metadata_entries: u64,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.file_type` as a number.
    pub file_type: Option<u32>,
    /// `general.file_type` as llama.cpp names it ("Q4_K_M", ...).
    pub file_type_name: Option<String>,
    /// Total elements of all tensors.
    pub parameters: u64,
    /// Number of tensors.
    pub tensor_count: u64,
    /// Bytes of all tensor data: the memory the weights need.
    pub weights_bytes: u64,
    /// Per tensor type, in GGML id order.
    pub types: Vec<TypeStats>,
    /// Transformer layers.
    pub layers: Option<u32>,
    /// Embedding size.
    pub embedding_length: Option<u32>,
    /// Feed-forward size (the largest, if per layer).
    pub feed_forward_length: Option<u32>,
    /// Attention heads (first layer).
    pub heads: Option<u32>,
    /// Key/value heads (first layer).
    pub kv_heads: Option<u32>,
    /// Key head dimension.
    pub head_dim: Option<u32>,
    /// Training context length.
    pub context_length: Option<u32>,
    /// Vocabulary size.
    pub vocab_size: Option<u32>,
    /// Sliding-window size, if the model has windowed layers.
    pub sliding_window: Option<u32>,
    /// Experts per layer, if the model is a mixture of experts.
    pub experts: Option<u32>,
    /// The tokenizer, if the file has one.
    pub tokenizer: Option<TokenizerSummary>,
    /// Whether `tokenizer.chat_template` is present.
    pub chat_template: bool,
    /// Whether every tensor's data is in the file.
    pub complete: bool,
    /// Tensors whose data is missing (partial download).
    pub missing_tensors: u64,
    /// Bytes of tensor data missing.
    pub missing_bytes: u64,
    /// Why the typed model description could not be read, if it could not (the rest of the
    /// report is still filled from what is there).
    pub description_error: Option<String>,
}

/// Formats a byte count with binary units.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl fmt::Display for InspectReport {
    /// The human-readable report `llmctl inspect` prints without `--json`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        writeln!(f, "file:            {}", self.path)?;
        writeln!(
            f,
            "format:          GGUF v{}, {} metadata entries, {}{}",
            self.gguf_version,
            self.metadata_entries,
            human_bytes(self.file_size),
            if self.complete {
                String::new()
            } else {
                format!(
                    " (partial: {} tensors, {} missing)",
                    self.missing_tensors,
                    human_bytes(self.missing_bytes)
                )
            }
        )?;
        writeln!(
            f,
            "architecture:    {}",
            self.architecture.as_deref().unwrap_or("-")
        )?;
        if let Some(n) = &self.name {
            writeln!(f, "name:            {n}")?;
        }
        writeln!(
            f,
            "file type:       {}",
            match (&self.file_type_name, self.file_type) {
                (Some(n), _) => n.clone(),
                (None, Some(ft)) => format!("unknown ({ft})"),
                (None, None) => "-".to_owned(),
            }
        )?;
        writeln!(
            f,
            "parameters:      {} ({:.3}B)",
            self.parameters,
            self.parameters as f64 / 1e9
        )?;
        writeln!(
            f,
            "layers:          {}   embedding: {}   feed-forward: {}",
            opt(self.layers),
            opt(self.embedding_length),
            opt(self.feed_forward_length)
        )?;
        writeln!(
            f,
            "heads:           {}   kv heads: {}   head dim: {}",
            opt(self.heads),
            opt(self.kv_heads),
            opt(self.head_dim)
        )?;
        writeln!(f, "context length:  {}", opt(self.context_length))?;
        if let Some(w) = self.sliding_window {
            writeln!(f, "sliding window:  {w}")?;
        }
        if let Some(e) = self.experts {
            writeln!(f, "experts:         {e}")?;
        }
        match &self.tokenizer {
            Some(t) => writeln!(
                f,
                "tokenizer:       {} ({}{}), vocabulary {}",
                t.kind,
                t.model,
                t.pre
                    .as_deref()
                    .map(|p| format!(", pre {p}"))
                    .unwrap_or_default(),
                opt(self.vocab_size)
            )?,
            None => writeln!(f, "tokenizer:       -")?,
        }
        writeln!(
            f,
            "chat template:   {}",
            if self.chat_template { "yes" } else { "no" }
        )?;
        writeln!(
            f,
            "weights memory:  {} in {} tensors",
            human_bytes(self.weights_bytes),
            self.tensor_count
        )?;
        for t in &self.types {
            writeln!(
                f,
                "  {:<8} {:>5} tensors {:>14} elements {:>12}{}",
                t.ty,
                t.tensors,
                t.elements,
                human_bytes(t.bytes),
                if t.supported { "" } else { "  (unsupported)" }
            )?;
        }
        if let Some(e) = &self.description_error {
            writeln!(f, "metadata error:  {e}")?;
        }
        Ok(())
    }
}
