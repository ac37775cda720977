//! The CPU backend: a "device" made of host memory with a memory budget and a thread pool.
//! Several CPU devices (`cpu:0`, `cpu:1`) are separate devices with their own weights, KV caches
//! and budgets, standing in for GPUs in tests. Matrix products use the quantized kernels of
//! [`crate::cpu`]; KV caches (f16, Q8_0 or Q4_0) and attention over them live in `cpu/kv.rs`.
//!
//! Weights of the types the AVX-512 kernels cover are repacked at upload into their layout
//! ([`crate::cpu::packed`], the same number of bytes, so the ledger's charge is unchanged);
//! [`Backend::weight_view`] hands them to other devices unpacked, in GGUF's layout.

use std::sync::{Arc, Mutex};

use super::{
    check_len, check_rope, check_select, shape, AttentionParams, Backend, BackendError, BytesAt,
    DeviceBytes, DeviceMemory, GatedActivation, HostTensor, KvTypes, KvView, Lease, RopeParams,
    Selection, WeightView,
};
use crate::cpu::ops;
use crate::cpu::packed;
use crate::cpu::{matmul, Layout, MatmulScratch, QMatrix, ThreadPool};
use crate::quant::{self, GgmlType};

mod kv;
pub use kv::CpuKv;

/// A weight resident in host memory, 8-byte aligned so any block type can be viewed in place.
#[derive(Debug)]
pub struct CpuWeight {
    /// The tensor's name, for messages and views.
    name: String,
    /// Its element type.
    ty: GgmlType,
    /// Its rows (output features).
    rows: usize,
    /// Its elements per row.
    cols: usize,
    /// The bytes, in 8-byte words for alignment; `len` bytes are meaningful.
    words: Vec<u64>,
    /// How many bytes of `words` are the tensor's.
    len: usize,
    /// Whether the bytes are in GGUF's order or repacked for the AVX-512 kernels.
    layout: Layout,
    /// The f32 values of 1-row F32 tensors (norm weights, biases), for direct use.
    vector: Option<Vec<f32>>,
    _lease: Lease,
}

impl CpuWeight {
    /// Whether the weight is stored in GGUF's layout or packed for the AVX-512 kernels.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns at least `len` initialised bytes (len <= words.len() * 8) and u8
        // has no alignment or validity requirements.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// The weight as the matrix multiply reads it.
    fn matrix(&self) -> QMatrix<'_> {
        QMatrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: self.bytes(),
            layout: self.layout,
        }
    }

    pub(crate) fn vector(&self, op: &'static str) -> Result<&[f32], BackendError> {
        self.vector.as_deref().ok_or_else(|| BackendError::Shape {
            op,
            detail: format!("{} is not an f32 vector", self.name),
        })
    }
}

/// A CPU device.
pub struct CpuBackend {
    name: String,
    pool: Arc<ThreadPool>,
    ledger: Arc<DeviceMemory>,
    /// Activation conversion buffers of the matrix products (one op runs at a time).
    scratch: Mutex<MatmulScratch>,
}

impl CpuBackend {
    /// A backend on the device called `name` whose memory is `memory`, computing on `pool`.
    /// Several backends (one per model) may share one device's memory.
    pub fn new(name: impl Into<String>, memory: Arc<DeviceMemory>, pool: Arc<ThreadPool>) -> Self {
        CpuBackend {
            name: name.into(),
            pool,
            ledger: memory,
            scratch: Mutex::new(MatmulScratch::new()),
        }
    }

    /// Bytes of weights and KV caches currently held.
    pub fn used_bytes(&self) -> u64 {
        self.ledger.used()
    }

    /// The memory budget.
    pub fn budget_bytes(&self) -> u64 {
        self.ledger.budget()
    }

    fn charge(&self, what: &str, bytes: u64) -> Result<Lease, BackendError> {
        self.ledger.charge(&self.name, what, bytes)
    }

