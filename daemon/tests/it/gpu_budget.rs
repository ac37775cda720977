//! The launch and synchronisation budget of a decoded token (issue 18), counted by the strict
//! fake CUDA driver: tiny Llamas on two fake GPUs (split 1,1), and on one GPU named twice, decode
//! token after token at a non-zero position, and the driver's counters between two steps are the
//! cost of one token. llama-quantize's Q4_K_M mix (what `scripts/gpu-check --fake` runs) gives
//! the figure gpu-check reports (all launches over the layers); pure Q4_K models of 2 and 4
//! layers, whose layers are alike (Q4_K_M gives some layers Q6_K v and down projections, one
//! launch more), separate the cost of a layer from the cost of a token.
//!
//! The budget the issue sets: at most 12 kernel launches per layer, at most 2 host
//! synchronisations per token (the logits' read-back), no host-to-device copy per layer (each
//! stage copies the step's positions once, from page-locked memory, the first also uploads the
//! embedded tokens), and with greedy decoding a read-back of a few bytes (the argmax the head's
//! device picks) instead of the logits row. The test pins
//! the counts measured when it was written (the constants below), so a change that raises any
//! of them fails it. It runs twice: with CUDA graphs off (`LLMD_CUDA_GRAPHS=0`: the step's
//! kernels launched one by one) and on (each stage's layers replayed from a graph: one launch
//! per stage, the kernels replayed counted apart and held to the per-layer count).
//!
//! Mixtures of experts (tiny Qwen3-MoE models, split 1,1 over two fake GPUs) are held to the
//! same host-synchronisation budget: their decode steps route, multiply and sum the experts on
//! the device, so a token costs no more host round trips than a dense one, and with graphs each
//! stage's layers replay in one launch. Their eager launches per layer are pinned as measured
//! ([`MOE_LAUNCHES_PER_LAYER`]), within the budget of 12.

use std::collections::BTreeMap;

use llmd::engine::select::Selection;
use llmd::model::{Batch, HeadOutput, Pipeline, RowRequest, StageBackend};
use llmd_testkit::fake_cuda::{is_child, stats};

use crate::gpu::{require_cuda, run_on_fake_driver};
use crate::gpu_check::{gpu_on, make, pipeline};

/// Kernel launches per layer of a decoded token of a pure Q4_K model, as measured (budget: 12):
/// the norm with the quantization of its output, q/k/v in one launch, rope with the KV store,
/// attention, the quantization of its output, the output projection into the residual, the
/// norm again, gate/up in one launch, the activation with its quantization, the down projection
/// into the residual.
const LAUNCHES_PER_LAYER: f64 = 10.0;
/// Launches per decoded token outside the layers (the output head: norm with quantization,
/// product), as measured.
const FIXED_LAUNCHES: f64 = 2.0;
/// All launches of a decoded token of the 4-layer Q4_K_M model over its layers, as
/// `scripts/gpu-check --fake --json` reports them, as measured.
const GPU_CHECK_LAUNCHES_PER_LAYER: f64 = 11.0;
/// Host synchronisations per decoded token, as measured (budget: 2): the logits' read-back into
/// page-locked memory.
const SYNCS_PER_TOKEN: f64 = 1.0;
/// Bytes read back from the device per token of greedy decoding, at most: the argmax the head's
/// device picks (8 bytes: its value and id), where reading the logits row costs `4 * n_vocab`
/// (4 KiB for the tiny models).
const GREEDY_D2H_BYTES_PER_TOKEN: f64 = 64.0;
/// Launches the head's greedy selection adds per token (one pass over a row of up to 4096
/// values).
const GREEDY_SELECT_LAUNCHES: f64 = 1.0;
/// Launches per layer of a decoded token with CUDA graphs: none, the layers are replayed.
const GRAPH_LAUNCHES_PER_LAYER: f64 = 0.0;
/// Graph launches per decoded token and stage: the stage's layers, once.
const GRAPH_LAUNCHES_PER_STAGE: f64 = 1.0;
/// Kernel launches per layer of a decoded token of a pure Q4_K Qwen3-MoE model with graphs off,
/// as measured (issue 18's budget: 12): the attention block's, then the feed-forward norm with
/// the Q8_1 quantization of its output (`rms_norm_q8_1`, read by gate and up), the router's
/// product with the routing (F32, as llama-quantize leaves it: `moe_router_route_f32`), gate
/// and up in one routed launch, the activation with its quantization, and down summed with the
/// weighted sum into the residual in one routed launch.
const MOE_LAUNCHES_PER_LAYER: f64 = 12.0;
/// Opens a pipeline layout's backends (given the second GPU's ordinal).
type Layout = fn(usize) -> Vec<StageBackend>;

