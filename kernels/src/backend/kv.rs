//! KV caches as every backend lays them out: the element types a cache may hold (f16, llama.cpp's
//! default, or ggml's Q8_0 / Q4_0 blocks, like llama.cpp's `-ctk` / `-ctv`), the shape of one
//! layer's cache of one sequence with the checks both backends make on it, its size in bytes, and
//! the views through which a cache is copied between devices.
//!
//! Layout: `capacity` rows (positions) of `n_kv_heads * head_dim` keys, and as many values, each
//! row stored in its type as ggml stores a row of that type: f16 values, or blocks of 32 values
//! along the head dimension (so a head's keys are whole blocks, never sharing one with another
//! head). Keys and values may have different types.
//!
//! Rotation: like llama.cpp (`llama_kv_cache`'s `attn_rot_k` / `attn_rot_v`, on by default), a
//! quantized cache holds its keys and values rotated by an orthonormal Walsh-Hadamard matrix
//! ([`KvRotation`]), which spreads outliers over a block before quantization: keys (and the
//! queries dotted with them) in chunks of the largest power of two dividing the head dimension,
//! values in chunks of 64, the attention output rotated back. Rotation changes no exact result
//! (`H` is orthonormal and its own inverse), only the quantization error, so the bytes and the
//! logits agree with llama.cpp's.

use std::fmt;
use std::str::FromStr;

use half::f16;
use thiserror::Error;

use super::{shape, AttentionParams, BackendError, DeviceBytes};
use crate::quant::{GgmlType, QK};

/// The element type of a KV cache's keys or of its values.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// IEEE half floats (llama.cpp's default): 2 bytes a value.
    #[default]
    F16,
    /// ggml's Q8_0 blocks: 32 values in 34 bytes (`d * q`, q in -127..=127).
    Q8_0,
    /// ggml's Q4_0 blocks: 32 values in 18 bytes (`d * (q - 8)`, q in 0..=15).
    Q4_0,
}

/// A cache type that does not exist, or that does not fit a model's heads.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum KvTypeError {
    /// A name that is not a cache type.
    #[error("unknown KV cache type {0:?} (valid: f16, q8_0, q4_0)")]
    Unknown(String),
    /// Quantized caches hold whole blocks of 32 values per head.
    #[error(
        "a {ty} {what} cache needs a head dimension that is a multiple of {block} (ggml's block \
         size), but this model's heads have {head_dim} values: use f16"
    )]
    HeadDim {
        /// The type asked for.
        ty: KvType,
        /// "K" or "V".
        what: &'static str,
        /// Its block size.
        block: usize,
        /// The model's head dimension.
        head_dim: usize,
    },
}

impl KvType {
    /// Every cache type, the default first.
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// Its name, as ggml and llama.cpp's `-ctk` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The GGML tensor type of its storage.
    pub const fn ggml_type(self) -> GgmlType {
        match self {
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Values per block (1 for f16).
    pub const fn block_elems(self) -> usize {
        match self {
            KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => QK,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        self.ggml_type().block_bytes()
    }

    /// Whether it is one of ggml's quantized block formats.
    pub const fn is_quantized(self) -> bool {
        !matches!(self, KvType::F16)
    }

    /// Bytes of `values` values (a whole number of blocks), without overflow checks.
    fn bytes_of(self, values: u64) -> u64 {
        values / self.block_elems() as u64 * self.block_bytes() as u64
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for KvType {
    type Err = KvTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KvTypeError::Unknown(s.to_string()))
    }
}

/// The types of a cache's keys and of its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvTypes {
    /// Keys.
    pub k: KvType,
    /// Values.
    pub v: KvType,
}

impl KvTypes {
    /// llama.cpp's default: f16 keys and values.
    pub const F16: KvTypes = KvTypes {
        k: KvType::F16,
        v: KvType::F16,
    };

    /// Keys and values of the same type.
    pub const fn both(ty: KvType) -> Self {
        KvTypes { k: ty, v: ty }
    }

    /// Fails unless heads of `head_dim` values are whole blocks of both types.
    pub fn check_head_dim(&self, head_dim: usize) -> Result<(), KvTypeError> {
        for (ty, what) in [(self.k, "K"), (self.v, "V")] {
            if !head_dim.is_multiple_of(ty.block_elems()) {
                return Err(KvTypeError::HeadDim {
                    ty,
                    what,
                    block: ty.block_elems(),
                    head_dim,
                });
            }
        }
        Ok(())
    }

    /// Bytes of keys and values of one position of one layer with `width` values of each.
    fn bytes_per_position(&self, width: u64) -> u64 {
        self.k.bytes_of(width) + self.v.bytes_of(width)
    }
}

impl fmt::Display for KvTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "K {} / V {}", self.k, self.v)
    }
}

