//! Whole models on the GPU against the CPU backend: tiny random models of every architecture,
//! weight type and mix (F32 to Q2_K and IQ4_XS) and rope scaling (Llama 3.1's factors, linear,
//! YaRN, Phi-3's long factors), made here with `llmd make-model`'s writer, give the logits of a
//! 64-token sequence at every position, once as one prefill batch (the GEMM path) and once token
//! by token (the matrix-vector and decode-attention kernels), through `cuda:0` and through
//! `cuda:0` named twice as two pipeline stages split 1,1. The GPU tests are `#[ignore]`d (they
//! need CUDA) and their launchers run them on the fake driver; the harness itself is checked on
//! the CPU (prefill against decode), so its tolerances are known to hold between two correct
//! paths.
//!
//! Tolerance: the largest difference at a position, over the spread (max - min) of the CPU's
//! logits there. Quantized weights: both backends quantize activations to 8 bits, in different
//! block formats (and the GEMM path not at all), so 4% of the spread; F32/F16/BF16 weights: 1%
//! (BF16: the CPU rounds activations to bf16 as ggml does, the GPU keeps f32 or f16; 0.23%
//! measured on the fake driver). The same with quantized KV caches (cases with
//! [`Case::kv`] set): both backends quantize (and rotate) keys and values identically, so only
//! a value on a rounding boundary may land one step apart.

use std::sync::Arc;

use clap::Parser;
use llmd_kernels::backend::{CpuBackend, CudaBackend, DeviceMemory, KvType, KvTypes};
use llmd_kernels::cpu::ThreadPool;
use llmd_testkit::fake_cuda::stats;

use llmd::make_model::{self, MakeModelArgs};
use llmd::model::load::{build_pipeline, OpenedModel, StageSpec};
use llmd::model::placement::assign_layers;
use llmd::model::{Batch, Pipeline, StageBackend};

use crate::gpu::{require_cuda, run_on_fake_driver};

/// Tokens in the compared sequence.
const N_TOKENS: usize = 64;

/// `llmd make-model`'s arguments, parsed as on its command line.
#[derive(Parser)]
struct MakeModelCli {
    #[command(flatten)]
    args: MakeModelArgs,
}

/// A tiny random model of `arch` with `ty` weights and the further make-model arguments
/// `extra`, written to `dir`, set up for contexts of [`N_TOKENS`].
pub(crate) fn make(dir: &std::path::Path, arch: &str, ty: &str, extra: &[&str]) -> OpenedModel {
    let path = dir.join(format!("{arch}-{ty}-{}.gguf", extra.join("")));
    let out = path.to_str().expect("utf-8 temp path");
    let argv = [
        "make-model",
        "--arch",
        arch,
        "--preset",
        "tiny",
        "--type",
        ty,
        "--seed",
        "11",
        "--threads",
        "2",
        "-o",
        out,
    ];
    let cli =
        MakeModelCli::try_parse_from(argv.iter().chain(extra)).expect("valid make-model arguments");
    make_model::run(cli.args).expect("make-model");
    OpenedModel::open(&path)
        .expect("open the made model")
        .with_context(N_TOKENS)
}

/// The model on `backends`, its layers split evenly among them (llama.cpp's rule).
pub(crate) fn pipeline(model: &OpenedModel, backends: &[StageBackend]) -> Pipeline {
    let weights = vec![1.0; backends.len()];
    let (ranges, head) = assign_layers(model.config.n_layer, &weights);
    let specs = ranges
        .into_iter()
        .enumerate()
        .filter(|(i, r)| !r.is_empty() || *i == head)
        .map(|(i, layers)| StageSpec {
            backend: backends[i].clone(),
            layers,
            head: i == head,
        })
        .collect();
    build_pipeline(model, specs, N_TOKENS, N_TOKENS, |_, _| {}).expect("pipeline")
}

pub(crate) fn cpu(name: &str) -> StageBackend {
    let pool = Arc::new(ThreadPool::new(2).expect("threads"));
    StageBackend::Cpu(Arc::new(CpuBackend::new(
        name,
        DeviceMemory::new(u64::MAX),
        pool,
    )))
}

