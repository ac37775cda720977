//! The prefix cache through the worker on a tiny CPU model: a request reusing another's KV
//! gets bit for bit the logits of a worker without the cache, reports the tokens it reused
//! (full, partial and no hit, a prompt equal to a cached one, a prompt extending a finished
//! conversation, a prefix of a sequence still running, requests sharing a prefix admitted
//! together), and retained caches stay within their
//! budget on the device's ledger, least recently used evicted first, and before a request is
//! refused for lack of memory.

use std::sync::Arc;

use llmd_kernels::backend::{kv_cache_bytes, DeviceMemory, KvTypes};
use tokio::sync::mpsc::{channel, Receiver as EventReceiver};

use super::tests::{generation, run_to_end, tiny_model};
use super::*;
use crate::engine::{GenEvent, GenerateJob, GenerationSummary};

/// A worker on this thread over the tiny model, charging `memory`.
fn worker(dir: &std::path::Path, memory: &Arc<DeviceMemory>, limits: WorkerLimits) -> Worker {
    let (pipeline, tokenizer) = tiny_model(dir, memory, limits);
    // The sender is dropped: jobs are queued straight into the scheduler.
    let (_jobs, rx) = std::sync::mpsc::channel();
    Worker::new(
        pipeline,
        tokenizer,
        limits,
        rx,
        Arc::new(WorkerHealth::default()),
    )
}

/// The summary a finished generation sent last.
fn summary(rx: &mut EventReceiver<GenEvent>) -> GenerationSummary {
    let mut last = None;
    while let Ok(event) = rx.try_recv() {
        last = Some(event);
    }
    match last {
        Some(GenEvent::Done(s)) => s,
        other => panic!("the generation ended with {other:?}"),
    }
}

/// Runs `prompt` alone to its end on `worker`: its logits rows (as bits) and its summary.
fn run(
    worker: &mut Worker,
    prompt: &[u32],
    max_tokens: usize,
) -> (Vec<Vec<u32>>, GenerationSummary) {
    let (tx, mut rx) = channel(1 << 12);
    let job = GenerateJob {
        prompt: prompt.to_vec(),
        ..generation(max_tokens)
    };
    worker.scheduler.enqueue(job, tx);
    let (rows, _) = run_to_end(worker);
    assert_eq!(rows.len(), 1, "one sequence alone");
    let rows = rows.into_values().next().unwrap_or_default();
    (rows, summary(&mut rx))
}

/// `len` prompt tokens from `seed`.
fn prompt(len: usize, seed: usize) -> Vec<u32> {
    (0..len)
        .map(|i| 5 + ((i * 7 + seed * 131 + i * i * seed) % 800) as u32)
        .collect()
}

/// `a` followed by `b`.
fn cat(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter().chain(b).copied().collect()
}

/// Bytes of a cache of `len` positions of the worker's model over all its layers (f16).
fn cache_bytes(worker: &Worker, len: usize) -> u64 {
    let c = worker.pipeline.config();
    c.n_layer as u64 * kv_cache_bytes(len, c.n_head_kv, c.head_dim, KvTypes::F16)
}

/// Positions a finished generation's retained cache holds: its prompt and every generated token
/// but the last (which was sampled, never fed).
fn retained_len(s: &GenerationSummary) -> usize {
    (s.prompt_tokens + s.tokens.len()).saturating_sub(1)
}

#[test]
fn a_prefix_hit_gives_the_logits_of_a_worker_without_the_cache_bit_for_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = DeviceMemory::new(1 << 30);
    // 32 rows a step: a full prompt is prefilled in other chunks than its uncached rest.
    let limits = WorkerLimits::new(512, 32, 4);
    let mut cached = worker(dir.path(), &memory, limits.with_prefix_cache(64 << 20));
    let mut fresh = worker(dir.path(), &memory, limits);
    let p = prompt(100, 1);
    let (_, first) = run(&mut cached, &p, 12);
    let conversation = cat(&cat(&p, &first.tokens), &prompt(5, 9));
    let cases: Vec<(&str, Vec<u32>, usize)> = vec![
        (
            "the same prompt again: all but its last token",
            p.clone(),
            99,
        ),
        ("a partial hit", cat(&p[..70], &prompt(30, 2)), 70),
        ("a miss", prompt(100, 3), 0),
        (
            "a prompt extending a finished generation: its prompt and reply",
            conversation.clone(),
            retained_len(&first),
        ),
        (
            "shared within the first block only",
            cat(&p[..10], &prompt(40, 4)),
            0,
        ),
    ];
    assert_eq!(first.cached_prompt_tokens, 0, "nothing cached at first");
    for (what, prompt, want_cached) in cases {
        let (got_rows, got) = run(&mut cached, &prompt, 12);
        let (want_rows, want) = run(&mut fresh, &prompt, 12);
        assert_eq!(got.cached_prompt_tokens, want_cached, "{what}");
        assert_eq!(want.cached_prompt_tokens, 0, "{what}: the cache is off");
        assert_eq!(got.tokens, want.tokens, "{what}: tokens");
        assert!(got_rows == want_rows, "{what}: the logits differ in bits");
        assert!(got.time_to_first_token_s > 0.0, "{what}");
    }
}

