//! The K-quant quantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), each reproducing ggml's
//! `quantize_row_*_ref`, which is what llama.cpp's quantizer runs for these types without an
//! importance matrix: per group a scale fit ([`super::fit`]), the group scales quantized against
//! the super-block's largest, then every weight re-quantized with its group's rounded scale.

use super::blocks::*;
use super::dequant::{k4_scale_min, q3_k_scales};
use super::fit::*;
use super::float::{f16_to_f32, f32_to_f16};
use super::quantize::check_row;
use super::types::QK_K;
use super::view::zeroed_block;

/// Packs the 2-bit levels of 256 weights as Q2_K and Q3_K store them: byte `32h + l` of `qs`
/// holds elements `128h + l + 32k` in bits `2k` (`k` = 0..4).
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for (half, l) in levels.chunks_exact(128).enumerate() {
        for i in 0..32 {
            qs[32 * half + i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
}

/// The search of Q2_K's group fits.
const Q2K_SEARCH: Qkx2Search = Qkx2Search {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    mad: true,
};

/// Quantizes a row to Q2_K as ggml's `quantize_row_q2_K_ref` does: per group of 16 a scale and
/// minimum (`make_qkx2_quants` on the absolute error weighted by `|x|`), both quantized to
/// 4 bits against the super-block's largest.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q2_k(x: &[f32], out: &mut [BlockQ2K]) {
    check_row(x, out);
    /// ggml's `q4scale`: the 4-bit range of the group scales and minimums.
    const Q4SCALE: f32 = 15.0;
    let mut levels = [0u8; QK_K];
    let mut weights = [0f32; 16];
    let mut scales = [0f32; QK_K / 16];
    let mut mins = [0f32; QK_K / 16];
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        let groups = x
            .as_chunks::<16>()
            .0
            .iter()
            .zip(levels.as_chunks_mut::<16>().0);
        for (j, (xs, ls)) in groups.enumerate() {
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) = make_qkx2_quants(3, xs, &weights, ls, Q2K_SEARCH);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }

        y.scales = [0; QK_K / 16];
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &scale) in y.scales.iter_mut().zip(&scales) {
                // C stores the int in a uint8_t.
                *s = nearest_int(iscale * scale) as u8;
            }
            y.d = f32_to_f16(max_scale / Q4SCALE);
        } else {
            y.d = f32_to_f16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &min) in y.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * min) << 4) as u8;
            }
            y.dmin = f32_to_f16(max_min / Q4SCALE);
        } else {
            y.dmin = f32_to_f16(0.0);
        }

        let (d_all, dmin_all) = (f16_to_f32(y.d), f16_to_f32(y.dmin));
        for j in 0..QK_K / 16 {
            let d = d_all * (y.scales[j] & 0x0f) as f32;
            if d == 0.0 {
                // ggml keeps the levels of the fit for a group whose scale rounds to zero.
                continue;
            }
            let dm = dmin_all * (y.scales[j] >> 4) as f32;
            for ii in 0..16 {
                levels[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&levels, &mut y.qs);
    }
}

/// Quantizes a row to Q3_K as ggml's `quantize_row_q3_K_ref` does: per group of 16 a signed scale
/// (`make_q3_quants`), quantized to 6 bits against the super-block's largest; the third bit of
/// each level goes to `hmask`.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q3_k(x: &[f32], out: &mut [BlockQ3K]) {
    check_row(x, out);
    let mut levels = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        let groups = x
            .as_chunks::<16>()
            .0
            .iter()
            .zip(levels.as_chunks_mut::<16>().0);
        for (j, (xs, ls)) in groups.enumerate() {
            scales[j] = make_q3_quants(4, xs, ls);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }

        y.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &scale) in scales.iter().enumerate() {
                // C stores the int in an int8_t before clamping.
                let l = (nearest_int(iscale * scale) as i8).clamp(-32, 31) + 32;
                let l = l as u8;
                if j < 8 {
                    y.scales[j] = l & 0x0f;
                } else {
                    y.scales[j - 8] |= (l & 0x0f) << 4;
                }
                y.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            y.d = f32_to_f16(1.0 / iscale);
        } else {
            y.d = f32_to_f16(0.0);
        }

        let d_all = f16_to_f32(y.d);
        let sc = q3_k_scales(&y.scales);
        for j in 0..QK_K / 16 {
            let d = d_all * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
                levels[16 * j + ii] = (l + 4) as i8;
            }
        }

        // The high bit of element j goes to bit j / 32 of hmask[j % 32].
        y.hmask = [0; QK_K / 8];
        let mut low = [0u8; QK_K];
        for (j, (&l, lo)) in levels.iter().zip(low.iter_mut()).enumerate() {
            let l = l as u8;
            if l > 3 {
                y.hmask[j % 32] |= 1 << (j / 32);
                *lo = l - 4;
            } else {
                *lo = l;
            }
        }
        pack_2bit(&low, &mut y.qs);
    }
}

