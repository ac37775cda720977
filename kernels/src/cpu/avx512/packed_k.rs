//! Packed Q4_K and Q6_K against Q8_K activations with paired group sums ([`BlockQ8KPairs`]).

use super::*;
use crate::cpu::packed::act::BlockQ8KPairs;
use crate::cpu::packed::layout::{tile_offset, PACK_ROWS};
use crate::quant::GgmlType;

/// Q4_K: sixteen rows' super-blocks per tile; `out[t][0..16]` = those rows · `acts[t]`.
///
/// Per sub-block pair the low nibbles (sub-block `2c`) and high nibbles (`2c + 1`) of a 64-byte
/// load are multiplied with the activations into separate lanes' sums, which are then scaled by
/// their 6-bit scales; the minimums meet the activations' 32-sums with `vpdpwssd`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `tiles` points at `blocks` consecutive Q4_K tiles, every `acts[t]` at
/// `blocks` activation blocks, every `out[t]` at 16 writable floats
/// (read first with `accumulate`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn q4_k<const T: usize>(
    tiles: *const u8,
    blocks: usize,
    acts: [*const BlockQ8KPairs; T],
    out: [*mut f32; T],
    accumulate: bool,
) {
    const TY: GgmlType = GgmlType::Q4_K;
    const TILE: usize = PACK_ROWS * 144;
    const D: usize = tile_offset(TY, 0);
    const DMIN: usize = tile_offset(TY, 1);
    const SCALES: usize = tile_offset(TY, 2);
    const QS: usize = tile_offset(TY, 3);
    let m4 = _mm512_set1_epi8(0x0f);
    let byte = _mm512_set1_epi32(0xff);
    let kmask1 = _mm512_set1_epi32(0x3f3f_3f3f);
    let kmask2 = _mm512_set1_epi32(0x0f0f_0f0f);
    let kmask3 = _mm512_set1_epi32(0x0303_0303);
    let low16 = _mm512_set1_epi32(0x00ff_00ff);
    // SAFETY: AVX-512 F and, with `accumulate`, 16 readable floats per `out[t]` (the contract).
    let mut acc = unsafe { start::<T>(&out, accumulate) };
    for b in 0..blocks {
        // SAFETY: b < blocks tiles of TILE bytes from `tiles` (the contract).
        let tile = unsafe { tiles.add(b * TILE) };
        prefetch_ahead(tile, TILE);
        let a: [&BlockQ8KPairs; T] = std::array::from_fn(|t| {
            // SAFETY: b < blocks activation blocks from `acts[t]` (the contract).
            unsafe { &*acts[t].add(b) }
        });
        // Each row's three scale words, unpacked as ggml does: bytes 0..4 of `sc_lo` are scales
        // 0..3, of `sc_hi` scales 4..7; likewise the minimums.
        // SAFETY: the three 64-byte scale words of the tile (16 rows × 12 bytes from SCALES).
        let (u0, u1, u2) = unsafe {
            (
                load64(tile.add(SCALES)),
                load64(tile.add(SCALES + 64)),
                load64(tile.add(SCALES + 128)),
            )
        };
        let sc_lo = _mm512_and_si512(u0, kmask1);
        let sc_hi = _mm512_or_si512(
            _mm512_and_si512(u2, kmask2),
            _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(u0), kmask3)),
        );
        let mn_lo = _mm512_and_si512(u1, kmask1);
        let mn_hi = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi32::<4>(u2), kmask2),
            _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(u1), kmask3)),
        );
        let mut isum = [_mm512_setzero_si512(); T];
        for c in 0..4 {
            let word = if c < 2 { sc_lo } else { sc_hi };
            let (sl, sh) = if c % 2 == 0 {
                (
                    _mm512_and_si512(word, byte),
                    _mm512_and_si512(_mm512_srli_epi32::<8>(word), byte),
                )
            } else {
                (
                    _mm512_and_si512(_mm512_srli_epi32::<16>(word), byte),
                    _mm512_srli_epi32::<24>(word),
                )
            };
            let mut al = [_mm512_setzero_si512(); T];
            let mut ah = [_mm512_setzero_si512(); T];
            for k in 0..8 {
                // SAFETY: c < 4, k < 8: quant word 8 c + k of the 32 (16 rows × 128 bytes from
                // QS) of the tile.
                let w = unsafe { load64(tile.add(QS + (8 * c + k) * 64)) };
                let lo = _mm512_and_si512(w, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), m4);
                for t in 0..T {
                    // SAFETY: 64 c + 4 k + 36 <= 256 bytes of the activation quants (c < 4,
                    // k < 8), four at `q` and four at `q + 32`.
                    let (yl, yh) = unsafe {
                        let q = a[t].qs.as_ptr().add(64 * c + 4 * k);
                        (bcast4(q), bcast4(q.add(32)))
                    };
                    al[t] = _mm512_dpbusd_epi32(al[t], lo, yl);
                    ah[t] = _mm512_dpbusd_epi32(ah[t], hi, yh);
                }
            }
            for t in 0..T {
                let scaled =
                    _mm512_add_epi32(_mm512_mullo_epi32(al[t], sl), _mm512_mullo_epi32(ah[t], sh));
                isum[t] = _mm512_add_epi32(isum[t], scaled);
            }
        }
        // Minimums as 16-bit pairs (m0, m2), (m1, m3), (m4, m6), (m5, m7) against the
        // activations' paired 32-sums.
        let mins = [
            _mm512_and_si512(mn_lo, low16),
            _mm512_and_si512(_mm512_srli_epi32::<8>(mn_lo), low16),
            _mm512_and_si512(mn_hi, low16),
            _mm512_and_si512(_mm512_srli_epi32::<8>(mn_hi), low16),
        ];
        // SAFETY: the tile's sixteen f16 scales at D and sixteen minimum scales at DMIN.
        let (d, dmin) = unsafe { (load_f16x16(tile.add(D)), load_f16x16(tile.add(DMIN))) };
        for t in 0..T {
            let mut msum = _mm512_setzero_si512();
            for (i, &m) in mins.iter().enumerate() {
                msum = _mm512_dpwssd_epi32(msum, m, _mm512_set1_epi32(a[t].pairs32[i]));
            }
            // The scalar reference's float operations, in its order.
            let yd = _mm512_set1_ps(a[t].d);
            let dd = _mm512_mul_ps(yd, d);
            let dm = _mm512_mul_ps(yd, dmin);
            let v = _mm512_sub_ps(
                _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum[t])),
                _mm512_mul_ps(dm, _mm512_cvtepi32_ps(msum)),
            );
            acc[t] = _mm512_add_ps(acc[t], v);
        }
    }
    for t in 0..T {
        // SAFETY: `out[t]` writes 16 floats (the contract).
        unsafe { _mm512_storeu_ps(out[t], acc[t]) };
    }
}

