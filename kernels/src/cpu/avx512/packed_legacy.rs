//! Packed Q8_0 and Q5_0 against Q8_0 activations with block sums ([`BlockQ8_0Sum`]).

use super::*;
use crate::cpu::packed::act::BlockQ8_0Sum;
use crate::cpu::packed::layout::{tile_offset, PACK_ROWS};
use crate::quant::GgmlType;

/// `acc[t] += isum[t] as f32 * (d * a[t].d)` with one rounding (a fused multiply-add), as
/// llama.cpp's x86 kernels for these formats accumulate; the scalar reference rounds the product
/// first, so the two agree to float rounding. (Gemma 3's logits are sensitive to which: its
/// Q5_0 projections with the scalar order land further from llama.cpp's.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn finish<const T: usize>(
    acc: &mut [__m512; T],
    isum: &[__m512i; T],
    d: __m512,
    a: &[&BlockQ8_0Sum; T],
) {
    for t in 0..T {
        let dd = _mm512_mul_ps(d, _mm512_set1_ps(a[t].d));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), dd, acc[t]);
    }
}

/// Q8_0: sixteen rows' blocks per tile, values stored as `q + 128`; `out[t][0..16]` = those
/// rows · `acts[t]`. Each lane's sum starts at `-128 · Σ a` to undo the offset.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `tiles` points at `blocks` consecutive Q8_0 tiles, every `acts[t]` at
/// `blocks` activation blocks, every `out[t]` at 16 writable floats
/// (read first with `accumulate`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn q8_0<const T: usize>(
    tiles: *const u8,
    blocks: usize,
    acts: [*const BlockQ8_0Sum; T],
    out: [*mut f32; T],
    accumulate: bool,
) {
    const TY: GgmlType = GgmlType::Q8_0;
    const TILE: usize = PACK_ROWS * 34;
    const D: usize = tile_offset(TY, 0);
    const QS: usize = tile_offset(TY, 1);
    // SAFETY: AVX-512 F and, with `accumulate`, 16 readable floats per `out[t]` (the contract).
    let mut acc = unsafe { start::<T>(&out, accumulate) };
    for b in 0..blocks {
        // SAFETY: b < blocks tiles of TILE bytes from `tiles` (the contract).
        let tile = unsafe { tiles.add(b * TILE) };
        prefetch_ahead(tile, TILE);
        let a: [&BlockQ8_0Sum; T] = std::array::from_fn(|t| {
            // SAFETY: b < blocks activation blocks from `acts[t]` (the contract).
            unsafe { &*acts[t].add(b) }
        });
        let mut isum: [__m512i; T] = std::array::from_fn(|t| _mm512_set1_epi32(-128 * a[t].sum));
        for k in 0..8 {
            // SAFETY: k < 8: quant word k of the 8 (16 rows × 32 bytes from QS) of the tile.
            let w = unsafe { load64(tile.add(QS + 64 * k)) };
            for t in 0..T {
                // SAFETY: 4 k + 4 <= 32 bytes of the activation quants (k < 8).
                let y = unsafe { bcast4(a[t].qs.as_ptr().add(4 * k)) };
                isum[t] = _mm512_dpbusd_epi32(isum[t], w, y);
            }
        }
        // SAFETY: the tile's sixteen f16 scales at D.
        let d = unsafe { load_f16x16(tile.add(D)) };
        finish(&mut acc, &isum, d, &a);
    }
    for t in 0..T {
        // SAFETY: `out[t]` writes 16 floats (the contract).
        unsafe { _mm512_storeu_ps(out[t], acc[t]) };
    }
}

