//! Errors from the CPU kernels: wrong shapes and types the caller passed in.

use thiserror::Error;

use crate::quant::GgmlType;

/// Why a CPU kernel refused its arguments.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// The weight type has no matrix multiply (Q8_K, Q8_1, the integer types, NVFP4, ...).
    #[error("no CPU matrix multiply for tensor type {0}")]
    UnsupportedType(GgmlType),
    /// The row length is not a whole number of the type's blocks.
    #[error("row length {cols} is not a multiple of the {ty} block size {block}")]
    RowNotBlocks {
        /// The weight type.
        ty: GgmlType,
        /// The row length in elements.
        cols: usize,
        /// Elements per block of `ty`.
        block: usize,
    },
    /// A buffer has the wrong length for the shape given.
    #[error("{what}: expected {expected} elements, got {got}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length passed.
        got: usize,
    },
    /// The weight bytes do not start at a multiple of the block's alignment.
    #[error("{ty} weight data is not aligned to {align} bytes")]
    Misaligned {
        /// The weight type.
        ty: GgmlType,
        /// The alignment the block struct needs.
        align: usize,
    },
}
