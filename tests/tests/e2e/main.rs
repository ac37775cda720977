//! The end-to-end tests, in one binary: a real `llmd` on a temporary socket driven by the real
//! `llmctl` (the harness is `llmd_testkit::e2e`, which refuses binaries older than their
//! sources), each file one subject:
//! - the daemon itself: `daemon` (foundation, signals, socket activation), `hostile` (attacks),
//!   `model_file_changes` (a model's file truncated, overwritten, renamed, deleted),
//!   `model_failure` (a panicking worker), `packaging` (the shipped configuration),
//!   `compute_pool` (one pool shared by the models, parked when idle),
//!   `always_on` (declared models, reconcile, on-demand loading), `host_memory` (one resident
//!   copy, memory returned);
//! - front ends: `http_api` (the OpenAI-compatible API with curl and the openai client);
//! - models: `inference` (Gemma 3 270M end to end), `inspect`, `kv_cache`, `prefix_cache`, `model_matrix` and
//!   `split_plan` (plans), `split_outputs`, `split_refuse` and `split_resplit` (pipelines over
//!   several devices, with `split_util`), `moe_cpu_experts` (experts on the host);
//! - GPUs: `cuda_devices` and `gpu_identity` (on the fake CUDA driver), `health` (on the fake
//!   NVML).

mod always_on;
mod compute_pool;
mod cuda_devices;
mod daemon;
mod gpu_identity;
mod health;
mod host_memory;
mod hostile;
mod http_api;
mod inference;
mod inspect;
mod kv_cache;
mod model_failure;
mod model_file_changes;
mod model_matrix;
mod moe_cpu_experts;
mod packaging;
mod prefix_cache;
mod split_outputs;
mod split_plan;
mod split_refuse;
mod split_resplit;
mod split_util;
