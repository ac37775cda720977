//! Transformer models: hyperparameters per architecture ([`config`]), weights on devices
//! ([`weights`]), read from the model file into owned memory ([`host_tensors`]), the forward pass
//! of one pipeline stage ([`stage`]) and what its head hands back ([`head_output`]), its
//! mixture-of-experts feed-forward block ([`moe`]) with its shared expert ([`shared_expert`]), CUDA graphs of its decode steps ([`graphs`]) and the
//! multi-device pipeline ([`pipeline`]).

pub mod backend;
pub mod batch;
pub mod config;
pub mod embedding;
pub mod graphs;
pub mod head_output;
pub mod host_tensors;
pub mod load;
pub mod moe;
pub mod parts;
pub mod pipeline;
pub mod placement;
pub mod plan;
pub mod resplit;
pub mod shared_expert;
pub mod stage;
pub mod weights;

pub use backend::{AnyPart, AnyStage, StageBackend};
pub use batch::{Batch, SeqId};
pub use config::{Arch, ModelConfig};
pub use head_output::{HeadOutput, RowRequest, RowResult};
pub use pipeline::{Pipeline, StageOverlap};
pub use stage::{ForwardError, Stage};