fn gpu(name: &str) -> StageBackend {
    gpu_on(name, 0)
}

pub(crate) fn gpu_on(name: &str, ordinal: usize) -> StageBackend {
    StageBackend::Cuda(Arc::new(
        CudaBackend::new(name, ordinal, 8 << 30).expect("open the CUDA device"),
    ))
}

/// Tokens compared in a quick run: still past the GEMM path's 16-token threshold.
const QUICK_TOKENS: usize = 24;

/// A deterministic token sequence within the vocabulary ([`QUICK_TOKENS`] long in a quick run,
/// else [`N_TOKENS`]).
fn tokens(n_vocab: usize) -> Vec<u32> {
    let n = if std::env::var_os(QUICK_ENV).is_some() {
        QUICK_TOKENS
    } else {
        N_TOKENS
    };
    (0..n).map(|i| ((i * 7919 + 13) % n_vocab) as u32).collect()
}

/// Logits at every position of `tokens`: one prefill batch, or one token per step.
fn logits(p: &mut Pipeline, tokens: &[u32], one_batch: bool) -> Vec<Vec<f32>> {
    logits_with(p, tokens, one_batch, |_, _| {})
}

/// [`logits`], calling `between(pipeline, position)` before each batch (to re-split it while the
/// sequence lives).
fn logits_with(
    p: &mut Pipeline,
    tokens: &[u32],
    one_batch: bool,
    mut between: impl FnMut(&mut Pipeline, usize),
) -> Vec<Vec<f32>> {
    let n_vocab = p.config().n_vocab;
    p.add_sequence(1, tokens.len()).expect("KV caches");
    let mut rows = Vec::with_capacity(tokens.len());
    let mut out = Vec::new();
    let chunk = if one_batch { tokens.len() } else { 1 };
    for (c, part) in tokens.chunks(chunk).enumerate() {
        between(p, c * chunk);
        let mut batch = Batch::default();
        for (i, &t) in part.iter().enumerate() {
            batch.push(t, (c * chunk + i) as u32, 1, true);
        }
        out.clear();
        p.forward(&batch, &mut out).expect("forward");
        rows.extend(out.chunks(n_vocab).map(<[f32]>::to_vec));
    }
    p.remove_sequence(1);
    rows
}

/// The worst difference at any position over the reference's spread there, and the positions
/// whose greedy token differs although the reference's top two are further apart than the
/// tolerance allows the difference to be.
pub(crate) fn compare(want: &[Vec<f32>], got: &[Vec<f32>], tol: f32) -> (f32, Vec<usize>) {
    assert_eq!(want.len(), got.len(), "positions");
    let mut worst = 0.0f32;
    let mut flipped = Vec::new();
    for (pos, (w, g)) in want.iter().zip(got).enumerate() {
        assert_eq!(w.len(), g.len(), "vocabulary");
        let (lo, hi) = w
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let spread = (hi - lo).max(1e-6);
        let diff = w
            .iter()
            .zip(g)
            .map(|(a, b)| {
                if b.is_finite() {
                    (a - b).abs()
                } else {
                    f32::INFINITY
                }
            })
            .fold(0.0f32, f32::max);
        worst = worst.max(diff / spread);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |best, (i, &x)| if x > best.1 { (i, x) } else { best },
                )
                .0
        };
        let top = argmax(w);
        let second = w
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != top)
            .map(|(_, &v)| v)
            .fold(f32::MIN, f32::max);
        if argmax(g) != top && w[top] - second > 2.0 * tol * spread {
            flipped.push(pos);
        }
    }
    (worst, flipped)
}

/// One model compared.
#[derive(Clone, Copy, Debug)]
struct Case {
    /// Architecture.
    arch: &'static str,
    /// Weight type.
    ty: &'static str,
    /// Further make-model arguments (rope scaling, shape).
    extra: &'static [&'static str],
    /// Tolerance (see the module's documentation).
    tol: f32,
    /// KV cache types.
    kv: KvTypes,
    /// Whether a quick run (the fake driver) compares it, and on which devices: `Twin` on
    /// `cuda:0` and on `cuda:0,cuda:0`, `One` on `cuda:0` only (an emulated case costs ~10 s
    /// per device set).
    quick: Quick,
}

