//! What `llmctl inspect` reports about a GGUF file: architecture, parameter count, file type,
//! tensors and bytes per type, shape, context length, tokenizer, chat template, and the memory
//! the weights need. Built from the header alone, so a partly downloaded file can be inspected.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::file::GgufFile;
use super::metadata::{keys, ModelDescription, TokenizerMetadata};

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

/// llama.cpp's name of a `llama_ftype` value.
pub fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

impl InspectReport {
    /// Builds the report from an opened (possibly header-only) file.
    pub fn from_file(file: &GgufFile) -> Self {
        let md = file.metadata();
        let str_of = |k: &str| md.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let architecture = str_of(keys::ARCHITECTURE);
        let file_type = md
            .get(keys::FILE_TYPE)
            .and_then(|v| v.as_i128())
            .and_then(|v| u32::try_from(v).ok());

        let mut by_type: BTreeMap<u32, TypeStats> = BTreeMap::new();
        let (mut parameters, mut weights_bytes) = (0u64, 0u64);
        for t in file.tensors() {
            let s = by_type.entry(t.ty.id()).or_insert_with(|| TypeStats {
                ty: t.ty.name().to_owned(),
                tensors: 0,
                elements: 0,
                bytes: 0,
                supported: t.ty.is_supported(),
            });
            s.tensors += 1;
            s.elements = s.elements.saturating_add(t.n_elements());
            s.bytes = s.bytes.saturating_add(t.n_bytes);
            parameters = parameters.saturating_add(t.n_elements());
            weights_bytes = weights_bytes.saturating_add(t.n_bytes);
        }
        let missing: Vec<_> = file.missing_tensors().collect();
        let missing_bytes = missing
            .iter()
            .map(|t| t.data_end() - t.data_start.max(file.file_size().min(t.data_end())))
            .sum();

        let (description, description_error) = match ModelDescription::from_gguf(file) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let tokenizer = match &description {
            Some(d) => Some(d.tokenizer.clone()),
            None => TokenizerMetadata::from_gguf(file).ok(),
        };
        let d = description.as_ref();
        InspectReport {
            path: file.path().display().to_string(),
            file_size: file.file_size(),
            gguf_version: file.version(),
            alignment: file.alignment(),
            metadata_entries: md.len() as u64,
            name: str_of(keys::NAME),
            architecture,
            file_type,
            file_type_name: file_type.and_then(file_type_name).map(str::to_owned),
            parameters,
            tensor_count: file.tensors().len() as u64,
            weights_bytes,
            types: by_type.into_values().collect(),
            layers: d.map(|d| d.n_layer),
            embedding_length: d.map(|d| d.n_embd),
            feed_forward_length: d.and_then(|d| d.n_ff.iter().copied().max()),
            heads: d.map(|d| d.n_head[0]),
            kv_heads: d.map(|d| d.n_head_kv[0]),
            head_dim: d.map(|d| d.head_dim_k),
            context_length: d.map(|d| d.context_length),
            vocab_size: d.map(|d| d.vocab_size),
            sliding_window: d.and_then(|d| d.sliding_window),
            experts: d.and_then(|d| d.expert_count),
            chat_template: md.get(keys::CHAT_TEMPLATE).is_some(),
            tokenizer: tokenizer.map(|t| TokenizerSummary {
                kind: match t.model.as_str() {
                    "llama" => "SentencePiece".to_owned(),
                    "gpt2" => "byte-level BPE".to_owned(),
                    other => other.to_owned(),
                },
                model: t.model,
                pre: t.pre,
                tokens: t.tokens.len() as u64,
                merges: t.merges.map_or(0, |m| m.len() as u64),
                bos_token_id: t.bos_token_id,
                eos_token_id: t.eos_token_id,
            }),
            complete: file.is_complete(),
            missing_tensors: missing.len() as u64,
            missing_bytes,
            description_error,
        }
    }
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
