//! The backend a stage is built on, with its type chosen at run time: the CPU backend for `cpu:N`
//! devices, the CUDA backend for `cuda:N`. Stages are generic over [`Backend`]; this is the one
//! place that picks the concrete type, so loading and re-splitting stay device-agnostic.

use std::ops::Range;
use std::sync::Arc;

use llmd_kernels::backend::{Backend, CpuBackend, CudaBackend};

use super::config::ModelConfig;
use super::pipeline::PipelineStage;
use super::stage::Stage;
use super::weights::{TensorSource, WeightError};

/// A device's backend, shared by the stages of one model on that device.
#[derive(Clone)]
pub enum StageBackend {
    /// Host memory and cores.
    Cpu(Arc<CpuBackend>),
    /// An NVIDIA GPU.
    Cuda(Arc<CudaBackend>),
}

impl StageBackend {
    /// The device's name.
    pub fn device_name(&self) -> &str {
        match self {
            StageBackend::Cpu(b) => b.device_name(),
            StageBackend::Cuda(b) => b.device_name(),
        }
    }

    /// Loads `layers` (and the head if `head`) from `source` onto this device as a pipeline
    /// stage (see [`Stage::load`]); `loaded()` is called after each layer and the head.
    #[allow(clippy::too_many_arguments)]
    pub fn load_stage<S: TensorSource + ?Sized>(
        &self,
        config: Arc<ModelConfig>,
        source: &S,
        layers: Range<usize>,
        head: bool,
        max_batch: usize,
        max_logit_rows: usize,
        loaded: &mut dyn FnMut(),
    ) -> Result<Box<dyn PipelineStage>, WeightError> {
        Ok(match self {
            StageBackend::Cpu(b) => Box::new(Stage::load(
                Arc::clone(b),
                config,
                source,
                layers,
                head,
                max_batch,
                max_logit_rows,
                loaded,
            )?),
            StageBackend::Cuda(b) => Box::new(Stage::load(
                Arc::clone(b),
                config,
                source,
                layers,
                head,
                max_batch,
                max_logit_rows,
                loaded,
            )?),
        })
    }
}
