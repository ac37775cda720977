//! Compute for llmd: the CPU kernels ([`cpu`]) and the CUDA backend, behind one backend trait
//! that model code calls ([`backend`]), over GGML's quantized block formats ([`quant`], the
//! `llmd-quant` crate), and the selection of the best entries of logits rows ([`select`]).

pub mod backend;
pub mod cpu;
pub mod moe;
pub mod select;

/// The quantized block formats, from their own crate (`llmd-quant`), under the name kernel code
/// has always used for them.
pub use llmd_quant as quant;