/// Which devices a quick run compares a case on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quick {
    /// Not in a quick run.
    No,
    /// `cuda:0` only.
    One,
    /// `cuda:0` and `cuda:0,cuda:0`.
    Twin,
}

/// The cases compared, with their tolerances.
const CASES: &[Case] = &[
    case("llama", "f32", &[], 0.01, Quick::No),
    case("llama", "q8_0", &[], 0.04, Quick::No),
    case("llama", "q4_0", &[], 0.04, Quick::No),
    case("qwen2", "q5_0", &[], 0.04, Quick::No),
    // K-quants with per-head q/k norms.
    case("qwen3", "q4_k_m", &[], 0.04, Quick::Twin),
    // F16 with sliding windows and GeGLU.
    case("gemma3", "f16", &[], 0.01, Quick::Twin),
    case("gemma3", "q6_k", &[], 0.04, Quick::No),
    // The other float and legacy types, llama-quantize's K-quant mixes (Q2_K..Q6_K tensors) and
    // the IQ4 mixes (IQ4_NL / IQ4_XS with Q5_K and Q6_K tensors).
    case("qwen2", "bf16", &[], 0.01, Quick::No),
    case("llama", "q4_1", &[], 0.04, Quick::No),
    case("qwen3", "q5_1", &[], 0.04, Quick::No),
    case("llama", "q2_k", &[], 0.04, Quick::No),
    case("llama", "q3_k_m", &[], 0.04, Quick::One),
    case("qwen2", "q5_k_m", &[], 0.04, Quick::No),
    case("qwen3", "iq4_xs", &[], 0.04, Quick::One),
    case("gemma3", "iq4_nl", &[], 0.04, Quick::No),
    // Quantized KV caches (Q8_0 keys, Q4_0 values, both rotated).
    case_kv("llama", "f32", 0.01, Quick::One),
    // Llama 3.1's frequency factors (a weight the rope kernel reads).
    case(
        "llama",
        "q8_0",
        &["--rope-freqs", "--rope-orig-ctx", "32"],
        0.04,
        Quick::One,
    ),
    case(
        "llama",
        "f16",
        &["--rope-scaling", "linear"],
        0.01,
        Quick::No,
    ),
    // YaRN past its original context, neox layout.
    case(
        "qwen2",
        "q8_0",
        &[
            "--rope-scaling",
            "yarn",
            "--ctx",
            "128",
            "--rope-orig-ctx",
            "32",
        ],
        0.04,
        Quick::One,
    ),
    // Heads of 128 over a 256-wide stream (Mistral Nemo's shape), rope base 1e6.
    case(
        "llama",
        "q4_k_m",
        &["--head-dim", "128", "--rope-base", "1000000"],
        0.04,
        Quick::One,
    ),
    // Fused q/k/v and gate/up split into views, long rope factors, query scaling.
    case(
        "phi3",
        "q8_0",
        &[
            "--rope-scaling",
            "longrope",
            "--ctx",
            "4096",
            "--rope-orig-ctx",
            "32",
        ],
        0.04,
        Quick::One,
    ),
    case("phi3", "f16", &[], 0.01, Quick::No),
    // Mixtures of experts: routing on the host; prefill gathers each expert's rows on the
    // device, decode runs the routed matmul (`mul_mat_vec_id_*`; counted by the fake driver)
    // (Qwen3-MoE with q/k norms; Mixtral, a llama file with experts, in a K-quant mix).
    case("qwen3moe", "q8_0", &[], 0.04, Quick::Twin),
    case("mixtral", "q4_k_m", &[], 0.04, Quick::Twin),
    // Qwen2-MoE: raw routing weights and a sigmoid-gated shared expert run on the layer's
    // device (its 1-row F32 gate a matmul of its own).
    case("qwen2moe", "q8_0", &[], 0.04, Quick::One),
    // Attention and final soft-caps that bend the logits, alternating 16-wide windows.
    case(
        "gemma2",
        "f16",
        &["--attn-softcap", "0.5", "--final-softcap", "1"],
        0.01,
        Quick::One,
    ),
    case("gemma2", "q4_k_m", &[], 0.04, Quick::No),
];

