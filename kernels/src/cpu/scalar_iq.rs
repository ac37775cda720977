//! Scalar reference dot products of the IQ, ternary and MXFP4 weight formats against their ggml
//! partners (`vec_dot_type`): IQ4_NL and MXFP4 × Q8_0, everything else × Q8_K.
//!
//! Each follows ggml's generic kernel (`ggml-cpu/quants.c`): exact integer sums per group,
//! multiplied by the group's integer scale and summed per super-block, then one float term per
//! block, `(d_w * d_a) * isum`, with the format's constant factor (`0.125` for IQ2, `0.25` for
//! IQ3_XXS) applied to the final sum. IQ4_XS sums its super-block's scaled integers exactly too
//! (as ggml's x86 kernel does; its generic one adds a float term per 32 weights). The SIMD
//! kernels compute the same integers and the same float operations, so they equal these bit for
//! bit. The block unpacking is shared with the dequantizers in [`crate::quant::dequant_iq`].
//!
//! All functions panic if the weight and activation rows have different block counts.

use super::quantize::BlockQ8_0Act;
use crate::quant::dequant_iq::*;
use crate::quant::float::f16_to_f32;
use crate::quant::tables::*;
use crate::quant::*;

fn check_len(w: usize, a: usize) {
    assert_eq!(w, a, "dot product of rows with different block counts");
}

/// The constant factor of the IQ2 formats' sums (their group scales are `(2 s + 1) / 8`).
pub const IQ2_FACTOR: f32 = 0.125;
/// The constant factor of IQ3_XXS's sums (its group scales are `(2 s + 1) / 4`).
pub const IQ3XXS_FACTOR: f32 = 0.25;

/// `Σ_j ±grid_j · q8_j` over the eight magnitudes of a codeword with sign byte `signs`.
#[inline(always)]
fn grid8_dot(grid: u64, signs: u8, q8: &[i8]) -> i32 {
    (0..8)
        .map(|j| {
            let v = i32::from((grid >> (8 * j)) as u8) * i32::from(q8[j]);
            if signs & KMASK_IQ2XS[j] != 0 {
                -v
            } else {
                v
            }
        })
        .sum()
}

/// [`grid8_dot`] for two four-magnitude IQ3 codewords sharing a sign byte.
#[inline(always)]
fn grid4x2_dot(g1: u32, g2: u32, signs: u8, q8: &[i8]) -> i32 {
    let grid = u64::from(g1) | (u64::from(g2) << 32);
    grid8_dot(grid, signs, q8)
}

/// The float term of one super-block: `(d_w * d_a) * isum`.
#[inline(always)]
fn block_term(d: half::f16, y: &BlockQ8K, isum: i32) -> f32 {
    (f16_to_f32(d) * y.d) * isum as f32
}

/// IQ2_XXS weights · Q8_K activations.
pub fn dot_iq2_xxs_q8_k(w: &[BlockIQ2XXS], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut bsum = 0i32;
        for ib in 0..8 {
            let (idx, signs) = iq2xxs_words(x, ib);
            let ls = 2 * (signs >> 28) as i32 + 1;
            let sumi: i32 = (0..4)
                .map(|l| {
                    let grid = IQ2XXS_GRID[((idx >> (8 * l)) & 255) as usize];
                    let s = KSIGNS_IQ2XS[((signs >> (7 * l)) & 127) as usize];
                    grid8_dot(grid, s, &y.qs[32 * ib + 8 * l..])
                })
                .sum();
            bsum += sumi * ls;
        }
        sumf += block_term(x.d, y, bsum);
    }
    IQ2_FACTOR * sumf
}