/// The fifth bits `first .. first + 4` of every lane's 32-bit `qh` as 16 in the lane's bytes
/// `0 .. 4`, added to `nibbles` (bytes `0 .. 4` of each lane hold four 4-bit values).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn with_fifth_bits(nibbles: __m512i, qh: __m512i, first: usize) -> __m512i {
    // Every byte of a lane takes the lane's byte holding those bits ...
    let lane_base = _mm512_set4_epi32(0x0c0c_0c0c, 0x0808_0808, 0x0404_0404, 0);
    let pick = _mm512_add_epi8(lane_base, _mm512_set1_epi8((first / 8) as i8));
    let bytes = _mm512_shuffle_epi8(qh, pick);
    // ... and tests its own bit.
    let s = first % 8;
    let bits = u32::from_le_bytes([1 << s, 1 << (s + 1), 1 << (s + 2), 1 << (s + 3)]);
    let set = _mm512_test_epi8_mask(bytes, _mm512_set1_epi32(bits as i32));
    _mm512_mask_add_epi8(nibbles, set, nibbles, _mm512_set1_epi8(16))
}

/// Q5_0: sixteen rows' blocks per tile; `out[t][0..16]` = those rows · `acts[t]`. The 5-bit
/// values are used unsigned (0..32) and each lane's sum starts at `-16 · Σ a`.
///
/// # Safety
/// As [`q8_0`], with Q5_0 tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn q5_0<const T: usize>(
    tiles: *const u8,
    blocks: usize,
    acts: [*const BlockQ8_0Sum; T],
    out: [*mut f32; T],
    accumulate: bool,
) {
    const TY: GgmlType = GgmlType::Q5_0;
    const TILE: usize = PACK_ROWS * 22;
    const D: usize = tile_offset(TY, 0);
    const QH: usize = tile_offset(TY, 1);
    const QS: usize = tile_offset(TY, 2);
    let m4 = _mm512_set1_epi8(0x0f);
    // SAFETY: AVX-512 F and, with `accumulate`, 16 readable floats per `out[t]` (the contract).
    let mut acc = unsafe { start::<T>(&out, accumulate) };
    for b in 0..blocks {
        // SAFETY: b < blocks tiles of TILE bytes from `tiles` (the contract).
        let tile = unsafe { tiles.add(b * TILE) };
        prefetch_ahead(tile, TILE);
        let a: [&BlockQ8_0Sum; T] = std::array::from_fn(|t| {
            // SAFETY: b < blocks activation blocks from `acts[t]` (the contract).
            unsafe { &*acts[t].add(b) }
        });
        // SAFETY: the tile's 64 bytes of fifth bits (16 rows × 4 bytes from QH).
        let qh = unsafe { load64(tile.add(QH)) };
        let mut isum: [__m512i; T] = std::array::from_fn(|t| _mm512_set1_epi32(-16 * a[t].sum));
        for k in 0..4 {
            // Bytes 4k..4k+4 of each row: elements 4k.. in the low nibbles, 16+4k.. in the high.
            // SAFETY: k < 4: quant word k of the 4 (16 rows × 16 bytes from QS) of the tile.
            let w = unsafe { load64(tile.add(QS + 64 * k)) };
            let lo = with_fifth_bits(_mm512_and_si512(w, m4), qh, 4 * k);
            let hi = with_fifth_bits(
                _mm512_and_si512(_mm512_srli_epi16::<4>(w), m4),
                qh,
                16 + 4 * k,
            );
            for t in 0..T {
                // SAFETY: 4 k + 20 <= 32 bytes of the activation quants (k < 4), four at `q`
                // and four at `q + 16`.
                let (yl, yh) = unsafe {
                    let q = a[t].qs.as_ptr().add(4 * k);
                    (bcast4(q), bcast4(q.add(16)))
                };
                isum[t] = _mm512_dpbusd_epi32(isum[t], lo, yl);
                isum[t] = _mm512_dpbusd_epi32(isum[t], hi, yh);
            }
        }
        // SAFETY: the tile's sixteen f16 scales at D.
        let d = unsafe { load_f16x16(tile.add(D)) };
        finish(&mut acc, &isum, d, &a);
    }
    for t in 0..T {
        // SAFETY: `out[t]` writes 16 floats (the contract).
        unsafe { _mm512_storeu_ps(out[t], acc[t]) };
    }
}
