//! The activation formats of the packed kernels: ggml's Q8_0 and Q8_K values (the same bytes
//! as [`crate::cpu::quantize`] makes), plus the sums the kernels need to correct for their
//! unsigned weight bytes and to apply per-group minimums and scales with 16-bit multiplies.

use crate::cpu::quantize::{quantize_row_q8_0_act, quantize_row_q8_k, BlockQ8_0Act};
use crate::quant::types::{QK, QK_K};
use crate::quant::BlockQ8K;

/// Q8_0 activations (for packed Q8_0 and Q5_0 weights): a Q8_0 block and the sum of its values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0Sum {
    /// The block scale (an f16 value, as f32), as in [`BlockQ8_0Act`].
    pub d: f32,
    /// `Σ qs`: the kernels multiply unsigned (offset) weights, and subtract offset × this.
    pub sum: i32,
    /// The 32 quantized values.
    pub qs: [i8; QK],
}

/// Q8_K activations (for packed Q4_K and Q6_K weights): a Q8_K block and its sums by 16 and 32
/// values, paired as the kernels' `vpdpwssd` reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8KPairs {
    /// The block scale, as in [`BlockQ8K`].
    pub d: f32,
    /// Sums of 16 values `b[i]` as 16-bit pairs: word `2m + p` is `b[4m + p]` (low half) and
    /// `b[4m + p + 2]` (high half), matching the two 16-bit lanes Q6_K's packed scale words give
    /// (scales `4m + p` and `4m + p + 2`).
    pub pairs16: [i32; 8],
    /// Sums of 32 values `B[j] = b[2j] + b[2j + 1]` paired the same way (word `2m + p`:
    /// `B[4m + p]`, `B[4m + p + 2]`), for Q4_K's minimums.
    pub pairs32: [i32; 4],
    /// The 256 quantized values.
    pub qs: [i8; QK_K],
}

/// Two i16 values as one 32-bit word, `lo` in the low half.
fn pair(lo: i16, hi: i16) -> i32 {
    (u32::from(lo as u16) | (u32::from(hi as u16) << 16)) as i32
}

/// `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks), the values byte-exact with
/// [`quantize_row_q8_0_act`].
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_row_q8_0_sum(x: &[f32], out: &mut [BlockQ8_0Sum]) {
    assert_eq!(
        x.len(),
        out.len() * QK,
        "quantize_row_q8_0_sum: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let mut b = [BlockQ8_0Act {
            d: 0.0,
            qs: [0; QK],
        }];
        quantize_row_q8_0_act(xb, &mut b);
        *yb = BlockQ8_0Sum {
            d: b[0].d,
            sum: b[0].qs.iter().map(|&q| i32::from(q)).sum(),
            qs: b[0].qs,
        };
    }
}

/// `x` (a multiple of 256 long) into `out`, the values byte-exact with [`quantize_row_q8_k`].
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_row_q8_k_pairs(x: &[f32], out: &mut [BlockQ8KPairs]) {
    assert_eq!(
        x.len(),
        out.len() * QK_K,
        "quantize_row_q8_k_pairs: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut b = [BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }];
        quantize_row_q8_k(xb, &mut b);
        let s = &b[0].bsums;
        let s32: [i16; 8] = std::array::from_fn(|j| s[2 * j] + s[2 * j + 1]);
        yb.d = b[0].d;
        yb.qs = b[0].qs;
        yb.pairs16 = std::array::from_fn(|i| {
            let (m, p) = (i / 2, i % 2);
            pair(s[4 * m + p], s[4 * m + p + 2])
        });
        yb.pairs32 = std::array::from_fn(|i| {
            let (m, p) = (i / 2, i % 2);
            pair(s32[4 * m + p], s32[4 * m + p + 2])
        });
    }
}
