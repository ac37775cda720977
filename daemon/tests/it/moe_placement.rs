//! Expert placement (`--cpu-moe`, `--n-cpu-moe N`) on CPU devices standing in for a GPU and the
//! host: a tiny qwen3moe and a tiny mixtral model from make-model give bit-identical logits and
//! greedy tokens on one device, split 1,1 over two devices, with every layer's experts on
//! another device than the attention, and with the first layer's experts there only; and a
//! generation running across live re-splits that change `--n-cpu-moe` (with and without
//! layers moving) gives the logits of an undisturbed run, each device's memory returned.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use llmd::engine::sampler::argmax;
use llmd::model::load::{build_pipeline_with_experts, ExpertPlacement, OpenedModel, StageSpec};
use llmd::model::moe::scratch_bytes;
use llmd::model::resplit::{layout_of, resplit, Layout, LiveSequence};
use llmd::model::{Batch, Pipeline, StageBackend};
use llmd_kernels::backend::{CpuBackend, DeviceMemory};
use llmd_kernels::cpu::ThreadPool;

/// Prompt tokens and tokens generated greedily.
const PROMPT: [u32; 6] = [16, 7932, 5805, 3678, 1551, 9424];
const N_GEN: usize = 12;

fn cpu(name: &str) -> StageBackend {
    let pool = Arc::new(ThreadPool::new(2).expect("threads"));
    StageBackend::Cpu(Arc::new(CpuBackend::new(
        name,
        DeviceMemory::new(u64::MAX),
        pool,
    )))
}

/// How to place the model: stages (device, layers, head) and the experts' device and layers.
struct Placement {
    stages: Vec<(StageBackend, Range<usize>, bool)>,
    experts: Option<(StageBackend, Range<usize>)>,
}

/// What a run gives: the prompt's logits (every position), the greedy continuation's tokens,
/// and per stage the device and layers of the experts it holds elsewhere.
type Run = (Vec<f32>, Vec<u32>, Vec<Option<(String, Range<usize>)>>);

/// Runs the prompt and the greedy continuation with `place`.
fn run(file: &Path, place: Placement) -> Run {
    let model = OpenedModel::open(file).expect("open").with_context(64);
    let n_vocab = model.config.n_vocab;
    let prompt: Vec<u32> = PROMPT.iter().map(|t| t % n_vocab as u32).collect();
    let stages = place
        .stages
        .into_iter()
        .map(|(backend, layers, head)| StageSpec {
            backend,
            layers,
            head,
        })
        .collect();
    let experts = place
        .experts
        .map(|(backend, layers)| ExpertPlacement { backend, layers });
    let mut p = build_pipeline_with_experts(&model, stages, experts.as_ref(), 64, 8, |_, _| {})
        .expect("pipeline");
    let held = p
        .stages()
        .iter()
        .map(|s| s.experts_elsewhere().map(|(d, l, _)| (d, l)))
        .collect();
    p.add_sequence(1, prompt.len() + N_GEN + 1).expect("kv");
    let mut batch = Batch::default();
    for (i, &t) in prompt.iter().enumerate() {
        batch.push(t, i as u32, 1, true);
    }
    let mut logits = Vec::new();
    p.forward(&batch, &mut logits).expect("forward");
    let prompt_logits = logits.clone();
    let mut tokens = Vec::new();
    let mut last = logits[(prompt.len() - 1) * n_vocab..].to_vec();
    for i in 0..N_GEN {
        let t = argmax(&last);
        tokens.push(t);
        let mut batch = Batch::default();
        batch.push(t, (prompt.len() + i) as u32, 1, true);
        p.forward(&batch, &mut last).expect("forward");
    }
    (prompt_logits, tokens, held)
}

