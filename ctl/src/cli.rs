//! The `llmctl` command line (clap derive). Public so packaging can generate shell completions
//! and the man page with `llmctl::cli::Cli::command()`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use llmd_shared::KvCacheType;

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
    /// Load a GGUF model and keep it resident (returns once it is).
    Load(LoadArgs),
    /// Free a resident model (generations running on it finish first).
    Unload(UnloadArgs),
    /// List resident models with their layers and bytes per device.
    List(ListArgs),
    /// Generate text from a prompt, streaming it.
    Generate(GenerateArgs),
    /// Chat with a model interactively (one user turn per line; empty line ends).
    Chat(ChatArgs),
    /// Show the token ids (and pieces) of a text.
    Tokenize(TokenizeArgs),
    /// Measure prompt processing (pp) and generation (tg) speed, as llama-bench.
    Bench(BenchArgs),
    /// Describe a GGUF file from its header (works on partial downloads).
    Inspect(InspectArgs),
    /// Show where a model's layers would go and the memory each device needs, without loading
    /// it (only the file's header is read). Exits 1 when it does not fit.
    Plan(PlanArgs),
    /// Change a loaded model's split (and context) live; running generations continue.
    Reload(ReloadArgs),
    /// Check the box's health (NVML, PCIe links, PSU budget, splits, NVLink, P2P, thermals),
    /// each OK / WARN / FAIL with how to fix it. Exits 0 when all OK, 1 on any WARN, 2 on any
    /// FAIL (3 when the daemon cannot be reached).
    Doctor(DoctorArgs),
    /// Print GPU telemetry, the power budget and the request metrics (requests, tokens,
    /// latencies, queues) in the Prometheus text format, as the HTTP API's /metrics does.
    Metrics(MetricsArgs),
}

/// Arguments of `llmctl plan`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The GGUF file (a partly downloaded one is fine: only its header is read).
    pub file: PathBuf,
    /// Devices, comma-separated (e.g. cpu:0,cpu:1) [default: the first device].
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// Split weights per device, comma-separated, as llama.cpp's --tensor-split (e.g. 3,1)
    /// [default: proportional to each device's free memory].
    #[arg(long, value_name = "WEIGHTS")]
    pub split: Option<String>,
    /// Layers on GPU devices, the rest on the CPU device, as llama.cpp's -ngl [default: all].
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<u32>,
    /// Context length per generation [default: 4096, at most the model's].
    #[arg(long)]
    pub ctx: Option<u32>,
    /// KV cache types to plan for.
    #[command(flatten)]
    pub cache: CacheTypeArgs,
    /// Where a mixture of experts' experts go.
    #[command(flatten)]
    pub experts: ExpertArgs,
}

/// Expert placement of `load` and `plan`, as llama.cpp's `--cpu-moe` / `--n-cpu-moe N`.
#[derive(Debug, Clone, Default, Args)]
pub struct ExpertArgs {
    /// Keep every layer's experts (router and ffn_*_exps) in host memory on the CPU device,
    /// attention and the rest on the chosen devices.
    #[arg(long, conflicts_with = "n_cpu_moe")]
    pub cpu_moe: bool,
    /// Keep the experts of the first N layers on the CPU device.
    #[arg(long, value_name = "N")]
    pub n_cpu_moe: Option<u32>,
}

impl ExpertArgs {
    /// The request's `n_cpu_moe`: every layer for `--cpu-moe`.
    pub fn n_cpu_moe(&self) -> Option<u32> {
        if self.cpu_moe {
            Some(u32::MAX)
        } else {
            self.n_cpu_moe
        }
    }
}