#[test]
fn a_prefix_of_a_running_sequence_is_reused_by_sequences_admitted_beside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = DeviceMemory::new(1 << 30);
    let limits = WorkerLimits::new(512, 16, 4);
    let mut cached = worker(dir.path(), &memory, limits.with_prefix_cache(64 << 20));
    let mut fresh = worker(dir.path(), &memory, limits);
    let shared = prompt(64, 5);
    let (tx, mut long) = channel(1 << 12);
    cached.scheduler.enqueue(
        GenerateJob {
            prompt: shared.clone(),
            ..generation(40)
        },
        tx,
    );
    // Steps until the long one decodes: its whole prompt is in its cache.
    for _ in 0..100 {
        cached.prepare_step();
        if cached.scheduler.running.iter().all(|s| !s.prefilling()) {
            break;
        }
        cached.step(None);
    }
    let tails: Vec<Vec<u32>> = (0..3)
        .map(|k| cat(&shared[..48], &prompt(20, 10 + k)))
        .collect();
    let mut receivers = Vec::new();
    for tail in &tails {
        let (tx, rx) = channel(1 << 12);
        receivers.push(rx);
        cached.scheduler.enqueue(
            GenerateJob {
                prompt: tail.clone(),
                ..generation(10)
            },
            tx,
        );
    }
    let (rows, _) = run_to_end(&mut cached);
    let rows: Vec<Vec<Vec<u32>>> = rows.into_values().collect();
    assert_eq!(rows.len(), 4, "the long one and three beside it");
    assert_eq!(summary(&mut long).cached_prompt_tokens, 0);
    for (k, (tail, mut rx)) in tails.iter().zip(receivers).enumerate() {
        let got = summary(&mut rx);
        let (want_rows, want) = run(&mut fresh, tail, 10);
        assert_eq!(got.cached_prompt_tokens, 48, "sequence {k}");
        assert_eq!(got.tokens, want.tokens, "sequence {k}: tokens");
        // Sequence ids follow admission: the long one first.
        assert!(
            rows[k + 1] == want_rows,
            "sequence {k}: the logits differ in bits"
        );
    }
}

#[test]
fn requests_sharing_a_prefix_admitted_together_compute_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = DeviceMemory::new(1 << 30);
    // Prompts of 68 tokens in chunks of 16 rows: the first takes five steps to prefill.
    let limits = WorkerLimits::new(512, 16, 4);
    let mut cached = worker(dir.path(), &memory, limits.with_prefix_cache(64 << 20));
    let mut fresh = worker(dir.path(), &memory, limits);
    let shared = prompt(48, 7);
    let prompts: Vec<Vec<u32>> = (0..3).map(|k| cat(&shared, &prompt(20, 30 + k))).collect();
    // An unrelated request queued behind them is admitted past the waiting ones.
    let other = prompt(30, 99);
    let mut receivers = Vec::new();
    for p in prompts.iter().chain([&other]) {
        let (tx, rx) = channel(1 << 12);
        receivers.push(rx);
        cached.scheduler.enqueue(
            GenerateJob {
                prompt: p.clone(),
                ..generation(6)
            },
            tx,
        );
    }
    cached.prepare_step();
    assert_eq!(
        cached.scheduler.running.len(),
        2,
        "the first and the unrelated one run, the two sharing the first's prefix wait"
    );
    run_to_end(&mut cached);
    for (k, (p, rx)) in prompts
        .iter()
        .chain([&other])
        .zip(&mut receivers)
        .enumerate()
    {
        let got = summary(rx);
        let (_, want) = run(&mut fresh, p, 6);
        let reused = match k {
            0 | 3 => 0,
            // The shared prefix, computed once by the first.
            _ => 48,
        };
        assert_eq!(got.cached_prompt_tokens, reused, "request {k}");
        assert_eq!(got.tokens, want.tokens, "request {k}: tokens");
    }
}

