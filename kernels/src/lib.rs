//! Compute for llmd: GGML's quantized block formats ([`quant`]), the CPU kernels, and (later) the
//! CUDA kernels, behind one backend trait that model code calls.

pub mod backend;
pub mod cpu;
pub mod fake_cuda;
pub mod quant;
