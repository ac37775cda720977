//! The 32-wide formats: Q4_0, Q5_0, Q8_0, IQ4_NL and MXFP4 against Q8_0 activations, Q4_1 and
//! Q5_1 against Q8_1, for `R` weight rows × `K` activation rows. Each block's integer dot is
//! computed exactly and accumulated with its scale product in eight f32 lanes.

use super::*;
use crate::cpu::quantize::BlockQ8_0Act;
use crate::quant::tables::{e8m0_to_f32_half, KVALUES_IQ4NL, KVALUES_MXFP4};
use crate::quant::{
    BlockIQ4NL, BlockMXFP4, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
};

/// Checks that every weight and activation row has the block count of the first weight row,
/// and returns it.
fn common_len<B, A, const R: usize, const K: usize>(w: &[&[B]; R], a: &[&[A]; K]) -> usize {
    let n = w.first().map_or(0, |row| row.len());
    for len in w.iter().map(|r| r.len()).chain(a.iter().map(|r| r.len())) {
        assert_eq!(len, n, "dot product of rows with different block counts");
    }
    n
}

/// The 16 values of a 4-bit lookup table in both 128-bit halves, for `_mm256_shuffle_epi8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn table16(values: &[i8; 16]) -> __m256i {
    // SAFETY: the 16 bytes of `values`.
    _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(values.as_ptr().cast()) })
}

/// The signed weights of a 4-bit non-linear block: `values[nibble]`, element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lookup_nibbles(table: __m256i, qs: &[u8; 16]) -> __m256i {
    _mm256_shuffle_epi8(table, bytes_from_nibbles_32(qs))
}

