//! The routed matmul (`mul_mat_vec_id_<type>_q8_1`, [`Backend::matmul_id`]) against each pair
//! multiplied alone by the plain matmul, for every block-quantized type: on the CPU backend
//! (2e-2: the CPU quantizes activations to ggml's partner format, the GPU to Q8_1, as in
//! `type_tests`) and on the GPU itself (1e-6: the same item dot products in the same order).
//! Gate/up-shaped calls (each token's row read by its `k` pairs) and down-shaped ones (each
//! pair's own row), through the real `CudaBackend` on the fake driver in CI.

use std::sync::Arc;

use super::tests::{acts, compare_results, read};
use super::type_tests::{upload_bytes, weight_data};
use super::types::{MatVec, CUDA_TYPES};
use super::*;
use crate::backend::{CpuBackend, DeviceMemory};
use crate::cpu::ThreadPool;
use llmd_testkit::Rng;

/// Experts per weight set.
const N_EXPERT: usize = 4;
/// Rows of each expert: one whole 4-row block group short of 3 x 4 plus an edge of 2.
const ROWS: usize = 14;
/// Columns: two 256-weight super-blocks.
const COLS: usize = 512;
/// Tokens of the batch and experts each uses: 3 x 2 pairs, expert 2 used twice, expert 1 not.
const N_TOKENS: usize = 3;
/// The pairs' expert ids, `N_TOKENS` rows of 2.
const IDS: [u32; 6] = [2, 0, 3, 2, 0, 3];

/// Row `p` of the result of pair p, one pair at a time with [`Backend::matmul`].
fn one_by_one<B: Backend>(
    b: &B,
    experts: &[B::Weight],
    x: &B::Activations,
    x_per_pair: bool,
) -> Vec<f32> {
    let per_token = IDS.len() / N_TOKENS;
    let mut row = b.alloc_activations(COLS).expect("alloc");
    let mut out = b.alloc_activations(ROWS).expect("alloc");
    let mut all = Vec::new();
    for (p, &id) in IDS.iter().enumerate() {
        let r = if x_per_pair { p } else { p / per_token };
        b.gather_rows(x, &[r as u32], COLS, 0, &mut row)
            .expect("gather");
        b.matmul(&experts[id as usize], &row, 1, &mut out)
            .expect("matmul");
        all.extend(read(b, &out, ROWS));
    }
    all
}

/// Every block-quantized type's routed products on `b` (`routed`: through `matmul_id`, which
/// must route them; otherwise pair by pair), by name with their tolerances against the CPU.
fn run_routed<B: Backend>(b: &B, routed: bool) -> Vec<(String, f32, Vec<f32>)> {
    let mut rng = Rng(0x51ed_270b_0a3c_77f1);
    let mut results = Vec::new();
    for t in CUDA_TYPES.iter().filter(|t| t.matvec == MatVec::Q8_1) {
        let ws: Vec<B::Weight> = (0..N_EXPERT)
            .map(|_| upload_bytes(b, t.ty, ROWS, COLS, &weight_data(t, ROWS, COLS, &mut rng)))
            .collect();
        for (what, x_per_pair, x_rows) in [("gate", false, N_TOKENS), ("down", true, IDS.len())] {
            let x = acts(b, &rng.f32s(x_rows * COLS, 1.0));
            let values = if routed {
                let mut out = b.alloc_activations(IDS.len() * ROWS).expect("alloc");
                assert!(b.routes(&ws[0], N_TOKENS), "{}: decode batches route", t.ty);
                b.matmul_id(&ws, &x, N_TOKENS, x_per_pair, &IDS, &mut out)
                    .expect("matmul_id");
                read(b, &out, IDS.len() * ROWS)
            } else {
                one_by_one(b, &ws, &x, x_per_pair)
            };
            results.push((format!("matmul_id {} {what}", t.ty), 2e-2, values));
        }
    }
    results
}

/// The comparison below on the fake driver (the kernels under host emulation).
#[test]
fn routed_matmul_matches_pair_by_pair_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::moe_tests::routed_matmul_matches_pair_by_pair_when_a_gpu_is_present",
        &[],
        "cuda:0 routed products checked",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn routed_matmul_matches_pair_by_pair_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    let routed = run_routed(&gpu, true);
    let mut failures = compare_results("cuda:0", &run_routed(&cpu, false), &routed);
    // The GPU's own pair-by-pair products: the same dot products, so equal up to rounding.
    let exact: Vec<_> = run_routed(&gpu, false)
        .into_iter()
        .map(|(name, _, v)| (name, 1e-6, v))
        .collect();
    failures.extend(compare_results("cuda:0 (itself)", &exact, &routed));

    // Prefill-sized batches and float experts are left to the grouped path; a bad id is refused.
    let mut rng = Rng(7);
    let q = upload_bytes(
        &gpu,
        GgmlType::Q4_K,
        ROWS,
        COLS,
        &weight_data(
            super::types::cuda_type(GgmlType::Q4_K).expect("Q4_K"),
            ROWS,
            COLS,
            &mut rng,
        ),
    );
    let f = upload_bytes(
        &gpu,
        GgmlType::F16,
        ROWS,
        COLS,
        &crate::quant::quantize(GgmlType::F16, &rng.f32s(ROWS * COLS, 1.0)).expect("f16"),
    );
    assert!(!gpu.routes(&q, 16), "16 tokens go the grouped way");
    assert!(!gpu.routes(&f, 1), "float experts go the grouped way");
    let x = acts(&gpu, &rng.f32s(2 * COLS, 1.0));
    let mut out = gpu.alloc_activations(2 * ROWS).expect("alloc");
    let refused = gpu
        .matmul_id(std::slice::from_ref(&f), &x, 2, false, &[0, 0], &mut out)
        .expect_err("f16 experts");
    assert!(
        refused.to_string().contains("no routed kernel"),
        "{refused}"
    );
    let q = [q];
    let bad = gpu
        .matmul_id(&q, &x, 2, false, &[0, 1], &mut out)
        .expect_err("expert 1 of 1");
    assert!(
        bad.to_string().contains("expert id 1 of 1 experts"),
        "{bad}"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    println!("cuda:0 routed products checked");
}

/// The comparison itself on the CPU backend: the pair-by-pair products are finite, so a GPU
/// session measures only the GPU; the CPU routes nothing (it groups rows by expert).
#[test]
fn routed_comparison_runs_on_the_cpu_backend() {
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let results = run_routed(&cpu, false);
    assert_eq!(
        results.len(),
        2 * CUDA_TYPES
            .iter()
            .filter(|t| t.matvec == MatVec::Q8_1)
            .count()
    );
    for (name, _, values) in &results {
        assert_eq!(values.len(), IDS.len() * ROWS, "{name}");
        assert!(values.iter().all(|v| v.is_finite()), "{name}");
    }
    let w = upload_bytes(&cpu, GgmlType::Q8_0, 1, 32, &[0; 34]);
    assert!(!cpu.routes(&w, 1), "the CPU has no routed kernel yet");
}
