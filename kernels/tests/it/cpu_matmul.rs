//! The matrix multiply: for every supported weight type, thread count and token count (below,
//! at and past the token tile), each output equals the one-row dot product of that weight row
//! with that token's quantized activations, bit for bit; and bad arguments are typed errors.

use crate::cpu_common::{random_weights, weight_types, Rng};
use half::{bf16, f16};
use llmd_kernels::cpu::dot::{vec_dot, Activation, VecDot};
use llmd_kernels::cpu::matmul::as_blocks;
use llmd_kernels::cpu::{matmul, KernelError, Layout, MatmulScratch, QMatrix, ThreadPool};
use llmd_kernels::quant::*;

/// `out[t][r]` computed one dot product at a time.
fn expected<W: VecDot>(
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
) -> Vec<f32> {
    let w = as_blocks::<W>(data).expect("aligned");
    let rb = cols / W::BLOCK;
    let mut out = vec![0.0; rows * n_tokens];
    for t in 0..n_tokens {
        let mut a = vec![<W::Act as Activation>::ZERO; rb];
        <W::Act as Activation>::quantize(&x[t * cols..(t + 1) * cols], &mut a);
        for r in 0..rows {
            out[t * rows + r] = vec_dot(&w[r * rb..(r + 1) * rb], &a);
        }
    }
    out
}

fn expected_for(
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    match ty {
        GgmlType::F32 => expected::<f32>(data, rows, cols, x, n),
        GgmlType::F16 => expected::<f16>(data, rows, cols, x, n),
        GgmlType::BF16 => expected::<bf16>(data, rows, cols, x, n),
        GgmlType::Q4_0 => expected::<BlockQ4_0>(data, rows, cols, x, n),
        GgmlType::Q4_1 => expected::<BlockQ4_1>(data, rows, cols, x, n),
        GgmlType::Q5_0 => expected::<BlockQ5_0>(data, rows, cols, x, n),
        GgmlType::Q5_1 => expected::<BlockQ5_1>(data, rows, cols, x, n),
        GgmlType::Q8_0 => expected::<BlockQ8_0>(data, rows, cols, x, n),
        GgmlType::Q2_K => expected::<BlockQ2K>(data, rows, cols, x, n),
        GgmlType::Q3_K => expected::<BlockQ3K>(data, rows, cols, x, n),
        GgmlType::Q4_K => expected::<BlockQ4K>(data, rows, cols, x, n),
        GgmlType::Q5_K => expected::<BlockQ5K>(data, rows, cols, x, n),
        GgmlType::Q6_K => expected::<BlockQ6K>(data, rows, cols, x, n),
        GgmlType::IQ2_XXS => expected::<BlockIQ2XXS>(data, rows, cols, x, n),
        GgmlType::IQ2_XS => expected::<BlockIQ2XS>(data, rows, cols, x, n),
        GgmlType::IQ2_S => expected::<BlockIQ2S>(data, rows, cols, x, n),
        GgmlType::IQ3_XXS => expected::<BlockIQ3XXS>(data, rows, cols, x, n),
        GgmlType::IQ3_S => expected::<BlockIQ3S>(data, rows, cols, x, n),
        GgmlType::IQ1_S => expected::<BlockIQ1S>(data, rows, cols, x, n),
        GgmlType::IQ1_M => expected::<BlockIQ1M>(data, rows, cols, x, n),
        GgmlType::IQ4_NL => expected::<BlockIQ4NL>(data, rows, cols, x, n),
        GgmlType::IQ4_XS => expected::<BlockIQ4XS>(data, rows, cols, x, n),
        GgmlType::TQ1_0 => expected::<BlockTQ1_0>(data, rows, cols, x, n),
        GgmlType::TQ2_0 => expected::<BlockTQ2_0>(data, rows, cols, x, n),
        GgmlType::MXFP4 => expected::<BlockMXFP4>(data, rows, cols, x, n),
        other => panic!("no expectation for {other}"),
    }
}

