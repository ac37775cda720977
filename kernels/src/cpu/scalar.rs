//! Scalar reference dot products, one per weight type × activation type pair, following ggml's
//! pairing (`vec_dot_type`): Q4_0/Q5_0/Q8_0 × Q8_0, Q4_1/Q5_1 × Q8_1, the K-quants × Q8_K,
//! F16 × F16, BF16 × BF16, F32 × F32. (Q8_0 activations are held as [`BlockQ8_0Act`]: the
//! same values as ggml's `block_q8_0`, with the scale already widened to f32.)
//!
//! Each block's integer sum is exact; the float result is `Σ block_scale × block_sum` in block
//! order. The SIMD versions sum the same terms in another order, so they agree to float rounding.
//!
//! All functions panic if the weight and activation rows have different block counts.

// Index loops mirror the block layouts as ggml documents them; that is the point of a reference.
#![allow(clippy::needless_range_loop)]

use half::{bf16, f16};

use super::quantize::BlockQ8_0Act;

use crate::quant::dequant::q3_k_scales;
use crate::quant::types::QK_K;

use crate::quant::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};

fn check_len(w: usize, a: usize) {
    assert_eq!(w, a, "dot product of rows with different block counts");
}

/// Q4_0 weights (`d * (q - 8)`) · Q8_0 activations.
pub fn dot_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0Act]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for j in 0..16 {
            let lo = i32::from(x.qs[j] & 0x0f) - 8;
            let hi = i32::from(x.qs[j] >> 4) - 8;
            isum += lo * i32::from(y.qs[j]) + hi * i32::from(y.qs[j + 16]);
        }
        sum += isum as f32 * (x.d.to_f32() * y.d);
    }
    sum
}

/// Q4_1 weights (`d * q + m`) · Q8_1 activations.
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for j in 0..16 {
            let lo = i32::from(x.qs[j] & 0x0f);
            let hi = i32::from(x.qs[j] >> 4);
            isum += lo * i32::from(y.qs[j]) + hi * i32::from(y.qs[j + 16]);
        }
        sum += (x.d.to_f32() * y.d.to_f32()) * isum as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// The 5-bit values of a Q5_0 / Q5_1 block (before the `- 16` of Q5_0), element order.
fn q5_values(qs: &[u8; 16], qh: [u8; 4]) -> [i32; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut v = [0i32; 32];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        v[j] = (u32::from(qs[j] & 0x0f) | h0) as i32;
        v[j + 16] = (u32::from(qs[j] >> 4) | h1) as i32;
    }
    v
}

/// Q5_0 weights (`d * (q - 16)`) · Q8_0 activations.
pub fn dot_q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0Act]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let v = q5_values(&x.qs, x.qh);
        let isum: i32 = v
            .iter()
            .zip(&y.qs)
            .map(|(&q, &p)| (q - 16) * i32::from(p))
            .sum();
        sum += isum as f32 * (x.d.to_f32() * y.d);
    }
    sum
}

/// Q5_1 weights (`d * q + m`) · Q8_1 activations.
pub fn dot_q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let v = q5_values(&x.qs, x.qh);
        let isum: i32 = v.iter().zip(&y.qs).map(|(&q, &p)| q * i32::from(p)).sum();
        sum += (x.d.to_f32() * y.d.to_f32()) * isum as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// Q8_0 weights · Q8_0 activations.
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0Act]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let isum: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&q, &p)| i32::from(q) * i32::from(p))
                .sum();
        sum += isum as f32 * (x.d.to_f32() * y.d);
    }
    sum
}

/// Q2_K weights (16 groups of 16, 4-bit scale and min each) · Q8_K activations.
pub fn dot_q2_k_q8_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let summs: i32 = (0..16)
            .map(|j| i32::from(y.bsums[j]) * i32::from(x.scales[j] >> 4))
            .sum();
        let mut isum = 0i32;
        // Element 128*h + 32*s + l lives in bits 2s..2s+2 of qs[32*h + l].
        for h in 0..2 {
            for s in 0..4 {
                for half in 0..2 {
                    let group = 8 * h + 2 * s + half;
                    let scale = i32::from(x.scales[group] & 0x0f);
                    let mut gsum = 0i32;
                    for l in 16 * half..16 * half + 16 {
                        let q = i32::from((x.qs[32 * h + l] >> (2 * s)) & 3);
                        gsum += q * i32::from(y.qs[128 * h + 32 * s + l]);
                    }
                    isum += scale * gsum;
                }
            }
        }
        let dall = y.d * x.d.to_f32();
        let dmin = y.d * x.dmin.to_f32();
        sum += dall * isum as f32 - dmin * summs as f32;
    }
    sum
}

