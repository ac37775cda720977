//! Dequantization to f32 of every format llmd computes with, bit-exact with ggml's
//! `dequantize_row_*` and with the gguf package's numpy reference (`gguf.quants`). The per-block
//! functions of the legacy and K-quant formats are here, those of the IQ, TQ and MXFP4 formats
//! in [`super::dequant_iq`].
//!
//! Bit-exactness needs the same f32 operations in the same order as the reference: every
//! formula below keeps ggml's grouping (for example Q6_K is `(d * scale) * q` and Q4_K is
//! `(d * sc) * q - (dmin * m)`) and Rust never fuses a multiply and an add on its own.
//!
//! Each format has a per-block function (`*_block`, one block into a fixed-size array), a
//! per-slice function over block structs, and [`dequantize`] dispatches on a [`GgmlType`] for raw
//! bytes at any alignment.

use std::mem::size_of;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::blocks::*;
use super::blocks_iq::*;
use super::dequant_iq::*;
use super::error::{byte_len, QuantError};
use super::float::{bf16_bits_to_f32, f16_to_f32};
use super::types::{GgmlType, QK, QK_K};
use super::view::{read_block, Block};

/// Dequantizes `dst.len()` elements of type `ty` from the raw little-endian bytes `src`.
///
/// `src` may have any alignment. Fails with [`QuantError::Unsupported`] for types without a
/// dequantizer ([`GgmlType::is_supported`] is false: Q8_1, the integer types, F64),
/// [`QuantError::PartialBlock`] when
/// `dst.len()` is not a whole number of blocks, and [`QuantError::ByteLength`] when `src` is not
/// exactly the size `dst.len()` elements take.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !ty.is_supported() {
        return Err(QuantError::Unsupported(ty));
    }
    let expected = byte_len(ty, dst.len())?;
    if src.len() != expected {
        return Err(QuantError::ByteLength {
            ty,
            elems: dst.len(),
            expected,
            actual: src.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => f16_slice_to_f32(src, dst),
        GgmlType::BF16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::Q4_0 => from_bytes::<BlockQ4_0, QK>(src, dst, q4_0_block),
        GgmlType::Q4_1 => from_bytes::<BlockQ4_1, QK>(src, dst, q4_1_block),
        GgmlType::Q5_0 => from_bytes::<BlockQ5_0, QK>(src, dst, q5_0_block),
        GgmlType::Q5_1 => from_bytes::<BlockQ5_1, QK>(src, dst, q5_1_block),
        GgmlType::Q8_0 => from_bytes::<BlockQ8_0, QK>(src, dst, q8_0_block),
        GgmlType::Q2_K => from_bytes::<BlockQ2K, QK_K>(src, dst, q2_k_block),
        GgmlType::Q3_K => from_bytes::<BlockQ3K, QK_K>(src, dst, q3_k_block),
        GgmlType::Q4_K => from_bytes::<BlockQ4K, QK_K>(src, dst, q4_k_block),
        GgmlType::Q5_K => from_bytes::<BlockQ5K, QK_K>(src, dst, q5_k_block),
        GgmlType::Q6_K => from_bytes::<BlockQ6K, QK_K>(src, dst, q6_k_block),
        GgmlType::Q8_K => from_bytes::<BlockQ8K, QK_K>(src, dst, q8_k_block),
        GgmlType::IQ2_XXS => from_bytes::<BlockIQ2XXS, QK_K>(src, dst, iq2_xxs_block),
        GgmlType::IQ2_XS => from_bytes::<BlockIQ2XS, QK_K>(src, dst, iq2_xs_block),
        GgmlType::IQ2_S => from_bytes::<BlockIQ2S, QK_K>(src, dst, iq2_s_block),
        GgmlType::IQ3_XXS => from_bytes::<BlockIQ3XXS, QK_K>(src, dst, iq3_xxs_block),
        GgmlType::IQ3_S => from_bytes::<BlockIQ3S, QK_K>(src, dst, iq3_s_block),
        GgmlType::IQ1_S => from_bytes::<BlockIQ1S, QK_K>(src, dst, iq1_s_block),
        GgmlType::IQ1_M => from_bytes::<BlockIQ1M, QK_K>(src, dst, iq1_m_block),
        GgmlType::IQ4_NL => from_bytes::<BlockIQ4NL, QK>(src, dst, iq4_nl_block),
        GgmlType::IQ4_XS => from_bytes::<BlockIQ4XS, QK_K>(src, dst, iq4_xs_block),
        GgmlType::TQ1_0 => from_bytes::<BlockTQ1_0, QK_K>(src, dst, tq1_0_block),
        GgmlType::TQ2_0 => from_bytes::<BlockTQ2_0, QK_K>(src, dst, tq2_0_block),
        GgmlType::MXFP4 => from_bytes::<BlockMXFP4, QK>(src, dst, mxfp4_block),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Converts little-endian halves to f32 through the `half` crate's slice conversion (F16C
/// instructions when the CPU has them, chosen at run time), then redoes any NaN with the exact
/// scalar conversion, since F16C sets the quiet bit of signalling NaNs and numpy does not.
fn f16_slice_to_f32(src: &[u8], dst: &mut [f32]) {
    const CHUNK: usize = 256;
    let mut h = [f16::ZERO; CHUNK];
    for (o, b) in dst.chunks_mut(CHUNK).zip(src.chunks(2 * CHUNK)) {
        let h = &mut h[..o.len()];
        let mut nans = 0u32;
        for (h, b) in h.iter_mut().zip(b.chunks_exact(2)) {
            let bits = u16::from_le_bytes([b[0], b[1]]);
            nans += u32::from(bits & 0x7fff > 0x7c00);
            *h = f16::from_bits(bits);
        }
        h.convert_to_f32_slice(o);
        if nans != 0 {
            for (o, h) in o.iter_mut().zip(h.iter()) {
                if h.is_nan() {
                    *o = f16_to_f32(*h);
                }
            }
        }
    }
}

/// Runs `f` on each block of `src` (read unaligned) into the matching `N` outputs of `dst`.
/// Lengths were checked by the caller.
#[inline(always)]
fn from_bytes<B: Block, const N: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&B, &mut [f32; N]),
) {
    debug_assert_eq!(N, B::ELEMS);
    for (b, out) in src
        .chunks_exact(size_of::<B>())
        .zip(dst.chunks_exact_mut(N))
    {
        let block = read_block::<B>(b);
        if let Ok(out) = <&mut [f32; N]>::try_from(out) {
            f(&block, out);
        }
    }
}

/// Runs `f` on each block into the matching `N` outputs, after checking the lengths agree.
#[inline(always)]
fn over_blocks<B: Block, const N: usize>(
    blocks: &[B],
    out: &mut [f32],
    f: impl Fn(&B, &mut [f32; N]),
) {
    assert_eq!(
        out.len(),
        blocks.len() * N,
        "{} dequantization: {} blocks need {} outputs",
        B::TYPE,
        blocks.len(),
        blocks.len() * N
    );
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(N)) {
        if let Ok(out) = <&mut [f32; N]>::try_from(out) {
            f(block, out);
        }
    }
}

