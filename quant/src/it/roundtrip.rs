//! Properties of the quantizers that hold for any input: round-trip error bounds per format
//! (the K-quants have no numpy reference to compare against live), the activation blocks' extra
//! fields (Q8_1 `s`, Q8_K `bsums`), zero rows, and the typed errors of the public API.

use super::util::Rng;
use crate::quantize::{quantize_row_q8_1, quantize_row_q8_k};
use crate::view::zeroed_block;
use crate::*;

/// Worst relative RMS error `|dequant(quant(x)) - x|_2 / |x|_2` allowed on gaussian rows, and the
/// worst per-element error allowed relative to the largest magnitude of its block.
const BOUNDS: [(GgmlType, f64, f32); 23] = [
    (GgmlType::F32, 0.0, 0.0),
    (GgmlType::F16, 3e-4, 1e-3),
    (GgmlType::BF16, 2.5e-3, 4e-3),
    (GgmlType::Q8_0, 0.007, 0.0045),
    (GgmlType::Q8_1, 0.007, 0.0045),
    (GgmlType::Q8_K, 0.009, 0.0045),
    (GgmlType::Q6_K, 0.022, 0.04),
    // Q4_0 / Q5_0 map the signed extreme to -8 / -16, so the opposite extreme clips at 7 / 15:
    // one whole step (an eighth / a sixteenth of the block maximum) of error.
    (GgmlType::Q5_0, 0.05, 0.07),
    (GgmlType::Q5_1, 0.045, 0.04),
    (GgmlType::Q4_0, 0.10, 0.13),
    (GgmlType::Q4_1, 0.09, 0.08),
    (GgmlType::Q4_K, 0.085, 0.12),
    (GgmlType::Q5_K, 0.045, 0.05),
    (GgmlType::Q3_K, 0.18, 0.2),
    (GgmlType::Q2_K, 0.35, 0.5),
    (GgmlType::IQ4_NL, 0.09, 0.1),
    // The codebook formats fit each 4 or 8 weights to one codeword of a fixed grid: a weight can
    // land well off its value when its group picks the codeword.
    (GgmlType::IQ3_S, 0.18, 0.5),
    (GgmlType::IQ3_XXS, 0.23, 0.5),
    (GgmlType::IQ2_S, 0.3, 0.6),
    (GgmlType::IQ4_XS, 0.09, 0.1),
    // MXFP4's shared exponent puts the block maximum (in [4, 8) times a power of two) on the top
    // E2M1 magnitude 6: values near 8 clip by up to a quarter.
    (GgmlType::MXFP4, 0.14, 0.25),
    // Ternary formats on gaussian (not ternary) data: every value rounds to -d, 0 or d.
    (GgmlType::TQ2_0, 0.85, 0.501),
    (GgmlType::TQ1_0, 0.85, 0.501),
];

fn dequantize_any(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    if ty == GgmlType::Q8_1 {
        let blocks = blocks_from_bytes::<BlockQ8_1>(bytes).unwrap();
        dequant::dequantize_q8_1(&blocks, &mut out);
    } else {
        dequantize(ty, bytes, &mut out).unwrap();
    }
    out
}

#[test]
fn round_trip_error_is_bounded() {
    let mut rng = Rng(0x5eed_1234);
    for (ty, rel_rms, rel_max) in BOUNDS {
        let n = 64 * 256;
        let x: Vec<f32> = (0..n)
            .map(|i| rng.normal() * (1.0 + (i / 256) as f32))
            .collect();
        let q = quantize(ty, &x).unwrap();
        assert_eq!(Some(q.len() as u64), ty.row_bytes(n as u64), "{ty}: size");
        let y = dequantize_any(ty, &q, n);
        let (mut err2, mut norm2) = (0f64, 0f64);
        let block = ty.block_elems().max(32);
        for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                let e = (a - b).abs();
                assert!(e <= rel_max * amax, "{ty}: error {e} with block max {amax}");
                err2 += f64::from(e) * f64::from(e);
                norm2 += f64::from(*a) * f64::from(*a);
            }
        }
        let rms = (err2 / norm2).sqrt();
        println!("{ty}: relative RMS round-trip error {rms:.5}");
        assert!(
            rms <= rel_rms,
            "{ty}: relative RMS error {rms} above {rel_rms}"
        );
    }
}

#[test]
fn zero_rows_quantize_to_zeros() {
    for (ty, _, _) in BOUNDS {
        let x = vec![0f32; 512];
        let y = dequantize_any(ty, &quantize(ty, &x).unwrap(), 512);
        assert!(y.iter().all(|v| *v == 0.0), "{ty}");
    }
}

