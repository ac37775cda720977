//! `plan` and `resplit`: the dry run of a split plan (which layers on which device, and the bytes
//! of weights, KV cache and scratch each needs), and changing a loaded model's split live.

use serde::{Deserialize, Serialize};

use super::cache::KvCacheType;
use super::models::StagePlacement;

/// Plans a model file's placement without loading it (the header is enough).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Path of the GGUF file, as the daemon sees it (absolute); only its header is read.
    pub path: String,
    /// Devices to place it on (default: the daemon's first device).
    pub devices: Vec<String>,
    /// Split weights per device, as llama.cpp's `--tensor-split` (default: proportional to each
    /// device's free memory).
    pub split: Vec<f32>,
    /// Layers on GPU devices, the rest on the CPU device, as llama.cpp's `-ngl` (default: all).
    pub gpu_layers: Option<u32>,
    /// Context length per sequence (default: the daemon's, capped by the model's training
    /// context).
    pub ctx: Option<u32>,
    /// Type of the KV cache's keys to plan for (default: f16).
    pub cache_type_k: Option<KvCacheType>,
    /// Type of the KV cache's values to plan for (default: f16).
    pub cache_type_v: Option<KvCacheType>,
    /// A mixture of experts' router and experts of the first N layers on the host's CPU device
    /// (`--n-cpu-moe N`; `--cpu-moe` sends `u32::MAX`: every layer), as llama.cpp's.
    pub n_cpu_moe: Option<u32>,
}

/// A mixture of experts' experts placed on a device of their own (`--cpu-moe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedExperts {
    /// Device name (the host's CPU device).
    pub device: String,
    /// First layer whose experts it holds (inclusive).
    pub layer_start: u32,
    /// Last layer whose experts it holds (exclusive).
    pub layer_end: u32,
    /// Bytes of their weights (routers and experts).
    pub weight_bytes: u64,
    /// Bytes of their activation buffers.
    pub scratch_bytes: u64,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStage {
    /// Device name.
    pub device: String,
    /// First layer (inclusive).
    pub layer_start: u32,
    /// Last layer (exclusive).
    pub layer_end: u32,
    /// Whether the output head is on this device.
    pub output: bool,
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// Bytes of KV cache for one sequence of the full context (of the plan's cache types).
    pub kv_bytes: u64,
    /// Bytes of activation buffers (for the largest batch).
    pub scratch_bytes: u64,
}

/// One device as a plan sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedDevice {
    /// Device name.
    pub name: String,
    /// Its memory budget.
    pub budget_bytes: u64,
    /// Bytes of the budget free for this model.
    pub free_bytes: u64,
    /// Bytes the plan needs on it (weights + KV cache + scratch).
    pub need_bytes: u64,
    /// Its split weight, normalised (0 for a device that takes no share).
    pub split: f64,
}

/// A split plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReply {
    /// Path of the file.
    pub path: String,
    /// Architecture.
    pub architecture: String,
    /// Transformer layers.
    pub n_layer: u32,
    /// Context length planned for.
    pub ctx: u32,
    /// Tokens per forward step at most (activation buffers are sized for it).
    pub batch: u32,
    /// Type of the KV cache's keys the plan counts.
    pub cache_type_k: KvCacheType,
    /// Type of the KV cache's values the plan counts.
    pub cache_type_v: KvCacheType,
    /// Bytes of the token embedding table, read from the memory-mapped file on the host.
    pub embedding_bytes: u64,
    /// The devices, in the order given.
    pub devices: Vec<PlannedDevice>,
    /// Stages in pipeline order.
    pub stages: Vec<PlannedStage>,
    /// Whether the plan fits the devices' free memory.
    pub fits: bool,
    /// When it does not fit: the shortfall per device, with the numbers.
    pub problems: Vec<String>,
    /// When it does not fit: a change that fits, if one exists.
    pub suggestion: Option<String>,
    /// Placements that fit but are probably not what was meant (every layer on one of several
    /// devices, a device left without layers).
    pub warnings: Vec<String>,
    /// Experts on a device of their own (`--cpu-moe`, `--n-cpu-moe`), counted there and not in
    /// the stages' weights.
    pub experts: Option<PlannedExperts>,
}

