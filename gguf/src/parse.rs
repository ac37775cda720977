//! The GGUF header parser: magic, version, metadata key/values, tensor infos and the data
//! section offset, read from a byte slice that may come from anywhere (a hostile file included).
//!
//! Every length and count is checked against the bytes that remain *before* anything is
//! allocated, so memory use is bounded by a small multiple of the input size; every size
//! computation is checked for overflow; nothing recurses deeper than [`MAX_ARRAY_DEPTH`].

use std::collections::{HashMap, HashSet};

use llmd_quant::GgmlType;

use super::error::GgufError;
use super::value::{MetadataArray, MetadataValue, ValueType};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of tensor data when `general.alignment` is absent (GGML's default).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;
/// How deep arrays of arrays may nest. Real files never nest; the limit keeps the recursive
/// parser's stack use bounded on hostile input.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Bytes of the fixed header: magic, version, tensor count, metadata count.
pub const FIXED_HEADER_BYTES: u64 = 4 + 4 + 8 + 8;

/// The metadata key that sets the data alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";

/// Whether the tensor data must be present in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataCheck {
    /// Every tensor's data must lie inside the input (a complete file).
    Complete,
    /// The header must be complete, but tensor data may be cut off (a partial download);
    /// tensors whose data is not fully present are listed in [`GgufHeader::missing`].
    HeaderOnly,
}

/// One metadata key/value pair.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataEntry {
    /// The key, e.g. `"llama.block_count"`.
    pub key: String,
    /// The value.
    pub value: MetadataValue,
    /// Byte offset of the value's type tag in the file, for error messages.
    pub offset: u64,
}

/// The metadata of a file: its key/value pairs in file order, with lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// The pairs in the order the file stores them.
    entries: Vec<MetadataEntry>,
    /// Key to index into `entries`.
    index: HashMap<String, usize>,
}

impl Metadata {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.entry(key).map(|e| &e.value)
    }

    /// The whole entry of `key` (value and offset), if present.
    pub fn entry(&self, key: &str) -> Option<&MetadataEntry> {
        self.index.get(key).map(|&i| &self.entries[i])
    }

    /// The entries in file order.
    pub fn entries(&self) -> &[MetadataEntry] {
        &self.entries
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds an entry; returns it back if the key is already present.
    pub(crate) fn insert(&mut self, entry: MetadataEntry) -> Result<(), MetadataEntry> {
        if self.index.contains_key(&entry.key) {
            return Err(entry);
        }
        self.index.insert(entry.key.clone(), self.entries.len());
        self.entries.push(entry);
        Ok(())
    }
}

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `"blk.0.attn_q.weight"`.
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the row length (contiguous), 1 to 4 entries.
    pub dims: Vec<u64>,
    /// The element type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section, as stored.
    pub offset: u64,
    /// Absolute byte offset of the data in the file.
    pub data_start: u64,
    /// Exact size of the data in bytes, as the type and shape require.
    pub n_bytes: u64,
    /// Byte offset of this tensor info in the file, for error messages.
    pub info_offset: u64,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.dims.iter().product()
    }

    /// Absolute end (exclusive) of the data in the file.
    pub fn data_end(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.data_start + self.n_bytes
    }

    /// Number of rows (product of every dimension but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// Everything in a GGUF file except the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata.
    pub metadata: Metadata,
    /// The tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// The alignment of the data section and of every tensor's offset.
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    /// Size of the input the header was parsed from.
    pub file_size: u64,
    /// Indices into `tensors` of the tensors whose data is not fully present in the input
    /// (always empty with [`DataCheck::Complete`]).
    pub missing: Vec<usize>,
}

