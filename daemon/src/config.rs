//! The daemon's configuration file: TOML, read at start and again on SIGHUP.
//!
//! Every key is optional; a missing default file means "all defaults". Unknown keys, wrong types
//! and invalid values are errors that name the file, the line, the key and the reason. A complete
//! example (the packaged `/etc/llmd/llmd.toml` documents each key):
//!
//! ```toml
//! socket = "/run/llmd/llmd.sock"   # overridden by --socket and LLMD_SOCKET
//! socket_group = "llmd"            # group owning the socket (mode 0660)
//! log_level = "info"               # or a tracing filter such as "llmd=debug,info"; RUST_LOG wins
//!
//! [[devices]]
//! id = "cpu:0"                     # <kind>:<index>; kinds: cpu, cuda
//! memory_budget = "16GiB"          # bytes (integer) or a string with B/KiB/MiB/GiB/TiB/KB/MB/GB/TB
//!
//! [[devices]]
//! id = "cuda:0"                    # a GPU by CUDA ordinal; budget default: free memory less a
//!                                  # margin (1 GiB + 2% of the card) for the CUDA context and
//!                                  # activation buffers
//!
//! [[devices]]                      # more CPU devices (cpu:1, cpu:2, ...) are separate devices
//! id = "cpu:1"                     # with their own budget, weights and KV caches, standing in
//! memory_budget = "8GiB"           # for GPUs: a model split over them runs as a pipeline
//!
//! [gpu]
//! nvml_library = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"   # else $LLMD_NVML_LIB
//! sample_interval_ms = 2000        # telemetry sampling period
//!
//! [power]
//! psu_watts = 1200                 # the PSU's rating; unset: the budget is not judged
//! system_watts = 150               # CPU, board, drives, fans
//! transient_factor = 1.3           # multiplier on GPU power limits for millisecond spikes
//!
//! [access]                         # absent: every socket user may manage models
//! manage_users = ["alice", 1001]   # may load, unload, replace, re-split, inspect, plan
//! manage_groups = ["llmd-admin"]   # (root and the daemon's own user always may)
//!
//! models_dir = "/var/lib/llmd/models"   # (top level) relative [[models]] paths start here
//! prefix_cache_mib = 256           # (top level) KV of finished generations kept per model for
//!                                  # prompts sharing their prefix; 0: off ([[models]] may override)
//!
//! [[models]]                       # declared models: see `config::models`
//! name = "gemma"
//! path = "gemma-3-270m-Q4_K_M.gguf"
//! load = "on_demand"               # or "start" (the default)
//! keep_alive = "10m"
//! ```

pub mod http;
pub mod models;

use std::fmt;
use std::path::{Path, PathBuf};

use llmd_shared::DeviceKind;
use serde::de::{self, Deserializer};
use serde::Deserialize;

pub use http::{HttpConfig, HttpConfigError};
pub use models::{KeepAlive, LoadPolicy, ModelDecl, DEFAULT_MODELS_DIR};

/// Where the daemon looks for its configuration when `--config` is not given. Optional: when the
/// file does not exist, built-in defaults apply.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/llmd/llmd.toml";

/// Share of physical memory given to the default CPU device when no `[[devices]]` are configured:
/// three quarters, leaving the rest to the OS and other processes.
const DEFAULT_CPU_BUDGET_NUMERATOR: u64 = 3;
const DEFAULT_CPU_BUDGET_DENOMINATOR: u64 = 4;

/// The prefix cache's budget per model when neither the config nor its `[[models]]` entry sets
/// one: 256 MiB holds a few thousand positions of a 7B model's f16 KV (56 KiB each), enough
/// for a long shared system prompt and some conversations.
pub const DEFAULT_PREFIX_CACHE_MIB: u64 = 256;

/// The largest prefix cache budget accepted, 1 TiB: past any device's memory, and far from
/// overflowing a byte count.
pub const MAX_PREFIX_CACHE_MIB: u64 = 1 << 20;

