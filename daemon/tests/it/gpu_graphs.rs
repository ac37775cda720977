//! CUDA graphs of decode steps (issue 18) on the strict fake driver: a model decoding several
//! sequences whose batch changes shape (sequences joining and leaving, the attention's key
//! split growing with the context) gives bit for bit the logits it gives with graphs off, and
//! the CPU's within the usual tolerance; the graphs were captured per shape and replayed. With
//! f16 KV caches and with quantized ones (Q8_0, Q4_0), whose store reads each sequence's
//! positions where the step staged them; and with steps of 12 and 20 sequences. The same for
//! mixtures of experts (Qwen3-MoE, Qwen2-MoE with its shared expert), whose decode steps route,
//! multiply and sum their experts on the device, on one stage and split 1,1, and while a layer's
//! experts move to the host and back live (`--n-cpu-moe`).

use std::collections::HashMap;

use llmd::model::load::{ExpertPlacement, OpenedModel};
use llmd::model::resplit::{resplit, Layout, LiveSequence};
use llmd::model::{Batch, Pipeline, SeqId, StageBackend};
use llmd_kernels::backend::{KvType, KvTypes};
use llmd_testkit::fake_cuda::{is_child, stats};

use crate::gpu::{require_cuda, run_on_fake_driver};
use crate::gpu_check::{compare, cpu, gpu_on, make, pipeline};

/// Positions each sequence's KV cache holds (past the 128 keys at which decode attention takes
/// a second key split).
const CONTEXT: usize = 160;
/// The first sequence's prompt: its decode steps cross position 128 in the last phase.
const PROMPT: usize = 116;
/// Prompt tokens per prefill step (`gpu_check::pipeline` takes 64 at most).
const PREFILL_CHUNK: usize = 48;
/// Tolerance against the CPU (a Q4_K_M model, as `gpu_check`'s cases).
const TOL: f32 = 0.04;

/// What happens before a phase of decode steps.
enum Change {
    /// A sequence joins with a prompt of this many tokens.
    Add(SeqId, usize),
    /// A sequence leaves.
    Remove(SeqId),
}

/// The script: changes, then decode steps of every live sequence together.
const SCRIPT: &[(&[Change], usize)] = &[
    (&[Change::Add(1, PROMPT), Change::Add(2, 5)], 6),
    (&[Change::Add(3, 3)], 4),
    (&[Change::Remove(2)], 12),
];

/// A token for sequence `seq` at position `pos`.
fn token(seq: SeqId, pos: usize, n_vocab: u32) -> u32 {
    ((pos as u64 * 7919 + seq * 104_729 + 13) % u64::from(n_vocab)).max(1) as u32
}

/// The mixture-of-experts script: one sequence decoding, then three.
const MOE_SCRIPT: &[(&[Change], usize)] = &[
    (&[Change::Add(1, 12)], 4),
    (&[Change::Add(2, 5), Change::Add(3, 3)], 5),
];

/// Adds sequence `seq` with a KV cache of `context` positions and runs its prompt of `prompt`
/// tokens in chunks (the pipeline takes at most `PREFILL_CHUNK` tokens a step).
fn add_and_prefill(p: &mut Pipeline, seq: SeqId, prompt: usize, context: usize) {
    let n_vocab = p.config().n_vocab as u32;
    p.add_sequence(seq, context).expect("KV caches");
    let mut out = Vec::new();
    for start in (0..prompt).step_by(PREFILL_CHUNK) {
        let mut batch = Batch::default();
        for pos in start..prompt.min(start + PREFILL_CHUNK) {
            batch.push(token(seq, pos, n_vocab), pos as u32, seq, false);
        }
        p.forward(&batch, &mut out).expect("prefill");
    }
}

/// `steps` decode steps of every live sequence of `next` (each with its next position)
/// together; every row's logits appended to `rows`.
fn decode_steps(
    p: &mut Pipeline,
    next: &mut [(SeqId, usize)],
    steps: usize,
    rows: &mut Vec<Vec<f32>>,
) {
    let n_vocab = p.config().n_vocab;
    let mut out = Vec::new();
    for _ in 0..steps {
        let mut batch = Batch::default();
        for (seq, pos) in next.iter_mut() {
            batch.push(token(*seq, *pos, n_vocab as u32), *pos as u32, *seq, true);
            *pos += 1;
        }
        out.clear();
        p.forward(&batch, &mut out).expect("decode step");
        rows.extend(out.chunks(n_vocab).map(<[f32]>::to_vec));
    }
}