/// Elements per Q4_K / Q5_K group, the group `make_qkx2_quants` fits.
const QKX: usize = 32;

/// The 6-bit scales and minimums of a Q4_K / Q5_K super-block and the levels of its weights:
/// per group of 32 a weighted scale/min fit (`make_qkx2_quants`, weights `sqrt(mean(x^2)) + |x|`),
/// both quantized to 6 bits against the super-block's largest, then every weight re-quantized
/// to `0..=nmax`. Returns `(scales, d, dmin)` and fills `levels`.
fn quantize_k4_like(
    x: &[f32],
    nmax: i32,
    search: Qkx2Search,
    levels: &mut [[u8; QKX]; QK_K / QKX],
) -> ([u8; 12], half::f16, half::f16) {
    let mut weights = [0f32; QKX];
    let mut mins = [0f32; QK_K / QKX];
    let mut scales = [0f32; QK_K / QKX];
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
        let (scale, min) = make_qkx2_quants(nmax, xs, &weights, levels, search);
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
    let mut packed = [0u8; 12];
    for j in 0..QK_K / QKX {
        // C stores the int in a uint8_t (wrapping) before capping at 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);

    let (d_all, dmin_all) = (f16_to_f32(d), f16_to_f32(dmin));
    for j in 0..QK_K / QKX {
        let (sc, m) = k4_scale_min(j, &packed);
        let d = d_all * sc as f32;
        if d == 0.0 {
            // ggml keeps the levels of the fit for a group whose scale rounds to zero.
            continue;
        }
        let dm = dmin_all * m as f32;
        for (l, &v) in levels[j].iter_mut().zip(&x[QKX * j..QKX * j + QKX]) {
            *l = nearest_int((v + dm) / d).clamp(0, nmax) as u8;
        }
    }
    (packed, d, dmin)
}

/// Quantizes a row to Q4_K as ggml's `quantize_row_q4_K_ref` does (see [`quantize_k4_like`]).
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q4_k(x: &[f32], out: &mut [BlockQ4K]) {
    check_row(x, out);
    const SEARCH: Qkx2Search = Qkx2Search {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        mad: false,
    };
    let mut levels = [[0u8; QKX]; QK_K / QKX];
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        (y.scales, y.d, y.dmin) = quantize_k4_like(x, 15, SEARCH, &mut levels);
        for (qs, l) in y.qs.chunks_exact_mut(QKX).zip(levels.chunks_exact(2)) {
            for i in 0..QKX {
                qs[i] = l[0][i] | (l[1][i] << 4);
            }
        }
    }
}

/// Quantizes a row to Q5_K as ggml's `quantize_row_q5_K_ref` does (see [`quantize_k4_like`]);
/// the fifth bit of each level goes to `qh`.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q5_k(x: &[f32], out: &mut [BlockQ5K]) {
    check_row(x, out);
    const SEARCH: Qkx2Search = Qkx2Search {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        mad: false,
    };
    let mut levels = [[0u8; QKX]; QK_K / QKX];
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        (y.scales, y.d, y.dmin) = quantize_k4_like(x, 31, SEARCH, &mut levels);
        // Groups 2p and 2p + 1 share the 32 bytes at 32p (low and high nibbles); their fifth
        // bits are bits 2p and 2p + 1 of qh.
        y.qh = [0; QK_K / 8];
        for (p, (qs, l)) in
            y.qs.chunks_exact_mut(QKX)
                .zip(levels.chunks_exact(2))
                .enumerate()
        {
            for i in 0..QKX {
                let (l1, l2) = (l[0][i], l[1][i]);
                y.qh[i] |= ((l1 >> 4) << (2 * p)) | ((l2 >> 4) << (2 * p + 1));
                qs[i] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
            }
        }
    }
}

/// Elements per Q6_K sub-block, the group `make_qx_quants` fits.
const QX: usize = 16;

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
