//! The daemon library's integration tests, in one binary (one link of the daemon instead of one
//! per file):
//! - against llama.cpp's committed outputs: `tiny_vs_llama_cpp`, `quant_types_vs_llama_cpp`
//!   and `moe_vs_llama_cpp` (over `llama_cpp_logits`), `kv_vs_llama_cpp`, `gemma_vs_llama_cpp`;
//! - models: `gguf_make_model` (the synthetic models read back), `model_refusals` (models llmd
//!   must refuse), `moe_placement` (experts on another device give the same tokens);
//! - GPUs: `gpu_check` (whole models on the GPU against the CPU), `gpu_budget` (a decoded
//!   token's launches and syncs), `gpu_graphs` (CUDA graphs of decode steps) and `device_select`
//!   (tokens picked on the head's device, also on the CPU), `#[ignore]`d GPU
//!   tests run by launchers on the fake CUDA driver
//!   (`gpu`); `nvml_health` (telemetry, power and doctor on the fake NVML).

mod device_select;
mod gemma_vs_llama_cpp;
mod gguf_make_model;
mod gpu;
mod gpu_budget;
mod gpu_check;
mod gpu_graphs;
mod kv_vs_llama_cpp;
mod llama_cpp_logits;
mod model_refusals;
mod moe_placement;
mod moe_vs_llama_cpp;
mod nvml_health;
mod quant_types_vs_llama_cpp;
mod stage_overlap;
mod tiny_vs_llama_cpp;
