//! The backend boundary: the tensors a device holds and the operations a transformer forward pass
//! needs. Model code (in the daemon) is written once against [`Backend`]; the CPU backend
//! implements it today and the CUDA backend implements the same trait.
//!
//! Conventions shared by every implementation:
//! - Activations are row-major f32 matrices `(n_tokens, width)`, stored in a backend-owned
//!   [`Backend::Activations`] buffer that is allocated once and reused across steps.
//! - Weight matrices are `(rows, cols)` with `cols` contiguous, in any GGML type the backend
//!   supports; `matmul` computes `out[t][r] = sum_c w[r][c] * x[t][c]`.
//! - The KV cache of one layer of one sequence is a [`Backend::KvCache`]: `capacity` positions of
//!   `n_kv_heads * head_dim` keys and as many values, each stored as f16 (llama.cpp's default) or
//!   in ggml's Q8_0 / Q4_0 blocks ([`KvTypes`], laid out as `kv.rs` describes).

use thiserror::Error;

use crate::quant::GgmlType;
pub use crate::select::Selection;
use crate::select::CANDIDATE_FLOATS;

/// Errors a backend reports.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The device has no room for an allocation.
    #[error("out of memory on {device}: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// The device name (`cpu:0`, `cuda:1`).
        device: String,
        /// What was being allocated.
        what: String,
        /// How many bytes were asked for.
        bytes: u64,
    },
    /// The backend cannot compute with this tensor type.
    #[error("{device} does not support tensor type {ty} (tensor {tensor})")]
    UnsupportedType {
        /// The device name.
        device: String,
        /// The tensor's type.
        ty: GgmlType,
        /// The tensor's name.
        tensor: String,
    },
    /// Shapes passed to an operation do not agree.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What disagreed.
        detail: String,
    },
    /// A device-level failure (driver error, kernel launch failure).
    #[error("{device}: {message}")]
    Device {
        /// The device name.
        device: String,
        /// The driver's message.
        message: String,
    },
}

/// A tensor as it lies in host memory (usually a view into a memory-mapped GGUF file).
#[derive(Clone, Copy, Debug)]
pub struct HostTensor<'a> {
    /// The tensor's name in the model file (for error messages).
    pub name: &'a str,
    /// Element type of `data`.
    pub ty: GgmlType,
    /// Number of rows (1 for a vector).
    pub rows: usize,
    /// Elements per row (contiguous).
    pub cols: usize,
    /// The raw bytes: `rows * ty.row_bytes(cols)`.
    pub data: &'a [u8],
}

impl<'a> HostTensor<'a> {
    /// It as a view for [`Backend::import_weight`] (which then uploads it).
    pub fn view(&self) -> WeightView<'a> {
        WeightView {
            name: self.name,
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            bytes: DeviceBytes::host("host memory", self.data),
        }
    }

    /// Rows `range` as a tensor of their own: a view of the same bytes (rows are contiguous), as
    /// a fused projection (Phi-3's `attn_qkv`, `ffn_up`) is split at load.
    pub fn row_range(&self, range: std::ops::Range<usize>) -> Result<HostTensor<'a>, BackendError> {
        self.check_size()?;
        if range.start > range.end || range.end > self.rows {
            return Err(shape(
                "row_range",
                format!("{}: rows {range:?} of {}", self.name, self.rows),
            ));
        }
        let row_bytes = self.data.len() / self.rows.max(1);
        Ok(HostTensor {
            rows: range.len(),
            data: &self.data[range.start * row_bytes..range.end * row_bytes],
            ..*self
        })
    }

    /// Values `range` of a one-row tensor (a fused bias) as a vector of its own, a view of the
    /// same bytes; both ends must fall on block boundaries of its type.
    pub fn vector_range(
        &self,
        range: std::ops::Range<usize>,
    ) -> Result<HostTensor<'a>, BackendError> {
        self.check_size()?;
        let bad = || {
            shape(
                "vector_range",
                format!(
                    "{}: values {range:?} of a {} vector of {} rows x {}",
                    self.name, self.ty, self.rows, self.cols
                ),
            )
        };
        if self.rows != 1 || range.start > range.end || range.end > self.cols {
            return Err(bad());
        }
        let start = self.ty.row_bytes(range.start as u64).ok_or_else(bad)? as usize;
        let end = self.ty.row_bytes(range.end as u64).ok_or_else(bad)? as usize;
        Ok(HostTensor {
            cols: range.len(),
            data: &self.data[start..end],
            ..*self
        })
    }

    /// Checks that `data` holds exactly `rows` rows of `cols` values of `ty` (what every backend
    /// checks before uploading).
    pub fn check_size(&self) -> Result<(), BackendError> {
        self.check_size_of(self.data.len() as u64)
    }

    /// Checks that `bytes` bytes are exactly `rows` rows of `cols` values of `ty` (a tensor
    /// described by this one but lying elsewhere).
    pub(crate) fn check_size_of(&self, bytes: u64) -> Result<(), BackendError> {
        let expect = self
            .ty
            .row_bytes(self.cols as u64)
            .and_then(|r| r.checked_mul(self.rows as u64));
        if expect != Some(bytes) {
            return Err(shape(
                "upload_weight",
                format!(
                    "{}: {bytes} bytes for {} rows of {} {} values",
                    self.name, self.rows, self.cols, self.ty
                ),
            ));
        }
        Ok(())
    }
}

