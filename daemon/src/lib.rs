//! llmd: the daemon that keeps language models resident across devices. The GGUF format
//! (`llmd-gguf`), the tokenizers and chat templates (`llmd-tokenizer`), the quant block formats
//! (`llmd-quant`) and the compute kernels (`llmd-kernels`) are crates of their own; this crate
//! is the daemon around them (see docs/ARCHITECTURE.md).
//!
//! From the socket down:
//! - [`server`]: socket, accept loop, admission, connections, one handler file per request;
//!   [`users`]: user and group lookups for the socket group and the `[access]` section.
//! - [`state`]: the shared daemon state (config, devices, model registry, counters).
//! - [`models`]: resident models: loading one onto devices, its handle, live re-splits.
//! - [`engine`]: each model's worker thread (scheduler, sequences, sampling, text) and prompt
//!   preparation off the runtime.
//! - [`model`]: transformer models: config per architecture, weights per device, the forward
//!   pass of a stage, the multi-device pipeline, placement and split plans.
//! - [`devices`]: configured and probed devices with their memory budgets.
//! - [`gpu`]: NVML telemetry, sampled in the background; [`health`]: power budget, `doctor`
//!   checks and metrics over it.
//! - [`inspect`]: what `llmctl inspect` reports about a GGUF file; [`make_model`]: the
//!   `llmd make-model` command line.
//! - [`cli`]: the `llmd` command line; [`config`]: the TOML configuration file; [`logging`]:
//!   tracing to journald or stderr; [`notify`]: sd_notify; [`shutdown`]: stop signalling.

pub mod cli;
pub mod config;
pub mod devices;
pub mod engine;
pub mod gpu;
pub mod health;
pub mod inspect;
pub mod logging;
pub mod make_model;
pub mod model;
pub mod models;
pub mod notify;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod users;
