//! Reading and writing GGUF model files.
//!
//! - [`parse`]: the hardened header parser over untrusted bytes ([`GgufHeader::parse`]).
//! - [`file`]: [`GgufFile`], a memory-mapped file whose tensors are views into the map, opened
//!   whole ([`GgufFile::open`]) or header-only for partial downloads ([`GgufFile::open_header`]).
//! - [`value`]: metadata value types. [`error`]: [`GgufError`].
//! - [`metadata`]: typed [`ModelDescription`] and [`TokenizerMetadata`].
//! - [`inspect`]: [`InspectReport`], what `llmctl inspect` shows (works header-only).
//! - [`writer`]: [`GgufWriter`], streaming tensor data for files larger than memory.

pub mod error;
pub mod file;
pub mod inspect;
pub mod metadata;
pub mod parse;
pub mod value;
pub mod writer;

pub use error::GgufError;
pub use file::GgufFile;
pub use inspect::ReportFromFile;
pub use llmd_shared::api::{InspectReport, TokenizerSummary, TypeStats};
pub use metadata::{
    MetadataError, ModelDescription, NormKind, RopeConfig, SlidingWindowPattern, TokenizerMetadata,
};
pub use parse::{
    align_up, DataCheck, GgufHeader, Metadata, MetadataEntry, TensorInfo, DEFAULT_ALIGNMENT,
    GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS,
};
pub use value::{MetadataArray, MetadataValue, ValueType};
pub use writer::{GgufWriter, PlannedTensor, TensorStream, TensorWriter, WriteError};

/// Parses a complete GGUF file held in memory (the entry point of the fuzz target and the
/// hostile-input corpus test). Never panics; memory use is bounded by a small multiple of
/// `bytes.len()`.
pub fn parse(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
    GgufHeader::parse(bytes)
}
