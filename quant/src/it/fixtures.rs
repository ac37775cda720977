//! Dequantization and quantization against committed reference fixtures (made by
//! scripts/gen-quant-fixtures.py from the gguf package's numpy code and ggml's C reference):
//! every supported format, compared bit for bit.

use super::util::{assert_bits_eq, read_fixture};
use crate::dequant::*;
use crate::quantize::*;
use crate::*;

const DEQUANT_TYPES: [&str; 25] = [
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS",
    "TQ1_0", "TQ2_0", "MXFP4",
];

const QUANT_TYPES: [&str; 22] = [
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q4_K", "Q6_K", "Q8_K", "Q2_K",
    "Q3_K", "Q5_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "IQ2_S", "IQ3_XXS", "IQ3_S",
];

#[test]
fn dequantize_matches_reference_fixtures() {
    for name in DEQUANT_TYPES {
        let fx = read_fixture(&format!("dequant_{name}.bin"));
        assert_eq!(fx.ty.name(), name);
        let mut out = vec![f32::NAN; fx.n];
        dequantize(fx.ty, &fx.bytes, &mut out).unwrap();
        assert_bits_eq(&format!("dequantize {name}"), &out, &fx.floats);

        // The same bytes at an odd address (the unaligned read path).
        let mut shifted = vec![0u8; fx.bytes.len() + 1];
        shifted[1..].copy_from_slice(&fx.bytes);
        let mut out2 = vec![f32::NAN; fx.n];
        dequantize(fx.ty, &shifted[1..], &mut out2).unwrap();
        assert_bits_eq(&format!("dequantize {name} unaligned"), &out2, &fx.floats);
    }
}

/// Runs a per-slice dequantizer on the fixture's bytes viewed as blocks.
fn via_blocks<B: Block>(name: &str, f: fn(&[B], &mut [f32])) {
    let fx = read_fixture(&format!("dequant_{name}.bin"));
    assert_eq!(fx.ty, B::TYPE);
    let blocks = blocks_from_bytes::<B>(&fx.bytes).unwrap();
    let mut out = vec![f32::NAN; fx.n];
    f(&blocks, &mut out);
    assert_bits_eq(&format!("{name} per-block"), &out, &fx.floats);
}

#[test]
fn per_type_dequantizers_match_reference_fixtures() {
    via_blocks::<BlockQ4_0>("Q4_0", dequantize_q4_0);
    via_blocks::<BlockQ4_1>("Q4_1", dequantize_q4_1);
    via_blocks::<BlockQ5_0>("Q5_0", dequantize_q5_0);
    via_blocks::<BlockQ5_1>("Q5_1", dequantize_q5_1);
    via_blocks::<BlockQ8_0>("Q8_0", dequantize_q8_0);
    via_blocks::<BlockQ2K>("Q2_K", dequantize_q2_k);
    via_blocks::<BlockQ3K>("Q3_K", dequantize_q3_k);
    via_blocks::<BlockQ4K>("Q4_K", dequantize_q4_k);
    via_blocks::<BlockQ5K>("Q5_K", dequantize_q5_k);
    via_blocks::<BlockQ6K>("Q6_K", dequantize_q6_k);
    via_blocks::<BlockQ8K>("Q8_K", dequantize_q8_k);
    via_blocks::<BlockIQ2XXS>("IQ2_XXS", dequantize_iq2_xxs);
    via_blocks::<BlockIQ2XS>("IQ2_XS", dequantize_iq2_xs);
    via_blocks::<BlockIQ2S>("IQ2_S", dequantize_iq2_s);
    via_blocks::<BlockIQ3XXS>("IQ3_XXS", dequantize_iq3_xxs);
    via_blocks::<BlockIQ3S>("IQ3_S", dequantize_iq3_s);
    via_blocks::<BlockIQ1S>("IQ1_S", dequantize_iq1_s);
    via_blocks::<BlockIQ1M>("IQ1_M", dequantize_iq1_m);
    via_blocks::<BlockIQ4NL>("IQ4_NL", dequantize_iq4_nl);
    via_blocks::<BlockIQ4XS>("IQ4_XS", dequantize_iq4_xs);
    via_blocks::<BlockTQ1_0>("TQ1_0", dequantize_tq1_0);
    via_blocks::<BlockTQ2_0>("TQ2_0", dequantize_tq2_0);
    via_blocks::<BlockMXFP4>("MXFP4", dequantize_mxfp4);
}

#[test]
fn quantize_matches_reference_fixtures() {
    for name in QUANT_TYPES {
        let fx = read_fixture(&format!("quant_{name}.bin"));
        assert_eq!(fx.ty.name(), name);
        let got = quantize(fx.ty, &fx.floats).unwrap();
        assert_eq!(got.len(), fx.bytes.len(), "quantize {name}: length");
        let bb = fx.ty.block_bytes();
        if let Some(i) = (0..got.len()).find(|&i| got[i] != fx.bytes[i]) {
            panic!(
                "quantize {name}: block {} byte {} differs: got {:02x?}, reference {:02x?}",
                i / bb,
                i % bb,
                &got[i / bb * bb..(i / bb + 1) * bb],
                &fx.bytes[i / bb * bb..(i / bb + 1) * bb]
            );
        }
    }
}

/// Runs an allocation-free row quantizer into block structs and compares with the fixture.
fn row_into_blocks<B: Block>(name: &str, f: fn(&[f32], &mut [B])) {
    let fx = read_fixture(&format!("quant_{name}.bin"));
    let mut blocks = vec![crate::view::zeroed_block::<B>(); fx.n / B::ELEMS];
    f(&fx.floats, &mut blocks);
    assert!(
        blocks_as_bytes(&blocks) == fx.bytes.as_slice(),
        "{name} row quantizer differs"
    );
}

#[test]
fn row_quantizers_match_reference_fixtures() {
    row_into_blocks::<BlockQ8_0>("Q8_0", quantize_row_q8_0);
    row_into_blocks::<BlockQ8_1>("Q8_1", quantize_row_q8_1);
    row_into_blocks::<BlockQ8K>("Q8_K", quantize_row_q8_k);
    row_into_blocks::<BlockQ4_0>("Q4_0", quantize_row_q4_0);
    row_into_blocks::<BlockQ5_0>("Q5_0", quantize_row_q5_0);
    row_into_blocks::<BlockQ4K>("Q4_K", quantize_row_q4_k);
    row_into_blocks::<BlockQ6K>("Q6_K", quantize_row_q6_k);
    row_into_blocks::<BlockQ2K>("Q2_K", quantize_row_q2_k);
    row_into_blocks::<BlockQ3K>("Q3_K", quantize_row_q3_k);
    row_into_blocks::<BlockQ5K>("Q5_K", quantize_row_q5_k);
    row_into_blocks::<BlockIQ4NL>("IQ4_NL", quantize_row_iq4_nl);
    row_into_blocks::<BlockIQ4XS>("IQ4_XS", quantize_row_iq4_xs);
    row_into_blocks::<BlockTQ1_0>("TQ1_0", quantize_row_tq1_0);
    row_into_blocks::<BlockTQ2_0>("TQ2_0", quantize_row_tq2_0);
    row_into_blocks::<BlockMXFP4>("MXFP4", quantize_row_mxfp4);
    row_into_blocks::<BlockIQ2S>("IQ2_S", quantize_row_iq2_s);
    row_into_blocks::<BlockIQ3XXS>("IQ3_XXS", quantize_row_iq3_xxs);
    row_into_blocks::<BlockIQ3S>("IQ3_S", quantize_row_iq3_s);
}