#[test]
fn retained_caches_stay_within_the_budget_least_recently_used_leaving_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = DeviceMemory::new(1 << 30);
    let limits = WorkerLimits::new(512, 64, 4);
    let w = worker(dir.path(), &memory, limits);
    let weights = memory.used();
    // Two caches of at most 48 positions fit, a third does not.
    let budget = cache_bytes(&w, 48) * 5 / 2;
    drop(w);
    let mut w = worker(dir.path(), &memory, limits.with_prefix_cache(budget));
    assert_eq!(memory.used(), weights);
    let (p1, p2) = (prompt(48, 21), prompt(48, 22));
    let (_, s1) = run(&mut w, &p1, 1);
    let (_, s2) = run(&mut w, &p2, 1);
    let (b1, b2) = (
        cache_bytes(&w, retained_len(&s1)),
        cache_bytes(&w, retained_len(&s2)),
    );
    assert_eq!(
        memory.used(),
        weights + b1 + b2,
        "two caches retained, shrunk to what they hold"
    );
    assert_eq!(w.scheduler.prefix.retained_bytes(), b1 + b2);
    // A hit on the first makes the second the least recently used: it leaves when the third
    // is retained.
    let p3 = cat(&p1[..32], &prompt(16, 23));
    let (_, s3) = run(&mut w, &p3, 1);
    assert_eq!(s3.cached_prompt_tokens, 32);
    let b3 = cache_bytes(&w, retained_len(&s3));
    assert_eq!(memory.used(), weights + b1 + b3, "the second evicted");
    let (_, again) = run(&mut w, &p2, 1);
    assert_eq!(again.cached_prompt_tokens, 0, "the second's cache is gone");
    // Retaining the second again evicts the first (used before the third was retained).
    assert_eq!(memory.used(), weights + b3 + b2);
    let (_, s1_again) = run(&mut w, &p1, 1);
    assert_eq!(
        s1_again.cached_prompt_tokens, 32,
        "only the third's 32 shared tokens remain"
    );
    assert!(w.scheduler.prefix.retained_bytes() <= budget);
    drop(w);
    assert_eq!(memory.used(), 0, "every cache freed with the pipeline");
}

#[test]
fn retained_caches_are_evicted_before_a_request_is_refused_for_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = DeviceMemory::new(1 << 30);
    let limits = WorkerLimits::new(512, 64, 4);
    let w = worker(dir.path(), &probe, limits);
    let weights = probe.used();
    let one = cache_bytes(&w, 208);
    drop(w);
    // Room for one sequence's cache of 208 positions and half another.
    let memory = DeviceMemory::new(weights + one + one / 2);
    let mut w = worker(dir.path(), &memory, limits.with_prefix_cache(1 << 30));
    let (_, s1) = run(&mut w, &prompt(200, 31), 8);
    assert!(memory.used() > weights, "the first cache is retained");
    let (_, s2) = run(&mut w, &prompt(200, 32), 8);
    assert_eq!(s2.cached_prompt_tokens, 0);
    assert_eq!(s1.cached_prompt_tokens, 0);
    assert_eq!(
        w.scheduler.prefix.retained().len(),
        1,
        "the first made room for the second"
    );
    assert!(memory.used() <= weights + one + one / 2);
}

#[test]
fn a_zero_budget_keeps_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = DeviceMemory::new(1 << 30);
    let limits = WorkerLimits::new(512, 64, 4);
    let mut w = worker(dir.path(), &memory, limits);
    let weights = memory.used();
    let p = prompt(64, 41);
    run(&mut w, &p, 4);
    let (_, again) = run(&mut w, &p, 4);
    assert_eq!(again.cached_prompt_tokens, 0);
    assert_eq!(memory.used(), weights);
}

#[test]
fn a_benchmark_evicts_retained_caches_it_needs_the_memory_of() {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = DeviceMemory::new(1 << 30);
    let limits = WorkerLimits::new(512, 64, 4);
    let w = worker(dir.path(), &probe, limits);
    let weights = probe.used();
    let one = cache_bytes(&w, 208);
    drop(w);
    let memory = DeviceMemory::new(weights + one + one / 2);
    let mut w = worker(dir.path(), &memory, limits.with_prefix_cache(1 << 30));
    run(&mut w, &prompt(200, 51), 8);
    assert_eq!(w.scheduler.prefix.retained().len(), 1);
    let result = w
        .bench(200, 8)
        .expect("the bench runs after evicting the retained cache");
    assert_eq!((result.n_prompt, result.n_gen), (200, 8));
    assert!(w.scheduler.prefix.retained().is_empty());
    assert_eq!(memory.used(), weights, "the bench freed its sequence");
}
