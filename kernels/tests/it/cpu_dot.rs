//! Every SIMD dot product against its scalar twin, the multi-row kernels (two weight rows, or a
//! tile of activation rows) against the one-row ones, the scalar kernels against a plain float
//! dot of dequantized values, and the activation quantizers against the reference quantizers in
//! `quant`.
//!
//! Tolerances: the super-block SIMD kernels (K-quants, IQ and TQ formats against Q8_K) sum each
//! super-block's integers exactly and then do the scalar code's float operations in its order,
//! so they must be bit-identical. The 32-wide and float kernels sum in another order; they must
//! agree within 1e-5 of the sum of the absolute per-block terms (float rounding over at most a
//! few hundred additions is far below that). "Absolute terms" are the products of the
//! dequantized weights and activations, `Σ |w_i · a_i|`: the lanes add partial products of a
//! block before its integers cancel, so that, not the blocks' net values, bounds their rounding.

use crate::cpu_common::{random_weights, Rng};
use half::{bf16, f16};
use llmd_kernels::cpu::dot::{vec_dot, Activation, Kernels, VecDot, TILE};
use llmd_kernels::cpu::matmul::as_blocks;
use llmd_kernels::cpu::quantize::{self, BlockQ8_0Act};
use llmd_kernels::cpu::{self, Isa};
use llmd_kernels::quant::{self, *};

const Q8_0_ZERO: BlockQ8_0 = BlockQ8_0 {
    d: f16::ZERO,
    qs: [0; 32],
};

/// Quantized activation rows for `W` from random floats.
fn activations<W: VecDot>(rng: &mut Rng, n_rows: usize, cols: usize) -> Vec<Vec<W::Act>> {
    (0..n_rows)
        .map(|_| {
            let x = rng.f32s(cols, 3.0);
            let mut a = vec![<W::Act as Activation>::ZERO; cols / <W::Act as Activation>::BLOCK];
            <W::Act as Activation>::quantize(&x, &mut a);
            a
        })
        .collect()
}

fn scalar<W: VecDot>() -> Kernels<W, W::Act> {
    W::kernels_for(Isa::Scalar).expect("scalar kernels exist everywhere")
}

/// Every instruction set this CPU has, against the scalar kernels.
fn check_simd_vs_scalar<W: VecDot>(exact: bool)
where
    W::Act: Dequant,
{
    for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
        let fast = W::kernels_for(isa).expect("available");
        check_kernels::<W>(fast, exact, isa == cpu::isa());
    }
}

fn check_kernels<W: VecDot>(fast: Kernels<W, W::Act>, exact: bool, in_use: bool)
where
    W::Act: Dequant,
{
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ W::TYPE as u64);
    let slow = scalar::<W>();
    for n_blocks in [1usize, 2, 3, 7, 20, 33] {
        let cols = n_blocks * W::BLOCK;
        let bytes = random_weights(&mut rng, W::TYPE, 2, cols);
        let both = as_blocks::<W>(bytes.bytes()).expect("aligned weights");
        let (w, w2) = both.split_at(n_blocks);
        let mut wf = vec![0.0f32; cols];
        let row_bytes = W::TYPE.row_bytes(cols as u64).expect("whole blocks") as usize;
        quant::dequantize(W::TYPE, &bytes.bytes()[..row_bytes], &mut wf).expect("dequantize");
        let acts = activations::<W>(&mut rng, TILE, cols);
        let tile: [&[W::Act]; TILE] = std::array::from_fn(|t| acts[t].as_slice());
        let fast_tile = fast.dot_tile(w, tile);
        let slow_tile = slow.dot_tile(w, tile);
        for (t, a) in acts.iter().enumerate() {
            let f = fast.dot(w, a);
            let s = slow.dot(w, a);
            let terms: f32 = wf
                .iter()
                .zip(<W::Act as Dequant>::values(a))
                .map(|(x, y)| (x * y).abs())
                .sum();
            if exact {
                assert_eq!(f.to_bits(), s.to_bits(), "{}: simd {f} scalar {s}", W::TYPE);
            } else {
                assert!(
                    (f - s).abs() <= 1e-5 * terms,
                    "{} n_blocks {n_blocks}: simd {f} scalar {s} (terms {terms})",
                    W::TYPE
                );
            }
            assert_eq!(
                fast_tile[t].to_bits(),
                f.to_bits(),
                "{} tile vs one row",
                W::TYPE
            );
            assert_eq!(
                slow_tile[t].to_bits(),
                s.to_bits(),
                "{} scalar tile",
                W::TYPE
            );
            if in_use {
                assert_eq!(vec_dot(w, a).to_bits(), f.to_bits());
            }
            let pair = fast.dot_pair(w, w2, a);
            assert_eq!(pair[0].to_bits(), f.to_bits(), "{} pair row 0", W::TYPE);
            assert_eq!(
                pair[1].to_bits(),
                fast.dot(w2, a).to_bits(),
                "{} pair row 1",
                W::TYPE
            );
            let spair = slow.dot_pair(w, w2, a);
            assert_eq!(spair, [s, slow.dot(w2, a)], "{} scalar pair", W::TYPE);
        }
    }
}

