//! llmd: the daemon that keeps language models resident across devices.
//!
//! Layout (see docs/ARCHITECTURE.md):
//! - [`gguf`]: reading and writing GGUF model files.
//! - [`tokenizer`]: SentencePiece and byte-level BPE tokenizers, detokenization, chat templates.
//! - [`cli`]: the `llmd` command line; [`config`]: the TOML configuration file; [`logging`]:
//!   tracing to journald or stderr; [`notify`]: sd_notify; [`shutdown`]: stop signalling.
//! - [`host_memory`]: the daemon's resident memory and the allocator policy that returns freed
//!   memory to the system.
//! - [`runtime`]: the domain layer (resident models, loads, re-splits, generations) that every
//!   front end calls; it never speaks a wire protocol.
//! - [`state`]: the shared daemon state (config, devices, the runtime, counters).
//! - [`server`]: socket, accept loop, connections, one handler file per request; [`users`]:
//!   user and group lookups for the socket group and the `[access]` section.
//! - [`http`]: the OpenAI-compatible HTTP API (the `[http]` section), on the same runtime.

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
pub mod tokenizer;
pub mod users;
