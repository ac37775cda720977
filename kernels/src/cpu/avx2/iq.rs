//! The IQ super-block formats against Q8_K activations, on the shared group body
//! ([`super::groups`]): per group of 32 weights the codewords are gathered from their grids into
//! one register of magnitudes, the signs into another, and the group's integer scale multiplies
//! the pair sums. The block's float term and the format's constant factor are the scalar
//! reference's ([`crate::cpu::scalar_iq`]), so each kernel equals it bit for bit.
//!
//! IQ1_S and IQ1_M fold their `±1/8` delta into the weights: the kernel sums `8 · grid ± 1`
//! (at most 9 in magnitude) and the block term takes `isum / 8`, which equals the reference's
//! `sumi + sumi1 / 8` exactly because both sides are exact below 2^24 (the largest `|isum|` is
//! 9 · 127 · 256 · 15 < 4.4 · 10^6).

use super::groups::{dot_groups, sign_bytes, Group};
use super::*;
use crate::cpu::scalar_iq::{IQ2_FACTOR, IQ3XXS_FACTOR};
use crate::quant::dequant_iq::*;
use crate::quant::tables::*;
use crate::quant::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, BlockIQ4XS,
    BlockQ8K, QK_K,
};

rows_of!(
    dot_iq2_xxs_q8_k_rows,
    dot_iq2_xxs_q8_k,
    BlockIQ2XXS,
    BlockQ8K
);
rows_of!(dot_iq2_xs_q8_k_rows, dot_iq2_xs_q8_k, BlockIQ2XS, BlockQ8K);
rows_of!(dot_iq2_s_q8_k_rows, dot_iq2_s_q8_k, BlockIQ2S, BlockQ8K);
rows_of!(
    dot_iq3_xxs_q8_k_rows,
    dot_iq3_xxs_q8_k,
    BlockIQ3XXS,
    BlockQ8K
);
rows_of!(dot_iq3_s_q8_k_rows, dot_iq3_s_q8_k, BlockIQ3S, BlockQ8K);
rows_of!(dot_iq1_s_q8_k_rows, dot_iq1_s_q8_k, BlockIQ1S, BlockQ8K);
rows_of!(dot_iq1_m_q8_k_rows, dot_iq1_m_q8_k, BlockIQ1M, BlockQ8K);
rows_of!(dot_iq4_xs_q8_k_rows, dot_iq4_xs_q8_k, BlockIQ4XS, BlockQ8K);

/// The IQ1 weights are summed in units of their delta: `1 / IQ1S_DELTA` (and IQ1M_DELTA).
const IQ1_UNITS: i8 = 8;
const _: () = assert!(IQ1_UNITS as f32 * IQ1S_DELTA == 1.0 && IQ1S_DELTA == IQ1M_DELTA);

/// Four 8-byte codewords as one register, the first in the lowest bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn words4(w: [u64; 4]) -> __m256i {
    _mm256_set_epi64x(w[3] as i64, w[2] as i64, w[1] as i64, w[0] as i64)
}

/// Eight 4-byte codewords as one register, the first in the lowest bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn words8(w: [u32; 8]) -> __m256i {
    _mm256_set_epi32(
        w[7] as i32,
        w[6] as i32,
        w[5] as i32,
        w[4] as i32,
        w[3] as i32,
        w[2] as i32,
        w[1] as i32,
        w[0] as i32,
    )
}

/// The sign bytes of four 7-bit sign indices packed at bits `7l` of `bits`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ksigns4(bits: u32) -> __m256i {
    sign_bytes(words4(std::array::from_fn(|l| {
        KSIGNS64[((bits >> (7 * l)) & 127) as usize]
    })))
}

/// The (odd) scale `2 s + 1` of a 4-bit group scale `s`.
#[inline(always)]
fn odd(s: u32) -> i16 {
    (2 * s + 1) as i16
}

/// The block term `(d_w · d_a) · isum` of the formats with one f16 super-block scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn term(d: half::f16, y: &BlockQ8K, isum: i32) -> f32 {
    (f16_to_f32(d) * y.d) * isum as f32
}

/// IQ2_XXS × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq2_xxs_q8_k<const K: usize>(w: &[BlockIQ2XXS], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let (idx, signs) = iq2xxs_words(x, g);
            let mag = words4(std::array::from_fn(|l| {
                IQ2XXS_GRID[((idx >> (8 * l)) & 255) as usize]
            }));
            let ls = odd(signs >> 28);
            Group::with_signs(mag, ksigns4(signs), ls, ls)
        },
        |x, y, isum| term(x.d, y, isum),
        IQ2_FACTOR,
    )
}

/// IQ2_XS × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq2_xs_q8_k<const K: usize>(w: &[BlockIQ2XS], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let q = &x.qs[4 * g..4 * g + 4];
            let mag = words4(std::array::from_fn(|l| IQ2XS_GRID[usize::from(q[l] & 511)]));
            let neg = words4(std::array::from_fn(|l| KSIGNS64[usize::from(q[l] >> 9)]));
            let sc = u32::from(x.scales[g]);
            Group::with_signs(mag, sign_bytes(neg), odd(sc & 0xf), odd(sc >> 4))
        },
        |x, y, isum| term(x.d, y, isum),
        IQ2_FACTOR,
    )
}