/// Changes a loaded model's split (and context) live; running generations continue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResplitRequest {
    /// The model's name.
    pub name: String,
    /// Devices to place it on (default: those it is on now).
    pub devices: Vec<String>,
    /// Split weights per device (default: with `devices` given, proportional to each device's
    /// free memory, counting what the model itself holds as free; without, the current split).
    pub split: Vec<f32>,
    /// New context length for generations started from now on (default: unchanged).
    pub ctx: Option<u32>,
    /// Layers whose experts live on the host's CPU device from now on (`--n-cpu-moe N`,
    /// `u32::MAX` for every layer, 0 for none; default: unchanged).
    pub n_cpu_moe: Option<u32>,
}

/// A re-split done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResplitReply {
    /// The model's name.
    pub name: String,
    /// Context length for new generations.
    pub ctx: u32,
    /// The plan applied.
    pub plan: Box<PlanReply>,
    /// Stages now, in layer order.
    pub placement: Vec<StagePlacement>,
    /// Seconds the switch took (copying, freeing and uploading, between two decode steps).
    pub secs: f64,
    /// Bytes copied onto devices (weights and KV caches of the rebuilt stages).
    pub bytes_moved: u64,
    /// Layers now on another device.
    pub layers_moved: u32,
    /// Generations that were running and continued.
    pub sequences_moved: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_frame, encode_frame, Reply, Request};

    #[test]
    fn plan_and_resplit_messages_round_trip() {
        let plan = PlanReply {
            path: "/m.gguf".into(),
            architecture: "llama".into(),
            n_layer: 80,
            ctx: 8192,
            batch: 512,
            cache_type_k: KvCacheType::Q8_0,
            cache_type_v: KvCacheType::Q4_0,
            embedding_bytes: 1 << 30,
            devices: vec![PlannedDevice {
                name: "cpu:0".into(),
                budget_bytes: 24 << 30,
                free_bytes: 20 << 30,
                need_bytes: 21 << 30,
                split: 0.5,
            }],
            stages: vec![PlannedStage {
                device: "cpu:0".into(),
                layer_start: 0,
                layer_end: 41,
                output: false,
                weight_bytes: 7,
                kv_bytes: 8,
                scratch_bytes: 9,
            }],
            fits: false,
            problems: vec!["cpu:0 needs more".into()],
            suggestion: Some("--ctx 4096".into()),
            warnings: vec![],
            experts: Some(PlannedExperts {
                device: "cpu:0".into(),
                layer_start: 0,
                layer_end: 94,
                weight_bytes: 10,
                scratch_bytes: 11,
            }),
        };
        let requests = [
            Request::Plan(PlanRequest {
                path: "/m.gguf".into(),
                devices: vec!["cpu:0".into(), "cpu:1".into()],
                split: vec![1.0, 1.0],
                gpu_layers: Some(40),
                ctx: Some(8192),
                cache_type_k: Some(KvCacheType::Q8_0),
                cache_type_v: None,
                n_cpu_moe: Some(u32::MAX),
            }),
            Request::Resplit(ResplitRequest {
                name: "m".into(),
                devices: vec![],
                split: vec![3.0, 1.0],
                ctx: None,
                n_cpu_moe: Some(0),
            }),
        ];
        for r in requests {
            let (back, _) = decode_frame::<Request>(&encode_frame(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
        let replies = [
            Reply::Plan(plan.clone()),
            Reply::Resplit(ResplitReply {
                name: "m".into(),
                ctx: 4096,
                plan: Box::new(plan),
                placement: vec![],
                secs: 0.25,
                bytes_moved: 1 << 20,
                layers_moved: 3,
                sequences_moved: 1,
            }),
        ];
        for r in replies {
            let (back, _) = decode_frame::<Reply>(&encode_frame(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
    }
}
