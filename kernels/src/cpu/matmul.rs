//! The quantized matrix multiply of the forward pass: `out[t][r] = Σ_c W[r][c] · x[t][c]`.
//!
//! `W` is `rows × cols`, stored row-major in GGUF's layout (each row a run of `cols / block`
//! blocks), `x` is `n_tokens × cols` f32. The activations are converted once per call into the
//! weight type's partner format (Q8_0, Q8_1, Q8_K, F16, ...), exactly as llama.cpp does. The
//! threads of the pool then take chunks of weight rows from a shared counter (so a thread slowed
//! by another process does not hold the others up) and, within a chunk, walk the tokens in tiles
//! of [`TILE`]: each weight block is loaded and unpacked once per tile of tokens.
//!
//! A matrix in the packed layout ([`Layout::Packed`], see [`super::packed`]) goes to the packed
//! kernels instead; the activation conversion and the work split are shared.

use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};

use super::dot::{Activation, Kernels, VecDot, TILE};
use super::packed::act::{BlockQ8KPairs, BlockQ8_0Sum};
use super::quantize::BlockQ8_0Act;
use super::{packed, KernelError, ThreadPool};
use crate::quant::*;

/// Bytes of weight rows a chunk should span for prefill: the chunk's rows stay in L1/L2 while
/// every token tile streams past them.
const PREFILL_CHUNK_BYTES: usize = 32 * 1024;

/// Chunks per thread to aim for, so threads that finish early can take over work.
pub(super) const CHUNKS_PER_THREAD: usize = 8;

/// How a weight matrix's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As in the GGUF file: row after row of blocks.
    Gguf,
    /// Repacked by [`packed::pack`] (rows interleaved in groups of [`packed::PACK_ROWS`]).
    Packed,
}

/// A weight matrix as stored in a GGUF file: `rows` rows of `cols` elements of type `ty`.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    /// The element / block type.
    pub ty: GgmlType,
    /// Output features (GGUF `ne[1]`).
    pub rows: usize,
    /// Input features, contiguous within a row (GGUF `ne[0]`).
    pub cols: usize,
    /// `rows * ty.row_bytes(cols)` bytes of blocks, aligned as the block struct needs (2 bytes
    /// for the quantized types, 4 for F32; GGUF data is 32-aligned).
    pub data: &'a [u8],
    /// The order of those bytes.
    pub layout: Layout,
}

/// Reusable buffers for the converted activations, so that steady-state calls never allocate.
/// One per thread that calls [`matmul`]; buffers only grow.
#[derive(Debug, Default)]
pub struct MatmulScratch {
    /// Q8_0 activations (for Q4_0, Q5_0, Q8_0 weights).
    q8_0: Vec<BlockQ8_0Act>,
    /// Q8_1 activations (for Q4_1, Q5_1 weights).
    q8_1: Vec<BlockQ8_1>,
    /// Q8_K activations (for the K-quants).
    q8_k: Vec<BlockQ8K>,
    /// F16 activations (for F16 weights).
    f16: Vec<f16>,
    /// BF16 activations (for BF16 weights).
    bf16: Vec<bf16>,
    /// F32 activations (a copy of `x`, for F32 weights).
    f32: Vec<f32>,
    /// Q8_0 activations with block sums (for packed Q8_0, Q5_0 weights).
    q8_0_sum: Vec<BlockQ8_0Sum>,
    /// Q8_K activations with paired sums (for packed Q4_K, Q6_K weights).
    q8_k_pairs: Vec<BlockQ8KPairs>,
}

