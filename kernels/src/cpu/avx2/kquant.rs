//! The K-quants against Q8_K activations: Q2_K and Q3_K through the shared group body
//! ([`super::groups`]), Q4_K / Q5_K (one body, 6-bit scales and mins) and Q6_K with their own.

use super::groups::{dot_groups, Group};
use super::*;
use crate::quant::dequant::q3_k_scales;
use crate::quant::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

rows_of!(dot_q2_k_q8_k_rows, dot_q2_k_q8_k, BlockQ2K, BlockQ8K);
rows_of!(dot_q3_k_q8_k_rows, dot_q3_k_q8_k, BlockQ3K, BlockQ8K);
rows_of!(dot_q4_k_q8_k_rows, dot_q4_k_q8_k, BlockQ4K, BlockQ8K);
rows_of!(dot_q5_k_q8_k_rows, dot_q5_k_q8_k, BlockQ5K, BlockQ8K);
rows_of!(dot_q6_k_q8_k_rows, dot_q6_k_q8_k, BlockQ6K, BlockQ8K);

/// Q2_K × Q8_K for `K` activation rows: 2-bit weights with a 4-bit scale per 16, and the
/// 4-bit minimums against the activations' 16-sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q2_k_q8_k<const K: usize>(w: &[BlockQ2K], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, false>(
        w,
        a,
        |_| (),
        |x, _, g| {
            let sc = |j: usize| i16::from(x.scales[j] & 0x0f);
            Group::unsigned(low2_bits(&x.qs, g), sc(2 * g), sc(2 * g + 1))
        },
        |x, y, isum| {
            // Σ_j min_j × bsums_j, the sixteen mins widened to i16.
            // SAFETY: the 16 bytes of `scales`.
            let scales = unsafe { _mm_loadu_si128(x.scales.as_ptr().cast()) };
            let mins = _mm_and_si128(_mm_srli_epi16(scales, 4), _mm_set1_epi8(0x0f));
            // SAFETY: the 32 bytes of `bsums` (sixteen i16).
            let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
            let summs = hsum_epi32(_mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), bsums));
            let dall = y.d * f16_to_f32(x.d);
            let dmin = y.d * f16_to_f32(x.dmin);
            dall * isum as f32 - dmin * summs as f32
        },
        1.0,
    )
}

/// Q3_K × Q8_K for `K` activation rows: 3-bit weights (`low - 4` where the high bit is clear)
/// with a signed 6-bit scale per 16.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q3_k_q8_k<const K: usize>(w: &[BlockQ3K], a: [&[BlockQ8K]; K]) -> [f32; K] {
    dot_groups::<_, _, K, true>(
        w,
        a,
        |x| q3_k_scales(&x.scales),
        |x, scales, g| {
            // Element 32g + l takes its high bit from bit g of hmask[l].
            let hmask = load32(&x.hmask);
            let bit = _mm256_set1_epi8((1u8 << g) as i8);
            let clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), _mm256_setzero_si256());
            let minus = _mm256_and_si256(clear, _mm256_set1_epi8(4));
            let v = _mm256_sub_epi8(low2_bits(&x.qs, g), minus);
            Group::signed(v, scales[2 * g] as i16, scales[2 * g + 1] as i16)
        },
        |x, y, isum| f16_to_f32(x.d) * y.d * isum as f32,
        1.0,
    )
}

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
fn hsum2_epi32(a: __m256i, b: __m128i) -> (i32, i32) {
    let a4 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    let h = _mm_hadd_epi32(a4, b); // [a0+a1, a2+a3, b0+b1, b2+b3]
    let h = _mm_hadd_epi32(h, h); // [Σa, Σb, Σa, Σb]
    (_mm_cvtsi128_si32(h), _mm_extract_epi32(h, 1))
}

/// Shared body of Q4_K and Q5_K: `unpack(x, c)` gives the unsigned values of sub-blocks 2c and
/// 2c+1 of super-block `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_k4<B, const K: usize>(
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
                // SAFETY: every activation row has w.len() blocks (asserted above), and
                // 64 c + 64 <= 256 bytes of its quants for c < 4.
                let (yl, yh) = unsafe {
                    let q8 = a[t].get_unchecked(i).qs.as_ptr().add(64 * c);
                    (
                        _mm256_loadu_si256(q8.cast()),
                        _mm256_loadu_si256(q8.add(32).cast()),
                    )
                };
                let pl = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, yl));
                let ph = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, yh));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
            }
        }
        let xd = f16_to_f32(xd);
        let xdmin = f16_to_f32(xdmin);
        for t in 0..K {
            // SAFETY: every activation row has w.len() blocks (asserted above).
            let y = unsafe { a[t].get_unchecked(i) };
            // Σ_j min_j × (bsums[2j] + bsums[2j+1]).
            // SAFETY: the 32 bytes of `bsums` (sixteen i16).
            let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
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
            // SAFETY: `dot_k4` passes c < 4: bytes 32 c .. 32 c + 32 of the 128 of `qs`.
            let bits = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast()) };
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
            // SAFETY: `dot_k4` passes c < 4: bytes 32 c .. 32 c + 32 of the 128 of `qs`.
            let bits = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast()) };
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
        // SAFETY: the 16 bytes of `scales`.
        let scales8 = unsafe { _mm_loadu_si128(x.scales.as_ptr().cast()) };
        // All sixteen scales as i16, for the `- 32` correction against the group sums.
        let scales16 = _mm256_cvtepi8_epi16(scales8);
        let mut sumi = [_mm256_setzero_si256(); K];
        for h in 0..2 {
            // SAFETY: h < 2: bytes 64 h .. 64 h + 64 of the 128 of `ql` and 32 h .. 32 h + 32
            // of the 64 of `qh`.
            let (ql1, ql2, qh) = unsafe {
                (
                    _mm256_loadu_si256(x.ql.as_ptr().add(64 * h).cast()),
                    _mm256_loadu_si256(x.ql.as_ptr().add(64 * h + 32).cast()),
                    _mm256_loadu_si256(x.qh.as_ptr().add(32 * h).cast()),
                )
            };
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
                    // SAFETY: every activation row has w.len() blocks (asserted above), and
                    // 128 h + 32 s + 32 <= 256 bytes of its quants for h < 2, s < 4.
                    let q8 = unsafe {
                        let y = a[t].get_unchecked(i);
                        _mm256_loadu_si256(y.qs.as_ptr().add(128 * h + 32 * s).cast())
                    };
                    let p = _mm256_madd_epi16(scales, _mm256_maddubs_epi16(qs, q8));
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        let xd = f16_to_f32(x.d);
        for t in 0..K {
            // SAFETY: every activation row has w.len() blocks (asserted above).
            let y = unsafe { a[t].get_unchecked(i) };
            // Σ scale × (q - 32) × q8 = Σ scale × q × q8 - 32 Σ scale × (group sum of q8).
            // SAFETY: the 32 bytes of `bsums` (sixteen i16).
            let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales16, bsums), 5);
            let isum = hsum_epi32(_mm256_sub_epi32(sumi[t], offset));
            out[t] += xd * y.d * isum as f32;
        }
    }
    out
}