/// A [`BackendError::Shape`] of `op`.
pub(crate) fn shape(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

/// Fails `op` when a buffer of `have` values is shorter than the `need` it must hold.
pub(crate) fn check_len(op: &'static str, have: usize, need: usize) -> Result<(), BackendError> {
    if have < need {
        return Err(shape(op, format!("buffer of {have} values, need {need}")));
    }
    Ok(())
}

/// Fails a [`Backend::select`] whose selection does not fit rows of `n` values or whose
/// buffers (`x_len`, `out_len` values) are too short; returns the values it writes.
pub(crate) fn check_select(
    x_len: usize,
    m: usize,
    n: usize,
    sel: Selection,
    out_len: usize,
    out_at: usize,
) -> Result<std::ops::Range<usize>, BackendError> {
    sel.check(n).map_err(|detail| shape("select", detail))?;
    let need = m.checked_mul(n);
    let start = out_at.checked_mul(CANDIDATE_FLOATS);
    let end = m
        .checked_mul(sel.k())
        .and_then(|c| c.checked_add(out_at))
        .and_then(|c| c.checked_mul(CANDIDATE_FLOATS));
    match (need, start, end) {
        (Some(need), Some(start), Some(end)) => {
            check_len("select", x_len, need)?;
            check_len("select", out_len, end)?;
            Ok(start..end)
        }
        _ => Err(shape("select", format!("{m} rows of {n} values overflow"))),
    }
}

pub use crate::cpu::ops::{RopeMode, RopeParams};

/// Fails unless `p` can rotate heads of `head_dim`: `n_dims` even and at most `head_dim`, and
/// frequency factors (when given, `factors` values) covering every rotated pair. Every backend
/// checks this before its rope.
pub(crate) fn check_rope(
    p: &RopeParams,
    head_dim: usize,
    factors: Option<usize>,
) -> Result<(), BackendError> {
    if !p.n_dims.is_multiple_of(2) || p.n_dims > head_dim {
        return Err(shape(
            "rope",
            format!("{} rotated dims for heads of {head_dim}", p.n_dims),
        ));
    }
    if let Some(n) = factors.filter(|&n| n < p.n_dims / 2) {
        return Err(shape(
            "rope",
            format!("{n} frequency factors for {} rotated pairs", p.n_dims / 2),
        ));
    }
    Ok(())
}

/// Parameters of one attention call over one sequence's KV cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention: `n_heads % n_kv_heads == 0`).
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Multiplier applied to `q . k` before the softmax.
    pub scale: f32,
    /// Sliding window: a query at position `p` sees keys at positions `k` with `p - k < window`.
    pub window: Option<usize>,
    /// Tanh soft-capping of attention logits (Gemma 2), if any.
    pub softcap: Option<f32>,
}

/// The element-wise activation of a gated feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatedActivation {
    /// `silu(gate) * up` (Llama, Qwen).
    Silu,
    /// `gelu(gate) * up` with GGML's tanh approximation (Gemma).
    Gelu,
}

