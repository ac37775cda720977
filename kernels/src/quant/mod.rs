//! Quantized tensor formats (GGML's block layouts): the block structs, the type table, and
//! conversions between f32 and each format.

pub mod blocks;
pub mod types;

pub use blocks::*;
pub use types::{GgmlType, TypeError};