#[test]
fn simd_matches_scalar_legacy_types() {
    check_simd_vs_scalar::<BlockQ4_0>(false);
    check_simd_vs_scalar::<BlockQ4_1>(false);
    check_simd_vs_scalar::<BlockQ5_0>(false);
    check_simd_vs_scalar::<BlockQ5_1>(false);
    check_simd_vs_scalar::<BlockQ8_0>(false);
    check_simd_vs_scalar::<BlockIQ4NL>(false);
    check_simd_vs_scalar::<BlockMXFP4>(false);
}

#[test]
fn simd_matches_scalar_k_quants_exactly() {
    check_simd_vs_scalar::<BlockQ2K>(true);
    check_simd_vs_scalar::<BlockQ3K>(true);
    check_simd_vs_scalar::<BlockQ4K>(true);
    check_simd_vs_scalar::<BlockQ5K>(true);
    check_simd_vs_scalar::<BlockQ6K>(true);
}

#[test]
fn simd_matches_scalar_iq_and_ternary_exactly() {
    check_simd_vs_scalar::<BlockIQ2XXS>(true);
    check_simd_vs_scalar::<BlockIQ2XS>(true);
    check_simd_vs_scalar::<BlockIQ2S>(true);
    check_simd_vs_scalar::<BlockIQ3XXS>(true);
    check_simd_vs_scalar::<BlockIQ3S>(true);
    check_simd_vs_scalar::<BlockIQ1S>(true);
    check_simd_vs_scalar::<BlockIQ1M>(true);
    check_simd_vs_scalar::<BlockIQ4XS>(true);
    check_simd_vs_scalar::<BlockTQ1_0>(true);
    check_simd_vs_scalar::<BlockTQ2_0>(true);
}

#[test]
fn simd_matches_scalar_float_types() {
    check_simd_vs_scalar::<f32>(false);
    check_simd_vs_scalar::<f16>(false);
    check_simd_vs_scalar::<bf16>(false);
}

/// The activation values a quantized activation row stands for.
trait Dequant: Activation {
    fn values(a: &[Self]) -> Vec<f32>;
}
impl Dequant for BlockQ8_0Act {
    fn values(a: &[Self]) -> Vec<f32> {
        a.iter()
            .flat_map(|b| b.qs.map(|q| b.d * f32::from(q)))
            .collect()
    }
}
impl Dequant for BlockQ8_1 {
    fn values(a: &[Self]) -> Vec<f32> {
        a.iter()
            .flat_map(|b| b.qs.map(|q| b.d.to_f32() * f32::from(q)))
            .collect()
    }
}
impl Dequant for BlockQ8K {
    fn values(a: &[Self]) -> Vec<f32> {
        a.iter()
            .flat_map(|b| b.qs.map(|q| b.d * f32::from(q)))
            .collect()
    }
}
impl Dequant for f16 {
    fn values(a: &[Self]) -> Vec<f32> {
        a.iter().map(|v| v.to_f32()).collect()
    }
}
impl Dequant for bf16 {
    fn values(a: &[Self]) -> Vec<f32> {
        a.iter().map(|v| v.to_f32()).collect()
    }
}
impl Dequant for f32 {
    fn values(a: &[Self]) -> Vec<f32> {
        a.to_vec()
    }
}

/// The scalar kernels read the block layouts the same way `quant::dequantize` does: the dot of
/// the dequantized rows in f64 matches within f16 rounding of Q8_1's stored sum.
fn check_scalar_vs_dequantized<W: VecDot>()
where
    W::Act: Dequant,
{
    let mut rng = Rng(0x1234_5678 ^ W::TYPE as u64);
    let cols = 4 * W::BLOCK.max(64);
    let bytes = random_weights(&mut rng, W::TYPE, 1, cols);
    let w = as_blocks::<W>(bytes.bytes()).expect("aligned weights");
    let mut wf = vec![0.0f32; cols];
    quant::dequantize(W::TYPE, bytes.bytes(), &mut wf).expect("dequantize");
    for a in activations::<W>(&mut rng, 3, cols) {
        let af = <W::Act as Dequant>::values(&a);
        let want: f64 = wf
            .iter()
            .zip(&af)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let abs: f64 = wf
            .iter()
            .zip(&af)
            .map(|(x, y)| (f64::from(*x) * f64::from(*y)).abs())
            .sum();
        let got = scalar::<W>().dot(w, &a);
        assert!(
            (f64::from(got) - want).abs() <= 2e-3 * abs + 1e-6,
            "{}: scalar {got} dequantized {want} (abs {abs})",
            W::TYPE
        );
    }
}