/// A compute device: weights, activations and KV caches live on it and every op runs on it.
///
/// All methods take `&self`: a backend is shared by the pipeline stage that owns it and runs one
/// operation at a time (the stage serialises calls); implementations parallelise inside an op.
pub trait Backend: Send + Sync + 'static {
    /// An f32 activation buffer.
    type Activations: Send;
    /// A weight tensor resident on the device.
    type Weight: Send + Sync;
    /// One layer's KV cache for one sequence.
    type KvCache: Send;

    /// The device's name (`cpu:0`, `cuda:0`).
    fn device_name(&self) -> &str;

    /// Copies a tensor onto the device.
    fn upload_weight(&self, tensor: &HostTensor<'_>) -> Result<Self::Weight, BackendError>;
    /// Copies onto the device a weight of `rows` rows of `cols` `ty` values whose bytes (GGUF's
    /// layout) `fill` writes into a buffer of exactly their size. A device whose weights lie in
    /// host memory (the CPU) hands it its own buffer, so the weight is never in host memory
    /// twice; the default fills a host buffer and uploads it ([`Backend::upload_weight`]).
    fn upload_weight_filled(
        &self,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), BackendError>,
    ) -> Result<Self::Weight, BackendError> {
        let len = ty
            .row_bytes(cols as u64)
            .and_then(|r| r.checked_mul(rows as u64))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| shape("upload_weight", format!("{name}: size overflows")))?;
        let mut data = vec![0u8; len];
        fill(&mut data)?;
        self.upload_weight(&HostTensor {
            name,
            ty,
            rows,
            cols,
            data: &data,
        })
    }
    /// Bytes the weight occupies on the device.
    fn weight_bytes(&self, weight: &Self::Weight) -> u64;
    /// The weight where it lies, for another device to copy directly with
    /// [`Backend::import_weight`] (it waits for the device's pending work first).
    fn weight_view<'a>(&'a self, weight: &'a Self::Weight) -> Result<WeightView<'a>, BackendError>;
    /// Bytes [`Backend::import_weight`] of `src` would take on this device (its budget's charge).
    fn import_cost(&self, src: &WeightView<'_>) -> u64;
    /// Copies a weight another device holds (or host memory) onto this device in one direct
    /// copy: device to device within a GPU, peer to peer between GPUs, host to device, device to
    /// host or host to host. It has finished when this returns.
    fn import_weight(&self, src: &WeightView<'_>) -> Result<Self::Weight, BackendError>;

    /// Allocates an activation buffer of `len` f32 values (contents unspecified).
    fn alloc_activations(&self, len: usize) -> Result<Self::Activations, BackendError>;
    /// Writes `src` into the first `src.len()` values of `dst`.
    fn write_activations(
        &self,
        dst: &mut Self::Activations,
        src: &[f32],
    ) -> Result<(), BackendError>;
    /// Reads the first `dst.len()` values of `src`.
    fn read_activations(
        &self,
        src: &Self::Activations,
        dst: &mut [f32],
    ) -> Result<(), BackendError>;

    /// `out[t] = table[ids[t]]` (rows dequantized to f32), then multiplied by `scale`.
    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        scale: f32,
        out: &mut Self::Activations,
    ) -> Result<(), BackendError>;
    /// [`Backend::embed`] into host memory `out`, for a device whose weights lie in host memory
    /// (the CPU): a model's token embedding then reads the rows of its tied output head there
    /// and needs no copy of its own. `None` (the default) where weights lie elsewhere.
    fn embed_host(
        &self,
        _table: &Self::Weight,
        _ids: &[u32],
        _scale: f32,
        _out: &mut [f32],
    ) -> Option<Result<(), BackendError>> {
        None
    }
    /// `out (n_tokens, w.rows) = x (n_tokens, w.cols) * w^T`.
    fn matmul(
        &self,
        w: &Self::Weight,
        x: &Self::Activations,
        n_tokens: usize,
        out: &mut Self::Activations,
    ) -> Result<(), BackendError>;
    /// `x[t] += bias` for each of `n_tokens` rows of width `bias` length.
    fn add_bias(
        &self,
        x: &mut Self::Activations,
        bias: &Self::Weight,
        n_tokens: usize,
    ) -> Result<(), BackendError>;
    /// Row-wise RMS normalisation of `n_rows` rows of width `dim`, times `weight` (length `dim`),
    /// in place: `x = x / sqrt(mean(x^2) + eps) * weight`.
    fn rms_norm(
        &self,
        x: &mut Self::Activations,
        weight: &Self::Weight,
        n_rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), BackendError>;
    /// `out = rms_norm(x) * weight` into a separate buffer (the residual stream stays intact).
    fn rms_norm_into(
        &self,
        x: &Self::Activations,
        weight: &Self::Weight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Activations,
    ) -> Result<(), BackendError>;
    /// Rotary embedding in place on `(n_tokens, n_heads, head_dim)`; token `t` is at
    /// `positions[t]`. `freq_factors` (an f32 vector of at least `n_dims / 2` values: Llama 3.1's
    /// `rope_freqs`, Phi-3's long or short factors) divides each pair's angle, as ggml's
    /// `ggml_rope_ext` does with its third source.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Activations,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        params: RopeParams,
        freq_factors: Option<&Self::Weight>,
    ) -> Result<(), BackendError>;
    /// Soft-capping over `len` values, as llama.cpp builds it for Gemma 2's final logits:
    /// `x = tanh(x * (1 / cap)) * cap`.
    fn softcap(&self, x: &mut Self::Activations, cap: f32, len: usize) -> Result<(), BackendError>;
    /// `dst += src` over `len` values.
    fn add(
        &self,
        dst: &mut Self::Activations,
        src: &Self::Activations,
        len: usize,
    ) -> Result<(), BackendError>;
    /// `x *= factor` over `len` values.
    fn scale(&self, x: &mut Self::Activations, factor: f32, len: usize)
        -> Result<(), BackendError>;
    /// `gate = act(gate) * up` over `len` values.
    fn gated_activation(
        &self,
        gate: &mut Self::Activations,
        up: &Self::Activations,
        len: usize,
        act: GatedActivation,
    ) -> Result<(), BackendError>;

    /// `out[out_row + i] = src[rows[i]]` for rows of `width` values: the rows of a batch that
    /// want logits, picked where the activations lie (`out_row` lets the micro-batches of one
    /// step gather theirs one after the other into one buffer).
    fn gather_rows(
        &self,
        src: &Self::Activations,
        rows: &[u32],
        width: usize,
        out_row: usize,
        out: &mut Self::Activations,
    ) -> Result<(), BackendError>;

    /// The entries `sel` picks of each of `m` rows of `n` values of `x` (the head's logits),
    /// written to `out` from candidate `out_at` on: `m * sel.k()` candidates of
    /// [`CANDIDATE_FLOATS`] values each (see [`crate::select`]), each row's in rank order. What
    /// the sampler needs of a row, so that only they cross to the host; equal to
    /// [`crate::select::select_rows`] on every backend.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &self,
        x: &Self::Activations,
        m: usize,
        n: usize,
        sel: Selection,
        out: &mut Self::Activations,
        out_at: usize,
    ) -> Result<(), BackendError>;

    /// Whether [`Backend::matmul_id`] multiplies experts of `expert`'s type and shape for a
    /// batch of `n_tokens` tokens; when not, the caller groups the rows by expert and runs
    /// [`Backend::matmuls`] per expert.
    fn routes(&self, _expert: &Self::Weight, _n_tokens: usize) -> bool {
        false
    }

    /// The routed matmul of a mixture of experts (ggml's `mul_mat_id`), where
    /// [`Backend::routes`] says so: `ids` holds `n_used` expert ids per token (its pairs, one per
    /// expert it uses, as exact f32 values: [`Backend::route_experts`]'s), read where they lie;
    /// for each pair p, row p of `out` (`rows` values of the experts) = `x` row r *
    /// `experts[ids[p]]^T`, where r is the pair's token (`x_per_pair` false: `x` holds
    /// `n_tokens` rows; the gate and up of the block) or the pair itself (`x_per_pair` true: `x`
    /// holds `n_tokens * n_used` rows; the down). The experts share type and shape.
    #[allow(clippy::too_many_arguments)]
    fn matmul_id(
        &self,
        _experts: &[Self::Weight],
        _x: &Self::Activations,
        _n_tokens: usize,
        _n_used: usize,
        _x_per_pair: bool,
        _ids: &Self::Activations,
        _out: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        Err(BackendError::Device {
            device: self.device_name().to_string(),
            message: "no routed matmul (mul_mat_id) on this device".into(),
        })
    }

    /// The gate and up products of a routed block: [`Backend::matmul_id`] of `gate` and of
    /// `up` over the same `n_tokens` rows of `x` (each token's row read by its `n_used` pairs),
    /// whose input a backend may convert once and multiply in one launch.
    #[allow(clippy::too_many_arguments)]
    fn matmul_id_pair(
        &self,
        gate: &[Self::Weight],
        up: &[Self::Weight],
        x: &Self::Activations,
        n_tokens: usize,
        n_used: usize,
        ids: &Self::Activations,
        gate_out: &mut Self::Activations,
        up_out: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        moe::matmul_id_pair(self, gate, up, x, n_tokens, n_used, ids, gate_out, up_out)
    }

    /// The down product of a routed block: [`Backend::gated_activation`] of the pairs' `gate`
    /// and `up` (`n_tokens * n_used` rows of `ff`; `gate` is left unspecified), then
    /// [`Backend::matmul_id`] of `down` over each pair's own row, which a backend may run
    /// without writing the activation in f32.
    #[allow(clippy::too_many_arguments)]
    fn gated_matmul_id(
        &self,
        gate: &mut Self::Activations,
        up: &Self::Activations,
        ff: usize,
        act: GatedActivation,
        down: &[Self::Weight],
        n_tokens: usize,
        n_used: usize,
        ids: &Self::Activations,
        out: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        moe::gated_matmul_id(self, gate, up, ff, act, down, n_tokens, n_used, ids, out)
    }

    /// The down product of a routed block summed into the residual stream: [`Backend::gated_matmul_id`]
    /// of the pairs into `scratch` (`n_tokens * n_used` rows of the experts' rows, `width`:
    /// the residual's), then [`Backend::moe_combine`] of them with `weights` (and the shared
    /// expert's `shared`) into `x`, which a backend may run without writing the pairs' products
    /// (`gate` and `scratch` are left unspecified).
    #[allow(clippy::too_many_arguments)]
    fn gated_matmul_id_combine(
        &self,
        gate: &mut Self::Activations,
        up: &Self::Activations,
        ff: usize,
        act: GatedActivation,
        down: &[Self::Weight],
        n_tokens: usize,
        n_used: usize,
        ids: &Self::Activations,
        weights: &Self::Activations,
        width: usize,
        shared: Option<(&Self::Activations, &Self::Activations)>,
        scratch: &mut Self::Activations,
        x: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        moe::gated_matmul_id_combine(
            self, gate, up, ff, act, down, n_tokens, n_used, ids, weights, width, shared, scratch,
            x,
        )
    }

    /// Routes `n_tokens` tokens as [`crate::moe::Routing::route`] does, where the logits lie:
    /// `logits` holds `n_expert` router logits per token (turned into probabilities in place);
    /// `ids` and `weights` receive `n_used` expert ids (as exact f32 values) and weights per
    /// token, in slot order. Counts beyond [`crate::moe::MAX_DEVICE_USED`] and
    /// [`crate::moe::MAX_DEVICE_EXPERTS`] are refused.
    fn route_experts(
        &self,
        routing: &crate::moe::Routing,
        logits: &mut Self::Activations,
        n_tokens: usize,
        ids: &mut Self::Activations,
        weights: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        moe::route_experts(self, routing, logits, n_tokens, ids, weights)
    }

    /// The first half of a routed mixture-of-experts block, where [`Backend::routes`] says so for
    /// its experts: `normed = rms_norm(x) * norm` over `n_tokens` rows of `dim` (as
    /// [`Backend::rms_norm_into`]), the router's logits of `normed`, the routing
    /// ([`Backend::route_experts`]: ids and weights) and the routed gate and up of every pair
    /// ([`Backend::matmul_id_pair`] of `normed`), whose input a backend may normalise and convert
    /// once for all three products.
    #[allow(clippy::too_many_arguments)]
    fn norm_route_pair(
        &self,
        x: &Self::Activations,
        w: RouteWeights<'_, Self::Weight>,
        routing: &crate::moe::Routing,
        n_tokens: usize,
        dim: usize,
        eps: f32,
        out: RouteBuffers<'_, Self::Activations>,
    ) -> Result<(), BackendError> {
        moe::norm_route_pair(self, x, w, routing, n_tokens, dim, eps, out)
    }

    /// A mixture-of-experts block's output added to the residual stream `x` (`n_tokens` rows of
    /// `width`): the `n_used` expert outputs of each token (`down`, one row per pair) weighted by
    /// `weights` and summed in slot order ([`crate::moe::weighted_sum`]), plus, with `shared` =
    /// (output, gate logit per token), the shared expert's output scaled by
    /// [`crate::moe::shared_expert_scale`]; then `x += ` that sum.
    #[allow(clippy::too_many_arguments)]
    fn moe_combine(
        &self,
        down: &Self::Activations,
        weights: &Self::Activations,
        n_tokens: usize,
        n_used: usize,
        width: usize,
        shared: Option<(&Self::Activations, &Self::Activations)>,
        x: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        moe::moe_combine(self, down, weights, n_tokens, n_used, width, shared, x)
    }

    // The fused steps of a layer (`fused.rs`): each defined as the single ops above, which the
    // provided methods run; a backend may override them to run the same sequence in fewer
    // launches, with the same results up to float rounding.

    /// `outs[i] (n_tokens, rows of ws[i]) = x * ws[i]^T` for each weight: several products of
    /// one input (q, k and v; gate and up), whose input a backend may convert once.
    fn matmuls(
        &self,
        ws: &[&Self::Weight],
        x: &Self::Activations,
        n_tokens: usize,
        outs: &mut [&mut Self::Activations],
    ) -> Result<(), BackendError> {
        fused::matmuls(self, ws, x, n_tokens, outs)
    }

    /// `normed = rms_norm(x) * norm` over `n_rows` rows of `dim` (as [`Backend::rms_norm_into`]),
    /// then [`Backend::matmuls`] of `normed`.
    #[allow(clippy::too_many_arguments)]
    fn norm_matmuls(
        &self,
        x: &Self::Activations,
        norm: &Self::Weight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        normed: &mut Self::Activations,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Activations],
    ) -> Result<(), BackendError> {
        fused::norm_matmuls(self, x, norm, n_rows, dim, eps, normed, ws, outs)
    }

    /// A block's output projection added to the residual stream: `residual += post(x * w^T)`
    /// over `n_tokens` rows of `width` values, `post` the optional RMS norm (weight, epsilon)
    /// of Gemma's post-norms. `scratch` (room for the product) is left unspecified.
    #[allow(clippy::too_many_arguments)]
    fn matmul_residual(
        &self,
        w: &Self::Weight,
        x: &Self::Activations,
        n_tokens: usize,
        width: usize,
        post_norm: Option<(&Self::Weight, f32)>,
        scratch: &mut Self::Activations,
        residual: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        fused::matmul_residual(self, w, x, n_tokens, width, post_norm, scratch, residual)
    }

    /// The feed-forward block's down projection: `residual += post((act(gate) * up) * w^T)`
    /// with `gate` and `up` rows of `ff` values (as [`Backend::gated_activation`], then
    /// [`Backend::matmul_residual`]). `gate` and `scratch` are left unspecified.
    #[allow(clippy::too_many_arguments)]
    fn gated_matmul_residual(
        &self,
        gate: &mut Self::Activations,
        up: &Self::Activations,
        ff: usize,
        act: GatedActivation,
        w: &Self::Weight,
        n_tokens: usize,
        width: usize,
        post_norm: Option<(&Self::Weight, f32)>,
        scratch: &mut Self::Activations,
        residual: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        fused::gated_matmul_residual(
            self, gate, up, ff, act, w, n_tokens, width, post_norm, scratch, residual,
        )
    }

    /// A layer's fresh queries, keys and values of the `positions.len()` tokens of a batch:
    /// biases, per-head norms, rope and the query scale as `p` says (in place on `q` and `k`),
    /// then the keys and values of each cache's rows stored in it (as [`Backend::kv_store`]).
    /// `k` and `v` are left unspecified.
    fn rope_store(
        &self,
        q: &mut Self::Activations,
        k: &mut Self::Activations,
        v: &mut Self::Activations,
        positions: &[u32],
        p: &QkvParams<'_, Self::Weight>,
        caches: &mut [(&mut Self::KvCache, std::ops::Range<usize>)],
    ) -> Result<(), BackendError> {
        fused::rope_store(self, q, k, v, positions, p, caches)
    }

    /// [`Backend::attention`] of each cache's rows of a batch over that cache.
    fn attention_batch(
        &self,
        q: &Self::Activations,
        caches: &[(&Self::KvCache, std::ops::Range<usize>)],
        positions: &[u32],
        params: AttentionParams,
        out: &mut Self::Activations,
    ) -> Result<(), BackendError> {
        fused::attention_batch(self, q, caches, positions, params, out)
    }

    /// Allocates one layer's KV cache with room for `capacity` positions, its keys and values
    /// of `types` (refused unless `head_dim` is whole blocks of both).
    fn alloc_kv(
        &self,
        capacity: usize,
        n_kv_heads: usize,
        head_dim: usize,
        types: KvTypes,
    ) -> Result<Self::KvCache, BackendError>;
    /// Bytes a KV cache occupies on the device.
    fn kv_bytes(&self, kv: &Self::KvCache) -> u64;
    /// Stores keys and values of the `positions.len()` tokens in rows `first_row..` of `k` and
    /// `v` (each row `n_kv_heads * head_dim` wide) at cache positions `positions`, converted to
    /// the cache's types as llama.cpp's CPU backend converts them (f16 rounding to nearest even;
    /// Q8_0 as ggml-cpu's x86 `quantize_row_q8_0`; Q4_0 as `quantize_row_q4_0_ref`), a rotated
    /// side ([`KvTypes::rotation`]) rotated first.
    fn kv_store(
        &self,
        kv: &mut Self::KvCache,
        k: &Self::Activations,
        v: &Self::Activations,
        first_row: usize,
        positions: &[u32],
    ) -> Result<(), BackendError>;
    /// Causal attention of the `positions.len()` queries in rows `first_row..` of `q` (each
    /// `n_heads * head_dim` wide) over the cache, which holds every position `<=` each query's.
    /// Writes the same rows of `out`. An f16 cache is read as llama.cpp reads it without flash
    /// attention, a cache with a quantized type as its flash-attention path does (see
    /// `crate::cpu::attention`), the queries and the output rotated where the cache is.
    fn attention(
        &self,
        q: &Self::Activations,
        kv: &Self::KvCache,
        first_row: usize,
        positions: &[u32],
        params: AttentionParams,
        out: &mut Self::Activations,
    ) -> Result<(), BackendError>;
    /// The first `len` positions of a KV cache where they lie, for another device to copy
    /// directly with [`Backend::import_kv`] (it waits for the device's pending work first).
    fn kv_view<'a>(&'a self, kv: &'a Self::KvCache, len: usize)
        -> Result<KvView<'a>, BackendError>;
    /// Creates a KV cache with room for `capacity` positions holding the positions of `src`
    /// (another device's cache, or a [`HostKv`]), copied directly as
    /// [`Backend::import_weight`] copies weights.
    fn import_kv(&self, src: &KvView<'_>, capacity: usize) -> Result<Self::KvCache, BackendError>;

    /// Which devices this one can copy activations from directly (see
    /// [`Backend::import_activations`]): backends with the same kind can; `None`: through the
    /// host only.
    fn handoff_kind(&self) -> Option<&'static str> {
        None
    }

    /// Leaves the first `len` values of `a` on the device for the next pipeline stage to copy
    /// directly, once the work writing them has finished (ordered by an event on the device, the
    /// host does not wait). `None` when this backend cannot (the CPU: the host copy is the
    /// handoff).
    fn export_activations(
        &self,
        _a: &Self::Activations,
        _len: usize,
    ) -> Result<Option<DeviceActivations>, BackendError> {
        Ok(None)
    }

    /// Copies activations another stage exported into the start of `dst`, device to device
    /// (peer to peer between GPUs, the driver staging through host memory where P2P is not
    /// possible), after the exporter's writes and before the exporter writes the buffer again
    /// (both ordered by events between the two devices' streams). `Ok(false)`, copying nothing,
    /// when they are not of this backend's kind.
    fn import_activations(
        &self,
        _dst: &mut Self::Activations,
        _src: &DeviceActivations,
    ) -> Result<bool, BackendError> {
        Ok(false)
    }

    /// Host memory of `len` f32 values that this device copies activations from and to fastest
    /// (page-locked memory for a GPU, which its DMA engines read and write directly), or `None`
    /// when ordinary memory is as good (the CPU).
    fn alloc_host_staging(
        &self,
        _len: usize,
    ) -> Option<Result<Box<dyn HostStaging>, BackendError>> {
        None
    }

    /// Charges `bytes` of ordinary host memory that buffers of work on this device hold (a
    /// mixture of experts' router outputs, gathered rows and per-expert results) to this
    /// device's ledger when its memory is host memory (the CPU), failing with `OutOfMemory`
    /// beyond the budget; `None` for a device whose ledger counts only its own memory (a GPU).
    fn charge_host_buffers(&self, _what: &str, _bytes: u64) -> Result<Option<Lease>, BackendError> {
        Ok(None)
    }

    /// Waits until the work queued on this device so far has run (the CPU runs each op before
    /// returning: nothing to wait for).
    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Captures the device work `record` queues into a [`StepGraph`] without running it, for
    /// [`Backend::launch_step`] to replay with one launch; `None` (running nothing) on a device
    /// without graphs (the CPU), where the caller runs the work itself. Work to be captured must
    /// read every value that changes between replays from device memory (the positions:
    /// [`Backend::stage_positions`]), and must not allocate, free, synchronise or copy from or to
    /// pageable host memory: the device refuses those during a capture, and the capture fails
    /// (having run nothing). `record`'s own error is returned as it is.
    fn capture_step<E: From<BackendError>>(
        &self,
        _record: &mut dyn FnMut() -> Result<(), E>,
    ) -> Option<Result<StepGraph, E>>
    where
        Self: Sized,
    {
        None
    }

    /// Queues one replay of `graph`, which this device captured.
    fn launch_step(&self, graph: &StepGraph) -> Result<(), BackendError> {
        Err(BackendError::Device {
            device: self.device_name().to_owned(),
            message: format!("cannot launch a graph captured on {}", graph.device()),
        })
    }

    /// A number that changes whenever device buffers the backend keeps between calls are
    /// reallocated: a graph captured under another epoch holds their old addresses and must not
    /// be launched.
    fn graph_epoch(&self) -> u64 {
        0
    }

    /// Stages the positions of the coming step's tokens for the device: written by the host
    /// into page-locked memory, copied to the device buffer the step's ops read by one
    /// asynchronous copy, which the step's graph holds as its first node (a captured step
    /// replays with the positions staged before its launch) or the step's first op queues when
    /// it runs eagerly; the ops then find them there without uploading them again.
    fn stage_positions(&self, _positions: &[u32]) -> Result<(), BackendError> {
        Ok(())
    }

    /// The key splits decode attention of `n_queries` queries of `params` over at most
    /// `max_context` keys launches with (a captured step's launch shape depends on it); 1 where
    /// attention does not split.
    fn attention_splits(
        &self,
        _params: &AttentionParams,
        _n_queries: usize,
        _max_context: usize,
    ) -> usize {
        1
    }
}