/// IQ2_S × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq2_s_q8_k<const K: usize>(w: &[BlockIQ2S], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let mag = words4(std::array::from_fn(|l| IQ2S_GRID[iq2s_index(x, g, l)]));
            let at = QK_K / 8 + 4 * g;
            let bits = [x.qs[at], x.qs[at + 1], x.qs[at + 2], x.qs[at + 3]];
            let sc = u32::from(x.scales[g]);
            Group::with_signs(
                mag,
                sign_bytes(bytes_from_bits_32(bits)),
                odd(sc & 0xf),
                odd(sc >> 4),
            )
        },
        |x, y, isum| term(x.d, y, isum),
        IQ2_FACTOR,
    )
}

/// IQ3_XXS × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq3_xxs_q8_k<const K: usize>(w: &[BlockIQ3XXS], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let q = &x.qs[8 * g..8 * g + 8];
            let mag = words8(std::array::from_fn(|j| IQ3XXS_GRID[usize::from(q[j])]));
            let aux = iq3xxs_word(x, g);
            let ls = odd(aux >> 28);
            Group::with_signs(mag, ksigns4(aux), ls, ls)
        },
        |x, y, isum| term(x.d, y, isum),
        IQ3XXS_FACTOR,
    )
}

/// IQ3_S × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq3_s_q8_k<const K: usize>(w: &[BlockIQ3S], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let mag = words8(std::array::from_fn(|j| {
                let (i1, i2) = iq3s_indices(x, g, j / 2);
                IQ3S_GRID[if j % 2 == 0 { i1 } else { i2 }]
            }));
            let s = &x.signs[4 * g..4 * g + 4];
            let ls = odd(u32::from((x.scales[g / 2] >> (4 * (g % 2))) & 0xf));
            Group::with_signs(
                mag,
                sign_bytes(bytes_from_bits_32([s[0], s[1], s[2], s[3]])),
                ls,
                ls,
            )
        },
        |x, y, isum| term(x.d, y, isum),
        1.0,
    )
}

/// `IQ1_UNITS · grid + delta` for four ternary codewords and a delta byte per codeword (1 or
/// -1 in every byte of its word).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq1_weights(grid: [u64; 4], delta: __m256i) -> __m256i {
    let scaled = _mm256_sign_epi8(_mm256_set1_epi8(IQ1_UNITS), words4(grid));
    _mm256_add_epi8(scaled, delta)
}

/// A word of delta bytes: -1 where `neg`, else 1.
#[inline(always)]
fn delta_word(neg: bool) -> u64 {
    if neg {
        u64::MAX
    } else {
        0x0101_0101_0101_0101
    }
}

/// IQ1_S × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq1_s_q8_k<const K: usize>(w: &[BlockIQ1S], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let qh = x.qh[g];
            let grid = std::array::from_fn(|l| IQ1S_GRID[iq1s_index(x, g, l)]);
            let delta = _mm256_set1_epi64x(delta_word(qh & 0x8000 != 0) as i64);
            let ls = odd(u32::from((qh >> 12) & 7));
            Group::signed(iq1_weights(grid, delta), ls, ls)
        },
        |x, y, isum| (f16_to_f32(x.d) * y.d) * (isum as f32 * IQ1S_DELTA),
        1.0,
    )
}

/// IQ1_M × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq1_m_q8_k<const K: usize>(w: &[BlockIQ1M], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        iq1m_scale_words,
        |x, sc, g| {
            // Written out rather than with array closures, which keep LLVM from inlining this
            // body into the kernel.
            let (i0, n0) = iq1m_index(x, g, 0);
            let (i1, n1) = iq1m_index(x, g, 1);
            let (i2, n2) = iq1m_index(x, g, 2);
            let (i3, n3) = iq1m_index(x, g, 3);
            let grid = [IQ1S_GRID[i0], IQ1S_GRID[i1], IQ1S_GRID[i2], IQ1S_GRID[i3]];
            let delta = words4([
                delta_word(n0),
                delta_word(n1),
                delta_word(n2),
                delta_word(n3),
            ]);
            let ls_lo = (2 * iq1m_group_scale(sc, g, 0) + 1) as i16;
            let ls_hi = (2 * iq1m_group_scale(sc, g, 1) + 1) as i16;
            Group::signed(iq1_weights(grid, delta), ls_lo, ls_hi)
        },
        |x, y, isum| (iq1m_scale(&iq1m_scale_words(x)) * y.d) * (isum as f32 * IQ1M_DELTA),
        1.0,
    )
}

/// IQ4_XS × Q8_K for `K` activation rows: the nibbles index the non-linear levels with one byte
/// shuffle; the signed 6-bit group scales multiply the pair sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_xs_q8_k<const K: usize>(w: &[BlockIQ4XS], a: [&[BlockQ8K]; K]) -> [f32; K] {
    // SAFETY: the 16 bytes of the IQ4_NL level table.
    let levels = unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) };
    let table = _mm256_broadcastsi128_si256(levels);
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let v = _mm256_shuffle_epi8(table, bytes_from_nibbles_32(&x.qs.as_chunks::<16>().0[g]));
            let ls = iq4xs_scale(x, g) as i16;
            Group::signed(v, ls, ls)
        },
        |x, y, isum| term(x.d, y, isum),
        1.0,
    )
}
