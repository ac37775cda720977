//! The mixture-of-experts ops of the GPU: the routed matmul (`mul_mat_vec_id_<type>_q8_1`,
//! [`Backend::matmul_id`], its expert ids read from device memory) against each pair multiplied
//! alone by the plain matmul, for every block-quantized type: on the CPU backend (2e-2: the CPU
//! quantizes activations to ggml's partner format, the GPU to Q8_1, as in `type_tests`) and on
//! the GPU itself (1e-6: the same item dot products in the same order), gate/up-shaped calls
//! (each token's row read by its `k` pairs) and down-shaped ones (each pair's own row); the
//! routing (`moe_route_f32`, [`Backend::route_experts`]) against [`Routing::route`] on the host,
//! and the weighted sum (`moe_combine_f32`, [`Backend::moe_combine`]) against the CPU backend's
//! host arithmetic, both bit for bit; the fused steps (gate and up in one launch, the activation
//! with the down's quantization, the down summed into the residual,
//! [`Backend::gated_matmul_id_combine`], and the norm, router, routing, gate and up,
//! [`Backend::norm_route_pair`]) against the single ops they stand for, bit for bit. Through the
//! real `CudaBackend` on the fake driver in CI.

use std::sync::Arc;

use super::tests::{acts, compare_results, read};
use super::type_tests::{upload_bytes, weight_data};
use super::types::{MatVec, CUDA_TYPES};
use super::*;
use crate::backend::{CpuBackend, DeviceMemory, RouteBuffers, RouteWeights};
use crate::cpu::ThreadPool;
use crate::moe::Routing;
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
/// Experts each token uses.
const N_USED: usize = IDS.len() / N_TOKENS;

/// `ids` as the device holds expert ids: exact f32 values.
fn id_acts<B: Backend>(b: &B, ids: &[u32]) -> B::Activations {
    acts(b, &ids.iter().map(|&id| id as f32).collect::<Vec<_>>())
}

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
                let ids = id_acts(b, &IDS);
                b.matmul_id(&ws, &x, N_TOKENS, N_USED, x_per_pair, &ids, &mut out)
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

