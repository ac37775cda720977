//! Attention over f16 caches by tiles of queries (AVX-512): the queries of up to
//! [`MAX_TILE_QUERIES`] (token, head) pairs that share a KV head go through the keys together,
//! so each key and value row is read and converted once per tile instead of once per query,
//! and sixteen scores come out of one reduction. Each query keeps an online softmax; when there
//! are fewer tiles than threads (decoding), the keys are also split into chunks whose partial
//! softmaxes are merged at the end, so every thread works.
//!
//! The arithmetic is the f16 path of [`super::attention`] (the query rounded to f16, f32 dot
//! products, scale, soft-cap, softmax, f32 weighted sum of the values) in another order, with
//! a polynomial `exp`: it agrees with it to float rounding.

use std::sync::atomic::{AtomicUsize, Ordering};

use half::f16;

use super::attention::{CacheRows, KvRows, Logits};
#[cfg(target_arch = "x86_64")]
use super::avx512::attention::{attend_f16_tile, exp_ps, TileQuery, TileState, KEY_BLOCK};
use super::{Isa, ThreadPool};

/// Queries per tile: sixteen lanes' worth of (token, head) pairs.
pub const MAX_TILE_QUERIES: usize = 16;

/// Keys a chunk spans at least when the keys are split between threads (below, merging the
/// partial softmaxes costs more than it spreads).
const MIN_CHUNK_KEYS: usize = 128;

/// Work items to aim for per thread, so that threads finishing early take over work.
const ITEMS_PER_THREAD: usize = 4;

/// The queries of one call: `n_tokens` rows of `n_heads * head_dim` values, with each token's
/// position and the attention window.
#[derive(Clone, Copy, Debug)]
pub struct Queries<'a> {
    /// `(n_tokens, n_heads * head_dim)` query values.
    pub q: &'a [f32],
    /// Query heads.
    pub n_heads: usize,
    /// Each token's position (its last visible key).
    pub positions: &'a [u32],
    /// Keys visible before the position, at most (sliding-window layers).
    pub window: Option<usize>,
}

/// A tile: the heads `h0..h1` (of KV head `kv_head`'s group) of tokens `t0..t1`.
#[derive(Clone, Copy, Debug)]
struct Tile {
    /// The KV head.
    kv_head: usize,
    /// First query head.
    h0: usize,
    /// One past the last query head.
    h1: usize,
    /// First token.
    t0: usize,
    /// One past the last token.
    t1: usize,
}

/// A raw pointer the pool's threads may share for disjoint writes.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: threads write disjoint ranges through it while the owner keeps the buffer borrowed
// until `ThreadPool::run` returns.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// Whether [`attend_f16_tiled`] computes attention over `cache` on this CPU: f16 keys and
/// values, heads a multiple of 16 values, and the AVX-512 kernels.
pub fn applies(cache: &CacheRows<'_>) -> bool {
    matches!((cache.k, cache.v), (KvRows::F16(_), KvRows::F16(_)))
        && cache.head_dim > 0
        && cache.head_dim.is_multiple_of(16)
        && cache.width.is_multiple_of(cache.head_dim)
        && super::isa() >= Isa::Avx512
}

/// Attention of every (token, head) of `queries` over `cache`, written to `out` (as `q`), on
/// `pool`'s threads. Returns false (writing nothing) where it does not [`applies`].
///
/// # Panics
/// If the slices are shorter than the shapes say (callers check shapes first).
pub fn attend_f16_tiled(
    pool: &ThreadPool,
    cache: &CacheRows<'_>,
    queries: Queries<'_>,
    logits: Logits,
    out: &mut [f32],
) -> bool {
    if !applies(cache) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        run(pool, cache, queries, logits, out);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (pool, queries, logits, out);
        false
    }
}

/// The visible keys `lo..hi` of a token at `pos`.
fn visible(pos: usize, window: Option<usize>) -> (usize, usize) {
    (window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos + 1)
}

