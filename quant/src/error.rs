//! The error type of the quantized-format conversions.

use thiserror::Error;

use super::types::GgmlType;

/// Why a conversion to or from a quantized format could not be done.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// llmd has no conversion for this type in the requested direction (the types
    /// [`GgmlType::is_supported`] rejects, for dequantization; those `can_quantize` rejects, for
    /// quantization).
    #[error("unsupported tensor type {0}")]
    Unsupported(GgmlType),
    /// The element count is not a whole number of the type's blocks.
    #[error("{elems} elements is not a whole number of {ty} blocks ({block} elements each)")]
    PartialBlock {
        /// The tensor type.
        ty: GgmlType,
        /// The element count asked for.
        elems: usize,
        /// Elements per block of `ty`.
        block: usize,
    },
    /// The quantized bytes do not have the size the element count requires.
    #[error("{ty} data for {elems} elements must be {expected} bytes, got {actual}")]
    ByteLength {
        /// The tensor type.
        ty: GgmlType,
        /// The element count asked for.
        elems: usize,
        /// The byte count `elems` elements of `ty` take.
        expected: usize,
        /// The byte count given.
        actual: usize,
    },
    /// A byte slice viewed as blocks in place is not aligned for the block struct.
    #[error("{ty} block data at address {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// The block type.
        ty: GgmlType,
        /// The start address of the bytes.
        addr: usize,
        /// The alignment the block struct needs.
        align: usize,
    },
}

/// The byte count of `elems` elements of `ty`, checking that they fill whole blocks.
pub(crate) fn byte_len(ty: GgmlType, elems: usize) -> Result<usize, QuantError> {
    let block = ty.block_elems();
    if !elems.is_multiple_of(block) {
        return Err(QuantError::PartialBlock { ty, elems, block });
    }
    // A byte count that overflows usize cannot match any slice, so report it as a length error.
    Ok((elems / block).saturating_mul(ty.block_bytes()))
}
