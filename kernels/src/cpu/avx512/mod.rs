//! AVX-512 kernels (F, BW, VL and VNNI; x86-64 only) over the packed weight layout of
//! [`super::packed`]: sixteen weight rows sit in the sixteen 32-bit lanes of a register, so one
//! `vpdpbusd` multiplies four weights of every row by the same four activation bytes (broadcast
//! from memory) and adds them into that row's lane. No horizontal sums: a lane accumulates its
//! row block after block, and sixteen finished outputs are stored at once.
//!
//! - [`packed_k`]: Q4_K and Q6_K against Q8_K (with paired group sums);
//! - [`packed_legacy`]: Q8_0 and Q5_0 against Q8_0 (with block sums);
//! - [`attention`]: flash attention of a tile of queries over f16 keys and values;
//! - [`float`]: elementwise f32 operations (SwiGLU).
//!
//! Every kernel takes `T` activation rows (tokens), `1 ..= MAX_TOKENS`, and a run of blocks;
//! with `accumulate` it adds to the outputs (the sums of the row's earlier blocks, so a row can
//! be computed a range of blocks at a time in the same order of additions). It computes the integer
//! sums of each block exactly. The super-block kernels then do the scalar reference's float
//! operations in its order per row, so their outputs equal [`super::scalar`]'s bit for bit; the
//! 32-wide ones add each block's product with a fused multiply-add as llama.cpp does, agreeing
//! with the scalar reference to float rounding.
//!
//! # Safety
//! Every function here requires AVX-512 F, BW, VL and VNNI (plus AVX2, FMA and F16C);
//! [`super::packed`] only calls them when [`super::isa`] is [`super::Isa::Avx512`].

use std::arch::x86_64::*;

pub(super) mod attention;
pub(super) mod float;
pub(super) mod packed_k;
pub(super) mod packed_legacy;

/// The most activation rows a kernel call takes: enough that unpacking a weight tile is shared
/// by eight tokens, few enough that the per-token accumulators stay in the 32 registers.
pub(super) const MAX_TOKENS: usize = 8;

/// The accumulators a kernel starts from: zero, or (`accumulate`, continuing the row sums of
/// earlier blocks) the outputs `out[t][0..16]` as they are.
///
/// # Safety
/// AVX-512 F; with `accumulate`, each pointer of `out` reads 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn start<const T: usize>(out: &[*mut f32; T], accumulate: bool) -> [__m512; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    if accumulate {
        for (a, &o) in acc.iter_mut().zip(out) {
            // SAFETY: `o` reads 16 f32 (the contract).
            *a = unsafe { _mm512_loadu_ps(o) };
        }
    }
    acc
}

/// The four bytes at `p` broadcast to every 32-bit lane (the compiler folds this into the
/// memory operand of the `vpdpbusd` that uses it).
///
/// # Safety
/// AVX-512 F; `p` reads 4 bytes (any alignment).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bcast4(p: *const i8) -> __m512i {
    // SAFETY: `p` reads 4 bytes (the contract), read unaligned.
    _mm512_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// Sixteen f16 values at `p` as f32 lanes.
///
/// # Safety
/// AVX-512 F and F16C; `p` reads 32 bytes (any alignment).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load_f16x16(p: *const u8) -> __m512 {
    // SAFETY: `p` reads 32 bytes (the contract); an unaligned load.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// How far ahead of the tile it is computing a kernel asks for weight bytes. Decoding streams
/// each weight once from memory, and the hardware prefetchers alone leave a core waiting on
/// DRAM (a packed Q6_K output layer of 2048 × 128256 ran at about 4 GB/s on one core without
/// this, 5.5 GB/s with it). Measured on the 1B model's decode: 8 KiB (two to four K-quant
/// tiles) beat 4, 16, 32 and 64 KiB.
const PREFETCH_AHEAD: usize = 8 * 1024;

/// Prefetches into L2 the `len` bytes [`PREFETCH_AHEAD`] past `tile` (a later tile of the same
/// row group, or of the next group, which follows it in memory). Every line is asked for: every
/// other one (leaving its neighbour to the adjacent-line prefetcher) lost most of the gain, and
/// into L1 gained less (the lines arrive too early and crowd the tile being computed).
/// Prefetches never fault, so addresses past the weights are harmless.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn prefetch_ahead(tile: *const u8, len: usize) {
    let ahead = tile.wrapping_add(PREFETCH_AHEAD);
    for off in (0..len).step_by(64) {
        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(off).cast());
    }
}

/// 64 bytes at `p`.
///
/// # Safety
/// AVX-512 F; `p` reads 64 bytes (any alignment).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load64(p: *const u8) -> __m512i {
    // SAFETY: `p` reads 64 bytes (the contract); an unaligned load.
    unsafe { _mm512_loadu_si512(p.cast()) }
}