/// Scale `g % 4` of the packed scale word (signed byte, sign-extended to the 32-bit lane).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn signed_byte(word: __m512i, g: usize) -> __m512i {
    match g % 4 {
        0 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(word)),
        1 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(word)),
        2 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(word)),
        _ => _mm512_srai_epi32::<24>(word),
    }
}

/// Q6_K: sixteen rows' super-blocks per tile; `out[t][0..16]` = those rows · `acts[t]`.
///
/// The 6-bit values are used unsigned (0..64) and `32 · Σ_g scale_g · sum16_g` subtracted;
/// each group of 16 values is scaled by its signed 8-bit scale.
///
/// # Safety
/// As [`q4_k`], with Q6_K tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn q6_k<const T: usize>(
    tiles: *const u8,
    blocks: usize,
    acts: [*const BlockQ8KPairs; T],
    out: [*mut f32; T],
    accumulate: bool,
) {
    const TY: GgmlType = GgmlType::Q6_K;
    const TILE: usize = PACK_ROWS * 210;
    const D: usize = tile_offset(TY, 0);
    const SCALES: usize = tile_offset(TY, 1);
    const QL: usize = tile_offset(TY, 2);
    const QH: usize = tile_offset(TY, 3);
    let m4 = _mm512_set1_epi8(0x0f);
    let m30 = _mm512_set1_epi8(0x30);
    // SAFETY: AVX-512 F and, with `accumulate`, 16 readable floats per `out[t]` (the contract).
    let mut acc = unsafe { start::<T>(&out, accumulate) };
    for b in 0..blocks {
        // SAFETY: b < blocks tiles of TILE bytes from `tiles` (the contract).
        let tile = unsafe { tiles.add(b * TILE) };
        prefetch_ahead(tile, TILE);
        let a: [&BlockQ8KPairs; T] = std::array::from_fn(|t| {
            // SAFETY: b < blocks activation blocks from `acts[t]` (the contract).
            unsafe { &*acts[t].add(b) }
        });
        let words: [__m512i; 4] = std::array::from_fn(|w| {
            // SAFETY: w < 4: the four 64-byte scale words of the tile (16 rows × 16 bytes from
            // SCALES).
            unsafe { load64(tile.add(SCALES + 64 * w)) }
        });
        let mut isum = [_mm512_setzero_si512(); T];
        for h in 0..2 {
            for kh in 0..2 {
                // Element 128h + 32s + 4k .. + 4 (k in 4kh .. 4kh + 4) of value vector s lies in
                // group 8h + 2s + kh.
                for s in 0..4 {
                    let scale = signed_byte(words[(8 * h + 2 * s + kh) / 4], 8 * h + 2 * s + kh);
                    let mut gsum = [_mm512_setzero_si512(); T];
                    for k in 4 * kh..4 * kh + 4 {
                        // SAFETY: h < 2, k < 8: low-bits word 16 h + 8 (s % 2) + k of the 32
                        // (16 rows × 128 bytes from QL) and high-bits word 8 h + k of the 16
                        // (16 rows × 64 bytes from QH) of the tile.
                        let (ql, qh) = unsafe {
                            (
                                load64(tile.add(QL + (16 * h + 8 * (s % 2) + k) * 64)),
                                load64(tile.add(QH + (8 * h + k) * 64)),
                            )
                        };
                        let low = if s < 2 {
                            _mm512_and_si512(ql, m4)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4)
                        };
                        let high = match s {
                            0 => _mm512_slli_epi16::<4>(qh),
                            1 => _mm512_slli_epi16::<2>(qh),
                            2 => qh,
                            _ => _mm512_srli_epi16::<2>(qh),
                        };
                        let v = _mm512_or_si512(low, _mm512_and_si512(high, m30));
                        for t in 0..T {
                            // SAFETY: 128 h + 32 s + 4 k + 4 <= 256 bytes of the activation
                            // quants (h < 2, s < 4, k < 8).
                            let y =
                                unsafe { bcast4(a[t].qs.as_ptr().add(128 * h + 32 * s + 4 * k)) };
                            gsum[t] = _mm512_dpbusd_epi32(gsum[t], v, y);
                        }
                    }
                    for t in 0..T {
                        isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(gsum[t], scale));
                    }
                }
            }
        }
        // Σ_g scale_g · sum16_g with the scales as 16-bit pairs (s_4w, s_4w+2), (s_4w+1, s_4w+3).
        let pairs: [__m512i; 8] = std::array::from_fn(|i| {
            let w = words[i / 2];
            if i % 2 == 0 {
                _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(w))
            } else {
                _mm512_srai_epi16::<8>(w)
            }
        });
        // SAFETY: the tile's sixteen f16 scales at D.
        let d = unsafe { load_f16x16(tile.add(D)) };
        for t in 0..T {
            let mut off = _mm512_setzero_si512();
            for (i, &p) in pairs.iter().enumerate() {
                off = _mm512_dpwssd_epi32(off, p, _mm512_set1_epi32(a[t].pairs16[i]));
            }
            let isum = _mm512_sub_epi32(isum[t], _mm512_slli_epi32::<5>(off));
            // The scalar reference: x.d * y.d * isum.
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(a[t].d));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum)));
        }
    }
    for t in 0..T {
        // SAFETY: `out[t]` writes 16 floats (the contract).
        unsafe { _mm512_storeu_ps(out[t], acc[t]) };
    }
}