/// The fused routed products of `b` against the single ops they stand for (the trait's
/// compositions, `crate::backend::moe`), for Q4_K experts: gate and up in one launch
/// ([`Backend::matmul_id_pair`]) and the activation fused into the down's quantization
/// ([`Backend::gated_matmul_id`]), the down summed into the residual in the same launch
/// ([`Backend::gated_matmul_id_combine`]) and the norm, router and routing before gate and up
/// ([`Backend::norm_route_pair`]); the same dot products of the same Q8_1 values, so equal.
fn check_fused_routed<B: Backend>(b: &B) -> Vec<String> {
    let mut rng = Rng(0xf05e_d000_0000_0003);
    let t = super::types::cuda_type(GgmlType::Q4_K).expect("Q4_K");
    let experts = |rng: &mut Rng, rows: usize, cols: usize| -> Vec<B::Weight> {
        (0..N_EXPERT)
            .map(|_| upload_bytes(b, t.ty, rows, cols, &weight_data(t, rows, cols, rng)))
            .collect()
    };
    let (ff, d) = (256, COLS);
    let (gate, up, down) = (
        experts(&mut rng, ff, d),
        experts(&mut rng, ff, d),
        experts(&mut rng, d, ff),
    );
    let x = acts(b, &rng.f32s(N_TOKENS * d, 1.0));
    let ids = id_acts(b, &IDS);
    let pairs = IDS.len();
    let alloc = |len| b.alloc_activations(len).expect("alloc");
    let (mut g1, mut u1, mut g2, mut u2) = (
        alloc(pairs * ff),
        alloc(pairs * ff),
        alloc(pairs * ff),
        alloc(pairs * ff),
    );
    b.matmul_id_pair(&gate, &up, &x, N_TOKENS, N_USED, &ids, &mut g1, &mut u1)
        .expect("matmul_id_pair");
    b.matmul_id(&gate, &x, N_TOKENS, N_USED, false, &ids, &mut g2)
        .expect("matmul_id gate");
    b.matmul_id(&up, &x, N_TOKENS, N_USED, false, &ids, &mut u2)
        .expect("matmul_id up");
    let mut failures = Vec::new();
    for (what, one, two) in [("gate", &g1, &g2), ("up", &u1, &u2)] {
        if read(b, one, pairs * ff) != read(b, two, pairs * ff) {
            failures.push(format!("matmul_id_pair {what} differs from matmul_id"));
        }
    }
    let (mut o1, mut o2) = (alloc(pairs * d), alloc(pairs * d));
    let act = GatedActivation::Silu;
    b.gated_matmul_id(
        &mut g1, &u1, ff, act, &down, N_TOKENS, N_USED, &ids, &mut o1,
    )
    .expect("gated_matmul_id");
    b.gated_activation(&mut g2, &u2, pairs * ff, act)
        .expect("activation");
    b.matmul_id(&down, &g2, N_TOKENS, N_USED, true, &ids, &mut o2)
        .expect("matmul_id down");
    let (fused, single) = (read(b, &o1, pairs * d), read(b, &o2, pairs * d));
    if fused != single || fused.iter().any(|v| !v.is_finite()) {
        failures.push("gated_matmul_id differs from the activation and matmul_id".into());
    }
    // The down summed into the residual in one launch against the down and `moe_combine`, with
    // and without a shared expert (random gate and up again: the fused activation left `g1`
    // unspecified).
    let mut rng = Rng(0xf05e_d000_0000_0004);
    let (gate_v, up_v) = (rng.f32s(pairs * ff, 1.0), rng.f32s(pairs * ff, 1.0));
    let route_w = acts(b, &rng.f32s(pairs, 1.0));
    let residual = rng.f32s(N_TOKENS * d, 1.0);
    let (mlp, logit) = (
        acts(b, &rng.f32s(N_TOKENS * d, 2.0)),
        acts(b, &rng.f32s(N_TOKENS, 3.0)),
    );
    for shared in [None, Some((&mlp, &logit))] {
        let mut sums = Vec::new();
        for fused in [true, false] {
            let (mut g, u) = (acts(b, &gate_v), acts(b, &up_v));
            let mut x = acts(b, &residual);
            let mut scratch = alloc(pairs * d);
            if fused {
                b.gated_matmul_id_combine(
                    &mut g,
                    &u,
                    ff,
                    act,
                    &down,
                    N_TOKENS,
                    N_USED,
                    &ids,
                    &route_w,
                    d,
                    shared,
                    &mut scratch,
                    &mut x,
                )
                .expect("gated_matmul_id_combine");
            } else {
                crate::backend::moe::gated_matmul_id_combine(
                    b,
                    &mut g,
                    &u,
                    ff,
                    act,
                    &down,
                    N_TOKENS,
                    N_USED,
                    &ids,
                    &route_w,
                    d,
                    shared,
                    &mut scratch,
                    &mut x,
                )
                .expect("gated_matmul_id and moe_combine");
            }
            sums.push(read(b, &x, N_TOKENS * d));
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if bits(&sums[0]) != bits(&sums[1]) || sums[0].iter().any(|v| !v.is_finite()) {
            failures.push(format!(
                "gated_matmul_id_combine (shared expert: {}) differs from gated_matmul_id and \
                 moe_combine",
                shared.is_some()
            ));
        }
    }
    failures.extend(check_norm_route_pair(b, &gate, &up, d, ff));
    failures
}

/// [`Backend::norm_route_pair`] of `b` against the single ops it stands for (the norm, the
/// router's product, the routing, the routed gate and up), for an F32 router (as llama-quantize
/// leaves `ffn_gate_inp`) and a Q4_K one: the same values bit for bit.
fn check_norm_route_pair<B: Backend>(
    b: &B,
    gate: &[B::Weight],
    up: &[B::Weight],
    d: usize,
    ff: usize,
) -> Vec<String> {
    let mut rng = Rng(0xf05e_d000_0000_0005);
    let f32_weight = |rows: usize, cols: usize, values: &[f32]| {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        upload_bytes(b, GgmlType::F32, rows, cols, &bytes)
    };
    let norm = f32_weight(1, d, &rng.f32s(d, 1.0));
    let q4k = super::types::cuda_type(GgmlType::Q4_K).expect("Q4_K");
    let routers = [
        ("F32", f32_weight(N_EXPERT, d, &rng.f32s(N_EXPERT * d, 0.1))),
        (
            "Q4_K",
            upload_bytes(
                b,
                GgmlType::Q4_K,
                N_EXPERT,
                d,
                &weight_data(q4k, N_EXPERT, d, &mut rng),
            ),
        ),
    ];
    let x = acts(b, &rng.f32s(N_TOKENS * d, 1.0));
    let routing = Routing {
        n_expert: N_EXPERT,
        n_used: N_USED,
        normalize: true,
    };
    let pairs = N_TOKENS * N_USED;
    let mut failures = Vec::new();
    for (what, router) in &routers {
        let mut runs = Vec::new();
        for fused in [true, false] {
            let alloc = |len| b.alloc_activations(len).expect("alloc");
            let mut bufs = [
                alloc(N_TOKENS * d),
                alloc(N_TOKENS * N_EXPERT),
                alloc(pairs),
                alloc(pairs),
                alloc(pairs * ff),
                alloc(pairs * ff),
            ];
            let [normed, logits, ids, weights, g, u] = &mut bufs;
            let w = RouteWeights {
                norm: &norm,
                router,
                gate,
                up,
            };
            let out = RouteBuffers {
                normed,
                logits,
                ids,
                weights,
                gate: g,
                up: u,
            };
            let eps = 1e-6;
            if fused {
                b.norm_route_pair(&x, w, &routing, N_TOKENS, d, eps, out)
                    .expect("norm_route_pair");
            } else {
                crate::backend::moe::norm_route_pair(b, &x, w, &routing, N_TOKENS, d, eps, out)
                    .expect("the single ops");
            }
            let lens = [
                N_TOKENS * d,
                N_TOKENS * N_EXPERT,
                pairs,
                pairs,
                pairs * ff,
                pairs * ff,
            ];
            let values: Vec<Vec<u32>> = bufs
                .iter()
                .zip(lens)
                .map(|(a, len)| read(b, a, len).iter().map(|v| v.to_bits()).collect())
                .collect();
            runs.push(values);
        }
        let names = ["normed", "probabilities", "ids", "weights", "gate", "up"];
        for ((name, fused), single) in names.iter().zip(&runs[0]).zip(&runs[1]) {
            if fused != single {
                failures.push(format!(
                    "norm_route_pair ({what} router): {name} differs from the single ops"
                ));
            }
        }
        if runs[0][4].iter().any(|&v| !f32::from_bits(v).is_finite()) {
            failures.push(format!("norm_route_pair ({what} router): gate not finite"));
        }
    }
    failures
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
    failures.extend(check_fused_routed(&gpu));

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
        .matmul_id(
            std::slice::from_ref(&f),
            &x,
            2,
            1,
            false,
            &id_acts(&gpu, &[0, 0]),
            &mut out,
        )
        .expect_err("f16 experts");
    assert!(
        refused.to_string().contains("no routed kernel"),
        "{refused}"
    );
    // An id that names no expert (the routing never writes one) gives NaN rows, not a read
    // outside the table.
    let q = [q];
    gpu.matmul_id(&q, &x, 2, 1, false, &id_acts(&gpu, &[0, 1]), &mut out)
        .expect("matmul_id");
    let values = read(&gpu, &out, 2 * ROWS);
    assert!(values[..ROWS].iter().all(|v| v.is_finite()), "{values:?}");
    assert!(values[ROWS..].iter().all(|v| v.is_nan()), "{values:?}");
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

/// Router logits of `n` tokens over `e` experts: random, with runs of equal logits (ties the
/// top-k must break towards the lower expert) and a token whose logits are all equal.
fn router_logits(rng: &mut Rng, n: usize, e: usize) -> Vec<f32> {
    let mut logits = rng.f32s(n * e, 4.0);
    for t in 0..n {
        let row = &mut logits[t * e..(t + 1) * e];
        match t % 3 {
            // Every expert equally likely.
            0 if t > 0 => row.fill(0.5),
            // A few experts tied with the best.
            1 => {
                let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for _ in 0..3 {
                    row[rng.below(e)] = best;
                }
            }
            _ => {}
        }
    }
    logits
}

/// The device routing of random logits against [`Routing::route`] on the host, for expert
/// counts 8 to 128 and 1 to 8 experts used, normalised or not: the same experts in the same
/// slots, the same weights and probabilities, bit for bit.
fn check_routing<B: Backend>(b: &B) -> Vec<String> {
    let mut rng = Rng(0x70c4_11ed_5eed_0001);
    let mut failures = Vec::new();
    for (e, k) in [
        (8, 1),
        (8, 2),
        (16, 4),
        (60, 4),
        (64, 8),
        (128, 8),
        (128, 1),
    ] {
        for normalize in [true, false] {
            let routing = Routing {
                n_expert: e,
                n_used: k,
                normalize,
            };
            let n = 7;
            let logits = router_logits(&mut rng, n, e);
            let mut probs = logits.clone();
            let (mut want_ids, mut want_w) = (vec![0u32; n * k], vec![0.0f32; n * k]);
            routing
                .route(&mut probs, n, &mut want_ids, &mut want_w)
                .expect("host routing");
            let mut dev_logits = acts(b, &logits);
            let mut ids = b.alloc_activations(n * k).expect("alloc");
            let mut weights = b.alloc_activations(n * k).expect("alloc");
            b.route_experts(&routing, &mut dev_logits, n, &mut ids, &mut weights)
                .expect("route_experts");
            let got_ids: Vec<u32> = read(b, &ids, n * k).iter().map(|&v| v as u32).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("{e} experts, {k} used, normalize {normalize}");
            if got_ids != want_ids {
                failures.push(format!("{what}: ids {got_ids:?}, host {want_ids:?}"));
            }
            if bits(&read(b, &weights, n * k)) != bits(&want_w) {
                failures.push(format!("{what}: weights differ from the host's"));
            }
            if bits(&read(b, &dev_logits, n * e)) != bits(&probs) {
                failures.push(format!("{what}: probabilities differ from the host's"));
            }
        }
    }
    failures
}

/// The weighted sum into a residual of `N` tokens, with and without a shared expert, as `b`
/// computes it.
fn run_combine<B: Backend>(b: &B) -> Vec<Vec<f32>> {
    let mut rng = Rng(0xc0b1_7e00_0000_0002);
    let (n, k, d) = (3, 4, 40);
    let down = acts(b, &rng.f32s(n * k * d, 2.0));
    let weights = acts(b, &rng.f32s(n * k, 1.0));
    let mlp = acts(b, &rng.f32s(n * d, 2.0));
    let gate = acts(b, &rng.f32s(n, 3.0));
    let residual = rng.f32s(n * d, 1.0);
    let mut results = Vec::new();
    for shared in [None, Some((&mlp, &gate))] {
        let mut x = acts(b, &residual);
        b.moe_combine(&down, &weights, n, k, d, shared, &mut x)
            .expect("moe_combine");
        results.push(read(b, &x, n * d));
    }
    results
}

/// The comparisons below on the fake driver.
#[test]
fn routing_and_combine_match_the_host_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::moe_tests::routing_and_combine_match_the_host_when_a_gpu_is_present",
        &[],
        "cuda:0 routing and combine checked",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn routing_and_combine_match_the_host_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    // The exponentials are the platform's: the emulation's are the host's, a GPU's may differ
    // in the last bit, so bit equality is promised on the fake driver only.
    let exact = llmd_testkit::fake_cuda::on_fake_driver();
    let failures = check_routing(&gpu);
    assert!(!exact || failures.is_empty(), "{failures:#?}");
    let (want, got) = (run_combine(&cpu), run_combine(&gpu));
    for (w, g) in want.iter().zip(&got) {
        for (a, b) in w.iter().zip(g) {
            let close = (a - b).abs() <= 1e-6 * a.abs().max(1.0);
            assert!(
                if exact {
                    a.to_bits() == b.to_bits()
                } else {
                    close
                },
                "{a} vs {b}"
            );
        }
    }
    let too_many = Routing {
        n_expert: 64,
        n_used: crate::moe::MAX_DEVICE_USED + 1,
        normalize: true,
    };
    let mut l = gpu.alloc_activations(64).expect("alloc");
    let mut i = gpu.alloc_activations(64).expect("alloc");
    let mut w = gpu.alloc_activations(64).expect("alloc");
    let refused = gpu
        .route_experts(&too_many, &mut l, 1, &mut i, &mut w)
        .expect_err("33 experts used");
    assert!(refused.to_string().contains("at most 32 used"), "{refused}");
    println!("cuda:0 routing and combine checked");
}

/// The host fallbacks of the CPU backend: its routing is [`Routing::route`]'s, its sums finite.
#[test]
fn cpu_routing_and_combine_are_the_host_arithmetic() {
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let failures = check_routing(&cpu);
    assert!(failures.is_empty(), "{failures:#?}");
    let sums = run_combine(&cpu);
    assert_ne!(sums[0], sums[1], "the shared expert adds something");
    assert!(sums.iter().flatten().all(|v| v.is_finite()));
}