impl MatmulScratch {
    /// Empty scratch; buffers grow on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Activation types that have a buffer in [`MatmulScratch`].
pub(super) trait ScratchBuffer: Activation {
    fn buffer(s: &mut MatmulScratch) -> &mut Vec<Self>;
}

macro_rules! scratch_buffer {
    ($t:ty, $field:ident) => {
        impl ScratchBuffer for $t {
            fn buffer(s: &mut MatmulScratch) -> &mut Vec<Self> {
                &mut s.$field
            }
        }
    };
}
scratch_buffer!(BlockQ8_0Act, q8_0);
scratch_buffer!(BlockQ8_1, q8_1);
scratch_buffer!(BlockQ8K, q8_k);
scratch_buffer!(f16, f16);
scratch_buffer!(bf16, bf16);
scratch_buffer!(f32, f32);
scratch_buffer!(BlockQ8_0Sum, q8_0_sum);
scratch_buffer!(BlockQ8KPairs, q8_k_pairs);

/// `out[t * w.rows + r] = Σ_c W[r][c] · x[t * w.cols + c]` for `t < n_tokens`, `r < w.rows`,
/// using every thread of `pool`.
///
/// # Errors
/// If the type has no dot product, `cols` is not a whole number of blocks, a buffer length does
/// not match the shape, or the weight bytes are misaligned.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) -> Result<(), KernelError> {
    if w.layout == Layout::Packed {
        return packed::matmul_packed(pool, w, x, n_tokens, out, scratch);
    }
    match w.ty {
        GgmlType::F32 => run::<f32>(pool, w, x, n_tokens, out, scratch),
        GgmlType::F16 => run::<f16>(pool, w, x, n_tokens, out, scratch),
        GgmlType::BF16 => run::<bf16>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q4_0 => run::<BlockQ4_0>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q4_1 => run::<BlockQ4_1>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q5_0 => run::<BlockQ5_0>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q5_1 => run::<BlockQ5_1>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q8_0 => run::<BlockQ8_0>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q2_K => run::<BlockQ2K>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q3_K => run::<BlockQ3K>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q4_K => run::<BlockQ4K>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q5_K => run::<BlockQ5K>(pool, w, x, n_tokens, out, scratch),
        GgmlType::Q6_K => run::<BlockQ6K>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ2_XXS => run::<BlockIQ2XXS>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ2_XS => run::<BlockIQ2XS>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ2_S => run::<BlockIQ2S>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ3_XXS => run::<BlockIQ3XXS>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ3_S => run::<BlockIQ3S>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ1_S => run::<BlockIQ1S>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ1_M => run::<BlockIQ1M>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ4_NL => run::<BlockIQ4NL>(pool, w, x, n_tokens, out, scratch),
        GgmlType::IQ4_XS => run::<BlockIQ4XS>(pool, w, x, n_tokens, out, scratch),
        GgmlType::TQ1_0 => run::<BlockTQ1_0>(pool, w, x, n_tokens, out, scratch),
        GgmlType::TQ2_0 => run::<BlockTQ2_0>(pool, w, x, n_tokens, out, scratch),
        GgmlType::MXFP4 => run::<BlockMXFP4>(pool, w, x, n_tokens, out, scratch),
        other => Err(KernelError::UnsupportedType(other)),
    }
}

/// Reinterprets weight bytes as blocks of `W`.
///
/// # Errors
/// If the bytes are not aligned for `W` or not a whole number of blocks.
pub fn as_blocks<W: VecDot>(data: &[u8]) -> Result<&[W], KernelError> {
    let size = std::mem::size_of::<W>();
    let align = std::mem::align_of::<W>();
    if !(data.as_ptr() as usize).is_multiple_of(align) {
        return Err(KernelError::Misaligned { ty: W::TYPE, align });
    }
    if !data.len().is_multiple_of(size) {
        return Err(KernelError::Length {
            what: "weight bytes (whole blocks)",
            expected: data.len() / size * size,
            got: data.len(),
        });
    }
    // SAFETY: the pointer is aligned for W and the length is a whole number of W; W is a
    // `#[repr(C)]` block of integers and half floats (or a plain float), for which every bit
    // pattern is a valid value, and the borrow keeps the bytes alive and immutable.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<W>(), data.len() / size) })
}

/// A raw pointer to the output that the pool's threads may share.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: threads write disjoint elements through it (each row chunk belongs to one thread),
// and `matmul` keeps the `&mut [f32]` borrowed until the pool has finished.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

fn run<W>(
    pool: &ThreadPool,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) -> Result<(), KernelError>
where
    W: VecDot,
    W::Act: ScratchBuffer,
{
    let (rows, cols) = (w.rows, w.cols);
    if cols % W::BLOCK != 0 {
        return Err(KernelError::RowNotBlocks {
            ty: W::TYPE,
            cols,
            block: W::BLOCK,
        });
    }
    let row_blocks = cols / W::BLOCK;
    let weights = as_blocks::<W>(w.data)?;
    expect_len("weight blocks", rows * row_blocks, weights.len())?;
    expect_len("activations x", n_tokens * cols, x.len())?;
    expect_len("output", n_tokens * rows, out.len())?;
    if rows == 0 || n_tokens == 0 {
        return Ok(());
    }
    let acts = convert_activations::<W::Act>(pool, x, cols, row_blocks, n_tokens, scratch);

    let kernels = W::kernels();
    let n_threads = pool.n_threads();
    let row_bytes = std::mem::size_of::<W>() * row_blocks;
    let balanced = rows.div_ceil(n_threads * CHUNKS_PER_THREAD).max(1);
    let chunk = if n_tokens >= TILE {
        (PREFILL_CHUNK_BYTES / row_bytes.max(1))
            .clamp(4, 256)
            .min(balanced)
    } else {
        balanced.clamp(16, 1024)
    };
    let next = AtomicUsize::new(0);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let job = |_thread: usize, _n: usize| loop {
        let r0 = next.fetch_add(1, Ordering::Relaxed) * chunk;
        if r0 >= rows {
            break;
        }
        let r1 = (r0 + chunk).min(rows);
        compute_chunk(
            &kernels,
            weights,
            acts,
            row_blocks,
            rows,
            n_tokens,
            r0..r1,
            out_ptr,
        );
    };
    pool.run(&job);
    Ok(())
}

