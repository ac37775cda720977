//! The CUDA backend's KV caches: keys and values as raw bytes on the GPU in the cache's types
//! (f16, or ggml's Q8_0 / Q4_0 blocks, laid out as `backend/kv.rs` describes and `HostKv`
//! expects), the store kernels that convert keys and values on the device
//! (`kernels/cuda/kvcache.cu`: Q8_0 and Q4_0 quantized as the CPU backend quantizes them), and
//! attention over a cache of any pair of types (`kernels/cuda/attention.cu`, one kernel per
//! pair: quantized keys are dotted with the query quantized to Q8_0 in integer arithmetic, as the
//! CPU does; quantized values are dequantized as they are accumulated), and around both the
//! Walsh-Hadamard rotations of a quantized side (`kv_rotate_f32`, into a reused buffer: keys and
//! values before the store, queries before attention; the output rotated back in place).

use std::ops::Range;

use cudarc::driver::{CudaView, DevicePtrMut, LaunchArgs, PushKernelArg};

use super::fused::{KvSeqs, KV_MAX_SEQS};
use super::{
    blocks_for, cfg, check_len, grid_yz, grown, shape, to_i32, AttentionParams, BackendError,
    CudaBackend, DeviceBuf, KvShape, KvTypes, KvView, Lease, Reused, MAX_HEAD_DIM,
};
use crate::backend::KvType;

/// Kernels of `attention.cu`: prefill for each (key type, value type), then decode for each,
/// then the split combiner. [`attn_kernel`] picks one.
pub(super) const ATTENTION_KERNELS: &[&str] = &[
    "attn_prefill_f16_f16",
    "attn_prefill_f16_q8_0",
    "attn_prefill_f16_q4_0",
    "attn_prefill_q8_0_f16",
    "attn_prefill_q8_0_q8_0",
    "attn_prefill_q8_0_q4_0",
    "attn_prefill_q4_0_f16",
    "attn_prefill_q4_0_q8_0",
    "attn_prefill_q4_0_q4_0",
    "attn_decode_f16_f16",
    "attn_decode_f16_q8_0",
    "attn_decode_f16_q4_0",
    "attn_decode_q8_0_f16",
    "attn_decode_q8_0_q8_0",
    "attn_decode_q8_0_q4_0",
    "attn_decode_q4_0_f16",
    "attn_decode_q4_0_q8_0",
    "attn_decode_q4_0_q4_0",
    "attn_combine_f32",
];

/// Kernels of `kvcache.cu`: the store of each cache type ([`store_kernel`]), then the rotation.
pub(super) const KVCACHE_KERNELS: &[&str] = &[
    "kv_store_f16",
    "kv_store_q8_0",
    "kv_store_q4_0",
    "kv_rotate_f32",
];

/// A cache type's index in the kernel tables (the order of [`KvType::ALL`]).
fn type_index(ty: KvType) -> usize {
    match ty {
        KvType::F16 => 0,
        KvType::Q8_0 => 1,
        KvType::Q4_0 => 2,
    }
}

/// Most queries of a batch that attend in one decode launch (more: one launch per sequence):
/// the matrix-vector kernels' token group, beyond which a batch is a prefill.
pub(super) const DECODE_MAX_QUERIES: usize = 8;
/// Query heads one decode block serves (ATT_GROUP in attention.cu).
const DECODE_GROUP: usize = 8;
/// Most key splits of a decode launch (the partials buffer grows with them).
const MAX_SPLITS: usize = 32;
/// Fewest keys a split takes: less work per block than this costs more in the combine.
const MIN_SPLIT_KEYS: usize = 128;
/// Blocks per streaming multiprocessor a decode launch aims at, so that every SM has a few.
const BLOCKS_PER_SM: usize = 2;

