//! The ternary formats TQ1_0 and TQ2_0 against Q8_K activations, on the shared group body
//! ([`super::groups`]): each group of 32 weights is unpacked to bytes `t - 1` in {-1, 0, 1}.
//! The block term is the scalar reference's ([`crate::cpu::scalar_iq`]), so the kernels equal
//! it bit for bit.

use super::groups::{dot_groups, Group};
use super::*;
use crate::quant::{BlockQ8K, BlockTQ1_0, BlockTQ2_0};

rows_of!(dot_tq1_0_q8_k_rows, dot_tq1_0_q8_k, BlockTQ1_0, BlockQ8K);
rows_of!(dot_tq2_0_q8_k_rows, dot_tq2_0_q8_k, BlockTQ2_0, BlockQ8K);

/// Trit `n` of 16 TQ1_0 bytes as 16 i16 lanes (0, 1 or 2), where lane `k` takes trit
/// `n_k` (`mult` holds `3^n_k`): the byte times `3^n` modulo 256, times 3, top byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn trits16(bytes: __m128i, mult: __m256i) -> __m256i {
    let v = _mm256_cvtepu8_epi16(bytes);
    let q = _mm256_and_si256(_mm256_mullo_epi16(v, mult), _mm256_set1_epi16(0xff));
    _mm256_srli_epi16(_mm256_mullo_epi16(q, _mm256_set1_epi16(3)), 8)
}

/// Two sets of 16 i16 lanes (each 0..=2) as 32 bytes `value - 1`, `lo` first.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ternary_bytes(lo: __m256i, hi: __m256i) -> __m256i {
    // packus interleaves the 128-bit halves (lo 0..8, hi 0..8, lo 8..16, hi 8..16): reorder.
    let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(lo, hi));
    _mm256_sub_epi8(packed, _mm256_set1_epi8(1))
}

/// `3^n` in every i16 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pow3(n: usize) -> __m256i {
    _mm256_set1_epi16([1, 3, 9, 27, 81][n])
}

/// TQ1_0 × Q8_K for `K` activation rows. Groups 0..5 are trit `g` of bytes 0..32; groups 5
/// and 6 trits 0..4 of bytes 32..48, two per group; group 7 trit 4 of bytes 32..48, then the
/// sixteen trits of `qh` (element 240 + 4n + j is trit n of `qh[j]`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_tq1_0_q8_k<const K: usize>(w: &[BlockTQ1_0], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let load16 = |at: usize| {
                // SAFETY: called below only with `at` 0, 16 or 32: 16 bytes in bounds of the
                // 48 of `qs`.
                unsafe { _mm_loadu_si128(x.qs.as_ptr().add(at).cast()) }
            };
            let v = match g {
                0..5 => ternary_bytes(trits16(load16(0), pow3(g)), trits16(load16(16), pow3(g))),
                5 | 6 => {
                    let n = 2 * (g - 5);
                    let tail = load16(32);
                    ternary_bytes(trits16(tail, pow3(n)), trits16(tail, pow3(n + 1)))
                }
                _ => {
                    let qh = _mm_set1_epi32(i32::from_le_bytes(x.qh));
                    let mult = _mm256_set_epi16(27, 27, 27, 27, 9, 9, 9, 9, 3, 3, 3, 3, 1, 1, 1, 1);
                    ternary_bytes(trits16(load16(32), pow3(4)), trits16(qh, mult))
                }
            };
            Group::signed(v, 1, 1)
        },
        |x, y, isum| isum as f32 * (f16_to_f32(x.d) * y.d),
        1.0,
    )
}

/// TQ2_0 × Q8_K for `K` activation rows: group `g` is bit-plane `g % 4` of bytes
/// `32 (g / 4)..`, as in Q2_K.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_tq2_0_q8_k<const K: usize>(w: &[BlockTQ2_0], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let v = _mm256_sub_epi8(low2_bits(&x.qs, g), _mm256_set1_epi8(1));
            Group::signed(v, 1, 1)
        },
        |x, y, isum| isum as f32 * (y.d * f16_to_f32(x.d)),
        1.0,
    )
}