macro_rules! slice_fn {
    ($(#[$doc:meta])* $name:ident, $block:ty, $n:expr, $f:ident) => {
        $(#[$doc])*
        ///
        /// # Panics
        /// If `out.len()` is not `blocks.len()` times the block's element count.
        pub fn $name(blocks: &[$block], out: &mut [f32]) {
            over_blocks::<$block, { $n }>(blocks, out, $f);
        }
    };
}

slice_fn!(/// Dequantizes Q4_0 blocks (32 elements each).
    dequantize_q4_0, BlockQ4_0, QK, q4_0_block);
slice_fn!(/// Dequantizes Q4_1 blocks (32 elements each).
    dequantize_q4_1, BlockQ4_1, QK, q4_1_block);
slice_fn!(/// Dequantizes Q5_0 blocks (32 elements each).
    dequantize_q5_0, BlockQ5_0, QK, q5_0_block);
slice_fn!(/// Dequantizes Q5_1 blocks (32 elements each).
    dequantize_q5_1, BlockQ5_1, QK, q5_1_block);
slice_fn!(/// Dequantizes Q8_0 blocks (32 elements each).
    dequantize_q8_0, BlockQ8_0, QK, q8_0_block);
slice_fn!(/// Dequantizes Q8_1 blocks (32 elements each; the `s` sum is not needed).
    dequantize_q8_1, BlockQ8_1, QK, q8_1_block);
slice_fn!(/// Dequantizes Q2_K super-blocks (256 elements each).
    dequantize_q2_k, BlockQ2K, QK_K, q2_k_block);
slice_fn!(/// Dequantizes Q3_K super-blocks (256 elements each).
    dequantize_q3_k, BlockQ3K, QK_K, q3_k_block);
slice_fn!(/// Dequantizes Q4_K super-blocks (256 elements each).
    dequantize_q4_k, BlockQ4K, QK_K, q4_k_block);
slice_fn!(/// Dequantizes Q5_K super-blocks (256 elements each).
    dequantize_q5_k, BlockQ5K, QK_K, q5_k_block);
slice_fn!(/// Dequantizes Q6_K super-blocks (256 elements each).
    dequantize_q6_k, BlockQ6K, QK_K, q6_k_block);
slice_fn!(/// Dequantizes Q8_K super-blocks (256 elements each).
    dequantize_q8_k, BlockQ8K, QK_K, q8_k_block);
slice_fn!(/// Dequantizes IQ2_XXS super-blocks (256 elements each).
    dequantize_iq2_xxs, BlockIQ2XXS, QK_K, iq2_xxs_block);
slice_fn!(/// Dequantizes IQ2_XS super-blocks (256 elements each).
    dequantize_iq2_xs, BlockIQ2XS, QK_K, iq2_xs_block);
slice_fn!(/// Dequantizes IQ2_S super-blocks (256 elements each).
    dequantize_iq2_s, BlockIQ2S, QK_K, iq2_s_block);
slice_fn!(/// Dequantizes IQ3_XXS super-blocks (256 elements each).
    dequantize_iq3_xxs, BlockIQ3XXS, QK_K, iq3_xxs_block);
slice_fn!(/// Dequantizes IQ3_S super-blocks (256 elements each).
    dequantize_iq3_s, BlockIQ3S, QK_K, iq3_s_block);
slice_fn!(/// Dequantizes IQ1_S super-blocks (256 elements each).
    dequantize_iq1_s, BlockIQ1S, QK_K, iq1_s_block);
slice_fn!(/// Dequantizes IQ1_M super-blocks (256 elements each).
    dequantize_iq1_m, BlockIQ1M, QK_K, iq1_m_block);
slice_fn!(/// Dequantizes IQ4_NL blocks (32 elements each).
    dequantize_iq4_nl, BlockIQ4NL, QK, iq4_nl_block);
slice_fn!(/// Dequantizes IQ4_XS super-blocks (256 elements each).
    dequantize_iq4_xs, BlockIQ4XS, QK_K, iq4_xs_block);
slice_fn!(/// Dequantizes TQ1_0 super-blocks (256 elements each).
    dequantize_tq1_0, BlockTQ1_0, QK_K, tq1_0_block);
slice_fn!(/// Dequantizes TQ2_0 super-blocks (256 elements each).
    dequantize_tq2_0, BlockTQ2_0, QK_K, tq2_0_block);
slice_fn!(/// Dequantizes MXFP4 blocks (32 elements each).
    dequantize_mxfp4, BlockMXFP4, QK, mxfp4_block);

/// One Q4_0 block: `d * (q - 8)`; byte `j` holds elements `j` (low nibble) and `j + 16`.
#[inline(always)]
pub fn q4_0_block(b: &BlockQ4_0, out: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        lo[j] = d * ((b.qs[j] & 0x0f) as i32 - 8) as f32;
        hi[j] = d * ((b.qs[j] >> 4) as i32 - 8) as f32;
    }
}

/// One Q4_1 block: `d * q + m`.
#[inline(always)]
pub fn q4_1_block(b: &BlockQ4_1, out: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        lo[j] = d * (b.qs[j] & 0x0f) as f32 + m;
        hi[j] = d * (b.qs[j] >> 4) as f32 + m;
    }
}

