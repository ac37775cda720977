//! The socket protocol's view of the runtime: conversions between the domain types of
//! [`crate::runtime`] and the wire types of `llmd_shared`, used by the handlers only.

use llmd_kernels::backend::{KvType, KvTypes};
use llmd_shared::api::health::{DeviceLayers, ModelPlacement};
use llmd_shared::{
    ErrorCode, ErrorReply, HostMemory, KvCacheType, ModelDetails, ModelInfo, PlanReply,
    PlannedDevice, PlannedStage, PrefixCacheUsage,
};

use crate::runtime::{
    ErrorKind, LoadedModel, ModelRegistry, PlannedModel, RuntimeError, StagePlacement, MAX_BATCH,
};
use crate::state::GpuIndex;

impl From<RuntimeError> for ErrorReply {
    fn from(e: RuntimeError) -> Self {
        let code = match e.kind {
            ErrorKind::BadRequest => ErrorCode::BadRequest,
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
            ErrorKind::Busy => ErrorCode::Busy,
            ErrorKind::DoesNotFit => ErrorCode::DoesNotFit,
            ErrorKind::Unsupported => ErrorCode::Unsupported,
            ErrorKind::Io => ErrorCode::Io,
            ErrorKind::Timeout => ErrorCode::Timeout,
            ErrorKind::Cancelled => ErrorCode::Cancelled,
            ErrorKind::Internal => ErrorCode::Internal,
        };
        ErrorReply::new(code, e.message)
    }
}

/// The kernels' cache type of a wire cache type.
fn kernel_cache_type(t: KvCacheType) -> KvType {
    match t {
        KvCacheType::F16 => KvType::F16,
        KvCacheType::Q8_0 => KvType::Q8_0,
        KvCacheType::Q4_0 => KvType::Q4_0,
    }
}

/// The wire name of a kernels' cache type.
pub fn wire_cache_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F16 => KvCacheType::F16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q4_0 => KvCacheType::Q4_0,
    }
}

/// The KV cache types a request asks for: f16 where it names none.
pub fn requested_cache_types(k: Option<KvCacheType>, v: Option<KvCacheType>) -> KvTypes {
    KvTypes {
        k: kernel_cache_type(k.unwrap_or_default()),
        v: kernel_cache_type(v.unwrap_or_default()),
    }
}

/// The wire form of a model's stages.
pub fn placement(stages: Vec<StagePlacement>) -> Vec<llmd_shared::StagePlacement> {
    stages
        .into_iter()
        .map(|s| llmd_shared::StagePlacement {
            device: s.device,
            layer_start: s.layer_start,
            layer_end: s.layer_end,
            output: s.output,
            weight_bytes: s.weight_bytes,
            kv_bytes: s.kv_bytes,
            expert_device: s.expert_device,
            expert_layers: s.expert_layers,
            expert_bytes: s.expert_bytes,
        })
        .collect()
}

/// The wire description of a model (`list`).
pub fn model_details(m: &LoadedModel) -> ModelDetails {
    let kv = m.kv_types();
    ModelDetails {
        name: m.name.clone(),
        path: m.path.display().to_string(),
        architecture: m.architecture.clone(),
        n_layer: m.config.n_layer as u32,
        ctx: m.ctx(),
        threads: m.threads,
        placement: placement(m.placement()),
        running: m.running.load(std::sync::atomic::Ordering::SeqCst),
        cache_type_k: wire_cache_type(kv.k),
        cache_type_v: wire_cache_type(kv.v),
        failed: m.failure(),
        host_memory: host_memory(m),
        prefix_cache: prefix_cache(m),
    }
}

/// The wire form of what `m`'s prefix cache retains.
fn prefix_cache(m: &LoadedModel) -> PrefixCacheUsage {
    let (retained_bytes, retained_sequences) = m.handle.prefix_retained();
    PrefixCacheUsage {
        retained_bytes,
        retained_sequences,
    }
}