/// Tokens from which the activation conversion is split over the pool (below, one thread
/// converts faster than the hand-off costs).
const PARALLEL_QUANTIZE_TOKENS: usize = 8;

/// Checks that a buffer's length is what the shape implies.
pub(super) fn expect_len(
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Converts every token row of `x` into the scratch buffer of `A` (grown as needed) and returns
/// the converted rows, `row_blocks` blocks per token.
pub(super) fn convert_activations<'s, A: ScratchBuffer>(
    pool: &ThreadPool,
    x: &[f32],
    cols: usize,
    row_blocks: usize,
    n_tokens: usize,
    scratch: &'s mut MatmulScratch,
) -> &'s [A] {
    let acts = A::buffer(scratch);
    let act_blocks = n_tokens * row_blocks;
    if acts.len() < act_blocks {
        acts.resize(act_blocks, A::ZERO);
    }
    let acts = &mut acts[..act_blocks];
    quantize_activations(pool, x, cols, acts, row_blocks, n_tokens);
    acts
}

/// A raw pointer to the activation buffer that the pool's threads may share.
struct ActsPtr<A>(*mut A);
// SAFETY: threads write disjoint token rows through it, and the `&mut [A]` it came from stays
// borrowed until the pool has finished.
unsafe impl<A: Send> Send for ActsPtr<A> {}
// SAFETY: as above.
unsafe impl<A: Send> Sync for ActsPtr<A> {}

/// Converts each token row of `x` into `acts` (`row_blocks` blocks per token), over the pool's
/// threads for longer batches.
fn quantize_activations<A: Activation>(
    pool: &ThreadPool,
    x: &[f32],
    cols: usize,
    acts: &mut [A],
    row_blocks: usize,
    n_tokens: usize,
) {
    if n_tokens < PARALLEL_QUANTIZE_TOKENS || pool.n_threads() == 1 {
        for (xr, ar) in x.chunks_exact(cols).zip(acts.chunks_exact_mut(row_blocks)) {
            A::quantize(xr, ar);
        }
        return;
    }
    debug_assert_eq!(acts.len(), n_tokens * row_blocks);
    let base = ActsPtr(acts.as_mut_ptr());
    let base = &base;
    pool.run(&|thread, n_threads| {
        for t in (thread..n_tokens).step_by(n_threads) {
            // SAFETY: token t's blocks [t * row_blocks, (t + 1) * row_blocks) lie inside `acts`
            // (length n_tokens * row_blocks) and only this thread handles token t.
            let row =
                unsafe { std::slice::from_raw_parts_mut(base.0.add(t * row_blocks), row_blocks) };
            A::quantize(&x[t * cols..(t + 1) * cols], row);
        }
    });
}

/// Rows `range` of the output for every token.
#[allow(clippy::too_many_arguments)]
#[inline]
fn compute_chunk<W, A>(
    kernels: &Kernels<W, A>,
    weights: &[W],
    acts: &[A],
    row_blocks: usize,
    rows: usize,
    n_tokens: usize,
    range: std::ops::Range<usize>,
    out: OutPtr,
) {
    let act = |t: usize| &acts[t * row_blocks..(t + 1) * row_blocks];
    let write = |t: usize, r: usize, v: f32| {
        debug_assert!(t < n_tokens && r < rows);
        // SAFETY: t < n_tokens and r < rows, so the index is inside `out` (its length was
        // checked to be n_tokens * rows); row r belongs to this thread's chunk only.
        unsafe { *out.0.add(t * rows + r) = v };
    };
    let row = |r: usize| &weights[r * row_blocks..(r + 1) * row_blocks];
    let mut t = 0;
    while t + TILE <= n_tokens {
        let a: [&[A]; TILE] = std::array::from_fn(|k| act(t + k));
        for r in range.clone() {
            let v = kernels.dot_tile(row(r), a);
            for (k, v) in v.into_iter().enumerate() {
                write(t + k, r, v);
            }
        }
        t += TILE;
    }
    while t < n_tokens {
        let a = act(t);
        let mut r = range.start;
        while r + 2 <= range.end {
            let [v0, v1] = kernels.dot_pair(row(r), row(r + 1), a);
            write(t, r, v0);
            write(t, r + 1, v1);
            r += 2;
        }
        if r < range.end {
            write(t, r, kernels.dot(row(r), a));
        }
        t += 1;
    }
}
