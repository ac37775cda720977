//! The packed weight layout and its AVX-512 kernels: packing is undone exactly (whole matrices
//! and single rows), and the matrix multiply over packed weights equals the scalar reference dot
//! products, for every packed type, row-group count, token count (below, at and past the
//! kernels' token tile) and thread count: bit for bit for the super-block types (Q4_K, Q6_K),
//! within float rounding for the 32-wide ones (Q8_0, Q5_0: a fused multiply-add per block, as
//! llama.cpp's): 1e-5 of the sum of the absolute products `Σ |w_i · a_i|` (see `cpu_dot.rs`).
//! On a CPU without the AVX-512 kernels, weights must not be packed and a packed matrix is
//! refused.

use crate::cpu_common::{random_weights, Rng};
use llmd_kernels::cpu::dot::{Activation, VecDot};
use llmd_kernels::cpu::matmul::as_blocks;
use llmd_kernels::cpu::packed::{self, PACK_ROWS};
use llmd_kernels::cpu::{
    self, matmul, Isa, KernelError, Layout, MatmulScratch, QMatrix, ThreadPool,
};
use llmd_kernels::quant::{self, *};

/// The packed types.
const PACKED: [GgmlType; 4] = [
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
];

#[test]
fn packing_is_undone_exactly() {
    let mut rng = Rng(0x51);
    for ty in PACKED {
        for (rows, blocks) in [(16usize, 1usize), (48, 3)] {
            let cols = blocks * ty.block_elems();
            let w = random_weights(&mut rng, ty, rows, cols);
            let mut p = vec![0u8; w.bytes().len()];
            packed::pack(ty, rows, cols, w.bytes(), &mut p).expect("pack");
            assert_ne!(p, w.bytes(), "{ty}: packing moves bytes");
            let mut back = vec![0u8; p.len()];
            packed::unpack(ty, rows, cols, &p, &mut back).expect("unpack");
            assert_eq!(back, w.bytes(), "{ty} {rows}x{cols}");
            let rb = w.bytes().len() / rows;
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                packed::unpack_row(ty, rows, cols, &p, r, &mut row).expect("row");
                assert_eq!(row, &w.bytes()[r * rb..(r + 1) * rb], "{ty} row {r}");
            }
        }
    }
}

#[test]
fn packing_refuses_bad_shapes() {
    let ty = GgmlType::Q8_0;
    let rb = 34;
    let src = vec![0u8; 16 * rb];
    let mut dst = vec![0u8; 16 * rb];
    assert!(matches!(
        packed::pack(ty, 8, 32, &src[..8 * rb], &mut dst[..8 * rb]),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        packed::pack(ty, 16, 40, &src, &mut dst),
        Err(KernelError::RowNotBlocks { .. })
    ));
    assert!(matches!(
        packed::pack(ty, 16, 32, &src, &mut dst[1..]),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        packed::pack(GgmlType::Q4_0, 16, 32, &src[..16 * 18], &mut dst[..16 * 18]),
        Err(KernelError::UnsupportedType(GgmlType::Q4_0))
    ));
    let mut row = vec![0u8; rb];
    assert!(packed::unpack_row(ty, 16, 32, &src, 16, &mut row).is_err());
    assert!(packed::unpack_row(ty, 16, 32, &src, 0, &mut row[1..]).is_err());
}

/// `(out[t][r], Σ_i |w_i · a_i|)` from the scalar reference, one dot product at a time.
fn reference<W: VecDot>(
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> Vec<(f32, f32)>
where
    W::Act: Dequant,
{
    let w = as_blocks::<W>(data).expect("aligned");
    let scalar = W::kernels_for(Isa::Scalar).expect("scalar kernels");
    let rb = cols / W::BLOCK;
    let row_bytes = data.len() / rows;
    let mut out = vec![(0.0, 0.0); rows * n];
    for t in 0..n {
        let mut a = vec![<W::Act as Activation>::ZERO; rb];
        <W::Act as Activation>::quantize(&x[t * cols..(t + 1) * cols], &mut a);
        let av = W::Act::values(&a);
        for r in 0..rows {
            let mut wv = vec![0.0f32; cols];
            quant::dequantize(W::TYPE, &data[r * row_bytes..(r + 1) * row_bytes], &mut wv)
                .expect("dequantize");
            let abs: f32 = wv.iter().zip(&av).map(|(w, a)| (w * a).abs()).sum();
            out[t * rows + r] = (scalar.dot(&w[r * rb..(r + 1) * rb], &a), abs);
        }
    }
    out
}

/// Activation blocks as the f32 values they stand for.
trait Dequant: Sized {
    fn values(blocks: &[Self]) -> Vec<f32>;
}

impl Dequant for BlockQ8K {
    fn values(blocks: &[Self]) -> Vec<f32> {
        blocks
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| f32::from(q) * b.d))
            .collect()
    }
}