/// Q3_K weights (3 bits, high bit in `hmask`, 16 groups of 16 with 6-bit scales) · Q8_K.
pub fn dot_q3_k_q8_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let scales = q3_k_scales(&x.scales);
        // Element 128*h + 32*s + l: low bits 2s..2s+2 of qs[32*h + l], high bit (4h + s) of
        // hmask[l]; a clear high bit subtracts 4.
        let mut isum = 0i32;
        for h in 0..2 {
            for s in 0..4 {
                let bit = 4 * h + s;
                for l in 0..32 {
                    let low = i32::from((x.qs[32 * h + l] >> (2 * s)) & 3);
                    let high = if (x.hmask[l] >> bit) & 1 == 1 { 0 } else { 4 };
                    let e = 128 * h + 32 * s + l;
                    isum += scales[e / 16] * (low - high) * i32::from(y.qs[e]);
                }
            }
        }
        sum += x.d.to_f32() * y.d * isum as f32;
    }
    sum
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K / Q5_K super-block.
pub(crate) fn k4_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = packed[j] & 63;
            mn[j] = packed[j + 4] & 63;
        } else {
            sc[j] = (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4);
            mn[j] = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// `Σ_j min_j × (sum of the 32 activations of sub-block j)`, the Q4_K / Q5_K minimum term.
fn k_mins_sum(mins: &[u8; 8], y: &BlockQ8K) -> i32 {
    (0..8)
        .map(|j| i32::from(mins[j]) * (i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1])))
        .sum()
}

/// Q4_K weights (8 sub-blocks of 32, 6-bit scale and min each) · Q8_K activations.
pub fn dot_q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let (sc, mn) = k4_scales_mins(&x.scales);
        let mut isum = 0i32;
        // Sub-block 2c is the low nibbles of qs[32c..32c+32], sub-block 2c+1 the high nibbles.
        for j in 0..8 {
            let shift = 4 * (j % 2);
            let mut bsum = 0i32;
            for l in 0..32 {
                let q = i32::from((x.qs[32 * (j / 2) + l] >> shift) & 0x0f);
                bsum += q * i32::from(y.qs[32 * j + l]);
            }
            isum += i32::from(sc[j]) * bsum;
        }
        let d = y.d * x.d.to_f32();
        let dmin = y.d * x.dmin.to_f32();
        sum += d * isum as f32 - dmin * k_mins_sum(&mn, y) as f32;
    }
    sum
}

/// Q5_K weights (Q4_K plus a fifth bit per weight in `qh`) · Q8_K activations.
pub fn dot_q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let (sc, mn) = k4_scales_mins(&x.scales);
        let mut isum = 0i32;
        // As Q4_K; sub-block j takes its fifth bit from bit j of qh[l].
        for j in 0..8 {
            let shift = 4 * (j % 2);
            let mut bsum = 0i32;
            for l in 0..32 {
                let low = (x.qs[32 * (j / 2) + l] >> shift) & 0x0f;
                let high = ((x.qh[l] >> j) & 1) << 4;
                bsum += i32::from(low | high) * i32::from(y.qs[32 * j + l]);
            }
            isum += i32::from(sc[j]) * bsum;
        }
        let d = y.d * x.d.to_f32();
        let dmin = y.d * x.dmin.to_f32();
        sum += d * isum as f32 - dmin * k_mins_sum(&mn, y) as f32;
    }
    sum
}

/// The 6-bit value (0..64) of element `e` of a Q6_K super-block.
pub(crate) fn q6_k_value(x: &BlockQ6K, e: usize) -> i32 {
    // Element 128*h + 32*s + l: low 4 bits from ql[64*h + 32*(s%2) + l] (low nibble for s < 2,
    // high nibble otherwise), high 2 bits from bits 2s..2s+2 of qh[32*h + l].
    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
    let byte = x.ql[64 * h + 32 * (s % 2) + l];
    let low = if s < 2 { byte & 0x0f } else { byte >> 4 };
    let high = (x.qh[32 * h + l] >> (2 * s)) & 3;
    i32::from(low | (high << 4))
}

/// Q6_K weights (`d * scale * (q - 32)`, 16 groups of 16) · Q8_K activations.
pub fn dot_q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    check_len(w.len(), a.len());
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for g in 0..QK_K / 16 {
            let gsum: i32 = (16 * g..16 * g + 16)
                .map(|e| (q6_k_value(x, e) - 32) * i32::from(y.qs[e]))
                .sum();
            isum += i32::from(x.scales[g]) * gsum;
        }
        sum += x.d.to_f32() * y.d * isum as f32;
    }
    sum
}

/// F16 weights · F16 activations, each product in f32, summed in f64 as ggml's generic code.
pub fn dot_f16_f16(w: &[f16], a: &[f16]) -> f32 {
    check_len(w.len(), a.len());
    w.iter()
        .zip(a)
        .map(|(x, y)| f64::from(x.to_f32() * y.to_f32()))
        .sum::<f64>() as f32
}

/// BF16 weights · BF16 activations, each product in f32, summed in f64.
pub fn dot_bf16_bf16(w: &[bf16], a: &[bf16]) -> f32 {
    check_len(w.len(), a.len());
    w.iter()
        .zip(a)
        .map(|(x, y)| f64::from(x.to_f32() * y.to_f32()))
        .sum::<f64>() as f32
}

/// F32 · F32, each product in f32, summed in f64.
pub fn dot_f32_f32(w: &[f32], a: &[f32]) -> f32 {
    check_len(w.len(), a.len());
    w.iter().zip(a).map(|(x, y)| f64::from(x * y)).sum::<f64>() as f32
}
