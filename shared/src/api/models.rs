//! `load`, `unload` and `list`: making models resident, freeing them, and listing them with
//! their placement (layers and bytes per device).

use serde::{Deserialize, Serialize};

use super::cache::KvCacheType;

/// Loads a GGUF model and keeps it resident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// Path of the GGUF file, as the daemon sees it (absolute).
    pub path: String,
    /// Name to load it under (default: the file name without `.gguf`).
    pub name: Option<String>,
    /// Context length per sequence (default: the daemon's, capped by the model's training
    /// context).
    pub ctx: Option<u32>,
    /// This model's share of the daemon's compute pool: how many of its threads the model's CPU
    /// work may use at once (default and most: the whole pool, the config's `threads`).
    pub threads: Option<u32>,
    /// Devices to place it on, e.g. `["cpu:0", "cpu:1"]` (default: the daemon's first device).
    pub devices: Vec<String>,
    /// Split weights per device, as llama.cpp's `--tensor-split` (default: proportional to each
    /// device's free memory).
    pub split: Vec<f32>,
    /// Replace a model already loaded under this name: requests running on the old model
    /// finish on it, new ones go to the new one.
    pub replace: bool,
    /// Type of the KV cache's keys (default: f16, as llama.cpp's `-ctk`).
    pub cache_type_k: Option<KvCacheType>,
    /// Type of the KV cache's values (default: f16, as llama.cpp's `-ctv`).
    pub cache_type_v: Option<KvCacheType>,
    /// Layers on GPU devices, the first ones going to the CPU device, as llama.cpp's `-ngl`
    /// (default: every layer on the chosen devices).
    pub gpu_layers: Option<u32>,
    /// A mixture of experts' router and experts of the first N layers on the host's CPU device
    /// (`--n-cpu-moe N`; `--cpu-moe` sends `u32::MAX`: every layer), as llama.cpp's.
    pub n_cpu_moe: Option<u32>,
}

/// Where one stage of a model lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePlacement {
    /// Device name.
    pub device: String,
    /// First layer (inclusive).
    pub layer_start: u32,
    /// Last layer (exclusive).
    pub layer_end: u32,
    /// Whether the output head (final norm and vocabulary projection) is on this device.
    pub output: bool,
    /// Bytes of weights on the device.
    pub weight_bytes: u64,
    /// Bytes of KV cache on the device now.
    pub kv_bytes: u64,
    /// The device holding the experts of some of its layers (`--cpu-moe`), if any.
    pub expert_device: Option<String>,
    /// Those layers, as `[start, end)`.
    pub expert_layers: (u32, u32),
    /// Bytes of those experts on `expert_device`.
    pub expert_bytes: u64,
}

/// A model made resident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReply {
    /// Name it is loaded under.
    pub name: String,
    /// Path of its file.
    pub path: String,
    /// Architecture.
    pub architecture: String,
    /// Transformer layers.
    pub n_layer: u32,
    /// Context length per sequence.
    pub ctx: u32,
    /// Stages, in layer order.
    pub placement: Vec<StagePlacement>,
    /// Seconds the load took.
    pub load_secs: f64,
    /// Bytes of weights copied onto devices.
    pub bytes_loaded: u64,
    /// Whether it replaced a model of the same name.
    pub replaced: bool,
    /// Type of its KV cache's keys.
    pub cache_type_k: KvCacheType,
    /// Type of its KV cache's values.
    pub cache_type_v: KvCacheType,
}

/// Frees a resident model. Generations running on it finish first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadRequest {
    /// The model's name.
    pub name: String,
}

/// A model unloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadReply {
    /// The model's name.
    pub name: String,
    /// Bytes of device memory it held.
    pub freed_bytes: u64,
}

/// Lists resident models.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {}

/// Resident models with their placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListReply {
    /// The models, by name.
    pub models: Vec<ModelDetails>,
}

/// One resident model in detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDetails {
    /// Name it is loaded under.
    pub name: String,
    /// Path of its file.
    pub path: String,
    /// Architecture.
    pub architecture: String,
    /// Transformer layers.
    pub n_layer: u32,
    /// Context length per sequence.
    pub ctx: u32,
    /// Its share of the daemon's compute pool (threads its CPU work uses at once).
    pub threads: u32,
    /// Stages, in layer order.
    pub placement: Vec<StagePlacement>,
    /// Generations running now.
    pub running: u32,
    /// Type of its KV cache's keys.
    pub cache_type_k: KvCacheType,
    /// Type of its KV cache's values.
    pub cache_type_v: KvCacheType,
    /// Why it no longer serves (its worker failed), if so; `llmctl reload` loads it again.
    pub failed: Option<String>,
    /// Host memory it holds: its stages on CPU devices and its embedding table.
    pub host_memory: super::status::HostMemory,
    /// What its prefix cache retains (part of its stages' `kv_bytes`).
    pub prefix_cache: super::status::PrefixCacheUsage,
}
