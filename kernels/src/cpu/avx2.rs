//! AVX2 + FMA + F16C dot products (x86-64), the SIMD twins of [`super::scalar`].
//!
//! Every kernel takes one weight row and `K` activation rows (`K` tokens) and returns `K` dot
//! products, so a matrix multiply over several tokens loads and unpacks each weight block once
//! per `K` tokens. The integer arithmetic follows ggml's x86 kernels (`maddubs` with the sign
//! trick for the 32-wide formats, per-sub-block scales for the K-quants).
//!
//! Agreement with the scalar reference: the K-quant kernels sum each super-block's integers
//! exactly, then do the same float operations in the same order as the scalar code, so they are
//! bit-identical to it. The 32-wide and float kernels accumulate in eight SIMD lanes and add the
//! lanes at the end, so they differ from the scalar order by float rounding only.
//!
//! # Safety
//! Every function here requires AVX2, FMA and F16C (and the [`vnni`] ones AVX-VNNI); [`super::dot`] only calls them after
//! [`super::isa`] has detected those features. Activation rows must not contain -128 (the
//! quantizers in [`super::quantize`] never produce it), because `_mm256_sign_epi8` cannot negate
//! it.

use std::arch::x86_64::*;

use half::f16;

use super::quantize::BlockQ8_0Act;
use crate::quant::{BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0};

/// One half float to f32 in all four lanes, with the F16C instruction.
///
/// Broadcasting the 16 bits to every lane (rather than inserting them into lane 0) keeps the
/// conversion free of a false dependency on whatever register the compiler would merge into,
/// which otherwise chains every block's scale to the previous block's accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x4(h: f16) -> __m128 {
    _mm_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16))
}

/// One half float to f32 with the F16C instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(f16x4(h))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the eight i32 lanes (exact while it fits in i32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Pairwise-summed products of signed bytes `x · y` as eight i32 lanes, given `ax = |x|`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8_pairs(ax: __m256i, x: __m256i, y: __m256i) -> __m256i {
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// [`dot_i8_pairs`] with one AVX-VNNI instruction: sums of four byte products per i32 lane (the
/// same integers; no 16-bit intermediate).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_i8_pairs_vnni(ax: __m256i, x: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, _mm256_sign_epi8(y, x))
}

