//! Exact conversions between f32 and the 16-bit float formats (IEEE half, bfloat16), matching
//! numpy bit for bit so dequantized tensors compare with `to_bits()` against the gguf reference.
//!
//! Half to f32 is exact for every non-NaN value; NaNs keep their payload and their quiet bit (as
//! numpy's software conversion does, while x86 F16C would set the quiet bit). f32 to half rounds
//! to nearest even, like numpy, ggml and F16C.

use half::f16;

/// The f32 value of the IEEE half with bits `h`.
///
/// Branch-free so that loops over slices vectorize: all three cases are computed and selected.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let shifted = em << 13;
    // Normal: rebias the exponent from 15 to 127.
    let normal = shifted + ((127 - 15) << 23);
    // Infinity or NaN: exponent all ones, payload (and quiet bit) kept as is.
    let inf_nan = shifted | 0x7f80_0000;
    // Zero or subnormal: (1 + m/1024) * 2^-14 - 2^-14 = m * 2^-24, exact (Sterbenz).
    let sub = (f32::from_bits(shifted + (113 << 23)) - f32::from_bits(113 << 23)).to_bits();
    let bits = if em >= 0x7c00 {
        inf_nan
    } else if em < 0x0400 {
        sub
    } else {
        normal
    };
    f32::from_bits(sign | bits)
}

/// The f32 value of a half (see [`f16_bits_to_f32`]).
#[inline(always)]
pub fn f16_to_f32(h: f16) -> f32 {
    f16_bits_to_f32(h.to_bits())
}

/// The half nearest to `x` (ties to even; overflow gives infinity).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> f16 {
    f16::from_f32(x)
}

/// The f32 value of the bfloat16 with bits `b` (always exact: bf16 is the top half of an f32).
#[inline(always)]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// The bfloat16 bits nearest to `x`, as ggml's `ggml_compute_fp32_to_bf16` and gguf's numpy
/// quantizer compute them: NaNs become quiet NaNs, everything else rounds to nearest even.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u64::from(u) + 0x7fff + u64::from((u >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion_matches_half_crate_for_all_non_nan() {
        for h in 0..=u16::MAX {
            let v = f16::from_bits(h);
            if v.is_nan() {
                let f = f16_bits_to_f32(h);
                assert!(f.is_nan());
                assert_eq!(f.to_bits() & 0x007f_ffff, u32::from(h & 0x3ff) << 13);
            } else {
                assert_eq!(
                    f16_bits_to_f32(h).to_bits(),
                    v.to_f32().to_bits(),
                    "{h:#06x}"
                );
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is a tie between 0x3f80 and 0x3f81: even wins.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_bits_to_f32(0xbf80), -1.0);
    }
}