/// Activations one pipeline stage left on its device for the next stage to copy directly
/// ([`Backend::export_activations`]). Valid while the exporting stage's buffer is untouched:
/// the pipeline imports it into the next stage before anything else runs.
#[derive(Clone, Debug)]
pub struct DeviceActivations {
    /// The device's kind ([`Backend::handoff_kind`]).
    pub kind: &'static str,
    /// Its name, for messages.
    pub device: String,
    /// f32 values exported.
    pub len: usize,
    /// Where they lie, in the terms of the backend that exported them.
    pub(crate) location: ActivationsLocation,
}

/// Where exported activations lie.
#[derive(Clone, Debug)]
pub(crate) enum ActivationsLocation {
    /// On a CUDA device: its context, the device address, and the stream that writes them, with
    /// an event recorded on it after the writes (the importer's stream waits for it instead of
    /// the host waiting for the producer).
    Cuda {
        /// The context the address belongs to.
        ctx: std::sync::Arc<cudarc::driver::CudaContext>,
        /// The address of the first value.
        ptr: u64,
        /// The producing stage's stream; it waits for the importer's copy before it writes the
        /// buffer again.
        stream: std::sync::Arc<cudarc::driver::CudaStream>,
        /// Recorded on `stream` once the values are written.
        ready: std::sync::Arc<cudarc::driver::CudaEvent>,
    },
}

