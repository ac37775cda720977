//! Flash attention of a tile of queries that share one KV head, over f16 keys and values: each
//! block of [`KEY_BLOCK`] keys and values is converted to f32 once and used by every query of the
//! tile; sixteen key dot products are summed into one register at once (a transposing
//! reduction), and each query keeps an online softmax (running maximum, running sum, f32
//! accumulator), so the work is independent of how many keys a query sees.

use half::f16;

use super::*;

/// Keys per block: one score per 32-bit lane.
pub(in crate::cpu) const KEY_BLOCK: usize = 16;

/// `e^x` in every lane (about 1 ulp): `x = n ln 2 + r`, a degree-7 polynomial for `e^r`, scaled
/// by `2^n`. Lanes below -104 (including -inf and NaN) give 0.
///
/// # Safety
/// AVX-512 F.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn exp_ps(x: __m512) -> __m512 {
    // `max` returns its second operand for NaN lanes.
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n =
        _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for coef in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
    }
    _mm512_scalef_ps(p, n)
}

/// Within each 128-bit lane: `[a0 + a2, b0 + b2, a1 + a3, b1 + b3]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn sum_pairs(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
}

/// From two [`sum_pairs`] results: within each 128-bit lane, `[Σa, Σb, Σc, Σd]` of that lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn sum_quads(ab: __m512, cd: __m512) -> __m512 {
    // Move 64-bit pairs of floats, add as floats.
    let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
    _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
    )
}

/// `[x.l0 + x.l1, x.l2 + x.l3, y.l0 + y.l1, y.l2 + y.l3]` of the 128-bit lanes `l`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn sum_lanes(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
    )
}

/// Lane `i` = the sum of the lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn transpose_sum(v: &[__m512; 16]) -> __m512 {
    let u0 = sum_quads(sum_pairs(v[0], v[1]), sum_pairs(v[2], v[3]));
    let u1 = sum_quads(sum_pairs(v[4], v[5]), sum_pairs(v[6], v[7]));
    let u2 = sum_quads(sum_pairs(v[8], v[9]), sum_pairs(v[10], v[11]));
    let u3 = sum_quads(sum_pairs(v[12], v[13]), sum_pairs(v[14], v[15]));
    sum_lanes(sum_lanes(u0, u1), sum_lanes(u2, u3))
}

/// One query's place in a tile: its row of `queries`, the keys it sees (`lo..hi`), its state.
pub(in crate::cpu) struct TileQuery {
    /// First visible key position.
    pub lo: usize,
    /// One past the last visible key position.
    pub hi: usize,
}

/// The buffers and state of one tile's pass over a range of keys.
pub(in crate::cpu) struct TileState<'s> {
    /// Keys of the current block as f32: `KEY_BLOCK × head_dim`.
    pub kf: &'s mut [f32],
    /// Values of the current block as f32: `KEY_BLOCK × head_dim`.
    pub vf: &'s mut [f32],
    /// Per query: running maximum.
    pub max: &'s mut [f32],
    /// Per query: running sum of `e^(s - max)`.
    pub sum: &'s mut [f32],
    /// Per query: `head_dim` accumulated values, scaled by `e^(-max)`.
    pub acc: &'s mut [f32],
}

