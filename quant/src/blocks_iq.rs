//! The block layouts of the IQ (codebook and non-linear), ternary (TQ) and MXFP4 formats, as
//! `#[repr(C)]` structs with compile-time size checks, field for field as ggml declares them in
//! `ggml/src/ggml-common.h`. Their lookup tables are in [`super::tables`].
//!
//! Multi-byte fields (`u16` words, f16 scales) are little-endian in GGUF files, which is the
//! native order of every platform llmd runs on. No struct here needs more than 2-byte alignment.

use half::f16;

use super::types::{QK, QK_K};

/// IQ2_XXS, 2.06 bits per weight: 256 weights in 8 groups of 32. Per group, two `u32` words
/// (four `qs` entries): the first holds four 8-bit indices into `IQ2XXS_GRID` (8 weights each),
/// the second four 7-bit sign indices (into `KSIGNS_IQ2XS`) and, in its top 4 bits, the group
/// scale `s`: `w = d * (0.5 + s) / 4 * grid * sign`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ2XXS {
    /// Super-block scale.
    pub d: f16,
    /// Grid indices, sign indices and group scales, two little-endian `u32` per group of 32.
    pub qs: [u16; QK_K / 8],
}

/// IQ2_XS, 2.31 bits per weight: each `qs` entry is a 9-bit index into `IQ2XS_GRID` (8 weights)
/// and a 7-bit sign index; two 4-bit scales per group of 32 in `scales`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ2XS {
    /// Super-block scale.
    pub d: f16,
    /// Per 8 weights: grid index (low 9 bits) and sign index (high 7 bits).
    pub qs: [u16; QK_K / 8],
    /// Per group of 32: the scale of its first 16 weights (low nibble) and last 16 (high).
    pub scales: [u8; QK_K / 32],
}

/// IQ2_S, 2.56 bits per weight: 10-bit indices into `IQ2S_GRID` (low 8 bits in `qs`, high 2 in
/// `qh`), explicit sign bytes, two 4-bit scales per group of 32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ2S {
    /// Super-block scale.
    pub d: f16,
    /// Bytes 0..32: low 8 bits of the grid index of each 8 weights; bytes 32..64: one sign byte
    /// per 8 weights.
    pub qs: [u8; QK_K / 4],
    /// Per group of 32: the high 2 bits of its four grid indices.
    pub qh: [u8; QK_K / 32],
    /// Per group of 32: the scale of its first 16 weights (low nibble) and last 16 (high).
    pub scales: [u8; QK_K / 32],
}

/// IQ3_XXS, 3.06 bits per weight: 8-bit indices into `IQ3XXS_GRID` (4 weights each) in bytes
/// 0..64 of `qs`; bytes 64..96 hold one `u32` per group of 32 with four 7-bit sign indices and
/// the 4-bit group scale `s`: `w = d * (0.5 + s) / 2 * grid * sign`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ3XXS {
    /// Super-block scale.
    pub d: f16,
    /// Grid indices (64 bytes), then sign indices and group scales (8 little-endian `u32`).
    pub qs: [u8; 3 * QK_K / 8],
}

/// IQ3_S, 3.44 bits per weight: 9-bit indices into `IQ3S_GRID` (low 8 bits in `qs`, ninth in
/// `qh`), explicit sign bits, one 4-bit scale per 32 weights: `w = d * (1 + 2 s) * grid * sign`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ3S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the grid index of each 4 weights.
    pub qs: [u8; QK_K / 4],
    /// Ninth index bit of each 4 weights, 8 per byte (one byte per group of 32).
    pub qh: [u8; QK_K / 32],
    /// One sign bit per weight.
    pub signs: [u8; QK_K / 8],
    /// Per 64 weights: the scale of the first 32 (low nibble) and of the second (high).
    pub scales: [u8; QK_K / 64],
}

