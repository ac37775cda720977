//! Attention by tiles of queries (f16 caches, AVX-512) against the per-query f16 path, for
//! grouped-query shapes (one to thirty-two query heads per KV head), head sizes from 16 to 256,
//! prefill batches and single decoding tokens over long caches (where the keys are split between
//! threads), sliding windows and soft-capping: equal to float rounding. Without AVX-512 the tiled
//! path must decline.

use half::f16;
use llmd_kernels::cpu::attention::{attend, AttentionScratch, CacheRows, KvRows, Logits};
use llmd_kernels::cpu::attention_tile::{applies, attend_f16_tiled, Queries};
use llmd_kernels::cpu::{self, Isa, ThreadPool};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Case {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    /// Positions of the batch's tokens.
    positions: Vec<u32>,
    window: Option<usize>,
    softcap: Option<f32>,
}

fn check(case: &Case, pools: &[ThreadPool]) {
    let Case {
        n_heads, n_kv, hd, ..
    } = *case;
    let capacity = *case.positions.iter().max().unwrap() as usize + 1;
    let width = n_kv * hd;
    let k: Vec<f16> = values(capacity * width, 1)
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let v: Vec<f16> = values(capacity * width, 2)
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let n = case.positions.len();
    let qw = n_heads * hd;
    let q: Vec<f32> = values(n * qw, 3).iter().map(|x| x * 3.0).collect();
    let cache = CacheRows {
        k: KvRows::F16(&k),
        v: KvRows::F16(&v),
        width,
        head_dim: hd,
    };
    let logits = Logits {
        scale: 1.0 / (hd as f32).sqrt(),
        softcap: case.softcap,
    };
    // The per-query path.
    let mut want = vec![0.0f32; n * qw];
    let mut scratch = AttentionScratch::default();
    for (i, &pos) in case.positions.iter().enumerate() {
        let pos = pos as usize;
        let first = case.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..n_heads {
            let at = i * qw + h * hd;
            attend(
                &cache,
                h / (n_heads / n_kv),
                first..=pos,
                &q[at..at + hd],
                logits,
                &mut scratch,
                &mut want[at..at + hd],
            );
        }
    }
    for pool in pools {
        let mut got = vec![f32::NAN; n * qw];
        let queries = Queries {
            q: &q,
            n_heads,
            positions: &case.positions,
            window: case.window,
        };
        let done = attend_f16_tiled(pool, &cache, queries, logits, &mut got);
        assert_eq!(done, cpu::isa() >= Isa::Avx512);
        assert_eq!(done, applies(&cache));
        if !done {
            continue;
        }
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err < 2e-6,
            "{n_heads}/{n_kv} heads of {hd}, {n} tokens at {:?}.., window {:?}, softcap {:?}, \
             {} threads: max error {err}",
            &case.positions[..n.min(3)],
            case.window,
            case.softcap,
            pool.n_threads()
        );
    }
}

#[test]
fn tiles_equal_the_per_query_path() {
    let pools: Vec<ThreadPool> = [1, 2, 3]
        .map(|n| ThreadPool::new(n).expect("threads"))
        .into();
    let prefill = |from: u32, n: u32| (from..from + n).collect::<Vec<u32>>();
    let cases = [
        // Llama-like: 4 query heads per KV head, a prefill batch after a cached prefix.
        (32, 8, 64, prefill(10, 37), None, None),
        // Gemma 3 270M: 4 heads of 256 on one KV head, sliding window.
        (4, 1, 256, prefill(0, 40), Some(16), None),
        // Gemma 2: soft-capped scores.
        (8, 4, 128, prefill(3, 21), None, Some(50.0)),
        // No grouping; heads of 16 and 96 values.
        (3, 3, 16, prefill(0, 9), None, None),
        (6, 2, 96, prefill(5, 7), None, None),
        // More than sixteen query heads per KV head.
        (32, 1, 64, prefill(0, 3), None, None),
        // Decoding one token over a long cache: the keys are split between threads.
        (32, 8, 128, vec![700], None, None),
        (4, 1, 256, vec![1500], None, None),
        (4, 1, 256, vec![1500], Some(512), None),
        // Several sequences' decode tokens are separate calls; a batch may also repeat positions
        // out of order within one sequence's chunk after a re-prefill.
        (8, 2, 64, vec![300, 301, 302, 303, 304, 305], None, None),
    ];
    for (n_heads, n_kv, hd, positions, window, softcap) in cases {
        check(
            &Case {
                n_heads,
                n_kv,
                hd,
                positions,
                window,
                softcap,
            },
            &pools,
        );
    }
}

#[test]
fn tiles_decline_what_they_do_not_cover() {
    let k = vec![f16::ZERO; 4 * 32];
    let cache = CacheRows {
        k: KvRows::F16(&k),
        v: KvRows::F16(&k),
        width: 24,
        head_dim: 24,
    };
    assert!(!applies(&cache), "heads of 24 values");
    let blocks =
        vec![llmd_kernels::quant::view::zeroed_block::<llmd_kernels::quant::BlockQ8_0>(); 4];
    let q8 = CacheRows {
        k: KvRows::Q8_0(&blocks),
        v: KvRows::F16(&k),
        width: 32,
        head_dim: 32,
    };
    assert!(!applies(&q8), "quantized keys");
}