/// Key splits of a decode launch of `blocks` (KV head groups x queries) blocks over at most
/// `max_context` keys on a GPU of `sm_count` multiprocessors (0: unknown, taken as 32): enough
/// blocks for [`BLOCKS_PER_SM`] per SM, at least [`MIN_SPLIT_KEYS`] keys each, at most
/// [`MAX_SPLITS`].
pub(super) fn decode_splits(sm_count: usize, blocks: usize, max_context: usize) -> usize {
    let sms = if sm_count == 0 { 32 } else { sm_count };
    let to_fill = (sms * BLOCKS_PER_SM).div_ceil(blocks.max(1));
    let by_length = max_context.div_ceil(MIN_SPLIT_KEYS);
    to_fill.min(by_length).clamp(1, MAX_SPLITS)
}

/// Key splits of the decode attention launches of a step of `n_queries` queries (one per
/// sequence) of `p` over at most `max_context` keys ([`decode_splits`] over the grid of KV head
/// groups x queries of one launch): one launch for all up to [`DECODE_MAX_QUERIES`], else one
/// per sequence, each split as for `max_context` (see `CudaBackend::attend`).
pub(super) fn decode_launch_splits(
    sm_count: usize,
    p: &AttentionParams,
    n_queries: usize,
    max_context: usize,
) -> usize {
    let group = p.n_heads / p.n_kv_heads.max(1);
    let grid_x = p.n_kv_heads * group.div_ceil(DECODE_GROUP);
    let per_launch = if n_queries <= DECODE_MAX_QUERIES {
        n_queries
    } else {
        1
    };
    decode_splits(sm_count, grid_x * per_launch, max_context)
}

/// The scalar arguments every attention kernel takes after the positions.
struct AttentionShape {
    /// Query heads.
    n_heads: i32,
    /// Key/value heads.
    n_kv_heads: i32,
    /// Dimension of each head.
    head_dim: i32,
    /// Logit scale.
    scale: f32,
    /// Sliding window (0: none).
    window: i32,
    /// Soft-cap of the logits (0: none).
    softcap: f32,
}

/// The positions argument of an attention launch: the reused buffer or a view of it.
trait PushPositions {
    /// Pushes it as the next kernel argument.
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>);
}

impl PushPositions for DeviceBuf<u32> {
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>) {
        launch.arg(self);
    }
}

impl PushPositions for CudaView<'_, u32> {
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>) {
        launch.arg(self);
    }
}

/// The attention kernel for caches of `types`: prefill (many queries) or decode.
fn attn_kernel(prefill: bool, types: KvTypes) -> &'static str {
    let pair = type_index(types.k) * 3 + type_index(types.v);
    ATTENTION_KERNELS[if prefill { pair } else { 9 + pair }]
}

/// The store kernel of a cache type.
fn store_kernel(ty: KvType) -> &'static str {
    KVCACHE_KERNELS[type_index(ty)]
}

/// One layer's KV cache of one sequence on the GPU: keys and values as the bytes of their types,
/// row `pos` at byte `pos * row_bytes`.
#[derive(Debug)]
pub struct CudaKv {
    /// Its shape and types.
    pub(super) shape: KvShape,
    /// Keys: `capacity` rows of `n_kv_heads * head_dim` values of `shape.types.k`.
    pub(super) k: DeviceBuf<u8>,
    /// Values: the same layout, of `shape.types.v`.
    pub(super) v: DeviceBuf<u8>,
    /// The bytes charged to the budget.
    lease: Lease,
}

impl CudaKv {
    /// Bytes charged to the budget.
    pub(super) fn bytes(&self) -> u64 {
        self.lease.bytes()
    }
}