/// Runs `script` on `p`: the logits of every decode step's rows, in order.
fn decode_script(p: &mut Pipeline, script: &[(&[Change], usize)]) -> Vec<Vec<f32>> {
    let mut next: Vec<(SeqId, usize)> = Vec::new(); // live sequences and their next position
    let mut rows = Vec::new();
    for (changes, steps) in script {
        for change in *changes {
            match *change {
                Change::Add(seq, prompt) => {
                    add_and_prefill(p, seq, prompt, CONTEXT);
                    next.push((seq, prompt));
                }
                Change::Remove(seq) => {
                    p.remove_sequence(seq);
                    next.retain(|&(s, _)| s != seq);
                }
            }
        }
        decode_steps(p, &mut next, *steps, &mut rows);
    }
    for (seq, _) in next {
        p.remove_sequence(seq);
    }
    rows
}

#[test]
fn gpu_graphs_on_the_fake_driver() {
    run_on_fake_driver(
        "gpu_graphs::gpu_graphs_replay_the_eager_decode",
        // Enough multiprocessors that decode attention splits its keys once past 128.
        &[("LLMD_FAKE_CUDA_SMS", "16")],
        "graphs replay the eager decode",
    );
}

/// KV cache types the script runs with: f16, and the quantized pairs whose store reads each
/// sequence's positions from the staged device buffer (captured since issue 18's second part).
const KV: [KvTypes; 3] = [
    KvTypes::F16,
    KvTypes {
        k: KvType::Q8_0,
        v: KvType::Q8_0,
    },
    KvTypes {
        k: KvType::Q4_0,
        v: KvType::Q4_0,
    },
];

/// Decodes [`SCRIPT`] on the CPU, on cuda:0 with graphs off and on cuda:0 with graphs on, with
/// KV caches of each of [`KV`].
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_graphs_replay_the_eager_decode() {
    require_cuda();
    let dir = tempfile::tempdir().expect("temp dir");
    let model = make(dir.path(), "llama", "q4_k_m", &[]).with_context(CONTEXT);
    for kv in KV {
        replay_the_eager_decode(&model, kv);
    }
    println!("graphs replay the eager decode");
}

/// [`gpu_graphs_replay_the_eager_decode`] with KV caches of `kv`.
fn replay_the_eager_decode(model: &OpenedModel, kv: KvTypes) {
    let want = decode_script(
        &mut pipeline(model, &[cpu("cpu:0")]).with_kv_types(kv),
        SCRIPT,
    );
    let mut eager = pipeline(model, &[gpu_on("cuda:0", 0)])
        .with_graphs(false)
        .with_kv_types(kv);
    let eager_rows = decode_script(&mut eager, SCRIPT);
    let launches_before = stats().get("graph_launches").copied().unwrap_or(0);
    let mut graphed = pipeline(model, &[gpu_on("cuda:0", 0)])
        .with_graphs(true)
        .with_kv_types(kv);
    let graph_rows = decode_script(&mut graphed, SCRIPT);
    assert!(
        graph_rows == eager_rows,
        "KV {kv}: the replayed steps give the eager steps' logits bit for bit"
    );
    let (worst, flipped) = compare(&want, &graph_rows, TOL);
    assert!(
        worst <= TOL && flipped.is_empty(),
        "KV {kv}: against the CPU: worst {worst:.2e}, greedy flips at {flipped:?}"
    );
    let (off, _) = eager.graph_counts();
    assert_eq!((off.captures, off.replays), (0, 0), "graphs off: {off:?}");
    let (on, held) = graphed.graph_counts();
    println!("KV {kv}: graphs {on:?}, {held} held after the script");
    // Shapes: {1,2}, {1,2,3}, {1,3} with one key split, then {1,3} with two; each captured at
    // its second step (the first runs eagerly and grows the kept buffers), replayed after.
    assert_eq!(on.refused, 0, "KV {kv}: {on:?}");
    assert!(on.captures >= 4, "KV {kv}: a graph per shape: {on:?}");
    let steps: u64 = SCRIPT.iter().map(|(_, s)| *s as u64).sum();
    assert_eq!(on.replays + on.eager, steps, "KV {kv}: {on:?}");
    assert!(
        on.replays > on.eager,
        "KV {kv}: most steps replayed: {on:?}"
    );
    assert_eq!(held, 0, "the last sequences' removal dropped the graphs");
    if is_child() {
        let launched = stats().get("graph_launches").copied().unwrap_or(0) - launches_before;
        assert_eq!(
            launched as u64, on.replays,
            "KV {kv}: one graph launch per replayed step"
        );
        assert_eq!(stats().get("pinned_races").copied().unwrap_or(0), 0);
    }
}

