//! The CUDA backend against the CPU backend for every weight type the kernels handle beyond the
//! seven the main comparison covers (`tests::TYPES`): matrix products on the matrix-vector path
//! (1, 3 and 8 tokens: partial and full token groups of `mul_mat_vec_*`) and on the prefill path
//! (20 tokens: `mul_mat_q_*` on the int8 tensor cores, BF16 `gemm_bf16_tc`), and embedding rows
//! (`get_rows_*`),
//! through the real `CudaBackend` on the fake driver in CI (on a GPU when one is present).
//!
//! Weights are random blocks with sane scales (every bit pattern of the quants occurs), made
//! here so that the test does not depend on a quantizer for each type; BF16 weights are rounded
//! from random values.
//!
//! Tolerances (relative RMS error over RMS of the CPU result, as `tests::compare_results`):
//! embedding rows are dequantized exactly by both, 1e-6. Products with block-quantized weights:
//! the CPU quantizes activations to ggml's partner format (Q8_K per 256 values for the K, IQ and
//! TQ types, Q8_0 / Q8_1 per 32 for the others), the GPU to Q8_1 per 32 (matrix-vector) or to
//! 8 bits per 32 with f32 scales (mmq), each off by about 0.5% of the product, and the IQ2 / IQ3_XXS kernels round their scale
//! products in integers as llama.cpp's do (about 1e-4): 2e-2, as for the seven main types. BF16:
//! the CPU rounds activations to bf16 (ggml's partner type for BF16, 8 significant bits: ~0.2%
//! per value, a few 1e-3 on a product), the GPU keeps them f32 (matrix-vector) or rounds them to
//! bf16 as well (tensor cores): 1e-2.

use std::sync::Arc;

use super::tests::{acts, compare_results, read, TYPES};
use super::types::{CudaType, CUDA_TYPES};
use super::*;
use crate::backend::{CpuBackend, DeviceMemory};
use crate::cpu::ThreadPool;
use crate::quant::quantize;
use llmd_testkit::Rng;

/// Weight rows: two whole 64-row tiles of the matrix-matrix kernels and an edge of 8.
const ROWS: usize = 136;
/// Weight columns: two 256-weight super-blocks per row.
const COLS: usize = 512;

/// Byte offsets of a block's f16 scale fields (`d`, `dmin` / `m`), for the types whose scales
/// are plain f16 values; IQ1_M and MXFP4 are handled in [`random_blocks`].
fn f16_scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0
        | GgmlType::Q5_0
        | GgmlType::Q8_0
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::TQ1_0 => &[52],
        GgmlType::TQ2_0 => &[64],
        _ => &[],
    }
}

/// Random bytes of `rows` rows of `cols` weights of the block type `ty`, with every scale a
/// random finite value of moderate size: f16 scales in [0.001, 0.05], IQ1_M's f16 scale spread
/// over the top nibbles of its four u16 scale words, MXFP4's exponent 2^-10 .. 2^3.
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = rows * cols / ty.block_elems();
    let size = ty.block_bytes();
    let mut bytes: Vec<u8> = (0..n_blocks * size)
        .map(|_| (rng.f32() * 128.0 + 128.0) as u8)
        .collect();
    let mut scale = || half::f16::from_f32(0.0255 + 0.0245 * rng.f32()).to_bits();
    for block in bytes.chunks_exact_mut(size) {
        for &at in f16_scale_offsets(ty) {
            block[at..at + 2].copy_from_slice(&scale().to_le_bytes());
        }
        match ty {
            GgmlType::IQ1_M => {
                let bits = scale();
                for k in 0..4 {
                    let at = 48 + 2 * k;
                    let word = u16::from_le_bytes([block[at], block[at + 1]]);
                    let word = (word & 0x0FFF) | (((bits >> (4 * k)) & 0xF) << 12);
                    block[at..at + 2].copy_from_slice(&word.to_le_bytes());
                }
            }
            GgmlType::MXFP4 => block[0] = 118 + block[0] % 14,
            _ => {}
        }
    }
    bytes
}

/// A weight of type `ty` on `b` from the given bytes.
pub(super) fn upload_bytes<B: Backend>(
    b: &B,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
) -> B::Weight {
    b.upload_weight(&HostTensor {
        name: "w",
        ty,
        rows,
        cols,
        data,
    })
    .expect("upload")
}

