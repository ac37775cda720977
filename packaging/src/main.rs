//! Generates shell completions (bash, zsh, fish) and man pages from the clap definitions of
//! `llmctl` and `llmd`, for the .deb package and for `scripts/check-units`.
//!
//! Usage: `cargo run -p llmd-packaging -- OUTDIR`. Writes:
//! - `OUTDIR/completions/bash/{llmctl,llmd}`
//! - `OUTDIR/completions/zsh/_{llmctl,llmd}`
//! - `OUTDIR/completions/fish/{llmctl,llmd}.fish`
//! - `OUTDIR/man/man1/llmctl.1` and one `llmctl-<command>.1` per subcommand
//! - `OUTDIR/man/man8/llmd.8` (a daemon: section 8)

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// One program whose clap definition is turned into completions and man pages.
struct Program {
    /// The binary name users type (and the completion/man page file name).
    name: &'static str,
    /// The man page section: 1 for user commands, 8 for daemons.
    section: &'static str,
    /// Builds the clap command; subcommands get their own man pages.
    command: fn() -> clap::Command,
}

/// Every program the package ships.
const PROGRAMS: &[Program] = &[
    Program {
        name: "llmctl",
        section: "1",
        command: llmctl::cli::Cli::command,
    },
    Program {
        name: "llmd",
        section: "8",
        command: llmd::cli::Cli::command,
    },
];

/// The shells completions are generated for, with the directory name used under `completions/`.
const SHELLS: &[(Shell, &str)] = &[
    (Shell::Bash, "bash"),
    (Shell::Zsh, "zsh"),
    (Shell::Fish, "fish"),
];

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), None) = (args.next(), args.next()) else {
        bail!("usage: llmd-packaging OUTDIR");
    };
    let written = generate(Path::new(&out_dir))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes completions and man pages for every program under `out_dir`; returns the files written.
fn generate(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for program in PROGRAMS {
        for (shell, dir_name) in SHELLS {
            let dir = out_dir.join("completions").join(dir_name);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(completion_file_name(*shell, program.name));
            let mut file =
                fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            let mut cmd = (program.command)();
            clap_complete::generate(*shell, &mut cmd, program.name, &mut file);
            file.flush()
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
        let dir = out_dir.join("man").join(format!("man{}", program.section));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        written.extend(write_man_pages(program, &dir)?);
    }
    Ok(written)
}

/// The file name each shell's completion loader looks for: bash-completion loads
/// `completions/<command>` on demand, zsh `_<command>` from $fpath, fish `<command>.fish`.
fn completion_file_name(shell: Shell, name: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{name}"),
        Shell::Fish => format!("{name}.fish"),
        _ => name.to_owned(),
    }
}

/// Writes the man page of `program` and, for each visible subcommand, a page named
/// `<program>-<subcommand>.<section>` (the convention of git and cargo).
fn write_man_pages(program: &Program, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = (program.command)()
        .name(program.name)
        .disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone()).section(program.section);
    written.push(
        man.generate_to(dir)
            .with_context(|| format!("writing the man page of {}", program.name))?,
    );
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page_name = format!("{}-{}", program.name, sub.get_name());
        let sub = sub.clone().display_name(page_name.clone());
        let man = clap_mangen::Man::new(sub).section(program.section);
        written.push(
            man.generate_to(dir)
                .with_context(|| format!("writing the man page {page_name}"))?,
        );
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_completions_and_man_pages_for_every_program() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = generate(dir.path()).expect("generate");
        for name in ["llmctl", "llmd"] {
            let bash =
                fs::read_to_string(dir.path().join("completions/bash").join(name)).expect("bash");
            assert!(
                bash.contains(&format!("_{name}")),
                "bash completion of {name}"
            );
            let zsh =
                fs::read_to_string(dir.path().join("completions/zsh").join(format!("_{name}")))
                    .expect("zsh");
            assert!(
                zsh.starts_with(&format!("#compdef {name}")),
                "zsh completion of {name}"
            );
            let fish = fs::read_to_string(
                dir.path()
                    .join("completions/fish")
                    .join(format!("{name}.fish")),
            )
            .expect("fish");
            assert!(
                fish.contains(&format!("complete -c {name}")),
                "fish completion of {name}"
            );
        }
        let llmctl = fs::read_to_string(dir.path().join("man/man1/llmctl.1")).expect("llmctl.1");
        assert!(llmctl.contains(".TH llmctl 1"), "{llmctl}");
        let status = fs::read_to_string(dir.path().join("man/man1/llmctl-status.1"))
            .expect("llmctl-status.1");
        assert!(status.contains(".TH llmctl-status 1"), "{status}");
        let llmd = fs::read_to_string(dir.path().join("man/man8/llmd.8")).expect("llmd.8");
        assert!(llmd.contains(".TH llmd 8"), "{llmd}");
        assert!(llmd.contains("config"), "llmd.8 documents --config");
        assert!(written.iter().all(|p| p.starts_with(dir.path())));
    }
}
