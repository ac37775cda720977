//! Quantization of f32 rows into the block formats llmd writes: weights (Q8_0, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q4_K, Q6_K, F16, BF16) and activations (Q8_0, Q8_1, Q8_K) for the CPU dot products.
//!
//! Every quantizer reproduces ggml's `quantize_row_*_ref` exactly (same f32 operations in the same
//! order): the legacy formats and BF16 therefore also match the gguf package's numpy quantizers
//! byte for byte, and Q4_K / Q6_K / Q8_K / Q8_1 match ggml's C reference (checked against fixtures
//! made by ggml itself). Without an importance matrix, llama.cpp's own quantizer calls exactly
//! these reference functions.
//!
//! Non-finite inputs give deterministic, memory-safe but meaningless blocks, as in ggml.
//!
//! The `quantize_row_*` functions write into caller-provided blocks and never allocate: the
//! activation quantizers run on every token.

use super::blocks::*;
use super::error::{byte_len, QuantError};
use super::float::{f16_to_f32, f32_to_bf16_bits, f32_to_f16};
use super::types::{GgmlType, QK, QK_K};
use super::view::{blocks_as_bytes, zeroed_block, Block};

/// ggml treats a group whose largest magnitude is below this as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Whether [`quantize`] can produce type `ty`.
pub const fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Q4_K | Q6_K | Q8_K
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
        GgmlType::Q4_K => into_bytes::<BlockQ4K>(src, dst, quantize_row_q4_k),
        GgmlType::Q6_K => into_bytes::<BlockQ6K>(src, dst, quantize_row_q6_k),
        GgmlType::Q8_K => into_bytes::<BlockQ8K>(src, dst, quantize_row_q8_k),
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
fn check_row<B: Block>(x: &[f32], out: &[B]) {
    assert_eq!(
        x.len(),
        out.len() * B::ELEMS,
        "{} quantization: {} blocks need {} inputs",
        B::TYPE,
        out.len(),
        out.len() * B::ELEMS
    );
}

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5 * 2^23 trick. Exact for
/// `|x| < 2^22`; larger inputs give a wrapped but bounded value, as in ggml.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C's `roundf` (half away from zero) for values well inside the i32 range, without a libm call
/// and without branches (so loops using it vectorize): truncate, then step away from zero when
/// the exact remainder reaches one half.
#[inline(always)]
fn round_away(x: f32) -> i32 {
    let t = x as i32;
    let frac = x - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// The largest magnitude in `x`. Equal to ggml's sequential `MAX(amax, fabsf(v))` scan for any
/// input without NaNs (max is exact, so the order does not matter); eight lanes let it vectorize.
#[inline(always)]
fn absmax(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            let a = v.abs();
            *m = if *m > a { *m } else { a };
        }
    }
    let mut m = 0f32;
    for a in lanes
        .iter()
        .copied()
        .chain(chunks.remainder().iter().map(|v| v.abs()))
    {
        m = if m > a { m } else { a };
    }
    m
}

/// The first element of largest magnitude (what ggml's `if (amax < fabsf(v))` scan keeps) and
/// that magnitude: a vectorized [`absmax`], then a scan for the first element reaching it.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let amax = absmax(x);
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
    (max, amax)
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

/// Elements per Q4_K sub-block, the group `make_qkx2_quants` fits.
const QKX: usize = 32;

