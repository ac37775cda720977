//! The CUDA backend against the CPU backend, op by op, on the GPU (`#[ignore]`d: their
//! launchers run them on the fake driver), and its host-side helpers on the CPU.

use super::*;
use crate::backend::{kv_cache_bytes, CpuBackend, DeviceMemory, HostKv, KvType};
use crate::cpu::ThreadPool;
use crate::quant::quantize;
use llmd_testkit::Rng;

/// The weight types [`run_ops`] compares (`type_tests` compares the others).
pub(super) const TYPES: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// An attention test case: name, query positions, window, softcap.
type AttentionCase = (&'static str, Vec<u32>, Option<usize>, Option<f32>);

fn upload<B: Backend>(
    b: &B,
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    values: &[f32],
) -> B::Weight {
    let data = quantize(ty, values).expect("quantizable test tensor");
    b.upload_weight(&HostTensor {
        name,
        ty,
        rows,
        cols,
        data: &data,
    })
    .expect("upload")
}

/// A weight's bytes, read back to the host.
fn weight_bytes<B: Backend>(b: &B, w: &B::Weight) -> Vec<u8> {
    let view = b.weight_view(w).expect("view");
    let mut bytes = vec![0; view.bytes.len];
    view.bytes.read_into(&mut bytes).expect("read back");
    bytes
}

pub(super) fn acts<B: Backend>(b: &B, values: &[f32]) -> B::Activations {
    let mut a = b.alloc_activations(values.len()).expect("alloc");
    b.write_activations(&mut a, values).expect("write");
    a
}

pub(super) fn read<B: Backend>(b: &B, a: &B::Activations, len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    b.read_activations(a, &mut out).expect("read");
    out
}

/// Runs every op on deterministic inputs and returns each result by name with the relative
/// tolerance (RMS of the difference over RMS of the CPU result) it must meet.
fn run_ops<B: Backend>(b: &B) -> Vec<(String, f32, Vec<f32>)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut results = Vec::new();
    // 200 rows: with the GPU test's scratch of 64 * 512 floats the GEMM path takes four
    // weight tiles (64, 64, 64 and an edge of 8 rows).
    let (rows, cols) = (200, 512);
    for ty in TYPES {
        let w = upload(b, "w", ty, rows, cols, &rng.f32s(rows * cols, 1.0));
        let copy = b
            .import_weight(&b.weight_view(&w).expect("view"))
            .expect("copy on the device");
        let same = weight_bytes(b, &copy) == weight_bytes(b, &w);
        results.push((
            format!("weight copy {ty}"),
            0.0,
            vec![f32::from(u8::from(same))],
        ));
        // 1, 3 and 8 tokens: matrix-vector kernels (8: a full group of tokens per block);
        // 10 and 70 (>= PREFILL_GEMM_MIN_TOKENS): the matrix-matrix kernels, 70 in two token
        // tiles, the second an edge of 6.
        for n_tokens in [1, 3, 8, 10, 70] {
            let x = acts(b, &rng.f32s(n_tokens * cols, 1.0));
            let mut out = b.alloc_activations(n_tokens * rows).expect("alloc");
            b.matmul(&w, &x, n_tokens, &mut out).expect("matmul");
            // Quantized weights: the CPU quantizes activations to its own 8-bit format, the
            // GPU to Q8_1 (matrix-vector) or not at all (GEMM), so products differ by a
            // fraction of a percent. F16 weights: the CPU rounds activations to f16 (as
            // ggml does), the GPU keeps f32, a relative difference of about 2e-4.
            let tol = match ty {
                GgmlType::F32 => 1e-5,
                GgmlType::F16 => 1e-3,
                _ => 2e-2,
            };
            results.push((
                format!("matmul {ty} x{n_tokens}"),
                tol,
                read(b, &out, n_tokens * rows),
            ));
        }
        let ids = [3u32, 0, 199, 3];
        let mut out = b.alloc_activations(ids.len() * cols).expect("alloc");
        b.embed(&w, &ids, 0.5, &mut out).expect("embed");
        results.push((format!("embed {ty}"), 1e-6, read(b, &out, ids.len() * cols)));
    }

    // F16 with cols % 8 != 0: the GEMM path does not apply and 40 tokens go through the
    // matrix-vector kernel.
    let (f16_rows, f16_cols, n_tokens) = (70, 516, 40);
    let w = upload(
        b,
        "w516",
        GgmlType::F16,
        f16_rows,
        f16_cols,
        &rng.f32s(f16_rows * f16_cols, 1.0),
    );
    let x = acts(b, &rng.f32s(n_tokens * f16_cols, 1.0));
    let mut out = b.alloc_activations(n_tokens * f16_rows).expect("alloc");
    b.matmul(&w, &x, n_tokens, &mut out).expect("matmul");
    results.push((
        format!("matmul f16 {f16_cols} columns x{n_tokens}"),
        1e-3,
        read(b, &out, n_tokens * f16_rows),
    ));

    let (n_rows, dim) = (3, 320);
    let norm_w = upload(b, "norm", GgmlType::F32, 1, dim, &rng.f32s(dim, 1.0));
    let xv = rng.f32s(n_rows * dim, 1.0);
    let mut x = acts(b, &xv);
    let mut into = b.alloc_activations(n_rows * dim).expect("alloc");
    b.rms_norm_into(&x, &norm_w, n_rows, dim, 1e-6, &mut into)
        .expect("rms_norm_into");
    results.push(("rms_norm_into".into(), 1e-5, read(b, &into, n_rows * dim)));
    b.rms_norm(&mut x, &norm_w, n_rows, dim, 1e-6)
        .expect("rms_norm");
    results.push(("rms_norm".into(), 1e-5, read(b, &x, n_rows * dim)));

    let (n_tokens, n_heads, head_dim) = (3, 4, 64);
    let positions = [0u32, 17, 300];
    // Llama-3.1-like factors (1 to 8) over the 32 pairs of a 64-wide head.
    let factors: Vec<f32> = (0..32).map(|i| 1.0 + 7.0 * (i as f32 / 31.0)).collect();
    let factor_w = upload(b, "rope_freqs", GgmlType::F32, 1, 32, &factors);
    let yarn = |mode, n_dims| RopeParams {
        freq_scale: 0.25,
        ext_factor: 1.0,
        attn_factor: 0.9,
        n_ctx_orig: 64,
        ..RopeParams::new(mode, n_dims, 10_000.0)
    };
    let cases = [
        (
            "plain",
            RopeParams::new(RopeMode::Normal, 64, 10_000.0),
            false,
        ),
        (
            "plain",
            RopeParams::new(RopeMode::Neox, 64, 10_000.0),
            false,
        ),
        (
            "plain",
            RopeParams::new(RopeMode::Neox, 32, 10_000.0),
            false,
        ),
        (
            "linear, factors",
            RopeParams {
                freq_scale: 0.5,
                attn_factor: 1.2,
                ..RopeParams::new(RopeMode::Normal, 64, 500_000.0)
            },
            true,
        ),
        ("yarn", yarn(RopeMode::Neox, 64), false),
        ("yarn, factors", yarn(RopeMode::Normal, 64), true),
        ("yarn", yarn(RopeMode::Neox, 32), false),
    ];
    for (what, params, with_factors) in cases {
        let mut x = acts(b, &rng.f32s(n_tokens * n_heads * head_dim, 1.0));
        let ff = with_factors.then_some(&factor_w);
        b.rope(&mut x, n_tokens, n_heads, head_dim, &positions, params, ff)
            .expect("rope");
        results.push((
            format!("rope {what} {:?} {}", params.mode, params.n_dims),
            1e-4,
            read(b, &x, n_tokens * n_heads * head_dim),
        ));
    }
    let short = upload(b, "short", GgmlType::F32, 1, 16, &factors[..16]);
    let mut x = acts(b, &rng.f32s(n_heads * head_dim, 1.0));
    let too_few = b.rope(
        &mut x,
        1,
        n_heads,
        head_dim,
        &positions[..1],
        RopeParams::new(RopeMode::Neox, 64, 10_000.0),
        Some(&short),
    );
    results.push((
        "rope refuses too few frequency factors".into(),
        0.0,
        vec![f32::from(u8::from(too_few.is_err()))],
    ));

    let len = 1000;
    let (av, bv) = (rng.f32s(len, 1.0), rng.f32s(len, 1.0));
    let mut a = acts(b, &av);
    let c = acts(b, &bv);
    b.add(&mut a, &c, len).expect("add");
    results.push(("add".into(), 1e-6, read(b, &a, len)));
    b.scale(&mut a, -1.5, len).expect("scale");
    results.push(("add, scale".into(), 1e-6, read(b, &a, len)));
    let mut capped = acts(b, &av.iter().map(|v| v * 80.0).collect::<Vec<_>>());
    b.softcap(&mut capped, 30.0, len).expect("softcap");
    results.push(("softcap".into(), 1e-6, read(b, &capped, len)));
    let bias = upload(b, "bias", GgmlType::F32, 1, 250, &rng.f32s(250, 1.0));
    b.add_bias(&mut a, &bias, 4).expect("add_bias");
    results.push(("add, scale, add_bias".into(), 1e-6, read(b, &a, len)));
    for act in [GatedActivation::Silu, GatedActivation::Gelu] {
        let mut g = acts(b, &av.iter().map(|v| v * 4.0).collect::<Vec<_>>());
        b.gated_activation(&mut g, &c, len, act).expect("gated");
        // The CPU's GELU goes through ggml's f16 table (input and output rounded to f16),
        // the GPU's is computed in f32: about 3e-4 apart.
        let tol = match act {
            GatedActivation::Silu => 1e-4,
            GatedActivation::Gelu => 1e-3,
        };
        results.push((format!("gated {act:?}"), tol, read(b, &g, len)));
    }

    // KV caches and attention, for every pair of key and value types: GQA 8 query heads
    // over 2 KV heads, prefills of 10 and 5 queries and decodes at position 700 (so the
    // decode kernel splits the context). The stored caches must be the same bytes as the
    // CPU's (both quantize Q8_0 / Q4_0 with the same f32 operations); attention differs by
    // float rounding only (f16 keys: the CPU rounds the query to f16, the GPU keeps f32, as
    // for f16 weights; quantized keys: both quantize the query to Q8_0 and sum integers).
    let (n_heads, n_kv, hd, capacity) = (8, 2, 64, 768);
    let kw = n_kv * hd;
    let qw = n_heads * hd;
    for k in KvType::ALL {
        for v in KvType::ALL {
            let types = KvTypes { k, v };
            let mut kv = b.alloc_kv(capacity, n_kv, hd, types).expect("alloc_kv");
            let fill: Vec<u32> = (0..capacity as u32 - 1).collect();
            for chunk in fill.chunks(256) {
                let k = acts(b, &rng.f32s(chunk.len() * kw, 1.0));
                let v = acts(b, &rng.f32s(chunk.len() * kw, 1.0));
                b.kv_store(&mut kv, &k, &v, 0, chunk).expect("kv_store");
            }
            let len = capacity - 1;
            let host = HostKv::download(&b.kv_view(&kv, len).expect("view")).expect("download");
            let values = |ty: KvType, bytes: &[u8]| -> Vec<f32> {
                let mut out = vec![0.0; len * kw];
                crate::quant::dequantize(ty.ggml_type(), bytes, &mut out).expect("dequantize");
                out
            };
            results.push((format!("kv_store keys {types}"), 0.0, values(k, &host.k)));
            results.push((format!("kv_store values {types}"), 0.0, values(v, &host.v)));
            // A copy on the device and one from the host hold the same keys and values.
            let on_device = b
                .import_kv(&b.kv_view(&kv, len).expect("view"), capacity)
                .expect("copy on the device");
            let from_host = b.import_kv(&host.view(), capacity).expect("upload");
            let same = [&on_device, &from_host].iter().all(|copy| {
                let back =
                    HostKv::download(&b.kv_view(copy, len).expect("view")).expect("download");
                back.k == host.k && back.v == host.v && back.types == types
            });
            // The prefix cache's copy: the first positions of a cache into a new one of another
            // capacity, on the device.
            let part = len / 3;
            let prefix = b
                .import_kv(&b.kv_view(&kv, part).expect("view"), capacity + 32)
                .expect("prefix copy on the device");
            let back =
                HostKv::download(&b.kv_view(&prefix, part).expect("view")).expect("download");
            let (k_row, v_row) = (host.k.len() / len, host.v.len() / len);
            let same = same
                && back.k == host.k[..part * k_row]
                && back.v == host.v[..part * v_row]
                && b.kv_bytes(&prefix) == kv_cache_bytes(capacity + 32, n_kv, hd, types);
            results.push((
                format!("kv copies {types}"),
                0.0,
                vec![f32::from(u8::from(same))],
            ));
            let cases: [AttentionCase; 4] = [
                ("prefill", vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9], None, None),
                (
                    "prefill window softcap",
                    vec![100, 101, 102, 103, 104],
                    Some(3),
                    Some(30.0),
                ),
                ("decode", vec![700], None, None),
                ("decode window", vec![700], Some(100), Some(50.0)),
            ];
            for (what, positions, window, softcap) in cases {
                let first_row = 1;
                let n = first_row + positions.len();
                let q = acts(b, &rng.f32s(n * qw, 1.0));
                let mut out = acts(b, &vec![0.0; n * qw]);
                let params = AttentionParams {
                    n_heads,
                    n_kv_heads: n_kv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    window,
                    softcap,
                };
                b.attention(&q, &on_device, first_row, &positions, params, &mut out)
                    .expect("attention");
                // Quantized keys: the same integer sums on both sides, so only the
                // softmax's and the scales' rounding differs (seen: below 1e-6).
                let tol = if k == KvType::F16 { 1e-3 } else { 1e-5 };
                results.push((
                    format!("attention {what} {types}"),
                    tol,
                    read(b, &out, n * qw),
                ));
            }
        }
    }
    // Heads of 128 (keys rotated in chunks of 128, values of 64) and of 96 (quantized but
    // not rotated: 96 % 64 != 0), a prefill and a decode each.
    let types = KvTypes {
        k: KvType::Q8_0,
        v: KvType::Q4_0,
    };
    for hd in [128, 96] {
        let (n_heads, n_kv, capacity) = (4, 2, 64);
        let (kw, qw) = (n_kv * hd, n_heads * hd);
        let mut kv = b.alloc_kv(capacity, n_kv, hd, types).expect("alloc_kv");
        let fill: Vec<u32> = (0..capacity as u32).collect();
        let k = acts(b, &rng.f32s(capacity * kw, 1.0));
        let v = acts(b, &rng.f32s(capacity * kw, 1.0));
        b.kv_store(&mut kv, &k, &v, 0, &fill).expect("kv_store");
        let host = HostKv::download(&b.kv_view(&kv, capacity).expect("view")).expect("host");
        let bytes: Vec<f32> = host
            .k
            .iter()
            .chain(&host.v)
            .map(|&x| f32::from(x))
            .collect();
        results.push((format!("kv_store bytes {types} d={hd}"), 0.0, bytes));
        for positions in [vec![40u32, 41, 42, 43, 44, 45], vec![63]] {
            let n = positions.len();
            let q = acts(b, &rng.f32s(n * qw, 1.0));
            let mut out = acts(b, &vec![0.0; n * qw]);
            let params = AttentionParams {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window: None,
                softcap: None,
            };
            b.attention(&q, &kv, 0, &positions, params, &mut out)
                .expect("attention");
            results.push((
                format!("attention x{n} {types} d={hd}"),
                1e-5,
                read(b, &out, n * qw),
            ));
        }
    }
    results
}

