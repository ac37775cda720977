//! The weights of a contiguous range of transformer layers (and, for the last stage, the output
//! head) resident on one device, loaded by tensor name from a [`TensorSource`].

use llmd_kernels::backend::{Backend, BackendError, HostTensor};
use thiserror::Error;

use super::config::{Arch, ModelConfig};

/// Where tensors come from (a memory-mapped GGUF file, or host copies being moved).
pub trait TensorSource {
    /// The tensor called `name`, if the model has it.
    fn tensor(&self, name: &str) -> Option<HostTensor<'_>>;
}

/// Errors loading weights.
#[derive(Debug, Error)]
pub enum WeightError {
    /// A tensor the architecture needs is absent.
    #[error("missing tensor {0}")]
    Missing(String),
    /// A tensor has the wrong shape.
    #[error("tensor {name} has shape {rows}x{cols}, expected {want_rows}x{want_cols}")]
    Shape {
        /// The tensor.
        name: String,
        /// Rows found.
        rows: usize,
        /// Columns found.
        cols: usize,
        /// Rows expected.
        want_rows: usize,
        /// Columns expected.
        want_cols: usize,
    },
    /// The device rejected it.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// One transformer block's weights on a device. Shapes are `(rows, cols)` with `cols` the input.
pub struct LayerWeights<B: Backend> {
    /// RMS norm before attention: `(n_embd)`.
    pub attn_norm: B::Weight,
    /// Query projection: `(n_head * head_dim, n_embd)`.
    pub wq: B::Weight,
    /// Key projection: `(n_head_kv * head_dim, n_embd)`.
    pub wk: B::Weight,
    /// Value projection: `(n_head_kv * head_dim, n_embd)`.
    pub wv: B::Weight,
    /// Query/key/value biases (Qwen 2).
    pub bq: Option<B::Weight>,
    /// Key bias.
    pub bk: Option<B::Weight>,
    /// Value bias.
    pub bv: Option<B::Weight>,
    /// Per-head RMS norm of queries and keys: `(head_dim)` (Qwen 3, Gemma 3).
    pub q_norm: Option<B::Weight>,
    /// Key head norm.
    pub k_norm: Option<B::Weight>,
    /// Attention output projection: `(n_embd, n_head * head_dim)`.
    pub wo: B::Weight,
    /// RMS norm after attention (Gemma).
    pub post_attn_norm: Option<B::Weight>,
    /// RMS norm before the feed-forward block: `(n_embd)`.
    pub ffn_norm: B::Weight,
    /// Feed-forward gate: `(n_ff, n_embd)`.
    pub gate: B::Weight,
    /// Feed-forward up: `(n_ff, n_embd)`.
    pub up: B::Weight,
    /// Feed-forward down: `(n_embd, n_ff)`.
    pub down: B::Weight,
    /// RMS norm after the feed-forward block (Gemma).
    pub post_ffn_norm: Option<B::Weight>,
}

/// The output head: final norm and the vocabulary projection.
pub struct HeadWeights<B: Backend> {
    /// Final RMS norm: `(n_embd)`.
    pub output_norm: B::Weight,
    /// Vocabulary projection `(n_vocab, n_embd)`; the token embedding when the model ties them.
    pub output: B::Weight,
}

/// Uploads tensors with shape checks.
struct Loader<'a, B: Backend, S: TensorSource + ?Sized> {
    backend: &'a B,
    source: &'a S,
    bytes: u64,
}

impl<B: Backend, S: TensorSource + ?Sized> Loader<'_, B, S> {
    fn optional(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<B::Weight>, WeightError> {
        let Some(t) = self.source.tensor(name) else {
            return Ok(None);
        };
        if t.rows != rows || t.cols != cols {
            return Err(WeightError::Shape {
                name: name.to_string(),
                rows: t.rows,
                cols: t.cols,
                want_rows: rows,
                want_cols: cols,
            });
        }
        let w = self.backend.upload_weight(&t)?;
        self.bytes += self.backend.weight_bytes(&w);
        Ok(Some(w))
    }

    fn required(&mut self, name: &str, rows: usize, cols: usize) -> Result<B::Weight, WeightError> {
        self.optional(name, rows, cols)?
            .ok_or_else(|| WeightError::Missing(name.to_string()))
    }
}

