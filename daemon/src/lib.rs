//! llmd: the daemon that keeps language models resident across devices. The GGUF format
//! (`llmd-gguf`), the tokenizers and chat templates (`llmd-tokenizer`), the quant block formats
//! (`llmd-quant`) and the compute kernels (`llmd-kernels`) are crates of their own; this crate
//! is the daemon around them (see docs/ARCHITECTURE.md).
//!
//! From the sockets down:
//! - [`server`]: socket, accept loop, admission, connections, one handler file per request and
//!   the wire conversions; [`users`]: user and group lookups for the socket group and the
//!   `[access]` section.
//! - [`http`]: the OpenAI-compatible HTTP API (the `[http]` section), on the same runtime.
//! - [`state`]: the shared daemon state (config, the runtime, telemetry, counters).
//! - [`runtime`]: the domain layer every front end calls (resident models, loads, re-splits,
//!   generations, prompt preparation off the async runtime, the declared models with their
//!   reconciler, on-demand loading and keep-alive); it never speaks a wire protocol.
//! - [`engine`]: each model's worker thread (scheduler, sequences, sampling, text).
//! - [`model`]: transformer models: config per architecture, weights per device, the forward
//!   pass of a stage (with its mixture-of-experts block), the multi-device pipeline, placement
//!   and split plans.
//! - [`devices`]: configured and probed devices with their memory budgets; [`host_memory`]: the
//!   daemon's resident memory and the allocator policy that returns freed memory to the system.
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
pub mod host_memory;
pub mod http;
pub mod inspect;
pub mod logging;
pub mod make_model;
pub mod model;
pub mod notify;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod users;
