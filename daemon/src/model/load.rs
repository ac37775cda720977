//! Loading a GGUF model onto devices: resolve its configuration, cut its layers into stages by
//! the split, upload each stage's weights to its device, and assemble the pipeline.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use llmd_kernels::backend::{HostTensor, WeightView};
use thiserror::Error;

use super::backend::{ExpertScratch, StageBackend};
use super::config::{
    Arch, ConfigError, Hyperparameters, ModelConfig, RopeFactorTensors, RopeScaling,
    RopeScalingType, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, ROPE_FREQS,
};
use super::moe::ExpertsElsewhere;
use super::pipeline::{Pipeline, PipelineStage};
use super::stage::ForwardError;
use super::weights::{ExpertWeights, TensorSource, WeightError};
use llmd_gguf::{GgufError, GgufFile, MetadataError, ModelDescription};

/// Errors loading a model.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file is not a valid GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Its metadata is incomplete or invalid.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Its architecture or hyperparameters are not supported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its weights are missing, misshapen or do not fit a device.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The pipeline could not be assembled.
    #[error(transparent)]
    Pipeline(#[from] ForwardError),
    /// The placement is invalid.
    #[error("invalid placement: {0}")]
    Placement(String),
}

/// A GGUF file as a source of weights.
pub struct ModelFile {
    /// The parsed, memory-mapped file.
    pub file: GgufFile,
}

impl TensorSource for ModelFile {
    fn tensor(&self, name: &str) -> Option<HostTensor<'_>> {
        let info = self.file.tensor(name)?;
        let data = self.file.tensor_data(info).ok()?;
        let cols = *info.dims.first()? as usize;
        Some(HostTensor {
            name: &info.name,
            ty: info.ty,
            rows: info.n_rows() as usize,
            cols,
            data,
        })
    }
}

/// The forward-pass configuration of a described model whose file has the tensors `has_tensor`
/// says it has (the rope frequency factor tensors decide part of it).
pub fn model_config(
    desc: &ModelDescription,
    n_vocab: usize,
    has_tensor: &dyn Fn(&str) -> bool,
) -> Result<ModelConfig, ConfigError> {
    let uniform = |v: &[u32], key: &str| -> Result<usize, ConfigError> {
        match v.first() {
            Some(&first) if v.iter().all(|&x| x == first) => Ok(first as usize),
            _ => Err(ConfigError::Invalid {
                key: key.into(),
                reason: "per-layer values that differ are not supported".into(),
            }),
        }
    };
    let rope_scaling = RopeScaling {
        kind: RopeScalingType::from_name(desc.rope.scaling_type.as_deref())?,
        factor: desc.rope.scaling_factor.unwrap_or(0.0),
        // llama.cpp: the original context defaults to the training context, and a zero one
        // falls back to it as well.
        original_context: desc
            .rope
            .scaling_original_context
            .filter(|&n| n > 0)
            .unwrap_or(desc.context_length) as usize,
        attn_factor: desc.rope.scaling_attn_factor.unwrap_or(1.0),
    };
    let swa_period = Arch::from_name(&desc.architecture)?.swa_period();
    let hp = Hyperparameters {
        arch: desc.architecture.clone(),
        n_layer: desc.n_layer as usize,
        n_embd: desc.n_embd as usize,
        n_ff: desc.n_ff.iter().map(|&f| f as usize).collect(),
        n_head: uniform(&desc.n_head, "attention.head_count")?,
        n_head_kv: uniform(&desc.n_head_kv, "attention.head_count_kv")?,
        head_dim: desc.head_dim_k as usize,
        head_dim_v: desc.head_dim_v as usize,
        n_vocab,
        norm_eps: desc.norm_eps,
        rope_freq_base: desc.rope.freq_base,
        rope_freq_base_swa: desc.rope.freq_base_swa,
        rope_dims: desc.rope.dimension_count as usize,
        rope_scaling,
        rope_factor_tensors: RopeFactorTensors {
            freqs: has_tensor(ROPE_FREQS),
            long: has_tensor(ROPE_FACTORS_LONG),
            short: has_tensor(ROPE_FACTORS_SHORT),
        },
        sliding_window: desc.sliding_window.map(|w| w as usize),
        swa_layers: (0..desc.n_layer)
            .map(|il| match swa_period {
                Some(period) => desc.in_swa_pattern(il, period),
                None => false,
            })
            .collect(),
        attn_softcap: desc.attn_logit_softcapping,
        final_softcap: desc.final_logit_softcapping,
        context_length: desc.context_length as usize,
        n_expert: desc.expert_count.unwrap_or(0) as usize,
        n_expert_used: desc.expert_used_count.unwrap_or(0) as usize,
        n_ff_exp: desc.expert_feed_forward_length.map(|f| f as usize),
    };
    ModelConfig::resolve(&hp)
}

