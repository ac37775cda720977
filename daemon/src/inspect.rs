//! What `llmctl inspect` reports about a GGUF file (the wire's [`InspectReport`]): architecture,
//! parameter count, file type, tensors and bytes per type, shape, context length, tokenizer,
//! chat template, and the memory the weights need. Built from the header alone, so a partly
//! downloaded file can be inspected.

use std::collections::BTreeMap;

use llmd_shared::api::{InspectReport, TokenizerSummary, TypeStats};

use llmd_gguf::file_type::file_type_name;
use llmd_gguf::metadata::keys;
use llmd_gguf::{GgufFile, ModelDescription, TokenizerMetadata};

/// Building an [`InspectReport`] (a wire type) from a GGUF file.
pub trait ReportFromFile {
    /// Builds the report from an opened (possibly header-only) file.
    fn from_file(file: &GgufFile) -> Self;
}

impl ReportFromFile for InspectReport {
    fn from_file(file: &GgufFile) -> Self {
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
