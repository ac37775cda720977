//! Activation quantization: an f32 row into the partner format of a weight type's dot product
//! (Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL/MXFP4, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants and the other
//! IQ and TQ formats, F16, BF16).
//!
//! These must give the same bytes as the functions llama.cpp's CPU backend runs on x86, because
//! the logits we compare against were computed from them:
//! - Q8_0 and Q8_1 follow ggml-cpu's AVX2 `quantize_row_q8_0` / `quantize_row_q8_1`: the scale is
//!   `amax / 127` stored as f16, the multiplier is `127 / amax` (not `1 / d`) and values round to
//!   nearest with ties to even. (ggml's portable `quantize_row_q8_0_ref` uses `1 / d` and rounds
//!   ties away from zero, so it can differ from these by one step on rare elements.)
//! - Q8_K follows `quantize_row_q8_K_ref`, which ggml-cpu also uses on x86: the scale comes from
//!   the signed value of largest magnitude, `iscale = -127 / max`, ties to even, clamped to 127.
//!
//! The outputs never contain -128, which the SIMD dot products rely on.

use half::{bf16, f16};

use crate::quant::fit::{absmax, nearest_int};
use crate::quant::types::{QK, QK_K};
use crate::quant::{BlockQ8K, BlockQ8_0, BlockQ8_1};

/// `x` rounded to the nearest integer, ties to even, as an i8 saturated to -128..=127: what
/// ggml-cpu's x86 quantizers compute (`_mm256_round_ps` to nearest, then packs that saturate).
/// Clamping first keeps the value where [`nearest_int`]'s exact 1.5 * 2^23 rounding applies, and
/// avoids a libm `rintf` call per element, so the loops vectorize.
#[inline(always)]
fn round_i8(x: f32) -> i8 {
    nearest_int(x.clamp(-128.0, 127.0)) as i8
}

/// Q8_0 activations as the dot products read them: ggml's `block_q8_0` with its f16 scale
/// widened to f32 (the same value exactly), so the SIMD kernels broadcast it with one load
/// instead of converting it for every weight row.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0Act {
    /// The block scale: an f16 value, stored as f32.
    pub d: f32,
    /// The 32 quantized values.
    pub qs: [i8; QK],
}

/// One Q8_0 block as ggml-cpu's x86 quantizer makes it: scale (as f16) and values.
#[inline(always)]
fn quantize_block_q8_0(xb: &[f32]) -> (f16, [i8; QK]) {
    let amax = absmax(xb);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(xb) {
        *q = round_i8(v * id);
    }
    (f16::from_f32(d), qs)
}

/// Quantizes `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks), as ggml-cpu's x86
/// `quantize_row_q8_0` does.
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(
        x.len(),
        out.len() * QK,
        "quantize_row_q8_0: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        (yb.d, yb.qs) = quantize_block_q8_0(xb);
    }
}

/// [`quantize_row_q8_0`] into [`BlockQ8_0Act`] blocks (the same values, scale as f32).
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_row_q8_0_act(x: &[f32], out: &mut [BlockQ8_0Act]) {
    assert_eq!(
        x.len(),
        out.len() * QK,
        "quantize_row_q8_0_act: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, qs) = quantize_block_q8_0(xb);
        yb.d = d.to_f32();
        yb.qs = qs;
    }
}

/// Quantizes `x` into Q8_1 blocks (with `s = d * sum(q)`), as ggml-cpu's x86 `quantize_row_q8_1`.
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    assert_eq!(
        x.len(),
        out.len() * QK,
        "quantize_row_q8_1: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = absmax(xb);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        yb.d = f16::from_f32(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = round_i8(v * id);
        }
        let sum: i32 = yb.qs.iter().map(|&q| i32::from(q)).sum();
        yb.s = f16::from_f32(d * sum as f32);
    }
}

/// Quantizes `x` (a multiple of 256 long) into Q8_K super-blocks, as `quantize_row_q8_K_ref`.
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(
        x.len(),
        out.len() * QK_K,
        "quantize_row_q8_k: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // The first element of largest magnitude, with its sign (NaNs are skipped, as the
        // reference's `>` comparison skips them). Found in two passes so the first vectorizes.
        let amax = absmax(xb);
        let max = xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
        if amax == 0.0 {
            yb.d = 0.0;
            yb.qs = [0; QK_K];
            yb.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = round_i8(iscale * v);
        }
        for (s, qs) in yb.bsums.iter_mut().zip(yb.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| i16::from(q)).sum();
        }
        yb.d = 1.0 / iscale;
    }
}

/// Converts `x` to IEEE half floats (round to nearest even), the partner of F16 weights.
///
/// # Panics
/// If the lengths differ.
pub fn convert_row_f16(x: &[f32], out: &mut [f16]) {
    assert_eq!(x.len(), out.len(), "convert_row_f16: length mismatch");
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f16::from_f32(v);
    }
}

/// Converts `x` to bfloat16 (round to nearest even), the partner of BF16 weights.
///
/// # Panics
/// If the lengths differ.
pub fn convert_row_bf16(x: &[f32], out: &mut [bf16]) {
    assert_eq!(x.len(), out.len(), "convert_row_bf16: length mismatch");
    for (o, &v) in out.iter_mut().zip(x) {
        *o = bf16::from_f32(v);
    }
}
