//! The `llmctl` command line (clap derive). Public so packaging can generate shell completions
//! and the man page with `llmctl::cli::Cli::command()`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// llmctl: control and query the llmd daemon.
///
/// Exit status: 0 success, 1 the daemon reported an error, 2 usage error, 3 the daemon cannot
/// be reached.
#[derive(Debug, Parser)]
#[command(name = "llmctl", version, about, long_about)]
pub struct Cli {
    /// Socket of the daemon [default: $RUNTIME_DIRECTORY/llmd.sock, $XDG_RUNTIME_DIR/llmd/llmd.sock
    /// or /run/llmd/llmd.sock, the first that exists].
    #[arg(long, global = true, value_name = "PATH", env = "LLMD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Print machine-readable output: one JSON object per line, with stable field names.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's state: version, uptime, pid, socket, devices, resident models.
    Status(StatusArgs),
    /// Show the versions of llmctl, of the daemon and of their protocol.
    Version(VersionArgs),
}

/// Arguments of `llmctl status` (none yet).
#[derive(Debug, Clone, Default, Args)]
pub struct StatusArgs {}

/// Arguments of `llmctl version` (none yet).
#[derive(Debug, Clone, Default, Args)]
pub struct VersionArgs {}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = Cli::try_parse_from(["llmctl", "status", "--json", "--socket", "/s"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket.as_deref(), Some(std::path::Path::new("/s")));
        let err = Cli::try_parse_from(["llmctl", "frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