impl CudaBackend {
    /// Rotates `values` f32 values (whole chunks of `n`) of `src` into `dst` with
    /// `kv_rotate_f32`.
    fn rotate(
        &self,
        src: &CudaView<'_, f32>,
        dst: &mut cudarc::driver::CudaViewMut<'_, f32>,
        values: usize,
        n: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "kv_rotate";
        check_len(OP, src.len(), values)?;
        check_len(OP, dst.len(), values)?;
        if values == 0 {
            return Ok(());
        }
        let chunks = u32::try_from(values / n).map_err(|_| shape(OP, "too many values".into()))?;
        let n_i = to_i32(OP, "chunk", n)?;
        let mut launch = self.stream.launch_builder(self.function("kv_rotate_f32")?);
        launch.arg(src).arg(dst).arg(&n_i);
        // SAFETY: kv_rotate_f32(const float* src, float* dst, int n) over `chunks` blocks of n
        // (64..=256, a power of two: KvTypes::rotation) threads reads `values` = chunks * n
        // values of `src` and writes as many of `dst` (lengths checked).
        unsafe { launch.launch(cfg((chunks, 1, 1), (n as u32, 1, 1))) }
            .map_err(|e| self.err("kv_rotate_f32", e))?;
        Ok(())
    }

    /// [`crate::backend::Backend::alloc_kv`].
    pub(super) fn new_kv(
        &self,
        capacity: usize,
        n_kv_heads: usize,
        head_dim: usize,
        types: KvTypes,
    ) -> Result<CudaKv, BackendError> {
        let shape = KvShape::new(capacity, n_kv_heads, head_dim, types)?;
        let lease = self.charge("KV cache", shape.bytes())?;
        let (k_bytes, v_bytes) = shape.bytes_of("alloc_kv", capacity)?;
        Ok(CudaKv {
            shape,
            k: self.alloc("KV cache keys", k_bytes as usize)?,
            v: self.alloc("KV cache values", v_bytes as usize)?,
            lease,
        })
    }

    /// [`crate::backend::Backend::kv_store`]: `kv_store_<type>` for the keys, then for the
    /// values. A sequence's rows of a step (`first_row..`) read their positions where the step
    /// staged them, so the store of several sequences' quantized caches (one call each) copies
    /// nothing and can be captured in a step's graph.
    pub(super) fn store_kv(
        &self,
        kv: &mut CudaKv,
        k: &DeviceBuf<f32>,
        v: &DeviceBuf<f32>,
        first_row: usize,
        positions: &[u32],
    ) -> Result<(), BackendError> {
        const OP: &str = "kv_store";
        let w = kv.shape.width();
        let end = (first_row + positions.len()) * w;
        check_len(OP, k.len(), end)?;
        check_len(OP, v.len(), end)?;
        kv.shape.check_positions(OP, positions)?;
        if positions.is_empty() || w == 0 {
            return Ok(());
        }
        let n = grid_yz(OP, "tokens", positions.len())?;
        let width = to_i32(OP, "width", w)?;
        let mut reused = self.reused();
        let Reused {
            positions: staged,
            rotated,
            ..
        } = &mut *reused;
        // A sequence's rows of a step read their positions where the step staged them.
        let (pos, at) = self.device_positions_at(staged, first_row, positions)?;
        let pos = pos.slice(at..at + positions.len());
        let types = kv.shape.types;
        let rot = kv.shape.rotation();
        let values = positions.len() * w;
        for (src, cache, ty, chunk) in [
            (k, &mut kv.k, types.k, rot.k),
            (v, &mut kv.v, types.v, rot.v),
        ] {
            let name = store_kernel(ty);
            let mut rows = src.slice(first_row * w..end);
            if let Some(n) = chunk {
                // Rotated into the reused buffer first; the previous side's store, earlier on
                // the stream, has read it by then.
                let buf = grown(&self.stream, &self.gpu, rotated, values)
                    .map_err(|e| self.err("allocating rotated rows", e))?;
                self.rotate(&rows, &mut buf.slice_mut(0..values), values, n)?;
                rows = buf.slice(0..values);
            }
            let mut launch = self.stream.launch_builder(self.function(name)?);
            launch.arg(&rows).arg(cache).arg(&pos).arg(&width);
            // SAFETY: kv_store_<type>(const float* src, <type>* cache, const u32* positions, int
            // width) over (ceil(width/256), n_tokens) blocks of 256 reads n_tokens*width values
            // of `rows` (a view of exactly that length) and writes one row of width values of
            // its type at each position < capacity (checked) of the cache, which holds capacity
            // such rows; for Q8_0/Q4_0 width is whole blocks of 32 (KvShape checked head_dim).
            unsafe { launch.launch(cfg((blocks_for(w, 256), n, 1), (256, 1, 1))) }
                .map_err(|e| self.err(name, e))?;
        }
        Ok(())
    }

