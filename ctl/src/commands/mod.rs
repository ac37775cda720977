//! One file per command; [`run`] is the one `match` that hands each to its file.
//! Each command prints human-readable text, or with `--json` one JSON object per line.

mod status;
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

/// Runs `command`.
pub fn run(command: Command, ctx: &Ctx) -> Result<(), CtlError> {
    match command {
        Command::Status(args) => status::run(args, ctx),
        Command::Version(args) => version::run(args, ctx),
    }
}

/// Error for a reply whose variant does not match the request.
fn unexpected(request: &str) -> CtlError {
    CtlError::Protocol(format!(
        "llmd answered `{request}` with a reply of another kind"
    ))
}
