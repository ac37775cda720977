//! llmd: the daemon that keeps language models resident across devices.
//!
//! Layout (see docs/ARCHITECTURE.md):
//! The GGUF format (`llmd-gguf`), the tokenizers and chat templates (`llmd-tokenizer`), the
//! quant block formats (`llmd-quant`) and the compute kernels (`llmd-kernels`) are crates of
//! their own; this crate is the daemon around them.
//! - [`cli`]: the `llmd` command line; [`config`]: the TOML configuration file; [`logging`]:
//!   tracing to journald or stderr; [`notify`]: sd_notify; [`shutdown`]: stop signalling.
//! - [`state`]: the shared daemon state (config, devices, model registry, counters).
//! - [`server`]: socket, accept loop, connections, one handler file per request; [`users`]:
//!   user and group lookups for the socket group and the `[access]` section.

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