#[test]
fn scalar_kernels_match_dequantized_dot() {
    check_scalar_vs_dequantized::<BlockQ4_0>();
    check_scalar_vs_dequantized::<BlockQ4_1>();
    check_scalar_vs_dequantized::<BlockQ5_0>();
    check_scalar_vs_dequantized::<BlockQ5_1>();
    check_scalar_vs_dequantized::<BlockQ8_0>();
    check_scalar_vs_dequantized::<BlockQ2K>();
    check_scalar_vs_dequantized::<BlockQ3K>();
    check_scalar_vs_dequantized::<BlockQ4K>();
    check_scalar_vs_dequantized::<BlockQ5K>();
    check_scalar_vs_dequantized::<BlockQ6K>();
    check_scalar_vs_dequantized::<BlockIQ2XXS>();
    check_scalar_vs_dequantized::<BlockIQ2XS>();
    check_scalar_vs_dequantized::<BlockIQ2S>();
    check_scalar_vs_dequantized::<BlockIQ3XXS>();
    check_scalar_vs_dequantized::<BlockIQ3S>();
    check_scalar_vs_dequantized::<BlockIQ1S>();
    check_scalar_vs_dequantized::<BlockIQ1M>();
    check_scalar_vs_dequantized::<BlockIQ4NL>();
    check_scalar_vs_dequantized::<BlockIQ4XS>();
    check_scalar_vs_dequantized::<BlockTQ1_0>();
    check_scalar_vs_dequantized::<BlockTQ2_0>();
    check_scalar_vs_dequantized::<BlockMXFP4>();
    check_scalar_vs_dequantized::<f16>();
    check_scalar_vs_dequantized::<bf16>();
    check_scalar_vs_dequantized::<f32>();
}

#[test]
fn q8_k_quantization_matches_reference_bytes() {
    let mut rng = Rng(77);
    for scale in [1e-3f32, 1.0, 250.0] {
        let x = rng.f32s(4 * 256, scale);
        let mut ours = vec![<BlockQ8K as Activation>::ZERO; 4];
        let mut reference = vec![<BlockQ8K as Activation>::ZERO; 4];
        quantize::quantize_row_q8_k(&x, &mut ours);
        quant::quantize::quantize_row_q8_k(&x, &mut reference);
        for (a, b) in ours.iter().zip(&reference) {
            assert_eq!(a.d.to_bits(), b.d.to_bits());
            assert_eq!(a.qs, b.qs);
            assert_eq!(a.bsums, b.bsums);
        }
    }
    // An all-zero block quantizes to zeros.
    let mut z = vec![<BlockQ8K as Activation>::ZERO; 1];
    quantize::quantize_row_q8_k(&[0.0; 256], &mut z);
    assert_eq!(z[0].d, 0.0);
    assert!(z[0].qs.iter().all(|&q| q == 0) && z[0].bsums.iter().all(|&s| s == 0));
}

#[test]
fn q8_0_quantization_is_ggml_cpu_x86() {
    // ggml-cpu's x86 quantizer rounds ties to even (2.5 -> 2, -3.5 -> -4) with multiplier
    // 127 / amax; the portable reference would round 2.5 to 3.
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -3.5;
    x[3] = 0.5;
    let mut q = [Q8_0_ZERO; 1];
    quantize::quantize_row_q8_0(&x, &mut q);
    assert_eq!(q[0].d.to_f32(), 1.0);
    assert_eq!(&q[0].qs[..4], &[127, 2, -4, 0]);

    // Elsewhere it agrees with the reference quantizer within one step, with the same scale.
    let mut rng = Rng(5);
    let x = rng.f32s(32 * 64, 2.0);
    let mut ours = vec![Q8_0_ZERO; 64];
    let mut reference = ours.clone();
    quantize::quantize_row_q8_0(&x, &mut ours);
    quant::quantize::quantize_row_q8_0(&x, &mut reference);
    for (a, b) in ours.iter().zip(&reference) {
        assert_eq!(a.d.to_bits(), b.d.to_bits());
        for (p, q) in a.qs.iter().zip(&b.qs) {
            assert!((i32::from(*p) - i32::from(*q)).abs() <= 1);
        }
    }
}

