//! The fused steps of a layer (`norm_matmuls`, `matmuls`, `matmul_residual`,
//! `gated_matmul_residual`, `rope_store`, `gather_rows`) on the CUDA backend against the same
//! steps on the CPU backend, which runs them as their single ops: on the decode path (1 and 3
//! tokens: `rms_norm_q8_1`, grouped `mul_mat_vec_*_q8_1` with accumulation, `glu_q8_1`,
//! `rope_store_f16` over several sequences' caches), on the prefill path (20 tokens) and where
//! the fast forms fall back (float weights, post-norms, quantized caches), through the real
//! `CudaBackend` on the fake driver in CI (on a GPU when one is present).

use std::sync::Arc;

use super::tests::{acts, compare_results, read};
use super::*;
use crate::backend::{CpuBackend, DeviceMemory, HostKv, KvType, KvTypes, QkvParams};
use crate::cpu::ThreadPool;
use crate::quant::quantize;
use llmd_testkit::Rng;

/// Width of the residual stream.
const D: usize = 256;
/// Feed-forward width.
const FF: usize = 512;
/// Width of the queries (and of the attention output the output projection reads).
const QW: usize = 256;

fn weight<B: Backend>(
    b: &B,
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) -> B::Weight {
    let data = quantize(ty, &rng.f32s(rows * cols, 1.0)).expect("quantizable");
    b.upload_weight(&HostTensor {
        name,
        ty,
        rows,
        cols,
        data: &data,
    })
    .expect("upload")
}