#[test]
fn cuda_available_gives_a_reason_instead_of_panicking() {
    // SAFETY: only probes whether libcuda can be dlopened.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    match cuda_available() {
        Ok(n) => assert!(
            present && n > 0,
            "Ok({n}) without libcuda or without devices"
        ),
        Err(reason) => {
            assert!(!reason.is_empty());
            if !present {
                assert!(reason.contains("libcuda"), "unclear reason: {reason}");
            }
            let err = CudaBackend::new("cuda:0", 0, 1 << 30).expect_err("no CUDA, no backend");
            assert!(
                matches!(&err, BackendError::Device { device, .. } if device == "cuda:0"),
                "{err}"
            );
        }
    }
}

/// The comparison suite itself must run on the CPU backend (so that a GPU session only
/// measures the GPU), with finite results and exact round trips.
#[test]
fn comparison_suite_runs_on_the_cpu_backend() {
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    let results = run_ops(&cpu);
    assert!(results.len() > 40);
    for (name, _, values) in &results {
        assert!(!values.is_empty(), "{name}");
        assert!(values.iter().all(|v| v.is_finite()), "{name}");
        if name.contains("round trip") || name.contains("refuses") || name.contains("kv copies") {
            assert_eq!(values, &[1.0], "{name}");
        }
    }
    assert_eq!(cpu.used_bytes(), 0, "leases returned on drop");
}

