//! The shared body of the super-block formats whose 256 weights unpack into eight groups of 32
//! small integers with 16-bit integer scales (Q2_K, Q3_K and the IQ and TQ formats), against Q8_K
//! activations.
//!
//! Per super-block and activation row it sums `Σ_g Σ_i scale_g(i) · w_i · q8_i` exactly in i32
//! lanes (`maddubs` on the weights' magnitudes and the activations carrying the weights' signs,
//! then `madd` with the scales), reduces the lanes, and hands the integer to the format's
//! `finish`, which does the scalar reference's float operations. So each kernel built on it is
//! bit-identical to its scalar twin.

use super::*;
use crate::quant::BlockQ8K;

/// One group of 32 weights as [`dot_groups`] consumes it.
#[derive(Clone, Copy)]
pub(super) struct Group {
    /// The weights' magnitudes as unsigned bytes (at most 127), element order.
    mag: __m256i,
    /// A byte per weight that is negative where the weight is (for `_mm256_sign_epi8` on the
    /// activations); ignored by kernels whose weights are all non-negative.
    sign: __m256i,
    /// The integer scale of each of the 16 i16 lanes `maddubs` produces: lanes 0..8 hold the
    /// products of weights 0..16, lanes 8..16 those of weights 16..32.
    scale: __m256i,
}

impl Group {
    /// A group of signed weights `w` (bytes, -127..=127) with one scale per 16 weights.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn signed(w: __m256i, scale_lo: i16, scale_hi: i16) -> Group {
        Group {
            mag: _mm256_sign_epi8(w, w),
            sign: w,
            scale: halves(scale_lo, scale_hi),
        }
    }

    /// A group of magnitudes `mag` with sign bytes `sign` (negative where the weight is).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn with_signs(mag: __m256i, sign: __m256i, scale_lo: i16, scale_hi: i16) -> Group {
        Group {
            mag,
            sign,
            scale: halves(scale_lo, scale_hi),
        }
    }

    /// A group of non-negative weights `w` (bytes, 0..=127) with one scale per 16 weights.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn unsigned(w: __m256i, scale_lo: i16, scale_hi: i16) -> Group {
        Group {
            mag: w,
            sign: w,
            scale: halves(scale_lo, scale_hi),
        }
    }
}

/// Eight i16 lanes of `lo`, then eight of `hi`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// Sign bytes for [`Group::with_signs`] from eight `KSIGNS64`-style words (0xff bytes where
/// negative, 0 elsewhere): zero bytes become 1 so `_mm256_sign_epi8` keeps the activation.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sign_bytes(neg: __m256i) -> __m256i {
    _mm256_or_si256(neg, _mm256_set1_epi8(1))
}

/// `factor · Σ_blocks finish(x, y, isum)` for `K` activation rows, where `isum` is the block's
/// exact `Σ scale · w · q8` over the eight groups `group(x, &prep(x), g)` (`prep` unpacks what
/// the groups of a block share, such as packed scales). `SIGNED` says whether the weights can be
/// negative (when not, the activations are used as they are).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_groups<B, P, const K: usize, const SIGNED: bool>(
    w: &[B],
    a: [&[BlockQ8K]; K],
    prep: impl Fn(&B) -> P,
    group: impl Fn(&B, &P, usize) -> Group,
    finish: impl Fn(&B, &BlockQ8K, i32) -> f32,
    factor: f32,
) -> [f32; K] {
    for row in &a {
        assert_eq!(
            row.len(),
            w.len(),
            "dot product of rows with different block counts"
        );
    }
    let mut out = [0.0f32; K];
    for (i, x) in w.iter().enumerate() {
        if K == 1 {
            prefetch_next_row(w, i);
        }
        let shared = prep(x);
        let mut sumi = [_mm256_setzero_si256(); K];
        for g in 0..8 {
            let gr = group(x, &shared, g);
            for t in 0..K {
                // SAFETY: every activation row has w.len() blocks (asserted above), and
                // 32 * g + 32 <= 256 bytes of its quants.
                let q8 = unsafe {
                    let y = a[t].get_unchecked(i);
                    _mm256_loadu_si256(y.qs.as_ptr().add(32 * g).cast())
                };
                let q8 = if SIGNED {
                    _mm256_sign_epi8(q8, gr.sign)
                } else {
                    q8
                };
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(gr.mag, q8), gr.scale);
                sumi[t] = _mm256_add_epi32(sumi[t], p);
            }
        }
        for t in 0..K {
            // SAFETY: every activation row has w.len() blocks (asserted above).
            let y = unsafe { a[t].get_unchecked(i) };
            out[t] += finish(x, y, hsum_epi32(sumi[t]));
        }
    }
    out.map(|v| factor * v)
}