#[test]
fn activation_blocks_carry_their_sums() {
    let mut rng = Rng(77);
    let x: Vec<f32> = (0..1024).map(|_| rng.normal()).collect();
    let mut q81 = vec![zeroed_block::<BlockQ8_1>(); 32];
    quantize_row_q8_1(&x, &mut q81);
    for b in &q81 {
        // s is d * sum(q) with the unrounded d, then rounded to f16: within two f16 roundings.
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        let want = sum as f32 * b.d.to_f32();
        assert!(
            (b.s.to_f32() - want).abs() <= want.abs() * 2e-3 + 1e-6,
            "{} vs {want}",
            b.s
        );
    }
    let mut q8k = vec![zeroed_block::<BlockQ8K>(); 4];
    // Stale content must be overwritten, including for an all-zero block.
    for b in &mut q8k {
        b.bsums = [7; 16];
        b.qs = [9; 256];
    }
    let mut x2 = x.clone();
    x2[256..512].fill(0.0);
    quantize_row_q8_k(&x2, &mut q8k);
    for b in &q8k {
        for (s, qs) in b.bsums.iter().zip(b.qs.chunks(16)) {
            assert_eq!(i32::from(*s), qs.iter().map(|&q| i32::from(q)).sum::<i32>());
        }
        assert!(b.qs.iter().all(|&q| q >= -127));
    }
    assert_eq!(q8k[1].d, 0.0);
    assert!(q8k[1].qs.iter().all(|&q| q == 0));
}

#[test]
fn api_errors_are_typed() {
    let mut out = vec![0f32; 256];
    assert_eq!(
        dequantize(GgmlType::I32, &[0; 1024], &mut out),
        Err(QuantError::Unsupported(GgmlType::I32))
    );
    assert_eq!(
        dequantize(GgmlType::Q4_K, &[0; 143], &mut out),
        Err(QuantError::ByteLength {
            ty: GgmlType::Q4_K,
            elems: 256,
            expected: 144,
            actual: 143
        })
    );
    assert_eq!(
        dequantize(GgmlType::Q4_K, &[0; 144], &mut out[..100]),
        Err(QuantError::PartialBlock {
            ty: GgmlType::Q4_K,
            elems: 100,
            block: 256
        })
    );
    assert!(dequantize(GgmlType::Q4_K, &[0; 144], &mut out).is_ok());
    assert_eq!(
        quantize(GgmlType::IQ2_XXS, &[0.0; 256]),
        Err(QuantError::Unsupported(GgmlType::IQ2_XXS))
    );
    assert_eq!(
        quantize(GgmlType::IQ1_M, &[0.0; 256]),
        Err(QuantError::Unsupported(GgmlType::IQ1_M))
    );
    assert_eq!(
        quantize(GgmlType::Q8_0, &[0.0; 33]),
        Err(QuantError::PartialBlock {
            ty: GgmlType::Q8_0,
            elems: 33,
            block: 32
        })
    );
    let mut dst = vec![0u8; 2 * 34 + 1];
    assert_eq!(
        quantize_into(GgmlType::Q8_0, &[0.5; 64], &mut dst),
        Err(QuantError::ByteLength {
            ty: GgmlType::Q8_0,
            elems: 64,
            expected: 68,
            actual: 69
        })
    );
    // Any alignment of the destination works and gives the same bytes as `quantize`.
    let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q8_K,
        GgmlType::F16,
    ] {
        let want = quantize(ty, &x).unwrap();
        let mut dst = vec![0u8; want.len() + 1];
        quantize_into(ty, &x, &mut dst[1..]).unwrap();
        assert_eq!(&dst[1..], want.as_slice(), "{ty}");
    }
    for ty in GgmlType::ALL {
        assert_eq!(
            quantize::can_quantize(ty),
            quantize(ty, &[0.0; 256]).is_ok(),
            "{ty}"
        );
        let supported = dequantize(
            ty,
            &vec![0; ty.block_bytes()],
            &mut vec![0.0; ty.block_elems()],
        );
        assert_eq!(supported.is_ok(), ty.is_supported(), "{ty}");
    }
}

#[test]
fn non_finite_input_does_not_panic() {
    let mut x = vec![1.0f32; 256];
    x[5] = f32::NAN;
    x[9] = f32::INFINITY;
    x[200] = f32::NEG_INFINITY;
    x[100] = 3e38;
    for ty in GgmlType::ALL
        .into_iter()
        .filter(|&t| quantize::can_quantize(t))
    {
        let q = quantize(ty, &x).unwrap();
        assert_eq!(Some(q.len() as u64), ty.row_bytes(256));
    }
}
