//! Dot-product kernel speed per weight type and instruction set, on one thread: a weight matrix
//! of `ROWS` rows of `COLS` elements against one activation row (decode: `dot_pair` over the
//! rows) and against four (prefill: `dot_tile`), for every weight type the matrix multiply
//! supports and every instruction set this CPU has.
//!
//! `cargo bench -p llmd-kernels --bench cpu_dot [-- NAME]` (NAME keeps only the types whose name
//! contains it). Prints, per type and level, the best time per matrix, the weight bytes read per
//! second, and the speed-up over the scalar kernels.

use std::hint::black_box;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use llmd_kernels::cpu::dot::{Activation, VecDot, TILE};
use llmd_kernels::cpu::matmul::as_blocks;
use llmd_kernels::cpu::Isa;
use llmd_kernels::quant::{self, *};
use llmd_testkit::blocks::random_blocks;
use llmd_testkit::Rng;

/// Weight rows per matrix.
const ROWS: usize = 512;
/// Elements per row (a multiple of every block size).
const COLS: usize = 4096;
/// Time spent measuring each kernel (best of the repetitions that fit).
const BUDGET: Duration = Duration::from_millis(150);

/// Weight bytes of `ty`: quantized gaussian rows where llmd has the quantizer, else random
/// blocks with sane scales. In a u64 buffer so every block type can view them.
fn weights(rng: &mut Rng, ty: GgmlType) -> (Vec<u64>, usize) {
    let bytes = if quant::can_quantize(ty) {
        let x: Vec<f32> = (0..ROWS * COLS).map(|_| 0.02 * rng.normal()).collect();
        quant::quantize(ty, &x).expect("quantize")
    } else {
        random_blocks(rng, ty, ROWS * COLS / ty.block_elems())
    };
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (w, c) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        *w = u64::from_le_bytes(b);
    }
    (words, bytes.len())
}

/// The best time of `f` over the repetitions that fit in [`BUDGET`].
fn best(mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    while start.elapsed() < BUDGET {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

/// Measures every instruction set's kernels of `W` and prints one line each.
fn bench<W: VecDot>(rng: &mut Rng) {
    let (words, len) = weights(rng, W::TYPE);
    // SAFETY: `words` holds at least `len` initialised bytes and outlives the slice.
    let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) };
    let w = as_blocks::<W>(bytes).expect("aligned weights");
    let rb = COLS / W::BLOCK;
    let acts: Vec<Vec<W::Act>> = (0..TILE)
        .map(|_| {
            let x: Vec<f32> = (0..COLS).map(|_| rng.normal()).collect();
            let mut a = vec![<W::Act as Activation>::ZERO; COLS / <W::Act as Activation>::BLOCK];
            <W::Act as Activation>::quantize(&x, &mut a);
            a
        })
        .collect();
    let tile: [&[W::Act]; TILE] = std::array::from_fn(|t| acts[t].as_slice());
    let row = |r: usize| &w[r * rb..(r + 1) * rb];
    let mut base = None;
    for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
        let k = W::kernels_for(isa).expect("available");
        let decode = best(|| {
            let mut s = 0.0f32;
            for r in (0..ROWS).step_by(2) {
                let [a, b] = k.dot_pair(row(r), row(r + 1), &acts[0]);
                s += a + b;
            }
            black_box(s);
        });
        let prefill = best(|| {
            let mut s = 0.0f32;
            for r in 0..ROWS {
                s += k.dot_tile(row(r), tile).iter().sum::<f32>();
            }
            black_box(s);
        });
        let (d0, p0) = *base.get_or_insert((decode, prefill));
        let gbs = |t: Duration| len as f64 / t.as_secs_f64() / 1e9;
        let up = |t0: Duration, t: Duration| t0.as_secs_f64() / t.as_secs_f64();
        println!(
            "{:<8} {:<10} {:>10} {:>7.2} {:>6.1}x {:>10} {:>7.2} {:>6.1}x",
            W::TYPE.name(),
            isa.name(),
            format!("{decode:.2?}"),
            gbs(decode),
            up(d0, decode),
            format!("{prefill:.2?}"),
            gbs(prefill),
            up(p0, prefill),
        );
    }
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    println!(
        "{ROWS} rows x {COLS} columns, one thread; decode = one token (dot_pair), \
         prefill = {TILE} tokens (dot_tile); GB/s of weights; speed-up over scalar"
    );
    println!(
        "{:<8} {:<10} {:>10} {:>7} {:>7} {:>10} {:>7} {:>7}",
        "type", "isa", "decode", "GB/s", "", "prefill", "GB/s", ""
    );
    let mut rng = Rng(0x5eed);
    macro_rules! run {
        ($($w:ty),* $(,)?) => {$(
            if <$w as VecDot>::TYPE.name().contains(filter.as_str()) {
                bench::<$w>(&mut rng);
            }
        )*};
    }
    run!(
        f32,
        f16,
        bf16,
        BlockQ4_0,
        BlockQ4_1,
        BlockQ5_0,
        BlockQ5_1,
        BlockQ8_0,
        BlockQ2K,
        BlockQ3K,
        BlockQ4K,
        BlockQ5K,
        BlockQ6K,
        BlockIQ2XXS,
        BlockIQ2XS,
        BlockIQ2S,
        BlockIQ3XXS,
        BlockIQ3S,
        BlockIQ1S,
        BlockIQ1M,
        BlockIQ4NL,
        BlockIQ4XS,
        BlockTQ1_0,
        BlockTQ2_0,
        BlockMXFP4,
    );
}
