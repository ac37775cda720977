//! The GGUF model file format: reading (hardened against hostile files), writing, typed
//! metadata, and synthetic models of real architectures. Depends on the quantized formats'
//! type table (`llmd-quant`) and nothing of llmd's devices, runtime or wire protocol, so it can
//! be fuzzed and reused on its own.
//!
//! - [`parse`]: the hardened header parser over untrusted bytes ([`GgufHeader::parse`]).
//! - [`file`]: [`GgufFile`], a memory-mapped file whose tensors are views into the map, opened
//!   whole ([`GgufFile::open`]) or header-only for partial downloads ([`GgufFile::open_header`]),
//!   or a file read through its descriptor ([`GgufFile::open_unmapped`], what the daemon uses).
//! - [`descriptor`]: positioned reads checked against the file's identity at open, and dropping
//!   the page cache of what was read.
//! - [`value`]: metadata value types. [`error`]: [`GgufError`].
//! - [`metadata`]: typed [`ModelDescription`] and [`TokenizerMetadata`]; [`file_type`]:
//!   llama.cpp's file type names.
//! - [`writer`]: [`GgufWriter`], streaming tensor data for files larger than memory.
//! - [`synth`]: random-weight models of every supported architecture, shape preset and weight
//!   type, with llama-quantize's mixes (what `llmd make-model` writes). With the `clap` feature
//!   its option enums are also command-line values.

pub mod descriptor;
pub mod error;
pub mod file;
pub mod file_type;
pub mod metadata;
pub mod parse;
pub mod synth;
pub mod value;
pub mod writer;

#[cfg(test)]
mod it;

pub use error::GgufError;
pub use file::GgufFile;
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