    /// A weight of `rows` rows of `cols` `ty` values (their byte size checked by the caller)
    /// from `source` (GGUF's layout), charged to the budget first, repacked when the packed
    /// kernels cover it ([`packed::should_pack`]).
    fn new_weight(
        &self,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        source: &DeviceBytes<'_>,
    ) -> Result<CpuWeight, BackendError> {
        let (_, len) = self.weight_len(name, ty, rows, cols)?;
        check_len("upload_weight", len, source.len)?;
        let lease = self.charge(name, weight_charge(len as u64, rows, cols))?;
        let mut words = vec![0u64; len.div_ceil(8)];
        let bytes = words_as_bytes(&mut words, len);
        let layout = if packed::should_pack(ty, rows, cols) {
            let pack = |gguf: &[u8], bytes: &mut [u8]| {
                packed::pack(ty, rows, cols, gguf, bytes)
                    .map_err(|e| shape("upload_weight", format!("{name}: {e}")))
            };
            match source.at {
                BytesAt::Host(gguf) => pack(gguf, bytes)?,
                // Already packed the same way on another CPU device: the bytes as they are.
                BytesAt::HostPacked {
                    bytes: src,
                    ty: t,
                    rows: r,
                    cols: c,
                } if (t, r, c) == (ty, rows, cols) => bytes.copy_from_slice(src),
                _ => {
                    let mut gguf = vec![0u8; len];
                    source.read_into(&mut gguf)?;
                    pack(&gguf, bytes)?;
                }
            }
            Layout::Packed
        } else {
            source.read_into(bytes)?;
            Layout::Gguf
        };
        Self::finish_weight(name, ty, rows, cols, words, len, layout, lease)
    }
}

impl CpuBackend {
    /// The bytes of one row and of the whole weight of `rows` rows of `cols` `ty` values;
    /// refuses a type this backend has no kernels for and a size that overflows.
    fn weight_len(
        &self,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
    ) -> Result<(usize, usize), BackendError> {
        if !ty.is_supported() {
            return Err(BackendError::UnsupportedType {
                device: self.name.clone(),
                ty,
                tensor: name.to_string(),
            });
        }
        let row_bytes = ty
            .row_bytes(cols as u64)
            .ok_or_else(|| shape("upload_weight", format!("{name}: rows of {cols} {ty}")))?
            as usize;
        let len = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| shape("upload_weight", format!("{name}: size overflows")))?;
        Ok((row_bytes, len))
    }

    /// The weight over its filled buffer `words` (`len` bytes in `layout`), with the f32 copy
    /// kept of one-row tensors (norm weights, biases).
    #[allow(clippy::too_many_arguments)]
    fn finish_weight(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        mut words: Vec<u64>,
        len: usize,
        layout: Layout,
        lease: Lease,
    ) -> Result<CpuWeight, BackendError> {
        let vector = if rows == 1 {
            let mut v = vec![0.0f32; cols];
            quant::dequantize(ty, words_as_bytes(&mut words, len), &mut v)
                .map_err(|e| shape("upload_weight", format!("{name}: {e}")))?;
            Some(v)
        } else {
            None
        };
        Ok(CpuWeight {
            name: name.to_string(),
            ty,
            rows,
            cols,
            words,
            len,
            layout,
            vector,
            _lease: lease,
        })
    }

    /// A weight of `rows` rows of `cols` `ty` values whose GGUF bytes `fill` writes straight
    /// into the weight's own buffer (then repacked in place, one row group at a time, when the
    /// packed kernels cover it): no host copy is made beside it.
    fn new_weight_filled(
        &self,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), BackendError>,
    ) -> Result<CpuWeight, BackendError> {
        let (row_bytes, len) = self.weight_len(name, ty, rows, cols)?;
        let lease = self.charge(name, weight_charge(len as u64, rows, cols))?;
        let mut words = vec![0u64; len.div_ceil(8)];
        let bytes = words_as_bytes(&mut words, len);
        fill(bytes)?;
        let layout = if packed::should_pack(ty, rows, cols) {
            let group = packed::PACK_ROWS * row_bytes;
            let mut gguf = vec![0u8; group];
            for tile_rows in bytes.chunks_exact_mut(group) {
                gguf.copy_from_slice(tile_rows);
                packed::pack(ty, packed::PACK_ROWS, cols, &gguf, tile_rows)
                    .map_err(|e| shape("upload_weight", format!("{name}: {e}")))?;
            }
            Layout::Packed
        } else {
            Layout::Gguf
        };
        Self::finish_weight(name, ty, rows, cols, words, len, layout, lease)
    }
}