/// The comparison below through the real `CudaBackend` code on the fake driver (the kernels
/// under host emulation), so CI checks argument order and types, launch geometry, buffer
/// offsets and the reused buffers without a GPU.
#[test]
fn cuda_backend_matches_cpu_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::tests::cuda_backend_matches_cpu_when_a_gpu_is_present",
        &[],
        "cuda:0b attention decode window K q4_0 / V q4_0",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn cuda_backend_matches_cpu_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(2).expect("thread pool"));
    let cpu = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    // The same GPU opened twice, as `cuda:0,cuda:0` would. The first multiplies weights in
    // tiles of 64 rows (several per weight), its twin with the default scratch (one tile).
    let mut gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    gpu.gemm_scratch_floats = GEMM_TILE * 512;
    let twin = CudaBackend::new("cuda:0b", 0, 1 << 30).expect("cuda:0 again");
    let want = run_ops(&cpu);
    let mut failures = Vec::new();
    for (backend, got) in [(&gpu, run_ops(&gpu)), (&twin, run_ops(&twin))] {
        failures.extend(compare_results(backend.device_name(), &want, &got));
    }
    assert_eq!(gpu.used_bytes(), 0, "leases returned on drop");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Compares `got` (from `device`) with the CPU's `want`, result by result: the relative RMS