/// A [`Case`] (a `const fn` keeps the table short).
const fn case(
    arch: &'static str,
    ty: &'static str,
    extra: &'static [&'static str],
    tol: f32,
    quick: Quick,
) -> Case {
    Case {
        arch,
        ty,
        extra,
        tol,
        kv: KvTypes::F16,
        quick,
    }
}

/// A [`Case`] with KV caches of [`KV_TYPES`].
const fn case_kv(arch: &'static str, ty: &'static str, tol: f32, quick: Quick) -> Case {
    Case {
        kv: KV_TYPES,
        ..case(arch, ty, &[], tol, quick)
    }
}

/// The harness on the CPU alone: one prefill batch and token-by-token decoding, on one device
/// and split over two, give the same logits (the CPU computes each row the same way whatever
/// the batch), and the comparison flags a difference beyond the tolerance and a flipped greedy
/// token.
#[test]
fn comparison_harness_on_the_cpu() {
    let dir = tempfile::tempdir().expect("temp dir");
    for &Case { arch, ty, tol, .. } in &CASES[..2] {
        let model = make(dir.path(), arch, ty, &[]);
        let toks = tokens(model.config.n_vocab);
        let want = logits(&mut pipeline(&model, &[cpu("cpu:0")]), &toks, false);
        let split = [cpu("cpu:0"), cpu("cpu:1")];
        let mut on_cpus = pipeline(&model, &split);
        let got = logits(&mut on_cpus, &toks, true);
        assert!(
            !on_cpus.uses_page_locked_staging(),
            "CPU devices use ordinary memory"
        );
        assert_eq!(
            on_cpus.device_handoffs(),
            0,
            "CPU stages hand over through the host"
        );
        let (worst, flipped) = compare(&want, &got, tol);
        println!("{arch} {ty}: CPU prefill vs decode, worst {worst:.2e} of the spread");
        assert!(worst <= tol && flipped.is_empty(), "{worst} {flipped:?}");

        // A difference of twice the tolerance at one position is caught, and so is a greedy
        // token changed where the reference is decisive.
        let mut off = got.clone();
        let row = &mut off[5];
        let (lo, hi) = row
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        row[3] += 2.0 * tol * (hi - lo);
        let (worst, _) = compare(&want, &off, tol);
        assert!(worst > tol, "{worst}");
        let mut flip = got.clone();
        let row = &mut flip[9];
        let top = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("logits");
        let decisive = {
            let (lo, hi) = row
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            let second = (0..row.len())
                .filter(|&i| i != top)
                .map(|i| row[i])
                .fold(f32::MIN, f32::max);
            row[top] - second > 2.0 * tol * (hi - lo).max(1e-6)
        };
        row[top] = f32::MIN;
        let (_, flipped) = compare(&want, &flip, tol);
        assert_eq!(flipped.is_empty(), !decisive, "{flipped:?}");
    }
}

/// Quantized KV caches for the cases that test them (keys Q8_0, values Q4_0: both quantizers,
/// both rotations).
const KV_TYPES: KvTypes = KvTypes {
    k: KvType::Q8_0,
    v: KvType::Q4_0,
};

/// Set (by the fake-driver run) to compare only the cases marked for it (see [`Quick`]) over
/// [`QUICK_TOKENS`]: the emulated GPU runs every GPU thread on the CPU.
const QUICK_ENV: &str = "LLMD_GPU_CHECK_QUICK";