/// 32 bytes: the 16 low nibbles of `p[0..16]`, then the 16 high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_nibbles_32(p: &[u8; 16]) -> __m256i {
    let v = _mm_loadu_si128(p.as_ptr().cast());
    let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 32 bytes, byte `j` = 0xFF if bit `j` of the little-endian `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_bits_32(bits: [u8; 4]) -> __m256i {
    let x = _mm256_set1_epi32(i32::from_le_bytes(bits));
    // Byte j takes byte j/8 of x ...
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(x, shuf);
    // ... and is all ones after OR-ing every bit but bit j%8 iff that bit was set.
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi8(-1))
}

/// Prefetches the cache lines of block `i` of the row that follows `row` in memory (the next
/// row of a row-major matrix), for kernels that stream weights while decoding one token.
/// Prefetches never fault, so an address past the matrix is harmless.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prefetch_next_row<B>(row: &[B], i: usize) {
    let size = std::mem::size_of::<B>();
    let next = row.as_ptr().wrapping_add(row.len() + i).cast::<u8>();
    for off in (0..size).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(off).cast());
    }
}

/// Load 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32<T>(p: &[T; 32]) -> __m256i {
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    _mm256_loadu_si256(p.as_ptr().cast())
}

/// The 32-wide formats × Q8_0, instantiated once per instruction set: `$feat` is the target
/// feature list and `$pairs` the byte-pair dot product it allows.
macro_rules! legacy_kernels {
    ($feat:literal, $pairs:ident) => {
        /// Shared body of the 32-wide formats × Q8_0, for `R` weight rows × `K` activation rows:
        /// `unpack` gives a block's signed weight bytes and scale.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dot_legacy_q8_0<B, const R: usize, const K: usize>(
            w: [&[B]; R],
            a: [&[BlockQ8_0Act]; K],
            unpack: impl Fn(&B) -> (__m256i, f16),
        ) -> [[f32; K]; R] {
            let n = w.first().map_or(0, |row| row.len());
            for row in &w {
                assert_eq!(
                    row.len(),
                    n,
                    "dot product of rows with different block counts"
                );
            }
            for row in &a {
                assert_eq!(
                    row.len(),
                    n,
                    "dot product of rows with different block counts"
                );
            }
            let mut acc = [[_mm256_setzero_ps(); K]; R];
            // When decoding (several weight rows, one token) the weights stream from memory: prefetch
            // the R rows that follow the last one (the next call's rows in a row-major matrix) while
            // working on these. Prefetches never fault, so addresses past the matrix are harmless.
            let ahead = w[R - 1].as_ptr().wrapping_add(n).cast::<u8>();
            let block = std::mem::size_of::<B>();
            for i in 0..n {
                if K == 1 {
                    for r in 0..R {
                        let p = ahead.wrapping_add((R * i + r) * block);
                        _mm_prefetch::<_MM_HINT_T0>(p.cast());
                    }
                }
                // SAFETY (all get_unchecked below): every row has n blocks (asserted above).
                let ys: [__m256i; K] = std::array::from_fn(|t| load32(&a[t].get_unchecked(i).qs));
                for r in 0..R {
                    let (qx, dx) = unpack(w[r].get_unchecked(i));
                    let dx = _mm256_broadcastss_ps(f16x4(dx));
                    let ax = _mm256_sign_epi8(qx, qx);
                    for t in 0..K {
                        let p = $pairs(ax, qx, ys[t]);
                        let d = _mm256_mul_ps(dx, _mm256_set1_ps(a[t].get_unchecked(i).d));
                        acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][t]);
                    }
                }
            }
            let mut out = [[0.0f32; K]; R];
            for r in 0..R {
                for t in 0..K {
                    out[r][t] = hsum_ps(acc[r][t]);
                }
            }
            out
        }

        /// Q8_0 × Q8_0 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn dot_q8_0_q8_0<const R: usize, const K: usize>(
            w: [&[BlockQ8_0]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_0(w, a, |x| (load32(&x.qs), x.d))
        }

        /// Q4_0 × Q8_0 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn dot_q4_0_q8_0<const R: usize, const K: usize>(
            w: [&[BlockQ4_0]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_0(w, a, |x| {
                (
                    _mm256_sub_epi8(bytes_from_nibbles_32(&x.qs), _mm256_set1_epi8(8)),
                    x.d,
                )
            })
        }

        /// Q5_0 × Q8_0 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn dot_q5_0_q8_0<const R: usize, const K: usize>(
            w: [&[BlockQ5_0]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_0(w, a, |x| {
                // (nibble | bit << 4) - 16 is the nibble where the bit is set and nibble | 0xF0 (as i8)
                // where it is clear.
                let lo = bytes_from_nibbles_32(&x.qs);
                let hi =
                    _mm256_andnot_si256(bytes_from_bits_32(x.qh), _mm256_set1_epi8(0xf0u8 as i8));
                (_mm256_or_si256(lo, hi), x.d)
            })
        }
    };
}

/// The 32-wide kernels with AVX2 only (`maddubs` + `madd` for the byte products).
pub(super) mod plain {
    use super::*;
    legacy_kernels!("avx2,fma,f16c", dot_i8_pairs);
}

/// The 32-wide kernels with AVX-VNNI (`vpdpbusd` for the byte products, as ggml built with
/// `-march=native` does on CPUs that have it). Same integers, so the same results.
pub(super) mod vnni {
    use super::*;
    legacy_kernels!("avx2,fma,f16c,avxvnni", dot_i8_pairs_vnni);
}

/// An `R` weight rows × `K` activation rows kernel from a one-weight-row kernel (for formats
/// whose weight unpacking dominates, so sharing the activation loads would not pay).
macro_rules! rows_of {
    ($name:ident, $inner:ident, $w:ty, $a:ty) => {
        #[doc = concat!("[`", stringify!($inner), "`] for `R` weight rows.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn $name<const R: usize, const K: usize>(
            w: [&[$w]; R],
            a: [&[$a]; K],
        ) -> [[f32; K]; R] {
            let mut out = [[0.0f32; K]; R];
            for r in 0..R {
                out[r] = $inner::<K>(w[r], a);
            }
            out
        }
    };
}

rows_of!(dot_q4_k_q8_k_rows, dot_q4_k_q8_k, BlockQ4K, BlockQ8K);
rows_of!(dot_q5_k_q8_k_rows, dot_q5_k_q8_k, BlockQ5K, BlockQ8K);
rows_of!(dot_q6_k_q8_k_rows, dot_q6_k_q8_k, BlockQ6K, BlockQ8K);
rows_of!(dot_f16_f16_rows, dot_f16_f16, f16, f16);
rows_of!(dot_f32_f32_rows, dot_f32_f32, f32, f32);

/// The eight 6-bit scales (bytes 0..8) and eight 6-bit mins (bytes 8..16) of a Q4_K / Q5_K
/// super-block, unpacked with ggml's 32-bit mask arithmetic (same result as
/// [`super::scalar`]'s byte-wise unpacking).
#[inline]
fn k4_scales_mins_packed(packed: &[u8; 12]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (u0, u1, u2) = (word(0), word(4), word(8));
    let scales_lo = u0 & KMASK1;
    let scales_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let mins_lo = u1 & KMASK1;
    let mins_hi = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    [scales_lo, scales_hi, mins_lo, mins_hi]
}

/// Reduces the eight i32 lanes of `a` and the four of `b` to their two sums (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum2_epi32(a: __m256i, b: __m128i) -> (i32, i32) {
    let a4 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    let h = _mm_hadd_epi32(a4, b); // [a0+a1, a2+a3, b0+b1, b2+b3]
    let h = _mm_hadd_epi32(h, h); // [Σa, Σb, Σa, Σb]
    (_mm_cvtsi128_si32(h), _mm_extract_epi32(h, 1))
}

/// Shared body of Q4_K and Q5_K: `unpack(x, c)` gives the unsigned values of sub-blocks 2c and
/// 2c+1 of super-block `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_k4<B, const K: usize>(
    w: &[B],
    a: [&[BlockQ8K]; K],
    parts: impl Fn(&B) -> (f16, f16, &[u8; 12]),
    unpack: impl Fn(&B, usize) -> (__m256i, __m256i),
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
        let (xd, xdmin, packed) = parts(x);
        let sm = k4_scales_mins_packed(packed);
        // Scales and mins as eight i16 each; the scales repeated in both 128-bit halves so a
        // byte shuffle can broadcast any one of them.
        let sm16 = _mm256_cvtepu8_epi16(_mm_set_epi32(
            sm[3] as i32,
            sm[2] as i32,
            sm[1] as i32,
            sm[0] as i32,
        ));
        let mins = _mm256_extracti128_si256(sm16, 1);
        let scales = _mm256_permute2x128_si256(sm16, sm16, 0x00);
        let mut sumi = [_mm256_setzero_si256(); K];
        for c in 0..4 {
            let (ql, qh) = unpack(x, c);
            let pick = |j: i16| _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j));
            let sl = _mm256_shuffle_epi8(scales, pick(2 * c as i16));
            let sh = _mm256_shuffle_epi8(scales, pick(2 * c as i16 + 1));
            for t in 0..K {
                // SAFETY: every activation row has w.len() blocks (asserted above).
                let y = a[t].get_unchecked(i);
                let q8 = y.qs.as_ptr().add(64 * c);
                let yl = _mm256_loadu_si256(q8.cast());
                let yh = _mm256_loadu_si256(q8.add(32).cast());
                let pl = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, yl));
                let ph = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, yh));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
            }
        }
        let xd = f16_to_f32(xd);
        let xdmin = f16_to_f32(xdmin);
        for t in 0..K {
            let y = a[t].get_unchecked(i);
            // Σ_j min_j × (bsums[2j] + bsums[2j+1]).
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            let pairs = _mm_hadd_epi16(
                _mm256_castsi256_si128(bsums),
                _mm256_extracti128_si256(bsums, 1),
            );
            let (isum, msum) = hsum2_epi32(sumi[t], _mm_madd_epi16(mins, pairs));
            let d = y.d * xd;
            let dmin = y.d * xdmin;
            out[t] += d * isum as f32 - dmin * msum as f32;
        }
    }
    out
}