/// Folds keys `keys` of KV head `kv_head` (rows of `width` values, heads of `hd`) into the
/// online softmax of every query of the tile (`queries`: one row of `hd` f32 values each).
///
/// # Safety
/// AVX-512 F/BW/VL and F16C; `hd` a multiple of 16; `k` and `v` hold every row of `keys`;
/// `queries.len() == tile.len() * hd`; the state's slices sized as documented.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn attend_f16_tile(
    k: &[f16],
    v: &[f16],
    width: usize,
    hd: usize,
    kv_head: usize,
    queries: &[f32],
    tile: &[TileQuery],
    keys: std::ops::Range<usize>,
    scale: f32,
    softcap: Option<f32>,
    st: &mut TileState<'_>,
) {
    let chunks = hd / 16;
    let mut j0 = keys.start;
    while j0 < keys.end {
        let nb = (keys.end - j0).min(KEY_BLOCK);
        let j1 = j0 + nb;
        if !tile.iter().any(|t| t.lo < j1 && t.hi > j0) {
            j0 = j1;
            continue;
        }
        for i in 0..nb {
            let at = (j0 + i) * width + kv_head * hd;
            // SAFETY: row j0 + i of `keys` is in `k` and `v` (the contract), with head
            // `kv_head`'s `hd` values from `at`.
            let (kr, vr) = unsafe { (k.as_ptr().add(at), v.as_ptr().add(at)) };
            for c in 0..chunks {
                // SAFETY: 16 c + 16 <= hd halves of the head row `kr`.
                let kh = unsafe { _mm256_loadu_si256(kr.add(16 * c).cast()) };
                // SAFETY: as `kh`, in `vr`.
                let vh = unsafe { _mm256_loadu_si256(vr.add(16 * c).cast()) };
                // SAFETY: i < nb <= KEY_BLOCK and 16 c + 16 <= hd: in the KEY_BLOCK × hd
                // values of `kf` and `vf` (the contract).
                unsafe {
                    _mm512_storeu_ps(st.kf.as_mut_ptr().add(i * hd + 16 * c), _mm512_cvtph_ps(kh));
                    _mm512_storeu_ps(st.vf.as_mut_ptr().add(i * hd + 16 * c), _mm512_cvtph_ps(vh));
                }
            }
        }
        for (qi, t) in tile.iter().enumerate() {
            let (lo, hi) = (t.lo.max(j0), t.hi.min(j1));
            if lo >= hi {
                continue;
            }
            // Sixteen scores: key i of the block · the query.
            // SAFETY: qi < tile.len() and queries.len() == tile.len() * hd (the contract): the
            // query's `hd` values from `q`.
            let q = unsafe { queries.as_ptr().add(qi * hd) };
            let mut dots = [_mm512_setzero_ps(); 16];
            for (i, d) in dots.iter_mut().enumerate().take(nb) {
                // SAFETY: i < nb <= KEY_BLOCK: key i's `hd` values in `kf` (the contract), and
                // hd >= 16 values in both rows (a multiple of 16, the contract).
                let (kr, mut a) = unsafe {
                    let kr = st.kf.as_ptr().add(i * hd);
                    (kr, _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(kr)))
                };
                for c in 1..chunks {
                    // SAFETY: 16 c + 16 <= hd values of both rows.
                    let (qc, kc) = unsafe {
                        (
                            _mm512_loadu_ps(q.add(16 * c)),
                            _mm512_loadu_ps(kr.add(16 * c)),
                        )
                    };
                    a = _mm512_fmadd_ps(qc, kc, a);
                }
                *d = a;
            }
            let mut s = _mm512_mul_ps(transpose_sum(&dots), _mm512_set1_ps(scale));
            if let Some(cap) = softcap {
                let mut lanes = [0.0f32; 16];
                // SAFETY: the 16 floats of `lanes`.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), s) };
                lanes.iter_mut().for_each(|x| *x = (*x / cap).tanh() * cap);
                // SAFETY: the 16 floats of `lanes`.
                s = unsafe { _mm512_loadu_ps(lanes.as_ptr()) };
            }
            // Lanes of keys this query does not see take no part.
            let seen: u32 = ((1u64 << (hi - j0)) - (1u64 << (lo - j0))) as u32;
            let seen = seen as __mmask16;
            let s = _mm512_mask_mov_ps(_mm512_set1_ps(f32::NEG_INFINITY), seen, s);
            let old = st.max[qi];
            let new = old.max(_mm512_reduce_max_ps(s));
            // SAFETY: AVX-512 F (the contract), all `exp_ps` needs.
            let e = unsafe { exp_ps(_mm512_sub_ps(s, _mm512_set1_ps(new))) };
            let p = _mm512_maskz_mov_ps(seen, e);
            let factor = if old == new {
                1.0
            } else {
                // SAFETY: as for `e`.
                let e = unsafe { exp_ps(_mm512_set1_ps(old - new)) };
                _mm_cvtss_f32(_mm512_castps512_ps128(e))
            };
            st.sum[qi] = st.sum[qi] * factor + _mm512_reduce_add_ps(p);
            st.max[qi] = new;
            let mut weights = [0.0f32; 16];
            // SAFETY: the 16 floats of `weights`.
            unsafe { _mm512_storeu_ps(weights.as_mut_ptr(), p) };
            // SAFETY: qi < tile.len(), and `acc` holds `hd` values per query of the tile (the
            // contract).
            let acc = unsafe { st.acc.as_mut_ptr().add(qi * hd) };
            let f = _mm512_set1_ps(factor);
            for c in 0..chunks {
                // SAFETY: 16 c + 16 <= hd values of the query's accumulator.
                let mut a = unsafe { _mm512_loadu_ps(acc.add(16 * c)) };
                if factor != 1.0 {
                    a = _mm512_mul_ps(a, f);
                }
                for (i, &w) in weights.iter().enumerate().take(hi - j0).skip(lo - j0) {
                    // SAFETY: i < hi - j0 <= nb <= KEY_BLOCK and 16 c + 16 <= hd: in the
                    // KEY_BLOCK × hd values of `vf` (the contract).
                    let vc = unsafe { _mm512_loadu_ps(st.vf.as_ptr().add(i * hd + 16 * c)) };
                    a = _mm512_fmadd_ps(_mm512_set1_ps(w), vc, a);
                }
                // SAFETY: as the load of `a`.
                unsafe { _mm512_storeu_ps(acc.add(16 * c), a) };
            }
        }
        j0 = j1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{isa, Isa};

    /// [`transpose_sum`] on plain arrays.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn sums(lanes: &[[f32; 16]; 16]) -> [f32; 16] {
        let mut v = [_mm512_setzero_ps(); 16];
        for (v, l) in v.iter_mut().zip(lanes) {
            // SAFETY: the 16 floats of `l`.
            *v = unsafe { _mm512_loadu_ps(l.as_ptr()) };
        }
        let mut out = [0.0f32; 16];
        // SAFETY: the 16 floats of `out`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), transpose_sum(&v)) };
        out
    }

    /// [`exp_ps`] on a plain array.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn exps(x: &[f32; 16]) -> [f32; 16] {
        let mut out = [0.0f32; 16];
        // SAFETY: the 16 floats of `x` and of `out`; AVX-512 F is the caller's (the contract).
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp_ps(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    #[test]
    fn transpose_sum_and_exp_match_scalar() {
        if isa() < Isa::Avx512 {
            return;
        }
        let lanes: [[f32; 16]; 16] =
            std::array::from_fn(|i| std::array::from_fn(|j| (i * 16 + j) as f32 * 0.25 - 7.0));
        // SAFETY: AVX-512 checked above.
        let got = unsafe { sums(&lanes) };
        for (i, l) in lanes.iter().enumerate() {
            assert_eq!(got[i], l.iter().sum::<f32>(), "lane {i}");
        }
        for c in 0..10 {
            let x: [f32; 16] = std::array::from_fn(|j| -103.0 + (16 * c + j) as f32 * 0.66);
            // SAFETY: AVX-512 checked above.
            let got = unsafe { exps(&x) };
            for (&x, &g) in x.iter().zip(&got) {
                let want = x.exp();
                assert!(
                    (g - want).abs() <= 2.5e-7 * want,
                    "exp({x}) = {g}, not {want}"
                );
            }
        }
        let mut x = [0.0f32; 16];
        x[..6].copy_from_slice(&[f32::NEG_INFINITY, f32::NAN, -200.0, 0.0, -0.0, 1.0]);
        // SAFETY: AVX-512 checked above.
        let special = unsafe { exps(&x) };
        assert_eq!(&special[..5], &[0.0, 0.0, 0.0, 1.0, 1.0]);
        assert!((special[5] - std::f32::consts::E).abs() < 1e-6);
    }
}
