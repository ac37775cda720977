//! The GGUF writer (version 3): metadata of every value type, tensor infos, and tensor data
//! streamed in order with alignment padding, so models far larger than memory can be written.
//!
//! Usage: add metadata and tensor infos to a [`GgufWriter`], call [`GgufWriter::start`] to write
//! the header, then hand each tensor's bytes to [`TensorStream::write_tensor`] in the order the
//! infos were added, and [`TensorStream::finish`]. Stopping after `start` leaves a header-only
//! file (what a partial download looks like).

use std::collections::HashSet;
use std::io::Write;

use llmd_quant::GgmlType;

use super::parse::{align_up, DEFAULT_ALIGNMENT, GGUF_MAGIC, KEY_ALIGNMENT, MAX_DIMS};
use super::value::{MetadataArray, MetadataValue};

/// The GGUF version the writer produces.
pub const WRITE_VERSION: u32 = 3;

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing to the output failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    /// A metadata key was added twice.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A tensor name was added twice.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// A tensor shape is not valid for its type.
    #[error("tensor {name:?}: {reason}")]
    BadShape {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The alignment is not a nonzero power of two.
    #[error("alignment {0} is not a nonzero power of two")]
    BadAlignment(u32),
    /// Tensor data of the wrong size was given.
    #[error("tensor {name:?}: got {got} bytes of data, its type and shape need {expected}")]
    WrongSize {
        /// The tensor.
        name: String,
        /// Bytes required.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// More tensor data was written than tensors were declared.
    #[error("all {0} declared tensors have already been written")]
    TooManyTensors(usize),
    /// `finish` was called before every tensor was written.
    #[error("only {written} of {declared} tensors were written")]
    Incomplete {
        /// Tensors written.
        written: usize,
        /// Tensors declared.
        declared: usize,
    },
}

/// A tensor declared in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// The tensor's name.
    pub name: String,
    /// Dimensions in GGML order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// The element type.
    pub ty: GgmlType,
    /// Exact data size in bytes.
    pub n_bytes: u64,
    /// Offset relative to the data section.
    pub offset: u64,
}

/// Collects metadata and tensor infos, then writes the header.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    /// Metadata in the order added.
    metadata: Vec<(String, MetadataValue)>,
    /// Keys added so far, to reject duplicates.
    keys: HashSet<String>,
    /// Tensors in the order added (and the order their data must be written).
    tensors: Vec<PlannedTensor>,
    /// Names added so far, to reject duplicates.
    names: HashSet<String>,
    /// Alignment of the data section and each tensor.
    alignment: u64,
    /// Size of the data section so far (padded).
    data_size: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty writer with the default 32-byte alignment.
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT,
            data_size: 0,
        }
    }

    /// Sets the data alignment and records it as `general.alignment`. Must be called before
    /// any tensor is added.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), WriteError> {
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(WriteError::BadAlignment(alignment));
        }
        if !self.tensors.is_empty() {
            return Err(WriteError::BadShape {
                name: self.tensors[0].name.clone(),
                reason: "alignment must be set before tensors are added".into(),
            });
        }
        self.add_metadata(KEY_ALIGNMENT, MetadataValue::U32(alignment))?;
        self.alignment = u64::from(alignment);
        Ok(())
    }

    /// Adds a metadata key/value.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: MetadataValue,
    ) -> Result<(), WriteError> {
        let key = key.into();
        if !self.keys.insert(key.clone()) {
            return Err(WriteError::DuplicateKey(key));
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declares a tensor of type `ty` and dimensions `dims` (GGML order: `dims[0]` is the row
    /// length). Data must later be written in declaration order.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<&PlannedTensor, WriteError> {
        let name = name.into();
        let bad = |reason: String| WriteError::BadShape {
            name: name.clone(),
            reason,
        };
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(bad(format!("{} dimensions (must be 1 to 4)", dims.len())));
        }
        if dims.contains(&0) {
            return Err(bad("a dimension is zero".into()));
        }
        let row = ty.row_bytes(dims[0]).ok_or_else(|| {
            bad(format!(
                "row of {} elements is not a whole number of {ty} blocks ({} elements)",
                dims[0],
                ty.block_elems()
            ))
        })?;
        let n_bytes = dims[1..]
            .iter()
            .try_fold(row, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("size overflows".into()))?;
        let next = self
            .data_size
            .checked_add(n_bytes)
            .and_then(|end| align_up(end, self.alignment))
            .ok_or_else(|| bad("data section size overflows".into()))?;
        if !self.names.insert(name.clone()) {
            return Err(WriteError::DuplicateTensor(name));
        }
        self.tensors.push(PlannedTensor {
            name,
            dims: dims.to_vec(),
            ty,
            n_bytes,
            offset: self.data_size,
        });
        self.data_size = next;
        Ok(&self.tensors[self.tensors.len() - 1])
    }

    /// The tensors declared so far.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// The header bytes: everything up to (and including the padding before) the data section.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut out, value);
        }
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = align_up(out.len() as u64, self.alignment).unwrap_or(out.len() as u64);
        out.resize(padded as usize, 0);
        out
    }

    /// Total size of the file once every tensor is written.
    pub fn file_size(&self) -> u64 {
        self.header_bytes().len() as u64 + self.data_size
    }

    /// Writes the header to `out` and returns the stream that takes the tensor data.
    pub fn start<W: Write>(self, mut out: W) -> Result<TensorStream<W>, WriteError> {
        out.write_all(&self.header_bytes())?;
        Ok(TensorStream {
            out,
            tensors: self.tensors,
            alignment: self.alignment,
            next: 0,
        })
    }
}

