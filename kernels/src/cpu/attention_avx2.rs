//! AVX2 + FMA + F16C twins of the value accumulation of quantized KV caches in
//! [`super::attention`]: `acc += alpha * dequantize(blocks)` for Q8_0 and Q4_0 rows.
//!
//! Bit-identical to the scalar reference: each value `d * q` is an exact f32 product (an f16
//! scale times a small integer), then one fused multiply-add per value, lane by lane, in the same
//! order of operations.
//!
//! # Safety
//! Every function here requires AVX2, FMA and F16C; [`super::attention`] only calls them after
//! [`super::isa`] has detected those features.

use std::arch::x86_64::*;

use crate::quant::{BlockQ4_0, BlockQ8_0, QK};

/// `acc[0..8] += alpha * (d * q[0..8])` with `q` eight i32 lanes.
///
/// # Safety
/// AVX2, FMA and F16C; `acc` valid for reading and writing eight f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fma8(acc: *mut f32, q: __m256i, d: __m256, alpha: __m256) {
    let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
    // SAFETY: `acc` holds eight f32 (the contract).
    let old = unsafe { _mm256_loadu_ps(acc) };
    // SAFETY: as for `old`.
    unsafe { _mm256_storeu_ps(acc, _mm256_fmadd_ps(v, alpha, old)) };
}

/// The block scale in all eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale8(d: half::f16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(d.to_bits() as i16))
}

/// `acc += alpha * dequantize(blocks)` for Q8_0 blocks.
///
/// # Panics
/// If `acc` does not hold 32 values per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_q8_0(alpha: f32, blocks: &[BlockQ8_0], acc: &mut [f32]) {
    assert_eq!(blocks.len() * QK, acc.len(), "axpy_q8_0 length mismatch");
    let va = _mm256_set1_ps(alpha);
    for (b, out) in blocks.iter().zip(acc.chunks_exact_mut(QK)) {
        let d = scale8(b.d);
        let qs = b.qs.as_ptr();
        for g in 0..QK / 8 {
            // Eight i8 values, sign-extended to i32 lanes.
            // SAFETY: 8 g + 8 <= 32 bytes of the block's quants.
            let q = _mm256_cvtepi8_epi32(unsafe { _mm_loadl_epi64(qs.add(8 * g).cast()) });
            // SAFETY: the target features are the caller's (the contract); 8 g + 8 <= 32
            // values of this block's chunk of `acc`.
            unsafe { fma8(out.as_mut_ptr().add(8 * g), q, d, va) };
        }
    }
}

/// `acc += alpha * dequantize(blocks)` for Q4_0 blocks (byte `j` holds values `j`, low nibble,
/// and `j + 16`).
///
/// # Panics
/// If `acc` does not hold 32 values per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_q4_0(alpha: f32, blocks: &[BlockQ4_0], acc: &mut [f32]) {
    assert_eq!(blocks.len() * QK, acc.len(), "axpy_q4_0 length mismatch");
    let va = _mm256_set1_ps(alpha);
    let low = _mm_set1_epi8(0x0f);
    let eight = _mm_set1_epi8(8);
    for (b, out) in blocks.iter().zip(acc.chunks_exact_mut(QK)) {
        let d = scale8(b.d);
        // SAFETY: the 16 bytes of the block's quants.
        let bytes = unsafe { _mm_loadu_si128(b.qs.as_ptr().cast()) };
        // Values 0..16 from the low nibbles, 16..32 from the high ones, each minus 8.
        let lo = _mm_sub_epi8(_mm_and_si128(bytes, low), eight);
        let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), eight);
        let o = out.as_mut_ptr();
        // SAFETY: the target features are the caller's (the contract); each call updates eight
        // of the 32 values of this block's chunk of `acc`, at offsets 0, 8, 16 and 24.
        unsafe {
            fma8(o, _mm256_cvtepi8_epi32(lo), d, va);
            fma8(o.add(8), _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)), d, va);
            fma8(o.add(16), _mm256_cvtepi8_epi32(hi), d, va);
            fma8(
                o.add(24),
                _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)),
                d,
                va,
            );
        }
    }
}
