//! GGML's quantized tensor formats, usable without any device code (the GGUF crate reads its type
//! table, the kernels compute on its blocks): the block structs (`blocks`: legacy and
//! K-quants; `blocks_iq`: IQ, TQ and MXFP4), the IQ/MXFP4 lookup tables (`tables`), the type
//! table (`types`), and conversions between f32 and each format: dequantization (`dequant`,
//! per-block IQ/TQ/MXFP4 in `dequant_iq`) and quantization (`quantize` dispatches and holds the
//! legacy formats, `quantize_k` the K-quants, `quantize_iq` IQ4/TQ/MXFP4, `fit` the scale
//! searches they share).

pub mod blocks;
pub mod blocks_iq;
pub mod dequant;
pub mod dequant_iq;
pub mod error;
pub mod fit;
pub mod float;
pub mod quantize;
pub mod quantize_grid;
pub mod quantize_iq;
pub mod quantize_k;
pub mod tables;
pub mod types;
pub mod view;

#[cfg(test)]
mod it;

pub use blocks::*;
pub use blocks_iq::*;
pub use dequant::dequantize;
pub use error::QuantError;
pub use quantize::{can_quantize, quantize, quantize_into};
pub use types::{GgmlType, TypeError, QK, QK_K};
pub use view::{blocks_as_bytes, blocks_as_bytes_mut, blocks_from_bytes, view_blocks, Block};