/// Writes make-model's tiny `arch` model to `file`.
fn make_model(arch: &str, file: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args([
            "make-model",
            "--arch",
            arch,
            "--type",
            "q8_0",
            "--seed",
            "3",
            "-o",
        ])
        .arg(file)
        .output()
        .expect("make-model");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(arch: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{arch}.gguf"));
    make_model(arch, &file);
    let n_layer = OpenedModel::open(&file).expect("open").config.n_layer;
    assert!(n_layer >= 2, "the cases need two layers");

    let one = run(
        &file,
        Placement {
            stages: vec![(cpu("cpu:0"), 0..n_layer, true)],
            experts: None,
        },
    );
    let split = run(
        &file,
        Placement {
            stages: vec![
                (cpu("cpu:0"), 0..n_layer / 2, false),
                (cpu("cpu:1"), n_layer / 2..n_layer, true),
            ],
            experts: None,
        },
    );
    let (gpu, host) = (cpu("cpu:0"), cpu("cpu:1"));
    let cpu_moe = run(
        &file,
        Placement {
            stages: vec![(gpu, 0..n_layer, true)],
            experts: Some((host, 0..n_layer)),
        },
    );
    let n_cpu_moe_1 = run(
        &file,
        Placement {
            stages: vec![
                (cpu("cpu:0"), 0..n_layer / 2, false),
                (cpu("cpu:2"), n_layer / 2..n_layer, true),
            ],
            experts: Some((cpu("cpu:1"), 0..1)),
        },
    );
    assert_eq!(cpu_moe.2, vec![Some(("cpu:1".to_string(), 0..n_layer))]);
    assert_eq!(n_cpu_moe_1.2[0], Some(("cpu:1".to_string(), 0..1)));
    assert_eq!(n_cpu_moe_1.2[1], None);
    for (name, other) in [
        ("split 1,1", &split),
        ("--cpu-moe", &cpu_moe),
        ("--n-cpu-moe 1", &n_cpu_moe_1),
    ] {
        assert!(
            one.0 == other.0,
            "{arch} {name}: prompt logits differ from one device"
        );
        assert_eq!(one.1, other.1, "{arch} {name}: greedy tokens differ");
    }
}

#[test]
fn qwen3moe_gives_identical_tokens_on_one_device_split_and_with_cpu_experts() {
    check("qwen3moe");
}

#[test]
fn mixtral_gives_identical_tokens_on_one_device_split_and_with_cpu_experts() {
    check("mixtral");
}

/// Feeds `tokens` from position `pos` to sequence 1 and returns the last row's logits.
fn step(p: &mut Pipeline, tokens: &[u32], pos: usize) -> Vec<f32> {
    let mut batch = Batch::default();
    for (i, &t) in tokens.iter().enumerate() {
        batch.push(t, (pos + i) as u32, 1, i + 1 == tokens.len());
    }
    let mut logits = Vec::new();
    p.forward(&batch, &mut logits).expect("forward");
    logits
}

#[test]
fn a_live_resplit_moves_experts_to_and_from_the_host_and_the_tokens_stay_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("qwen3moe.gguf");
    make_model("qwen3moe", &file);
    let model = OpenedModel::open(&file).expect("open").with_context(64);
    let n_layer = model.config.n_layer;
    let n_vocab = model.config.n_vocab as u32;
    assert!(n_layer >= 2, "the cases need two layers");
    let pool = Arc::new(ThreadPool::new(2).expect("threads"));
    let mem: HashMap<&str, Arc<DeviceMemory>> = ["a", "b", "host"]
        .into_iter()
        .map(|n| (n, DeviceMemory::new(u64::MAX)))
        .collect();
    let backends: HashMap<String, StageBackend> = mem
        .iter()
        .map(|(n, m)| {
            let b = CpuBackend::new(*n, Arc::clone(m), Arc::clone(&pool));
            (n.to_string(), StageBackend::Cpu(Arc::new(b)))
        })
        .collect();
    let l = |device: &str, layers: Range<usize>, head| Layout {
        device: device.into(),
        layers,
        head,
    };
    let host = |layers: Range<usize>| ExpertPlacement {
        backend: backends["host"].clone(),
        layers,
    };
    let start = [l("a", 0..n_layer, true)];
    let build = || {
        let stages = start
            .iter()
            .map(|s| StageSpec {
                backend: backends[&s.device].clone(),
                layers: s.layers.clone(),
                head: s.head,
            })
            .collect();
        let mut p =
            build_pipeline_with_experts(&model, stages, None, 64, 8, |_, _| {}).expect("pipeline");
        p.add_sequence(1, 32).expect("kv");
        p
    };
    let prompt: Vec<u32> = PROMPT.iter().map(|t| t % n_vocab).collect();
    let decode: Vec<u32> = (0..5).map(|i| (11 + 97 * i) % n_vocab).collect();

    // Undisturbed: one device, every layer's experts with it.
    let mut reference = build();
    let mut want = vec![step(&mut reference, &prompt, 0)];
    for (i, &t) in decode.iter().enumerate() {
        want.push(step(&mut reference, &[t], prompt.len() + i));
    }
    drop(reference);
    let baseline: HashMap<&str, u64> = mem.iter().map(|(n, m)| (*n, m.used())).collect();

    // --cpu-moe in place; then split 1,1 over a and b with the first layer's experts on the
    // host (layers move, the others' experts come back onto their new devices); then
    // everything on b with every expert home; then --n-cpu-moe 1 while a layer moves back.
    let moves = [
        (
            vec![l("a", 0..n_layer, true)],
            Some(host(0..n_layer)),
            n_layer,
        ),
        (
            vec![
                l("a", 0..n_layer / 2, false),
                l("b", n_layer / 2..n_layer, true),
            ],
            Some(host(0..1)),
            n_layer - 1,
        ),
        (vec![l("b", 0..n_layer, true)], None, 1),
        (
            vec![l("a", 0..1, false), l("b", 1..n_layer, true)],
            Some(host(0..1)),
            1,
        ),
    ];
    let mut p = build();
    let mut got = vec![step(&mut p, &prompt, 0)];
    for (i, &t) in decode.iter().enumerate() {
        if let Some((target, experts, moved)) = moves.get(i) {
            let live = [LiveSequence {
                id: 1,
                len: prompt.len() + i,
                capacity: 32,
                retained: false,
            }];
            let r = resplit(
                &mut p,
                &*model.source,
                target,
                experts.as_ref(),
                &backends,
                &live,
                64,
                8,
            )
            .expect("re-split");
            assert_eq!(layout_of(&p), *target);
            assert_eq!(r.experts_moved, *moved, "step {i}: {r:?}");
            assert!(r.bytes_moved > 0, "step {i}: {r:?}");
            let held: Vec<(String, Range<usize>)> = p.experts_elsewhere();
            let want_held: Vec<(String, Range<usize>)> = experts
                .iter()
                .map(|e| ("host".to_string(), e.layers.clone()))
                .collect();
            assert_eq!(held, want_held, "step {i}");
            let on_host = mem["host"].used() - baseline["host"];
            let held_bytes: u64 = p
                .stages()
                .iter()
                .filter_map(|s| s.experts_elsewhere())
                .map(|(_, _, b)| b)
                .sum();
            assert!(on_host >= held_bytes && held_bytes > 0 || experts.is_none());
        }
        got.push(step(&mut p, &[t], prompt.len() + i));
    }
    assert!(got == want, "logits changed across expert re-splits");
    // Back to every expert home on b and a only: the host's copies are all freed.
    resplit(
        &mut p,
        &*model.source,
        &[l("b", 0..n_layer, true)],
        None,
        &backends,
        &[LiveSequence {
            id: 1,
            len: prompt.len() + decode.len(),
            capacity: 32,
            retained: false,
        }],
        64,
        8,
    )
    .expect("re-split home");
    assert!(p.experts_elsewhere().is_empty());
    assert_eq!(
        mem["host"].used(),
        baseline["host"],
        "the host kept expert bytes"
    );
    assert_eq!(mem["a"].used(), baseline["a"], "a kept bytes");
    // b holds the stage's weights, its cache and its mixture-of-experts buffers, charged as
    // host memory of a CPU device.
    let s = &p.stages()[0];
    let moe = model.config.moe.as_ref().expect("a mixture of experts");
    let buffers = scratch_bytes(moe, model.config.n_embd, 64);
    assert!(buffers > 0);
    assert_eq!(mem["b"].used(), s.weight_bytes() + s.kv_bytes() + buffers);
}

#[test]
fn a_live_resplit_refuses_experts_for_a_dense_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("llama.gguf");
    make_model("llama", &file);
    let model = OpenedModel::open(&file).expect("open").with_context(64);
    let n_layer = model.config.n_layer;
    let a = cpu("a");
    let stages = vec![StageSpec {
        backend: a.clone(),
        layers: 0..n_layer,
        head: true,
    }];
    let mut p =
        build_pipeline_with_experts(&model, stages, None, 64, 8, |_, _| {}).expect("pipeline");
    let backends = HashMap::from([("a".to_string(), a.clone())]);
    let target = [Layout {
        device: "a".into(),
        layers: 0..n_layer,
        head: true,
    }];
    let experts = ExpertPlacement {
        backend: a,
        layers: 0..1,
    };
    let err = resplit(
        &mut p,
        &*model.source,
        &target,
        Some(&experts),
        &backends,
        &[],
        64,
        8,
    )
    .expect_err("a dense model has no experts to move");
    assert!(err.to_string().contains("has none"), "{err}");
}
