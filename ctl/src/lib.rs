//! llmctl: the command-line client of llmd. The binary is a thin wrapper around this library so
//! that packaging can generate completions and man pages from the same clap definitions
//! ([`cli::Cli`]).
//!
//! Layout: [`cli`] (clap definitions), [`client`] (blocking connection: handshake, one request at
//! a time, events then a final reply), [`commands`] (one file per command, each printing human
//! or `--json` output), [`output`] (printing helpers), [`error`] (errors and exit codes).
//!
//! Exit codes: 0 success, 1 the daemon reported an error (or speaks another protocol), 2 usage
//! error, 3 the daemon cannot be reached. `llmctl doctor` exits with its verdict instead when it
//! got a report: 0 all OK, 1 any WARN, 2 any FAIL.

pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod output;

use std::process::ExitCode;

pub use error::CtlError;

/// Runs one parsed command line and returns the process exit code. Errors are printed to
/// stderr as `llmctl: error: <message>` (plus a hint when there is one) and, under `--json`,
/// also as a JSON object `{"error": {"code": ..., "message": ...}}` on stdout.
pub fn run(cli: cli::Cli) -> ExitCode {
    let ctx = commands::Ctx::new(&cli);
    match commands::run(cli.command, &ctx) {
        Ok(code) => ExitCode::from(code),
        Err(CtlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            if ctx.out.json {
                let _ = ctx.out.json_line(&e.to_json());
            }
            eprintln!("llmctl: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