/// The Walsh-Hadamard rotations of a cache (see the module's documentation): the chunk size of
/// each rotated side, `None` where values are stored as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvRotation {
    /// Keys, and the queries dotted with them.
    pub k: Option<usize>,
    /// Values, and the attention output (rotated back).
    pub v: Option<usize>,
}

/// Smallest head dimension multiple llama.cpp rotates (`n_embd_head % 64 == 0`), and the chunk
/// size of its value rotation.
const ROTATION_MIN: usize = 64;

impl KvTypes {
    /// llama.cpp's rotations for heads of `head_dim` values: a quantized side is rotated when
    /// the head dimension is a multiple of 64, keys in chunks of the largest power of two that
    /// divides it, values in chunks of 64 (`build_input_k_rot` / `build_input_v_rot`).
    pub fn rotation(&self, head_dim: usize) -> KvRotation {
        let rotated = |ty: KvType| ty.is_quantized() && head_dim.is_multiple_of(ROTATION_MIN);
        KvRotation {
            k: rotated(self.k).then(|| 1 << head_dim.trailing_zeros()),
            v: rotated(self.v).then_some(ROTATION_MIN),
        }
    }
}

/// Bytes of one layer's KV cache for one sequence with room for `capacity` positions of
/// `n_kv_heads` heads of `head_dim` keys and values of `types`, the same on every backend.
/// `head_dim` must be a whole number of blocks of both types ([`KvTypes::check_head_dim`]).
pub fn kv_cache_bytes(capacity: usize, n_kv_heads: usize, head_dim: usize, types: KvTypes) -> u64 {
    capacity as u64 * types.bytes_per_position(n_kv_heads as u64 * head_dim as u64)
}

/// The shape of one layer's KV cache for one sequence, as every backend lays it out (see the
/// module's documentation). The checks every backend makes against a cache live here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KvShape {
    /// Positions it can hold.
    pub(crate) capacity: usize,
    /// Key/value heads.
    pub(crate) n_kv_heads: usize,
    /// Dimension of each head.
    pub(crate) head_dim: usize,
    /// Element types of keys and values.
    pub(crate) types: KvTypes,
}

impl KvShape {
    /// The shape, refused when a head is not whole blocks of its types or its size in bytes
    /// overflows.
    pub(crate) fn new(
        capacity: usize,
        n_kv_heads: usize,
        head_dim: usize,
        types: KvTypes,
    ) -> Result<Self, BackendError> {
        types
            .check_head_dim(head_dim)
            .map_err(|e| shape("alloc_kv", e.to_string()))?;
        capacity
            .checked_mul(n_kv_heads)
            .and_then(|v| v.checked_mul(head_dim))
            .and_then(|v| v.checked_mul(4))
            .ok_or_else(|| shape("alloc_kv", "size overflows".into()))?;
        Ok(KvShape {
            capacity,
            n_kv_heads,
            head_dim,
            types,
        })
    }

    /// Its Walsh-Hadamard rotations.
    pub(crate) fn rotation(&self) -> KvRotation {
        self.types.rotation(self.head_dim)
    }

    /// Values per position (of keys, and of values).
    pub(crate) fn width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Values of keys (and of values) the whole cache holds.
    pub(crate) fn values(&self) -> usize {
        self.capacity * self.width()
    }

    /// Bytes the cache takes.
    pub(crate) fn bytes(&self) -> u64 {
        kv_cache_bytes(self.capacity, self.n_kv_heads, self.head_dim, self.types)
    }

    /// Values of keys (and of values) in the first `len` positions; fails `op` past the capacity.
    pub(crate) fn values_of(&self, op: &'static str, len: usize) -> Result<usize, BackendError> {
        if len > self.capacity {
            return Err(shape(
                op,
                format!("{len} positions from a cache of {}", self.capacity),
            ));
        }
        Ok(len * self.width())
    }

    /// Bytes of keys and bytes of values in the first `len` positions; fails `op` past the
    /// capacity.
    pub(crate) fn bytes_of(
        &self,
        op: &'static str,
        len: usize,
    ) -> Result<(u64, u64), BackendError> {
        let values = self.values_of(op, len)? as u64;
        Ok((self.types.k.bytes_of(values), self.types.v.bytes_of(values)))
    }