/// The 5-bit values of a Q5 block: low nibbles from `qs`, bit 4 of element `i` is bit `i` of the
/// little-endian `qh`.
#[inline(always)]
fn q5_values(qh: &[u8; 4], qs: &[u8; QK / 2], j: usize) -> (i32, i32) {
    let qh = u32::from_le_bytes(*qh);
    let h0 = ((qh >> j) & 1) << 4;
    let h1 = ((qh >> (j + QK / 2)) & 1) << 4;
    (
        ((qs[j] & 0x0f) as u32 | h0) as i32,
        ((qs[j] >> 4) as u32 | h1) as i32,
    )
}

/// One Q5_0 block: `d * (q - 16)`.
#[inline(always)]
pub fn q5_0_block(b: &BlockQ5_0, out: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        let (x0, x1) = q5_values(&b.qh, &b.qs, j);
        lo[j] = d * (x0 - 16) as f32;
        hi[j] = d * (x1 - 16) as f32;
    }
}

/// One Q5_1 block: `d * q + m`.
#[inline(always)]
pub fn q5_1_block(b: &BlockQ5_1, out: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        let (x0, x1) = q5_values(&b.qh, &b.qs, j);
        lo[j] = d * x0 as f32 + m;
        hi[j] = d * x1 as f32 + m;
    }
}