/// The KV cache types of `load` and `plan`, as llama.cpp's `-ctk` / `-ctv`.
#[derive(Debug, Clone, Default, Args)]
pub struct CacheTypeArgs {
    /// Type of the KV cache's keys: f16, q8_0 (about half the bytes) or q4_0 (about a quarter)
    /// [default: f16].
    #[arg(long, visible_alias = "ctk", value_name = "TYPE", value_parser = clap::value_parser!(KvCacheType))]
    pub cache_type_k: Option<KvCacheType>,
    /// Type of the KV cache's values: f16, q8_0 or q4_0 [default: f16].
    #[arg(long, visible_alias = "ctv", value_name = "TYPE", value_parser = clap::value_parser!(KvCacheType))]
    pub cache_type_v: Option<KvCacheType>,
}

/// Arguments of `llmctl reload`.
#[derive(Debug, Clone, Args)]
pub struct ReloadArgs {
    /// The model's name.
    pub name: String,
    /// Split weights per device, comma-separated (e.g. 3,1) [default: with --devices,
    /// proportional to each device's free memory; without, the current split].
    #[arg(long, value_name = "WEIGHTS")]
    pub split: Option<String>,
    /// Devices, comma-separated [default: those the model is on].
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// Context length for generations started from now on [default: unchanged].
    #[arg(long)]
    pub ctx: Option<u32>,
    /// Where a mixture of experts' experts go from now on (`--n-cpu-moe 0`: back to their
    /// layers' devices) [default: unchanged].
    #[command(flatten)]
    pub experts: ExpertArgs,
}

/// Arguments of `llmctl load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The GGUF file (the daemon must be able to read it).
    pub file: PathBuf,
    /// Name to load it under [default: the file name without .gguf].
    #[arg(long)]
    pub name: Option<String>,
    /// Context length per generation [default: 4096, at most the model's].
    #[arg(long)]
    pub ctx: Option<u32>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<u32>,
    /// Devices to place it on, comma-separated (e.g. cpu:0,cpu:1) [default: every usable GPU,
    /// else the first device].
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// Split weights per device, comma-separated, as llama.cpp's --tensor-split (e.g. 3,1)
    /// [default: proportional to each device's memory].
    #[arg(long, value_name = "WEIGHTS")]
    pub split: Option<String>,
    /// Layers on GPU devices, the rest on the CPU device, as llama.cpp's -ngl [default: all].
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<u32>,
    /// Replace a model already loaded under this name; running requests finish on the old one.
    #[arg(long)]
    pub replace: bool,
    /// KV cache types (kept by later re-splits).
    #[command(flatten)]
    pub cache: CacheTypeArgs,
    /// Where a mixture of experts' experts go.
    #[command(flatten)]
    pub experts: ExpertArgs,
}

/// Arguments of `llmctl unload`.
#[derive(Debug, Clone, Args)]
pub struct UnloadArgs {
    /// The model's name.
    pub name: String,
}

/// Arguments of `llmctl list` (none).
#[derive(Debug, Clone, Default, Args)]
pub struct ListArgs {}

/// Sampling options shared by `generate` and `chat`.
#[derive(Debug, Clone, Default, Args)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy [default: 0.8].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k; 0 disables [default: 40].
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Top-p; 1 disables [default: 0.95].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Min-p; 0 disables [default: 0.05].
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Repetition penalty over the last 64 tokens; 1 disables [default: 1].
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Presence penalty over the last 64 tokens; 0 disables [default: 0].
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty over the last 64 tokens, once per occurrence; 0 disables [default: 0].
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Seed of the random draw, for reproducible runs [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Arguments of `llmctl generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The model's name.
    pub name: String,
    /// The prompt (or give --prompt-file).
    #[arg(required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from FILE (UTF-8, at most 16 MiB); `-` reads standard input. For prompts
    /// too long for a shell argument.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: u32,
    /// Use the prompt as is (tokenized as llama.cpp's completion tool does), not through the
    /// chat template.
    #[arg(long)]
    pub raw: bool,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Arguments of `llmctl chat`.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// The model's name.
    pub name: String,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens per reply at most.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: u32,
    /// Sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Arguments of `llmctl tokenize`.
#[derive(Debug, Clone, Args)]
pub struct TokenizeArgs {
    /// The model's name.
    pub name: String,
    /// The text.
    pub text: String,
    /// Do not add BOS/EOS.
    #[arg(long)]
    pub no_special: bool,
    /// Treat special-token text (e.g. <start_of_turn>) as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
}

/// Arguments of `llmctl inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The GGUF file (the daemon must be able to read it).
    pub file: PathBuf,
}