/// A model file opened and described, before any weight is placed.
pub struct OpenedModel {
    /// The file.
    pub source: Arc<ModelFile>,
    /// Its metadata.
    pub description: ModelDescription,
    /// Its forward-pass configuration.
    pub config: Arc<ModelConfig>,
}

impl OpenedModel {
    /// Opens and checks `path` (complete file, supported tensor types and architecture).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = GgufFile::open(path)?;
        file.check_supported()?;
        let description = ModelDescription::from_gguf(&file)?;
        let n_vocab = file
            .tensor("token_embd.weight")
            .map(|t| t.n_rows() as usize)
            .ok_or_else(|| WeightError::Missing("token_embd.weight".into()))?;
        let config = Arc::new(model_config(&description, n_vocab, &|name| {
            file.tensor(name).is_some()
        })?);
        Ok(OpenedModel {
            source: Arc::new(ModelFile { file }),
            description,
            config,
        })
    }

    /// The model set up to run with contexts of `n_ctx` positions per sequence (Phi-3's long
    /// rope factors apply beyond its original context; see [`ModelConfig::with_context`]).
    /// Call it before building the pipeline.
    pub fn with_context(mut self, n_ctx: usize) -> Self {
        self.config = Arc::new(self.config.with_context(n_ctx));
        self
    }
}

/// One stage to build: a backend and the layers it runs.
pub struct StageSpec {
    /// The device's backend for this model.
    pub backend: StageBackend,
    /// The layers.
    pub layers: Range<usize>,
    /// Whether it holds the output head.
    pub head: bool,
}

/// Where the experts of a mixture-of-experts model's first layers live instead of their layers'
/// devices (`--cpu-moe`, `--n-cpu-moe N`: the host's CPU device).
pub struct ExpertPlacement {
    /// The experts' device.
    pub backend: StageBackend,
    /// The layers whose experts it holds (`0..N`).
    pub layers: Range<usize>,
}

/// Builds the stages and the pipeline; `progress(done, total)` is called after each layer (the
/// output head counting as one more), so a load onto GPUs reports as it uploads.
pub fn build_pipeline(
    model: &OpenedModel,
    stages: Vec<StageSpec>,
    max_batch: usize,
    max_logit_rows: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Pipeline, LoadError> {
    build_pipeline_with_experts(model, stages, None, max_batch, max_logit_rows, progress)
}

/// [`build_pipeline`] with the experts of some layers on a device of their own.
pub fn build_pipeline_with_experts(
    model: &OpenedModel,
    stages: Vec<StageSpec>,
    experts: Option<&ExpertPlacement>,
    max_batch: usize,
    max_logit_rows: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Pipeline, LoadError> {
    if let Some(e) = experts {
        if model.config.moe.is_none() && !e.layers.is_empty() {
            return Err(LoadError::Placement(
                "--cpu-moe / --n-cpu-moe place experts, and this model has none".into(),
            ));
        }
    }
    let config = &model.config;
    let scratch = std::cell::RefCell::new(ExpertScratch::default());
    let load = |w: &ExpertWeights<WeightView<'_>>| match experts {
        Some(e) => e
            .backend
            .load_experts(config, w, &mut scratch.borrow_mut(), max_batch),
        None => Err(WeightError::Misplaced("no device for experts".into())),
    };
    let elsewhere = experts.map(|e| ExpertsElsewhere {
        layers: e.layers.clone(),
        load: &load,
    });
    let total: usize = stages
        .iter()
        .map(|s| s.layers.len() + usize::from(s.head))
        .sum();
    let mut done = 0;
    let mut built: Vec<Box<dyn PipelineStage>> = Vec::with_capacity(stages.len());
    for spec in stages {
        let stage = spec.backend.load_stage(
            Arc::clone(&model.config),
            &*model.source,
            spec.layers,
            spec.head,
            max_batch,
            max_logit_rows,
            elsewhere.as_ref(),
            &mut || {
                done += 1;
                progress(done, total);
            },
        )?;
        built.push(stage);
    }
    let source: Arc<dyn super::pipeline::ModelSource> = model.source.clone();
    Ok(Pipeline::new(Arc::clone(&model.config), source, built)?)
}