/// Contents of the configuration file. All keys are optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of the Unix socket to listen on. Lower priority than `--socket` and `LLMD_SOCKET`;
    /// when absent the runtime-directory default applies (see `llmd_shared::socket`). Ignored
    /// under socket activation (systemd owns the socket then). Changes take effect on restart.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Name (or numeric id) of the group that owns the socket file; members of the group may use
    /// the daemon (the socket is mode 0660). Absent: the daemon's primary group. Changes take
    /// effect on restart.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Log level or tracing filter directive ("error", "warn", "info", "debug", "trace", or e.g.
    /// "llmd=debug,info"). `RUST_LOG`, when set, takes precedence. Absent: "info". Applied again
    /// on reload.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Devices models may be placed on, each with a memory budget. Absent or empty: every GPU
    /// the CUDA driver reports (`cuda:0`, `cuda:1`, ...) and one CPU device `cpu:0` with three
    /// quarters of physical memory. Applied again on reload.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// GPU telemetry: which NVML library to load and how often to sample (`[gpu]`). Changes
    /// take effect on restart.
    #[serde(default)]
    pub gpu: crate::gpu::GpuConfig,
    /// The PSU power budget (`[power]`): rating, system estimate, transient factor. Applied
    /// again on reload.
    #[serde(default)]
    pub power: crate::health::power::PowerConfig,
    /// Who may manage models (`[access]`). Absent: every user who can open the socket may (the
    /// daemon logs so at start). Applied again on reload.
    #[serde(default)]
    pub access: Option<AccessConfig>,
    /// The OpenAI-compatible HTTP API (`[http]`: addresses, API key, limits). Absent: off.
    /// Changes take effect on restart.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// The directory relative `[[models]]` paths are relative to. Absent:
    /// [`DEFAULT_MODELS_DIR`]. Applied again on reload.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// MiB of KV cache each model's finished generations may keep for later prompts sharing
    /// their prefix (charged to the devices' ledgers; evicted least recently used first, and
    /// before a request is refused for lack of KV memory); 0 turns the prefix cache off.
    /// Absent: [`DEFAULT_PREFIX_CACHE_MIB`]. A `[[models]]` entry may set its own. Applies to
    /// models loaded afterwards.
    #[serde(default)]
    pub prefix_cache_mib: Option<u64>,
    /// Declared models (`[[models]]`): loaded at start or on their first request, reconciled on
    /// every reload (`runtime::reconcile`).
    #[serde(default)]
    pub models: Vec<ModelDecl>,
    /// Threads of the one compute pool every model's CPU work shares (a model's own `threads`
    /// is its share of these). Absent: one per core. Changes take effect on restart.
    #[serde(default)]
    pub threads: Option<u32>,
}

/// `[access]`: the users and groups who may manage models — load (and replace), unload,
/// reload / re-split, and inspect or plan files (which the daemon reads with its own rights).
/// Root and the daemon's own user always may; every other user who can open the socket may
/// generate, chat, tokenize, bench and read status, list, doctor, metrics and version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Users (names or uids) who may manage models.
    #[serde(default)]
    pub manage_users: Vec<Principal>,
    /// Groups (names or gids) whose members (primary or supplementary) may manage models.
    #[serde(default)]
    pub manage_groups: Vec<Principal>,
}