/// The 32-wide kernels, instantiated once per instruction set: `$feat` is the target feature
/// list, `$pairs` the signed and `$upairs` the unsigned byte-pair dot product it allows.
macro_rules! legacy_kernels {
    ($feat:literal, $pairs:ident, $upairs:ident) => {
        /// Shared body of the 32-wide formats × Q8_0, for `R` weight rows × `K` activation rows:
        /// `unpack` gives a block's signed weight bytes and its scale in four f32 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_legacy_q8_0<B, const R: usize, const K: usize>(
            w: [&[B]; R],
            a: [&[BlockQ8_0Act]; K],
            unpack: impl Fn(&B) -> (__m256i, __m128),
        ) -> [[f32; K]; R] {
            let n = common_len(&w, &a);
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
                let ys: [__m256i; K] = std::array::from_fn(|t| {
                    // SAFETY: every row has n blocks (checked by `common_len`) and i < n (so
                    // for every get_unchecked below).
                    load32(unsafe { &a[t].get_unchecked(i).qs })
                });
                for r in 0..R {
                    // SAFETY: as above.
                    let (qx, dx) = unpack(unsafe { w[r].get_unchecked(i) });
                    let dx = _mm256_broadcastss_ps(dx);
                    let ax = _mm256_sign_epi8(qx, qx);
                    for t in 0..K {
                        let p = $pairs(ax, qx, ys[t]);
                        // SAFETY: as above.
                        let da = unsafe { a[t].get_unchecked(i).d };
                        let d = _mm256_mul_ps(dx, _mm256_set1_ps(da));
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

        /// Shared body of the 32-wide formats with a minimum × Q8_1: `unpack` gives a block's
        /// unsigned weight bytes, its scale `d` in four f32 lanes and its minimum `m`. Each
        /// block adds `(d · d_a) · Σ q · q_a` (in eight lanes) and `m · s_a` (in a scalar).
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_legacy_q8_1<B, const R: usize, const K: usize>(
            w: [&[B]; R],
            a: [&[BlockQ8_1]; K],
            unpack: impl Fn(&B) -> (__m256i, __m128, f32),
        ) -> [[f32; K]; R] {
            let n = common_len(&w, &a);
            let mut acc = [[_mm256_setzero_ps(); K]; R];
            let mut summs = [[0.0f32; K]; R];
            let ahead = w[R - 1].as_ptr().wrapping_add(n).cast::<u8>();
            let block = std::mem::size_of::<B>();
            for i in 0..n {
                if K == 1 {
                    for r in 0..R {
                        let p = ahead.wrapping_add((R * i + r) * block);
                        _mm_prefetch::<_MM_HINT_T0>(p.cast());
                    }
                }
                let ys: [__m256i; K] = std::array::from_fn(|t| {
                    // SAFETY: every row has n blocks (checked by `common_len`) and i < n (so
                    // for every get_unchecked below).
                    load32(unsafe { &a[t].get_unchecked(i).qs })
                });
                let dys: [__m128; K] = std::array::from_fn(|t| {
                    // SAFETY: as above.
                    f16x4(unsafe { a[t].get_unchecked(i).d })
                });
                let sys: [f32; K] = std::array::from_fn(|t| {
                    // SAFETY: as above.
                    f16_to_f32(unsafe { a[t].get_unchecked(i).s })
                });
                for r in 0..R {
                    // SAFETY: as above.
                    let (qx, dx, mx) = unpack(unsafe { w[r].get_unchecked(i) });
                    let d = _mm256_broadcastss_ps(dx);
                    for t in 0..K {
                        let p = $upairs(qx, ys[t]);
                        let d = _mm256_mul_ps(d, _mm256_broadcastss_ps(dys[t]));
                        acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][t]);
                        summs[r][t] += mx * sys[t];
                    }
                }
            }
            let mut out = [[0.0f32; K]; R];
            for r in 0..R {
                for t in 0..K {
                    out[r][t] = hsum_ps(acc[r][t]) + summs[r][t];
                }
            }
            out
        }

        /// Q8_0 × Q8_0 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in crate::cpu) unsafe fn dot_q8_0_q8_0<const R: usize, const K: usize>(
            w: [&[BlockQ8_0]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_0(w, a, |x| (load32(&x.qs), f16x4(x.d)))
        }

        /// Q4_0 × Q8_0 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in crate::cpu) unsafe fn dot_q4_0_q8_0<const R: usize, const K: usize>(
            w: [&[BlockQ4_0]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_0(w, a, |x| {
                (
                    _mm256_sub_epi8(bytes_from_nibbles_32(&x.qs), _mm256_set1_epi8(8)),
                    f16x4(x.d),
                )
            })
        }

        /// Q5_0 × Q8_0 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in crate::cpu) unsafe fn dot_q5_0_q8_0<const R: usize, const K: usize>(
            w: [&[BlockQ5_0]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_0(w, a, |x| {
                // (nibble | bit << 4) - 16 is the nibble where the bit is set and nibble | 0xF0 (as i8)
                // where it is clear.
                let lo = bytes_from_nibbles_32(&x.qs);
                let hi =
                    _mm256_andnot_si256(bytes_from_bits_32(x.qh), _mm256_set1_epi8(0xf0u8 as i8));
                (_mm256_or_si256(lo, hi), f16x4(x.d))
            })
        }

        /// IQ4_NL × Q8_0 for `R` weight rows × `K` activation rows: the nibbles index the
        /// non-linear levels with one byte shuffle.
        #[target_feature(enable = $feat)]
        pub(in crate::cpu) unsafe fn dot_iq4_nl_q8_0<const R: usize, const K: usize>(
            w: [&[BlockIQ4NL]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            let table = table16(&KVALUES_IQ4NL);
            dot_legacy_q8_0(w, a, |x| (lookup_nibbles(table, &x.qs), f16x4(x.d)))
        }

        /// MXFP4 × Q8_0 for `R` weight rows × `K` activation rows: the nibbles index the doubled
        /// E2M1 values, the scale is half the block's power of two.
        #[target_feature(enable = $feat)]
        pub(in crate::cpu) unsafe fn dot_mxfp4_q8_0<const R: usize, const K: usize>(
            w: [&[BlockMXFP4]; R],
            a: [&[BlockQ8_0Act]; K],
        ) -> [[f32; K]; R] {
            let table = table16(&KVALUES_MXFP4);
            dot_legacy_q8_0(w, a, |x| {
                (
                    lookup_nibbles(table, &x.qs),
                    _mm_set1_ps(e8m0_to_f32_half(x.e)),
                )
            })
        }

        /// Q4_1 × Q8_1 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in crate::cpu) unsafe fn dot_q4_1_q8_1<const R: usize, const K: usize>(
            w: [&[BlockQ4_1]; R],
            a: [&[BlockQ8_1]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_1(w, a, |x| {
                (bytes_from_nibbles_32(&x.qs), f16x4(x.d), f16_to_f32(x.m))
            })
        }

        /// Q5_1 × Q8_1 for `R` weight rows × `K` activation rows.
        #[target_feature(enable = $feat)]
        pub(in crate::cpu) unsafe fn dot_q5_1_q8_1<const R: usize, const K: usize>(
            w: [&[BlockQ5_1]; R],
            a: [&[BlockQ8_1]; K],
        ) -> [[f32; K]; R] {
            dot_legacy_q8_1(w, a, |x| {
                let fifth = _mm256_and_si256(bytes_from_bits_32(x.qh), _mm256_set1_epi8(0x10));
                let q = _mm256_or_si256(bytes_from_nibbles_32(&x.qs), fifth);
                (q, f16x4(x.d), f16_to_f32(x.m))
            })
        }
    };
}

/// The 32-wide kernels with AVX2 only (`maddubs` + `madd` for the byte products).
pub(in crate::cpu) mod plain {
    use super::*;
    legacy_kernels!("avx2,fma,f16c", dot_i8_pairs, dot_u8_pairs);
}

/// The 32-wide kernels with AVX-VNNI (`vpdpbusd` for the byte products, as ggml built with
/// `-march=native` does on CPUs that have it). Same integers, so the same results.
pub(in crate::cpu) mod vnni {
    use super::*;
    legacy_kernels!(
        "avx2,fma,f16c,avxvnni",
        dot_i8_pairs_vnni,
        dot_u8_pairs_vnni
    );
}
