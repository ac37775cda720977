//! The CUDA backend's KV caches: keys and values as raw bytes on the GPU in the cache's types
//! (f16, or ggml's Q8_0 / Q4_0 blocks, laid out as `backend/kv.rs` describes and `HostKv`
//! expects), the store kernels that convert keys and values on the device
//! (`kernels/cuda/kvcache.cu`: Q8_0 and Q4_0 quantized as the CPU backend quantizes them), and
//! attention over a cache of any pair of types (`kernels/cuda/attention.cu`, one kernel per
//! pair: quantized keys are dotted with the query quantized to Q8_0 in integer arithmetic, as the
//! CPU does; quantized values are dequantized as they are accumulated), and around both the
//! Walsh-Hadamard rotations of a quantized side (`kv_rotate_f32`, into a reused buffer: keys and
//! values before the store, queries before attention; the output rotated back in place).

use cudarc::driver::{CudaView, DevicePtrMut, PushKernelArg};

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
    /// values.
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
            positions: on_device,
            positions_dev,
            rotated,
            ..
        } = &mut *reused;
        let pos = self.device_positions(on_device, positions_dev, positions)?;
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
            launch.arg(&rows).arg(cache).arg(pos).arg(&width);
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

    /// [`crate::backend::Backend::attention`]: `attn_prefill_<k>_<v>` for several queries,
    /// `attn_decode_<k>_<v>` (split over the context, then `attn_combine_f32`) for one.
    pub(super) fn attend_kv(
        &self,
        q: &DeviceBuf<f32>,
        kv: &CudaKv,
        first_row: usize,
        positions: &[u32],
        p: AttentionParams,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "attention";
        let hd = p.head_dim;
        if !hd.is_multiple_of(8) || hd > MAX_HEAD_DIM || hd == 0 {
            return Err(shape(
                OP,
                format!("head_dim {hd}: need a multiple of 8 up to {MAX_HEAD_DIM}"),
            ));
        }
        kv.shape.check_attention(OP, &p)?;
        kv.shape.check_positions(OP, positions)?;
        let window = match p.window {
            None => 0,
            Some(0) => return Err(shape(OP, "a sliding window of 0 positions".into())),
            Some(w) => i32::try_from(w).unwrap_or(i32::MAX),
        };
        let softcap = p.softcap.unwrap_or(0.0);
        let qw = p.n_heads * hd;
        let n_queries = positions.len();
        let end = (first_row + n_queries) * qw;
        check_len(OP, q.len(), end)?;
        check_len(OP, out.len(), end)?;
        if n_queries == 0 || p.n_heads == 0 {
            return Ok(());
        }
        let heads = u32::try_from(p.n_heads).map_err(|_| shape(OP, "too many heads".into()))?;
        let nq = to_i32(OP, "queries", n_queries)?;
        let heads_i = to_i32(OP, "n_heads", p.n_heads)?;
        let kv_heads_i = to_i32(OP, "n_kv_heads", p.n_kv_heads)?;
        let hd_i = to_i32(OP, "head_dim", hd)?;
        let mut reused = self.reused();
        let Reused {
            positions: on_device,
            positions_dev,
            partials,
            rotated,
            ..
        } = &mut *reused;
        let pos = self.device_positions(on_device, positions_dev, positions)?;
        let rot = kv.shape.rotation();
        let mut q_rows = q.slice(first_row * qw..end);
        if let Some(n) = rot.k {
            // Rotated keys are dotted with the queries rotated alike.
            let values = n_queries * qw;
            let buf = grown(&self.stream, &self.gpu, rotated, values)
                .map_err(|e| self.err("allocating rotated queries", e))?;
            self.rotate(&q_rows, &mut buf.slice_mut(0..values), values, n)?;
            q_rows = buf.slice(0..values);
        }
        let mut out_rows = out.slice_mut(first_row * qw..end);
        let null_part: u64 = 0;
        let types = kv.shape.types;
        if n_queries > 1 {
            let name = attn_kernel(true, types);
            let blocks_y = grid_yz(OP, "query tiles", n_queries.div_ceil(8))?;
            let mut launch = self.stream.launch_builder(self.function(name)?);
            launch
                .arg(&q_rows)
                .arg(&kv.k)
                .arg(&kv.v)
                .arg(&mut out_rows)
                .arg(&null_part)
                .arg(pos)
                .arg(&nq)
                .arg(&heads_i)
                .arg(&kv_heads_i)
                .arg(&hd_i)
                .arg(&p.scale)
                .arg(&window)
                .arg(&softcap);
            // SAFETY: attn_prefill_<k>_<v>(q, k, v, out, part, positions, n_queries, n_heads,
            // n_kv_heads, head_dim, scale, window, softcap) over (n_heads, ceil(n_queries/8), 1)
            // blocks of 256 reads n_queries*n_heads*head_dim values of q_rows and writes as many
            // of out_rows (views of exactly that length), reads cache rows of the cache's types
            // at positions <= each query's (< capacity, checked); part is unused (null) with one
            // split. head_dim % 8 == 0 (% 32 for quantized types, KvShape), <= 256 and
            // n_heads % n_kv_heads == 0 were checked.
            unsafe { launch.launch(cfg((heads, blocks_y, 1), (256, 1, 1))) }
                .map_err(|e| self.err(name, e))?;
            return self.rotate_output(&mut out_rows, n_queries * qw, rot.v);
        }
        let context = positions[0] as usize + 1;
        let n_splits = context.div_ceil(512).clamp(1, 32);
        let splits_i = n_splits as i32;
        let mut part = if n_splits > 1 {
            Some(
                grown(
                    &self.stream,
                    &self.gpu,
                    partials,
                    p.n_heads * n_splits * (hd + 2),
                )
                .map_err(|e| self.err("allocating attention partials", e))?,
            )
        } else {
            None
        };
        let name = attn_kernel(false, types);
        let mut launch = self.stream.launch_builder(self.function(name)?);
        launch.arg(&q_rows).arg(&kv.k).arg(&kv.v).arg(&mut out_rows);
        match part.as_mut() {
            Some(part) => launch.arg(&mut **part),
            None => launch.arg(&null_part),
        };
        launch
            .arg(pos)
            .arg(&nq)
            .arg(&heads_i)
            .arg(&kv_heads_i)
            .arg(&hd_i)
            .arg(&p.scale)
            .arg(&window)
            .arg(&softcap);
        // SAFETY: attn_decode_<k>_<v> (same arguments as prefill) over (n_heads, 1, n_splits)
        // blocks of 128 reads one query of n_heads*head_dim values and cache rows at positions
        // <= positions[0] < capacity; with one split it writes out_rows directly, otherwise it
        // writes n_heads*n_splits*(head_dim+2) partials into `part`, which holds at least that many.
        unsafe { launch.launch(cfg((heads, 1, n_splits as u32), (128, 1, 1))) }
            .map_err(|e| self.err(name, e))?;
        if let Some(part) = part.as_deref() {
            let mut combine = self
                .stream
                .launch_builder(self.function("attn_combine_f32")?);
            combine
                .arg(part)
                .arg(&mut out_rows)
                .arg(&heads_i)
                .arg(&hd_i)
                .arg(&splits_i);
            // SAFETY: attn_combine_f32(const float* part, float* out, int n_heads, int
            // head_dim, int n_splits) over (n_heads, 1) blocks of 128 reads the partials the
            // decode kernel wrote and writes n_heads*head_dim values of out_rows.
            unsafe { combine.launch(cfg((heads, 1, 1), (128, 1, 1))) }
                .map_err(|e| self.err("attn_combine_f32", e))?;
        }
        self.rotate_output(&mut out_rows, n_queries * qw, rot.v)
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