/// Host memory for activations crossing between devices (see
/// [`Backend::alloc_host_staging`]).
pub trait HostStaging: Send {
    /// Its values. Transfers from and to it run asynchronously on the device's stream: the
    /// caller orders them (a read into it has finished when [`Backend::read_activations`]
    /// returns; a write from it must have run before its values are written again, as the end
    /// of a pipeline step, which waits for its last stage, guarantees).
    fn values(&mut self) -> Result<&mut [f32], BackendError>;
    /// How many values it holds.
    fn len(&self) -> usize;
    /// Whether it holds none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes resident on a device (or in host memory), borrowed so that another device can copy them
/// directly (see [`Backend::import_weight`]).
#[derive(Clone, Copy, Debug)]
pub struct DeviceBytes<'a> {
    /// The device holding them, for messages.
    pub device: &'a str,
    /// How many bytes.
    pub len: usize,
    /// Where they lie.
    pub(crate) at: BytesAt<'a>,
}

/// Where borrowed [`DeviceBytes`] lie.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BytesAt<'a> {
    /// In host memory (a CPU device's tensor, or a host copy).
    Host(&'a [u8]),
    /// In host memory in the packed layout of a CPU weight ([`crate::cpu::packed`]): reading
    /// them unpacks them into GGUF's layout, so the bytes others see are always GGUF's.
    HostPacked {
        /// The packed bytes.
        bytes: &'a [u8],
        /// The weight's type.
        ty: crate::quant::GgmlType,
        /// Its rows.
        rows: usize,
        /// Its elements per row.
        cols: usize,
    },
    /// On a CUDA device: the context the address belongs to and the address. The borrow keeps
    /// the allocation alive; the owner finished writing it before handing out the view.
    Cuda {
        /// The allocation's context.
        ctx: &'a std::sync::Arc<cudarc::driver::CudaContext>,
        /// The address of the first byte.
        ptr: u64,
    },
}