    /// Fails `op` when a position lies past the capacity.
    pub(crate) fn check_positions(
        &self,
        op: &'static str,
        positions: &[u32],
    ) -> Result<(), BackendError> {
        match positions.iter().find(|&&pos| pos as usize >= self.capacity) {
            Some(bad) => Err(shape(
                op,
                format!("position {bad} beyond a cache of {}", self.capacity),
            )),
            None => Ok(()),
        }
    }

    /// Fails `op` unless attention with `p` fits the cache: the same KV heads of the same
    /// dimension, each serving a whole group of query heads.
    pub(crate) fn check_attention(
        &self,
        op: &'static str,
        p: &AttentionParams,
    ) -> Result<(), BackendError> {
        if p.n_kv_heads != self.n_kv_heads
            || p.head_dim != self.head_dim
            || p.n_kv_heads == 0
            || !p.n_heads.is_multiple_of(p.n_kv_heads)
        {
            return Err(shape(
                op,
                format!(
                    "{} heads of {} over a cache of {} KV heads of {}",
                    p.n_heads, p.head_dim, self.n_kv_heads, self.head_dim
                ),
            ));
        }
        Ok(())
    }
}

/// The first `len` positions of a KV cache as another device can copy them
/// ([`super::Backend::kv_view`]): the bytes as they lie, whatever their type, so a copy is exact.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    /// Positions.
    pub len: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Element types of keys and values (a copy keeps them).
    pub types: KvTypes,
    /// Keys: `len` rows of `n_kv_heads * head_dim` values of `types.k`.
    pub k: DeviceBytes<'a>,
    /// Values: `len` rows of as many values of `types.v`.
    pub v: DeviceBytes<'a>,
}

impl KvView<'_> {
    /// The shape of a cache of `capacity` positions holding this view, with the bytes of its
    /// keys and of its values; fails `op` unless the view holds exactly `len` positions of keys
    /// and values that fit `capacity`.
    pub(crate) fn check(
        &self,
        op: &'static str,
        capacity: usize,
    ) -> Result<(KvShape, u64, u64), BackendError> {
        let shape_of = KvShape::new(capacity, self.n_kv_heads, self.head_dim, self.types)?;
        let bytes = shape_of.bytes_of(op, self.len);
        match bytes {
            Ok((k, v)) if k == self.k.len as u64 && v == self.v.len as u64 => Ok((shape_of, k, v)),
            _ => Err(shape(
                op,
                format!(
                    "{} positions ({} key bytes, {} value bytes, {}) into a cache of {capacity}",
                    self.len, self.k.len, self.v.len, self.types
                ),
            )),
        }
    }
}

/// A KV cache copied out of a device: `len` positions of keys and values, the bytes as the
/// device held them.
#[derive(Clone, Debug)]
pub struct HostKv {
    /// Positions held.
    pub len: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Element types of keys and values.
    pub types: KvTypes,
    /// Keys: `len` rows of `n_kv_heads * head_dim` values of `types.k`.
    pub k: Vec<u8>,
    /// Values: `len` rows of as many values of `types.v`.
    pub v: Vec<u8>,
}

impl HostKv {
    /// Copies the first `len` positions of a cache another device holds into host memory.
    pub fn download(src: &KvView<'_>) -> Result<Self, BackendError> {
        src.check("download_kv", src.len)?;
        let mut k = vec![0u8; src.k.len];
        let mut v = vec![0u8; src.v.len];
        src.k.read_into(&mut k)?;
        src.v.read_into(&mut v)?;
        Ok(HostKv {
            len: src.len,
            n_kv_heads: src.n_kv_heads,
            head_dim: src.head_dim,
            types: src.types,
            k,
            v,
        })
    }

    /// It as a view for [`super::Backend::import_kv`].
    pub fn view(&self) -> KvView<'_> {
        KvView {
            len: self.len,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            types: self.types,
            k: DeviceBytes::host("host", &self.k),
            v: DeviceBytes::host("host", &self.v),
        }
    }
}

