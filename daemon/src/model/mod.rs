//! Transformer models: hyperparameters per architecture ([`config`]), weights on devices
//! ([`weights`]), the forward pass of one pipeline stage ([`stage`]) and the multi-device
//! pipeline ([`pipeline`]).

pub mod backend;
pub mod batch;
pub mod config;
pub mod load;
pub mod parts;
pub mod pipeline;
pub mod placement;
pub mod plan;
pub mod resplit;
pub mod stage;
pub mod weights;

pub use backend::StageBackend;
pub use batch::{Batch, SeqId};
pub use config::{Arch, ModelConfig};
pub use pipeline::{Pipeline, PipelineStage};
pub use stage::{ForwardError, Stage};