/// Prompt tokens before the measured decode steps (so decoding attends over a context).
const PROMPT: usize = 24;
/// Decode steps measured.
const STEPS: usize = 6;

/// The fake driver's counters after a step (written at its last host synchronisation, the
/// logits' read-back, after every launch and copy of the step).
fn counters() -> BTreeMap<String, i64> {
    stats()
}

/// Per-token counters of decoding `STEPS` tokens on `p` after a prompt: launches, host
/// synchronisations, copies and bytes each way; reading every logits row (`greedy` false) or
/// asking the head for the argmax its device picks (`greedy`, as a greedy generation does).
fn decode_cost(p: &mut Pipeline, greedy: bool) -> BTreeMap<String, f64> {
    let n_vocab = p.config().n_vocab as u32;
    let token = |i: usize| (i as u32 * 7919 + 13) % n_vocab;
    p.add_sequence(1, PROMPT + STEPS + 1).expect("KV caches");
    let mut logits = Vec::new();
    let mut batch = Batch::default();
    for i in 0..PROMPT {
        batch.push(token(i), i as u32, 1, i + 1 == PROMPT);
    }
    p.forward(&batch, &mut logits).expect("prefill");
    let mut out = HeadOutput::asking(RowRequest::Select(Selection::Argmax), 1);
    let mut step = |pos: usize, logits: &mut Vec<f32>| {
        batch.clear();
        batch.push(token(pos), pos as u32, 1, true);
        if greedy {
            p.forward_rows(&batch, &mut out).expect("decode step");
        } else {
            p.forward(&batch, logits).expect("decode step");
        }
    };
    // One step first: buffers that grow on first use are then in place.
    step(PROMPT, &mut logits);
    let before = counters();
    for pos in PROMPT + 1..PROMPT + 1 + STEPS {
        step(pos, &mut logits);
    }
    let after = counters();
    p.remove_sequence(1);
    [
        "launches",
        "graph_launches",
        "graph_kernels",
        "host_syncs",
        "h2d_copies",
        "h2d_bytes",
        "h2d_pinned_copies",
        "pinned_races",
        "d2h_copies",
        "d2h_bytes",
    ]
    .iter()
    .map(|&k| {
        let d = after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        (k.to_string(), d as f64 / STEPS as f64)
    })
    .collect()
}

#[test]
fn gpu_decode_budget_on_the_fake_driver() {
    for (graphs, kept) in [
        ("0", "decode budget kept (graphs off)"),
        ("1", "decode budget kept (graphs on)"),
    ] {
        run_on_fake_driver(
            "gpu_budget::gpu_decode_stays_within_its_launch_and_sync_budget",
            &[
                ("LLMD_FAKE_CUDA_DEVICES", "2"),
                (llmd::model::graphs::GRAPHS_ENV, graphs),
            ],
            kept,
        );
    }
}

