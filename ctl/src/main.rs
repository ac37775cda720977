//! The `llmctl` binary: parses the command line (usage errors exit 2) and runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    llmctl::run(llmctl::cli::Cli::parse())
}
