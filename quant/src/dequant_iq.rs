//! Per-block dequantization of the IQ, ternary (TQ) and MXFP4 formats, bit-exact with ggml's
//! `dequantize_row_*` and the gguf package's numpy code: every value is computed with the same
//! f32 operations in the same order (a group scale first, e.g. `d * (0.5 + s) * 0.25`, then
//! times the codeword magnitude, then the sign, which is exact).
//!
//! [`super::dequant`] runs these over slices and raw bytes.

use super::blocks_iq::*;
use super::float::f16_to_f32;
use super::tables::*;
use super::types::{QK, QK_K};

/// Byte `j` of a little-endian packed codeword.
#[inline(always)]
fn byte(word: u64, j: usize) -> u8 {
    (word >> (8 * j)) as u8
}

/// `v` negated where bit `j` of `signs` is set (exact: only the sign bit changes).
#[inline(always)]
fn signed(v: f32, signs: u8, j: usize) -> f32 {
    if signs & KMASK_IQ2XS[j] != 0 {
        -v
    } else {
        v
    }
}

/// Eight weights `db * grid * sign` from a codeword of eight magnitudes and a sign byte.
#[inline(always)]
fn grid8(out: &mut [f32], db: f32, grid: u64, signs: u8) {
    for (j, o) in out.iter_mut().enumerate().take(8) {
        *o = signed(db * f32::from(byte(grid, j)), signs, j);
    }
}

/// Four weights from an IQ3 codeword (four magnitudes), with sign bits `first..first + 4`.
#[inline(always)]
fn grid4(out: &mut [f32], db: f32, grid: u32, signs: u8, first: usize) {
    for (j, o) in out.iter_mut().enumerate().take(4) {
        *o = signed(db * f32::from((grid >> (8 * j)) as u8), signs, first + j);
    }
}

/// The two `u32` words of IQ2_XXS group `ib` (grid indices, then signs and scale).
#[inline(always)]
pub fn iq2xxs_words(b: &BlockIQ2XXS, ib: usize) -> (u32, u32) {
    let q = &b.qs[4 * ib..4 * ib + 4];
    (
        u32::from(q[0]) | (u32::from(q[1]) << 16),
        u32::from(q[2]) | (u32::from(q[3]) << 16),
    )
}

/// One IQ2_XXS super-block.
#[inline(always)]
pub fn iq2_xxs_block(b: &BlockIQ2XXS, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let (idx, signs) = iq2xxs_words(b, ib);
        let db = d * (0.5 + (signs >> 28) as f32) * 0.25;
        for (l, out) in out.chunks_exact_mut(8).enumerate() {
            let grid = IQ2XXS_GRID[byte(u64::from(idx), l) as usize];
            let s = KSIGNS_IQ2XS[((signs >> (7 * l)) & 127) as usize];
            grid8(out, db, grid, s);
        }
    }
}

