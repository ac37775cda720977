//! The matrix multiply over packed weights: `out[t][r] = Σ_c W[r][c] · x[t][c]`, with `W` in
//! the packed layout. Activations are converted once per call (over the pool for long
//! batches); the threads take chunks of row groups from a shared counter.
//!
//! Many tokens (prefill): within a chunk the columns are taken a span of blocks at a time
//! ([`SPAN_BYTES`] of weights per group), and for each span the tokens in tiles of up to
//! [`MAX_TOKENS`], each tile running over the chunk's groups: a tile's activations for the span
//! stay in L1 while the groups' weights go past, and the kernels add each span to the row sums
//! of the previous ones (the same additions in the same order as one pass).
//!
//! One token (decode) or a few (a batch of decoding sequences) stream each weight once: the
//! chunks are then sized for balance only.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::act::{BlockQ8KPairs, BlockQ8_0Sum};
use super::layout::PACK_ROWS;
use crate::cpu::dot::Activation;
use crate::cpu::matmul::{
    convert_activations, expect_len, MatmulScratch, OutPtr, QMatrix, ScratchBuffer,
    CHUNKS_PER_THREAD,
};
use crate::cpu::{Isa, KernelError, ThreadPool};
use crate::quant::types::{QK, QK_K};
use crate::quant::GgmlType;

#[cfg(target_arch = "x86_64")]
use crate::cpu::avx512::{packed_k, packed_legacy, MAX_TOKENS};
#[cfg(not(target_arch = "x86_64"))]
const MAX_TOKENS: usize = 8;

/// A kernel over one row group: `(tiles, blocks, acts, out, accumulate)` for
/// `n ∈ 1..=MAX_TOKENS` tokens (the slices hold `n` pointers).
type GroupKernel<A> = unsafe fn(*const u8, usize, &[*const A], &[*mut f32], bool);

/// Weight bytes of one row group a prefill pass covers at a time: with the activations of a
/// tile of tokens over the same columns (about as many bytes) they fit in L1.
const SPAN_BYTES: usize = 12 * 1024;

/// Row groups a prefill chunk holds at most: their weights for a span stay in L2 while every
/// token tile goes past.
const PREFILL_CHUNK_GROUPS: usize = 16;

/// `[p[0], .., p[N - 1]]`.
fn first<T: Copy, const N: usize>(p: &[T]) -> [T; N] {
    std::array::from_fn(|i| p[i])
}

/// A [`GroupKernel`] calling the `T`-token instance of `$kernel` for `acts.len()` tokens.
macro_rules! by_tokens {
    ($name:ident, $module:ident :: $kernel:ident, $act:ty) => {
        /// # Safety
        /// As the kernel it calls; `acts` and `out` hold `1..=MAX_TOKENS` pointers each.
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(
            tiles: *const u8,
            blocks: usize,
            acts: &[*const $act],
            out: &[*mut f32],
            accumulate: bool,
        ) {
            // SAFETY: the caller's contract, forwarded.
            unsafe {
                match acts.len() {
                    1 => $module::$kernel::<1>(tiles, blocks, first(acts), first(out), accumulate),
                    2 => $module::$kernel::<2>(tiles, blocks, first(acts), first(out), accumulate),
                    3 => $module::$kernel::<3>(tiles, blocks, first(acts), first(out), accumulate),
                    4 => $module::$kernel::<4>(tiles, blocks, first(acts), first(out), accumulate),
                    5 => $module::$kernel::<5>(tiles, blocks, first(acts), first(out), accumulate),
                    6 => $module::$kernel::<6>(tiles, blocks, first(acts), first(out), accumulate),
                    7 => $module::$kernel::<7>(tiles, blocks, first(acts), first(out), accumulate),
                    8 => $module::$kernel::<8>(tiles, blocks, first(acts), first(out), accumulate),
                    n => unreachable!("{n} tokens for a packed kernel"),
                }
            }
        }
    };
}

by_tokens!(q4_k, packed_k::q4_k, BlockQ8KPairs);
by_tokens!(q6_k, packed_k::q6_k, BlockQ8KPairs);
by_tokens!(q8_0, packed_legacy::q8_0, BlockQ8_0Sum);
by_tokens!(q5_0, packed_legacy::q5_0, BlockQ8_0Sum);

