//! Quantization of f32 rows into the block formats llmd writes: the dispatch over types
//! ([`quantize`], [`quantize_into`]) and the legacy 32-wide formats (Q8_0, Q4_0, Q4_1, Q5_0,
//! Q5_1), the float formats and the activation formats (Q8_0, Q8_1, Q8_K). The K-quants are in
//! [`super::quantize_k`], IQ4_NL, IQ4_XS, TQ1_0, TQ2_0 and MXFP4 in [`super::quantize_iq`], the
//! scale searches they share in [`super::fit`].
//!
//! Every quantizer reproduces what llama.cpp's quantizer writes without an importance matrix
//! (ggml's `quantize_row_*_ref`, or `quantize_iq4_*` for the IQ4 formats) exactly, with the same
//! f32 operations in the same order: the legacy formats and BF16 therefore also match the gguf
//! package's numpy quantizers byte for byte, and the others match ggml's C code (checked against
//! fixtures made by ggml itself).
//!
//! Non-finite inputs give deterministic, memory-safe but meaningless blocks, as in ggml.
//!
//! The `quantize_row_*` functions write into caller-provided blocks and never allocate: the
//! activation quantizers run on every token.

use super::blocks::*;
use super::blocks_iq::*;
use super::error::{byte_len, QuantError};
use super::fit::{absmax, round_away, signed_absmax};
use super::float::{f32_to_bf16_bits, f32_to_f16};
use super::types::{GgmlType, QK, QK_K};
use super::view::{blocks_as_bytes, zeroed_block, Block};

pub use super::fit::nearest_int;
pub use super::quantize_grid::*;
pub use super::quantize_iq::*;
pub use super::quantize_k::*;

/// Whether [`quantize`] can produce type `ty`: the float formats, the legacy and K-quant
/// formats, the activation formats Q8_1 and Q8_K, and IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS,
/// TQ1_0, TQ2_0, MXFP4. (Not IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, which ggml quantizes only with an
/// importance matrix.)
pub const fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
            | IQ2_S
            | IQ3_XXS
            | IQ3_S
            | IQ4_NL
            | IQ4_XS
            | TQ1_0
            | TQ2_0
            | MXFP4
    )
}

/// Quantizes `src` (a whole number of `ty` blocks) into the raw little-endian bytes GGUF stores.
///
/// Fails with [`QuantError::Unsupported`] for types [`can_quantize`] rejects and with
/// [`QuantError::PartialBlock`] when `src.len()` is not a whole number of blocks.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    let mut out = vec![0u8; byte_len(ty, src.len())?];
    quantize_into(ty, src, &mut out)?;
    Ok(out)
}

/// Quantizes `src` into `dst`, which must be exactly the byte size of `src.len()` elements of
/// `ty` (any alignment). Blocks are independent, so callers may split a tensor at block
/// boundaries and quantize the pieces on several threads.
///
/// Fails like [`quantize`], and with [`QuantError::ByteLength`] when `dst` has the wrong size.
pub fn quantize_into(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    let expected = byte_len(ty, src.len())?;
    if dst.len() != expected {
        return Err(QuantError::ByteLength {
            ty,
            elems: src.len(),
            expected,
            actual: dst.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, x) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_f16(x).to_bits().to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
            }
        }
        GgmlType::Q4_0 => into_bytes::<BlockQ4_0>(src, dst, quantize_row_q4_0),
        GgmlType::Q4_1 => into_bytes::<BlockQ4_1>(src, dst, quantize_row_q4_1),
        GgmlType::Q5_0 => into_bytes::<BlockQ5_0>(src, dst, quantize_row_q5_0),
        GgmlType::Q5_1 => into_bytes::<BlockQ5_1>(src, dst, quantize_row_q5_1),
        GgmlType::Q8_0 => into_bytes::<BlockQ8_0>(src, dst, quantize_row_q8_0),
        GgmlType::Q8_1 => into_bytes::<BlockQ8_1>(src, dst, quantize_row_q8_1),
        GgmlType::Q2_K => into_bytes::<BlockQ2K>(src, dst, quantize_row_q2_k),
        GgmlType::Q3_K => into_bytes::<BlockQ3K>(src, dst, quantize_row_q3_k),
        GgmlType::Q4_K => into_bytes::<BlockQ4K>(src, dst, quantize_row_q4_k),
        GgmlType::Q5_K => into_bytes::<BlockQ5K>(src, dst, quantize_row_q5_k),
        GgmlType::Q6_K => into_bytes::<BlockQ6K>(src, dst, quantize_row_q6_k),
        GgmlType::Q8_K => into_bytes::<BlockQ8K>(src, dst, quantize_row_q8_k),
        GgmlType::IQ2_S => into_bytes::<BlockIQ2S>(src, dst, quantize_row_iq2_s),
        GgmlType::IQ3_XXS => into_bytes::<BlockIQ3XXS>(src, dst, quantize_row_iq3_xxs),
        GgmlType::IQ3_S => into_bytes::<BlockIQ3S>(src, dst, quantize_row_iq3_s),
        GgmlType::IQ4_NL => into_bytes::<BlockIQ4NL>(src, dst, quantize_row_iq4_nl),
        GgmlType::IQ4_XS => into_bytes::<BlockIQ4XS>(src, dst, quantize_row_iq4_xs),
        GgmlType::TQ1_0 => into_bytes::<BlockTQ1_0>(src, dst, quantize_row_tq1_0),
        GgmlType::TQ2_0 => into_bytes::<BlockTQ2_0>(src, dst, quantize_row_tq2_0),
        GgmlType::MXFP4 => into_bytes::<BlockMXFP4>(src, dst, quantize_row_mxfp4),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Quantizes `src` a few blocks at a time through a stack buffer of (aligned) blocks and copies
/// their bytes into `dst`. Lengths were checked by the caller.
fn into_bytes<B: Block>(src: &[f32], dst: &mut [u8], f: impl Fn(&[f32], &mut [B])) {
    const CHUNK: usize = 16;
    let mut buf = [zeroed_block::<B>(); CHUNK];
    let out_chunk = CHUNK * std::mem::size_of::<B>();
    for (x, o) in src.chunks(CHUNK * B::ELEMS).zip(dst.chunks_mut(out_chunk)) {
        let blocks = &mut buf[..x.len() / B::ELEMS];
        f(x, blocks);
        o.copy_from_slice(blocks_as_bytes(blocks));
    }
}

/// Checks that `x` fills `out` exactly.
#[inline(always)]
pub(crate) fn check_row<B: Block>(x: &[f32], out: &[B]) {
    assert_eq!(
        x.len(),
        out.len() * B::ELEMS,
        "{} quantization: {} blocks need {} inputs",
        B::TYPE,
        out.len(),
        out.len() * B::ELEMS
    );
}

/// Quantizes a row to Q8_0: `d = max|x| / 127`, `q = roundf(x / d)`.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let d = absmax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = round_away(v * id) as i8;
        }
    }
}