    /// [`crate::backend::Backend::attention`]: [`CudaBackend::attend`] of one cache's rows.
    pub(super) fn attend_kv(
        &self,
        q: &DeviceBuf<f32>,
        kv: &CudaKv,
        first_row: usize,
        positions: &[u32],
        p: AttentionParams,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        self.attend(q, out, first_row, positions, &[(kv, 0..positions.len())], p)
    }

    /// Attention of the `positions.len()` queries in rows `row0..` of `q` (written to the same
    /// rows of `out`), each cache's rows (relative to `row0`, covering them in order) over that
    /// cache. Up to [`DECODE_MAX_QUERIES`] queries of up to [`KV_MAX_SEQS`] sequences: one
    /// `attn_decode_<k>_<v>` launch for all (each query over its own cache, a block per KV head
    /// serving its whole query group, keys split to fill the GPU, then `attn_combine_f32`);
    /// larger batches: per sequence `attn_prefill_<k>_<v>` (or the decode kernel for a single
    /// query). A quantized cache's rotations run once over all rows.
    pub(super) fn attend(
        &self,
        q: &DeviceBuf<f32>,
        out: &mut DeviceBuf<f32>,
        row0: usize,
        positions: &[u32],
        caches: &[(&CudaKv, Range<usize>)],
        p: AttentionParams,
    ) -> Result<(), BackendError> {
        const OP: &str = "attention";
        let hd = p.head_dim;
        if !hd.is_multiple_of(8) || hd > MAX_HEAD_DIM || hd == 0 {
            return Err(shape(
                OP,
                format!("head_dim {hd}: need a multiple of 8 up to {MAX_HEAD_DIM}"),
            ));
        }
        let window = match p.window {
            None => 0,
            Some(0) => return Err(shape(OP, "a sliding window of 0 positions".into())),
            Some(w) => i32::try_from(w).unwrap_or(i32::MAX),
        };
        let n = positions.len();
        let Some((first, _)) = caches.first() else {
            return Ok(());
        };
        let types = first.shape.types;
        let mut ordered: Vec<&(&CudaKv, Range<usize>)> = caches.iter().collect();
        ordered.sort_by_key(|(_, rows)| rows.start);
        let mut next = 0;
        for (kv, rows) in &ordered {
            if rows.start != next || rows.end > n || rows.is_empty() {
                return Err(shape(
                    OP,
                    format!("rows {rows:?} do not continue {n} queries at row {next}"),
                ));
            }
            if kv.shape.types != types {
                return Err(shape(OP, "caches of different types in one batch".into()));
            }
            kv.shape.check_attention(OP, &p)?;
            kv.shape.check_positions(OP, &positions[rows.clone()])?;
            next = rows.end;
        }
        if next != n {
            return Err(shape(OP, format!("the caches hold {next} of {n} queries")));
        }
        let qw = p.n_heads * hd;
        let end = (row0 + n) * qw;
        check_len(OP, q.len(), end)?;
        check_len(OP, out.len(), end)?;
        if n == 0 || p.n_heads == 0 {
            return Ok(());
        }
        let shapes = AttentionShape {
            n_heads: to_i32(OP, "n_heads", p.n_heads)?,
            n_kv_heads: to_i32(OP, "n_kv_heads", p.n_kv_heads)?,
            head_dim: to_i32(OP, "head_dim", hd)?,
            scale: p.scale,
            window,
            softcap: p.softcap.unwrap_or(0.0),
        };
        let mut reused = self.reused();
        let Reused {
            positions: staged,
            partials,
            rotated,
            ..
        } = &mut *reused;
        let (pos, at) = self.device_positions_at(staged, row0, positions)?;
        let pos = pos.slice(at..at + n);
        let rot = first.shape.rotation();
        let mut q_rows = q.slice(row0 * qw..end);
        if let Some(chunk) = rot.k {
            // Rotated keys are dotted with the queries rotated alike.
            let values = n * qw;
            let buf = grown(&self.stream, &self.gpu, rotated, values)
                .map_err(|e| self.err("allocating rotated queries", e))?;
            self.rotate(&q_rows, &mut buf.slice_mut(0..values), values, chunk)?;
            q_rows = buf.slice(0..values);
        }
        let mut out_rows = out.slice_mut(row0 * qw..end);
        let max_context = positions.iter().map(|&x| x as usize + 1).max().unwrap_or(1);
        if n <= DECODE_MAX_QUERIES && caches.len() <= KV_MAX_SEQS {
            self.attend_decode(
                &q_rows,
                &mut out_rows,
                &pos,
                &ordered,
                n,
                max_context,
                types,
                &shapes,
                partials,
            )?;
        } else {
            for (kv, rows) in &ordered {
                let q_seg = q_rows.slice(rows.start * qw..rows.end * qw);
                let mut out_seg = out_rows.slice_mut(rows.start * qw..rows.end * qw);
                let pos_seg = pos.slice(rows.start..rows.end);
                if rows.len() == 1 {
                    // Split as for the batch's longest context, so that every launch's grid
                    // follows from the batch alone (`decode_launch_splits`): a captured step
                    // of many sequences replays with the splits it was captured with.
                    self.attend_decode(
                        &q_seg,
                        &mut out_seg,
                        &pos_seg,
                        &[&(*kv, 0..1)],
                        1,
                        max_context,
                        types,
                        &shapes,
                        partials,
                    )?;
                } else {
                    self.attend_prefill(
                        &q_seg,
                        &mut out_seg,
                        &pos_seg,
                        kv,
                        rows.len(),
                        types,
                        &shapes,
                    )?;
                }
            }
        }
        self.rotate_output(&mut out_rows, n * qw, rot.v)
    }

