//! The CUDA backend against the CPU backend where real models take it (issue 23, items 6 and 9):
//! prefill products whose activations exceed f16's range (65504), as outlier features of large
//! models do, and ops at the shapes of real models (K of 4096 and 14336, heads of 64, 128 and
//! 256, GQA ratios 1, 4 and 8, contexts of 8k, a decode batch of several sequences), through the real `CudaBackend` on the fake driver in CI (on a GPU when one
//! is present).
//!
//! The emulated GPU runs every thread of every block on the CPU, so each op is checked at a few
//! real shapes rather than a grid of them; the test prints how long each took.

use std::sync::Arc;
use std::time::Instant;

use super::tests::{acts, compare_results, read};
use super::*;
use crate::backend::{CpuBackend, DeviceMemory, KvType, KvTypes};
use crate::cpu::ThreadPool;
use crate::quant::{dequantize, quantize};
use llmd_testkit::Rng;

/// Activations of outlier features: far beyond f16's largest value (65504).
const OUTLIER: f32 = 1.0e5;

/// Random activations in [-1, 1) with about one value in 64 an outlier of +-[`OUTLIER`], and the
/// first row's first value always one.
fn with_outliers(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x = rng.f32s(n, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        if i == 0 || rng.f32() > 31.0 / 32.0 {
            *v = if rng.f32() < 0.0 { -OUTLIER } else { OUTLIER };
        }
    }
    x
}

/// The exact product `x (n_tokens, cols) * w^T` of the weight's dequantized values, in f64.
fn exact_product(ty: GgmlType, data: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let mut w = vec![0.0f32; rows * cols];
    dequantize(ty, data, &mut w).expect("dequantize");
    let n_tokens = x.len() / cols;
    let mut out = vec![0.0f32; n_tokens * rows];
    for t in 0..n_tokens {
        for r in 0..rows {
            let xs = &x[t * cols..(t + 1) * cols];
            let ws = &w[r * cols..(r + 1) * cols];
            let dot: f64 = xs
                .iter()
                .zip(ws)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            out[t * rows + r] = dot as f32;
        }
    }
    out
}

/// Prefill products (the GEMM path's token counts) with outlier activations on `b`, by name
/// with their tolerances, and the exact products of the same weights (for F16, whose CPU
/// product rounds activations to f16 as ggml does, and so overflows to infinity itself).
#[allow(clippy::type_complexity)]
fn run_outliers<B: Backend>(b: &B) -> (Vec<(String, f32, Vec<f32>)>, Vec<(String, Vec<f32>)>) {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let (rows, cols) = (72, 512);
    let mut results = Vec::new();
    let mut exact = Vec::new();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
    ] {
        let data = quantize(ty, &rng.f32s(rows * cols, 1.0)).expect("quantizable weight");
        let w = b
            .upload_weight(&HostTensor {
                name: "w",
                ty,
                rows,
                cols,
                data: &data,
            })
            .expect("upload");
        for n_tokens in [20, 70] {
            let xv = with_outliers(&mut rng, n_tokens * cols);
            let x = acts(b, &xv);
            let mut out = b.alloc_activations(n_tokens * rows).expect("alloc");
            b.matmul(&w, &x, n_tokens, &mut out).expect("matmul");
            let name = format!("matmul {ty} x{n_tokens} with outliers");
            // The outliers dominate every product; their blocks' other activations lose their
            // precision to the block scale on both backends, differently (Q8_K per 256 values
            // on the CPU, 8-bit blocks of 32 on the GPU), a small part of the product.
            let tol = match ty {
                GgmlType::F32 => 1e-5,
                GgmlType::F16 | GgmlType::BF16 => 1e-2,
                _ => 2e-2,
            };
            results.push((name.clone(), tol, read(b, &out, n_tokens * rows)));
            exact.push((name, exact_product(ty, &data, rows, cols, &xv)));
        }
    }
    (results, exact)
}

