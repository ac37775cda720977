//! The weights of one transformer layer and of the output head, by role. The same structures hold
//! the tensors as found in the model file ([`LayerWeights::from_source`], shape-checked), as
//! resident on a device (`LayerWeights<B::Weight>`) and as views another device copies from:
//! [`LayerWeights::try_map`] turns one into the other tensor by tensor.
//!
//! Fused projections are split into row views here, so the forward pass has one path: a fused
//! `attn_qkv` (Phi-3, and any file llama.cpp's `create_tensor_qkv` accepts) gives `wq`, `wk`,
//! `wv` (and `attn_qkv.bias` the three biases); Phi-3's `ffn_up` of `2 * n_ff` rows gives the
//! gate (first half) and up (second half). Each row of a view is the same row of the fused
//! tensor, so every product is exactly what the fused one computes. The rope frequency factors
//! (one tensor shared by every layer in the file) are uploaded with each layer, so a layer moves
//! between devices with everything it needs.

use llmd_kernels::backend::{BackendError, HostTensor};
use thiserror::Error;

use super::config::{Arch, ModelConfig};

/// Where tensors come from (a part's tensors read from the model file, or host copies being
/// moved).
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
    /// Parts of a model put together in the wrong place (a bug in the re-split).
    #[error("misplaced weights: {0}")]
    Misplaced(String),
    /// The device rejected it.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The model file could not be read (it changed since the load, or an I/O error).
    #[error(transparent)]
    File(#[from] llmd_gguf::GgufError),
}

/// One transformer block's weights (`W`: a tensor in the file, on a device, or a view of one).
/// Shapes are `(rows, cols)` with `cols` the input.
pub struct LayerWeights<W> {
    /// RMS norm before attention: `(n_embd)`.
    pub attn_norm: W,
    /// Query projection: `(n_head * head_dim, n_embd)`.
    pub wq: W,
    /// Key projection: `(n_head_kv * head_dim, n_embd)`.
    pub wk: W,
    /// Value projection: `(n_head_kv * head_dim, n_embd)`.
    pub wv: W,
    /// Query/key/value biases (Qwen 2).
    pub bq: Option<W>,
    /// Key bias.
    pub bk: Option<W>,
    /// Value bias.
    pub bv: Option<W>,
    /// Per-head RMS norm of queries and keys: `(head_dim)` (Qwen 3, Gemma 3).
    pub q_norm: Option<W>,
    /// Key head norm.
    pub k_norm: Option<W>,
    /// Attention output projection: `(n_embd, n_head * head_dim)`.
    pub wo: W,
    /// RMS norm after attention (Gemma).
    pub post_attn_norm: Option<W>,
    /// RMS norm before the feed-forward block: `(n_embd)`.
    pub ffn_norm: W,
    /// Feed-forward gate: `(n_ff, n_embd)`.
    pub gate: W,
    /// Feed-forward up: `(n_ff, n_embd)`.
    pub up: W,
    /// Feed-forward down: `(n_embd, n_ff)`.
    pub down: W,
    /// RMS norm after the feed-forward block (Gemma).
    pub post_ffn_norm: Option<W>,
    /// Rope frequency factors: `(n_dims / 2)` (Llama 3.1's `rope_freqs`, Phi-3's long or short
    /// factors), this layer's copy of the model's one tensor.
    pub rope_factors: Option<W>,
}

/// The output head: final norm and the vocabulary projection.
pub struct HeadWeights<W> {
    /// Final RMS norm: `(n_embd)`.
    pub output_norm: W,
    /// Vocabulary projection `(n_vocab, n_embd)`; the token embedding when the model ties them.
    pub output: W,
}

/// Finds tensors by name with shape checks.
struct Finder<'a, S: TensorSource + ?Sized> {
    source: &'a S,
}

impl<'a, S: TensorSource + ?Sized> Finder<'a, S> {
    fn optional(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<HostTensor<'a>>, WeightError> {
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
        Ok(Some(t))
    }

