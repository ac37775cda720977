//! The rounding helpers and scale searches that ggml's reference quantizers share
//! (`ggml-quants.c`: `nearest_int`, `make_qkx2_quants`, `make_qx_quants`, `make_q3_quants`,
//! `best_index_int8`), reproduced operation for operation: which candidate scale wins depends on
//! the last bit of each sum, so every sum is accumulated in ggml's order and Rust never fuses a
//! multiply and an add. Only computations that are independent per element are split into their
//! own loops (so they vectorize).

/// ggml treats a group whose largest magnitude is below this as all zeros.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

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
pub(crate) fn round_away(x: f32) -> i32 {
    let t = x as i32;
    let frac = x - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// The largest magnitude in `x`. Equal to ggml's sequential `MAX(amax, fabsf(v))` scan for any
/// input without NaNs (max is exact, so the order does not matter); eight lanes let it vectorize.
#[inline(always)]
pub fn absmax(x: &[f32]) -> f32 {
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
pub(crate) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let amax = absmax(x);
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
    (max, amax)
}

/// The search parameters of [`make_qkx2_quants`]: candidate inverse scales
/// `(rmin + rdelta * is + nmax) / (max - min)` for `is` in `0..=nstep`, and whether the error is
/// the weighted absolute (`mad`) or squared difference.
#[derive(Clone, Copy)]
pub(crate) struct Qkx2Search {
    /// Offset of the first candidate, in levels.
    pub rmin: f32,
    /// Step between candidates, in levels.
    pub rdelta: f32,
    /// Candidates after the first.
    pub nstep: i32,
    /// Absolute instead of squared error.
    pub mad: bool,
}

/// ggml's `make_qkx2_quants` for one group of `N`: the scale and (negated) minimum for levels
/// `0..=nmax` minimising the weighted error, trying `nstep + 1` candidate scales around the
/// range. Writes the chosen levels to `levels`; returns `(scale, -min)`.
pub(crate) fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    levels: &mut [u8; N],
    search: Qkx2Search,
) -> (f32, f32) {
    let err = |diff: f32| if search.mad { diff.abs() } else { diff * diff };
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
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
    for i in 0..N {
        levels[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
    }
    let mut best_error = 0.0f32;
    for i in 0..N {
        let diff = scale * levels[i] as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    let mut aux = [0u8; N];
    for is in 0..=search.nstep {
        iscale = (search.rmin + search.rdelta * is as f32 + nmax as f32) / (max - min);
        for i in 0..N {
            aux[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..N {
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
            for i in 0..N {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
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

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights `x^2`): the
/// signed scale for levels in `-nmax..nmax`, refined over 18 candidate scales. Writes
/// `level + nmax` to `levels`; returns the scale.
pub(crate) fn make_qx_quants<const N: usize>(nmax: i32, x: &[f32; N], levels: &mut [i8; N]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    // ggml's `w*x[i]*l` is `(w*x)*l` and `w*l*l` is `(w*l)*l`: precomputing w and w*x keeps
    // every rounding step.
    let mut w = [0f32; N];
    let mut wx = [0f32; N];
    for i in 0..N {
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
    }
    let nmaxf = nmax as f32;
    let mut l = [0i32; N];
    let fit = |iscale: f32, l: &mut [i32; N]| {
        for i in 0..N {
            l[i] = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        }
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..N {
            let lf = l[i] as f32;
            sumlx += wx[i] * lf;
            suml2 += w[i] * lf * lf;
        }
        (sumlx, suml2)
    };
    let (sumlx, suml2) = fit(-nmaxf / max, &mut l);
    for i in 0..N {
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
            for i in 0..N {
                levels[i] = (l[i] + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: the signed scale for levels in `-nmax..nmax`, from
/// `-nmax / max` and then up to five passes that move single levels while the weighted fit
/// (weights `x^2`) improves. Writes `level + nmax` to `levels`; returns the scale.
pub(crate) fn make_q3_quants<const N: usize>(nmax: i32, x: &[f32; N], levels: &mut [i8; N]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; N];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..N {
        l[i] = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        let w = x[i] * x[i];
        sumlx += w * x[i] * l[i] as f32;
        suml2 += w * l[i] as f32 * l[i] as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..N {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l[i] as f32 * l[i] as f32;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for i in 0..N {
        levels[i] = (l[i] + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's `best_index_int8`: the index of the level in the ascending `values` nearest to `x`
/// (binary search; of two equally near levels, the upper).
#[inline(always)]
pub(crate) fn best_index_int8(values: &[i8; 16], x: f32) -> u8 {
    let n = values.len();
    if x <= f32::from(values[0]) {
        return 0;
    }
    if x >= f32::from(values[n - 1]) {
        return (n - 1) as u8;
    }
    let (mut ml, mut mu) = (0usize, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < f32::from(values[mav]) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - f32::from(values[mu - 1]) < f32::from(values[mu]) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}