impl<'a> DeviceBytes<'a> {
    /// Bytes in host memory.
    pub fn host(device: &'a str, bytes: &'a [u8]) -> Self {
        DeviceBytes {
            device,
            len: bytes.len(),
            at: BytesAt::Host(bytes),
        }
    }

    /// The GGUF bytes of a weight that a CPU device holds packed (`bytes`, as
    /// [`crate::cpu::packed::pack`] made them from a `rows × cols` matrix of `ty`).
    pub(crate) fn host_packed(
        device: &'a str,
        bytes: &'a [u8],
        ty: crate::quant::GgmlType,
        rows: usize,
        cols: usize,
    ) -> Self {
        DeviceBytes {
            device,
            len: bytes.len(),
            at: BytesAt::HostPacked {
                bytes,
                ty,
                rows,
                cols,
            },
        }
    }

    /// Copies them into host memory `dst` of exactly `len` bytes.
    pub(crate) fn read_into(&self, dst: &mut [u8]) -> Result<(), BackendError> {
        if dst.len() != self.len {
            return Err(shape(
                "copy",
                format!("{} bytes from {} into {}", self.len, self.device, dst.len()),
            ));
        }
        match self.at {
            BytesAt::Host(src) => dst.copy_from_slice(src),
            BytesAt::HostPacked {
                bytes,
                ty,
                rows,
                cols,
            } => crate::cpu::packed::unpack(ty, rows, cols, bytes, dst)
                .map_err(|e| shape("copy", format!("unpacking from {}: {e}", self.device)))?,
            BytesAt::Cuda { ctx, ptr } => {
                cuda::read_device_bytes(ctx, ptr, dst).map_err(|message| BackendError::Device {
                    device: self.device.to_string(),
                    message,
                })?
            }
        }
        Ok(())
    }
}