impl GgufHeader {
    /// Parses a complete GGUF file held in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        Self::parse_with(bytes, DataCheck::Complete)
    }

    /// Parses the header in `bytes`, checking tensor data presence as `check` says.
    pub fn parse_with(bytes: &[u8], check: DataCheck) -> Result<Self, GgufError> {
        Self::parse_prefix(bytes, bytes.len() as u64, check)
    }

    /// Parses the header in `prefix`, the first bytes of a file of `file_size` bytes (a file
    /// read through its descriptor rather than mapped), checking tensor data presence against
    /// `file_size` as `check` says. A prefix that ends inside the header fails as a truncated
    /// input would ([`GgufError::Truncated`], [`GgufError::CountTooLarge`]): the caller reads
    /// more and tries again.
    pub fn parse_prefix(
        prefix: &[u8],
        file_size: u64,
        check: DataCheck,
    ) -> Result<Self, GgufError> {
        let bytes = prefix;
        let mut r = Reader { buf: bytes, pos: 0 };
        if r.buf.get(..4) != Some(&GGUF_MAGIC[..]) {
            return Err(GgufError::BadMagic);
        }
        r.pos = 4;
        let version = r.u32(|| "the version".into())?;
        match version {
            2 | 3 => {}
            0x0200_0000 | 0x0300_0000 => return Err(GgufError::BigEndian),
            _ => return Err(GgufError::UnsupportedVersion { version }),
        }
        let n_tensors_at = r.pos as u64;
        let n_tensors = r.u64(|| "the tensor count".into())?;
        let n_kv_at = r.pos as u64;
        let n_kv = r.u64(|| "the metadata count".into())?;

        // Each key/value takes at least 8 (key length) + 4 (type) + 1 (smallest value) bytes.
        r.check_count(n_kv, 13, n_kv_at, || "metadata count".into())?;
        let mut metadata = Metadata::default();
        for i in 0..n_kv {
            let entry_at = r.pos as u64;
            let key = r.string(|| format!("key of metadata entry {i}"))?;
            let value_at = r.pos as u64;
            let type_id = r.u32(|| format!("type of key {key:?}"))?;
            let value = r.value(type_id, value_at, &key, 0)?;
            let entry = MetadataEntry {
                key,
                value,
                offset: value_at,
            };
            if let Err(dup) = metadata.insert(entry) {
                return Err(GgufError::DuplicateKey {
                    key: dup.key,
                    offset: entry_at,
                });
            }
        }

        let alignment = match metadata.entry(KEY_ALIGNMENT) {
            None => DEFAULT_ALIGNMENT,
            Some(e) => match e.value {
                MetadataValue::U32(a) if a != 0 && a.is_power_of_two() => u64::from(a),
                MetadataValue::U32(a) => {
                    return Err(GgufError::BadAlignment {
                        offset: e.offset,
                        reason: format!("{a} is not a nonzero power of two"),
                    })
                }
                ref other => {
                    return Err(GgufError::BadAlignment {
                        offset: e.offset,
                        reason: format!("stored as {}, must be u32", other.type_description()),
                    })
                }
            },
        };

        // Each tensor info takes at least 8 (name length) + 4 (n_dims) + 8 (one dim)
        // + 4 (type) + 8 (offset) bytes.
        r.check_count(n_tensors, 32, n_tensors_at, || "tensor count".into())?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        let mut names: HashSet<String> = HashSet::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let info = r.tensor_info(i, alignment)?;
            if !names.insert(info.name.clone()) {
                return Err(GgufError::DuplicateTensor {
                    name: info.name,
                    offset: info.info_offset,
                });
            }
            tensors.push(info);
        }

        let end_of_infos = r.pos as u64;
        let data_offset =
            align_up(end_of_infos, alignment).ok_or(GgufError::DataOffsetOverflow {
                offset: end_of_infos,
            })?;
        for t in &mut tensors {
            let start =
                data_offset
                    .checked_add(t.offset)
                    .ok_or_else(|| GgufError::SizeOverflow {
                        name: t.name.clone(),
                        offset: t.info_offset,
                    })?;
            start
                .checked_add(t.n_bytes)
                .ok_or_else(|| GgufError::SizeOverflow {
                    name: t.name.clone(),
                    offset: t.info_offset,
                })?;
            t.data_start = start;
        }

        check_overlaps(&tensors)?;

        let mut missing = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            if t.data_end() > file_size {
                match check {
                    DataCheck::Complete => {
                        return Err(GgufError::TensorOutOfRange {
                            name: t.name.clone(),
                            start: t.data_start,
                            end: t.data_end(),
                            file_size,
                        })
                    }
                    DataCheck::HeaderOnly => missing.push(i),
                }
            }
        }

        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size,
            missing,
        })
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Fails with "unsupported tensor type X in tensor Y" for the first tensor whose type llmd
    /// cannot compute with.
    pub fn check_supported(&self) -> Result<(), GgufError> {
        match self.tensors.iter().find(|t| !t.ty.is_supported()) {
            Some(t) => Err(GgufError::UnsupportedTensorType {
                name: t.name.clone(),
                ty: t.ty,
            }),
            None => Ok(()),
        }
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Fails if any two tensors' data ranges overlap.
fn check_overlaps(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].data_start);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if b.data_start < a.data_end() {
            return Err(GgufError::TensorOverlap {
                name: b.name.clone(),
                start: b.data_start,
                end: b.data_end(),
                other: a.name.clone(),
            });
        }
    }
    Ok(())
}