/// ggml's `make_qkx2_quants` for one group of 32: the scale and (negated) minimum for levels
/// `0..=nmax` minimising the weighted squared error, trying `nstep + 1` candidate scales around
/// the range. Writes the chosen levels to `levels`; returns `(scale, -min)`.
///
/// Every sum is accumulated in ggml's order (the choice between candidates depends on the last
/// bit); only the level computations, which are independent per element, are split into their
/// own loops so they vectorize.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32; QKX],
    weights: &[f32; QKX],
    levels: &mut [u8; QKX],
    (rmin, rdelta, nstep): (f32, f32, i32),
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..QKX {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for i in 0..QKX {
        levels[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
    }
    let mut best_error = 0.0f32;
    for i in 0..QKX {
        let diff = scale * levels[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; QKX];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        for i in 0..QKX {
            aux[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..QKX {
            let w = weights[i];
            let l = aux[i] as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..QKX {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                *levels = aux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Quantizes a row to Q4_K as ggml's `quantize_row_q4_K_ref` does: per group of 32 a weighted
/// scale/min fit (`make_qkx2_quants`), both quantized to 6 bits against the super-block's largest.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q4_k(x: &[f32], out: &mut [BlockQ4K]) {
    check_row(x, out);
    let mut levels = [[0u8; QKX]; QK_K / QKX];
    let mut weights = [0f32; QKX];
    let mut mins = [0f32; QK_K / QKX];
    let mut scales = [0f32; QK_K / QKX];
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for (j, (xs, levels)) in x
            .as_chunks::<QKX>()
            .0
            .iter()
            .zip(levels.iter_mut())
            .enumerate()
        {
            let mut sum_x2 = 0.0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (scale, min) = make_qkx2_quants(15, xs, &weights, levels, (-1.0, 0.1, 20));
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }

        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        for j in 0..QK_K / 32 {
            // C stores the int in a uint8_t (wrapping) before capping at 63.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                y.scales[j] = ls;
                y.scales[j + 4] = lm;
            } else {
                y.scales[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
                y.scales[j - 4] |= (ls >> 4) << 6;
                y.scales[j] |= (lm >> 4) << 6;
            }
        }
        y.d = f32_to_f16(max_scale / 63.0);
        y.dmin = f32_to_f16(max_min / 63.0);

        let (d_all, dmin_all) = (f16_to_f32(y.d), f16_to_f32(y.dmin));
        for j in 0..QK_K / 32 {
            let (sc, m) = super::dequant::k4_scale_min(j, &y.scales);
            let d = d_all * sc as f32;
            if d == 0.0 {
                // ggml keeps the levels of the fit for a group whose scale rounds to zero.
                continue;
            }
            let dm = dmin_all * m as f32;
            for (l, &v) in levels[j].iter_mut().zip(&x[QKX * j..QKX * j + QKX]) {
                *l = nearest_int((v + dm) / d).clamp(0, 15) as u8;
            }
        }

        for (qs, l) in y.qs.chunks_exact_mut(QKX).zip(levels.chunks_exact(2)) {
            for i in 0..QKX {
                qs[i] = l[0][i] | (l[1][i] << 4);
            }
        }
    }
}

/// Elements per Q6_K sub-block, the group `make_qx_quants` fits.
const QX: usize = 16;

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights `x^2`): the
/// signed scale for levels in `-nmax..nmax`, refined over 18 candidate scales. Writes
/// `level + nmax` to `levels`; returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32; QX], levels: &mut [i8; QX]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    // ggml's `w*x[i]*l` is `(w*x)*l` and `w*l*l` is `(w*l)*l`: precomputing w and w*x keeps
    // every rounding step.
    let mut w = [0f32; QX];
    let mut wx = [0f32; QX];
    for i in 0..QX {
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
    }
    let nmaxf = nmax as f32;
    let mut l = [0i32; QX];
    let fit = |iscale: f32, l: &mut [i32; QX]| {
        for i in 0..QX {
            l[i] = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        }
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..QX {
            let lf = l[i] as f32;
            sumlx += wx[i] * lf;
            suml2 += w[i] * lf * lf;
        }
        (sumlx, suml2)
    };
    let (sumlx, suml2) = fit(-nmaxf / max, &mut l);
    for i in 0..QX {
        levels[i] = (l[i] + nmax) as i8;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let (sumlx, suml2) = fit(-(nmaxf + 0.1 * is as f32) / max, &mut l);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..QX {
                levels[i] = (l[i] + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Quantizes a row to Q6_K as ggml's `quantize_row_q6_K_ref` does: per group of 16 a signed
/// scale (`make_qx_quants`), quantized to 8 bits against the super-block's largest.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q6_k(x: &[f32], out: &mut [BlockQ6K]) {
    check_row(x, out);
    let mut levels = [0i8; QK_K];
    let mut scales = [0f32; QK_K / QX];
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        let groups = x
            .as_chunks::<QX>()
            .0
            .iter()
            .zip(levels.as_chunks_mut::<QX>().0);
        for (ib, (xs, ls)) in groups.enumerate() {
            let scale = make_qx_quants(32, xs, ls);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *y = zeroed_block();
            continue;
        }

        let iscale = -128.0 / max_scale;
        y.d = f32_to_f16(1.0 / iscale);
        for (s, &scale) in y.scales.iter_mut().zip(scales.iter()) {
            *s = nearest_int(iscale * scale).min(127) as i8;
        }
        let d_all = f16_to_f32(y.d);
        for j in 0..QK_K / 16 {
            let d = d_all * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                levels[16 * j + ii] = (l + 32) as i8;
            }
        }

        for (half, l) in levels.chunks_exact(128).enumerate() {
            let ql = &mut y.ql[half * 64..half * 64 + 64];
            let qh = &mut y.qh[half * 32..half * 32 + 32];
            for i in 0..32 {
                let q = [
                    l[i] as u8,
                    l[i + 32] as u8,
                    l[i + 64] as u8,
                    l[i + 96] as u8,
                ];
                ql[i] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
                ql[i + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
                qh[i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
    }
}