/// A user or group, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A numeric uid or gid.
    Id(u32),
    /// A name, looked up when needed (so renumbering needs no config change).
    Name(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Id(id) => write!(f, "{id}"),
            Principal::Name(name) => f.write_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Principal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user or group name, or a numeric id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Principal, E> {
                u32::try_from(v)
                    .map(Principal::Id)
                    .map_err(|_| E::custom(format!("id {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Principal, E> {
                u32::try_from(v)
                    .map(Principal::Id)
                    .map_err(|_| E::custom(format!("id {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Principal, E> {
                if v.is_empty() {
                    return Err(E::custom("a name must not be empty"));
                }
                Ok(match v.parse::<u32>() {
                    Ok(id) => Principal::Id(id),
                    Err(_) => Principal::Name(v.to_owned()),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[devices]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Which device: `<kind>:<index>` (`"cpu:0"`); a bare kind means index 0. Several CPU
    /// devices (`cpu:0`, `cpu:1`, ...) are separate devices, each with its own budget, that
    /// models can be split over as over GPUs (they share the host's memory and cores).
    pub id: DeviceId,
    /// Bytes of this device's memory that models and their caches may use. Absent: for the CPU,
    /// three quarters of physical memory; for a GPU, its free memory at start-up less a margin.
    #[serde(default)]
    pub memory_budget: Option<ByteSize>,
}

/// A device identifier, `<kind>:<index>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId {
    /// Device kind.
    pub kind: DeviceKindKey,
    /// Index among devices of that kind (CUDA ordinal; for CPU devices, which of the
    /// configured CPU devices).
    pub index: u32,
}

/// [`DeviceKind`] with an ordering, so device ids sort and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKindKey {
    /// The host CPU.
    Cpu,
    /// A CUDA GPU.
    Cuda,
}

impl From<DeviceKindKey> for DeviceKind {
    fn from(k: DeviceKindKey) -> Self {
        match k {
            DeviceKindKey::Cpu => DeviceKind::Cpu,
            DeviceKindKey::Cuda => DeviceKind::Cuda,
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", DeviceKind::from(self.kind), self.index)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (k, Some(i)),
            None => (s, None),
        };
        let kind = match kind {
            "cpu" => DeviceKindKey::Cpu,
            "cuda" => DeviceKindKey::Cuda,
            other => {
                return Err(format!(
                "unknown device kind `{other}` in `{s}`; expected `cpu:<index>` or `cuda:<index>`"
            ))
            }
        };
        let index = match index {
            None => 0,
            Some(i) => i
                .parse::<u32>()
                .map_err(|_| format!("invalid device index `{i}` in `{s}`"))?,
        };
        Ok(DeviceId { kind, index })
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A size in bytes, written in the file as an integer or as a string with a unit
/// ("512MiB", "16 GiB", "2GB"). Binary units are powers of 1024, decimal ones of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "tib" | "t" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                    "invalid size `{s}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
                ))
            }
        };
        let bytes = if num.contains('.') {
            let v: f64 = num
                .parse()
                .map_err(|_| format!("invalid size `{s}`: `{num}` is not a number"))?;
            let b = v * mult as f64;
            if !b.is_finite() || b < 0.0 || b >= u64::MAX as f64 {
                return Err(format!("invalid size `{s}`: out of range"));
            }
            b as u64
        } else {
            let v: u64 = num
                .parse()
                .map_err(|_| format!("invalid size `{s}`: `{num}` is not a number"))?;
            v.checked_mul(mult)
                .ok_or_else(|| format!("invalid size `{s}`: out of range"))?
        };
        Ok(ByteSize(bytes))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, or a string like \"16GiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A configuration problem, naming the file and, where known, the line, key and reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not match the expected keys and types.
    #[error("config file {}{}: {}{message}", path.display(), location(*line, *column), key_prefix(key))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem, if known.
        line: Option<usize>,
        /// 1-based column of the problem, if known.
        column: Option<usize>,
        /// The key involved, if known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("config file {}{}: key `{key}`: {reason}", path.display(), location(*line, None))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key, where it can be found in the text.
        line: Option<usize>,
        /// The key involved (dotted path, e.g. `devices[1].id`).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(", line {l}, column {c}"),
        (Some(l), None) => format!(", line {l}"),
        _ => String::new(),
    }
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default()
}

/// A configuration together with where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The parsed, validated configuration.
    pub config: Config,
    /// The file it was read from; `None` when the default file does not exist and built-in
    /// defaults apply.
    pub path: Option<PathBuf>,
}

/// Which file to read: an explicit `--config` path must exist; the default one may be missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Given with `--config`: a missing file is an error.
    Explicit(PathBuf),
    /// [`DEFAULT_CONFIG_PATH`] (or another default): a missing file means built-in defaults.
    Default(PathBuf),
}

impl ConfigSource {
    /// The source for an optional `--config` argument.
    pub fn from_arg(arg: Option<PathBuf>) -> Self {
        match arg {
            Some(p) => ConfigSource::Explicit(p),
            None => ConfigSource::Default(PathBuf::from(DEFAULT_CONFIG_PATH)),
        }
    }

    /// Reads and validates the configuration from this source.
    pub fn load(&self) -> Result<LoadedConfig, ConfigError> {
        match self {
            ConfigSource::Explicit(p) => Ok(LoadedConfig {
                config: load_file(p)?,
                path: Some(p.clone()),
            }),
            ConfigSource::Default(p) => match std::fs::read_to_string(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LoadedConfig::default()),
                Err(source) => Err(ConfigError::Read {
                    path: p.clone(),
                    source,
                }),
                Ok(text) => Ok(LoadedConfig {
                    config: parse(&text, p)?,
                    path: Some(p.clone()),
                }),
            },
        }
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates configuration text; `path` is only used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| parse_error(text, path, &e))?;
    config.validate(path).map_err(|e| match e {
        ConfigError::Invalid {
            path, key, reason, ..
        } => ConfigError::Invalid {
            line: line_of_key(text, &key),
            path,
            key,
            reason,
        },
        other => other,
    })?;
    Ok(config)
}

