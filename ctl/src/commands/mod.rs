//! One file per command; [`run`] is the one `match` that hands each to its file.
//! Each command prints human-readable text, or with `--json` one JSON object per line.

mod bench;
mod chat;
mod doctor;
mod generate;
mod inspect;
mod list;
mod load;
mod metrics;
mod plan;
mod reload;
mod status;
mod tokenize;
mod unload;
mod version;

use std::path::PathBuf;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::output::Output;
use crate::CtlError;

/// What every command needs besides its arguments.
pub struct Ctx {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// How to print.
    pub out: Output,
}

impl Ctx {
    /// The context described by the global options of `cli`.
    pub fn new(cli: &Cli) -> Ctx {
        Ctx {
            socket: cli
                .socket
                .clone()
                .unwrap_or_else(llmd_shared::socket::client_default),
            out: Output { json: cli.json },
        }
    }

    /// Connects to the daemon and performs the handshake.
    pub fn connect(&self) -> Result<Client, CtlError> {
        Client::connect(&self.socket)
    }
}

/// Runs `command`; returns the exit code (0, or `doctor`'s verdict code).
pub fn run(command: Command, ctx: &Ctx) -> Result<u8, CtlError> {
    let done = match command {
        Command::Status(args) => status::run(args, ctx),
        Command::Version(args) => version::run(args, ctx),
        Command::Load(args) => load::run(args, ctx),
        Command::Unload(args) => unload::run(args, ctx),
        Command::List(args) => list::run(args, ctx),
        Command::Generate(args) => generate::run(args, ctx),
        Command::Chat(args) => chat::run(args, ctx),
        Command::Tokenize(args) => tokenize::run(args, ctx),
        Command::Bench(args) => bench::run(args, ctx),
        Command::Inspect(args) => inspect::run(args, ctx),
        Command::Plan(args) => plan::run(args, ctx),
        Command::Reload(args) => reload::run(args, ctx),
        Command::Doctor(args) => return doctor::run(args, ctx),
        Command::Metrics(args) => metrics::run(args, ctx),
    };
    done.map(|()| 0)
}

/// A table of a model's stages: device, layers, bytes.
fn placement_table(stages: &[llmd_shared::StagePlacement]) -> String {
    use crate::output::human_bytes;
    let mut out = String::new();
    for s in stages {
        let layers = if s.layer_start < s.layer_end {
            format!("layers {:>3}..{:<3}", s.layer_start, s.layer_end)
        } else {
            "no layers      ".to_string()
        };
        out.push_str(&format!(
            "  {:<8} {} {:<7} weights {:>10}  kv {:>10}\n",
            s.device,
            layers,
            if s.output { "+output" } else { "" },
            human_bytes(s.weight_bytes),
            human_bytes(s.kv_bytes)
        ));
        if let Some(d) = &s.expert_device {
            out.push_str(&format!(
                "  {:<8} experts of layers {}..{}: weights {:>10}\n",
                d,
                s.expert_layers.0,
                s.expert_layers.1,
                human_bytes(s.expert_bytes)
            ));
        }
    }
    out
}

/// Error for a reply whose variant does not match the request.
fn unexpected(request: &str) -> CtlError {
    CtlError::Protocol(format!(
        "llmd answered `{request}` with a reply of another kind"
    ))
}
