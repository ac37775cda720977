//! `[[models]]`: the models the configuration declares resident (`load = "start"`) or loadable
//! on their first request (`load = "on_demand"`), with their placement, keep-alive and per-model
//! request defaults. Parsing and validation only; making it so is `runtime::reconcile`'s job.
//!
//! ```toml
//! models_dir = "/var/lib/llmd/models"  # relative `path`s are relative to it
//!
//! [[models]]
//! name = "gemma"
//! path = "gemma-3-270m-Q4_K_M.gguf"
//! devices = ["cpu:0"]                  # default: the daemon's default placement
//! split = [1]                          # one weight per device, as `--split`
//! ctx = 4096
//! load = "on_demand"                   # or "start" (the default)
//! keep_alive = "10m"                   # or "forever" (the default for start models)
//! temperature = 0.7                    # request defaults; a request's own values win
//! system_prompt = "You are terse."
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use llmd_shared::{KvCacheType, Sampling};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::DeviceId;

/// Where relative `[[models]]` paths point when `models_dir` is not set: the directory the
/// package creates for the daemon's model files.
pub const DEFAULT_MODELS_DIR: &str = "/var/lib/llmd/models";

/// How long an on-demand model stays resident without requests when `keep_alive` is not set
/// (Ollama's default too).
pub const DEFAULT_ON_DEMAND_KEEP_ALIVE: Duration = Duration::from_secs(5 * 60);

/// Longest model name accepted (the same limit `llmctl load --name` has).
pub const MAX_MODEL_NAME_LEN: usize = 128;

/// Most threads a model may ask for, and most the daemon's compute pool may have (the same
/// clamp `load` applies): a sanity bound far above any host's core count.
pub const MAX_THREADS: u32 = 256;

/// Longest system prompt or chat template override accepted in the file: generous for real
/// templates (the longest common ones are ~10 KiB), small enough to keep configs sane.
const MAX_TEXT_BYTES: usize = 256 * 1024;

/// Whether a model is loaded at start (and on reload) or at its first request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadPolicy {
    /// Loaded in the background when the daemon starts or the config is reloaded.
    #[default]
    Start,
    /// Loaded by the first request that names it (generate, chat, tokenize).
    OnDemand,
}

/// How long a model stays resident without requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Until removed from the config or unloaded by hand.
    Forever,
    /// Unloaded after this long without requests.
    After(Duration),
}

