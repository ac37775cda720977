//! Matrix-multiply throughput for the Gemma 3 270M Q4_K_M shapes on the CPU, plus the thread
//! pool's per-call overhead.
//!
//! `cargo bench -p llmd-kernels --bench cpu_matmul [-- THREADS [NAME]]` (default 2 threads; NAME
//! keeps only the matrices whose name contains it). Prints, per shape and token count, the time
//! per call, GFLOP/s (2·rows·cols·tokens per call) and the weight bytes read per second, and an
//! estimate of the matmul time per decoded token for the whole model (18 layers + the output
//! layer).

use std::time::{Duration, Instant};

use llmd_kernels::cpu::{self, matmul, MatmulScratch, QMatrix, ThreadPool};
use llmd_kernels::quant::GgmlType;

/// One weight matrix of the model: name, type, rows (out), cols (in), uses per token.
struct Shape {
    name: &'static str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    per_token: usize,
}

const LAYERS: usize = 18;

const SHAPES: [Shape; 7] = [
    Shape {
        name: "attn_q 640->1024",
        ty: GgmlType::Q5_0,
        rows: 1024,
        cols: 640,
        per_token: LAYERS,
    },
    Shape {
        name: "attn_k 640->256",
        ty: GgmlType::Q5_0,
        rows: 256,
        cols: 640,
        per_token: LAYERS,
    },
    Shape {
        name: "attn_v 640->256",
        ty: GgmlType::Q8_0,
        rows: 256,
        cols: 640,
        per_token: LAYERS,
    },
    Shape {
        name: "attn_output 1024->640",
        ty: GgmlType::Q4_K,
        rows: 640,
        cols: 1024,
        per_token: LAYERS,
    },
    Shape {
        name: "ffn_gate/up 640->2048",
        ty: GgmlType::Q5_0,
        rows: 2048,
        cols: 640,
        per_token: 2 * LAYERS,
    },
    Shape {
        name: "ffn_down 2048->640",
        ty: GgmlType::Q6_K,
        rows: 640,
        cols: 2048,
        per_token: LAYERS,
    },
    Shape {
        name: "output 640->262144",
        ty: GgmlType::Q8_0,
        rows: 262144,
        cols: 640,
        per_token: 1,
    },
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
    let mut decode_total = Duration::ZERO;
    let mut prefill_total = Duration::ZERO;
    let mut prefill_layers = Duration::ZERO;
    println!("times are the best of many runs; GFLOP/s and GB/s from the best, median after");
    println!(
        "{:<24} {:>6} {:>11} {:>9} {:>11} {:>11}",
        "matrix", "tokens", "best", "GFLOP/s", "weight GB/s", "median"
    );
    for s in SHAPES.iter().filter(|s| s.name.contains(filter.as_str())) {
        let words = weights(s.ty, s.rows, s.cols);
        let len = s.ty.row_bytes(s.cols as u64).expect("whole blocks") as usize * s.rows;
        // SAFETY: `words` holds at least `len` initialised bytes and outlives `data`.
        let data = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) };
        let m = QMatrix {
            ty: s.ty,
            rows: s.rows,
            cols: s.cols,
            data,
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
                "{:<24} {:>6} {:>11} {:>9.1} {:>11.1} {:>11}",
                s.name,
                n_tokens,
                format!("{t:.2?}"),
                gflops,
                gbs,
                format!("{median:.2?}")
            );
            if n_tokens == 1 {
                decode_total += t * s.per_token as u32;
                if s.per_token == 1 {
                    prefill_layers += t;
                }
            } else {
                prefill_total += t * s.per_token as u32;
                if s.per_token != 1 {
                    prefill_layers += t * s.per_token as u32;
                }
            }
        }
    }
    println!(
        "matmuls per decoded token: {decode_total:.2?} (at most {:.1} tokens/s)",
        1.0 / decode_total.as_secs_f64()
    );
    println!(
        "matmuls per 128-token prefill, all 128 rows through the output layer: {prefill_total:.2?}"
    );
    println!(
        "matmuls per 128-token prefill, output layer for the last token only (as llama-bench): \
         {prefill_layers:.2?} (at most {:.1} tokens/s)",
        128.0 / prefill_layers.as_secs_f64()
    );
}