/// IQ1_S, 1.56 bits per weight: 11-bit indices into `IQ1S_GRID` (8 ternary weights each, low 8
/// bits in `qs`); per group of 32 a `qh` word with the four high 3-bit parts, a 3-bit scale `s`
/// and the sign of the delta: `w = d * (2 s + 1) * (grid ± 1/8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ1S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the grid index of each 8 weights.
    pub qs: [u8; QK_K / 8],
    /// Per group of 32: bits 0..12 the index high parts, 12..15 the scale, 15 the delta sign.
    pub qh: [u16; QK_K / 32],
}

/// IQ1_M, 1.75 bits per weight: as IQ1_S with a delta sign per 8 weights and 3-bit scales per
/// 16; the f16 super-block scale is stored in the top nibbles of the four `scales` words.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ1M {
    /// Low 8 bits of the grid index of each 8 weights.
    pub qs: [u8; QK_K / 8],
    /// Per 16 weights: the high 3 bits of two grid indices and their two delta signs (bits 3, 7).
    pub qh: [u8; QK_K / 16],
    /// Four little-endian `u16`: 3-bit scales per 16 weights in the low 12 bits, and one nibble
    /// of the f16 super-block scale in the top 4.
    pub scales: [u8; QK_K / 32],
}

/// IQ4_NL, 4.5 bits per weight: 32 weights as 4-bit indices into `KVALUES_IQ4NL`: `w = d * v`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ4NL {
    /// Block scale.
    pub d: f16,
    /// Byte `j`: index of weight `j` (low nibble) and of weight `j + 16` (high).
    pub qs: [u8; QK / 2],
}

/// IQ4_XS, 4.25 bits per weight: IQ4_NL's levels with a 6-bit signed scale per 32 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ4XS {
    /// Super-block scale.
    pub d: f16,
    /// The high 2 bits of the eight 6-bit group scales.
    pub scales_h: u16,
    /// The low 4 bits of the eight group scales, two per byte.
    pub scales_l: [u8; QK_K / 64],
    /// Per group of 32, 16 bytes laid out as in IQ4_NL.
    pub qs: [u8; QK_K / 2],
}

/// TQ1_0, 1.69 bits per weight: ternary weights (`d * {-1, 0, 1}`) packed five per byte in
/// base 3 (`qs`, scaled to fill the byte) and four per byte in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockTQ1_0 {
    /// 240 weights, five trits per byte.
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    /// The last 16 weights, four trits per byte.
    pub qh: [u8; QK_K / 64],
    /// Super-block scale.
    pub d: f16,
}

/// TQ2_0, 2.06 bits per weight: ternary weights stored as 2-bit `q` with `w = d * (q - 1)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockTQ2_0 {
    /// Four 2-bit values per byte (bit-planes of 32 bytes, as Q2_K).
    pub qs: [u8; QK_K / 4],
    /// Super-block scale.
    pub d: f16,
}

/// MXFP4 (OCP microscaling): 32 E2M1 values with a shared power-of-two (E8M0) scale.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockMXFP4 {
    /// The E8M0 scale exponent: the block scale is `2^(e - 127)`.
    pub e: u8,
    /// Byte `j`: the E2M1 code of value `j` (low nibble) and of value `j + 16` (high).
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ2XXS>() == 66);
const _: () = assert!(std::mem::size_of::<BlockIQ2XS>() == 74);
const _: () = assert!(std::mem::size_of::<BlockIQ2S>() == 82);
const _: () = assert!(std::mem::size_of::<BlockIQ3XXS>() == 98);
const _: () = assert!(std::mem::size_of::<BlockIQ3S>() == 110);
const _: () = assert!(std::mem::size_of::<BlockIQ1S>() == 50);
const _: () = assert!(std::mem::size_of::<BlockIQ1M>() == 56);
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);
const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);
const _: () = assert!(std::mem::size_of::<BlockTQ1_0>() == 54);
const _: () = assert!(std::mem::size_of::<BlockTQ2_0>() == 66);
const _: () = assert!(std::mem::size_of::<BlockMXFP4>() == 17);