/// Sequences decoding together in the wide script's two phases: past the 8 rows of one decode
/// attention launch and of the matrix-vector kernels (attention then launches per sequence, the
/// products run on the int8 tensor-core kernels).
const WIDE: [SeqId; 2] = [12, 20];
/// Decode steps of each wide phase.
const WIDE_STEPS: usize = 4;
/// Positions each sequence's KV cache holds in the wide script but the first.
const WIDE_CONTEXT: usize = 24;
/// The prompts of the wide script's first two sequences: their decode steps cross position 128,
/// where decode attention takes a second key split, the first's in the first phase (a new
/// shape), the second's in the last steps of the second phase (the same shape: every
/// sequence's launch splits as for the longest context, so the graph stays right).
const WIDE_LONG_PROMPTS: [usize; 2] = [126, 122];

/// Runs the wide script on `p`: sequences 1..=12 join (the first two with long prompts, the
/// others with 2 to 4 tokens) and decode together, then 13..=20 join and all 20 decode together; the
/// logits of every decode row.
fn decode_wide(p: &mut Pipeline) -> Vec<Vec<f32>> {
    let mut next: Vec<(SeqId, usize)> = Vec::new();
    let mut rows = Vec::new();
    for count in WIDE {
        for seq in next.len() as SeqId + 1..=count {
            let (prompt, context) = match WIDE_LONG_PROMPTS.get(seq as usize - 1) {
                Some(&long) => (long, CONTEXT),
                None => (2 + seq as usize % 3, WIDE_CONTEXT),
            };
            add_and_prefill(p, seq, prompt, context);
            next.push((seq, prompt));
        }
        decode_steps(p, &mut next, WIDE_STEPS, &mut rows);
    }
    for (seq, _) in next {
        p.remove_sequence(seq);
    }
    rows
}

#[test]
fn gpu_graphs_of_wide_steps_on_the_fake_driver() {
    run_on_fake_driver(
        "gpu_graphs::gpu_graphs_of_wide_steps_replay_the_eager_decode",
        // Enough multiprocessors that decode attention splits its keys once past 128.
        &[("LLMD_FAKE_CUDA_SMS", "16")],
        "wide graphs replay the eager decode",
    );
}

/// Decode steps of 12 and 20 sequences (over 8 rows) are captured and replayed: bit for bit the
/// eager logits (also once one sequence's attention takes a second key split), the CPU's within
/// tolerance, one capture per shape, nothing refused.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_graphs_of_wide_steps_replay_the_eager_decode() {
    require_cuda();
    let dir = tempfile::tempdir().expect("temp dir");
    let model = make(dir.path(), "llama", "q4_k_m", &[]).with_context(CONTEXT);
    let want = decode_wide(&mut pipeline(&model, &[cpu("cpu:0")]));
    let mut eager = pipeline(&model, &[gpu_on("cuda:0", 0)]).with_graphs(false);
    let eager_rows = decode_wide(&mut eager);
    let launches_before = stats().get("graph_launches").copied().unwrap_or(0);
    let mut graphed = pipeline(&model, &[gpu_on("cuda:0", 0)]).with_graphs(true);
    let graph_rows = decode_wide(&mut graphed);
    assert_eq!(
        graph_rows.len(),
        WIDE.iter().sum::<SeqId>() as usize * WIDE_STEPS
    );
    assert!(
        graph_rows == eager_rows,
        "the replayed wide steps give the eager steps' logits bit for bit"
    );
    let (worst, flipped) = compare(&want, &graph_rows, TOL);
    assert!(
        worst <= TOL && flipped.is_empty(),
        "against the CPU: worst {worst:.2e}, greedy flips at {flipped:?}"
    );
    let (on, held) = graphed.graph_counts();
    println!("wide steps: graphs {on:?}, {held} held after the script");
    // Shapes: 12 sequences with one key split, then with two (the first sequence past 128
    // keys), then 20 with two; each shape's first step runs eagerly, its second is captured,
    // the rest replay.
    let steps = (WIDE.len() * WIDE_STEPS) as u64;
    assert_eq!(on.refused, 0, "{on:?}");
    assert_eq!(on.captures, 3, "a graph per shape: {on:?}");
    assert_eq!(on.eager, 3, "{on:?}");
    assert_eq!(on.replays + on.eager, steps, "{on:?}");
    if is_child() {
        let launched = stats().get("graph_launches").copied().unwrap_or(0) - launches_before;
        assert_eq!(
            launched as u64, on.replays,
            "one graph launch per replayed step"
        );
        assert_eq!(stats().get("pinned_races").copied().unwrap_or(0), 0);
    }
    println!("wide graphs replay the eager decode");
}