impl Dequant for llmd_kernels::cpu::quantize::BlockQ8_0Act {
    fn values(blocks: &[Self]) -> Vec<f32> {
        blocks
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| f32::from(q) * b.d))
            .collect()
    }
}

fn reference_for(
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> Vec<(f32, f32)> {
    match ty {
        GgmlType::Q4_K => reference::<BlockQ4K>(data, rows, cols, x, n),
        GgmlType::Q6_K => reference::<BlockQ6K>(data, rows, cols, x, n),
        GgmlType::Q8_0 => reference::<BlockQ8_0>(data, rows, cols, x, n),
        GgmlType::Q5_0 => reference::<BlockQ5_0>(data, rows, cols, x, n),
        other => panic!("{other} is not packed"),
    }
}

#[test]
fn packed_matmul_equals_the_scalar_reference() {
    let mut rng = Rng(0x77);
    let pools: Vec<ThreadPool> = [1, 2, 3].map(|n| ThreadPool::new(n).expect("spawn")).into();
    let mut scratch = MatmulScratch::new();
    for ty in PACKED {
        // The last shape's rows are longer than a prefill span (about 12 KiB of one row group's
        // weights), so long batches take them a span at a time.
        for (rows, blocks) in [(16usize, 1usize), (64, 3), (32, 40)] {
            let cols = blocks * ty.block_elems();
            let w = random_weights(&mut rng, ty, rows, cols);
            let mut p = vec![0u8; w.bytes().len()];
            packed::pack(ty, rows, cols, w.bytes(), &mut p).expect("pack");
            let m = QMatrix {
                ty,
                rows,
                cols,
                data: &p,
                layout: Layout::Packed,
            };
            for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 19] {
                // Activations from small to large magnitudes, with exact zeros.
                let mut x = rng.f32s(n * cols, 4.0);
                x.iter_mut().step_by(7).for_each(|v| *v = 0.0);
                let want = reference_for(ty, w.bytes(), rows, cols, &x, n);
                for pool in &pools {
                    let mut out = vec![f32::NAN; rows * n];
                    let got = matmul(pool, &m, &x, n, &mut out, &mut scratch);
                    if cpu::isa() >= Isa::Avx512 {
                        got.expect("packed matmul");
                        let exact = matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K);
                        for (i, (g, &(e, abs))) in out.iter().zip(&want).enumerate() {
                            let ok = if exact {
                                g.to_bits() == e.to_bits()
                            } else {
                                (g - e).abs() <= 1e-5 * abs
                            };
                            assert!(
                                ok,
                                "{ty} {rows}x{cols}, {n} tokens, {} threads, token {} row {}: \
                                 {g} vs {e} (|terms| {abs})",
                                pool.n_threads(),
                                i / rows,
                                i % rows
                            );
                        }
                    } else {
                        assert_eq!(got, Err(KernelError::UnsupportedType(ty)));
                    }
                }
            }
        }
    }
}

#[test]
fn weights_are_packed_exactly_when_the_kernels_run() {
    let fast = cpu::isa() >= Isa::Avx512;
    for ty in PACKED {
        assert_eq!(packed::should_pack(ty, 32, 256), fast, "{ty}");
        assert!(
            !packed::should_pack(ty, 24, 256),
            "{ty}: not whole row groups"
        );
    }
    assert!(!packed::should_pack(GgmlType::Q4_0, 32, 256));
    assert!(!packed::should_pack(GgmlType::F16, 32, 256));
    assert_eq!(PACK_ROWS, 16);
}