    fn required(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<HostTensor<'a>, WeightError> {
        self.optional(name, rows, cols)?
            .ok_or_else(|| WeightError::Missing(name.to_string()))
    }
}

/// Names of the tensors of layer `il` in GGUF files.
fn layer_tensor(il: usize, what: &str) -> String {
    format!("blk.{il}.{what}")
}

impl<'a> LayerWeights<HostTensor<'a>> {
    /// Layer `il`'s tensors in `source`, shape-checked against `config`, fused projections split
    /// into views.
    pub fn from_source<S: TensorSource + ?Sized>(
        source: &'a S,
        config: &ModelConfig,
        il: usize,
    ) -> Result<Self, WeightError> {
        let ld = Finder { source };
        let (d, q, kv, ff, hd) = (
            config.n_embd,
            config.q_width(),
            config.kv_width(),
            config.n_ff[il],
            config.head_dim,
        );
        let name = |what: &str| layer_tensor(il, what);
        let qk_norm = config.qk_norm;
        let (wq, wk, wv) = match ld.optional(&name("attn_qkv.weight"), q + 2 * kv, d)? {
            Some(qkv) => (
                qkv.row_range(0..q)?,
                qkv.row_range(q..q + kv)?,
                qkv.row_range(q + kv..q + 2 * kv)?,
            ),
            None => (
                ld.required(&name("attn_q.weight"), q, d)?,
                ld.required(&name("attn_k.weight"), kv, d)?,
                ld.required(&name("attn_v.weight"), kv, d)?,
            ),
        };
        let (bq, bk, bv) = match ld.optional(&name("attn_qkv.bias"), 1, q + 2 * kv)? {
            Some(b) => (
                Some(b.vector_range(0..q)?),
                Some(b.vector_range(q..q + kv)?),
                Some(b.vector_range(q + kv..q + 2 * kv)?),
            ),
            None => (
                ld.optional(&name("attn_q.bias"), 1, q)?,
                ld.optional(&name("attn_k.bias"), 1, kv)?,
                ld.optional(&name("attn_v.bias"), 1, kv)?,
            ),
        };
        let (gate, up) = if config.fused_gate_up {
            let fused = ld.required(&name("ffn_up.weight"), 2 * ff, d)?;
            (fused.row_range(0..ff)?, fused.row_range(ff..2 * ff)?)
        } else {
            (
                ld.required(&name("ffn_gate.weight"), ff, d)?,
                ld.required(&name("ffn_up.weight"), ff, d)?,
            )
        };
        let rope_factors = match config.rope_factors {
            Some(f) => Some(ld.required(f.tensor_name(), 1, config.rope[il].n_dims / 2)?),
            None => None,
        };
        let weights = LayerWeights {
            attn_norm: ld.required(&name("attn_norm.weight"), 1, d)?,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
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
            gate,
            up,
            down: ld.required(&name("ffn_down.weight"), d, ff)?,
            post_ffn_norm: if config.post_norms {
                Some(ld.required(&name("post_ffw_norm.weight"), 1, d)?)
            } else {
                None
            },
            rope_factors,
        };
        if config.arch == Arch::Qwen2
            && (weights.bq.is_none() || weights.bk.is_none() || weights.bv.is_none())
        {
            return Err(WeightError::Missing(name(
                "attn_q.bias / attn_k.bias / attn_v.bias",
            )));
        }
        Ok(weights)
    }
}