/// The wire form of the host memory `m` holds.
fn host_memory(m: &LoadedModel) -> HostMemory {
    let h = m.host_memory();
    HostMemory {
        anon_bytes: h.anon,
        file_bytes: h.file,
    }
}

/// Short wire descriptions of every resident model, sorted by name (`status`).
pub fn model_infos(registry: &ModelRegistry) -> Vec<ModelInfo> {
    registry
        .all()
        .iter()
        .map(|m| {
            let kv = m.kv_types();
            ModelInfo {
                name: m.name.clone(),
                path: m.path.display().to_string(),
                devices: m.devices(),
                memory_bytes: m.memory_bytes(),
                host_memory: host_memory(m),
                cache_type_k: wire_cache_type(kv.k),
                cache_type_v: wire_cache_type(kv.v),
                failed: m.failure(),
                template_warning: m.chat.fallback_warning(),
                prefix_cache: prefix_cache(m),
            }
        })
        .collect()
}

/// Every resident model's layers per device, one entry per pipeline stage, sorted by name
/// (for `status` and the doctor's split and peer-to-peer checks), each GPU by its NVML index as
/// `gpus` finds it.
pub fn model_placements(registry: &ModelRegistry, gpus: &GpuIndex) -> Vec<ModelPlacement> {
    registry
        .all()
        .iter()
        .map(|m| ModelPlacement {
            name: m.name.clone(),
            layers: m
                .placement()
                .into_iter()
                .filter_map(|stage| {
                    gpus.device_ref(&stage.device).map(|device| DeviceLayers {
                        device,
                        layers: stage.layer_end.saturating_sub(stage.layer_start),
                    })
                })
                .collect(),
        })
        .collect()
}

/// The wire form of a plan.
pub fn plan_reply(planned: &PlannedModel) -> PlanReply {
    let p = &planned.plan;
    let sizes = &planned.sizes;
    let mut share = vec![0.0; p.devices.len()];
    // The split covers every device, or only the GPUs with -ngl.
    let targets: Vec<usize> = if p.split.len() == p.devices.len() {
        (0..p.devices.len()).collect()
    } else {
        (0..p.devices.len()).filter(|&d| p.devices[d].gpu).collect()
    };
    for (k, &d) in targets.iter().enumerate() {
        share[d] = p.split.get(k).copied().unwrap_or(0.0);
    }
    PlanReply {
        path: planned.path.display().to_string(),
        architecture: planned.architecture.clone(),
        n_layer: sizes.n_layer as u32,
        ctx: p.ctx as u32,
        batch: MAX_BATCH as u32,
        cache_type_k: wire_cache_type(sizes.kv_types.k),
        cache_type_v: wire_cache_type(sizes.kv_types.v),
        embedding_bytes: sizes.embedding_bytes,
        devices: p
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| PlannedDevice {
                name: dev.name.clone(),
                budget_bytes: dev.budget_bytes,
                free_bytes: dev.free_bytes,
                need_bytes: p.need_on(d),
                split: share[d],
            })
            .collect(),
        stages: p
            .stages
            .iter()
            .map(|s| PlannedStage {
                device: p.devices[s.device].name.clone(),
                layer_start: s.layers.start as u32,
                layer_end: s.layers.end as u32,
                output: s.head,
                weight_bytes: s.weight_bytes,
                kv_bytes: s.kv_bytes,
                scratch_bytes: s.scratch_bytes,
            })
            .collect(),
        fits: p.fits(),
        problems: p
            .verdict
            .as_ref()
            .map(|v| v.problems.clone())
            .unwrap_or_default(),
        suggestion: p.verdict.as_ref().and_then(|v| v.suggestion.clone()),
        warnings: p.warnings.clone(),
        experts: p.experts.as_ref().map(|e| llmd_shared::PlannedExperts {
            device: e.device.name.clone(),
            layer_start: e.layers.start as u32,
            layer_end: e.layers.end as u32,
            weight_bytes: e.weight_bytes,
            scratch_bytes: e.scratch_bytes,
        }),
    }
}