/// The bytes of a `rows` x `cols` weight of `t`'s type: BF16 rounded from random values, block
/// types random blocks.
pub(super) fn weight_data(t: &CudaType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    if t.ty == GgmlType::BF16 {
        quantize(t.ty, &rng.f32s(rows * cols, 1.0)).expect("bf16 rounding")
    } else {
        random_blocks(t.ty, rows, cols, rng)
    }
}

/// Every type's matmul and embed results on `b`, by name with their tolerances.
fn run_types<B: Backend>(b: &B) -> Vec<(String, f32, Vec<f32>)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut results = Vec::new();
    for t in CUDA_TYPES.iter().filter(|t| !TYPES.contains(&t.ty)) {
        let tol = if t.ty == GgmlType::BF16 { 1e-2 } else { 2e-2 };
        let data = weight_data(t, ROWS, COLS, &mut rng);
        let w = upload_bytes(b, t.ty, ROWS, COLS, &data);
        for n_tokens in [1, 3, 8, 20] {
            let x = acts(b, &rng.f32s(n_tokens * COLS, 1.0));
            let mut out = b.alloc_activations(n_tokens * ROWS).expect("alloc");
            b.matmul(&w, &x, n_tokens, &mut out).expect("matmul");
            results.push((
                format!("matmul {} x{n_tokens}", t.ty),
                tol,
                read(b, &out, n_tokens * ROWS),
            ));
        }
        let ids = [3u32, 0, ROWS as u32 - 1, 3];
        let mut out = b.alloc_activations(ids.len() * COLS).expect("alloc");
        b.embed(&w, &ids, 0.5, &mut out).expect("embed");
        results.push((
            format!("embed {}", t.ty),
            1e-6,
            read(b, &out, ids.len() * COLS),
        ));
    }
    // BF16 rows of 520 values (a multiple of 8, not of 32): prefill through dequantize_bf16_f32
    // tiles (several: the test lowers the tile scratch to 64 rows) and the f32 GEMM instead of
    // tensor cores.
    let (rows, cols) = (70, 520);
    let data = quantize(GgmlType::BF16, &rng.f32s(rows * cols, 1.0)).expect("bf16 rounding");
    let w = upload_bytes(b, GgmlType::BF16, rows, cols, &data);
    for n_tokens in [2, 20] {
        let x = acts(b, &rng.f32s(n_tokens * cols, 1.0));
        let mut out = b.alloc_activations(n_tokens * rows).expect("alloc");
        b.matmul(&w, &x, n_tokens, &mut out).expect("matmul");
        results.push((
            format!("matmul BF16 {cols} columns x{n_tokens}"),
            1e-2,
            read(b, &out, n_tokens * rows),
        ));
    }
    results
}

/// The comparison below on the fake driver (the kernels under host emulation).
#[test]
fn every_weight_type_matches_cpu_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::type_tests::every_weight_type_matches_cpu_when_a_gpu_is_present",
        &[],
        "cuda:0 embed MXFP4",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn every_weight_type_matches_cpu_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let mut gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    gpu.gemm_scratch_floats = GEMM_TILE * COLS;
    let want = run_types(&cpu);
    let failures = compare_results("cuda:0", &want, &run_types(&gpu));

    // A type no kernel handles is refused at upload, naming the type and the tensor.
    let q8k = vec![0u8; GgmlType::Q8_K.block_bytes() * 2];
    let refused = gpu
        .upload_weight(&HostTensor {
            name: "blk.0.ffn_down.weight",
            ty: GgmlType::Q8_K,
            rows: 2,
            cols: 256,
            data: &q8k,
        })
        .expect_err("Q8_K weights have no CUDA kernels");
    let message = refused.to_string();
    assert!(
        matches!(&refused, BackendError::UnsupportedType { ty: GgmlType::Q8_K, tensor, .. }
            if tensor == "blk.0.ffn_down.weight")
            && message.contains("Q8_K")
            && message.contains("blk.0.ffn_down.weight"),
        "{message}"
    );
    assert_eq!(gpu.used_bytes(), 0, "leases returned on drop");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The comparison itself on the CPU backend: every CUDA type beyond the main comparison's runs
/// there with finite results, so a GPU session measures only the GPU.
#[test]
fn type_comparison_runs_on_the_cpu_backend() {
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let results = run_types(&cpu);
    let compared = CUDA_TYPES.len() - TYPES.len();
    assert_eq!(results.len(), compared * 5 + 2);
    for (name, _, values) in &results {
        assert!(
            !values.is_empty() && values.iter().all(|v| v.is_finite()),
            "{name}"
        );
    }
}