/// The line of a dotted key such as `models[2].split` or `power.psu_watts` in `text`: the key's
/// line inside the table (the `n`-th `[[models]]`, the `[power]` section, or the top level).
/// `None` when the text does not spell it plainly (inline tables, quoted keys).
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = match key.rsplit_once('.') {
        Some((t, l)) => (Some(t), l),
        None => (None, key),
    };
    let leaf = leaf.split('[').next()?;
    // (header text, which occurrence)
    let header = table.map(|t| match t.split_once('[') {
        Some((name, rest)) => (
            format!("[[{name}]]"),
            rest.trim_end_matches(']').parse::<usize>().unwrap_or(0),
        ),
        None => (format!("[{t}]"), 0),
    });
    let mut inside = header.is_none();
    let mut seen = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            inside = match &header {
                Some((h, want)) if line == h => {
                    seen += 1;
                    seen == want + 1
                }
                _ => false,
            };
            continue;
        }
        if inside {
            if let Some((k, _)) = line.split_once('=') {
                if k.trim().trim_matches('"') == leaf {
                    return Some(n + 1);
                }
            }
        }
    }
    None
}

fn parse_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let (mut line, mut column, mut key) = (None, None, None);
    if let Some(span) = e.span() {
        let start = span.start.min(text.len());
        let before = &text[..start];
        let line_no = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        line = Some(line_no);
        column = Some(text[line_start..start].chars().count() + 1);
        let line_text = text[line_start..].lines().next().unwrap_or("");
        if let Some((k, _)) = line_text.split_once('=') {
            let k = k.trim().trim_matches('"');
            if !k.is_empty() && !k.starts_with('[') {
                key = Some(k.to_string());
            }
        }
    }
    // "unknown field `x`, expected ..." names the key itself, wherever the span points.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((k, _)) = rest.split_once('`') {
            key = Some(k.to_string());
        }
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message,
    }
}

