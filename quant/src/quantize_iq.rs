//! Quantizers of the non-linear (IQ4_NL, IQ4_XS), ternary (TQ1_0, TQ2_0) and MXFP4 formats,
//! byte-exact with what llama.cpp's quantizer writes without an importance matrix: ggml's
//! `quantize_iq4_nl` / `quantize_iq4_xs` (both `quantize_row_iq4_nl_impl` with 7 scale trials;
//! note that ggml's `quantize_row_iq4_nl_ref` runs none, llama-quantize does),
//! `quantize_row_tq1_0_ref`, `quantize_row_tq2_0_ref` and `quantize_row_mxfp4_ref`.

use super::blocks_iq::*;
use super::fit::*;
use super::float::f32_to_f16;
use super::quantize::check_row;
use super::tables::{e8m0_to_f32_half, KVALUES_IQ4NL, KVALUES_MXFP4};
use super::types::{QK, QK_K};

/// Scale trials on each side of the first guess in ggml's IQ4 quantizer (`ntry`).
const IQ4_TRIES: i32 = 7;

/// Elements per IQ4 group (one scale each).
const IQ4_GROUP: usize = 32;

/// ggml's per-group fit of `quantize_row_iq4_nl_impl` without importance weights (weights
/// `x^2`): the levels from the first guess `max / 127` and the best scale of `2 * IQ4_TRIES + 1`
/// trials (the trials move only the scale). Returns the scale; leaves `levels` untouched for a
/// group below [`GROUP_MAX_EPS`] (which gets scale 0).
fn iq4_group_fit(x: &[f32; IQ4_GROUP], levels: &mut [u8; IQ4_GROUP]) -> f32 {
    let values = &KVALUES_IQ4NL;
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let mut w = [0f32; IQ4_GROUP];
    for (w, v) in w.iter_mut().zip(x) {
        *w = v * v;
    }
    // `w*q*x` is `(w*q)*x` and `w*q*q` is `(w*q)*q` in C.
    let sums = |id: f32, levels: Option<&mut [u8; IQ4_GROUP]>| {
        let mut l = [0u8; IQ4_GROUP];
        for (l, &v) in l.iter_mut().zip(x) {
            *l = best_index_int8(values, id * v);
        }
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for i in 0..IQ4_GROUP {
            let q = f32::from(values[usize::from(l[i])]);
            sumqx += w[i] * q * x[i];
            sumq2 += w[i] * q * q;
        }
        if let Some(levels) = levels {
            *levels = l;
        }
        (sumqx, sumq2)
    };
    let d = -max / f32::from(values[0]);
    let (sumqx, sumq2) = sums(1.0 / d, Some(levels));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -IQ4_TRIES..=IQ4_TRIES {
        let id = (itry + i32::from(values[0])) as f32 / max;
        let (sumqx, sumq2) = sums(id, None);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The IQ4 levels of `x` for the reciprocal scale `id`.
fn iq4_levels(x: &[f32], id: f32, levels: &mut [u8]) {
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = best_index_int8(&KVALUES_IQ4NL, id * v);
    }
}

/// Packs 32 4-bit levels: byte `j` holds level `j` (low nibble) and level `j + 16` (high).
fn pack_nibbles(levels: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = levels[j] | (levels[j + 16] << 4);
    }
}

/// Quantizes a row to IQ4_NL as llama.cpp's quantizer does (ggml's `quantize_iq4_nl` without an
/// importance matrix): per block of 32 a fitted scale, then the levels nearest to `x / d`.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_iq4_nl(x: &[f32], out: &mut [BlockIQ4NL]) {
    check_row(x, out);
    let mut levels = [0u8; IQ4_GROUP];
    for (x, y) in x.as_chunks::<QK>().0.iter().zip(out.iter_mut()) {
        let d = iq4_group_fit(x, &mut levels);
        y.d = f32_to_f16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        iq4_levels(x, id, &mut levels);
        pack_nibbles(&levels, &mut y.qs);
    }
}

