//! The lookup tables of the IQ and MXFP4 formats. Every constant is ggml's, from
//! `ggml/src/ggml-common.h` (llama.cpp as vendored in llama-cpp-python 0.3.36), with ggml's name in
//! its doc; the big codebooks live in one file per family. The values must match ggml exactly:
//! they are part of the file format.

mod iq1;
mod iq2;
mod iq3;

pub use iq1::IQ1S_GRID;
pub use iq2::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID};
pub use iq3::{IQ3S_GRID, IQ3XXS_GRID};

/// `ksigns_iq2xs`: the sign byte of an 8-element group from its 7 stored sign bits. Bit 7 (the
/// eighth element's sign) is the parity of the other seven, so every group has an even number of
/// negative elements.
pub static KSIGNS_IQ2XS: [u8; 128] = [
    0, 129, 130, 3, 132, 5, 6, 135, 136, 9, 10, 139, 12, 141, 142, 15, //
    144, 17, 18, 147, 20, 149, 150, 23, 24, 153, 154, 27, 156, 29, 30, 159, //
    160, 33, 34, 163, 36, 165, 166, 39, 40, 169, 170, 43, 172, 45, 46, 175, //
    48, 177, 178, 51, 180, 53, 54, 183, 184, 57, 58, 187, 60, 189, 190, 63, //
    192, 65, 66, 195, 68, 197, 198, 71, 72, 201, 202, 75, 204, 77, 78, 207, //
    80, 209, 210, 83, 212, 85, 86, 215, 216, 89, 90, 219, 92, 221, 222, 95, //
    96, 225, 226, 99, 228, 101, 102, 231, 232, 105, 106, 235, 108, 237, 238, 111, //
    240, 113, 114, 243, 116, 245, 246, 119, 120, 249, 250, 123, 252, 125, 126, 255, //
];

/// `kmask_iq2xs`: the bit of element `j` in a sign byte.
pub static KMASK_IQ2XS: [u8; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// `ksigns64`: [`KSIGNS_IQ2XS`] spread to one byte per element (0xff where the element is
/// negative), for SIMD sign application. ggml writes it out; here it is derived at compile time
/// from [`KSIGNS_IQ2XS`], which gives the same 128 words.
pub static KSIGNS64: [u64; 128] = {
    let mut out = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let s = KSIGNS_IQ2XS[i];
        let mut j = 0;
        while j < 8 {
            if s & (1 << j) != 0 {
                out[i] |= 0xff << (8 * j);
            }
            j += 1;
        }
        i += 1;
    }
    out
};

/// `kvalues_iq4nl`: the 16 non-linear levels of IQ4_NL and IQ4_XS.
pub static KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `kvalues_mxfp4` (`kvalues_fp4`): the 16 E2M1 values of MXFP4, doubled so they are integers
/// (the block scale is halved to match, see [`e8m0_to_f32_half`]).
pub static KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `IQ1S_DELTA`: the offset added to every IQ1_S codeword element (`±1/8`, sign per 32 values).
pub const IQ1S_DELTA: f32 = 0.125;

/// `IQ1M_DELTA`: the offset added to every IQ1_M codeword element (`±1/8`, sign per 8 values).
pub const IQ1M_DELTA: f32 = 0.125;

/// ggml's `ggml_e8m0_to_fp32_half`: half of the power of two `2^(e - 127)` that an E8M0 byte
/// encodes, built from its bits (exact; `e` of 0 and 1 give the subnormals 2^-128 and 2^-127).
#[inline(always)]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_table_is_the_parity_rule() {
        for (i, &s) in KSIGNS_IQ2XS.iter().enumerate() {
            let parity = (i as u8).count_ones() as u8 & 1;
            assert_eq!(s, i as u8 | (parity << 7), "entry {i}");
        }
        // Two entries of ggml's ksigns64, as written in ggml-common.h.
        assert_eq!(KSIGNS64[1], 0xff00_0000_0000_00ff);
        assert_eq!(KSIGNS64[127], 0xffff_ffff_ffff_ffff);
    }

    #[test]
    fn e8m0_half_is_half_the_power_of_two() {
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(2), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32_half(254), 2f32.powi(126));
    }

    #[test]
    fn codebooks_have_ggml_first_and_last_entries() {
        assert_eq!(IQ2XXS_GRID[0], 0x0808080808080808);
        assert_eq!(IQ2XXS_GRID[255], 0x2b2b2b1908081908);
        assert_eq!(IQ2XS_GRID[511], 0x2b2b2b2b2b2b2b2b);
        assert_eq!(IQ2S_GRID[1023], 0x2b2b2b2b2b2b2b2b);
        assert_eq!(IQ3XXS_GRID[255], 0x3e341c04);
        assert_eq!(IQ3S_GRID[511], 0x0f0f0101);
        assert_eq!(IQ1S_GRID[0], 0xffffffffffffffff);
        assert_eq!(IQ1S_GRID[2047], 0x0101010101010101);
    }
}