/// Every fused step on `b`, by name with its tolerance.
fn run_fused<B: Backend>(b: &B) -> Vec<(String, f32, Vec<f32>)> {
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    let mut results = Vec::new();
    let norm = weight(b, "norm", GgmlType::F32, 1, D, &mut rng);
    // Q4_K_M's mix: q and k of one type, v of another; and an F16 projection (no fast form).
    let wq = weight(b, "wq", GgmlType::Q4_K, QW, D, &mut rng);
    let wk = weight(b, "wk", GgmlType::Q4_K, 64, D, &mut rng);
    let wv = weight(b, "wv", GgmlType::Q6_K, 64, D, &mut rng);
    let wf = weight(b, "wf16", GgmlType::F16, 64, D, &mut rng);
    let wo = weight(b, "wo", GgmlType::Q4_K, D, QW, &mut rng);
    let down = weight(b, "down", GgmlType::Q6_K, D, FF, &mut rng);
    let post = weight(b, "post", GgmlType::F32, 1, D, &mut rng);
    for n in [1, 3, 20] {
        let x = acts(b, &rng.f32s(n * D, 1.0));
        let mut normed = b.alloc_activations(n * D).expect("alloc");
        let mut q = b.alloc_activations(n * QW).expect("alloc");
        let mut k = b.alloc_activations(n * 64).expect("alloc");
        let mut v = b.alloc_activations(n * 64).expect("alloc");
        b.norm_matmuls(
            &x,
            &norm,
            n,
            D,
            1e-5,
            &mut normed,
            &[&wq, &wk, &wv],
            &mut [&mut q, &mut k, &mut v],
        )
        .expect("norm_matmuls");
        results.push((
            format!("norm_matmuls x{n} normed"),
            1e-5,
            read(b, &normed, n * D),
        ));
        for (name, buf, rows) in [("q", &q, QW), ("k", &k, 64), ("v", &v, 64)] {
            results.push((
                format!("norm_matmuls x{n} {name}"),
                2e-2,
                read(b, buf, n * rows),
            ));
        }
        let mut f = b.alloc_activations(n * 64).expect("alloc");
        b.matmuls(&[&wf, &wk], &x, n, &mut [&mut f, &mut k])
            .expect("matmuls");
        results.push((format!("matmuls x{n} f16"), 1e-3, read(b, &f, n * 64)));
        results.push((format!("matmuls x{n} q4_K"), 2e-2, read(b, &k, n * 64)));

        // Output projections into a residual, without and with a post-norm.
        let attn = acts(b, &rng.f32s(n * QW, 1.0));
        let base = rng.f32s(n * D, 1.0);
        for post_norm in [None, Some((&post, 1e-5))] {
            let mut residual = acts(b, &base);
            let mut scratch = b.alloc_activations(n * D).expect("alloc");
            b.matmul_residual(&wo, &attn, n, D, post_norm, &mut scratch, &mut residual)
                .expect("matmul_residual");
            results.push((
                format!("matmul_residual x{n} post-norm {}", post_norm.is_some()),
                2e-2,
                read(b, &residual, n * D),
            ));
        }
        for act in [GatedActivation::Silu, GatedActivation::Gelu] {
            let mut gate = acts(
                b,
                &rng.f32s(n * FF, 1.0)
                    .iter()
                    .map(|g| g * 3.0)
                    .collect::<Vec<_>>(),
            );
            let up = acts(b, &rng.f32s(n * FF, 1.0));
            let mut residual = acts(b, &base);
            let mut scratch = b.alloc_activations(n * D).expect("alloc");
            b.gated_matmul_residual(
                &mut gate,
                &up,
                FF,
                act,
                &down,
                n,
                D,
                None,
                &mut scratch,
                &mut residual,
            )
            .expect("gated_matmul_residual");
            results.push((
                format!("gated_matmul_residual x{n} {act:?}"),
                2e-2,
                read(b, &residual, n * D),
            ));
        }
    }

    // A batch of three sequences (1, 2 and 1 tokens) at scattered positions: q/k/v biases,
    // per-head norms, Llama 3.1-like frequency factors, YaRN, a query scale; f16 caches (one
    // launch) and quantized ones (the single ops).
    let (n_heads, n_kv, hd) = (4, 2, 64);
    let positions = [5u32, 40, 41, 90];
    let rows = [0..1, 1..3, 3..4];
    let factors: Vec<f32> = (0..hd / 2).map(|i| 1.0 + i as f32 / 8.0).collect();
    let ff = b
        .upload_weight(&HostTensor {
            name: "rope_freqs",
            ty: GgmlType::F32,
            rows: 1,
            cols: hd / 2,
            data: &quantize(GgmlType::F32, &factors).expect("f32"),
        })
        .expect("upload");
    let bq = weight(b, "bq", GgmlType::F32, 1, n_heads * hd, &mut rng);
    let bk = weight(b, "bk", GgmlType::F32, 1, n_kv * hd, &mut rng);
    let bv = weight(b, "bv", GgmlType::F32, 1, n_kv * hd, &mut rng);
    let qn = weight(b, "q_norm", GgmlType::F32, 1, hd, &mut rng);
    let kn = weight(b, "k_norm", GgmlType::F32, 1, hd, &mut rng);
    let rope = RopeParams {
        freq_scale: 0.5,
        ext_factor: 1.0,
        n_ctx_orig: 32,
        ..RopeParams::new(RopeMode::Neox, hd, 10_000.0)
    };
    let quantized = KvTypes {
        k: KvType::Q8_0,
        v: KvType::Q4_0,
    };
    for (types, extras) in [
        (KvTypes::F16, true),
        (KvTypes::F16, false),
        (quantized, true),
    ] {
        let p = QkvParams {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            biases: extras.then_some((&bq, &bk, &bv)),
            qk_norm: extras.then_some((&qn, &kn)),
            norm_eps: 1e-6,
            rope,
            freq_factors: extras.then_some(&ff),
            q_scale: extras.then_some(0.125),
        };
        let n = positions.len();
        let mut q = acts(b, &rng.f32s(n * n_heads * hd, 1.0));
        let mut k = acts(b, &rng.f32s(n * n_kv * hd, 1.0));
        let mut v = acts(b, &rng.f32s(n * n_kv * hd, 1.0));
        let mut kvs: Vec<_> = (0..3)
            .map(|_| b.alloc_kv(128, n_kv, hd, types).expect("alloc_kv"))
            .collect();
        let mut caches: Vec<_> = kvs.iter_mut().zip(rows.clone()).collect();
        b.rope_store(&mut q, &mut k, &mut v, &positions, &p, &mut caches)
            .expect("rope_store");
        let what = format!("rope_store {types} extras {extras}");
        results.push((format!("{what} q"), 1e-4, read(b, &q, n * n_heads * hd)));
        for (kv, r) in kvs.iter().zip(rows.clone()) {
            let last = positions[r.end - 1] as usize + 1;
            let host = HostKv::download(&b.kv_view(kv, last).expect("view")).expect("download");
            // Only the stored rows: the others are the cache's unwritten contents.
            for &pos in &positions[r] {
                // The stored row, dequantized from the cache's type.
                let row = |side: &[u8], ty: KvType| -> Vec<f32> {
                    let bytes = side.len() / last;
                    let mut values = vec![0.0; n_kv * hd];
                    crate::quant::dequantize(
                        ty.ggml_type(),
                        &side[pos as usize * bytes..(pos as usize + 1) * bytes],
                        &mut values,
                    )
                    .expect("dequantize a cache row");
                    values
                };
                // f16 rows one rounding apart at most; quantized ones may land a step apart
                // where a value sits on a rounding boundary.
                let tol = if types == KvTypes::F16 { 1e-3 } else { 5e-2 };
                results.push((format!("{what} keys at {pos}"), tol, row(&host.k, types.k)));
                results.push((
                    format!("{what} values at {pos}"),
                    tol,
                    row(&host.v, types.v),
                ));
            }
        }
    }

    // The rows that want logits, picked on the device.
    let src = acts(b, &rng.f32s(6 * D, 1.0));
    let mut out = b.alloc_activations(4 * D).expect("alloc");
    b.gather_rows(&src, &[1, 2, 3, 5], D, 0, &mut out)
        .expect("gather_rows");
    results.push(("gather_rows".into(), 0.0, read(b, &out, 4 * D)));
    results
}

/// The comparison below on the fake driver.
#[test]
fn fused_steps_match_the_cpu_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::fused_tests::fused_steps_match_the_cpu_when_a_gpu_is_present",
        &[],
        "cuda:0 gather_rows",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn fused_steps_match_the_cpu_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    let want = run_fused(&cpu);
    let failures = compare_results("cuda:0", &want, &run_fused(&gpu));
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The comparison runs on the CPU backend with finite results.
#[test]
fn fused_comparison_runs_on_the_cpu_backend() {
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    for (name, _, values) in run_fused(&cpu) {
        assert!(
            !values.is_empty() && values.iter().all(|v| v.is_finite()),
            "{name}"
        );
    }
}
