//! Matrix-multiply throughput for the shapes of Gemma 3 270M Q4_K_M and of 1B and 8B Llama
//! Q4_K_M models on the CPU, in GGUF's layout and (where this CPU runs the AVX-512 kernels) packed,
//! plus the thread pool's per-call overhead.
//!
//! `cargo bench -p llmd-kernels --bench cpu_matmul [-- THREADS [NAME]]` (default 2 threads; NAME
//! keeps only the matrices whose name contains it, e.g. `gemma` or `8b`). Prints, per shape,
//! layout and token count, the time per call, GFLOP/s (2·rows·cols·tokens per call) and the
//! weight bytes read per second, and per model an estimate of the matmul time per decoded token
//! and per 128-token prefill.

use std::time::{Duration, Instant};

use llmd_kernels::cpu::{self, matmul, packed, Layout, MatmulScratch, QMatrix, ThreadPool};
use llmd_kernels::quant::GgmlType;

/// One weight matrix of a model: name, type, rows (out), cols (in), uses per token.
struct Shape {
    name: &'static str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    per_token: usize,
}

const fn shape(
    name: &'static str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    per_token: usize,
) -> Shape {
    Shape {
        name,
        ty,
        rows,
        cols,
        per_token,
    }
}

const GEMMA_LAYERS: usize = 18;
const LLAMA_LAYERS: usize = 32;
const LLAMA_1B_LAYERS: usize = 16;

/// The models: name and matrices (the output layer is the one used once per token).
const MODELS: [(&str, &[Shape]); 3] = [
    (
        "gemma",
        &[
            shape(
                "gemma attn_q 640->1024",
                GgmlType::Q5_0,
                1024,
                640,
                GEMMA_LAYERS,
            ),
            shape(
                "gemma attn_k 640->256",
                GgmlType::Q5_0,
                256,
                640,
                GEMMA_LAYERS,
            ),
            shape(
                "gemma attn_v 640->256",
                GgmlType::Q8_0,
                256,
                640,
                GEMMA_LAYERS,
            ),
            shape(
                "gemma attn_out 1024->640",
                GgmlType::Q4_K,
                640,
                1024,
                GEMMA_LAYERS,
            ),
            shape(
                "gemma ffn_gate/up 640->2048",
                GgmlType::Q5_0,
                2048,
                640,
                2 * GEMMA_LAYERS,
            ),
            shape(
                "gemma ffn_down 2048->640",
                GgmlType::Q6_K,
                640,
                2048,
                GEMMA_LAYERS,
            ),
            shape("gemma output 640->262144", GgmlType::Q8_0, 262_144, 640, 1),
        ],
    ),
    (
        "8b",
        &[
            shape(
                "8b attn_q/out 4096->4096",
                GgmlType::Q4_K,
                4096,
                4096,
                2 * LLAMA_LAYERS,
            ),
            shape(
                "8b attn_k 4096->1024",
                GgmlType::Q4_K,
                1024,
                4096,
                LLAMA_LAYERS,
            ),
            shape(
                "8b attn_v 4096->1024",
                GgmlType::Q6_K,
                1024,
                4096,
                LLAMA_LAYERS,
            ),
            shape(
                "8b ffn_gate/up 4096->14336",
                GgmlType::Q4_K,
                14336,
                4096,
                2 * LLAMA_LAYERS,
            ),
            shape(
                "8b ffn_down Q4_K 14336->4096",
                GgmlType::Q4_K,
                4096,
                14336,
                LLAMA_LAYERS / 2,
            ),
            shape(
                "8b ffn_down Q6_K 14336->4096",
                GgmlType::Q6_K,
                4096,
                14336,
                LLAMA_LAYERS / 2,
            ),
            shape("8b output 4096->128256", GgmlType::Q6_K, 128_256, 4096, 1),
        ],
    ),
    (
        "1b",
        &[
            shape(
                "1b attn_q/out 2048->2048",
                GgmlType::Q4_K,
                2048,
                2048,
                2 * LLAMA_1B_LAYERS,
            ),
            shape(
                "1b attn_k/v Q4_K 2048->512",
                GgmlType::Q4_K,
                512,
                2048,
                LLAMA_1B_LAYERS + LLAMA_1B_LAYERS / 2,
            ),
            shape(
                "1b attn_v Q6_K 2048->512",
                GgmlType::Q6_K,
                512,
                2048,
                LLAMA_1B_LAYERS / 2,
            ),
            shape(
                "1b ffn_gate/up 2048->8192",
                GgmlType::Q4_K,
                8192,
                2048,
                2 * LLAMA_1B_LAYERS,
            ),
            shape(
                "1b ffn_down Q4_K 8192->2048",
                GgmlType::Q4_K,
                2048,
                8192,
                LLAMA_1B_LAYERS / 2,
            ),
            shape(
                "1b ffn_down Q6_K 8192->2048",
                GgmlType::Q6_K,
                2048,
                8192,
                LLAMA_1B_LAYERS / 2,
            ),
            shape("1b output 2048->128256", GgmlType::Q6_K, 128_256, 2048, 1),
        ],
    ),
];