/// f16 values viewed as bytes.
pub(crate) fn f16_bytes(values: &[f16]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements and the slice covers exactly the
    // bytes of `values`, which it borrows.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

/// f16 values viewed as bytes, to be written.
pub(crate) fn f16_bytes_mut(values: &mut [f16]) -> &mut [u8] {
    let len = std::mem::size_of_val(values);
    // SAFETY: as `f16_bytes`, exclusively borrowed; every bit pattern is a valid f16.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttentionParams {
        AttentionParams {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0,
            window: None,
            softcap: None,
        }
    }

    #[test]
    fn kv_shapes_check_what_every_backend_checks() {
        let kv = KvShape::new(16, 2, 64, KvTypes::F16).expect("shape");
        assert_eq!((kv.width(), kv.values(), kv.bytes()), (128, 2048, 8192));
        assert!(
            KvShape::new(usize::MAX / 2, 2, 64, KvTypes::F16).is_err(),
            "size overflow"
        );
        assert_eq!(kv.values_of("view", 16).expect("whole cache"), 2048);
        assert!(kv.values_of("view", 17).is_err());
        assert!(kv.check_positions("store", &[0, 15]).is_ok());
        assert!(kv.check_positions("store", &[3, 16]).is_err());
        assert!(kv.check_attention("attention", &params(8, 2, 64)).is_ok());
        for bad in [params(8, 4, 64), params(8, 2, 32), params(7, 2, 64)] {
            assert!(kv.check_attention("attention", &bad).is_err(), "{bad:?}");
        }
        let empty = KvShape::new(16, 0, 64, KvTypes::F16).expect("shape");
        assert!(empty
            .check_attention("attention", &params(8, 0, 64))
            .is_err());
    }

    #[test]
    fn quantized_caches_take_their_blocks_bytes() {
        // 16 positions of 2 heads of 64: 2048 values of keys and of values.
        let q8 = KvShape::new(16, 2, 64, KvTypes::both(KvType::Q8_0)).expect("q8_0");
        assert_eq!(q8.bytes(), 2 * 2048 / 32 * 34);
        let mixed = KvTypes {
            k: KvType::Q8_0,
            v: KvType::Q4_0,
        };
        let m = KvShape::new(16, 2, 64, mixed).expect("mixed");
        assert_eq!(m.bytes(), 2048 / 32 * 34 + 2048 / 32 * 18);
        assert_eq!(
            m.bytes_of("view", 3).expect("3 rows"),
            (3 * 4 * 34, 3 * 4 * 18)
        );
        assert_eq!(kv_cache_bytes(16, 2, 64, mixed), m.bytes());
        // Against f16: q8_0 is 34/64 of it, q4_0 18/64.
        assert_eq!(kv_cache_bytes(64, 8, 128, KvTypes::F16), 64 * 8 * 128 * 4);
        assert_eq!(
            kv_cache_bytes(64, 8, 128, KvTypes::both(KvType::Q4_0)) * 64,
            kv_cache_bytes(64, 8, 128, KvTypes::F16) * 18
        );
    }

    #[test]
    fn quantized_caches_need_heads_of_whole_blocks() {
        let e = KvShape::new(16, 2, 80, KvTypes::both(KvType::Q8_0)).expect_err("80 % 32 != 0");
        assert!(e.to_string().contains("multiple of 32"), "{e}");
        let e = KvTypes {
            k: KvType::F16,
            v: KvType::Q4_0,
        }
        .check_head_dim(80)
        .expect_err("V");
        assert!(e.to_string().contains("q4_0 V cache"), "{e}");
        assert!(KvTypes::F16.check_head_dim(80).is_ok());
        assert!(KvTypes::both(KvType::Q4_0).check_head_dim(96).is_ok());
    }

    #[test]
    fn quantized_sides_rotate_as_llama_cpp() {
        let q8 = KvTypes::both(KvType::Q8_0);
        assert_eq!(
            q8.rotation(128),
            KvRotation {
                k: Some(128),
                v: Some(64)
            }
        );
        assert_eq!(q8.rotation(256).k, Some(256));
        assert_eq!(
            q8.rotation(192).k,
            Some(64),
            "largest power of two dividing 192"
        );
        assert_eq!(q8.rotation(96), KvRotation::default(), "96 % 64 != 0");
        assert_eq!(KvTypes::F16.rotation(128), KvRotation::default());
        let k_only = KvTypes {
            k: KvType::Q4_0,
            v: KvType::F16,
        };
        assert_eq!(
            k_only.rotation(64),
            KvRotation {
                k: Some(64),
                v: None
            }
        );
    }

    #[test]
    fn cache_types_parse_by_ggml_name() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>(), Ok(t));
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!("Q8_0".parse::<KvType>(), Ok(KvType::Q8_0));
        let e = "q4_1".parse::<KvType>().expect_err("not a cache type");
        assert_eq!(
            e.to_string(),
            "unknown KV cache type \"q4_1\" (valid: f16, q8_0, q4_0)"
        );
    }
}
