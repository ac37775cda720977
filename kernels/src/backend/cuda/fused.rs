//! The fused steps of a layer ([`crate::backend::Backend`]'s `matmuls`, `norm_matmuls`,
//! `matmul_residual`, `gated_matmul_residual`, `rope_store`) on the GPU in few launches, so a
//! decoded token costs about ten launches per layer instead of twenty-five:
//! - products of one input: its activations quantized once (`quantize_q8_1`, or
//!   `rms_norm_q8_1` together with the norm), then one `mul_mat_vec_<type>_q8_1` launch per
//!   weight type for up to three weights (q and k of one type, v of another in Q4_K_M: two);
//!   prefill batches quantize once for `mul_mat_q_<type>`;
//! - output projections added to the residual: the matrix-vector kernel accumulates into it
//!   (the feed-forward's activation fused with the quantization of its input, `glu_q8_1`);
//! - `rope_store_f16`: biases, q/k norms, rope, the query scale and the f16 KV store of every
//!   sequence of the batch in one launch (the caches passed by value, no upload).
//!
//! Where a step's fast form does not apply (float weights, post-norms, quantized KV caches, more
//! than [`KV_MAX_SEQS`] sequences), it runs as the single ops it stands for
//! (`crate::backend::fused`), with the same results.

use std::ops::Range;

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::matmul::{matmul_path, MatmulPath, MMVQ_TOKENS};
use super::types::{cuda_type, MatVec};
use super::{
    cfg, check_len, check_rope, grid_yz, shape, to_i32, BackendError, CudaBackend, CudaKv,
    CudaWeight, DeviceBuf, GatedActivation, MAX_HEAD_DIM,
};
use crate::backend::fused;
use crate::backend::{KvTypes, QkvParams, RopeMode};
use crate::quant::GgmlType;

/// Sequences one `rope_store_f16` launch stores for (KV_MAX_SEQS in kv.cuh): the daemon's most
/// sequences per batch.
pub(super) const KV_MAX_SEQS: usize = 8;
/// Threads of a `rope_store_f16` block (ROPE_STORE_THREADS in rope.cu).
const ROPE_STORE_THREADS: u32 = 128;

/// The KV caches of a batch's sequences as `rope_store_f16` takes them by value (KvSeqs in
/// kv.cuh): segment `s` holds rows `first[s]..first[s + 1]`, its keys at `k[s]`, values at
/// `v[s]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct KvSeqs {
    /// Device addresses of the segments' key caches.
    k: [u64; KV_MAX_SEQS],
    /// Device addresses of their value caches.
    v: [u64; KV_MAX_SEQS],
    /// First batch row of each segment, then the end of the last.
    first: [i32; KV_MAX_SEQS + 1],
    /// Segments.
    n: i32,
}

// SAFETY: a plain #[repr(C)] struct of integers, laid out as the kernel's KvSeqs (kv.cuh).
unsafe impl DeviceRepr for KvSeqs {}

impl KvSeqs {
    /// Sets segment `s`: its caches' addresses and first row.
    pub(super) fn set(
        &mut self,
        s: usize,
        k: u64,
        v: u64,
        first: usize,
    ) -> Result<(), BackendError> {
        if s >= KV_MAX_SEQS {
            return Err(shape(
                "kv batch",
                format!("more than {KV_MAX_SEQS} sequences"),
            ));
        }
        self.k[s] = k;
        self.v[s] = v;
        self.first[s] = to_i32("kv batch", "row", first)?;
        Ok(())
    }

    /// Closes the table after `n` segments covering `rows` rows.
    pub(super) fn finish(&mut self, n: usize, rows: usize) -> Result<(), BackendError> {
        if n == 0 || n > KV_MAX_SEQS {
            return Err(shape("kv batch", format!("{n} sequences")));
        }
        self.first[n] = to_i32("kv batch", "rows", rows)?;
        self.n = n as i32;
        Ok(())
    }
}

/// `rope_f32`'s parameters by value (RopeArgs in rope.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RopeArgs {
    /// Rotated dimensions per head.
    n_dims: i32,
    /// Base of the frequencies.
    freq_base: f32,
    /// Linear position scaling.
    freq_scale: f32,
    /// YaRN's extrapolation mix.
    ext_factor: f32,
    /// Magnitude scale of cos/sin.
    attn_factor: f32,
    /// YaRN's correction range, low end.
    corr_low: f32,
    /// Its high end.
    corr_high: f32,
    /// 1 for the neox pairing, 0 for the normal one.
    neox: i32,
}

