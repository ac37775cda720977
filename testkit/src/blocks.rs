//! Random quantized blocks for tests: random bytes with every scale field made finite, so that no
//! dequantized value is NaN or infinite, and test rows with awkward blocks.

use half::f16;
use llmd_quant::GgmlType;

use crate::Rng;

/// Byte offsets of the f16 scale fields of each block type.
pub fn f16_scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS => &[0],
        GgmlType::TQ1_0 => &[52],
        GgmlType::TQ2_0 => &[64],
        _ => &[],
    }
}

/// Writes finite scales into one block of `ty`: every f16 scale field gets `scale()`, IQ1_M's
/// scale (spread over the top nibbles of its four scale words) too, and MXFP4 an exponent byte
/// for 2^-30 .. 2^30 chosen from `scale()`'s bits. Other bytes are left as they are.
pub fn set_block_scales(ty: GgmlType, block: &mut [u8], mut scale: impl FnMut() -> f16) {
    for &off in f16_scale_offsets(ty) {
        block[off..off + 2].copy_from_slice(&scale().to_bits().to_le_bytes());
    }
    match ty {
        GgmlType::IQ1_M => {
            let d = scale().to_bits();
            for k in 0..4 {
                let at = 48 + 2 * k;
                let w = u16::from_le_bytes([block[at], block[at + 1]]);
                let w = (w & 0x0fff) | (((d >> (4 * k)) & 0xf) << 12);
                block[at..at + 2].copy_from_slice(&w.to_le_bytes());
            }
        }
        GgmlType::MXFP4 => block[0] = 97 + (scale().to_bits() % 61) as u8,
        _ => {}
    }
}

/// `n_blocks` random blocks of `ty` whose scales are finite (so no output is NaN or infinite).
/// F16 gets random non-NaN halves, BF16 and F32 random bits.
pub fn random_blocks(rng: &mut Rng, ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut out = vec![0u8; n_blocks * bb];
    rng.fill(&mut out);
    for block in out.chunks_exact_mut(bb) {
        set_block_scales(ty, block, || f16::from_f32(rng.scale()));
        match ty {
            GgmlType::Q8_K => block[..4].copy_from_slice(&(rng.scale() * 1e-2).to_le_bytes()),
            GgmlType::F16 => {
                let h = u16::from_le_bytes([block[0], block[1]]);
                if f16::from_bits(h).is_nan() {
                    block.copy_from_slice(&(h & 0xfc00).to_le_bytes());
                }
            }
            _ => {}
        }
    }
    out
}

/// A test row of `n` values: gaussian blocks of `block` at varied magnitudes, with some blocks of
/// awkward content (zeros, a constant, exact half-steps, one outlier, all negative).
pub fn random_row(rng: &mut Rng, n: usize, block: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    for b in 0..n / block {
        let mag = 10f32.powf(rng.unit() * 5.0 - 3.0);
        for i in 0..block {
            x.push(match b % 9 {
                1 => 0.0,
                3 => 0.75,
                5 => (i as f32 - block as f32 / 2.0) * 0.5,
                7 if i == 3 => 100.0,
                7 => 0.01,
                8 => -(rng.normal().abs()) * mag,
                _ => rng.normal() * mag,
            });
        }
    }
    x
}
