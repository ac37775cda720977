//! Attention of one query head over one sequence's KV cache, computing what llama.cpp's CPU
//! backend computes for the same cache types:
//!
//! - **f16 keys and values** (the default): llama.cpp without flash attention, the path its
//!   f16 cache takes by default (and the one the committed fixtures were made with). The query is
//!   rounded to f16 (ggml's `vec_dot_type` of F16), each visible key is dotted with it (f32
//!   accumulation), scaled and soft-capped; a softmax over the visible keys
//!   ([`super::ops::softmax`]); then the weighted sum of the value rows converted to f32. (ggml's
//!   `mul_mat(v, kq)` rounds the weights to f16 too; here they stay f32.)
//! - **a quantized key or value type**: llama.cpp needs flash attention for a quantized V cache,
//!   and this is its CPU kernel, `ggml_compute_forward_flash_attn_ext_f16_one_chunk`: the query
//!   is converted once into the keys' dot partner (Q8_0 as ggml-cpu's x86 `quantize_row_q8_0`
//!   for Q8_0 and Q4_0 keys, f16 for f16 keys), each key is dotted with it by the same kernel as
//!   a matrix product's (`vec_dot_q8_0_q8_0`, `vec_dot_q4_0_q8_0`), scaled by `scale / softcap`
//!   then `softcap * tanh(s)`, and folded in one at a time with an online softmax (running
//!   maximum `M` and sum `S`, `expf`): a new maximum rescales the accumulator by `exp(M_old -
//!   M)`, otherwise the value row is weighted by `exp(s - M)`. Value rows are dequantized to
//!   f32 and accumulated with a fused multiply-add ([`axpy_row`]); the result is multiplied by
//!   `1 / S`. (For f16 values beside quantized keys ggml accumulates in an f16 vector; here the
//!   accumulator stays f32.)
//!
//! The caller rotates the query (and the output) where the cache is rotated
//! (`KvTypes::rotation`, [`super::hadamard`]); this module computes over the cache as it lies.
//!
//! The value accumulation of quantized rows has a scalar reference here and AVX2 twins in
//! `attention_avx2`, bit-identical to it (the products `d * q` are exact in f32, then one FMA
//! each), chosen at run time by [`super::isa`].

use std::ops::RangeInclusive;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::dot::{axpy_f32, vec_dot, VecDot};
use super::ops;
use super::quantize::{quantize_row_q8_0_act, BlockQ8_0Act};
use super::Isa;
use crate::quant::{BlockQ4_0, BlockQ8_0, QK};

/// Every key (or every value) row of one layer's cache of one sequence, in its storage type:
/// `capacity` positions of `width` values, row-major.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    /// f16 values.
    F16(&'a [f16]),
    /// Q8_0 blocks, `width / 32` per position.
    Q8_0(&'a [BlockQ8_0]),
    /// Q4_0 blocks, `width / 32` per position.
    Q4_0(&'a [BlockQ4_0]),
}

/// One head's row of keys or values at one position.
#[derive(Clone, Copy, Debug)]
enum Row<'a> {
    /// `head_dim` f16 values.
    F16(&'a [f16]),
    /// `head_dim / 32` Q8_0 blocks.
    Q8_0(&'a [BlockQ8_0]),
    /// `head_dim / 32` Q4_0 blocks.
    Q4_0(&'a [BlockQ4_0]),
}

impl<'a> KvRows<'a> {
    /// Head `head`'s row at position `pos` (heads of `head_dim` values, `width` per position).
    #[inline]
    fn row(&self, pos: usize, head: usize, width: usize, head_dim: usize) -> Row<'a> {
        let at = pos * width + head * head_dim;
        match *self {
            KvRows::F16(v) => Row::F16(&v[at..at + head_dim]),
            KvRows::Q8_0(b) => Row::Q8_0(&b[at / QK..(at + head_dim) / QK]),
            KvRows::Q4_0(b) => Row::Q4_0(&b[at / QK..(at + head_dim) / QK]),
        }
    }

    /// Whether these are f16 rows.
    fn is_f16(&self) -> bool {
        matches!(self, KvRows::F16(_))
    }
}

/// One layer's cache of one sequence as attention reads it.
#[derive(Clone, Copy, Debug)]
pub struct CacheRows<'a> {
    /// Keys.
    pub k: KvRows<'a>,
    /// Values.
    pub v: KvRows<'a>,
    /// Values per position (`n_kv_heads * head_dim`).
    pub width: usize,
    /// Values per head (a multiple of 32 for quantized rows).
    pub head_dim: usize,
}

/// How raw scores become attention logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Logits {
    /// Multiplier of `q · k`.
    pub scale: f32,
    /// Tanh soft-capping, if any.
    pub softcap: Option<f32>,
}

/// Per-thread buffers of [`attend`], sized on first use and reused.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    /// The query as f16 (partner of f16 keys).
    q16: Vec<f16>,
    /// The query as Q8_0 (partner of quantized keys).
    q8: Vec<BlockQ8_0Act>,
    /// Logits of the visible keys (f16 path).
    scores: Vec<f32>,
    /// A value row converted to f32.
    vbuf: Vec<f32>,
}

