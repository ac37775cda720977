//! The `llmd` binary: command-line parsing and start-up; everything else lives in the library.
//! Exit status: 0 after a graceful shutdown, 1 on any error (printed as `llmd: error: ...`),
//! 2 on a usage error.

use std::process::ExitCode;

use clap::Parser;
use llmd::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        None => llmd::server::serve(cli.serve).map_err(Into::into),
        Some(Command::Serve(args)) => llmd::server::serve(args).map_err(Into::into),
        Some(Command::MakeModel(args)) => llmd::make_model::run(args).map(drop).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