/// One IQ2_XS super-block.
#[inline(always)]
pub fn iq2_xs_block(b: &BlockIQ2XS, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let sc = b.scales[ib];
        let db = [
            d * (0.5 + (sc & 0xf) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for (l, out) in out.chunks_exact_mut(8).enumerate() {
            let q = b.qs[4 * ib + l];
            let grid = IQ2XS_GRID[usize::from(q & 511)];
            grid8(out, db[l / 2], grid, KSIGNS_IQ2XS[usize::from(q >> 9)]);
        }
    }
}

/// The 10-bit grid index of the `l`-th 8 weights of IQ2_S group `ib`.
#[inline(always)]
pub fn iq2s_index(b: &BlockIQ2S, ib: usize, l: usize) -> usize {
    usize::from(b.qs[4 * ib + l]) | ((usize::from(b.qh[ib]) << (8 - 2 * l)) & 0x300)
}

/// One IQ2_S super-block.
#[inline(always)]
pub fn iq2_s_block(b: &BlockIQ2S, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let sc = b.scales[ib];
        let db = [
            d * (0.5 + (sc & 0xf) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for (l, out) in out.chunks_exact_mut(8).enumerate() {
            let grid = IQ2S_GRID[iq2s_index(b, ib, l)];
            grid8(out, db[l / 2], grid, b.qs[QK_K / 8 + 4 * ib + l]);
        }
    }
}

/// The sign-and-scale word of IQ3_XXS group `ib`.
#[inline(always)]
pub fn iq3xxs_word(b: &BlockIQ3XXS, ib: usize) -> u32 {
    let at = QK_K / 4 + 4 * ib;
    u32::from_le_bytes([b.qs[at], b.qs[at + 1], b.qs[at + 2], b.qs[at + 3]])
}

/// One IQ3_XXS super-block.
#[inline(always)]
pub fn iq3_xxs_block(b: &BlockIQ3XXS, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let aux = iq3xxs_word(b, ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for (l, out) in out.chunks_exact_mut(8).enumerate() {
            let s = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let q = &b.qs[8 * ib + 2 * l..];
            grid4(out, db, IQ3XXS_GRID[usize::from(q[0])], s, 0);
            grid4(&mut out[4..], db, IQ3XXS_GRID[usize::from(q[1])], s, 4);
        }
    }
}

/// The two 9-bit grid indices of the `l`-th 8 weights of IQ3_S group `ib`.
#[inline(always)]
pub fn iq3s_indices(b: &BlockIQ3S, ib: usize, l: usize) -> (usize, usize) {
    let qh = usize::from(b.qh[ib]);
    let q = &b.qs[8 * ib + 2 * l..];
    (
        usize::from(q[0]) | ((qh << (8 - 2 * l)) & 256),
        usize::from(q[1]) | ((qh << (7 - 2 * l)) & 256),
    )
}

/// One IQ3_S super-block.
#[inline(always)]
pub fn iq3_s_block(b: &BlockIQ3S, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let sc = (b.scales[ib / 2] >> (4 * (ib % 2))) & 0xf;
        let db = d * (1 + 2 * i32::from(sc)) as f32;
        for (l, out) in out.chunks_exact_mut(8).enumerate() {
            let (i1, i2) = iq3s_indices(b, ib, l);
            let s = b.signs[4 * ib + l];
            grid4(out, db, IQ3S_GRID[i1], s, 0);
            grid4(&mut out[4..], db, IQ3S_GRID[i2], s, 4);
        }
    }
}

/// The 11-bit grid index of the `l`-th 8 weights of IQ1_S group `ib`.
#[inline(always)]
pub fn iq1s_index(b: &BlockIQ1S, ib: usize, l: usize) -> usize {
    usize::from(b.qs[4 * ib + l]) | (((usize::from(b.qh[ib]) >> (3 * l)) & 7) << 8)
}

/// Eight weights `dl * (grid + delta)` from a ternary codeword.
#[inline(always)]
fn ternary8(out: &mut [f32], dl: f32, grid: u64, delta: f32) {
    for (j, o) in out.iter_mut().enumerate().take(8) {
        *o = dl * (f32::from(byte(grid, j) as i8) + delta);
    }
}

/// One IQ1_S super-block.
#[inline(always)]
pub fn iq1_s_block(b: &BlockIQ1S, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let qh = b.qh[ib];
        let dl = d * (2 * i32::from((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1S_DELTA
        } else {
            IQ1S_DELTA
        };
        for (l, out) in out.chunks_exact_mut(8).enumerate() {
            ternary8(out, dl, IQ1S_GRID[iq1s_index(b, ib, l)], delta);
        }
    }
}

/// The four `u16` scale words of an IQ1_M block.
#[inline(always)]
pub fn iq1m_scale_words(b: &BlockIQ1M) -> [u16; 4] {
    let s = &b.scales;
    [
        u16::from_le_bytes([s[0], s[1]]),
        u16::from_le_bytes([s[2], s[3]]),
        u16::from_le_bytes([s[4], s[5]]),
        u16::from_le_bytes([s[6], s[7]]),
    ]
}

/// The f16 super-block scale of an IQ1_M block, gathered from the top nibbles of its scale words.
#[inline(always)]
pub fn iq1m_scale(sc: &[u16; 4]) -> f32 {
    let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    super::float::f16_bits_to_f32(bits)
}

/// The grid index of the `l`-th 8 weights of IQ1_M group `ib`, and whether its delta is negative.
#[inline(always)]
pub fn iq1m_index(b: &BlockIQ1M, ib: usize, l: usize) -> (usize, bool) {
    let qh = usize::from(b.qh[2 * ib + l / 2]);
    // Even l: index bits 0..3 and delta sign bit 3; odd l: bits 4..7 and sign bit 7.
    let (shift, sign_bit) = [(8, 0x08), (4, 0x80)][l % 2];
    let neg = qh & sign_bit != 0;
    (usize::from(b.qs[4 * ib + l]) | ((qh << shift) & 0x700), neg)
}

/// The 3-bit scale of the `half`-th 16 weights of IQ1_M group `ib`.
#[inline(always)]
pub fn iq1m_group_scale(sc: &[u16; 4], ib: usize, half: usize) -> i32 {
    i32::from((sc[ib / 2] >> (6 * (ib % 2) + 3 * half)) & 7)
}

/// One IQ1_M super-block.
#[inline(always)]
pub fn iq1_m_block(b: &BlockIQ1M, out: &mut [f32; QK_K]) {
    let sc = iq1m_scale_words(b);
    let d = iq1m_scale(&sc);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let dl = [0, 1].map(|h| d * (2 * iq1m_group_scale(&sc, ib, h) + 1) as f32);
        for (l, out) in out.chunks_exact_mut(8).enumerate() {
            let (idx, neg) = iq1m_index(b, ib, l);
            let delta = if neg { -IQ1M_DELTA } else { IQ1M_DELTA };
            ternary8(out, dl[l / 2], IQ1S_GRID[idx], delta);
        }
    }
}

/// One IQ4_NL block: `d * kvalues[q]`.
#[inline(always)]
pub fn iq4_nl_block(b: &BlockIQ4NL, out: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        lo[j] = d * f32::from(KVALUES_IQ4NL[usize::from(b.qs[j] & 0xf)]);
        hi[j] = d * f32::from(KVALUES_IQ4NL[usize::from(b.qs[j] >> 4)]);
    }
}

