//! llmd: the daemon that keeps language models resident across devices.
//!
//! Layout (see docs/ARCHITECTURE.md):
//! - [`gguf`]: reading and writing GGUF model files.
//! - [`tokenizer`]: SentencePiece and byte-level BPE tokenizers, detokenization, chat templates.

pub mod gguf;
pub mod tokenizer;