/// Names of the tensors of layer `il` in GGUF files.
fn layer_tensor(il: usize, what: &str) -> String {
    format!("blk.{il}.{what}")
}

impl<B: Backend> LayerWeights<B> {
    /// Loads layer `il` onto `backend`; returns the weights and the bytes they occupy.
    pub fn load<S: TensorSource + ?Sized>(
        backend: &B,
        source: &S,
        config: &ModelConfig,
        il: usize,
    ) -> Result<(Self, u64), WeightError> {
        let mut ld = Loader {
            backend,
            source,
            bytes: 0,
        };
        let (d, q, kv, ff, hd) = (
            config.n_embd,
            config.q_width(),
            config.kv_width(),
            config.n_ff[il],
            config.head_dim,
        );
        let name = |what: &str| layer_tensor(il, what);
        let qk_norm = config.qk_norm;
        let weights = LayerWeights {
            attn_norm: ld.required(&name("attn_norm.weight"), 1, d)?,
            wq: ld.required(&name("attn_q.weight"), q, d)?,
            wk: ld.required(&name("attn_k.weight"), kv, d)?,
            wv: ld.required(&name("attn_v.weight"), kv, d)?,
            bq: ld.optional(&name("attn_q.bias"), 1, q)?,
            bk: ld.optional(&name("attn_k.bias"), 1, kv)?,
            bv: ld.optional(&name("attn_v.bias"), 1, kv)?,
            q_norm: if qk_norm {
                Some(ld.required(&name("attn_q_norm.weight"), 1, hd)?)
            } else {
                None
            },
            k_norm: if qk_norm {
                Some(ld.required(&name("attn_k_norm.weight"), 1, hd)?)
            } else {
                None
            },
            wo: ld.required(&name("attn_output.weight"), d, q)?,
            post_attn_norm: if config.post_norms {
                Some(ld.required(&name("post_attention_norm.weight"), 1, d)?)
            } else {
                None
            },
            ffn_norm: ld.required(&name("ffn_norm.weight"), 1, d)?,
            gate: ld.required(&name("ffn_gate.weight"), ff, d)?,
            up: ld.required(&name("ffn_up.weight"), ff, d)?,
            down: ld.required(&name("ffn_down.weight"), d, ff)?,
            post_ffn_norm: if config.post_norms {
                Some(ld.required(&name("post_ffw_norm.weight"), 1, d)?)
            } else {
                None
            },
        };
        if config.arch == Arch::Qwen2
            && (weights.bq.is_none() || weights.bk.is_none() || weights.bv.is_none())
        {
            return Err(WeightError::Missing(name(
                "attn_q.bias / attn_k.bias / attn_v.bias",
            )));
        }
        Ok((weights, ld.bytes))
    }
}

impl<B: Backend> HeadWeights<B> {
    /// Loads the output head onto `backend` (tied to `token_embd` when `output` is absent).
    pub fn load<S: TensorSource + ?Sized>(
        backend: &B,
        source: &S,
        config: &ModelConfig,
    ) -> Result<(Self, u64), WeightError> {
        let mut ld = Loader {
            backend,
            source,
            bytes: 0,
        };
        let output_norm = ld.required("output_norm.weight", 1, config.n_embd)?;
        let output = match ld.optional("output.weight", config.n_vocab, config.n_embd)? {
            Some(w) => w,
            None => ld.required("token_embd.weight", config.n_vocab, config.n_embd)?,
        };
        Ok((
            HeadWeights {
                output_norm,
                output,
            },
            ld.bytes,
        ))
    }
}