    /// One `attn_prefill_<k>_<v>` launch: `n_queries` queries over one cache.
    #[allow(clippy::too_many_arguments)]
    fn attend_prefill(
        &self,
        q: &CudaView<'_, f32>,
        out: &mut cudarc::driver::CudaViewMut<'_, f32>,
        pos: &impl PushPositions,
        kv: &CudaKv,
        n_queries: usize,
        types: KvTypes,
        a: &AttentionShape,
    ) -> Result<(), BackendError> {
        const OP: &str = "attention";
        let name = attn_kernel(true, types);
        let heads = u32::try_from(a.n_heads).map_err(|_| shape(OP, "too many heads".into()))?;
        let blocks_y = grid_yz(OP, "query tiles", n_queries.div_ceil(8))?;
        let nq = to_i32(OP, "queries", n_queries)?;
        let null_part: u64 = 0;
        let mut launch = self.stream.launch_builder(self.function(name)?);
        launch.arg(q).arg(&kv.k).arg(&kv.v).arg(out).arg(&null_part);
        pos.push(&mut launch);
        launch
            .arg(&nq)
            .arg(&a.n_heads)
            .arg(&a.n_kv_heads)
            .arg(&a.head_dim)
            .arg(&a.scale)
            .arg(&a.window)
            .arg(&a.softcap);
        // SAFETY: attn_prefill_<k>_<v>(q, k, v, out, part, positions, n_queries, n_heads,
        // n_kv_heads, head_dim, scale, window, softcap) over (n_heads, ceil(n_queries/8), 1)
        // blocks of 256 reads n_queries*n_heads*head_dim values of q and writes as many of out
        // (views of exactly that length), reads cache rows of the cache's types at positions <=
        // each query's (< capacity, checked by `attend`); part is unused (null) with one split.
        // head_dim % 8 == 0 (% 32 for quantized types, KvShape), <= 256 and n_heads % n_kv_heads
        // == 0 were checked.
        unsafe { launch.launch(cfg((heads, blocks_y, 1), (256, 1, 1))) }
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }

    /// One `attn_decode_<k>_<v>` launch for `n_queries` queries of the segments `caches` (rows
    /// in order, covering them), split over the keys to fill the GPU, then `attn_combine_f32`.
    #[allow(clippy::too_many_arguments)]
    fn attend_decode(
        &self,
        q: &CudaView<'_, f32>,
        out: &mut cudarc::driver::CudaViewMut<'_, f32>,
        pos: &impl PushPositions,
        caches: &[&(&CudaKv, Range<usize>)],
        n_queries: usize,
        max_context: usize,
        types: KvTypes,
        a: &AttentionShape,
        partials: &mut Option<DeviceBuf<f32>>,
    ) -> Result<(), BackendError> {
        const OP: &str = "attention";
        let mut seqs = KvSeqs::default();
        for (s, (kv, rows)) in caches.iter().enumerate() {
            seqs.set(
                s,
                kv.k.device_address(&self.stream),
                kv.v.device_address(&self.stream),
                rows.start,
            )?;
        }
        seqs.finish(caches.len(), n_queries)?;
        let (n_heads, head_dim) = (a.n_heads as usize, a.head_dim as usize);
        let group = n_heads / a.n_kv_heads as usize;
        let grid_x = a.n_kv_heads as usize * group.div_ceil(DECODE_GROUP);
        let n_splits = decode_splits(self.sm_count, grid_x * n_queries, max_context);
        let ny = grid_yz(OP, "queries", n_queries)?;
        let nq = to_i32(OP, "queries", n_queries)?;
        let gx = u32::try_from(grid_x).map_err(|_| shape(OP, "too many heads".into()))?;
        let null_part: u64 = 0;
        let mut part = if n_splits > 1 {
            Some(
                grown(
                    &self.stream,
                    &self.gpu,
                    partials,
                    n_queries * n_heads * n_splits * (head_dim + 2),
                )
                .map_err(|e| self.err("allocating attention partials", e))?,
            )
        } else {
            None
        };
        let name = attn_kernel(false, types);
        let mut launch = self.stream.launch_builder(self.function(name)?);
        launch.arg(q).arg(&seqs).arg(&mut *out);
        match part.as_mut() {
            Some(part) => launch.arg(&mut **part),
            None => launch.arg(&null_part),
        };
        pos.push(&mut launch);
        launch
            .arg(&nq)
            .arg(&a.n_heads)
            .arg(&a.n_kv_heads)
            .arg(&a.head_dim)
            .arg(&a.scale)
            .arg(&a.window)
            .arg(&a.softcap);
        // SAFETY: attn_decode_<k>_<v>(q, KvSeqs caches, out, part, positions, n_queries, n_heads,
        // n_kv_heads, head_dim, scale, window, softcap) over (n_kv_heads * ceil(group/8),
        // n_queries, n_splits) blocks of 128 reads n_queries*n_heads*head_dim values of q and
        // (one split) writes as many of out (views of exactly that length); each query reads
        // the cache of its segment (caches' rows cover the queries in order, checked) at
        // positions <= its own < capacity (checked by `attend`); with splits it writes
        // n_queries*n_heads*n_splits*(head_dim+2) partials into `part`, which holds that many.
        unsafe { launch.launch(cfg((gx, ny, n_splits as u32), (128, 1, 1))) }
            .map_err(|e| self.err(name, e))?;
        drop(launch);
        if let Some(part) = part.as_deref() {
            let heads = u32::try_from(n_heads).map_err(|_| shape(OP, "too many heads".into()))?;
            let splits_i = n_splits as i32;
            let mut combine = self
                .stream
                .launch_builder(self.function("attn_combine_f32")?);
            combine
                .arg(part)
                .arg(out)
                .arg(&a.n_heads)
                .arg(&a.head_dim)
                .arg(&splits_i);
            // SAFETY: attn_combine_f32(const float* part, float* out, int n_heads, int
            // head_dim, int n_splits) over (n_heads, n_queries) blocks of 128 reads the
            // partials the decode kernel wrote and writes n_queries*n_heads*head_dim values of
            // out (a view of that length).
            unsafe { combine.launch(cfg((heads, ny, 1), (128, 1, 1))) }
                .map_err(|e| self.err("attn_combine_f32", e))?;
        }
        Ok(())
    }