// SAFETY: a plain #[repr(C)] struct of 4-byte numbers, laid out as the kernel's RopeArgs.
unsafe impl DeviceRepr for RopeArgs {}

/// Whether `ws` multiplied by `n_tokens` rows run on the quantized matrix-vector kernels (the
/// decode path): every weight block-quantized, all with the same whole-block width `cols`.
pub(super) fn decode_q8(ws: &[&CudaWeight], n_tokens: usize, cols: usize) -> bool {
    !ws.is_empty()
        && n_tokens <= MMVQ_TOKENS
        && cols.is_multiple_of(32)
        && ws.iter().all(|w| {
            w.cols == cols
                && matmul_path(w.ty, w.rows, w.cols, n_tokens) == MatmulPath::MatVec
                && cuda_type(w.ty).is_some_and(|t| t.matvec == MatVec::Q8_1)
        })
}

/// Whether every weight of `ws` takes the int8 tensor-core path at `n_tokens` with width `cols`.
fn prefill_mmq(ws: &[&CudaWeight], n_tokens: usize, cols: usize) -> bool {
    !ws.is_empty()
        && ws.iter().all(|w| {
            w.cols == cols && matmul_path(w.ty, w.rows, w.cols, n_tokens) == MatmulPath::Mmq
        })
}

impl CudaBackend {
    /// [`crate::backend::Backend::matmuls`].
    pub(super) fn matmuls_on_device(
        &self,
        ws: &[&CudaWeight],
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        outs: &mut [&mut DeviceBuf<f32>],
    ) -> Result<(), BackendError> {
        const OP: &str = "matmuls";
        if ws.len() != outs.len() {
            return Err(shape(
                OP,
                format!("{} weights for {} outputs", ws.len(), outs.len()),
            ));
        }
        let Some(cols) = ws.first().map(|w| w.cols) else {
            return Ok(());
        };
        check_len(OP, x.len(), n_tokens * cols)?;
        if n_tokens > 0 && decode_q8(ws, n_tokens, cols) {
            let mut reused = self.reused();
            let q8 = self.quantize_q8_1(&mut reused.q8, x, n_tokens * cols)?;
            return self.mmvq_grouped(q8, n_tokens, false, ws, outs);
        }
        if n_tokens > 0 && prefill_mmq(ws, n_tokens, cols) {
            let mut reused = self.reused();
            if let Some(q8) = self.quantize_mmq(&mut reused.mmq, x, n_tokens * cols)? {
                for (w, out) in ws.iter().zip(outs.iter_mut()) {
                    self.launch_mmq(w, q8, n_tokens, out)?;
                }
                return Ok(());
            }
        }
        fused::matmuls(self, ws, x, n_tokens, outs)
    }