/// Q4_K × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k_q8_k<const K: usize>(w: &[BlockQ4K], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_k4(
        w,
        a,
        |x| (x.d, x.dmin, &x.scales),
        |x, c| {
            let m4 = _mm256_set1_epi8(0x0f);
            let bits = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast());
            (
                _mm256_and_si256(bits, m4),
                _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
            )
        },
    )
}

/// Q5_K × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_k_q8_k<const K: usize>(w: &[BlockQ5K], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_k4(
        w,
        a,
        |x| (x.d, x.dmin, &x.scales),
        |x, c| {
            let m4 = _mm256_set1_epi8(0x0f);
            let bits = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast());
            let hbits = load32(&x.qh);
            // Sub-block j takes its fifth bit from bit j of qh.
            let fifth = |j: usize| {
                let m = _mm256_set1_epi8((1u8 << j) as i8);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, m), m);
                _mm256_and_si256(set, _mm256_set1_epi8(16))
            };
            let lo = _mm256_or_si256(_mm256_and_si256(bits, m4), fifth(2 * c));
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
                fifth(2 * c + 1),
            );
            (lo, hi)
        },
    )
}

/// Q6_K × Q8_K for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k_q8_k<const K: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; K]) -> [f32; K] {
    for row in &a {
        assert_eq!(
            row.len(),
            w.len(),
            "dot product of rows with different block counts"
        );
    }
    let m4 = _mm256_set1_epi8(0x0f);
    let m3 = _mm256_set1_epi8(0x03);
    let mut out = [0.0f32; K];
    for (i, x) in w.iter().enumerate() {
        if K == 1 {
            prefetch_next_row(w, i);
        }
        let scales8 = _mm_loadu_si128(x.scales.as_ptr().cast());
        // All sixteen scales as i16, for the `- 32` correction against the group sums.
        let scales16 = _mm256_cvtepi8_epi16(scales8);
        let mut sumi = [_mm256_setzero_si256(); K];
        for h in 0..2 {
            let ql1 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * h).cast());
            let ql2 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * h + 32).cast());
            let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * h).cast());
            let high = |s: i32| {
                let bits = match s {
                    0 => qh,
                    1 => _mm256_srli_epi16(qh, 2),
                    2 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(bits, m3), 4)
            };
            // The 6-bit values (0..64) of elements 128h + 32s .. 128h + 32s + 32.
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql1, m4), high(0)),
                _mm256_or_si256(_mm256_and_si256(ql2, m4), high(1)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql2, 4), m4), high(3)),
            ];
            for (s, &qs) in q.iter().enumerate() {
                let g = (8 * h + 2 * s) as i8;
                // Scale g in the low eight i16 lanes, scale g + 1 in the high eight.
                let pick = _mm_set_epi64x(
                    i64::from_ne_bytes([(g + 1) as u8; 8]),
                    i64::from_ne_bytes([g as u8; 8]),
                );
                let scales = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pick));
                for t in 0..K {
                    // SAFETY: every activation row has w.len() blocks (asserted above).
                    let y = a[t].get_unchecked(i);
                    let q8 = _mm256_loadu_si256(y.qs.as_ptr().add(128 * h + 32 * s).cast());
                    let p = _mm256_madd_epi16(scales, _mm256_maddubs_epi16(qs, q8));
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        let xd = f16_to_f32(x.d);
        for t in 0..K {
            let y = a[t].get_unchecked(i);
            // Σ scale × (q - 32) × q8 = Σ scale × q × q8 - 32 Σ scale × (group sum of q8).
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales16, bsums), 5);
            let isum = hsum_epi32(_mm256_sub_epi32(sumi[t], offset));
            out[t] += xd * y.d * isum as f32;
        }
    }
    out
}