impl Config {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: None,
            key,
            reason,
        };
        if let Some(level) = &self.log_level {
            crate::logging::parse_filter(level)
                .map_err(|e| invalid("log_level".into(), e.to_string()))?;
        }
        if let Some(socket) = &self.socket {
            if socket.as_os_str().is_empty() {
                return Err(invalid("socket".into(), "must not be empty".into()));
            }
        }
        if let Some(group) = &self.socket_group {
            if group.is_empty() {
                return Err(invalid("socket_group".into(), "must not be empty".into()));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            if !seen.insert(d.id) {
                return Err(invalid(
                    format!("devices[{i}].id"),
                    format!("device `{}` is listed twice", d.id),
                ));
            }
            if d.memory_budget == Some(ByteSize(0)) {
                return Err(invalid(
                    format!("devices[{i}].memory_budget"),
                    "must be greater than zero".into(),
                ));
            }
        }
        if let Some(access) = &self.access {
            // Names must exist now, so a typo is an error at start or reload, not a refusal
            // later; they are looked up again at each check.
            for (i, user) in access.manage_users.iter().enumerate() {
                if let Principal::Name(name) = user {
                    crate::users::lookup_user(name).map_err(|e| {
                        invalid(
                            format!("access.manage_users[{i}]"),
                            format!("`{name}`: {e}"),
                        )
                    })?;
                }
            }
            for (i, group) in access.manage_groups.iter().enumerate() {
                if let Principal::Name(name) = group {
                    crate::users::lookup_group(name).map_err(|e| {
                        invalid(
                            format!("access.manage_groups[{i}]"),
                            format!("`{name}`: {e}"),
                        )
                    })?;
                }
            }
        }
        self.gpu
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.power.validate().map_err(|e| {
            let key = match e {
                crate::health::power::PowerConfigError::PsuWatts(_) => "power.psu_watts",
                crate::health::power::PowerConfigError::SystemWatts(_) => "power.system_watts",
                crate::health::power::PowerConfigError::TransientFactor(_) => {
                    "power.transient_factor"
                }
            };
            invalid(key.into(), e.to_string())
        })?;
        if let Some(dir) = &self.models_dir {
            if !dir.is_absolute() {
                return Err(invalid(
                    "models_dir".into(),
                    format!("{} must be an absolute path", dir.display()),
                ));
            }
        }
        if let Some(mib) = self.prefix_cache_mib {
            check_prefix_cache_mib(mib)
                .map_err(|reason| invalid("prefix_cache_mib".into(), reason))?;
        }
        if let Some(t) = self.threads {
            if t == 0 || t > models::MAX_THREADS {
                return Err(invalid(
                    "threads".into(),
                    format!("{t} is not between 1 and {}", models::MAX_THREADS),
                ));
            }
        }
        models::validate_all(&self.models).map_err(|(key, reason)| invalid(key, reason))?;
        Ok(())
    }

    /// The prefix cache budget in bytes of a model declared as `decl` (its own, else the
    /// daemon's, else [`DEFAULT_PREFIX_CACHE_MIB`]), or loaded by hand (`None`).
    pub fn prefix_cache_bytes(&self, decl: Option<&ModelDecl>) -> u64 {
        let mib = decl
            .and_then(|d| d.prefix_cache_mib)
            .or(self.prefix_cache_mib)
            .unwrap_or(DEFAULT_PREFIX_CACHE_MIB);
        mib.min(MAX_PREFIX_CACHE_MIB) << 20
    }

    /// Threads of the daemon's compute pool: `threads`, or one per core.
    pub fn compute_threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        )
    }

    /// The directory relative `[[models]]` paths are relative to.
    pub fn models_dir(&self) -> &Path {
        self.models_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_MODELS_DIR))
    }

    /// The declared model called `name`.
    pub fn declared(&self, name: &str) -> Option<&ModelDecl> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The configured devices with their budgets in bytes where given (`devices::from_config`
    /// adds the defaults: the devices when none are configured, and budgets not given).
    pub fn resolved_devices(&self) -> Vec<ResolvedDevice> {
        self.devices
            .iter()
            .map(|d| ResolvedDevice {
                id: d.id,
                memory_budget_bytes: d.memory_budget.map(|ByteSize(b)| b),
            })
            .collect()
    }
}

/// A configured device with its budget in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedDevice {
    /// Which device.
    pub id: DeviceId,
    /// Bytes models may use on it, if configured (else the device's default: for the CPU three
    /// quarters of physical memory, for a GPU its free memory less a margin).
    pub memory_budget_bytes: Option<u64>,
}

/// Three quarters of physical memory (`MemTotal` of /proc/meminfo); 0 if it cannot be read.
pub fn default_cpu_budget() -> u64 {
    physical_memory_bytes()
        .map(|total| total / DEFAULT_CPU_BUDGET_DENOMINATOR * DEFAULT_CPU_BUDGET_NUMERATOR)
        .unwrap_or(0)
}