/// A weight as another device can copy it ([`Backend::weight_view`]).
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Element type.
    pub ty: GgmlType,
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Its bytes, `rows * ty.row_bytes(cols)`, as in the model file.
    pub bytes: DeviceBytes<'a>,
}

impl WeightView<'_> {
    /// Its bytes copied into host memory, in GGUF's layout (a packed CPU weight unpacked, a GPU
    /// weight downloaded).
    pub fn to_host(&self) -> Result<Vec<u8>, BackendError> {
        self.check_size()?;
        let mut bytes = vec![0u8; self.bytes.len];
        self.bytes.read_into(&mut bytes)?;
        Ok(bytes)
    }

    /// Checks that its bytes are exactly `rows` rows of `cols` values of `ty`.
    pub(crate) fn check_size(&self) -> Result<(), BackendError> {
        HostTensor {
            name: self.name,
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &[],
        }
        .check_size_of(self.bytes.len as u64)
    }
}

mod cpu;
#[cfg(test)]
mod cpu_tests;
mod cuda;
mod fused;
mod graph;
mod kv;
mod memory;
mod moe;
pub use cpu::CpuBackend;
pub use cuda::{
    check_compute_capability, check_driver, cuda_available, cuda_device_info, cuda_gpu_fault,
    cuda_peer_paths, normalize_pci_bus_id, CudaBackend, CudaDeviceInfo, CudaKv, CudaStepGraph,
    CudaWeight, DeviceBuf, GraphPositions, ModuleImage, PeerPath, MIN_DRIVER_RELEASE,
};
pub use fused::QkvParams;
pub use graph::StepGraph;
pub(crate) use kv::{f16_bytes, f16_bytes_mut, KvShape};
pub use kv::{kv_cache_bytes, HostKv, KvRotation, KvType, KvTypeError, KvTypes, KvView};
pub use memory::{DeviceMemory, Lease};
pub use moe::{RouteBuffers, RouteWeights};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_and_vector_views_cover_the_bytes_asked_for() {
        // 3 rows of 64 Q8_0 values (2 blocks of 34 bytes each per row).
        let data: Vec<u8> = (0..3 * 68).map(|i| i as u8).collect();
        let t = HostTensor {
            name: "qkv",
            ty: GgmlType::Q8_0,
            rows: 3,
            cols: 64,
            data: &data,
        };
        let mid = t.row_range(1..3).expect("rows 1..3");
        assert_eq!((mid.rows, mid.cols, mid.data), (2, 64, &data[68..]));
        assert!(t.row_range(2..4).is_err(), "past the last row");
        assert!(t.vector_range(0..32).is_err(), "not a vector");
        let values: Vec<u8> = (0..4 * 96).map(|i| i as u8).collect();
        let v = HostTensor {
            name: "qkv.bias",
            ty: GgmlType::F32,
            rows: 1,
            cols: 96,
            data: &values,
        };
        let k = v.vector_range(64..80).expect("values 64..80");
        assert_eq!((k.rows, k.cols, k.data), (1, 16, &values[256..320]));
        assert!(v.vector_range(90..100).is_err());
        let blocks = HostTensor {
            ty: GgmlType::Q8_0,
            cols: 64,
            data: &data[..68],
            ..v
        };
        assert!(blocks.vector_range(0..16).is_err(), "inside a block");
        assert!(blocks.vector_range(32..64).is_ok());
        let short = HostTensor {
            data: &data[..10],
            ..t
        };
        assert!(
            short.row_range(0..1).is_err(),
            "bytes do not match the shape"
        );
    }
}