/// Attention of query head `q` (`head_dim` values) over KV head `kv_head` at positions `keys`
/// of `cache`, written to `out` (`head_dim` values).
///
/// # Panics
/// If the slices are shorter than `cache`'s shape says (callers check shapes first).
pub fn attend(
    cache: &CacheRows<'_>,
    kv_head: usize,
    keys: RangeInclusive<usize>,
    q: &[f32],
    logits: Logits,
    scratch: &mut AttentionScratch,
    out: &mut [f32],
) {
    if cache.k.is_f16() && cache.v.is_f16() {
        attend_f16(cache, kv_head, keys, q, logits, scratch, out);
    } else {
        attend_flash(cache, kv_head, keys, q, logits, scratch, out);
    }
}

/// The f16 cache's path (llama.cpp without flash attention; see the module's documentation).
fn attend_f16(
    cache: &CacheRows<'_>,
    kv_head: usize,
    keys: RangeInclusive<usize>,
    q: &[f32],
    logits: Logits,
    scratch: &mut AttentionScratch,
    out: &mut [f32],
) {
    let (hd, w) = (cache.head_dim, cache.width);
    let (KvRows::F16(k), KvRows::F16(v)) = (cache.k, cache.v) else {
        unreachable!("attend_f16 takes f16 rows only");
    };
    let AttentionScratch {
        q16, scores, vbuf, ..
    } = scratch;
    q16.resize(hd, f16::ZERO);
    vbuf.resize(hd, 0.0);
    q16.convert_from_f32_slice(q);
    scores.clear();
    for j in keys.clone() {
        let krow = &k[j * w + kv_head * hd..j * w + (kv_head + 1) * hd];
        let mut s = vec_dot::<f16>(krow, q16) * logits.scale;
        if let Some(cap) = logits.softcap {
            s = (s / cap).tanh() * cap;
        }
        scores.push(s);
    }
    ops::softmax(scores);
    out.iter_mut().for_each(|a| *a = 0.0);
    for (j, &p) in keys.zip(scores.iter()) {
        let vrow = &v[j * w + kv_head * hd..j * w + (kv_head + 1) * hd];
        vrow.convert_to_f32_slice(vbuf);
        axpy_f32(p, vbuf, out);
    }
}