/// IQ2_XS weights · Q8_K activations.
pub fn dot_iq2_xs_q8_k(w: &[BlockIQ2XS], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut bsum = 0i32;
        for ib in 0..8 {
            let ls = [x.scales[ib] & 0xf, x.scales[ib] >> 4].map(|s| 2 * i32::from(s) + 1);
            for l in 0..4 {
                let q = x.qs[4 * ib + l];
                let grid = IQ2XS_GRID[usize::from(q & 511)];
                let s = KSIGNS_IQ2XS[usize::from(q >> 9)];
                bsum += ls[l / 2] * grid8_dot(grid, s, &y.qs[32 * ib + 8 * l..]);
            }
        }
        sumf += block_term(x.d, y, bsum);
    }
    IQ2_FACTOR * sumf
}

/// IQ2_S weights · Q8_K activations.
pub fn dot_iq2_s_q8_k(w: &[BlockIQ2S], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut bsum = 0i32;
        for ib in 0..8 {
            let ls = [x.scales[ib] & 0xf, x.scales[ib] >> 4].map(|s| 2 * i32::from(s) + 1);
            for l in 0..4 {
                let grid = IQ2S_GRID[iq2s_index(x, ib, l)];
                let s = x.qs[QK_K / 8 + 4 * ib + l];
                bsum += ls[l / 2] * grid8_dot(grid, s, &y.qs[32 * ib + 8 * l..]);
            }
        }
        sumf += block_term(x.d, y, bsum);
    }
    IQ2_FACTOR * sumf
}

/// IQ3_XXS weights · Q8_K activations.
pub fn dot_iq3_xxs_q8_k(w: &[BlockIQ3XXS], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut bsum = 0i32;
        for ib in 0..8 {
            let aux = iq3xxs_word(x, ib);
            let ls = 2 * (aux >> 28) as i32 + 1;
            let sumi: i32 = (0..4)
                .map(|l| {
                    let q = &x.qs[8 * ib + 2 * l..];
                    let s = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                    let (g1, g2) = (
                        IQ3XXS_GRID[usize::from(q[0])],
                        IQ3XXS_GRID[usize::from(q[1])],
                    );
                    grid4x2_dot(g1, g2, s, &y.qs[32 * ib + 8 * l..])
                })
                .sum();
            bsum += sumi * ls;
        }
        sumf += block_term(x.d, y, bsum);
    }
    IQ3XXS_FACTOR * sumf
}

/// IQ3_S weights · Q8_K activations.
pub fn dot_iq3_s_q8_k(w: &[BlockIQ3S], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut bsum = 0i32;
        for ib in 0..8 {
            let sc = (x.scales[ib / 2] >> (4 * (ib % 2))) & 0xf;
            let ls = 2 * i32::from(sc) + 1;
            let sumi: i32 = (0..4)
                .map(|l| {
                    let (i1, i2) = iq3s_indices(x, ib, l);
                    let s = x.signs[4 * ib + l];
                    grid4x2_dot(IQ3S_GRID[i1], IQ3S_GRID[i2], s, &y.qs[32 * ib + 8 * l..])
                })
                .sum();
            bsum += sumi * ls;
        }
        sumf += block_term(x.d, y, bsum);
    }
    sumf
}

/// `Σ_j grid_j · q8_j` over a ternary codeword's eight signed bytes.
#[inline(always)]
fn ternary8_dot(grid: u64, q8: &[i8]) -> i32 {
    (0..8)
        .map(|j| i32::from((grid >> (8 * j)) as u8 as i8) * i32::from(q8[j]))
        .sum()
}

/// IQ1_S weights · Q8_K activations: `d * (sumi + 1/8 * sumi1)` per super-block, `sumi1` the
/// delta term from the activations' 16-sums.
pub fn dot_iq1_s_q8_k(w: &[BlockIQ1S], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let (mut sumi, mut sumi1) = (0i32, 0i32);
        for ib in 0..8 {
            let qh = x.qh[ib];
            let ls = 2 * i32::from((qh >> 12) & 7) + 1;
            let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
            let lsum: i32 = (0..4)
                .map(|l| ternary8_dot(IQ1S_GRID[iq1s_index(x, ib, l)], &y.qs[32 * ib + 8 * l..]))
                .sum();
            sumi += ls * lsum;
            sumi1 += ls * delta * (i32::from(y.bsums[2 * ib]) + i32::from(y.bsums[2 * ib + 1]));
        }
        sumf += (f16_to_f32(x.d) * y.d) * (sumi as f32 + IQ1S_DELTA * sumi1 as f32);
    }
    sumf
}