/// Arguments of `llmctl bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The model's name.
    pub name: String,
    /// Prompt tokens (pp test); 0 skips it.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub n_prompt: u32,
    /// Generated tokens (tg test, decoding after the prompt of -p tokens); 0 skips it.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: u32,
    /// Repetitions (the mean is reported).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub repetitions: u32,
}

/// Arguments of `llmctl status`.
#[derive(Debug, Clone, Default, Args)]
pub struct StatusArgs {
    /// Refresh in place every SECONDS until interrupted (with --json: one line per refresh).
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub watch: Option<u64>,
}

/// Arguments of `llmctl doctor` (none).
#[derive(Debug, Clone, Default, Args)]
pub struct DoctorArgs {}

/// Arguments of `llmctl metrics` (none).
#[derive(Debug, Clone, Default, Args)]
pub struct MetricsArgs {}

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

    #[test]
    fn cache_types_are_parsed_and_bad_ones_refused_with_the_valid_list() {
        let load = |args: &[&str]| match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Command::Load(load)) => Ok((load.cache.cache_type_k, load.cache.cache_type_v)),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(load(&["llmctl", "load", "m.gguf"]).unwrap(), (None, None));
        assert_eq!(
            load(&[
                "llmctl",
                "load",
                "m.gguf",
                "--cache-type-k",
                "q8_0",
                "--ctv",
                "q4_0"
            ])
            .unwrap(),
            (Some(KvCacheType::Q8_0), Some(KvCacheType::Q4_0))
        );
        let e = load(&["llmctl", "load", "m.gguf", "--cache-type-v", "q5_1"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("valid: f16, q8_0, q4_0"), "{e}");
        let plan = Cli::try_parse_from(["llmctl", "plan", "m.gguf", "--cache-type-k", "q4_0"])
            .map(|cli| cli.command);
        assert!(
            matches!(plan, Ok(Command::Plan(p)) if p.cache.cache_type_k == Some(KvCacheType::Q4_0)),
        );
    }

    #[test]
    fn generate_takes_a_prompt_or_a_prompt_file_not_both() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Command::Generate(g)) => Ok((g.prompt, g.prompt_file)),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.exit_code()),
        };
        assert_eq!(
            parse(&["llmctl", "generate", "m", "hi"]),
            Ok((Some("hi".into()), None))
        );
        assert_eq!(
            parse(&["llmctl", "generate", "m", "--prompt-file", "-"]),
            Ok((None, Some(PathBuf::from("-"))))
        );
        assert_eq!(parse(&["llmctl", "generate", "m"]), Err(2));
        assert_eq!(
            parse(&["llmctl", "generate", "m", "hi", "--prompt-file", "p.txt"]),
            Err(2)
        );
    }

    #[test]
    fn status_watch_defaults_to_two_seconds() {
        let watch = |args: &[&str]| match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Command::Status(status)) => Ok(status.watch),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.exit_code()),
        };
        assert_eq!(watch(&["llmctl", "status"]), Ok(None));
        assert_eq!(watch(&["llmctl", "status", "--watch"]), Ok(Some(2)));
        assert_eq!(watch(&["llmctl", "status", "--watch", "5"]), Ok(Some(5)));
        assert_eq!(
            watch(&["llmctl", "status", "--watch", "--json"]),
            Ok(Some(2))
        );
        assert_eq!(watch(&["llmctl", "status", "--watch", "0"]), Err(2));
    }
}
