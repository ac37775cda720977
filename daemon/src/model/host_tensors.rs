//! Tensors read from a model file into memory the daemon owns, one part at a time: what a device
//! uploads from (and then drops), what a spilled part of a live re-split keeps until it lands,
//! and the host copy of the token embedding table. The file is read through its descriptor, never
//! mapped, so a file truncated or rewritten after the load can only make a later read fail
//! cleanly ([`llmd_gguf::GgufError::Changed`]); it never reaches weights already read.

use llmd_kernels::backend::HostTensor;
use llmd_kernels::quant::GgmlType;

use super::config::ModelConfig;
use super::weights::{Slot, TensorSource, WeightError};

/// One tensor's bytes in host memory, as in the file.
#[derive(Debug)]
pub struct OwnedTensor {
    /// Its name in the model file.
    pub name: String,
    /// Its element type.
    pub ty: GgmlType,
    /// Rows (1 for a vector).
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// `rows * ty.row_bytes(cols)` bytes.
    pub data: Vec<u8>,
}

impl OwnedTensor {
    /// It as a view a device uploads from.
    pub fn host(&self) -> HostTensor<'_> {
        HostTensor {
            name: &self.name,
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
        }
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> u64 {
        self.data.len() as u64
    }
}

/// The tensors of one part, read into host memory.
#[derive(Debug, Default)]
pub struct HostTensors {
    /// The tensors, in the order they were read.
    tensors: Vec<OwnedTensor>,
}

impl HostTensors {
    /// Tensors read elsewhere, gathered.
    pub fn new(tensors: Vec<OwnedTensor>) -> Self {
        HostTensors { tensors }
    }

    /// Bytes they hold together.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(OwnedTensor::bytes).sum()
    }
}

impl TensorSource for HostTensors {
    fn tensor(&self, name: &str) -> Option<HostTensor<'_>> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .map(OwnedTensor::host)
    }
}

/// Where the weights of a part come from when it is loaded, or read again when a live re-split
/// spills it: the model file (read through its descriptor, checked unchanged), or anything else
/// that can hand them over as owned host tensors.
pub trait PartSource: Send + Sync {
    /// The tensors of `slot` of `config`'s model (shape checks are the caller's).
    fn read_part(&self, config: &ModelConfig, slot: Slot) -> Result<HostTensors, WeightError>;
    /// Type, rows and elements per row of the tensor `name`, if the model has it.
    fn shape_of(&self, name: &str) -> Option<(GgmlType, usize, usize)>;
    /// Reads the tensor `name` into `dst` (exactly its size): straight into a device's buffer,
    /// so a large tensor is never in host memory twice.
    fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<(), WeightError>;
}