/// The file tensors layer `il` of `config`'s model loads from, by name: what it is charged for
/// on a device is their bytes (the views of a fused tensor together cover all of it; the shared
/// rope factors count with every layer, which each holds a copy). Optional ones are listed too:
/// a planner counts the ones the file has. [`LayerWeights::from_source`] loads exactly these.
pub fn layer_source_names(config: &ModelConfig, il: usize) -> Vec<String> {
    let mut what = vec![
        "attn_norm.weight",
        "attn_qkv.weight",
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_qkv.bias",
        "attn_q.bias",
        "attn_k.bias",
        "attn_v.bias",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    if config.qk_norm {
        what.extend(["attn_q_norm.weight", "attn_k_norm.weight"]);
    }
    if config.post_norms {
        what.extend(["post_attention_norm.weight", "post_ffw_norm.weight"]);
    }
    if !config.fused_gate_up {
        what.push("ffn_gate.weight");
    }
    let mut names: Vec<String> = what.iter().map(|w| layer_tensor(il, w)).collect();
    names.extend(config.rope_factors.map(|f| f.tensor_name().to_string()));
    names
}

impl<W> LayerWeights<W> {
    /// The same layer with every tensor passed through `f` (uploaded, viewed, copied).
    pub fn try_map<'s, V, E>(
        &'s self,
        mut f: impl FnMut(&'s W) -> Result<V, E>,
    ) -> Result<LayerWeights<V>, E> {
        Ok(LayerWeights {
            attn_norm: f(&self.attn_norm)?,
            wq: f(&self.wq)?,
            wk: f(&self.wk)?,
            wv: f(&self.wv)?,
            bq: map_optional(&self.bq, &mut f)?,
            bk: map_optional(&self.bk, &mut f)?,
            bv: map_optional(&self.bv, &mut f)?,
            q_norm: map_optional(&self.q_norm, &mut f)?,
            k_norm: map_optional(&self.k_norm, &mut f)?,
            wo: f(&self.wo)?,
            post_attn_norm: map_optional(&self.post_attn_norm, &mut f)?,
            ffn_norm: f(&self.ffn_norm)?,
            gate: f(&self.gate)?,
            up: f(&self.up)?,
            down: f(&self.down)?,
            post_ffn_norm: map_optional(&self.post_ffn_norm, &mut f)?,
            rope_factors: map_optional(&self.rope_factors, &mut f)?,
        })
    }

    /// Every tensor of the layer.
    pub fn tensors(&self) -> impl Iterator<Item = &W> {
        [
            Some(&self.attn_norm),
            Some(&self.wq),
            Some(&self.wk),
            Some(&self.wv),
            self.bq.as_ref(),
            self.bk.as_ref(),
            self.bv.as_ref(),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
            Some(&self.wo),
            self.post_attn_norm.as_ref(),
            Some(&self.ffn_norm),
            Some(&self.gate),
            Some(&self.up),
            Some(&self.down),
            self.post_ffn_norm.as_ref(),
            self.rope_factors.as_ref(),
        ]
        .into_iter()
        .flatten()
    }
}

impl<'a> HeadWeights<HostTensor<'a>> {
    /// The output head's tensors in `source` (the token embedding when the model ties them).
    pub fn from_source<S: TensorSource + ?Sized>(
        source: &'a S,
        config: &ModelConfig,
    ) -> Result<Self, WeightError> {
        let ld = Finder { source };
        let output_norm = ld.required("output_norm.weight", 1, config.n_embd)?;
        let output = match ld.optional("output.weight", config.n_vocab, config.n_embd)? {
            Some(w) => w,
            None => ld.required("token_embd.weight", config.n_vocab, config.n_embd)?,
        };
        Ok(HeadWeights {
            output_norm,
            output,
        })
    }
}

impl<W> HeadWeights<W> {
    /// The same head with both tensors passed through `f`.
    pub fn try_map<'s, V, E>(
        &'s self,
        mut f: impl FnMut(&'s W) -> Result<V, E>,
    ) -> Result<HeadWeights<V>, E> {
        Ok(HeadWeights {
            output_norm: f(&self.output_norm)?,
            output: f(&self.output)?,
        })
    }

    /// Both tensors.
    pub fn tensors(&self) -> impl Iterator<Item = &W> {
        [&self.output_norm, &self.output].into_iter()
    }
}

/// `f` of an optional tensor.
fn map_optional<'s, W, V, E>(
    w: &'s Option<W>,
    f: &mut impl FnMut(&'s W) -> Result<V, E>,
) -> Result<Option<V>, E> {
    w.as_ref().map(f).transpose()
}
