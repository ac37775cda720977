//! AVX2 + FMA + F16C dot products (x86-64), the SIMD twins of [`super::scalar`] and
//! [`super::scalar_iq`], one file per family:
//! - [`legacy`]: the 32-wide formats against Q8_0 (Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4) and Q8_1
//!   (Q4_1, Q5_1), each with an AVX-VNNI twin;
//! - [`kquant`]: Q2_K .. Q6_K against Q8_K;
//! - [`iq`] and [`ternary`]: the codebook, non-linear and ternary super-block formats against Q8_K,
//!   through the shared body in [`groups`];
//! - [`float`]: F32, F16, BF16, and the f32 helpers of attention and GELU.
//!
//! Every kernel takes one weight row and `K` activation rows (`K` tokens) and returns `K` dot
//! products, so a matrix multiply over several tokens loads and unpacks each weight block once
//! per `K` tokens. The integer arithmetic follows ggml's x86 kernels (`maddubs` with the sign
//! trick, per-group integer scales).
//!
//! Agreement with the scalar reference: the super-block (Q8_K) kernels sum each super-block's
//! integers exactly, then do the same float operations in the same order as the scalar code, so
//! they are bit-identical to it. The 32-wide and float kernels accumulate in eight SIMD lanes and
//! add the lanes at the end, so they differ from the scalar order by float rounding only.
//!
//! # Safety
//! Every function here requires AVX2, FMA and F16C (and the `vnni` ones AVX-VNNI);
//! [`super::dot`] only calls them after [`super::isa`] has detected those features. Activation
//! rows must not contain -128 (the quantizers in [`super::quantize`] never produce it), because
//! `_mm256_sign_epi8` cannot negate it.

use std::arch::x86_64::*;

use half::f16;

/// One half float to f32 in all four lanes, with the F16C instruction.
///
/// Broadcasting the 16 bits to every lane (rather than inserting them into lane 0) keeps the
/// conversion free of a false dependency on whatever register the compiler would merge into,
/// which otherwise chains every block's scale to the previous block's accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x4(h: f16) -> __m128 {
    _mm_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16))
}

/// One half float to f32 with the F16C instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(f16x4(h))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the eight i32 lanes (exact while it fits in i32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Pairwise-summed products of signed bytes `x · y` as eight i32 lanes, given `ax = |x|`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_pairs(ax: __m256i, x: __m256i, y: __m256i) -> __m256i {
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// [`dot_i8_pairs`] with one AVX-VNNI instruction: sums of four byte products per i32 lane (the
/// same integers; no 16-bit intermediate).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn dot_i8_pairs_vnni(ax: __m256i, x: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, _mm256_sign_epi8(y, x))
}

/// Pairwise-summed products of unsigned bytes `x` (at most 127) and signed bytes `y`, as eight
/// i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_pairs(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// [`dot_u8_pairs`] with one AVX-VNNI instruction (the same integers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn dot_u8_pairs_vnni(x: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), x, y)
}

/// The 2-bit values of group `g` (elements 32g..32g+32) of a Q2_K / Q3_K / TQ2_0 super-block: bits
/// `2 (g % 4)` of the 32 bytes at `32 (g / 4)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn low2_bits(qs: &[u8; 64], g: usize) -> __m256i {
    // SAFETY: 32 bytes from 32 (g / 4) of the 64 in `qs`, in bounds for g < 8 (the indexing
    // panics on a larger `g` before the load).
    let bits = unsafe { _mm256_loadu_si256(qs[32 * (g / 4)..][..32].as_ptr().cast()) };
    let shifted = _mm256_srl_epi16(bits, _mm_cvtsi32_si128(2 * (g % 4) as i32));
    _mm256_and_si256(shifted, _mm256_set1_epi8(3))
}

/// 32 bytes: the 16 low nibbles of `p[0..16]`, then the 16 high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bytes_from_nibbles_32(p: &[u8; 16]) -> __m256i {
    // SAFETY: the 16 bytes of `p`.
    let v = unsafe { _mm_loadu_si128(p.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 32 bytes, byte `j` = 0xFF if bit `j` of the little-endian `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bytes_from_bits_32(bits: [u8; 4]) -> __m256i {
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
fn prefetch_next_row<B>(row: &[B], i: usize) {
    let size = std::mem::size_of::<B>();
    let next = row.as_ptr().wrapping_add(row.len() + i).cast::<u8>();
    for off in (0..size).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(off).cast());
    }
}

/// Load 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32<T>(p: &[T; 32]) -> __m256i {
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    // SAFETY: 32 bytes from the start of `p`, which holds 32 elements of at least one byte.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// An `R` weight rows × `K` activation rows kernel from a one-weight-row kernel (for formats
/// whose weight unpacking dominates, so sharing the activation loads would not pay).
macro_rules! rows_of {
    ($name:ident, $inner:ident, $w:ty, $a:ty) => {
        #[doc = concat!("[`", stringify!($inner), "`] for `R` weight rows.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(in crate::cpu) unsafe fn $name<const R: usize, const K: usize>(
            w: [&[$w]; R],
            a: [&[$a]; K],
        ) -> [[f32; K]; R] {
            let mut out = [[0.0f32; K]; R];
            for r in 0..R {
                // SAFETY: this fn's contract is `$inner`'s (the same target features, each
                // weight row with the activation rows).
                out[r] = unsafe { $inner::<K>(w[r], a) };
            }
            out
        }
    };
}

// The family modules come after the helpers and `rows_of!` (macros are visible only below their
// definition).
pub(super) mod float;
mod groups;
pub(super) mod iq;
pub(super) mod kquant;
pub(super) mod legacy;
pub(super) mod ternary;