/// error (RMS of the difference over RMS of the CPU result) must be within the result's
/// tolerance and every value finite. Prints each comparison; returns the failures.
pub(super) fn compare_results(
    device: &str,
    want: &[(String, f32, Vec<f32>)],
    got: &[(String, f32, Vec<f32>)],
) -> Vec<String> {
    assert_eq!(got.len(), want.len());
    let mut failures = Vec::new();
    for ((name, tol, expect), (_, _, have)) in want.iter().zip(got) {
        assert_eq!(expect.len(), have.len(), "{name}");
        let diff: f64 = expect
            .iter()
            .zip(have)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let norm: f64 = expect.iter().map(|a| f64::from(*a).powi(2)).sum();
        let rel = (diff / norm.max(1e-30)).sqrt();
        let ok = rel <= f64::from(*tol) && have.iter().all(|v| v.is_finite());
        println!(
            "{device} {name}: relative RMS error {rel:.2e} (tolerance {tol:.0e}){}",
            if ok { "" } else { "  FAILED" }
        );
        if !ok {
            failures.push(format!("{device} {name}: {rel:.2e} > {tol:.0e}"));
        }
    }
    failures
}

/// Direct copies between every pair of device kinds (what a live re-split does with the
/// layers it moves) on two fake GPUs.
#[test]
fn weights_and_kv_caches_move_between_devices_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::tests::weights_and_kv_caches_move_between_devices_when_gpus_are_present",
        &[("LLMD_FAKE_CUDA_DEVICES", "2")],
        "moved through cpu:0 -> cuda:0 -> cuda:0b -> cuda:1 -> cpu:1",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn weights_and_kv_caches_move_between_devices_when_gpus_are_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let pool = Arc::new(ThreadPool::new(1).expect("thread pool"));
    let cpu0 = CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), Arc::clone(&pool));
    let cpu1 = CpuBackend::new("cpu:1", DeviceMemory::new(1 << 30), pool);
    let gpu0 = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    let twin = CudaBackend::new("cuda:0b", 0, 1 << 30).expect("cuda:0 again");
    // The second GPU when there is one (peer copies), else the first again.
    let ordinal = usize::from(cuda_available().is_ok_and(|n| n > 1));
    let gpu1 = CudaBackend::new("cuda:1", ordinal, 1 << 30).expect("second GPU");
    let mut rng = Rng(7);
    let (rows, cols) = (48, 256);
    let w0 = upload(
        &cpu0,
        "w",
        GgmlType::Q4_K,
        rows,
        cols,
        &rng.f32s(rows * cols, 1.0),
    );
    // Quantized keys and values of different types move as they are, byte for byte.
    let (capacity, n_kv, hd, len) = (40, 2, 64, 33);
    let types = KvTypes {
        k: KvType::Q8_0,
        v: KvType::Q4_0,
    };
    let mut kv0 = cpu0.alloc_kv(capacity, n_kv, hd, types).expect("alloc_kv");
    let positions: Vec<u32> = (0..len as u32).collect();
    let k = acts(&cpu0, &rng.f32s(len * n_kv * hd, 1.0));
    let v = acts(&cpu0, &rng.f32s(len * n_kv * hd, 1.0));
    cpu0.kv_store(&mut kv0, &k, &v, 0, &positions)
        .expect("kv_store");
    let want_w = weight_bytes(&cpu0, &w0);
    let want_kv = HostKv::download(&cpu0.kv_view(&kv0, len).expect("view")).expect("read");

    /// Copies the weight and cache from `from` to `to` and checks them there.
    fn hop<A: Backend, B: Backend>(
        from: &A,
        (w, kv): &(A::Weight, A::KvCache),
        to: &B,
        (want_w, want_kv, len, capacity): (&[u8], &HostKv, usize, usize),
    ) -> (B::Weight, B::KvCache) {
        let w2 = to
            .import_weight(&from.weight_view(w).expect("view"))
            .expect("weight copy");
        let kv2 = to
            .import_kv(&from.kv_view(kv, len).expect("view"), capacity)
            .expect("kv copy");
        assert_eq!(
            weight_bytes(to, &w2),
            want_w,
            "weight on {}",
            to.device_name()
        );
        let back = HostKv::download(&to.kv_view(&kv2, len).expect("view")).expect("read");
        assert!(
            back.k == want_kv.k && back.v == want_kv.v && back.types == want_kv.types,
            "KV cache on {}",
            to.device_name()
        );
        assert_eq!(
            to.kv_bytes(&kv2),
            kv_cache_bytes(
                capacity,
                want_kv.n_kv_heads,
                want_kv.head_dim,
                want_kv.types
            )
        );
        (w2, kv2)
    }
    let want = (&want_w[..], &want_kv, len, capacity);
    let on_gpu0 = hop(&cpu0, &(w0, kv0), &gpu0, want);
    let on_twin = hop(&gpu0, &on_gpu0, &twin, want);
    drop(on_gpu0);
    assert_eq!(gpu0.used_bytes(), 0, "the source's memory is returned");
    assert!(twin.used_bytes() > 0);
    let on_gpu1 = hop(&twin, &on_twin, &gpu1, want);
    let on_cpu1 = hop(&gpu1, &on_gpu1, &cpu1, want);
    // The weight still multiplies as it did where it started.
    let x = acts(&cpu1, &rng.f32s(cols, 1.0));
    let mut out = cpu1.alloc_activations(rows).expect("alloc");
    cpu1.matmul(&on_cpu1.0, &x, 1, &mut out).expect("matmul");
    assert!(read(&cpu1, &out, rows).iter().all(|v| v.is_finite()));
    println!("moved through cpu:0 -> cuda:0 -> cuda:0b -> cuda:1 -> cpu:1");
}