/// `out[t * w.rows + r] = Σ_c W[r][c] · x[t * w.cols + c]` for a packed `w`, on every thread of
/// `pool`.
///
/// # Errors
/// If the type has no packed kernel or this CPU cannot run them, the shape is not whole row
/// groups and blocks, or a buffer length does not match the shape.
pub(crate) fn matmul_packed(
    pool: &ThreadPool,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) -> Result<(), KernelError> {
    if crate::cpu::isa() < Isa::Avx512 {
        return Err(KernelError::UnsupportedType(w.ty));
    }
    #[cfg(target_arch = "x86_64")]
    {
        match w.ty {
            GgmlType::Q4_K => run::<BlockQ8KPairs>(pool, w, QK_K, q4_k, x, n_tokens, out, scratch),
            GgmlType::Q6_K => run::<BlockQ8KPairs>(pool, w, QK_K, q6_k, x, n_tokens, out, scratch),
            GgmlType::Q8_0 => run::<BlockQ8_0Sum>(pool, w, QK, q8_0, x, n_tokens, out, scratch),
            GgmlType::Q5_0 => run::<BlockQ8_0Sum>(pool, w, QK, q5_0, x, n_tokens, out, scratch),
            other => Err(KernelError::UnsupportedType(other)),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (pool, x, n_tokens, out, scratch);
        Err(KernelError::UnsupportedType(w.ty))
    }
}

/// A raw pointer to the converted activations that the pool's threads may share (read only).
#[derive(Clone, Copy)]
struct ActsPtr<A>(*const A);
// SAFETY: the threads only read through it while `run` keeps the buffer borrowed.
unsafe impl<A: Sync> Send for ActsPtr<A> {}
// SAFETY: as above.
unsafe impl<A: Sync> Sync for ActsPtr<A> {}

#[allow(clippy::too_many_arguments)]
fn run<A: ScratchBuffer>(
    pool: &ThreadPool,
    w: &QMatrix<'_>,
    block: usize,
    kernel: GroupKernel<A>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) -> Result<(), KernelError> {
    let (rows, cols, ty) = (w.rows, w.cols, w.ty);
    if !cols.is_multiple_of(block) {
        return Err(KernelError::RowNotBlocks { ty, cols, block });
    }
    if !rows.is_multiple_of(PACK_ROWS) {
        return Err(KernelError::Length {
            what: "packed rows (whole groups of 16)",
            expected: rows.next_multiple_of(PACK_ROWS),
            got: rows,
        });
    }
    debug_assert_eq!(A::BLOCK, block);
    let blocks = cols / block;
    let group_bytes = PACK_ROWS * blocks * ty.block_bytes();
    expect_len("weight bytes", rows / PACK_ROWS * group_bytes, w.data.len())?;
    expect_len("activations x", n_tokens * cols, x.len())?;
    expect_len("output", n_tokens * rows, out.len())?;
    if rows == 0 || n_tokens == 0 {
        return Ok(());
    }
    let acts = convert_activations::<A>(pool, x, cols, blocks, n_tokens, scratch);
    let acts_ptr = ActsPtr(acts.as_ptr());

    let groups = rows / PACK_ROWS;
    let balanced = groups.div_ceil(pool.n_threads() * CHUNKS_PER_THREAD).max(1);
    let tile_bytes = PACK_ROWS * ty.block_bytes();
    let (chunk, span) = if n_tokens > MAX_TOKENS {
        (
            balanced.min(PREFILL_CHUNK_GROUPS),
            (SPAN_BYTES / tile_bytes).clamp(1, blocks),
        )
    } else {
        (balanced, blocks)
    };
    let next = AtomicUsize::new(0);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let data = w.data.as_ptr() as usize;
    let job = |_thread: usize, _n: usize| {
        let (acts_ptr, out_ptr) = (acts_ptr, out_ptr);
        let mut act_rows = [std::ptr::null::<A>(); MAX_TOKENS];
        let mut out_rows = [std::ptr::null_mut::<f32>(); MAX_TOKENS];
        loop {
            let g0 = next.fetch_add(1, Ordering::Relaxed) * chunk;
            if g0 >= groups {
                break;
            }
            let g1 = (g0 + chunk).min(groups);
            let mut b0 = 0;
            while b0 < blocks {
                let nb = (blocks - b0).min(span);
                let mut t0 = 0;
                while t0 < n_tokens {
                    let n = (n_tokens - t0).min(MAX_TOKENS);
                    for (i, row) in act_rows.iter_mut().enumerate().take(n) {
                        // SAFETY: token t0 + i < n_tokens, so its blocks b0..b0+nb lie inside
                        // `acts` (n_tokens * blocks long).
                        *row = unsafe { acts_ptr.0.add((t0 + i) * blocks + b0) };
                    }
                    for g in g0..g1 {
                        for (i, row) in out_rows.iter_mut().enumerate().take(n) {
                            // SAFETY: columns 16g..16g+16 of token t0 + i's output row lie
                            // inside `out` (n_tokens * rows long, 16g + 16 <= rows).
                            *row = unsafe { out_ptr.0.add((t0 + i) * rows + g * PACK_ROWS) };
                        }
                        let tiles = (data + g * group_bytes + b0 * tile_bytes) as *const u8;
                        // SAFETY: `run` is only reached when isa() is Avx512 (checked above), so
                        // the CPU has the kernel's features; tiles b0..b0+nb of group g lie inside
                        // the weight bytes (length checked); the pointers are valid as shown
                        // above; each output slice belongs to this chunk's thread alone, and with
                        // `b0 > 0` holds the sums of blocks 0..b0 written by the previous span.
                        unsafe { kernel(tiles, nb, &act_rows[..n], &out_rows[..n], b0 > 0) };
                    }
                    t0 += n;
                }
                b0 += nb;
            }
        }
    };
    pool.run(&job);
    Ok(())
}

impl Activation for BlockQ8_0Sum {
    const BLOCK: usize = QK;
    const ZERO: Self = BlockQ8_0Sum {
        d: 0.0,
        sum: 0,
        qs: [0; QK],
    };
    fn quantize(x: &[f32], out: &mut [Self]) {
        super::act::quantize_row_q8_0_sum(x, out);
    }
}

impl Activation for BlockQ8KPairs {
    const BLOCK: usize = QK_K;
    const ZERO: Self = BlockQ8KPairs {
        d: 0.0,
        pairs16: [0; 8],
        pairs32: [0; 4],
        qs: [0; QK_K],
    };
    fn quantize(x: &[f32], out: &mut [Self]) {
        super::act::quantize_row_q8_k_pairs(x, out);
    }
}