    /// Rotates an attention output over rotated values back, in place (`None`: nothing to do).
    fn rotate_output(
        &self,
        out: &mut cudarc::driver::CudaViewMut<'_, f32>,
        values: usize,
        chunk: Option<usize>,
    ) -> Result<(), BackendError> {
        const OP: &str = "kv_rotate";
        let Some(n) = chunk else {
            return Ok(());
        };
        check_len(OP, out.len(), values)?;
        if values == 0 {
            return Ok(());
        }
        let chunks = u32::try_from(values / n).map_err(|_| shape(OP, "too many values".into()))?;
        let n_i = to_i32(OP, "chunk", n)?;
        let (ptr, _record) = out.device_ptr_mut(&self.stream);
        let mut launch = self.stream.launch_builder(self.function("kv_rotate_f32")?);
        launch.arg(&ptr).arg(&ptr).arg(&n_i);
        // SAFETY: kv_rotate_f32(const float* src, float* dst, int n) with src == dst == `out`
        // (borrowed mutably for the launch) over `chunks` blocks of n threads reads and writes
        // chunks * n = `values` values (checked); each block reads its chunk into shared memory
        // before writing it back.
        unsafe { launch.launch(cfg((chunks, 1, 1), (n as u32, 1, 1))) }
            .map_err(|e| self.err("kv_rotate_f32", e))?;
        Ok(())
    }

    /// [`crate::backend::Backend::kv_view`].
    pub(super) fn view_kv<'a>(
        &'a self,
        kv: &'a CudaKv,
        len: usize,
    ) -> Result<KvView<'a>, BackendError> {
        let (k_bytes, v_bytes) = kv.shape.bytes_of("kv_view", len)?;
        Ok(KvView {
            len,
            n_kv_heads: kv.shape.n_kv_heads,
            head_dim: kv.shape.head_dim,
            types: kv.shape.types,
            k: self.bytes_of(&kv.k, k_bytes as usize)?,
            v: self.bytes_of(&kv.v, v_bytes as usize)?,
        })
    }

    /// [`crate::backend::Backend::import_kv`].
    pub(super) fn copy_kv(
        &self,
        src: &KvView<'_>,
        capacity: usize,
    ) -> Result<CudaKv, BackendError> {
        let (_, k_bytes, v_bytes) = src.check("import_kv", capacity)?;
        let mut kv = self.new_kv(capacity, src.n_kv_heads, src.head_dim, src.types)?;
        if k_bytes > 0 {
            self.copy_in(
                &mut kv.k.slice_mut(0..k_bytes as usize),
                &src.k,
                "KV cache keys",
            )?;
        }
        if v_bytes > 0 {
            self.copy_in(
                &mut kv.v.slice_mut(0..v_bytes as usize),
                &src.v,
                "KV cache values",
            )?;
        }
        Ok(kv)
    }
}