/// Shared body of the float kernels: `load(row, i)` gives eight f32 lanes at element `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_float<T, const K: usize>(
    w: &[T],
    a: [&[T]; K],
    load: impl Fn(&[T], usize) -> __m256,
    scalar: impl Fn(&T) -> f32,
) -> [f32; K] {
    for row in &a {
        assert_eq!(
            row.len(),
            w.len(),
            "dot product of rows of different lengths"
        );
    }
    let n = w.len();
    let main = n - n % 16;
    let mut acc0 = [_mm256_setzero_ps(); K];
    let mut acc1 = [_mm256_setzero_ps(); K];
    let mut i = 0;
    while i < main {
        let w0 = load(w, i);
        let w1 = load(w, i + 8);
        for t in 0..K {
            acc0[t] = _mm256_fmadd_ps(w0, load(a[t], i), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, load(a[t], i + 8), acc1[t]);
        }
        i += 16;
    }
    let mut out = [0.0f32; K];
    for t in 0..K {
        let mut tail = 0.0f64;
        for j in main..n {
            tail += f64::from(scalar(&w[j]) * scalar(&a[t][j]));
        }
        out[t] = (f64::from(hsum_ps(_mm256_add_ps(acc0[t], acc1[t]))) + tail) as f32;
    }
    out
}