/// Counts a decoded token's launches, synchronisations and copies (see the module's
/// documentation) and holds them to the measured values.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_decode_stays_within_its_launch_and_sync_budget() {
    require_cuda();
    // The counters are the fake driver's; on a real GPU there are none to read.
    if !is_child() {
        println!("SKIPPED: the counters are the fake driver's (a real GPU runs this)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let second = usize::from(llmd_kernels::backend::cuda_available().is_ok_and(|n| n > 1));
    let layouts: [(&str, Layout); 2] = [
        ("cuda:0 + cuda:1", |second| {
            vec![gpu_on("cuda:0", 0), gpu_on("cuda:1", second)]
        }),
        ("cuda:0 twice", |_| {
            vec![gpu_on("cuda:0", 0), gpu_on("cuda:0b", 0)]
        }),
    ];
    let graphs = llmd::model::graphs::graphs_enabled();
    let mut failures = Vec::new();
    let mut eager_steps = Vec::new();
    let mut check = |what: &str, name: &str, got: f64, most: f64| {
        if got > most + 1e-9 {
            failures.push(format!("{what}: {name} {got:.2}, at most {most}"));
        }
    };
    for (what, backends) in layouts {
        let mut cost = Vec::new();
        for layers in [2usize, 4] {
            let model = make(
                dir.path(),
                "llama",
                "q4_k",
                &["--layers", &layers.to_string()],
            );
            cost.push(decode_cost(&mut pipeline(&model, &backends(second)), false));
        }
        let per_layer = (cost[1]["launches"] - cost[0]["launches"]) / 2.0;
        let fixed = cost[0]["launches"] - 2.0 * per_layer;
        let model = make(dir.path(), "llama", "q4_k_m", &["--layers", "4"]);
        let mixed = decode_cost(&mut pipeline(&model, &backends(second)), false);
        let greedy = decode_cost(
            &mut pipeline(&model, &backends(second)).with_device_select(true),
            true,
        );
        let stages = 2.0;
        let replayed_per_layer = (cost[1]["graph_kernels"] - cost[0]["graph_kernels"]) / 2.0;
        println!(
            "{what}: per decoded token {per_layer:.2} launches per layer + {fixed:.2} (Q4_K_M: \
             {:.2} per layer as gpu-check counts them), {:.2} graph launches replaying \
             {replayed_per_layer:.2} kernels per layer, {:.2} host syncs, {:.2} host-to-device \
             copies ({:.0} bytes, {:.2} from page-locked memory), {:.2} device-to-host copies \
             ({:.0} bytes; greedy with the argmax picked on the device: {:.0} bytes, {:.2} \
             launches more)",
            mixed["launches"] / 4.0,
            mixed["graph_launches"],
            mixed["host_syncs"],
            mixed["h2d_copies"],
            mixed["h2d_bytes"],
            mixed["h2d_pinned_copies"],
            mixed["d2h_copies"],
            mixed["d2h_bytes"],
            greedy["d2h_bytes"],
            greedy["launches"] - mixed["launches"],
        );
        check(
            what,
            "bytes read back per greedy token",
            greedy["d2h_bytes"],
            GREEDY_D2H_BYTES_PER_TOKEN,
        );
        check(
            what,
            "launches the greedy selection adds",
            greedy["launches"] - mixed["launches"],
            GREEDY_SELECT_LAUNCHES,
        );
        if graphs {
            check(
                what,
                "launches per layer",
                per_layer,
                GRAPH_LAUNCHES_PER_LAYER,
            );
            check(
                what,
                "launches outside the layers",
                fixed,
                FIXED_LAUNCHES + stages * GRAPH_LAUNCHES_PER_STAGE,
            );
            check(
                what,
                "kernels replayed per layer",
                replayed_per_layer,
                LAUNCHES_PER_LAYER,
            );
            for c in [&cost[0], &cost[1], &mixed] {
                // Exactly: fewer would mean that steps fell back to launching kernel by kernel.
                if c["graph_launches"] != stages * GRAPH_LAUNCHES_PER_STAGE {
                    eager_steps.push(format!(
                        "{what}: {:.2} graph launches per token, not one per stage",
                        c["graph_launches"]
                    ));
                }
            }
        } else {
            check(what, "launches per layer", per_layer, LAUNCHES_PER_LAYER);
            check(what, "launches outside the layers", fixed, FIXED_LAUNCHES);
            check(
                what,
                "Q4_K_M launches per layer",
                mixed["launches"] / 4.0,
                GPU_CHECK_LAUNCHES_PER_LAYER,
            );
            check(
                what,
                "graph launches per token",
                mixed["graph_launches"],
                0.0,
            );
        }
        for c in [&cost[0], &cost[1], &mixed, &greedy] {
            check(
                what,
                "host syncs per token",
                c["host_syncs"],
                SYNCS_PER_TOKEN,
            );
            // Positions once per stage, the embedded tokens once: none per layer.
            check(
                what,
                "host-to-device copies per token",
                c["h2d_copies"],
                stages + 1.0,
            );
            // The positions cross from page-locked memory (a graph's first node, or the first
            // op of an eager step), never racing a host write.
            check(
                what,
                "copies from page-locked memory per token short of one per stage",
                stages - c["h2d_pinned_copies"],
                0.0,
            );
            check(
                what,
                "pinned copies racing a host write",
                c["pinned_races"],
                0.0,
            );
        }
    }
    failures.extend(eager_steps);
    assert!(failures.is_empty(), "{failures:#?}");
    println!(
        "decode budget kept (graphs {})",
        if graphs { "on" } else { "off" }
    );
}

#[test]
fn gpu_moe_decode_budget_on_the_fake_driver() {
    for (graphs, kept) in [
        ("0", "MoE decode budget kept (graphs off)"),
        ("1", "MoE decode budget kept (graphs on)"),
    ] {
        run_on_fake_driver(
            "gpu_budget::gpu_moe_decode_stays_within_its_sync_budget",
            &[
                ("LLMD_FAKE_CUDA_DEVICES", "2"),
                (llmd::model::graphs::GRAPHS_ENV, graphs),
            ],
            kept,
        );
    }
}

/// Counts a decoded token of tiny Qwen3-MoE models of 2 and 4 layers split 1,1 over two GPUs
/// and holds them to the budget (see the module's documentation).
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn gpu_moe_decode_stays_within_its_sync_budget() {
    require_cuda();
    if !is_child() {
        println!("SKIPPED: the counters are the fake driver's (a real GPU runs this)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let second = usize::from(llmd_kernels::backend::cuda_available().is_ok_and(|n| n > 1));
    let graphs = llmd::model::graphs::graphs_enabled();
    let mut cost = Vec::new();
    for layers in [2usize, 4] {
        let model = make(
            dir.path(),
            "qwen3moe",
            "q4_k",
            &["--layers", &layers.to_string()],
        );
        let backends = vec![gpu_on("cuda:0", 0), gpu_on("cuda:1", second)];
        cost.push(decode_cost(&mut pipeline(&model, &backends), true));
    }
    let per_layer = (cost[1]["launches"] - cost[0]["launches"]) / 2.0;
    let replayed_per_layer = (cost[1]["graph_kernels"] - cost[0]["graph_kernels"]) / 2.0;
    println!(
        "qwen3moe on cuda:0 + cuda:1: per decoded token {per_layer:.2} launches per layer, \
         {:.2} graph launches replaying {replayed_per_layer:.2} kernels per layer, {:.2} host \
         syncs, {:.2} host-to-device copies, {:.2} device-to-host copies",
        cost[1]["graph_launches"],
        cost[1]["host_syncs"],
        cost[1]["h2d_copies"],
        cost[1]["d2h_copies"],
    );
    let stages = 2.0;
    let mut failures = Vec::new();
    let mut check = |name: &str, got: f64, most: f64| {
        if got > most + 1e-9 {
            failures.push(format!("{name} {got:.2}, at most {most}"));
        }
    };
    if graphs {
        check("launches per layer", per_layer, GRAPH_LAUNCHES_PER_LAYER);
        check(
            "kernels replayed per layer",
            replayed_per_layer,
            MOE_LAUNCHES_PER_LAYER,
        );
    } else {
        check("launches per layer", per_layer, MOE_LAUNCHES_PER_LAYER);
    }
    for c in &cost {
        check("host syncs per token", c["host_syncs"], SYNCS_PER_TOKEN);
        check(
            "host-to-device copies per token",
            c["h2d_copies"],
            stages + 1.0,
        );
        check(
            "copies from page-locked memory per token short of one per stage",
            stages - c["h2d_pinned_copies"],
            0.0,
        );
        check("pinned copies racing a host write", c["pinned_races"], 0.0);
        if graphs {
            // Exactly one per stage: fewer would mean that steps fell back to eager launches.
            let off = (c["graph_launches"] - stages * GRAPH_LAUNCHES_PER_STAGE).abs();
            check("graph launches per token away from one per stage", off, 0.0);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    println!(
        "MoE decode budget kept (graphs {})",
        if graphs { "on" } else { "off" }
    );
}