/// Fills a buffer with pseudo-random bytes, with sane f16 scales where the block keeps them.
fn weights(ty: GgmlType, rows: usize, cols: usize) -> Vec<u64> {
    let bytes = ty.row_bytes(cols as u64).expect("whole blocks") as usize * rows;
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut words: Vec<u64> = (0..bytes.div_ceil(8))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
        .collect();
    // Scale fields: 0x2000 is a small positive f16 (about 0.0078); overwrite the scales at the
    // offsets used by the types benchmarked here.
    let offsets: &[usize] = match ty {
        GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    let block = ty.block_bytes();
    let raw = words.as_mut_ptr().cast::<u8>();
    for b in 0..bytes / block {
        for &off in offsets {
            // SAFETY: b * block + off + 1 < bytes <= words.len() * 8; u8 writes need no alignment.
            unsafe {
                *raw.add(b * block + off) = 0x00;
                *raw.add(b * block + off + 1) = 0x20;
            }
        }
    }
    words
}

/// Best and median time of `f` over enough repetitions to fill about `budget`. On a machine
/// shared with other work the best time is the better estimate of the kernel's own speed.
fn time(budget: Duration, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_nanos(100));
    let reps = (budget.as_nanos() / once.as_nanos()).clamp(3, 2000) as usize;
    let mut samples: Vec<Duration> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    samples.sort();
    (samples[0], samples[reps / 2])
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let threads: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2);
    let filter = args.get(1).cloned().unwrap_or_default();
    let pool = ThreadPool::new(threads).expect("spawn thread pool");
    println!("CPU kernels: {} ; {} threads", cpu::isa().name(), threads);

    let empty = |_: usize, _: usize| {};
    let (best, median) = time(Duration::from_millis(200), || {
        for _ in 0..100 {
            pool.run(&empty);
        }
    });
    println!(
        "thread pool: {:?} per empty run() (best batch of 100), {:?} (median batch)",
        best / 100,
        median / 100
    );

    let mut scratch = MatmulScratch::new();
    println!("times are the best of many runs; GFLOP/s and GB/s from the best, median after");
    println!(
        "{:<30} {:>6} {:>6} {:>11} {:>9} {:>11} {:>11}",
        "matrix", "layout", "tokens", "best", "GFLOP/s", "weight GB/s", "median"
    );
    for (model, shapes) in MODELS {
        let shapes: Vec<&Shape> = shapes
            .iter()
            .filter(|s| s.name.contains(filter.as_str()))
            .collect();
        if shapes.is_empty() {
            continue;
        }
        // Per layout: decode time per token, prefill of 128 tokens (all rows through the
        // output layer), and the same with the output layer for the last token only.
        let mut totals = [(Duration::ZERO, Duration::ZERO, Duration::ZERO); 2];
        for s in shapes {
            let words = weights(s.ty, s.rows, s.cols);
            let len = s.ty.row_bytes(s.cols as u64).expect("whole blocks") as usize * s.rows;
            // SAFETY: `words` holds at least `len` initialised bytes and outlives `data`.
            let data = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) };
            let packed_bytes = packed::should_pack(s.ty, s.rows, s.cols).then(|| {
                let mut p = vec![0u8; len];
                packed::pack(s.ty, s.rows, s.cols, data, &mut p).expect("pack");
                p
            });
            let mut layouts = vec![(Layout::Gguf, data)];
            if let Some(p) = &packed_bytes {
                layouts.push((Layout::Packed, p.as_slice()));
            }
            let has_packed = layouts.len() == 2;
            for (li, (layout, bytes)) in layouts.into_iter().enumerate() {
                let m = QMatrix {
                    ty: s.ty,
                    rows: s.rows,
                    cols: s.cols,
                    data: bytes,
                    layout,
                };
                for n_tokens in [1usize, 128] {
                    let x: Vec<f32> = (0..n_tokens * s.cols)
                        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                        .collect();
                    let mut out = vec![0.0f32; n_tokens * s.rows];
                    let budget = Duration::from_millis(if n_tokens == 1 { 300 } else { 600 });
                    let (t, median) = time(budget, || {
                        matmul(&pool, &m, &x, n_tokens, &mut out, &mut scratch).expect("matmul");
                    });
                    let secs = t.as_secs_f64();
                    let gflops = 2.0 * (s.rows * s.cols * n_tokens) as f64 / secs / 1e9;
                    let gbs = len as f64 / secs / 1e9;
                    println!(
                        "{:<30} {:>6} {:>6} {:>11} {:>9.1} {:>11.1} {:>11}",
                        s.name,
                        if layout == Layout::Packed {
                            "packed"
                        } else {
                            "gguf"
                        },
                        n_tokens,
                        format!("{t:.2?}"),
                        gflops,
                        gbs,
                        format!("{median:.2?}")
                    );
                    // A shape without a packed layout counts in both columns.
                    let slots = match (li, has_packed) {
                        (0, true) => 0..1,
                        (0, false) => 0..2,
                        _ => 1..2,
                    };
                    for slot in slots {
                        let total = &mut totals[slot];
                        if n_tokens == 1 {
                            total.0 += t * s.per_token as u32;
                            if s.per_token == 1 {
                                total.2 += t;
                            }
                        } else {
                            total.1 += t * s.per_token as u32;
                            if s.per_token != 1 {
                                total.2 += t * s.per_token as u32;
                            }
                        }
                    }
                }
            }
        }
        for (slot, name) in ["gguf", "packed where possible"].iter().enumerate() {
            let (decode, prefill, prefill_last) = totals[slot];
            println!(
                "{model} ({name}): matmuls per decoded token {decode:.2?} (at most {:.1} tokens/s); \
                 per 128-token prefill {prefill:.2?}, with the output layer for the last token \
                 only {prefill_last:.2?} (at most {:.1} tokens/s)",
                1.0 / decode.as_secs_f64(),
                128.0 / prefill_last.as_secs_f64()
            );
        }
    }
}
