//! The errors the GGUF reader reports. Every variant about file content names the byte offset
//! where the problem is and, where there is one, the metadata key or tensor name.

use std::path::PathBuf;

use llmd_quant::GgmlType;

/// Why a GGUF file (or byte buffer) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, sized or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF` (or the file is shorter). The bytes found are
    /// deliberately not kept: the daemon may be able to read files its client cannot, and an
    /// error must never echo a file's content.
    #[error("not a GGUF file (it does not begin with the GGUF magic)")]
    BadMagic,
    /// The path names something other than a regular file (a directory, a FIFO, a device or a
    /// socket). Refused before the file is opened for reading, since opening or reading such
    /// things can block for ever (a FIFO without a writer) or have side effects (devices).
    #[error("cannot read {path}: it is {kind}, not a regular file")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO (named pipe)", ...).
        kind: &'static str,
    },
    /// The version is not 2 or 3 (version 1 used 32-bit counts and is long obsolete).
    #[error("GGUF version {version} at byte 4 is not supported (llmd reads versions 2 and 3)")]
    UnsupportedVersion {
        /// The version number as read (little-endian).
        version: u32,
    },
    /// The version field reads as a byte-swapped 2 or 3: a big-endian file.
    #[error("big-endian GGUF files are not supported (version field at byte 4 is byte-swapped)")]
    BigEndian,
    /// The input ends before a field that must be there.
    #[error(
        "truncated at byte {offset} while reading {what}: need {needed} bytes, {available} left"
    )]
    Truncated {
        /// Where the field starts.
        offset: u64,
        /// What was being read (e.g. `value of key "general.name"`).
        what: String,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the input.
        available: u64,
    },
    /// A count (keys, tensors, array elements) is larger than the bytes left could hold.
    #[error("{what} at byte {offset}: count {count} cannot fit in the {available} bytes left")]
    CountTooLarge {
        /// Where the count is stored.
        offset: u64,
        /// What is being counted.
        what: String,
        /// The count as stored.
        count: u64,
        /// Bytes left after the count.
        available: u64,
    },
    /// A key, tensor name or string value is not valid UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: u64,
        /// Which string.
        what: String,
    },
    /// A metadata value has a type tag GGUF does not define.
    #[error("metadata key {key:?}: unknown value type {type_id} at byte {offset}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// Where the type tag is.
        offset: u64,
        /// The tag as read.
        type_id: u32,
    },
    /// Arrays of arrays nested deeper than [`MAX_ARRAY_DEPTH`](super::MAX_ARRAY_DEPTH).
    #[error("metadata key {key:?}: arrays nested more than {max} deep at byte {offset}")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// Where the too-deep array starts.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// A bool value that is neither 0 nor 1.
    #[error("metadata key {key:?}: invalid bool byte {value} at byte {offset}")]
    InvalidBool {
        /// The key.
        key: String,
        /// Where the byte is.
        offset: u64,
        /// The byte.
        value: u8,
    },
    /// The same key appears twice.
    #[error("duplicate metadata key {key:?} at byte {offset}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where the second occurrence starts.
        offset: u64,
    },
    /// `general.alignment` is not a nonzero power of two stored as u32.
    #[error("general.alignment at byte {offset}: {reason}")]
    BadAlignment {
        /// Where the value is.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor has more than four dimensions (or none).
    #[error("tensor {name:?} at byte {offset}: {n_dims} dimensions (must be 1 to 4)")]
    BadDimCount {
        /// The tensor.
        name: String,
        /// Where the dimension count is.
        offset: u64,
        /// The count as read.
        n_dims: u32,
    },
    /// A tensor dimension is zero.
    #[error("tensor {name:?} at byte {offset}: dimension {index} is zero")]
    ZeroDim {
        /// The tensor.
        name: String,
        /// Where the dimension is.
        offset: u64,
        /// Which dimension (0 is the innermost).
        index: usize,
    },
    /// A tensor type id GGML does not define.
    #[error("tensor {name:?} at byte {offset}: unknown tensor type id {id}")]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// Where the type id is.
        offset: u64,
        /// The id as read.
        id: u32,
    },
    /// A tensor's element count or byte size overflows 64 bits.
    #[error("tensor {name:?} at byte {offset}: element count or size overflows")]
    SizeOverflow {
        /// The tensor.
        name: String,
        /// Where the tensor info starts.
        offset: u64,
    },
    /// A tensor's rows are not a whole number of its type's blocks.
    #[error(
        "tensor {name:?} at byte {offset}: row of {row} elements is not a whole number of {ty} blocks ({block} elements each)"
    )]
    PartialBlock {
        /// The tensor.
        name: String,
        /// Where the dimensions are.
        offset: u64,
        /// The row length (dimension 0).
        row: u64,
        /// The tensor type.
        ty: GgmlType,
        /// Elements per block of that type.
        block: usize,
    },
    /// Two tensors have the same name.
    #[error("duplicate tensor name {name:?} at byte {offset}")]
    DuplicateTensor {
        /// The name.
        name: String,
        /// Where the second tensor info starts.
        offset: u64,
    },
    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error("tensor {name:?}: data offset {data_offset} (byte {offset}) is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// The tensor.
        name: String,
        /// Where the offset field is.
        offset: u64,
        /// The offset as read (relative to the data section).
        data_offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data extends past the end of the input (a complete file was required).
    #[error(
        "tensor {name:?}: data at bytes {start}..{end} lies outside the file ({file_size} bytes)"
    )]
    TensorOutOfRange {
        /// The tensor.
        name: String,
        /// Absolute start of its data.
        start: u64,
        /// Absolute end of its data.
        end: u64,
        /// Size of the input.
        file_size: u64,
    },
    /// Two tensors' data ranges overlap.
    #[error("tensor {name:?}: data at bytes {start}..{end} overlaps tensor {other:?}")]
    TensorOverlap {
        /// The tensor.
        name: String,
        /// Absolute start of its data.
        start: u64,
        /// Absolute end of its data.
        end: u64,
        /// The tensor it overlaps.
        other: String,
    },
    /// The data section would start past what 64 bits can address.
    #[error("data section offset overflows after the tensor infos ending at byte {offset}")]
    DataOffsetOverflow {
        /// Where the tensor infos end.
        offset: u64,
    },
    /// A tensor's data was asked for but the (partially downloaded) file does not hold it.
    #[error(
        "tensor {name:?}: data at bytes {start}..{end} is missing (file has {file_size} bytes)"
    )]
    TensorDataMissing {
        /// The tensor.
        name: String,
        /// Absolute start of its data.
        start: u64,
        /// Absolute end of its data.
        end: u64,
        /// Size of the file.
        file_size: u64,
    },
    /// A tensor uses a type llmd cannot compute with.
    #[error("unsupported tensor type {ty} in tensor {name:?}")]
    UnsupportedTensorType {
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
    /// No tensor has the requested name.
    #[error("no tensor named {0:?}")]
    NoSuchTensor(String),
    /// The file was opened to be read through its descriptor ([`crate::GgufFile::open_unmapped`]):
    /// its tensor data is not in memory to be borrowed, only read
    /// ([`crate::GgufFile::read_tensor_data`]).
    #[error("tensor {name:?}: the file is read through its descriptor, not mapped")]
    NotMapped {
        /// The tensor.
        name: String,
    },
    /// The file opened earlier is no longer the file that was opened: it was truncated,
    /// rewritten or modified in place since (its size, modification or change time differ).
    /// Renaming or deleting it is not a change (the open descriptor still reads the same bytes).
    #[error("the model file {path} changed since it was loaded ({what}); load it again")]
    Changed {
        /// The file.
        path: PathBuf,
        /// What differs, e.g. "its size went from 1000 to 10 bytes".
        what: String,
    },
}