#[cfg(target_arch = "x86_64")]
fn run(pool: &ThreadPool, cache: &CacheRows<'_>, qs: Queries<'_>, logits: Logits, out: &mut [f32]) {
    let (KvRows::F16(k), KvRows::F16(v)) = (cache.k, cache.v) else {
        unreachable!("checked by applies");
    };
    let (hd, width) = (cache.head_dim, cache.width);
    let n_kv = width / hd;
    let group = qs.n_heads / n_kv;
    let qw = qs.n_heads * hd;
    let n_tokens = qs.positions.len();
    let heads_per_tile = group.min(MAX_TILE_QUERIES);
    let tokens_per_tile = (MAX_TILE_QUERIES / heads_per_tile).max(1);
    let mut tiles = Vec::new();
    for kv_head in 0..n_kv {
        for h0 in (kv_head * group..(kv_head + 1) * group).step_by(heads_per_tile) {
            let h1 = (h0 + heads_per_tile).min((kv_head + 1) * group);
            for t0 in (0..n_tokens).step_by(tokens_per_tile) {
                let t1 = (t0 + tokens_per_tile).min(n_tokens);
                tiles.push(Tile {
                    kv_head,
                    h0,
                    h1,
                    t0,
                    t1,
                });
            }
        }
    }
    let span = |t: &Tile| {
        let lo = (t.t0..t.t1)
            .map(|i| visible(qs.positions[i] as usize, qs.window).0)
            .min()
            .unwrap_or(0);
        let hi = (t.t0..t.t1)
            .map(|i| qs.positions[i] as usize + 1)
            .max()
            .unwrap_or(0);
        (lo, hi)
    };
    // Split the keys too when there are too few tiles for the threads.
    let want = pool.n_threads() * ITEMS_PER_THREAD;
    let longest = tiles
        .iter()
        .map(|t| span(t).1 - span(t).0)
        .max()
        .unwrap_or(0);
    let n_chunks = if tiles.len() >= want {
        1
    } else {
        want.div_ceil(tiles.len())
            .min(longest / MIN_CHUNK_KEYS)
            .max(1)
    };
    let scale = logits.scale;
    let softcap = logits.softcap;
    let tq = MAX_TILE_QUERIES;
    // Partial softmaxes when the keys are split: per item and query, [max, sum, acc..].
    let stride = 2 + hd;
    let mut partials = vec![
        0.0f32;
        if n_chunks > 1 {
            tiles.len() * n_chunks * tq * stride
        } else {
            0
        }
    ];
    let partial_ptr = Shared(partials.as_mut_ptr());
    let out_ptr = Shared(out.as_mut_ptr());
    let next = AtomicUsize::new(0);
    let n_items = tiles.len() * n_chunks;
    pool.run(&|_, _| {
        let (partial_ptr, out_ptr) = (partial_ptr, out_ptr);
        let mut kf = vec![0.0f32; KEY_BLOCK * hd];
        let mut vf = vec![0.0f32; KEY_BLOCK * hd];
        let mut qbuf = vec![0.0f32; tq * hd];
        let mut max = [f32::NEG_INFINITY; MAX_TILE_QUERIES];
        let mut sum = [0.0f32; MAX_TILE_QUERIES];
        let mut acc = vec![0.0f32; tq * hd];
        let mut tile_queries: Vec<TileQuery> = Vec::with_capacity(tq);
        loop {
            let item = next.fetch_add(1, Ordering::Relaxed);
            if item >= n_items {
                break;
            }
            let (tile, chunk) = (&tiles[item / n_chunks], item % n_chunks);
            let (lo, hi) = span(tile);
            // Chunk boundaries on whole key blocks.
            let per = (hi - lo).div_ceil(n_chunks).next_multiple_of(KEY_BLOCK);
            let keys = (lo + chunk * per).min(hi)..(lo + (chunk + 1) * per).min(hi);
            tile_queries.clear();
            for t in tile.t0..tile.t1 {
                let (qlo, qhi) = visible(qs.positions[t] as usize, qs.window);
                for h in tile.h0..tile.h1 {
                    let row = &qs.q[t * qw + h * hd..t * qw + (h + 1) * hd];
                    let dst = &mut qbuf[tile_queries.len() * hd..(tile_queries.len() + 1) * hd];
                    // The query rounded to f16, as the f16 path's dot products take it.
                    for (d, &x) in dst.iter_mut().zip(row) {
                        *d = f16::from_f32(x).to_f32();
                    }
                    tile_queries.push(TileQuery { lo: qlo, hi: qhi });
                }
            }
            let nq = tile_queries.len();
            max[..nq].fill(f32::NEG_INFINITY);
            sum[..nq].fill(0.0);
            acc[..nq * hd].fill(0.0);
            let mut st = TileState {
                kf: &mut kf,
                vf: &mut vf,
                max: &mut max[..nq],
                sum: &mut sum[..nq],
                acc: &mut acc[..nq * hd],
            };
            // SAFETY: `applies` checked AVX-512 and a head size that is a multiple of 16; every
            // key of `keys` is a position below the largest token position + 1, which the
            // caller checked lies inside the cache; the buffers have the documented sizes.
            unsafe {
                attend_f16_tile(
                    k,
                    v,
                    width,
                    hd,
                    tile.kv_head,
                    &qbuf[..nq * hd],
                    &tile_queries,
                    keys,
                    scale,
                    softcap,
                    &mut st,
                )
            };
            let mut qi = 0;
            for t in tile.t0..tile.t1 {
                for h in tile.h0..tile.h1 {
                    let a = &acc[qi * hd..(qi + 1) * hd];
                    if n_chunks == 1 {
                        let inv = if sum[qi] > 0.0 { 1.0 / sum[qi] } else { 0.0 };
                        // SAFETY: query (t, h)'s output slice lies inside `out` (n_tokens * qw
                        // values) and belongs to this tile alone.
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(out_ptr.0.add(t * qw + h * hd), hd)
                        };
                        for (o, &x) in o.iter_mut().zip(a) {
                            *o = x * inv;
                        }
                    } else {
                        // SAFETY: item `item`'s query `qi` has its own `stride` values in
                        // `partials` (tiles * n_chunks * tq * stride long).
                        let p = unsafe {
                            std::slice::from_raw_parts_mut(
                                partial_ptr.0.add((item * tq + qi) * stride),
                                stride,
                            )
                        };
                        p[0] = max[qi];
                        p[1] = sum[qi];
                        p[2..].copy_from_slice(a);
                    }
                    qi += 1;
                }
            }
        }
    });
    if n_chunks == 1 {
        return;
    }
    let mut merged = vec![0.0f32; hd];
    for (ti, tile) in tiles.iter().enumerate() {
        let mut qi = 0;
        for t in tile.t0..tile.t1 {
            for h in tile.h0..tile.h1 {
                let part = |c: usize| {
                    let at = ((ti * n_chunks + c) * tq + qi) * stride;
                    &partials[at..at + stride]
                };
                let m = (0..n_chunks)
                    .map(|c| part(c)[0])
                    .fold(f32::NEG_INFINITY, f32::max);
                merged.fill(0.0);
                let mut total = 0.0f32;
                for c in 0..n_chunks {
                    let p = part(c);
                    if p[1] == 0.0 {
                        continue;
                    }
                    // SAFETY: `applies` checked AVX-512.
                    let f = unsafe { exp_scalar(p[0] - m) };
                    total += p[1] * f;
                    for (o, &x) in merged.iter_mut().zip(&p[2..]) {
                        *o += x * f;
                    }
                }
                let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
                for (o, &x) in out[t * qw + h * hd..t * qw + (h + 1) * hd]
                    .iter_mut()
                    .zip(&merged)
                {
                    *o = x * inv;
                }
                qi += 1;
            }
        }
    }
}

/// [`exp_ps`] of one value.
///
/// # Safety
/// AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn exp_scalar(x: f32) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees AVX-512 F (this fn's contract), all `exp_ps` needs.
    let e = unsafe { exp_ps(_mm512_set1_ps(x)) };
    _mm_cvtss_f32(_mm512_castps512_ps128(e))
}
