//! Expert placement (`--cpu-moe`, `--n-cpu-moe N`) on CPU devices standing in for a GPU and the
//! host: a tiny qwen3moe and a tiny mixtral model from make-model give bit-identical logits and
//! greedy tokens on one device, split 1,1 over two devices, with every layer's experts on
//! another device than the attention, and with the first layer's experts there only.

use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use llmd::engine::sampler::argmax;
use llmd::model::load::{build_pipeline_with_experts, ExpertPlacement, OpenedModel, StageSpec};
use llmd::model::{Batch, StageBackend};
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

fn check(arch: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{arch}.gguf"));
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
        .arg(&file)
        .output()
        .expect("make-model");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