/// ggml-cpu's x86 arithmetic written plainly: `round_ties_even(x * 127 / amax)` (Q8_0, Q8_1) and
/// `round_ties_even(x * -127 / max)` capped at 127 (Q8_K).
fn reference_q8(x: &[f32], mult: f32) -> Vec<i8> {
    x.iter()
        .map(|v| (v * mult).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect()
}

#[test]
fn activation_quantizers_round_ties_to_even_exactly() {
    let mut rng = Rng(31);
    for scale in [1e-3f32, 1.0, 300.0] {
        // Rows whose block maximum is 127 hold exact half steps, the ties.
        let mut x = rng.f32s(256 * 8, scale);
        for (i, v) in x.iter_mut().enumerate().filter(|(i, _)| i % 7 == 0) {
            *v = (i % 50) as f32 - 24.5;
        }
        for b in x.chunks_exact_mut(256).step_by(2) {
            b[0] = 127.0;
        }
        let mut q0 = vec![Q8_0_ZERO; x.len() / 32];
        let mut q1 = vec![<BlockQ8_1 as Activation>::ZERO; x.len() / 32];
        let mut qk = vec![<BlockQ8K as Activation>::ZERO; x.len() / 256];
        quantize::quantize_row_q8_0(&x, &mut q0);
        quantize::quantize_row_q8_1(&x, &mut q1);
        quantize::quantize_row_q8_k(&x, &mut qk);
        for ((xb, b0), b1) in x.chunks_exact(32).zip(&q0).zip(&q1) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let want = reference_q8(xb, if amax != 0.0 { 127.0 / amax } else { 0.0 });
            assert_eq!(&b0.qs[..], &want[..]);
            assert_eq!(&b1.qs[..], &want[..]);
        }
        for (xb, b) in x.chunks_exact(256).zip(&qk) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let max = *xb.iter().find(|v| v.abs() == amax).unwrap();
            assert_eq!(&b.qs[..], &reference_q8(xb, -127.0 / max)[..]);
        }
    }
}

#[test]
fn q8_1_sum_is_scaled_quant_sum() {
    let mut rng = Rng(11);
    let x = rng.f32s(32 * 8, 1.0);
    let mut q = vec![<BlockQ8_1 as Activation>::ZERO; 8];
    quantize::quantize_row_q8_1(&x, &mut q);
    for b in &q {
        let sum: i32 = b.qs.iter().map(|&v| i32::from(v)).sum();
        // s is rounded from the unrounded f32 scale, so compare within two f16 roundings.
        let want = b.d.to_f32() * sum as f32;
        assert!(
            (b.s.to_f32() - want).abs() <= 2e-3 * want.abs() + 1e-6,
            "{} vs {want}",
            b.s
        );
        assert!(b.qs.iter().all(|&v| v != -128));
    }
}

#[test]
fn q8_0_activation_blocks_hold_the_same_values() {
    let mut rng = Rng(21);
    let x = rng.f32s(32 * 16, 5.0);
    let mut blocks = vec![Q8_0_ZERO; 16];
    let mut acts = vec![<BlockQ8_0Act as Activation>::ZERO; 16];
    quantize::quantize_row_q8_0(&x, &mut blocks);
    quantize::quantize_row_q8_0_act(&x, &mut acts);
    for (b, a) in blocks.iter().zip(&acts) {
        assert_eq!(b.d.to_f32().to_bits(), a.d.to_bits());
        assert_eq!(b.qs, a.qs);
    }
}

#[test]
fn vnni_and_plain_avx2_agree_bit_for_bit() {
    // Both compute the same integers and then the same float operations.
    if !Isa::Avx2Vnni.is_available() {
        println!("SKIPPED: this CPU has no AVX-VNNI");
        return;
    }
    fn check<W: VecDot>() {
        let mut rng = Rng(99);
        let cols = 20 * W::BLOCK;
        let bytes = random_weights(&mut rng, W::TYPE, 1, cols);
        let w = as_blocks::<W>(bytes.bytes()).expect("aligned weights");
        let plain = W::kernels_for(Isa::Avx2).expect("avx2");
        let vnni = W::kernels_for(Isa::Avx2Vnni).expect("vnni");
        for a in activations::<W>(&mut rng, 4, cols) {
            assert_eq!(
                plain.dot(w, &a).to_bits(),
                vnni.dot(w, &a).to_bits(),
                "{}",
                W::TYPE
            );
        }
    }
    check::<BlockQ4_0>();
    check::<BlockQ4_1>();
    check::<BlockQ5_0>();
    check::<BlockQ5_1>();
    check::<BlockQ8_0>();
    check::<BlockIQ4NL>();
    check::<BlockMXFP4>();
}