/// A cursor over the input that checks every read against the bytes left.
struct Reader<'a> {
    /// The whole input.
    buf: &'a [u8],
    /// The next byte to read.
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Bytes left after the cursor.
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// Takes `n` bytes, or reports what was being read.
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                what: what(),
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        // n <= remaining, which fits in usize.
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    /// Takes exactly `N` bytes as an array.
    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in the bytes left.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        at: u64,
        what: impl FnOnce() -> String,
    ) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::CountTooLarge {
                offset: at,
                what: what(),
                count,
                available: self.remaining(),
            }),
        }
    }

    /// Reads a u64-length-prefixed UTF-8 string.
    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let at = self.pos as u64;
        let bytes = self.take(len, &what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                offset: at,
                what: what(),
            }),
        }
    }

    /// Reads one value of type `type_id` (whose tag was at `tag_at`) for `key`.
    fn value(
        &mut self,
        type_id: u32,
        tag_at: u64,
        key: &str,
        depth: usize,
    ) -> Result<MetadataValue, GgufError> {
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_owned(),
            offset: tag_at,
            type_id,
        })?;
        let what = || format!("value of key {key:?}");
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => MetadataValue::Bool(self.bool(key)?),
            ValueType::String => MetadataValue::String(self.string(what)?),
            ValueType::Array => MetadataValue::Array(self.array_value(key, depth)?),
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool, GgufError> {
        let at = self.pos as u64;
        let [b] = self.array(|| format!("value of key {key:?}"))?;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::InvalidBool {
                key: key.to_owned(),
                offset: at,
                value,
            }),
        }
    }

    /// Reads an array (element type, count, elements) for `key`, nested `depth` deep.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<MetadataArray, GgufError> {
        let at = self.pos as u64;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.to_owned(),
                offset: at,
                max: MAX_ARRAY_DEPTH,
            });
        }
        let elem_id = self.u32(|| format!("array element type of key {key:?}"))?;
        let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_owned(),
            offset: at,
            type_id: elem_id,
        })?;
        let count_at = self.pos as u64;
        let count = self.u64(|| format!("array length of key {key:?}"))?;
        self.check_count(count, elem.min_encoded_size(), count_at, || {
            format!("array of key {key:?}")
        })?;
        // The check above bounds count by the input length, so it fits in usize.
        let n = count as usize;
        let what = || format!("array elements of key {key:?}");
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const SIZE: usize = std::mem::size_of::<$t>();
                let bytes = self.take(count * SIZE as u64, what)?;
                MetadataArray::$variant(
                    bytes
                        .chunks_exact(SIZE)
                        .map(|c| {
                            let mut a = [0u8; SIZE];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            ValueType::U8 => MetadataArray::U8(self.take(count, what)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(key)?);
                }
                MetadataArray::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(|| format!("element {i} of key {key:?}"))?);
                }
                MetadataArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                MetadataArray::Array(v)
            }
        })
    }

    /// Reads tensor info number `i` and checks its shape, type, size and alignment.
    fn tensor_info(&mut self, i: u64, alignment: u64) -> Result<TensorInfo, GgufError> {
        let info_offset = self.pos as u64;
        let name = self.string(|| format!("name of tensor {i}"))?;
        let dims_at = self.pos as u64;
        let n_dims = self.u32(|| format!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                name,
                offset: dims_at,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims as usize {
            let at = self.pos as u64;
            let v = self.u64(|| format!("dimension {d} of tensor {name:?}"))?;
            if v == 0 {
                return Err(GgufError::ZeroDim {
                    name,
                    offset: at,
                    index: d,
                });
            }
            dims.push(v);
        }
        let type_at = self.pos as u64;
        let type_id = self.u32(|| format!("type of tensor {name:?}"))?;
        let ty = GgmlType::from_id(type_id).map_err(|_| GgufError::UnknownTensorType {
            name: name.clone(),
            offset: type_at,
            id: type_id,
        })?;
        let offset_at = self.pos as u64;
        let offset = self.u64(|| format!("data offset of tensor {name:?}"))?;

        let overflow = || GgufError::SizeOverflow {
            name: name.clone(),
            offset: info_offset,
        };
        let mut n_rows: u64 = 1;
        for &d in &dims[1..] {
            n_rows = n_rows.checked_mul(d).ok_or_else(overflow)?;
        }
        n_rows.checked_mul(dims[0]).ok_or_else(overflow)?;
        let row_bytes = match ty.row_bytes(dims[0]) {
            Some(b) => b,
            None if dims[0] % ty.block_elems() as u64 != 0 => {
                return Err(GgufError::PartialBlock {
                    name,
                    offset: dims_at,
                    row: dims[0],
                    ty,
                    block: ty.block_elems(),
                })
            }
            None => return Err(overflow()),
        };
        let n_bytes = row_bytes.checked_mul(n_rows).ok_or_else(overflow)?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name,
                offset: offset_at,
                data_offset: offset,
                alignment,
            });
        }
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            data_start: 0,
            n_bytes,
            info_offset,
        })
    }
}