/// F16 × F16 for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_f16<const K: usize>(w: &[f16], a: [&[f16]; K]) -> [f32; K] {
    dot_float(
        w,
        a,
        // SAFETY (of the closure body): callers only pass i + 8 <= row.len().
        |row, i| _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(i).cast())),
        |v| v.to_f32(),
    )
}

/// F32 × F32 for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_f32<const K: usize>(w: &[f32], a: [&[f32]; K]) -> [f32; K] {
    dot_float(w, a, |row, i| _mm256_loadu_ps(row.as_ptr().add(i)), |v| *v)
}

/// `Σ x_i y_i` over two f32 slices of equal length (attention scores).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    dot_f32_f32::<1>(x, [y])[0]
}

/// `y += alpha * x` over two f32 slices of equal length (attention value accumulation).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy of slices of different lengths");
    let n = x.len();
    let main = n - n % 8;
    let va = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i < main {
        let px = x.as_ptr().add(i);
        let py = y.as_mut_ptr().add(i);
        _mm256_storeu_ps(
            py,
            _mm256_fmadd_ps(va, _mm256_loadu_ps(px), _mm256_loadu_ps(py)),
        );
        i += 8;
    }
    for j in main..n {
        y[j] = alpha.mul_add(x[j], y[j]);
    }
}

/// GELU through ggml's f16 table for eight lanes at a time, optionally times `up`:
/// `gate[i] = gelu(gate[i]) (* up[i])`. Identical to the scalar version in [`super::ops`]: the
/// f16 rounding (to nearest even), the table and the clamps are the same.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gelu_table_mul(table: &[f16], gate: &mut [f32], up: Option<&[f32]>) {
    assert_eq!(table.len(), 1 << 16, "gelu table must cover every f16");
    if let Some(up) = up {
        assert_eq!(up.len(), gate.len(), "gelu_mul length mismatch");
    }
    let n = gate.len();
    let main = n - n % 8;
    let lo = _mm256_set1_ps(-10.0);
    let hi = _mm256_set1_ps(10.0);
    let mut idx = [0u16; 8];
    let mut i = 0;
    while i < main {
        let x = _mm256_loadu_ps(gate.as_ptr().add(i));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        _mm_storeu_si128(idx.as_mut_ptr().cast(), h);
        // SAFETY (of the unchecked reads): the table has 65536 entries, one per u16 index.
        let looked = _mm_setr_epi16(
            table.get_unchecked(usize::from(idx[0])).to_bits() as i16,
            table.get_unchecked(usize::from(idx[1])).to_bits() as i16,
            table.get_unchecked(usize::from(idx[2])).to_bits() as i16,
            table.get_unchecked(usize::from(idx[3])).to_bits() as i16,
            table.get_unchecked(usize::from(idx[4])).to_bits() as i16,
            table.get_unchecked(usize::from(idx[5])).to_bits() as i16,
            table.get_unchecked(usize::from(idx[6])).to_bits() as i16,
            table.get_unchecked(usize::from(idx[7])).to_bits() as i16,
        );
        let mut y = _mm256_cvtph_ps(looked);
        // x >= 10 passes through, x <= -10 gives 0 (ggml's clamps).
        y = _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
        y = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), y);
        if let Some(up) = up {
            y = _mm256_mul_ps(y, _mm256_loadu_ps(up.as_ptr().add(i)));
        }
        _mm256_storeu_ps(gate.as_mut_ptr().add(i), y);
        i += 8;
    }
    for j in main..n {
        let x = gate[j];
        let g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[usize::from(f16::from_f32(x).to_bits())].to_f32()
        };
        gate[j] = match up {
            Some(up) => g * up[j],
            None => g,
        };
    }
}
