//! Dequantization to f32 of every format llmd computes with, bit-exact with ggml's
//! `dequantize_row_*` and with the gguf package's numpy reference (`gguf.quants`).
//!
//! Bit-exactness needs the same f32 operations in the same order as the reference: every
//! formula below keeps ggml's grouping (for example Q6_K is `(d * scale) * q` and Q4_K is
//! `(d * sc) * q - (dmin * m)`) and Rust never fuses a multiply and an add on its own.
//!
//! Each format has a per-block function (`*_block`, one block into a fixed-size array), a
//! per-slice function over block structs, and [`dequantize`] dispatches on a [`GgmlType`] for raw
//! bytes at any alignment.

use std::mem::size_of;

use super::blocks::*;
use super::error::{byte_len, QuantError};
use super::float::{bf16_bits_to_f32, f16_bits_to_f32, f16_to_f32};
use super::types::{GgmlType, QK, QK_K};
use super::view::{read_block, Block};

/// Dequantizes `dst.len()` elements of type `ty` from the raw little-endian bytes `src`.
///
/// `src` may have any alignment. Fails with [`QuantError::Unsupported`] for types without a
/// dequantizer (IQ*, TQ*, MXFP4, integer types, ...), [`QuantError::PartialBlock`] when
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
        GgmlType::F16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
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
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Runs `f` on each block of `src` (read unaligned) into the matching `N` outputs of `dst`.
/// Lengths were checked by the caller.
#[inline(always)]
fn from_bytes<B: Block, const N: usize>(src: &[u8], dst: &mut [f32], f: fn(&B, &mut [f32; N])) {
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
fn over_blocks<B: Block, const N: usize>(blocks: &[B], out: &mut [f32], f: fn(&B, &mut [f32; N])) {
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
    for (half, (out, qs)) in out
        .chunks_exact_mut(128)
        .zip(b.qs.chunks_exact(32))
        .enumerate()
    {
        for (plane, out) in out.chunks_exact_mut(32).enumerate() {
            let shift = 2 * plane;
            for (g, out) in out.chunks_exact_mut(16).enumerate() {
                let sc = b.scales[half * 8 + plane * 2 + g];
                let dl = d * (sc & 0x0f) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for (o, &q) in out.iter_mut().zip(&qs[g * 16..g * 16 + 16]) {
                    *o = dl * ((q >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (low nibbles in bytes 0..8, high pairs in 8..12).
#[inline(always)]
fn q3_k_scales(s: &[u8; 12]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// One Q3_K super-block: `(d * scale) * (q - (hbit ? 0 : 4))` in 16 groups of 16.
#[inline(always)]
pub fn q3_k_block(b: &BlockQ3K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let scales = q3_k_scales(&b.scales);
    for (half, (out, qs)) in out
        .chunks_exact_mut(128)
        .zip(b.qs.chunks_exact(32))
        .enumerate()
    {
        for (plane, out) in out.chunks_exact_mut(32).enumerate() {
            let shift = 2 * plane;
            let hbit = 1u8 << (half * 4 + plane);
            for (g, out) in out.chunks_exact_mut(16).enumerate() {
                let dl = d * scales[half * 8 + plane * 2 + g] as f32;
                for (l, o) in out.iter_mut().enumerate() {
                    let i = g * 16 + l;
                    let low = ((qs[i] >> shift) & 3) as i32;
                    let minus = if b.hmask[i] & hbit != 0 { 0 } else { 4 };
                    *o = dl * (low - minus) as f32;
                }
            }
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
    for (half, out) in out.chunks_exact_mut(128).enumerate() {
        let ql = &b.ql[half * 64..half * 64 + 64];
        let qh = &b.qh[half * 32..half * 32 + 32];
        let sc = &b.scales[half * 8..half * 8 + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * sc[is] as f32 * q1 as f32;
            out[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
            out[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
            out[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
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