/// Quantizes a row to IQ4_XS as llama.cpp's quantizer does (ggml's `quantize_iq4_xs` without an
/// importance matrix): per group of 32 a fitted scale, the eight scales quantized to signed
/// 6 bits against the super-block's largest, then the levels nearest to `x / (d * l)`.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_iq4_xs(x: &[f32], out: &mut [BlockIQ4XS]) {
    check_row(x, out);
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; QK_K / IQ4_GROUP];
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
        let groups = x.as_chunks::<IQ4_GROUP>().0.iter();
        for (ib, (xs, ls)) in groups.zip(levels.as_chunks_mut().0).enumerate() {
            scales[ib] = iq4_group_fit(xs, ls);
            if scales[ib].abs() > amax_scale {
                amax_scale = scales[ib].abs();
                max_scale = scales[ib];
            }
        }
        let d = -max_scale / 32.0;
        y.d = f32_to_f16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.scales_h = 0;
        y.scales_l = [0; QK_K / 64];
        for (ib, xs) in x.chunks_exact(IQ4_GROUP).enumerate() {
            let l = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            iq4_levels(xs, idl, &mut levels[IQ4_GROUP * ib..IQ4_GROUP * (ib + 1)]);
            let l = (l + 32) as u8;
            y.scales_l[ib / 2] |= (l & 0x0f) << (4 * (ib % 2));
            y.scales_h |= u16::from(l >> 4) << (2 * ib);
        }
        for (qs, l) in y.qs.chunks_exact_mut(16).zip(levels.chunks_exact(32)) {
            pack_nibbles(l, qs);
        }
    }
}

/// The ternary value (0, 1 or 2 for -1, 0, 1) of `v` at reciprocal scale `id`: C's
/// `lroundf(v * id) + 1`, computed in the byte arithmetic ggml stores it in.
#[inline(always)]
fn trit(v: f32, id: f32) -> u8 {
    (round_away(v * id) + 1) as u8
}

/// The largest magnitude of a TQ super-block, its f16 scale and reciprocal scale.
fn ternary_scale(x: &[f32]) -> (half::f16, f32) {
    let d = absmax(x);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (f32_to_f16(d), id)
}

/// Five trits in one byte, first trit most significant, scaled so that the byte times `3^n`
/// (wrapping) times 3, divided by 256, gives trit `n` back: ceil(q * 256 / 243).
#[inline(always)]
fn pack_trits(trits: impl Iterator<Item = u8>) -> u8 {
    let q = trits.fold(0u8, |q, t| q.wrapping_mul(3).wrapping_add(t));
    (u16::from(q) * 256).div_ceil(243) as u8
}

/// Quantizes a row to TQ1_0 as ggml's `quantize_row_tq1_0_ref` does: `d = max |x|`, trits
/// `round(x / d)`, five per byte (elements `32n + m` in byte `m` for bytes 0..32, `160 + 16n + m`
/// for bytes 32..48) and four per `qh` byte (elements `240 + 4n + j`).
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_tq1_0(x: &[f32], out: &mut [BlockTQ1_0]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (d, id) = ternary_scale(x);
        y.d = d;
        for m in 0..32 {
            y.qs[m] = pack_trits((0..5).map(|n| trit(x[32 * n + m], id)));
        }
        for m in 0..16 {
            y.qs[32 + m] = pack_trits((0..5).map(|n| trit(x[160 + 16 * n + m], id)));
        }
        for j in 0..4 {
            // Four trits, then a zero trit, so the first lands in the most significant place.
            let t = (0..4).map(|n| trit(x[240 + 4 * n + j], id)).chain([0]);
            y.qh[j] = pack_trits(t);
        }
    }
}

/// Quantizes a row to TQ2_0 as ggml's `quantize_row_tq2_0_ref` does: `d = max |x|`, values
/// `round(x / d) + 1` in two bits, four bit-planes per 32 bytes.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_tq2_0(x: &[f32], out: &mut [BlockTQ2_0]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (d, id) = ternary_scale(x);
        y.d = d;
        for (half, x) in x.chunks_exact(128).enumerate() {
            for m in 0..32 {
                y.qs[32 * half + m] =
                    (0..4).fold(0u8, |q, n| q | ((trit(x[32 * n + m], id) & 3) << (2 * n)));
            }
        }
    }
}

/// The index of the doubled E2M1 value that, times `d`, is nearest to `x` (the first of equally
/// near ones), as ggml's `best_index_mxfp4`.
#[inline(always)]
fn best_index_mxfp4(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (f32::from(KVALUES_MXFP4[0]) * d - x).abs();
    for (i, &v) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (f32::from(v) * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// Quantizes a row to MXFP4 as ggml's `quantize_row_mxfp4_ref` does: the shared exponent
/// `floor(log2(max |x|)) - 2` (so the largest value lands on the top E2M1 magnitudes), then the
/// nearest E2M1 value for each element.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_mxfp4(x: &[f32], out: &mut [BlockMXFP4]) {
    check_row(x, out);
    for (x, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = absmax(x);
        // C converts the float to uint8_t: on x86 through a 32-bit integer, keeping its low byte.
        y.e = if amax > 0.0 {
            ((amax.log2().floor() - 2.0 + 127.0) as i32) as u8
        } else {
            0
        };
        let d = e8m0_to_f32_half(y.e);
        for j in 0..QK / 2 {
            y.qs[j] = best_index_mxfp4(x[j], d) | (best_index_mxfp4(x[j + QK / 2], d) << 4);
        }
    }
}