    /// The products of `ws` with activations already in `q8`, one launch per weight type (in
    /// groups of up to three), `accumulate` adding them to the outputs.
    fn mmvq_grouped(
        &self,
        q8: &DeviceBuf<u8>,
        n_tokens: usize,
        accumulate: bool,
        ws: &[&CudaWeight],
        outs: &mut [&mut DeviceBuf<f32>],
    ) -> Result<(), BackendError> {
        let mut pending: Vec<(&CudaWeight, &mut DeviceBuf<f32>)> = ws
            .iter()
            .copied()
            .zip(outs.iter_mut().map(|o| &mut **o))
            .collect();
        while !pending.is_empty() {
            let ty = pending[0].0.ty;
            let (mut same, rest): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(w, _)| w.ty == ty);
            self.launch_mmvq(q8, n_tokens, accumulate, &mut same)?;
            pending = rest;
        }
        Ok(())
    }

    /// [`crate::backend::Backend::norm_matmuls`]: on the decode path one `rms_norm_q8_1`
    /// (normalised values and their Q8_1 quantization in one pass) and the grouped products.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm_matmuls_on_device(
        &self,
        x: &DeviceBuf<f32>,
        norm: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        normed: &mut DeviceBuf<f32>,
        ws: &[&CudaWeight],
        outs: &mut [&mut DeviceBuf<f32>],
    ) -> Result<(), BackendError> {
        if n_rows == 0 || !decode_q8(ws, n_rows, dim) || ws.len() != outs.len() {
            return fused::norm_matmuls(self, x, norm, n_rows, dim, eps, normed, ws, outs);
        }
        let mut reused = self.reused();
        let q8 = self.rms_norm_q8_1(&mut reused.q8, x, norm, n_rows, dim, eps, normed)?;
        self.mmvq_grouped(q8, n_rows, false, ws, outs)
    }

    /// `rms_norm_q8_1`: `normed = rms_norm(x) * norm` over `n_rows` rows of `dim` (a multiple of
    /// 32) and the same values quantized to Q8_1 into the reused buffer `slot`, which it returns,
    /// in one launch (bit for bit `rms_norm_f32` and `quantize_q8_1` of its output).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rms_norm_q8_1<'r>(
        &self,
        slot: &'r mut Option<DeviceBuf<u8>>,
        x: &DeviceBuf<f32>,
        norm: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        normed: &mut DeviceBuf<f32>,
    ) -> Result<&'r DeviceBuf<u8>, BackendError> {
        const OP: &str = "rms_norm";
        let (w, dim_i) = self.rms_norm_args(x.len(), norm, n_rows, dim)?;
        check_len(OP, normed.len(), n_rows * dim)?;
        if !dim.is_multiple_of(32) {
            return Err(shape(OP, format!("rows of {dim}, need whole blocks of 32")));
        }
        let rows = u32::try_from(n_rows).map_err(|_| shape(OP, "too many rows".into()))?;
        let q8 = super::grown(
            &self.stream,
            &self.gpu,
            slot,
            n_rows * dim / 32 * super::matmul::Q8_1_BLOCK_BYTES,
        )
        .map_err(|e| self.err("allocating Q8_1 activations", e))?;
        let mut launch = self.stream.launch_builder(self.function("rms_norm_q8_1")?);
        launch
            .arg(x)
            .arg(w)
            .arg(&mut *normed)
            .arg(&mut *q8)
            .arg(&dim_i)
            .arg(&eps);
        // SAFETY: rms_norm_q8_1(const float* x, const float* weight, float* out, q8_1* y, int
        // dim, float eps) with n_rows blocks of 256 reads n_rows*dim values of x and dim weights
        // and writes n_rows*dim values of normed (lengths checked; normed is not x: the borrow
        // rules keep them apart) and n_rows*dim/32 Q8_1 blocks into q8 (grown to that size);
        // dim % 32 == 0 (checked).
        unsafe { launch.launch(cfg((rows, 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("rms_norm_q8_1", e))?;
        Ok(q8)
    }

    /// [`crate::backend::Backend::matmul_residual`]: on the decode path, without a post-norm,
    /// the product accumulated straight into the residual.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_residual_on_device(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        width: usize,
        post_norm: Option<(&CudaWeight, f32)>,
        scratch: &mut DeviceBuf<f32>,
        residual: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        if post_norm.is_some()
            || w.rows != width
            || n_tokens == 0
            || !decode_q8(&[w], n_tokens, w.cols)
        {
            return fused::matmul_residual(
                self, w, x, n_tokens, width, post_norm, scratch, residual,
            );
        }
        let mut reused = self.reused();
        let q8 = self.quantize_q8_1(&mut reused.q8, x, n_tokens * w.cols)?;
        self.launch_mmvq(q8, n_tokens, true, &mut [(w, residual)])
    }

    /// [`crate::backend::Backend::gated_matmul_residual`]: on the decode path, without a
    /// post-norm, `glu_q8_1` (the activation and the quantization of its result in one pass) and
    /// the product accumulated straight into the residual.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gated_matmul_residual_on_device(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        ff: usize,
        act: GatedActivation,
        w: &CudaWeight,
        n_tokens: usize,
        width: usize,
        post_norm: Option<(&CudaWeight, f32)>,
        scratch: &mut DeviceBuf<f32>,
        residual: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "gated_activation";
        if post_norm.is_some()
            || w.rows != width
            || w.cols != ff
            || n_tokens == 0
            || !decode_q8(&[w], n_tokens, ff)
        {
            return fused::gated_matmul_residual(
                self, gate, up, ff, act, w, n_tokens, width, post_norm, scratch, residual,
            );
        }
        let n = n_tokens * ff;
        check_len(OP, gate.len(), n)?;
        check_len(OP, up.len(), n)?;
        let mut reused = self.reused();
        let q8 = self.glu_q8_1(&mut reused.q8, gate, up, n, act)?;
        self.launch_mmvq(q8, n_tokens, true, &mut [(w, residual)])
    }

    /// `glu_q8_1`: the gated activation of the first `n` values of `gate` and `up` (a multiple
    /// of 32: rows of whole blocks) quantized to Q8_1 into the reused buffer `slot`, which it
    /// returns (the f32 result is not written).
    pub(super) fn glu_q8_1<'r>(
        &self,
        slot: &'r mut Option<DeviceBuf<u8>>,
        gate: &DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        n: usize,
        act: GatedActivation,
    ) -> Result<&'r DeviceBuf<u8>, BackendError> {
        const OP: &str = "glu_q8_1";
        check_len(OP, gate.len(), n)?;
        check_len(OP, up.len(), n)?;
        if !n.is_multiple_of(32) {
            return Err(shape(OP, format!("{n} values, need whole blocks of 32")));
        }
        let gelu = i32::from(act == GatedActivation::Gelu);
        let n_i64 = n as i64;
        let q8 = super::grown(
            &self.stream,
            &self.gpu,
            slot,
            n / 32 * super::matmul::Q8_1_BLOCK_BYTES,
        )
        .map_err(|e| self.err("allocating Q8_1 activations", e))?;
        let mut launch = self.stream.launch_builder(self.function(OP)?);
        launch
            .arg(gate)
            .arg(up)
            .arg(&mut *q8)
            .arg(&n_i64)
            .arg(&gelu);
        // SAFETY: glu_q8_1(const float* gate, const float* up, q8_1* y, i64 n, int gelu) over
        // ceil(n/256) blocks of 256 reads n values of gate and up (lengths checked) and writes
        // n/32 Q8_1 blocks into q8 (grown to that size); n % 32 == 0 (checked).
        unsafe { launch.launch(cfg((super::blocks_for(n, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err(OP, e))?;
        Ok(q8)
    }

    /// [`crate::backend::Backend::rope_store`]: one `rope_store_f16` launch for f16 caches of
    /// up to [`KV_MAX_SEQS`] sequences.
    pub(super) fn rope_store_on_device(
        &self,
        q: &mut DeviceBuf<f32>,
        k: &mut DeviceBuf<f32>,
        v: &mut DeviceBuf<f32>,
        positions: &[u32],
        p: &QkvParams<'_, CudaWeight>,
        caches: &mut [(&mut CudaKv, Range<usize>)],
    ) -> Result<(), BackendError> {
        const OP: &str = "rope_store";
        let n = positions.len();
        let fits = !caches.is_empty()
            && caches.len() <= KV_MAX_SEQS
            && p.head_dim <= MAX_HEAD_DIM
            && caches.iter().all(|(kv, _)| kv.shape.types == KvTypes::F16);
        if n == 0 || !fits {
            return fused::rope_store(self, q, k, v, positions, p, caches);
        }
        let hd = p.head_dim;
        let (qw, kw) = (p.n_heads * hd, p.n_kv_heads * hd);
        check_len(OP, q.len(), n * qw)?;
        check_len(OP, k.len(), n * kw)?;
        check_len(OP, v.len(), n * kw)?;
        check_rope(&p.rope, hd, p.freq_factors.map(|f| f.rows * f.cols))?;
        if let Some(f) = p.freq_factors.filter(|f| f.ty != GgmlType::F32) {
            return Err(self.unsupported(f));
        }
        // The caches' rows: in order, each within the batch and its cache.
        let mut order: Vec<usize> = (0..caches.len()).collect();
        order.sort_by_key(|&i| caches[i].1.start);
        let mut seqs = KvSeqs::default();
        let mut next = 0;
        for (s, &i) in order.iter().enumerate() {
            let (kv, rows) = &caches[i];
            if rows.start != next || rows.end > n || rows.is_empty() {
                return Err(shape(
                    OP,
                    format!("rows {rows:?} do not continue a batch of {n} at row {next}"),
                ));
            }
            if kv.shape.n_kv_heads != p.n_kv_heads || kv.shape.head_dim != hd {
                return Err(shape(
                    OP,
                    format!(
                        "{} KV heads of {hd} over a cache of {} of {}",
                        p.n_kv_heads, kv.shape.n_kv_heads, kv.shape.head_dim
                    ),
                ));
            }
            kv.shape.check_positions(OP, &positions[rows.clone()])?;
            seqs.set(
                s,
                kv.k.device_address(&self.stream),
                kv.v.device_address(&self.stream),
                rows.start,
            )?;
            next = rows.end;
        }
        if next != n {
            return Err(shape(OP, format!("the caches hold {next} of {n} rows")));
        }
        seqs.finish(caches.len(), n)?;
        let biases = match p.biases {
            Some((bq, bk, bv)) => Some((
                self.f32_vector(OP, bq, qw)?,
                self.f32_vector(OP, bk, kw)?,
                self.f32_vector(OP, bv, kw)?,
            )),
            None => None,
        };
        let norms = match p.qk_norm {
            Some((qn, kn)) => Some((self.f32_vector(OP, qn, hd)?, self.f32_vector(OP, kn, hd)?)),
            None => None,
        };
        let [corr_low, corr_high] = p.rope.corr_dims();
        let rope = RopeArgs {
            n_dims: to_i32(OP, "n_dims", p.rope.n_dims)?,
            freq_base: p.rope.freq_base,
            freq_scale: p.rope.freq_scale,
            ext_factor: p.rope.ext_factor,
            attn_factor: p.rope.attn_factor,
            corr_low,
            corr_high,
            neox: (p.rope.mode == RopeMode::Neox).into(),
        };
        let heads = u32::try_from(p.n_heads + 2 * p.n_kv_heads)
            .map_err(|_| shape(OP, "too many heads".into()))?;
        let tokens = grid_yz(OP, "tokens", n)?;
        let n_heads = to_i32(OP, "n_heads", p.n_heads)?;
        let n_kv = to_i32(OP, "n_kv_heads", p.n_kv_heads)?;
        let hd_i = to_i32(OP, "head_dim", hd)?;
        let q_scale = p.q_scale.unwrap_or(1.0);
        let null: u64 = 0;
        let mut reused = self.reused();
        let pos = self.device_positions(&mut reused.positions, positions)?;
        let mut launch = self.stream.launch_builder(self.function("rope_store_f16")?);
        launch.arg(&mut *q).arg(&mut *k).arg(&*v);
        match biases {
            Some((bq, bk, bv)) => launch.arg(bq).arg(bk).arg(bv),
            None => launch.arg(&null).arg(&null).arg(&null),
        };
        match norms {
            Some((qn, kn)) => launch.arg(qn).arg(kn),
            None => launch.arg(&null).arg(&null),
        };
        match p.freq_factors {
            Some(f) => launch.arg(&f.data),
            None => launch.arg(&null),
        };
        launch
            .arg(pos)
            .arg(&seqs)
            .arg(&rope)
            .arg(&n_heads)
            .arg(&n_kv)
            .arg(&hd_i)
            .arg(&p.norm_eps)
            .arg(&q_scale);
        // SAFETY: rope_store_f16(float* q, float* k, const float* v, const float* bq, bk, bv,
        // const float* q_norm, k_norm, const float* freq_factors, const u32* positions, KvSeqs
        // caches, RopeArgs rope, int n_heads, int n_kv_heads, int head_dim, float eps, float
        // q_scale) over (n_heads + 2 n_kv_heads, n_tokens) blocks of 128: reads and writes
        // n_tokens rows of q (n_heads*head_dim) and k (n_kv_heads*head_dim), reads as many of v
        // (lengths checked), biases of a row's width and norms of head_dim (F32 vectors of
        // those lengths, checked) when not null, n_dims/2 frequency factors when not null
        // (checked), n_tokens positions; writes head_dim halves per head at row positions[t] <
        // capacity (checked) of the f16 caches of t's segment, whose rows cover the batch in
        // order (checked); head_dim <= 256, n_dims even and <= head_dim (check_rope).
        unsafe { launch.launch(cfg((heads, tokens, 1), (ROPE_STORE_THREADS, 1, 1))) }
            .map_err(|e| self.err("rope_store_f16", e))?;
        Ok(())
    }
}