/// Takes tensor data in declaration order after the header has been written.
#[derive(Debug)]
pub struct TensorStream<W: Write> {
    /// The output.
    out: W,
    /// The declared tensors.
    tensors: Vec<PlannedTensor>,
    /// Data alignment.
    alignment: u64,
    /// Index of the next tensor to write.
    next: usize,
}

impl<W: Write> TensorStream<W> {
    /// The tensor whose data is expected next, or `None` when all are written.
    pub fn next_tensor(&self) -> Option<&PlannedTensor> {
        self.tensors.get(self.next)
    }

    /// Writes the next tensor's data (exactly its size) and the padding after it.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let t = self
            .tensors
            .get(self.next)
            .ok_or(WriteError::TooManyTensors(self.tensors.len()))?;
        if data.len() as u64 != t.n_bytes {
            return Err(WriteError::WrongSize {
                name: t.name.clone(),
                expected: t.n_bytes,
                got: data.len() as u64,
            });
        }
        self.out.write_all(data)?;
        let pad = align_up(t.n_bytes, self.alignment).unwrap_or(t.n_bytes) - t.n_bytes;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.next += 1;
        Ok(())
    }

    /// A writer for the next tensor's data in pieces (for tensors too big to hold in memory);
    /// call [`TensorWriter::finish`] after writing exactly its size.
    pub fn tensor_writer(&mut self) -> Result<TensorWriter<'_, W>, WriteError> {
        if self.next >= self.tensors.len() {
            return Err(WriteError::TooManyTensors(self.tensors.len()));
        }
        Ok(TensorWriter {
            stream: self,
            written: 0,
        })
    }

    /// Checks every tensor was written, flushes and returns the output.
    pub fn finish(mut self) -> Result<W, WriteError> {
        if self.next != self.tensors.len() {
            return Err(WriteError::Incomplete {
                written: self.next,
                declared: self.tensors.len(),
            });
        }
        self.out.flush()?;
        Ok(self.out)
    }

    /// Flushes and returns the output without requiring every tensor (a header-only or
    /// partial file).
    pub fn finish_partial(mut self) -> Result<W, WriteError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Takes one tensor's data in pieces; see [`TensorStream::tensor_writer`].
#[derive(Debug)]
pub struct TensorWriter<'a, W: Write> {
    /// The stream the tensor belongs to.
    stream: &'a mut TensorStream<W>,
    /// Bytes written so far.
    written: u64,
}

impl<W: Write> TensorWriter<'_, W> {
    /// The tensor being written.
    fn tensor(&self) -> &PlannedTensor {
        &self.stream.tensors[self.stream.next]
    }

    /// Checks the whole tensor was written and writes the padding after it.
    pub fn finish(self) -> Result<(), WriteError> {
        let t = self.tensor();
        if self.written != t.n_bytes {
            return Err(WriteError::WrongSize {
                name: t.name.clone(),
                expected: t.n_bytes,
                got: self.written,
            });
        }
        let n = t.n_bytes;
        let pad = align_up(n, self.stream.alignment).unwrap_or(n) - n;
        self.stream.out.write_all(&vec![0u8; pad as usize])?;
        self.stream.next += 1;
        Ok(())
    }
}

impl<W: Write> Write for TensorWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let t = self.tensor();
        if self.written + buf.len() as u64 > t.n_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "tensor {:?}: more than its {} bytes written",
                    t.name, t.n_bytes
                ),
            ));
        }
        let n = self.stream.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.out.flush()
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(b) => out.push(u8::from(*b)),
        MetadataValue::String(s) => put_string(out, s),
        MetadataValue::Array(a) => put_array(out, a),
    }
}

/// Writes an array's element type, count and elements.
fn put_array(out: &mut Vec<u8>, a: &MetadataArray) {
    out.extend_from_slice(&a.element_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => each!(v),
        MetadataArray::U16(v) => each!(v),
        MetadataArray::I16(v) => each!(v),
        MetadataArray::U32(v) => each!(v),
        MetadataArray::I32(v) => each!(v),
        MetadataArray::F32(v) => each!(v),
        MetadataArray::U64(v) => each!(v),
        MetadataArray::I64(v) => each!(v),
        MetadataArray::F64(v) => each!(v),
        MetadataArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        MetadataArray::String(v) => v.iter().for_each(|s| put_string(out, s)),
        MetadataArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}
