//! Loading a GGUF model onto devices: resolve its configuration, cut its layers into stages by
//! the split, upload each stage's weights to its device, and assemble the pipeline.
//!
//! The file is never mapped ([`GgufFile::open_unmapped`]): each part's tensors are read with
//! `pread` into host memory, uploaded, and the host copy and the file's page cache dropped, so a
//! CPU device's upload is the one resident copy of each weight; the descriptor stays open for
//! the re-reads of a live re-split, which are refused once the file has changed.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use llmd_kernels::backend::WeightView;
use thiserror::Error;

use super::backend::{AnyStage, ExpertScratch, StageBackend};
use super::config::{
    Arch, ConfigError, Hyperparameters, ModelConfig, RopeFactorTensors, RopeScaling,
    RopeScalingType, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, ROPE_FREQS,
};
use super::embedding::Embedding;
use super::host_tensors::{HostTensors, OwnedTensor, PartSource};
use super::moe::ExpertsElsewhere;
use super::parts::Slot;
use super::pipeline::Pipeline;
use super::stage::ForwardError;
use super::weights::{
    layer_source_names, ExpertWeights, WeightError, OUTPUT, OUTPUT_NORM, TOKEN_EMBD,
};
use llmd_gguf::{DataCheck, GgufError, GgufFile, MetadataError, ModelDescription, TensorInfo};
use llmd_kernels::backend::BackendError;
use llmd_kernels::quant::GgmlType;

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

/// A GGUF file as a source of weights, open (not mapped) for as long as the model is loaded.
pub struct ModelFile {
    /// The parsed file, read through its descriptor.
    pub file: GgufFile,
}

impl ModelFile {
    /// Whether the output head is the token embedding (the file has no `output.weight`).
    pub fn tied_embeddings(&self) -> bool {
        self.file.tensor(OUTPUT).is_none()
    }

    /// Reads the tensor `info` into host memory, then lets its page cache go.
    fn read(&self, info: &TensorInfo) -> Result<OwnedTensor, WeightError> {
        let out_of_memory = || {
            WeightError::Backend(BackendError::OutOfMemory {
                device: "host".into(),
                what: format!("reading {} from the model file", info.name),
                bytes: info.n_bytes,
            })
        };
        let len = usize::try_from(info.n_bytes).map_err(|_| out_of_memory())?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| out_of_memory())?;
        data.resize(len, 0);
        self.file.read_tensor_data(info, &mut data)?;
        self.file.drop_cached(info);
        let cols = info.dims.first().copied().unwrap_or(1) as usize;
        Ok(OwnedTensor {
            name: info.name.clone(),
            ty: info.ty,
            rows: info.n_rows() as usize,
            cols,
            data,
        })
    }

    /// Reads the tensors among `names` that the file has (shape checks are the caller's).
    pub fn read_tensors<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<HostTensors, WeightError> {
        let mut read = Vec::new();
        for name in names {
            if let Some(info) = self.file.tensor(name) {
                read.push(self.read(info)?);
            }
        }
        Ok(HostTensors::new(read))
    }

    /// Reads the tensor `name`, which must be there.
    pub fn read_tensor(&self, name: &str) -> Result<OwnedTensor, WeightError> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| WeightError::Missing(name.into()))?;
        self.read(info)
    }
}

impl PartSource for ModelFile {
    fn read_part(&self, config: &ModelConfig, slot: Slot) -> Result<HostTensors, WeightError> {
        match slot {
            Slot::Layer(il) => {
                let names = layer_source_names(config, il);
                self.read_tensors(names.iter().map(String::as_str))
            }
            Slot::Head => {
                let embd = self.tied_embeddings().then_some(TOKEN_EMBD);
                self.read_tensors([OUTPUT_NORM, OUTPUT].into_iter().chain(embd))
            }
        }
    }

    fn shape_of(&self, name: &str) -> Option<(GgmlType, usize, usize)> {
        let info = self.file.tensor(name)?;
        let cols = info.dims.first().copied().unwrap_or(1) as usize;
        Some((info.ty, info.n_rows() as usize, cols))
    }

    fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<(), WeightError> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| WeightError::Missing(name.into()))?;
        self.file.read_tensor_data(info, dst)?;
        self.file.drop_cached(info);
        Ok(())
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
        n_ff_shexp: desc.expert_shared_feed_forward_length.map(|f| f as usize),
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
    /// Opens and checks `path` (complete file, supported tensor types and architecture),
    /// unmapped: weights are read when the pipeline is built.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = GgufFile::open_unmapped(path, DataCheck::Complete)?;
        file.check_supported()?;
        let description = ModelDescription::from_gguf(&file)?;
        let n_vocab = file
            .tensor(TOKEN_EMBD)
            .map(|t| t.n_rows() as usize)
            .ok_or_else(|| WeightError::Missing(TOKEN_EMBD.into()))?;
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
/// output head counting as one more), so a load onto GPUs reports as it uploads. The token
/// embedding reads the head's weight where a tied head lies in host memory, else its own copy
/// read from the file (see [`super::embedding`]).
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
    let mut built: Vec<AnyStage> = Vec::with_capacity(stages.len());
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
    let tied = model.source.tied_embeddings();
    let embedding = if tied && built.last().is_some_and(|s| s.head_in_host_memory()) {
        Embedding::SharedWithHead
    } else {
        let table = model.source.read_tensor(TOKEN_EMBD)?;
        let (rows, cols) = (model.config.n_vocab, model.config.n_embd);
        if (table.rows, table.cols) != (rows, cols) {
            return Err(WeightError::Shape {
                name: TOKEN_EMBD.into(),
                rows: table.rows,
                cols: table.cols,
                want_rows: rows,
                want_cols: cols,
            }
            .into());
        }
        Embedding::Owned(table)
    };
    Ok(
        Pipeline::new(Arc::clone(&model.config), embedding, tied, built)?
            .with_expert_scratch(scratch.into_inner()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_gguf::synth::{write_model, Arch, ModelSpec, WeightType};
    use llmd_kernels::backend::{CpuBackend, DeviceMemory};
    use llmd_kernels::cpu::ThreadPool;

    /// The lines of `/proc/self/smaps` that head a mapping of `path`.
    fn mappings_of(path: &Path) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let name = path.to_str().expect("a UTF-8 temporary path");
        smaps
            .lines()
            .filter(|l| l.ends_with(name))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_loaded_model_keeps_no_mapping_of_its_file_beside_its_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resident.gguf");
        let spec = ModelSpec {
            layers: Some(2),
            ty: WeightType::Q4_K,
            seed: 11,
            threads: Some(1),
            ..ModelSpec::new(Arch::Llama)
        };
        write_model(&spec, &path).unwrap();
        let model = OpenedModel::open(&path).unwrap();
        assert!(!model.source.file.is_mapped());
        let memory = DeviceMemory::new(1 << 30);
        let pool = Arc::new(ThreadPool::new(1).unwrap());
        let backend = StageBackend::Cpu(Arc::new(CpuBackend::new("cpu:0", memory, pool)));
        let stages = vec![StageSpec {
            backend,
            layers: 0..model.config.n_layer,
            head: true,
        }];
        let pipeline = build_pipeline(&model, stages, 8, 1, |_, _| {}).unwrap();
        assert!(pipeline.stages()[0].weight_bytes() > 0);
        assert_eq!(
            mappings_of(&path),
            Vec::<String>::new(),
            "the model's file is mapped beside its owned weights"
        );
        // The weights are the daemon's own: the file may go without the model noticing.
        std::fs::remove_file(&path).unwrap();
        drop(pipeline);
    }
}