impl std::str::FromStr for KeepAlive {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "forever" {
            return Ok(KeepAlive::Forever);
        }
        parse_duration(t).map(KeepAlive::After).map_err(|why| {
            format!("invalid keep_alive `{s}`: {why} (e.g. \"90s\", \"5m\", \"2h\" or \"forever\")")
        })
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::Forever => f.write_str("forever"),
            KeepAlive::After(d) => write!(f, "{}s", d.as_secs_f64()),
        }
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A duration written as a number and a unit: `ms`, `s`, `m`, `h` or `d` ("1.5h").
fn parse_duration(t: &str) -> Result<Duration, String> {
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or("a unit is needed")?;
    let (num, unit) = t.split_at(split);
    let secs_per: f64 = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("unknown unit `{other}`")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{num}` is not a number"))?;
    let secs = v * secs_per;
    if !secs.is_finite() || secs <= 0.0 || secs > u32::MAX as f64 {
        return Err("must be more than zero and less than a century".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDecl {
    /// The name requests use; unique among the declared models.
    pub name: String,
    /// The GGUF file: absolute, or relative to `models_dir`. Must be readable by the daemon's
    /// user.
    pub path: PathBuf,
    /// Devices to place it on (default: every usable GPU, else the first device, as `load`).
    #[serde(default)]
    pub devices: Vec<DeviceId>,
    /// Weights per device, as `--split` (default: proportional to free memory).
    #[serde(default)]
    pub split: Vec<f32>,
    /// Layers on GPUs, as `--gpu-layers` (the first layers go to the CPU).
    #[serde(default)]
    pub gpu_layers: Option<u32>,
    /// A mixture of experts' experts of the first N layers on the host's CPU device, as
    /// `--n-cpu-moe N` (a number at least the model's layer count: every layer, `--cpu-moe`).
    #[serde(default)]
    pub n_cpu_moe: Option<u32>,
    /// Context length per sequence (default: the model's, capped as `load` caps it).
    #[serde(default)]
    pub ctx: Option<u32>,
    /// This model's share of the daemon's compute pool: how many of its threads the model's
    /// CPU work may use at once (default: the whole pool, top-level `threads`).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Type of the KV cache's keys (`f16`, `q8_0`, `q4_0`).
    #[serde(default)]
    pub cache_type_k: Option<KvCacheType>,
    /// Type of the KV cache's values.
    #[serde(default)]
    pub cache_type_v: Option<KvCacheType>,
    /// When it is loaded.
    #[serde(default)]
    pub load: LoadPolicy,
    /// How long it stays without requests (default: forever for start models,
    /// [`DEFAULT_ON_DEMAND_KEEP_ALIVE`] for on-demand ones).
    #[serde(default)]
    pub keep_alive: Option<KeepAlive>,
    /// Default temperature for requests that do not set one.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Default top-k.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Default top-p.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Default min-p.
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Default repetition penalty.
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    /// Default presence penalty.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Default frequency penalty.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// A system message put first in chat requests that have none.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// A chat template (Jinja, as in GGUF metadata) used instead of the file's.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// MiB of KV cache its finished generations may keep for prompts sharing their prefix
    /// (default: the daemon's `prefix_cache_mib`); 0 turns its prefix cache off.
    #[serde(default)]
    pub prefix_cache_mib: Option<u64>,
}

// Validation rejects NaN in the float fields, so equality is reflexive (lets `Config` derive
// Eq).
impl Eq for ModelDecl {}

impl ModelDecl {
    /// The keep-alive in force: the declared one, else forever for start models and
    /// [`DEFAULT_ON_DEMAND_KEEP_ALIVE`] for on-demand ones.
    pub fn keep_alive(&self) -> KeepAlive {
        self.keep_alive.unwrap_or(match self.load {
            LoadPolicy::Start => KeepAlive::Forever,
            LoadPolicy::OnDemand => KeepAlive::After(DEFAULT_ON_DEMAND_KEEP_ALIVE),
        })
    }

    /// The request defaults for sampling, as a request would carry them.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: None,
        }
    }

    /// The file, with a relative `path` resolved against `models_dir`.
    pub fn resolved_path(&self, models_dir: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            models_dir.join(&self.path)
        }
    }

    /// Whether a change from `self` to `new` moves the model between devices (devices or
    /// split), which a live re-split does.
    pub fn placement_differs(&self, new: &ModelDecl) -> bool {
        self.devices != new.devices || self.split != new.split
    }

    /// Checks the values of entry `i`; `Err((key, reason))` names the bad key.
    pub(super) fn validate(&self, i: usize) -> Result<(), (String, String)> {
        let key = |k: &str| format!("models[{i}].{k}");
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_MODEL_NAME_LEN
            && self
                .name
                .chars()
                .all(|c| !c.is_control() && !c.is_whitespace() && c != '/');
        if !name_ok {
            return Err((
                key("name"),
                format!(
                    "{:?} is not a valid model name: 1 to {MAX_MODEL_NAME_LEN} characters, no \
                     spaces or slashes",
                    self.name
                ),
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err((key("path"), "must not be empty".into()));
        }
        if let Some(bad) = self.split.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err((
                key("split"),
                format!("weight {bad} is not a finite number of 0 or more"),
            ));
        }
        if !self.split.is_empty() && self.split.iter().all(|w| *w == 0.0) {
            return Err((key("split"), "at least one weight must be above 0".into()));
        }
        if !self.devices.is_empty()
            && !self.split.is_empty()
            && self.devices.len() != self.split.len()
        {
            return Err((
                key("split"),
                format!(
                    "{} weights for {} devices: give one weight per device",
                    self.split.len(),
                    self.devices.len()
                ),
            ));
        }
        if self.ctx == Some(0) {
            return Err((key("ctx"), "must be greater than zero".into()));
        }
        if let Some(mib) = self.prefix_cache_mib {
            super::check_prefix_cache_mib(mib)
                .map_err(|reason| (key("prefix_cache_mib"), reason))?;
        }
        if let Some(t) = self.threads {
            if t == 0 || t > MAX_THREADS {
                return Err((
                    key("threads"),
                    format!("{t} is not between 1 and {MAX_THREADS}"),
                ));
            }
        }
        if let (LoadPolicy::Start, Some(KeepAlive::After(_))) = (self.load, self.keep_alive) {
            return Err((
                key("keep_alive"),
                "a time limit applies to `load = \"on_demand\"` models only (a start model \
                 unloaded when idle would not come back until the next reload)"
                    .into(),
            ));
        }
        if let Err(e) = self.sampling().validate() {
            let k = e.message.split_whitespace().next().unwrap_or("sampling");
            return Err((key(k), e.message));
        }
        for (k, text) in [
            ("system_prompt", &self.system_prompt),
            ("chat_template", &self.chat_template),
        ] {
            if let Some(text) = text {
                if text.len() > MAX_TEXT_BYTES {
                    return Err((
                        key(k),
                        format!(
                            "{} bytes, more than the {MAX_TEXT_BYTES} allowed",
                            text.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks every entry and that names are unique.
pub(super) fn validate_all(models: &[ModelDecl]) -> Result<(), (String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, m) in models.iter().enumerate() {
        m.validate(i)?;
        if !seen.insert(m.name.as_str()) {
            return Err((
                format!("models[{i}].name"),
                format!("model `{}` is declared twice", m.name),
            ));
        }
    }
    Ok(())
}