#[test]
fn gpu_moe_graphs_on_the_fake_driver() {
    run_on_fake_driver(
        "gpu_graphs::gpu_moe_graphs_replay_the_eager_decode",
        &[],
        "mixture-of-experts graphs replay the eager decode",
    );
}

/// Decodes [`MOE_SCRIPT`] with tiny Qwen3-MoE and Qwen2-MoE models on the CPU, and on cuda:0
/// (one stage, and two stages split 1,1) with graphs off and on.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_moe_graphs_replay_the_eager_decode() {
    require_cuda();
    let dir = tempfile::tempdir().expect("temp dir");
    for arch in ["qwen3moe", "qwen2moe"] {
        let model = make(dir.path(), arch, "q8_0", &[]).with_context(CONTEXT);
        let want = decode_script(&mut pipeline(&model, &[cpu("cpu:0")]), MOE_SCRIPT);
        for stages in [1, 2] {
            let gpus = || (0..stages).map(|_| gpu_on("cuda:0", 0)).collect::<Vec<_>>();
            let what = format!("{arch} on {stages} stage(s)");
            let mut eager = pipeline(&model, &gpus()).with_graphs(false);
            let eager_rows = decode_script(&mut eager, MOE_SCRIPT);
            let mut graphed = pipeline(&model, &gpus()).with_graphs(true);
            let graph_rows = decode_script(&mut graphed, MOE_SCRIPT);
            assert!(
                graph_rows == eager_rows,
                "{what}: the replayed steps give the eager steps' logits bit for bit"
            );
            let (worst, flipped) = compare(&want, &graph_rows, TOL);
            assert!(
                worst <= TOL && flipped.is_empty(),
                "{what} against the CPU: worst {worst:.2e}, greedy flips at {flipped:?}"
            );
            let (on, _) = graphed.graph_counts();
            println!("{what}: graphs {on:?}");
            // Shapes {1} and {1,2,3}, per stage: each captured at its second step.
            assert_eq!(on.refused, 0, "{what}: {on:?}");
            assert!(on.captures >= 2 * stages as u64, "{what}: {on:?}");
            assert!(on.replays > on.eager, "{what}: most steps replayed: {on:?}");
        }
    }
    println!("mixture-of-experts graphs replay the eager decode");
}

#[test]
fn gpu_moe_graphs_follow_live_expert_moves_on_the_fake_driver() {
    run_on_fake_driver(
        "gpu_graphs::gpu_moe_graphs_follow_live_expert_moves",
        &[],
        "graphs follow live expert moves",
    );
}