#[test]
fn matmul_equals_row_by_row_dots() {
    let mut rng = Rng(42);
    let pools: Vec<ThreadPool> = [1, 2, 3].map(|n| ThreadPool::new(n).expect("spawn")).into();
    let mut scratch = MatmulScratch::new();
    for ty in weight_types() {
        let cols = 2 * ty.block_elems().max(32);
        for rows in [1usize, 37, 300] {
            let w = random_weights(&mut rng, ty, rows, cols);
            let m = QMatrix {
                ty,
                rows,
                cols,
                data: w.bytes(),
                layout: Layout::Gguf,
            };
            for n_tokens in [1usize, 3, 4, 9] {
                let x = rng.f32s(n_tokens * cols, 2.0);
                let want = expected_for(ty, w.bytes(), rows, cols, &x, n_tokens);
                for pool in &pools {
                    let mut out = vec![f32::NAN; rows * n_tokens];
                    matmul(pool, &m, &x, n_tokens, &mut out, &mut scratch).expect("matmul");
                    for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{ty} rows {rows} tokens {n_tokens} threads {} index {i}: {g} vs {e}",
                            pool.n_threads()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_rejects_bad_arguments() {
    let pool = ThreadPool::new(2).expect("spawn");
    let mut scratch = MatmulScratch::new();
    let mut rng = Rng(3);
    let w = random_weights(&mut rng, GgmlType::Q8_0, 4, 64);
    let x = vec![0.5f32; 64];
    let mut out = vec![0.0f32; 4];

    let m = QMatrix {
        ty: GgmlType::I32,
        rows: 4,
        cols: 64,
        data: w.bytes(),
        layout: Layout::Gguf,
    };
    assert_eq!(
        matmul(&pool, &m, &x, 1, &mut out, &mut scratch),
        Err(KernelError::UnsupportedType(GgmlType::I32))
    );

    let m = QMatrix {
        ty: GgmlType::Q8_0,
        rows: 4,
        cols: 60,
        data: w.bytes(),
        layout: Layout::Gguf,
    };
    assert!(matches!(
        matmul(&pool, &m, &x[..60], 1, &mut out, &mut scratch),
        Err(KernelError::RowNotBlocks { .. })
    ));

    let m = QMatrix {
        ty: GgmlType::Q8_0,
        rows: 4,
        cols: 64,
        data: w.bytes(),
        layout: Layout::Gguf,
    };
    assert!(matches!(
        matmul(&pool, &m, &x[..32], 1, &mut out, &mut scratch),
        Err(KernelError::Length {
            what: "activations x",
            ..
        })
    ));
    assert!(matches!(
        matmul(&pool, &m, &x, 1, &mut out[..3], &mut scratch),
        Err(KernelError::Length { what: "output", .. })
    ));
    let short = QMatrix {
        ty: GgmlType::Q8_0,
        rows: 4,
        cols: 64,
        data: &w.bytes()[..3 * 68],
        layout: Layout::Gguf,
    };
    assert!(matches!(
        matmul(&pool, &short, &x, 1, &mut out, &mut scratch),
        Err(KernelError::Length {
            what: "weight blocks",
            ..
        })
    ));

    let shifted = crate::cpu_common::AlignedBytes::new(&[&[0u8][..], w.bytes()].concat());
    let odd = QMatrix {
        ty: GgmlType::Q8_0,
        rows: 4,
        cols: 64,
        data: &shifted.bytes()[1..],
        layout: Layout::Gguf,
    };
    assert_eq!(
        matmul(&pool, &odd, &x, 1, &mut out, &mut scratch),
        Err(KernelError::Misaligned {
            ty: GgmlType::Q8_0,
            align: 2
        })
    );

    // Zero tokens is a valid no-op.
    assert_eq!(matmul(&pool, &m, &[], 0, &mut [], &mut scratch), Ok(()));
}
