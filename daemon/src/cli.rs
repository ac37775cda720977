//! Command line of the `llmd` binary (public so packaging can generate a man page from it).
//!
//! `llmd [--socket P] [--config P]` runs the daemon; `llmd serve ...` is the same, spelled out.
//! Offline tools are further subcommands (`llmd make-model`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// llmd: keeps language models resident on CPU/GPU devices and serves llmctl over a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "llmd", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Options of the daemon when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// What to do; the daemon when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Serve(ServeArgs),
    /// Write a GGUF model with random weights (for tests, demos and benchmarks; offline, no
    /// daemon involved).
    MakeModel(crate::make_model::MakeModelArgs),
}

/// Options of the daemon.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Unix socket to listen on [default: `socket` from the config, else
    /// $RUNTIME_DIRECTORY/llmd.sock, else $XDG_RUNTIME_DIR/llmd/llmd.sock, else
    /// /run/llmd/llmd.sock]. Ignored under socket activation.
    #[arg(long, value_name = "PATH", env = "LLMD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Configuration file [default: /etc/llmd/llmd.toml, used only if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default() {
        let cli = Cli::try_parse_from(["llmd", "--socket", "/tmp/s"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            cli.serve.socket.as_deref(),
            Some(std::path::Path::new("/tmp/s"))
        );
        let cli = Cli::try_parse_from(["llmd", "serve", "--config", "/c.toml"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(_))));
    }
}