/// The query converted to the keys' dot partner.
enum Query<'s> {
    /// For f16 keys.
    F16(&'s [f16]),
    /// For Q8_0 and Q4_0 keys.
    Q8(&'s [BlockQ8_0Act]),
}

/// `key · q` for the dot kernels of this CPU.
struct KeyDot {
    /// f16 keys.
    f16: super::dot::Kernels<f16, f16>,
    /// Q8_0 keys.
    q8_0: super::dot::Kernels<BlockQ8_0, BlockQ8_0Act>,
    /// Q4_0 keys.
    q4_0: super::dot::Kernels<BlockQ4_0, BlockQ8_0Act>,
}

impl KeyDot {
    fn new() -> Self {
        KeyDot {
            f16: f16::kernels(),
            q8_0: BlockQ8_0::kernels(),
            q4_0: BlockQ4_0::kernels(),
        }
    }

    #[inline]
    fn dot(&self, key: Row<'_>, q: &Query<'_>) -> f32 {
        match (key, q) {
            (Row::F16(k), Query::F16(q)) => self.f16.dot(k, q),
            (Row::Q8_0(k), Query::Q8(q)) => self.q8_0.dot(k, q),
            (Row::Q4_0(k), Query::Q8(q)) => self.q4_0.dot(k, q),
            _ => unreachable!("the query is converted for the keys' type"),
        }
    }
}

/// The flash-attention path of caches with a quantized type (see the module's documentation).
fn attend_flash(
    cache: &CacheRows<'_>,
    kv_head: usize,
    keys: RangeInclusive<usize>,
    q: &[f32],
    logits: Logits,
    scratch: &mut AttentionScratch,
    out: &mut [f32],
) {
    let (hd, w) = (cache.head_dim, cache.width);
    let AttentionScratch { q16, q8, vbuf, .. } = scratch;
    let query = if cache.k.is_f16() {
        q16.resize(hd, f16::ZERO);
        q16.convert_from_f32_slice(q);
        Query::F16(q16)
    } else {
        q8.resize(
            hd / QK,
            BlockQ8_0Act {
                d: 0.0,
                qs: [0; QK],
            },
        );
        quantize_row_q8_0_act(q, q8);
        Query::Q8(q8)
    };
    vbuf.resize(hd, 0.0);
    // ggml divides the scale by the cap first, then caps `cap * tanh(s)`.
    let scale = logits.softcap.map_or(logits.scale, |c| logits.scale / c);
    let kernels = KeyDot::new();
    let isa = super::isa();
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0.0f32;
    out.iter_mut().for_each(|a| *a = 0.0);
    for j in keys {
        let mut s = kernels.dot(cache.k.row(j, kv_head, w, hd), &query) * scale;
        if let Some(cap) = logits.softcap {
            s = cap * s.tanh();
        }
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > max {
            let old = max;
            max = s;
            ms = (old - max).exp();
            out.iter_mut().for_each(|a| *a *= ms);
        } else {
            vs = (s - max).exp();
        }
        axpy_row(isa, vs, cache.v.row(j, kv_head, w, hd), vbuf, out);
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    out.iter_mut().for_each(|a| *a *= inv);
}

/// `acc += alpha * row` with the row dequantized to f32 (f16 rows through `vbuf`), on `isa`.
#[inline]
fn axpy_row(isa: Isa, alpha: f32, row: Row<'_>, vbuf: &mut [f32], acc: &mut [f32]) {
    match row {
        Row::F16(v) => {
            v.convert_to_f32_slice(vbuf);
            axpy_f32(alpha, vbuf, acc);
        }
        Row::Q8_0(b) => axpy_q8_0(isa, alpha, b, acc),
        Row::Q4_0(b) => axpy_q4_0(isa, alpha, b, acc),
    }
}

/// `acc += alpha * dequantize(blocks)` for Q8_0 blocks (`acc` 32 values per block), with the
/// kernel of `isa` (the scalar one when this CPU lacks it).
///
/// # Panics
/// If the lengths do not match.
pub fn axpy_q8_0(isa: Isa, alpha: f32, blocks: &[BlockQ8_0], acc: &mut [f32]) {
    assert_eq!(blocks.len() * QK, acc.len(), "axpy_q8_0 length mismatch");
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && isa.is_available() {
        // SAFETY: AVX2, FMA and F16C were detected (`is_available`); lengths checked above.
        unsafe { super::attention_avx2::axpy_q8_0(alpha, blocks, acc) };
        return;
    }
    let _ = isa;
    for (b, acc) in blocks.iter().zip(acc.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (a, &q) in acc.iter_mut().zip(&b.qs) {
            *a = (d * f32::from(q)).mul_add(alpha, *a);
        }
    }
}

/// `acc += alpha * dequantize(blocks)` for Q4_0 blocks (byte `j` of a block holds values `j`,
/// low nibble, and `j + 16`), with the kernel of `isa` (the scalar one when this CPU lacks it).
///
/// # Panics
/// If the lengths do not match.
pub fn axpy_q4_0(isa: Isa, alpha: f32, blocks: &[BlockQ4_0], acc: &mut [f32]) {
    assert_eq!(blocks.len() * QK, acc.len(), "axpy_q4_0 length mismatch");
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && isa.is_available() {
        // SAFETY: AVX2, FMA and F16C were detected (`is_available`); lengths checked above.
        unsafe { super::attention_avx2::axpy_q4_0(alpha, blocks, acc) };
        return;
    }
    let _ = isa;
    for (b, acc) in blocks.iter().zip(acc.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let (lo, hi) = acc.split_at_mut(QK / 2);
        for (j, &byte) in b.qs.iter().enumerate() {
            let (q0, q1) = (i32::from(byte & 0x0f) - 8, i32::from(byte >> 4) - 8);
            lo[j] = (d * q0 as f32).mul_add(alpha, lo[j]);
            hi[j] = (d * q1 as f32).mul_add(alpha, hi[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize, GgmlType};

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn blocks<B: crate::quant::Block>(ty: GgmlType, x: &[f32]) -> Vec<B> {
        let bytes = quantize(ty, x).expect("quantizable");
        crate::quant::blocks_from_bytes::<B>(&bytes)
            .expect("whole blocks")
            .into_owned()
    }

    #[test]
    fn simd_value_accumulation_is_bit_identical_to_scalar() {
        let x = values(8 * QK, 3);
        let q8: Vec<BlockQ8_0> = blocks(GgmlType::Q8_0, &x);
        let q4: Vec<BlockQ4_0> = blocks(GgmlType::Q4_0, &x);
        for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
            for alpha in [0.0f32, 0.37, -1.5] {
                let start = values(8 * QK, 9);
                let (mut a8, mut s8) = (start.clone(), start.clone());
                axpy_q8_0(isa, alpha, &q8, &mut a8);
                axpy_q8_0(Isa::Scalar, alpha, &q8, &mut s8);
                assert_eq!(a8, s8, "q8_0 {isa:?}");
                let (mut a4, mut s4) = (start.clone(), start.clone());
                axpy_q4_0(isa, alpha, &q4, &mut a4);
                axpy_q4_0(Isa::Scalar, alpha, &q4, &mut s4);
                assert_eq!(a4, s4, "q4_0 {isa:?}");
            }
        }
        // And the scalar one is an FMA of the dequantized values.
        for (ty, bytes) in [
            (GgmlType::Q8_0, quantize(GgmlType::Q8_0, &x).expect("q8_0")),
            (GgmlType::Q4_0, quantize(GgmlType::Q4_0, &x).expect("q4_0")),
        ] {
            let mut deq = vec![0.0; x.len()];
            dequantize(ty, &bytes, &mut deq).expect("dequantize");
            let mut acc = vec![0.5f32; x.len()];
            match ty {
                GgmlType::Q8_0 => axpy_q8_0(Isa::Scalar, 0.25, &blocks(ty, &x), &mut acc),
                _ => axpy_q4_0(Isa::Scalar, 0.25, &blocks(ty, &x), &mut acc),
            }
            let want: Vec<f32> = deq.iter().map(|v| v.mul_add(0.25, 0.5)).collect();
            assert_eq!(acc, want, "{ty}");
        }
    }

    /// f64 attention of `q` over `keys` rows of `k` and `v` (already rounded as the cache holds
    /// them), with the logit rule of the path.
    fn reference(
        q: &[f64],
        k: &[f32],
        v: &[f32],
        hd: usize,
        keys: RangeInclusive<usize>,
        logits: Logits,
    ) -> Vec<f64> {
        let s: Vec<f64> = keys
            .clone()
            .map(|j| {
                let dot: f64 = (0..hd).map(|d| q[d] * f64::from(k[j * hd + d])).sum();
                let s = dot * f64::from(logits.scale);
                logits
                    .softcap
                    .map_or(s, |c| f64::from(c) * (s / f64::from(c)).tanh())
            })
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let total: f64 = e.iter().sum();
        let mut out = vec![0.0; hd];
        for (j, w) in keys.zip(&e) {
            for d in 0..hd {
                out[d] += w / total * f64::from(v[j * hd + d]);
            }
        }
        out
    }

    /// A cache's rows in their storage type, from the bytes the quantizer wrote.
    enum Owned {
        F16(Vec<f16>),
        Q8_0(Vec<BlockQ8_0>),
        Q4_0(Vec<BlockQ4_0>),
    }

    impl Owned {
        fn new(ty: GgmlType, bytes: &[u8]) -> Self {
            let whole = "whole blocks";
            match ty {
                GgmlType::F16 => Owned::F16(
                    bytes
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
                GgmlType::Q8_0 => Owned::Q8_0(
                    crate::quant::blocks_from_bytes(bytes)
                        .expect(whole)
                        .into_owned(),
                ),
                _ => Owned::Q4_0(
                    crate::quant::blocks_from_bytes(bytes)
                        .expect(whole)
                        .into_owned(),
                ),
            }
        }

        fn rows(&self) -> KvRows<'_> {
            match self {
                Owned::F16(v) => KvRows::F16(v),
                Owned::Q8_0(b) => KvRows::Q8_0(b),
                Owned::Q4_0(b) => KvRows::Q4_0(b),
            }
        }
    }

    #[test]
    fn each_path_computes_attention_over_the_values_it_holds() {
        // One KV head of 64 over 40 positions; the query sees positions 5..=37.
        let (hd, n) = (64, 40);
        let (kx, vx) = (values(n * hd, 11), values(n * hd, 12));
        let q: Vec<f32> = values(hd, 13).iter().map(|x| x * 4.0).collect();
        let round = |ty: GgmlType, x: &[f32]| -> (Vec<u8>, Vec<f32>) {
            let bytes = quantize(ty, x).expect("quantize");
            let mut back = vec![0.0; x.len()];
            dequantize(ty, &bytes, &mut back).expect("dequantize");
            (bytes, back)
        };
        for (kt, vt) in [
            (GgmlType::F16, GgmlType::F16),
            (GgmlType::Q8_0, GgmlType::Q8_0),
            (GgmlType::Q4_0, GgmlType::Q4_0),
            (GgmlType::Q8_0, GgmlType::F16),
            (GgmlType::F16, GgmlType::Q4_0),
        ] {
            let (kb, kr) = round(kt, &kx);
            let (vb, vr) = round(vt, &vx);
            let (k_rows, v_rows) = (Owned::new(kt, &kb), Owned::new(vt, &vb));
            let cache = CacheRows {
                k: k_rows.rows(),
                v: v_rows.rows(),
                width: hd,
                head_dim: hd,
            };
            // The query as the path rounds it: f16 for f16 keys, Q8_0 for quantized keys.
            let q_used: Vec<f64> = match kt {
                GgmlType::F16 => q.iter().map(|&x| f64::from(f16::from_f32(x))).collect(),
                _ => {
                    let mut act = vec![
                        BlockQ8_0Act {
                            d: 0.0,
                            qs: [0; QK]
                        };
                        hd / QK
                    ];
                    quantize_row_q8_0_act(&q, &mut act);
                    act.iter()
                        .flat_map(|b| b.qs.iter().map(move |&v| f64::from(b.d) * f64::from(v)))
                        .collect()
                }
            };
            for softcap in [None, Some(2.0)] {
                let logits = Logits {
                    scale: 0.125,
                    softcap,
                };
                let mut out = vec![f32::NAN; hd];
                let mut scratch = AttentionScratch::default();
                attend(&cache, 0, 5..=37, &q, logits, &mut scratch, &mut out);
                let want = reference(&q_used, &kr, &vr, hd, 5..=37, logits);
                let err = out
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (f64::from(*a) - b).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-5, "{kt}/{vt} softcap {softcap:?}: max error {err}");
                // And close to the exact attention of the unrounded cache.
                let exact = reference(
                    &q.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                    &kx,
                    &vx,
                    hd,
                    5..=37,
                    logits,
                );
                let far = out
                    .iter()
                    .zip(&exact)
                    .map(|(a, b)| (f64::from(*a) - b).abs())
                    .fold(0.0, f64::max);
                let bound = if kt == GgmlType::Q4_0 || vt == GgmlType::Q4_0 {
                    0.1
                } else {
                    0.02
                };
                assert!(far < bound, "{kt}/{vt}: {far} from exact");
            }
        }
    }
}