/// Decodes a tiny Qwen3-MoE model on cuda:0 while the first layer's experts move to the host
/// (`--n-cpu-moe 1` live: those steps run eagerly) and back (new device addresses: the graphs
/// captured before must not be replayed), with graphs on and off: the same logits bit for bit.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_moe_graphs_follow_live_expert_moves() {
    require_cuda();
    let dir = tempfile::tempdir().expect("temp dir");
    let model = make(dir.path(), "qwen3moe", "q8_0", &[]).with_context(CONTEXT);
    let n_vocab = model.config.n_vocab as u32;
    let n_layer = model.config.n_layer;
    let backends: HashMap<String, StageBackend> = [
        ("cuda:0".to_string(), gpu_on("cuda:0", 0)),
        ("cpu:0".to_string(), cpu("cpu:0")),
    ]
    .into_iter()
    .collect();
    let layout = [Layout {
        device: "cuda:0".into(),
        layers: 0..n_layer,
        head: true,
    }];
    let host = ExpertPlacement {
        backend: backends["cpu:0"].clone(),
        layers: 0..1,
    };
    let prompt = 6;
    // Decode steps, and where the experts are before each: (step, first layer's on the host).
    let moves = [(3, true), (6, false)];
    let run = |graphs: bool| {
        let mut p = pipeline(&model, &[backends["cuda:0"].clone()]).with_graphs(graphs);
        p.add_sequence(1, CONTEXT).expect("KV caches");
        let mut out = Vec::new();
        let mut batch = Batch::default();
        for pos in 0..prompt {
            batch.push(token(1, pos, n_vocab), pos as u32, 1, false);
        }
        p.forward(&batch, &mut out).expect("prefill");
        let mut rows = Vec::new();
        for step in 0..10 {
            let pos = prompt + step;
            if let Some(&(_, to_host)) = moves.iter().find(|(at, _)| *at == step) {
                let live = [LiveSequence {
                    id: 1,
                    len: pos,
                    capacity: CONTEXT,
                    retained: false,
                }];
                let experts = to_host.then_some(&host);
                resplit(
                    &mut p,
                    &*model.source,
                    &layout,
                    experts,
                    &backends,
                    &live,
                    64,
                    64,
                )
                .expect("experts moved live");
            }
            batch.clear();
            batch.push(token(1, pos, n_vocab), pos as u32, 1, true);
            out.clear();
            p.forward(&batch, &mut out).expect("decode step");
            rows.push(out.clone());
        }
        (rows, p.graph_counts().0)
    };
    let (eager, _) = run(false);
    let (graphed, counts) = run(true);
    println!("graphs across live expert moves: {counts:?}");
    assert!(
        graphed == eager,
        "the graphed steps give the eager ones' logits across the moves"
    );
    assert!(
        graphed.iter().flatten().all(|v| v.is_finite()),
        "finite logits"
    );
    // Captured before the move and again after the experts came home; eager while away.
    assert!(counts.captures >= 2 && counts.replays > 0, "{counts:?}");
    println!("graphs follow live expert moves");
}

#[test]
fn gpu_moe_experts_on_another_device_on_the_fake_driver() {
    run_on_fake_driver(
        "gpu_graphs::gpu_moe_experts_on_another_device_match_the_cpu",
        &[],
        "experts on another device match the CPU",
    );
}

/// A layer's experts on another device than its attention, the other way round from
/// `--cpu-moe`: attention on the CPU with the experts on cuda:0, and attention on cuda:0 with
/// the experts on a second backend of the GPU (standing in for a second GPU). The experts'
/// device routes, multiplies and weights them itself and their sum crosses back through the
/// host (`moe::finish_on_host`); the decode steps' logits match the CPU's within tolerance, the
/// same on both placements' devices.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_moe_experts_on_another_device_match_the_cpu() {
    use llmd::model::load::{build_pipeline_with_experts, StageSpec};
    require_cuda();
    let dir = tempfile::tempdir().expect("temp dir");
    for arch in ["qwen3moe", "qwen2moe"] {
        let model = make(dir.path(), arch, "q8_0", &[]).with_context(CONTEXT);
        let n_layer = model.config.n_layer;
        let want = decode_script(&mut pipeline(&model, &[cpu("cpu:0")]), MOE_SCRIPT);
        let placements = [
            (
                "attention on cpu:0, experts on cuda:0",
                cpu("cpu:0"),
                gpu_on("cuda:0", 0),
            ),
            (
                "attention on cuda:0, experts on cuda:0b",
                gpu_on("cuda:0", 0),
                gpu_on("cuda:0b", 0),
            ),
        ];
        for (what, layers, experts) in placements {
            let stage = StageSpec {
                backend: layers,
                layers: 0..n_layer,
                head: true,
            };
            let experts = ExpertPlacement {
                backend: experts,
                layers: 0..n_layer,
            };
            let mut p =
                build_pipeline_with_experts(&model, vec![stage], Some(&experts), 64, 64, |_, _| {})
                    .expect("pipeline");
            assert!(
                p.stages()[0].experts_elsewhere().is_some(),
                "{arch}, {what}: the experts are held elsewhere"
            );
            let got = decode_script(&mut p, MOE_SCRIPT);
            let (worst, flipped) = compare(&want, &got, TOL);
            println!("{arch}, {what}: worst {worst:.2e} of the spread");
            assert!(
                worst <= TOL && flipped.is_empty(),
                "{arch}, {what}: against the CPU: worst {worst:.2e}, greedy flips at {flipped:?}"
            );
        }
    }
    println!("experts on another device match the CPU");
}