/// The signed 6-bit scale (-32..32) of IQ4_XS group `ib`.
#[inline(always)]
pub fn iq4xs_scale(b: &BlockIQ4XS, ib: usize) -> i32 {
    let low = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf;
    let high = ((b.scales_h >> (2 * ib)) & 3) as u8;
    i32::from(low | (high << 4)) - 32
}

/// One IQ4_XS super-block: `(d * (ls - 32)) * kvalues[q]` per group of 32.
#[inline(always)]
pub fn iq4_xs_block(b: &BlockIQ4XS, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (ib, out) in out.chunks_exact_mut(32).enumerate() {
        let dl = d * iq4xs_scale(b, ib) as f32;
        let qs = &b.qs[16 * ib..16 * ib + 16];
        let (lo, hi) = out.split_at_mut(16);
        for j in 0..16 {
            lo[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xf)]);
            hi[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
        }
    }
}

/// Powers of three selecting the trits of a TQ1_0 byte.
const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Trit `n` (0, 1 or 2) of a TQ1_0 byte: the byte times `3^n` (wrapping), times 3, top byte.
#[inline(always)]
pub fn tq1_trit(q: u8, n: usize) -> i32 {
    let q = q.wrapping_mul(POW3[n]);
    i32::from((u16::from(q) * 3) >> 8)
}

/// The 256 ternary values (-1, 0, 1) of a TQ1_0 block, in element order.
#[inline(always)]
pub fn tq1_values(b: &BlockTQ1_0) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    // Bytes 0..32 give elements 0..160 (trit n of byte m is element 32n + m), bytes 32..48
    // elements 160..240 (16n + m), and the four qh bytes elements 240..256 (4n + j).
    for n in 0..5 {
        for m in 0..32 {
            v[32 * n + m] = (tq1_trit(b.qs[m], n) - 1) as i8;
        }
        for m in 0..16 {
            v[160 + 16 * n + m] = (tq1_trit(b.qs[32 + m], n) - 1) as i8;
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            v[240 + 4 * n + j] = (tq1_trit(b.qh[j], n) - 1) as i8;
        }
    }
    v
}

/// One TQ1_0 super-block: `(t - 1) * d`.
#[inline(always)]
pub fn tq1_0_block(b: &BlockTQ1_0, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (o, &t) in out.iter_mut().zip(tq1_values(b).iter()) {
        *o = f32::from(t) * d;
    }
}

/// One TQ2_0 super-block: `(q - 1) * d`, the 2-bit values in Q2_K's bit-plane order.
#[inline(always)]
pub fn tq2_0_block(b: &BlockTQ2_0, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for (e, o) in out.iter_mut().enumerate() {
        let (half, plane, m) = (e / 128, (e % 128) / 32, e % 32);
        let q = (b.qs[32 * half + m] >> (2 * plane)) & 3;
        *o = (i32::from(q) - 1) as f32 * d;
    }
}

/// One MXFP4 block: `e2m1 * 2^(e - 128)` (the doubled E2M1 value times half the scale).
#[inline(always)]
pub fn mxfp4_block(b: &BlockMXFP4, out: &mut [f32; QK]) {
    let d = e8m0_to_f32_half(b.e);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        lo[j] = f32::from(KVALUES_MXFP4[usize::from(b.qs[j] & 0xf)]) * d;
        hi[j] = f32::from(KVALUES_MXFP4[usize::from(b.qs[j] >> 4)]) * d;
    }
}