fn physical_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Fails with the reason unless `mib` is a prefix cache budget the daemon accepts.
pub(crate) fn check_prefix_cache_mib(mib: u64) -> Result<(), String> {
    if mib > MAX_PREFIX_CACHE_MIB {
        return Err(format!(
            "{mib} MiB is more than the {MAX_PREFIX_CACHE_MIB} MiB allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/llmd/test.toml")
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
socket = "/tmp/x.sock"
socket_group = "llmd"
log_level = "debug"

[[devices]]
id = "cpu:0"
memory_budget = "16GiB"
"#,
            p(),
        )
        .unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        assert_eq!(c.devices[0].memory_budget, Some(ByteSize(16 << 30)));
        assert_eq!(c.resolved_devices()[0].memory_budget_bytes, Some(16 << 30));
        assert_eq!(c.devices[0].id.to_string(), "cpu:0");
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = parse("", p()).unwrap();
        assert_eq!(c, Config::default());
        // No devices configured: `devices::from_config` picks the defaults (GPUs and cpu:0).
        assert!(c.resolved_devices().is_empty());
        assert!(default_cpu_budget() > 0);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("log_level = \"info\"\nbogus_key = 1\n", p()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/llmd/test.toml"), "{msg}");
        assert!(msg.contains("bogus_key"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn unknown_device_key_is_refused() {
        let err = parse("[[devices]]\nid = \"cpu\"\nbudget = 3\n", p()).unwrap_err();
        assert!(err.to_string().contains("budget"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_reason() {
        let err = parse("socket = 3\n", p()).unwrap_err().to_string();
        assert!(err.contains("key `socket`"), "{err}");
        let err = parse("[[devices]]\nid = \"cpu\"\nmemory_budget = \"lots\"\n", p())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("memory_budget") && err.contains("lots"),
            "{err}"
        );
        let err = parse("[[devices]]\nid = \"tpu:0\"\n", p())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tpu"), "{err}");
        let err = parse("log_level = \"info,[[[\"\n", p())
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_level"), "{err}");
        let err = parse(
            "[[devices]]\nid = \"cpu\"\n[[devices]]\nid = \"cpu:0\"\n",
            p(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("devices[1].id") && err.contains("twice"),
            "{err}"
        );
    }

    #[test]
    fn several_cpu_devices_each_with_a_budget() {
        let c = parse(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n\
             [[devices]]\nid = \"cpu:1\"\nmemory_budget = \"512MiB\"\n\
             [[devices]]\nid = \"cpu:2\"\n",
            p(),
        )
        .unwrap();
        let d = c.resolved_devices();
        assert_eq!(d.len(), 3);
        assert_eq!(d[1].id.to_string(), "cpu:1");
        assert_eq!(d[1].memory_budget_bytes, Some(512 << 20));
        assert_eq!(d[2].memory_budget_bytes, None);
        let err = parse(
            "[[devices]]\nid = \"cpu:1\"\n[[devices]]\nid = \"cpu:1\"\n",
            p(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn cuda_devices_parse_with_optional_budgets() {
        let c = parse(
            "[[devices]]\nid = \"cuda:1\"\n[[devices]]\nid = \"cuda\"\nmemory_budget = \"20GiB\"\n",
            p(),
        )
        .unwrap();
        let d = c.resolved_devices();
        assert_eq!(d[0].id.to_string(), "cuda:1");
        assert_eq!(d[0].memory_budget_bytes, None);
        assert_eq!(d[1].id.to_string(), "cuda:0");
        assert_eq!(d[1].memory_budget_bytes, Some(20 << 30));
    }

    #[test]
    fn access_section_by_names_and_ids() {
        let c = parse(
            "[access]\nmanage_users = [\"root\", 1001, \"1002\"]\nmanage_groups = [\"root\"]\n",
            p(),
        )
        .unwrap();
        let access = c.access.expect("present");
        assert_eq!(
            access.manage_users,
            [
                Principal::Name("root".into()),
                Principal::Id(1001),
                Principal::Id(1002)
            ]
        );
        assert_eq!(access.manage_groups, [Principal::Name("root".into())]);
        // Present but empty: only root and the daemon's user manage.
        assert_eq!(
            parse("[access]\n", p()).unwrap().access,
            Some(AccessConfig::default())
        );
        assert_eq!(parse("", p()).unwrap().access, None);
        let err = parse("[access]\nmanage_users = [\"no-such-user-llmd\"]\n", p())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("access.manage_users[0]") && err.contains("no such user"),
            "{err}"
        );
        let err = parse(
            "[access]\nmanage_groups = [1, \"no-such-group-llmd\"]\n",
            p(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("access.manage_groups[1]"), "{err}");
        let err = parse("[access]\nmanage_users = [-1]\n", p())
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        let err = parse("[access]\nmanagers = []\n", p())
            .unwrap_err()
            .to_string();
        assert!(err.contains("managers"), "{err}");
    }

    #[test]
    fn models_parse_with_defaults_and_every_key() {
        let c = parse(
            r#"
models_dir = "/srv/models"

[[models]]
name = "a"
path = "a.gguf"

[[models]]
name = "b"
path = "/abs/b.gguf"
devices = ["cpu:0", "cpu:1"]
split = [3, 1]
gpu_layers = 10
ctx = 2048
threads = 4
cache_type_k = "q8_0"
cache_type_v = "q4_0"
load = "on_demand"
keep_alive = "90s"
temperature = 0.5
top_k = 20
top_p = 0.9
min_p = 0.05
repeat_penalty = 1.1
presence_penalty = 0.5
system_prompt = "Be brief."
chat_template = "{{ messages }}"
"#,
            p(),
        )
        .unwrap();
        let a = &c.models[0];
        assert_eq!(a.load, LoadPolicy::Start);
        assert_eq!(a.keep_alive(), KeepAlive::Forever);
        assert_eq!(
            a.resolved_path(c.models_dir()),
            PathBuf::from("/srv/models/a.gguf")
        );
        let b = c.declared("b").unwrap();
        assert_eq!(b.load, LoadPolicy::OnDemand);
        assert_eq!(
            b.keep_alive(),
            KeepAlive::After(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            b.resolved_path(c.models_dir()),
            PathBuf::from("/abs/b.gguf")
        );
        assert_eq!(b.devices[1].to_string(), "cpu:1");
        assert_eq!(b.split, [3.0, 1.0]);
        assert_eq!(b.cache_type_k, Some(llmd_shared::KvCacheType::Q8_0));
        assert_eq!(b.sampling().top_k, Some(20));
        assert_eq!(
            parse("", p()).unwrap().models_dir(),
            Path::new(DEFAULT_MODELS_DIR)
        );
        // On-demand without keep_alive: the default limit.
        let c = parse(
            "[[models]]\nname = \"x\"\npath = \"/x\"\nload = \"on_demand\"\n",
            p(),
        )
        .unwrap();
        assert_eq!(
            c.models[0].keep_alive(),
            KeepAlive::After(models::DEFAULT_ON_DEMAND_KEEP_ALIVE)
        );
    }

    #[test]
    fn prefix_cache_budgets_resolve_model_then_daemon_then_default() {
        let c = parse("", p()).unwrap();
        assert_eq!(c.prefix_cache_bytes(None), DEFAULT_PREFIX_CACHE_MIB << 20);
        let c = parse(
            "prefix_cache_mib = 8\n[[models]]\nname = \"a\"\npath = \"/a\"\n\
             [[models]]\nname = \"b\"\npath = \"/b\"\nprefix_cache_mib = 0\n",
            p(),
        )
        .unwrap();
        assert_eq!(c.prefix_cache_bytes(None), 8 << 20, "loaded by hand");
        assert_eq!(
            c.prefix_cache_bytes(c.declared("a")),
            8 << 20,
            "the daemon's"
        );
        assert_eq!(c.prefix_cache_bytes(c.declared("b")), 0, "its own: off");
        for text in [
            "prefix_cache_mib = 1048577\n",
            "[[models]]\nname = \"a\"\npath = \"/a\"\nprefix_cache_mib = 1048577\n",
        ] {
            let e = parse(text, p()).expect_err("over the limit").to_string();
            assert!(
                e.contains("prefix_cache_mib") && e.contains("1048576 MiB allowed"),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_models_name_file_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            // (text, key named, reason fragment)
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nbogus = 1\n", "bogus", "line 4"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nload = \"later\"\n", "load", "later"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nkeep_alive = \"5 fortnights\"\n", "keep_alive", "fortnights"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nkeep_alive = \"0s\"\n", "keep_alive", "more than zero"),
            ("[[models]]\nname = \"a b\"\npath = \"/a\"\n", "models[0].name", "line 2"),
            (
                "[[models]]\nname = \"a\"\npath = \"/a\"\n\n[[models]]\nname = \"a\"\npath = \"/b\"\n",
                "models[1].name",
                "line 6",
            ),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nsplit = [1, -1]\n", "models[0].split", "line 4"),
            (
                "[[models]]\nname = \"a\"\npath = \"/a\"\ndevices = [\"cpu:0\"]\nsplit = [1, 1]\n",
                "models[0].split",
                "one weight per device",
            ),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nctx = 0\n", "models[0].ctx", "greater than zero"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nthreads = 999\n", "models[0].threads", "between 1"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\ntemperature = -1\n", "models[0].temperature", "line 4"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\ntop_p = 2\n", "models[0].top_p", "between 0 and 1"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\nkeep_alive = \"5m\"\n", "models[0].keep_alive", "on_demand"),
            ("[[models]]\nname = \"a\"\npath = \"/a\"\ndevices = [\"tpu:0\"]\n", "devices", "tpu"),
            ("[[models]]\nname = \"a\"\n", "missing field `path`", "line 1"),
            ("models_dir = \"rel\"\n", "models_dir", "absolute"),
        ];
        for (text, key, why) in cases {
            let err = parse(text, p()).unwrap_err().to_string();
            assert!(err.contains("/etc/llmd/test.toml"), "{text}: {err}");
            assert!(err.contains(key), "{text}: want key {key}: {err}");
            assert!(err.contains(why), "{text}: want {why}: {err}");
        }
    }

    #[test]
    fn keep_alive_values() {
        use std::time::Duration;
        for (s, want) in [
            ("forever", KeepAlive::Forever),
            ("500ms", KeepAlive::After(Duration::from_millis(500))),
            ("2s", KeepAlive::After(Duration::from_secs(2))),
            ("5m", KeepAlive::After(Duration::from_secs(300))),
            ("1.5h", KeepAlive::After(Duration::from_secs(5400))),
            ("1d", KeepAlive::After(Duration::from_secs(86400))),
        ] {
            assert_eq!(s.parse::<KeepAlive>(), Ok(want), "{s}");
        }
        for s in ["", "5", "m", "-1s", "1y", "never"] {
            assert!(s.parse::<KeepAlive>().is_err(), "{s}");
        }
    }

    #[test]
    fn byte_sizes() {
        for (s, v) in [
            ("0", 0),
            ("512", 512),
            ("1KiB", 1024),
            ("16 GiB", 16 << 30),
            ("2GB", 2_000_000_000),
            ("1.5GiB", 3 << 29),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(v)), "{s}");
        }
        for s in ["", "GiB", "12 parsecs", "-1", "99999999999TiB"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
    }

    #[test]
    fn missing_default_file_is_fine_missing_explicit_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let loaded = ConfigSource::Default(missing.clone()).load().unwrap();
        assert_eq!(loaded, LoadedConfig::default());
        let err = ConfigSource::Explicit(missing).load().unwrap_err();
        assert!(err.to_string().contains("none.toml"), "{err}");
    }
}