/// Quantizes a row to Q8_1: as Q8_0, plus `s = d * sum(q)` (both stored as f16).
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let d = absmax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            let r = round_away(v * id) as i8;
            *q = r;
            sum += i32::from(r);
        }
        y.s = f32_to_f16(sum as f32 * d);
    }
}

/// Quantizes a row to Q4_0: `d = max / -8` (the signed value of largest magnitude), `q = x/d + 8`
/// truncated to 0..=15.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (max, _) = signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        for j in 0..QK / 2 {
            let q0 = ((x[j] * id + 8.5) as i32).clamp(0, 15) as u8;
            let q1 = ((x[j + QK / 2] * id + 8.5) as i32).clamp(0, 15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Quantizes a row to Q4_1: `d = (max - min) / 15`, `m = min`, `q = (x - min)/d` rounded.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        y.m = f32_to_f16(min);
        for j in 0..QK / 2 {
            let q0 = (((x[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            let q1 = (((x[j + QK / 2] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// The minimum and maximum of `x` as ggml's `q4_1` / `q5_1` scans find them.
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Packs 32 five-bit values: low nibbles as in Q4 (`j` and `j + 16` share a byte), fifth bits
/// into the little-endian `qh` at the element's index.
#[inline(always)]
fn pack_q5(q: &[u8; QK], qh: &mut [u8; 4], qs: &mut [u8; QK / 2]) {
    let mut h = 0u32;
    for j in 0..QK / 2 {
        let (q0, q1) = (q[j], q[j + QK / 2]);
        qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        h |= u32::from((q0 & 0x10) >> 4) << j;
        h |= u32::from((q1 & 0x10) >> 4) << (j + QK / 2);
    }
    *qh = h.to_le_bytes();
}

/// Quantizes a row to Q5_0: `d = max / -16`, `q = x/d + 16` truncated to 0..=31.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q5_0(x: &[f32], out: &mut [BlockQ5_0]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (max, _) = signed_absmax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        let mut q = [0u8; QK];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + 16.5) as i32).clamp(0, 31) as u8;
        }
        pack_q5(&q, &mut y.qh, &mut y.qs);
    }
}

/// Quantizes a row to Q5_1: `d = (max - min) / 31`, `m = min`, `q = (x - min)/d` rounded.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q5_1(x: &[f32], out: &mut [BlockQ5_1]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        y.m = f32_to_f16(min);
        let mut q = [0u8; QK];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (((v - min) * id + 0.5) as i32).clamp(0, 31) as u8;
        }
        pack_q5(&q, &mut y.qh, &mut y.qs);
    }
}

/// Quantizes a row to Q8_K (activations for K-quant dot products): with `max` the signed value of
/// largest magnitude, `iscale = -127 / max`, `q = nearest_int(iscale * x)` capped at 127,
/// `d = 1 / iscale` (an f32), and `bsums` the sums of each 16 quants. An all-zero block gets
/// `d = 0` and zero quants and sums.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (max, amax) = signed_absmax(x);
        if amax == 0.0 {
            y.d = 0.0;
            y.qs = [0; QK_K];
            y.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| i16::from(q)).sum();
        }
        y.d = 1.0 / iscale;
    }
}