#[test]
fn prefill_with_outlier_activations_matches_the_cpu_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::shape_tests::prefill_with_outlier_activations_matches_the_cpu_when_a_gpu_is_present",
        &[],
        "cuda:0 matmul IQ4_XS x70 with outliers",
    );
}

/// Products of 20 and 70 tokens (the prefill path) whose activations hold values of 1e5:
/// finite and within tolerance of the CPU's (of the exact product for F16, whose CPU product
/// overflows like ggml's).
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn prefill_with_outlier_activations_matches_the_cpu_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    let (mut want, exact) = run_outliers(&cpu);
    for (name, _, values) in &mut want {
        if name.contains("F16") && !name.contains("BF16") {
            let (_, product) = exact
                .iter()
                .find(|(n, _)| n == name)
                .expect("exact product");
            assert!(
                values.iter().any(|v| !v.is_finite()),
                "the CPU's F16 product (activations rounded to f16) no longer overflows: compare \
                 with it again"
            );
            values.clone_from(product);
        }
    }
    let (got, _) = run_outliers(&gpu);
    let failures = compare_results("cuda:0", &want, &got);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The outlier comparison runs on the CPU backend, every product but F16's finite there.
#[test]
fn outlier_comparison_runs_on_the_cpu_backend() {
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let (results, exact) = run_outliers(&cpu);
    assert_eq!(results.len(), exact.len());
    for ((name, tol, values), (_, product)) in results.iter().zip(&exact) {
        if name.contains("F16") && !name.contains("BF16") {
            continue;
        }
        let failures = compare_results(
            "cpu:0 against the exact product",
            &[(name.clone(), *tol, product.clone())],
            &[(name.clone(), *tol, values.clone())],
        );
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

/// One op at a real model's shape: its results by name with their tolerances, and how long
/// `b` took for it.
type Timed = (String, f32, Vec<f32>, f64);

/// Runs `op` on `b`, timing it (the results' read-back included).
fn timed(name: String, tol: f32, op: impl FnOnce() -> Vec<f32>) -> Timed {
    let start = Instant::now();
    let values = op();
    (name, tol, values, start.elapsed().as_secs_f64())
}

/// Matrix products at real K sizes: 4096 (Llama 8B's n_embd: q/k/v/o and gate/up) and 14336
/// (its n_ff: down), a slice of 64 or 72 rows of each, for one decode token, 8 tokens (a full
/// matrix-vector group) and 20 (the int8 tensor-core path).
fn real_matmuls<B: Backend>(b: &B, rng: &mut Rng, out: &mut Vec<Timed>) {
    for (ty, rows, cols) in [
        (GgmlType::Q4_K, 72, 4096),
        (GgmlType::Q6_K, 64, 14336),
        (GgmlType::Q8_0, 64, 4096),
        (GgmlType::F16, 64, 4096),
    ] {
        let data = quantize(ty, &rng.f32s(rows * cols, 1.0)).expect("quantizable weight");
        let w = b
            .upload_weight(&HostTensor {
                name: "w",
                ty,
                rows,
                cols,
                data: &data,
            })
            .expect("upload");
        for n_tokens in [1, 8, 20] {
            let x = acts(b, &rng.f32s(n_tokens * cols, 1.0));
            let tol = if ty == GgmlType::F16 { 1e-3 } else { 2e-2 };
            out.push(timed(
                format!("matmul {ty} {rows}x{cols} x{n_tokens}"),
                tol,
                || {
                    let mut y = b.alloc_activations(n_tokens * rows).expect("alloc");
                    b.matmul(&w, &x, n_tokens, &mut y).expect("matmul");
                    read(b, &y, n_tokens * rows)
                },
            ));
        }
    }
}

/// RMS norm over 4096 values and rope of heads of 128 and 256 at positions near 8k.
fn real_row_ops<B: Backend>(b: &B, rng: &mut Rng, out: &mut Vec<Timed>) {
    let dim = 4096;
    let norm = b
        .upload_weight(&HostTensor {
            name: "norm",
            ty: GgmlType::F32,
            rows: 1,
            cols: dim,
            data: &quantize(GgmlType::F32, &rng.f32s(dim, 1.0)).expect("f32"),
        })
        .expect("upload");
    let mut x = acts(b, &rng.f32s(3 * dim, 1.0));
    out.push(timed(format!("rms_norm {dim}"), 1e-5, || {
        b.rms_norm(&mut x, &norm, 3, dim, 1e-5).expect("rms_norm");
        read(b, &x, 3 * dim)
    }));
    let positions = [0u32, 4095, 8191];
    for (head_dim, n_heads, params) in [
        (128, 32, RopeParams::new(RopeMode::Normal, 128, 500_000.0)),
        (256, 8, RopeParams::new(RopeMode::Neox, 256, 10_000.0)),
    ] {
        let n = positions.len() * n_heads * head_dim;
        let mut x = acts(b, &rng.f32s(n, 1.0));
        // At position 8191 the f32 angle itself is only good to about 1e-3 radians, and the two
        // backends reach it differently: the CPU multiplies the pairs' frequencies up one after
        // another as ggml-cpu does (theta *= base^(-2/n_dims)), the GPU raises the base to each
        // pair's power as ggml-cuda does; about 1e-4 of the result apart at 8k positions.
        out.push(timed(format!("rope head_dim {head_dim}"), 5e-4, || {
            b.rope(&mut x, 3, n_heads, head_dim, &positions, params, None)
                .expect("rope");
            read(b, &x, n)
        }));
    }
}

/// Attention over 8k-token contexts: Llama 3 8B's heads (32 of 128 over 8 KV heads, here 8 over
/// 2) with an f16 cache and with q8_0 keys and q4_0 values, and Gemma 2's (head_dim 256, 8 over
/// 4; a 4096-position window) with an f16 cache, a decode step at the last position and a
/// prefill chunk of 16 queries ending there.
fn real_attention<B: Backend>(b: &B, rng: &mut Rng, out: &mut Vec<Timed>) {
    const CONTEXT: usize = 8192;
    let quantized = KvTypes {
        k: KvType::Q8_0,
        v: KvType::Q4_0,
    };
    for (n_heads, n_kv, hd, window, types) in [
        (8, 2, 128, None, KvTypes::F16),
        (8, 2, 128, None, quantized),
        (8, 4, 256, Some(4096), KvTypes::F16),
    ] {
        let kw = n_kv * hd;
        let mut kv = b.alloc_kv(CONTEXT, n_kv, hd, types).expect("alloc_kv");
        let fill: Vec<u32> = (0..CONTEXT as u32).collect();
        for chunk in fill.chunks(1024) {
            let k = acts(b, &rng.f32s(chunk.len() * kw, 1.0));
            let v = acts(b, &rng.f32s(chunk.len() * kw, 1.0));
            b.kv_store(&mut kv, &k, &v, 0, chunk).expect("kv_store");
        }
        let params = AttentionParams {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
            softcap: None,
        };
        let last = CONTEXT as u32 - 1;
        for (what, positions) in [
            ("decode", vec![last]),
            ("prefill", (last - 15..=last).collect::<Vec<_>>()),
        ] {
            let n = positions.len() * n_heads * hd;
            let q = acts(b, &rng.f32s(n, 1.0));
            out.push(timed(
                format!(
                    "attention {what} head_dim {hd} {}/{} cache at {CONTEXT} positions",
                    types.k, types.v
                ),
                1e-3,
                || {
                    let mut o = acts(b, &vec![0.0; n]);
                    b.attention(&q, &kv, 0, &positions, params, &mut o)
                        .expect("attention");
                    read(b, &o, n)
                },
            ));
        }
    }
}

/// Decode attention (one block per KV head serving its query-head group, keys split to fill the
/// GPU) at each head size (64, 128, 256) and GQA ratio (1, 4, 8), and one batch of three
/// sequences of different contexts (up to 8k) in one call: an f16 cache, and q8_0 keys with
/// q4_0 values for the batch.
fn decode_attention<B: Backend>(b: &B, rng: &mut Rng, out: &mut Vec<Timed>) {
    let quantized = KvTypes {
        k: KvType::Q8_0,
        v: KvType::Q4_0,
    };
    // (query heads, KV heads, head_dim, contexts of the batch's sequences, cache types)
    let cases: [(usize, usize, usize, &[usize], KvTypes); 6] = [
        (4, 4, 64, &[8192], KvTypes::F16),
        (8, 1, 64, &[8192], KvTypes::F16),
        (16, 4, 128, &[4096], KvTypes::F16),
        (8, 8, 256, &[2048], KvTypes::F16),
        (8, 1, 256, &[2048], KvTypes::F16),
        (16, 2, 128, &[8192, 700, 33], quantized),
    ];
    for (n_heads, n_kv, hd, contexts, types) in cases {
        let kw = n_kv * hd;
        let mut caches = Vec::new();
        for &context in contexts {
            let mut kv = b.alloc_kv(context, n_kv, hd, types).expect("alloc_kv");
            let fill: Vec<u32> = (0..context as u32).collect();
            for chunk in fill.chunks(1024) {
                let k = acts(b, &rng.f32s(chunk.len() * kw, 1.0));
                let v = acts(b, &rng.f32s(chunk.len() * kw, 1.0));
                b.kv_store(&mut kv, &k, &v, 0, chunk).expect("kv_store");
            }
            caches.push(kv);
        }
        let params = AttentionParams {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: None,
            softcap: None,
        };
        // Each sequence's query at its last position, one row each.
        let positions: Vec<u32> = contexts.iter().map(|&c| c as u32 - 1).collect();
        let segments: Vec<(&B::KvCache, std::ops::Range<usize>)> = caches
            .iter()
            .enumerate()
            .map(|(i, kv)| (kv, i..i + 1))
            .collect();
        let n = positions.len() * n_heads * hd;
        let q = acts(b, &rng.f32s(n, 1.0));
        out.push(timed(
            format!(
                "decode attention {n_heads}/{n_kv} heads of {hd}, {}/{} cache, contexts {contexts:?}",
                types.k, types.v
            ),
            1e-3,
            || {
                let mut o = acts(b, &vec![0.0; n]);
                b.attention_batch(&q, &segments, &positions, params, &mut o)
                    .expect("attention_batch");
                read(b, &o, n)
            },
        ));
    }
}

/// Every real-shape op on `b`.
fn run_real_shapes<B: Backend>(b: &B) -> Vec<Timed> {
    let mut rng = Rng(0x1405_7b7e_f767_814f);
    let mut out = Vec::new();
    real_matmuls(b, &mut rng, &mut out);
    real_row_ops(b, &mut rng, &mut out);
    real_attention(b, &mut rng, &mut out);
    decode_attention(b, &mut rng, &mut out);
    out
}

#[test]
fn real_shapes_match_the_cpu_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::shape_tests::real_shapes_match_the_cpu_when_a_gpu_is_present",
        &[],
        "cuda:0 decode attention 16/2 heads of 128, q8_0/q4_0 cache, contexts [8192, 700, 33]",
    );
}

/// Ops at real models' shapes against the CPU backend, with how long each took on the GPU
/// (emulated on the fake driver: seconds, where a GPU takes microseconds).
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn real_shapes_match_the_cpu_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    let strip = |v: Vec<Timed>| -> Vec<(String, f32, Vec<f32>)> {
        v.into_iter().map(|(n, t, r, _)| (n, t, r)).collect()
    };
    let want = run_real_shapes(&cpu);
    let got = run_real_shapes(&gpu);
    for (name, _, _, seconds) in &got {
        println!("cuda:0 {name}: {seconds:.2} s");
    }
    let failures = compare_results("cuda:0", &strip(want), &strip(got));
    assert!(failures.is_empty(), "{failures:#?}");
}