/// IQ1_M weights · Q8_K activations: as IQ1_S with a delta sign per 8 weights and a scale per 16.
pub fn dot_iq1_m_q8_k(w: &[BlockIQ1M], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let sc = iq1m_scale_words(x);
        let (mut sumi1, mut sumi2) = (0i32, 0i32);
        for ib in 0..8 {
            let ls = [0, 1].map(|h| 2 * iq1m_group_scale(&sc, ib, h) + 1);
            for l in 0..4 {
                let (idx, neg) = iq1m_index(x, ib, l);
                let q8 = &y.qs[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                let qsum: i32 = q8.iter().map(|&q| i32::from(q)).sum();
                sumi1 += ls[l / 2] * ternary8_dot(IQ1S_GRID[idx], q8);
                sumi2 += ls[l / 2] * if neg { -qsum } else { qsum };
            }
        }
        sumf += (iq1m_scale(&sc) * y.d) * (sumi1 as f32 + IQ1M_DELTA * sumi2 as f32);
    }
    sumf
}

/// IQ4_NL weights · Q8_0 activations.
pub fn dot_iq4_nl_q8_0(w: &[BlockIQ4NL], a: &[BlockQ8_0Act]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let isum = nl_pairs_dot(&KVALUES_IQ4NL, &x.qs, &y.qs);
        sumf += (y.d * f16_to_f32(x.d)) * isum as f32;
    }
    sumf
}

/// MXFP4 weights · Q8_0 activations.
pub fn dot_mxfp4_q8_0(w: &[BlockMXFP4], a: &[BlockQ8_0Act]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let isum = nl_pairs_dot(&KVALUES_MXFP4, &x.qs, &y.qs);
        sumf += (y.d * e8m0_to_f32_half(x.e)) * isum as f32;
    }
    sumf
}

/// `Σ values[q] · q8` over 32 weights stored as 4-bit indices (byte `j`: weights `j` and `j + 16`).
#[inline(always)]
fn nl_pairs_dot(values: &[i8; 16], qs: &[u8], q8: &[i8]) -> i32 {
    (0..16)
        .map(|j| {
            i32::from(values[usize::from(qs[j] & 0xf)]) * i32::from(q8[j])
                + i32::from(values[usize::from(qs[j] >> 4)]) * i32::from(q8[j + 16])
        })
        .sum()
}

/// IQ4_XS weights · Q8_K activations.
pub fn dot_iq4_xs_q8_k(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let isum: i32 = (0..8)
            .map(|ib| {
                let q8 = &y.qs[32 * ib..];
                iq4xs_scale(x, ib) * nl_pairs_dot(&KVALUES_IQ4NL, &x.qs[16 * ib..], q8)
            })
            .sum();
        sumf += block_term(x.d, y, isum);
    }
    sumf
}

/// TQ1_0 weights · Q8_K activations.
pub fn dot_tq1_0_q8_k(w: &[BlockTQ1_0], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let isum: i32 = tq1_values(x)
            .iter()
            .zip(&y.qs)
            .map(|(&t, &q)| i32::from(t) * i32::from(q))
            .sum();
        sumf += isum as f32 * (f16_to_f32(x.d) * y.d);
    }
    sumf
}

/// TQ2_0 weights · Q8_K activations.
pub fn dot_tq2_0_q8_k(w: &[BlockTQ2_0], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let isum: i32 = (0..QK_K)
            .map(|e| {
                let (half, plane, m) = (e / 128, (e % 128) / 32, e % 32);
                let q = i32::from((x.qs[32 * half + m] >> (2 * plane)) & 3);
                (q - 1) * i32::from(y.qs[e])
            })
            .sum();
        sumf += isum as f32 * (y.d * f16_to_f32(x.d));
    }
    sumf
}