/// The comparison below through the CUDA backend on the fake driver (kernels under host
/// emulation), so CI runs whole models through the GPU code path without a GPU.
#[test]
fn gpu_whole_models_on_the_fake_driver() {
    run_on_fake_driver(
        "gpu_check::gpu_whole_models_match_the_cpu_backend",
        &[(QUICK_ENV, "1")],
        // The last case of a quick run.
        "gemma2 f16 --attn-softcap 0.5 --final-softcap 1 on cuda:0, decode",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_whole_models_match_the_cpu_backend() {
    require_cuda();
    let quick = std::env::var_os(QUICK_ENV).is_some();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for c in CASES.iter().filter(|c| !quick || c.quick != Quick::No) {
        let Case {
            arch,
            ty,
            extra,
            tol,
            kv,
            ..
        } = *c;
        let model = make(dir.path(), arch, ty, extra);
        let toks = tokens(model.config.n_vocab);
        let kv_name = (kv != KvTypes::F16).then(|| format!("KV {kv}"));
        let mut reference = pipeline(&model, &[cpu("cpu:0")]).with_kv_types(kv);
        let want_decode = logits(&mut reference, &toks, false);
        let want_prefill = logits(&mut reference, &toks, true);
        let mut devices: Vec<(&str, Vec<StageBackend>)> = vec![("cuda:0", vec![gpu("cuda:0")])];
        if !quick || c.quick == Quick::Twin {
            devices.push(("cuda:0,cuda:0", vec![gpu("cuda:0"), gpu("cuda:0")]));
        }
        let name = [arch, ty]
            .iter()
            .chain(extra)
            .copied()
            .chain(kv_name.as_deref())
            .collect::<Vec<_>>()
            .join(" ");
        for (what, backends) in devices {
            let mut p = pipeline(&model, &backends).with_kv_types(kv);
            for (mode, one_batch, want) in [
                ("prefill", true, &want_prefill),
                ("decode", false, &want_decode),
            ] {
                let routed_before = stats().get("routed_launches").copied();
                let got = logits(&mut p, &toks, one_batch);
                if let (Some(before), false) = (routed_before, one_batch) {
                    // On the fake driver: decoding a mixture of experts routes its experts.
                    let routed = stats()["routed_launches"] - before;
                    let moe = model.config.moe.is_some();
                    assert_eq!(
                        routed > 0,
                        moe,
                        "{name} on {what}: {routed} routed launches"
                    );
                }
                assert!(
                    p.uses_page_locked_staging(),
                    "activations cross in pinned memory"
                );
                if backends.len() > 1 {
                    assert!(p.device_handoffs() > 0, "stages hand over on the GPU");
                }
                let (worst, flipped) = compare(want, &got, tol);
                let ok = worst <= tol && flipped.is_empty();
                println!(
                    "{name} on {what}, {mode}: worst difference {worst:.2e} of the spread \
                     (tolerance {tol:.0e}), greedy flips at decisive positions {flipped:?}{}",
                    if ok { "" } else { "  FAILED" }
                );
                if !ok {
                    failures.push(format!("{name} {what} {mode}: {worst:.2e} {flipped:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The re-split check below on two fake GPUs (peer copies between their contexts).
#[test]
fn gpu_resplit_on_the_fake_driver() {
    run_on_fake_driver(
        "gpu_check::gpu_resplit_moves_weights_and_caches_between_devices",
        &[(QUICK_ENV, "1"), ("LLMD_FAKE_CUDA_DEVICES", "2")],
        "re-split cpu:0 -> cuda:0 -> cuda:1 -> cpu:0",
    );
}

/// A sequence decoded token by token while its model is re-split live, so that its layers and
/// KV caches move host to GPU, GPU to GPU (peer to peer when there are two GPUs, else within one
/// GPU between two backends) and GPU to host, gives the CPU's logits at every position, with f16
/// and with quantized KV caches.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_resplit_moves_weights_and_caches_between_devices() {
    use std::collections::HashMap;

    require_cuda();
    let second = usize::from(llmd_kernels::backend::cuda_available().is_ok_and(|n| n > 1));
    let backends: HashMap<String, StageBackend> =
        [cpu("cpu:0"), gpu("cuda:0"), gpu_on("cuda:1", second)]
            .into_iter()
            .map(|b| (b.device_name().to_string(), b))
            .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let (arch, ty, tol) = ("qwen3", "q4_k_m", 0.04);
    let model = make(dir.path(), arch, ty, &[]);
    // f16 caches, then quantized ones (moved as bytes, still rotated).
    for kv in [KvTypes::F16, KV_TYPES] {
        resplit_while_decoding(&model, &backends, kv, tol);
    }
}

/// Decodes [`tokens`] on `model` while re-splitting it cpu:0 + cuda:0 -> cuda:0 + cuda:1 ->
/// cuda:1 + cpu:0, with KV caches of `kv`, and compares the logits with the CPU's.
fn resplit_while_decoding(
    model: &OpenedModel,
    backends: &std::collections::HashMap<String, StageBackend>,
    kv: KvTypes,
    tol: f32,
) {
    use llmd::model::resplit::{build_layout, layout_of, resplit, Layout, LiveSequence};

    let n_layer = model.config.n_layer;
    let half = n_layer / 2;
    let toks = tokens(model.config.n_vocab);
    let want = logits(
        &mut pipeline(model, &[cpu("cpu:0")]).with_kv_types(kv),
        &toks,
        false,
    );
    let stage = |device: &str, layers: std::ops::Range<usize>, head: bool| Layout {
        device: device.into(),
        layers,
        head,
    };
    // cpu:0 + cuda:0, then cuda:0 + cuda:1 (layers from the host onto cuda:0, from cuda:0 to
    // cuda:1), then cuda:1 + cpu:0 (from cuda:1 to the host).
    let layouts = [
        vec![
            stage("cpu:0", 0..half, false),
            stage("cuda:0", half..n_layer, true),
        ],
        vec![
            stage("cuda:0", 0..half, false),
            stage("cuda:1", half..n_layer, true),
        ],
        vec![
            stage("cuda:1", 0..half, false),
            stage("cpu:0", half..n_layer, true),
        ],
    ];
    let mut p = build_layout(model, backends, &layouts[0], N_TOKENS, N_TOKENS)
        .expect("the first layout's pipeline")
        .with_kv_types(kv);
    let every = toks.len() / layouts.len();
    let capacity = toks.len();
    let got = logits_with(&mut p, &toks, false, |p, pos| {
        let next = pos / every;
        if pos % every != 0 || next == 0 || next >= layouts.len() {
            return;
        }
        let live = [LiveSequence {
            id: 1,
            len: pos,
            capacity,
            retained: false,
        }];
        let target = &layouts[next];
        let r = resplit(
            p,
            &*model.source,
            target,
            None,
            backends,
            &live,
            N_TOKENS,
            N_TOKENS,
        )
        .expect("re-split");
        assert_eq!(layout_of(p), *target);
        assert_eq!((r.through_host, r.sequences), (0, 1), "{r:?}");
        assert!(r.bytes_moved > 0);
    });
    let (worst, flipped) = compare(&want, &got, tol);
    let ok = worst <= tol && flipped.is_empty();
    println!(
        "KV {kv} re-split cpu:0 -> cuda:0 -> cuda:1 -> cpu:0 while decoding: worst difference \
         {worst:.2e} of the spread (tolerance {tol:.0e}), greedy flips {flipped:?}"
    );
    assert!(ok, "KV {kv}: {worst} {flipped:?}");
    // The stages of the last layout decoded from CUDA graphs (the re-split gave them the
    // pipeline's setting): the cuda:1 stage captured its step and replayed it.
    if llmd::model::graphs::graphs_enabled() {
        let (counts, _) = p.graph_counts();
        assert!(
            counts.replays > 0 && counts.refused == 0,
            "graphs after the re-split: {counts:?}"
        );
    }
    for (name, b) in backends {
        if let StageBackend::Cuda(gpu) = b {
            let held = layout_of(&p).iter().any(|l| l.device == *name);
            assert_eq!(gpu.used_bytes() > 0, held, "{name} holds only what it runs");
        }
    }
}