/// The first `len` bytes of `words` (a weight's buffer, u64 words for the kernels' alignment).
fn words_as_bytes(words: &mut [u64], len: usize) -> &mut [u8] {
    assert!(
        len <= words.len() * 8,
        "{len} bytes past a buffer of {} words",
        words.len()
    );
    // SAFETY: `words` holds at least `len` bytes (checked above); u8 has no alignment or
    // validity requirements, and the returned slice borrows `words` mutably, so it is the only
    // borrow.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

/// Bytes a weight of `len` bytes in `rows` rows of `cols` values takes: the bytes, plus the f32
/// copy kept of one-row tensors (norm weights, biases).
fn weight_charge(len: u64, rows: usize, cols: usize) -> u64 {
    len + if rows == 1 { cols as u64 * 4 } else { 0 }
}

/// `out[t] = table[ids[t]] * scale`, rows dequantized to f32 (a packed table's rows gathered
/// back into GGUF blocks first): [`Backend::embed`] and [`Backend::embed_host`].
fn embed_rows(
    table: &CpuWeight,
    ids: &[u32],
    scale: f32,
    out: &mut [f32],
) -> Result<(), BackendError> {
    let d = table.cols;
    check_len("embed", out.len(), ids.len() * d)?;
    let rb = table.ty.row_bytes(d as u64).unwrap_or(0) as usize;
    // A packed table's rows are gathered back into GGUF blocks first.
    let mut unpacked = vec![
        0u8;
        if table.layout == Layout::Packed {
            rb
        } else {
            0
        }
    ];
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= table.rows {
            return Err(shape(
                "embed",
                format!("token {id} outside {} rows", table.rows),
            ));
        }
        let gguf_row = match table.layout {
            Layout::Gguf => &table.bytes()[id * rb..(id + 1) * rb],
            Layout::Packed => {
                packed::unpack_row(
                    table.ty,
                    table.rows,
                    table.cols,
                    table.bytes(),
                    id,
                    &mut unpacked,
                )
                .map_err(|e| shape("embed", e.to_string()))?;
                &unpacked
            }
        };
        let row = &mut out[t * d..(t + 1) * d];
        quant::dequantize(table.ty, gguf_row, row).map_err(|e| shape("embed", e.to_string()))?;
        if scale != 1.0 {
            ops::scale(row, scale);
        }
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Activations = Vec<f32>;
    type Weight = CpuWeight;
    type KvCache = CpuKv;

    fn device_name(&self) -> &str {
        &self.name
    }

    fn upload_weight(&self, t: &HostTensor<'_>) -> Result<CpuWeight, BackendError> {
        t.check_size()?;
        let data = DeviceBytes::host(&self.name, t.data);
        self.new_weight(t.name, t.ty, t.rows, t.cols, &data)
    }

    fn weight_bytes(&self, w: &CpuWeight) -> u64 {
        w._lease.bytes()
    }

    fn weight_view<'a>(&'a self, w: &'a CpuWeight) -> Result<WeightView<'a>, BackendError> {
        let bytes = match w.layout {
            Layout::Gguf => DeviceBytes::host(&self.name, w.bytes()),
            Layout::Packed => DeviceBytes::host_packed(&self.name, w.bytes(), w.ty, w.rows, w.cols),
        };
        Ok(WeightView {
            name: &w.name,
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            bytes,
        })
    }

    fn import_cost(&self, src: &WeightView<'_>) -> u64 {
        weight_charge(src.bytes.len as u64, src.rows, src.cols)
    }

    fn import_weight(&self, src: &WeightView<'_>) -> Result<CpuWeight, BackendError> {
        src.check_size()?;
        self.new_weight(src.name, src.ty, src.rows, src.cols, &src.bytes)
    }

    fn charge_host_buffers(&self, what: &str, bytes: u64) -> Result<Option<Lease>, BackendError> {
        self.charge(what, bytes).map(Some)
    }

    fn alloc_activations(&self, len: usize) -> Result<Vec<f32>, BackendError> {
        Ok(vec![0.0; len])
    }

    fn write_activations(&self, dst: &mut Vec<f32>, src: &[f32]) -> Result<(), BackendError> {
        check_len("write_activations", dst.len(), src.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn read_activations(&self, src: &Vec<f32>, dst: &mut [f32]) -> Result<(), BackendError> {
        check_len("read_activations", src.len(), dst.len())?;
        dst.copy_from_slice(&src[..dst.len()]);
        Ok(())
    }

    fn gather_rows(
        &self,
        src: &Vec<f32>,
        rows: &[u32],
        width: usize,
        out_row: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        check_len("gather_rows", out.len(), (out_row + rows.len()) * width)?;
        for (i, &r) in rows.iter().enumerate() {
            let at = r as usize * width;
            check_len("gather_rows", src.len(), at + width)?;
            let to = (out_row + i) * width;
            out[to..to + width].copy_from_slice(&src[at..at + width]);
        }
        Ok(())
    }

    fn embed(
        &self,
        table: &CpuWeight,
        ids: &[u32],
        scale: f32,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        embed_rows(table, ids, scale, out)
    }

    fn upload_weight_filled(
        &self,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), BackendError>,
    ) -> Result<CpuWeight, BackendError> {
        self.new_weight_filled(name, ty, rows, cols, fill)
    }

    fn embed_host(
        &self,
        table: &CpuWeight,
        ids: &[u32],
        scale: f32,
        out: &mut [f32],
    ) -> Option<Result<(), BackendError>> {
        Some(embed_rows(table, ids, scale, out))
    }

    fn matmul(
        &self,
        w: &CpuWeight,
        x: &Vec<f32>,
        n_tokens: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        check_len("matmul", x.len(), n_tokens * w.cols)?;
        check_len("matmul", out.len(), n_tokens * w.rows)?;
        let m = w.matrix();
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        matmul(
            &self.pool,
            &m,
            &x[..n_tokens * w.cols],
            n_tokens,
            &mut out[..n_tokens * w.rows],
            &mut scratch,
        )
        .map_err(|e| BackendError::Device {
            device: self.name.clone(),
            message: format!("matmul {}: {e}", w.name),
        })
    }

    fn add_bias(
        &self,
        x: &mut Vec<f32>,
        bias: &CpuWeight,
        n_tokens: usize,
    ) -> Result<(), BackendError> {
        let b = bias.vector("add_bias")?;
        check_len("add_bias", x.len(), n_tokens * b.len())?;
        for row in x[..n_tokens * b.len()].chunks_exact_mut(b.len()) {
            ops::add(row, b);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &mut Vec<f32>,
        weight: &CpuWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), BackendError> {
        let w = weight.vector("rms_norm")?;
        check_len("rms_norm", x.len(), n_rows * dim)?;
        if w.len() != dim {
            return Err(shape(
                "rms_norm",
                format!("weight of {} for rows of {dim}", w.len()),
            ));
        }
        for row in x[..n_rows * dim].chunks_exact_mut(dim) {
            ops::rms_norm_inplace(row, w, eps);
        }
        Ok(())
    }

    fn rms_norm_into(
        &self,
        x: &Vec<f32>,
        weight: &CpuWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let w = weight.vector("rms_norm_into")?;
        check_len("rms_norm_into", x.len(), n_rows * dim)?;
        check_len("rms_norm_into", out.len(), n_rows * dim)?;
        if w.len() != dim {
            return Err(shape(
                "rms_norm_into",
                format!("weight of {} for rows of {dim}", w.len()),
            ));
        }
        for (src, dst) in x[..n_rows * dim]
            .chunks_exact(dim)
            .zip(out.chunks_exact_mut(dim))
        {
            ops::rms_norm(src, w, eps, dst);
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        params: RopeParams,
        freq_factors: Option<&CpuWeight>,
    ) -> Result<(), BackendError> {
        let width = n_heads * head_dim;
        check_len("rope", x.len(), n_tokens * width)?;
        check_len("rope", positions.len(), n_tokens)?;
        let factors = freq_factors.map(|f| f.vector("rope")).transpose()?;
        check_rope(&params, head_dim, factors.map(<[f32]>::len))?;
        let mut cache = vec![0.0f32; params.n_dims];
        for (t, row) in x[..n_tokens * width].chunks_exact_mut(width).enumerate() {
            ops::rope(
                &params,
                positions[t] as i32,
                factors,
                row,
                head_dim,
                &mut cache,
            );
        }
        Ok(())
    }

    fn select(
        &self,
        x: &Vec<f32>,
        m: usize,
        n: usize,
        sel: Selection,
        out: &mut Vec<f32>,
        out_at: usize,
    ) -> Result<(), BackendError> {
        let at = check_select(x.len(), m, n, sel, out.len(), out_at)?;
        crate::select::select_rows(&x[..m * n], m, n, sel, &mut out[at]);
        Ok(())
    }

    fn softcap(&self, x: &mut Vec<f32>, cap: f32, len: usize) -> Result<(), BackendError> {
        check_len("softcap", x.len(), len)?;
        ops::softcap(&mut x[..len], cap);
        Ok(())
    }

    fn add(&self, dst: &mut Vec<f32>, src: &Vec<f32>, len: usize) -> Result<(), BackendError> {
        check_len("add", dst.len(), len)?;
        check_len("add", src.len(), len)?;
        ops::add(&mut dst[..len], &src[..len]);
        Ok(())
    }

    fn scale(&self, x: &mut Vec<f32>, factor: f32, len: usize) -> Result<(), BackendError> {
        check_len("scale", x.len(), len)?;
        ops::scale(&mut x[..len], factor);
        Ok(())
    }

    fn gated_activation(
        &self,
        gate: &mut Vec<f32>,
        up: &Vec<f32>,
        len: usize,
        act: GatedActivation,
    ) -> Result<(), BackendError> {
        check_len("gated_activation", gate.len(), len)?;
        check_len("gated_activation", up.len(), len)?;
        match act {
            GatedActivation::Silu => ops::silu_mul(&mut gate[..len], &up[..len]),
            GatedActivation::Gelu => ops::gelu_mul(&mut gate[..len], &up[..len]),
        }
        Ok(())
    }

    fn alloc_kv(
        &self,
        capacity: usize,
        n_kv_heads: usize,
        head_dim: usize,
        types: KvTypes,
    ) -> Result<CpuKv, BackendError> {
        self.new_kv(capacity, n_kv_heads, head_dim, types)
    }

    fn kv_bytes(&self, kv: &CpuKv) -> u64 {
        kv.bytes()
    }

    fn kv_store(
        &self,
        kv: &mut CpuKv,
        k: &Vec<f32>,
        v: &Vec<f32>,
        first_row: usize,
        positions: &[u32],
    ) -> Result<(), BackendError> {
        self.store_kv(kv, k, v, first_row, positions)
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        kv: &CpuKv,
        first_row: usize,
        positions: &[u32],
        p: AttentionParams,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        self.attend_kv(q, kv, first_row, positions, p, out)
    }

    fn kv_view<'a>(&'a self, kv: &'a CpuKv, len: usize) -> Result<KvView<'a>, BackendError> {
        self.view_kv(kv, len)
    }

    fn import_kv(&self, src: &KvView<'_>, capacity: usize) -> Result<CpuKv, BackendError> {
        self.copy_kv(src, capacity)
    }
}