/// One Q8_0 block: `d * q`.
#[inline(always)]
pub fn q8_0_block(b: &BlockQ8_0, out: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
        *o = d * q as f32;
    }
}

/// One Q8_1 block: `d * q`.
#[inline(always)]
pub fn q8_1_block(b: &BlockQ8_1, out: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
        *o = d * q as f32;
    }
}

/// One Q2_K super-block: group `g` of 16 is `(d * (sc & 15)) * q - dmin * (sc >> 4)`, with the
/// 2-bit quants of each 128 elements packed as four bit-planes of 32 bytes.
#[inline(always)]
pub fn q2_k_block(b: &BlockQ2K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    // Group g covers elements 16g..16g+16: (half, plane, which 16 of the 32 bytes).
    for (g, out) in out.chunks_exact_mut(16).enumerate() {
        let sc = b.scales[g];
        let dl = d * (sc & 0x0f) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let (half, plane, part) = (g / 8, (g / 2) % 4, g % 2);
        let qs = &b.qs[half * 32 + part * 16..half * 32 + part * 16 + 16];
        let shift = 2 * plane;
        for (o, &q) in out.iter_mut().zip(qs) {
            *o = dl * ((q >> shift) & 3) as f32 - ml;
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (low nibbles in bytes 0..8, high pairs in 8..12).
#[inline(always)]
pub fn q3_k_scales(s: &[u8; 12]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// One Q3_K super-block: `(d * scale) * (q - (hbit ? 0 : 4))` in 16 groups of 16; the low 2 bits
/// are packed as Q2_K's, the high bit of element `32k + l` is bit `k` of `hmask[l]`.
#[inline(always)]
pub fn q3_k_block(b: &BlockQ3K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let scales = q3_k_scales(&b.scales);
    for (g, out) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * scales[g] as f32;
        let (half, plane, part) = (g / 8, (g / 2) % 4, g % 2);
        let qs = &b.qs[half * 32 + part * 16..half * 32 + part * 16 + 16];
        let hm = &b.hmask[part * 16..part * 16 + 16];
        let (shift, hbit) = (2 * plane, g / 2);
        for ((o, &q), &h) in out.iter_mut().zip(qs).zip(hm) {
            let low = ((q >> shift) & 3) as i32;
            let minus = ((((h >> hbit) & 1) ^ 1) << 2) as i32;
            *o = dl * (low - minus) as f32;
        }
    }
}

/// Scale and min `j` (0..8) of a Q4_K / Q5_K super-block, 6 bits each packed in 12 bytes.
#[inline(always)]
pub fn k4_scale_min(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One Q4_K super-block: group `g` of 32 is `(d * sc) * q - dmin * m`; each 32 bytes of `qs` hold
/// two groups (low nibbles, then high nibbles).
#[inline(always)]
pub fn q4_k_block(b: &BlockQ4K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for (pair, (out, qs)) in out
        .chunks_exact_mut(64)
        .zip(b.qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = k4_scale_min(2 * pair, &b.scales);
        let (sc2, m2) = k4_scale_min(2 * pair + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (qs[l] & 0x0f) as f32 - m1;
            hi[l] = d2 * (qs[l] >> 4) as f32 - m2;
        }
    }
}

/// One Q5_K super-block: as Q4_K with a fifth bit per element from `qh` (bit `2*pair` for the
/// low-nibble group, `2*pair + 1` for the high one).
#[inline(always)]
pub fn q5_k_block(b: &BlockQ5K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for (pair, (out, qs)) in out
        .chunks_exact_mut(64)
        .zip(b.qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = k4_scale_min(2 * pair, &b.scales);
        let (sc2, m2) = k4_scale_min(2 * pair + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((qs[l] & 0x0f) + h1) as f32 - m1;
            hi[l] = d2 * ((qs[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// One Q6_K super-block: `(d * scale) * (q - 32)` in 16 groups of 16; per 128 elements, 64 bytes
/// of `ql` give the low nibbles and 32 bytes of `qh` the high 2-bit pairs.
#[inline(always)]
pub fn q6_k_block(b: &BlockQ6K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    // Element 128h + 32k + l (k = 0..4, l = 0..32): low nibble from ql[64h + 32(k % 2) + l]
    // (shifted by 4 for k >= 2), high pair from qh[32h + l] >> 2k; group (128h + 32k + l) / 16.
    for (g, out) in out.chunks_exact_mut(16).enumerate() {
        let ds = d * b.scales[g] as f32;
        let (half, k, part) = (g / 8, (g / 2) % 4, g % 2);
        let ql = &b.ql[half * 64 + (k % 2) * 32 + part * 16..][..16];
        let qh = &b.qh[half * 32 + part * 16..][..16];
        let (lshift, hshift) = (4 * (k / 2), 2 * k);
        for ((o, &l), &h) in out.iter_mut().zip(ql).zip(qh) {
            let q = (((l >> lshift) & 0x0f) | (((h >> hshift) & 3) << 4)) as i32 - 32;
            *o = ds * q as f32;
        }
    }
}

/// One Q8_K super-block: `d * q` with an f32 `d`.
#[inline(always)]
pub fn q8_k_block(b: &BlockQ8K, out: &mut [f32; QK_K]) {
    for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
        *o = b.d * q as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_nans_keep_their_payload_like_numpy() {
        // Signalling and quiet NaNs of both signs, amid ordinary values, at an odd offset and
        // across the conversion's chunk boundary.
        let mut halves = vec![0x3c00u16; 600];
        for (i, h) in [(3, 0x7c01u16), (255, 0xfd55), (256, 0x7e00), (599, 0xffff)] {
            halves[i] = h;
        }
        let mut src = vec![0u8; 1];
        src.extend(halves.iter().flat_map(|h| h.to_le_bytes()));
        let mut out = vec![0f32; halves.len()];
        dequantize(GgmlType::F16, &src[1..], &mut out).unwrap();
        for (h, o) in halves.iter().zip(&out) {
            let sign = u32::from(h & 0x8000) << 16;
            let want = if h & 0x7fff > 0x7c00 {
                sign | 0x7f80_0000 | (u32::from(h & 0x3ff) << 13)
            } else {
                1f32.to_bits()
            };
            assert_eq!(o.to_bits(), want, "{h:#06x}");
        }
    }
}
