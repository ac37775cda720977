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
//!
//! A mixture-of-experts layer's expert tensors are 3-D (`ffn_gate_exps` is
//! `[n_embd, n_ff_exp, n_expert]` in ggml's order): expert `e` is the `e`-th block of rows, so
//! each expert is split into its own row views here too ([`ExpertWeights`]), and a routed
//! matmul is an ordinary matmul of the tokens routed to that expert. A shared expert
//! (Qwen2-MoE's `ffn_*_shexp`, [`SharedExpert`]) is a layer weight like a dense block: it stays
//! with its layer when the routed experts move (`--cpu-moe`).

use llmd_kernels::backend::{BackendError, HostTensor};
use thiserror::Error;

use super::config::{Arch, ModelConfig, MoeConfig};

/// The name of the token embedding table in GGUF files.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// The name of the output projection; absent when the model ties it to the embedding.
pub const OUTPUT: &str = "output.weight";
/// The name of the final norm, the output head's other tensor.
pub const OUTPUT_NORM: &str = "output_norm.weight";

/// Which part of the model: a layer, or the output head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Transformer layer `il`.
    Layer(usize),
    /// The output head.
    Head,
}

impl Slot {
    /// Its index among `n_layer + 1` parts (the head last).
    pub fn index(self, n_layer: usize) -> usize {
        match self {
            Slot::Layer(il) => il,
            Slot::Head => n_layer,
        }
    }

    /// The slot at `index` among `n_layer + 1` parts.
    pub fn at(index: usize, n_layer: usize) -> Slot {
        if index < n_layer {
            Slot::Layer(index)
        } else {
            Slot::Head
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Layer(il) => write!(f, "layer {il}"),
            Slot::Head => f.write_str("the output head"),
        }
    }
}

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
    /// The feed-forward block: one gated MLP, or routed experts.
    pub ffn: FeedForward<W>,
    /// The shared expert beside the routed ones (Qwen2-MoE).
    pub shared_expert: Option<SharedExpert<W>>,
    /// RMS norm after the feed-forward block (Gemma).
    pub post_ffn_norm: Option<W>,
    /// Rope frequency factors: `(n_dims / 2)` (Llama 3.1's `rope_freqs`, Phi-3's long or short
    /// factors), this layer's copy of the model's one tensor.
    pub rope_factors: Option<W>,
}

/// A layer's feed-forward block.
pub enum FeedForward<W> {
    /// One gated MLP.
    Dense {
        /// Gate: `(n_ff, n_embd)`.
        gate: W,
        /// Up: `(n_ff, n_embd)`.
        up: W,
        /// Down: `(n_embd, n_ff)`.
        down: W,
    },
    /// A mixture of experts.
    Experts(ExpertWeights<W>),
    /// A mixture of experts whose experts live on another device (`--cpu-moe`), held by the
    /// stage beside this layer ([`super::backend::AnyExperts`]).
    Elsewhere,
}

/// The experts of a mixture-of-experts layer, each a gated MLP of its own.
pub struct ExpertWeights<W> {
    /// Router: `(n_expert, n_embd)`, one logit per expert (`ffn_gate_inp`).
    pub router: W,
    /// Gate of each expert: `(n_ff_exp, n_embd)`, rows of `ffn_gate_exps`.
    pub gate: Vec<W>,
    /// Up of each expert: `(n_ff_exp, n_embd)`, rows of `ffn_up_exps`.
    pub up: Vec<W>,
    /// Down of each expert: `(n_embd, n_ff_exp)`, rows of `ffn_down_exps`.
    pub down: Vec<W>,
}

/// The shared expert of a mixture-of-experts layer (Qwen2-MoE): a gated MLP every token goes
/// through, its output scaled by `sigmoid(gate_inp · x)` and added to the routed experts'.
pub struct SharedExpert<W> {
    /// Its gate logit: `(1, n_embd)`, one value per token (`ffn_gate_inp_shexp`).
    pub gate_inp: W,
    /// Gate: `(n_ff_shexp, n_embd)` (`ffn_gate_shexp`).
    pub gate: W,
    /// Up: `(n_ff_shexp, n_embd)` (`ffn_up_shexp`).
    pub up: W,
    /// Down: `(n_embd, n_ff_shexp)` (`ffn_down_shexp`).
    pub down: W,
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
        let ffn = match &config.moe {
            Some(moe) => FeedForward::Experts(ExpertWeights::from_source(&ld, moe, d, il)?),
            None => {
                let (gate, up) = if config.fused_gate_up {
                    let fused = ld.required(&name("ffn_up.weight"), 2 * ff, d)?;
                    (fused.row_range(0..ff)?, fused.row_range(ff..2 * ff)?)
                } else {
                    (
                        ld.required(&name("ffn_gate.weight"), ff, d)?,
                        ld.required(&name("ffn_up.weight"), ff, d)?,
                    )
                };
                FeedForward::Dense {
                    gate,
                    up,
                    down: ld.required(&name("ffn_down.weight"), d, ff)?,
                }
            }
        };
        let shared_expert = match config.moe.and_then(|m| m.n_ff_shexp) {
            Some(fs) => Some(SharedExpert {
                gate_inp: ld.required(&name("ffn_gate_inp_shexp.weight"), 1, d)?,
                gate: ld.required(&name("ffn_gate_shexp.weight"), fs, d)?,
                up: ld.required(&name("ffn_up_shexp.weight"), fs, d)?,
                down: ld.required(&name("ffn_down_shexp.weight"), d, fs)?,
            }),
            None => None,
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
            ffn,
            shared_expert,
            post_ffn_norm: if config.post_norms {
                Some(ld.required(&name("post_ffw_norm.weight"), 1, d)?)
            } else {
                None
            },
            rope_factors,
        };
        if matches!(config.arch, Arch::Qwen2 | Arch::Qwen2Moe)
            && (weights.bq.is_none() || weights.bk.is_none() || weights.bv.is_none())
        {
            return Err(WeightError::Missing(name(
                "attn_q.bias / attn_k.bias / attn_v.bias",
            )));
        }
        Ok(weights)
    }
}

impl<'a> ExpertWeights<HostTensor<'a>> {
    /// Layer `il`'s router and experts in `source`, each expert a row view of the 3-D tensors.
    fn from_source<S: TensorSource + ?Sized>(
        ld: &Finder<'a, S>,
        moe: &MoeConfig,
        d: usize,
        il: usize,
    ) -> Result<Self, WeightError> {
        let (n, ff) = (moe.routing.n_expert, moe.n_ff_exp);
        let name = |what: &str| layer_tensor(il, what);
        let router = ld.required(&name("ffn_gate_inp.weight"), n, d)?;
        let split = |t: HostTensor<'a>, rows: usize| -> Result<Vec<HostTensor<'a>>, WeightError> {
            (0..n)
                .map(|e| Ok(t.row_range(e * rows..(e + 1) * rows)?))
                .collect()
        };
        Ok(ExpertWeights {
            router,
            gate: split(ld.required(&name("ffn_gate_exps.weight"), n * ff, d)?, ff)?,
            up: split(ld.required(&name("ffn_up_exps.weight"), n * ff, d)?, ff)?,
            down: split(ld.required(&name("ffn_down_exps.weight"), n * d, ff)?, d)?,
        })
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
    ];
    if config.moe.is_some() {
        what.extend(EXPERT_TENSORS);
    } else {
        what.extend(["ffn_up.weight", "ffn_down.weight"]);
    }
    if config.moe.is_some_and(|m| m.n_ff_shexp.is_some()) {
        what.extend(SHARED_EXPERT_TENSORS);
    }
    if config.qk_norm {
        what.extend(["attn_q_norm.weight", "attn_k_norm.weight"]);
    }
    if config.post_norms {
        what.extend(["post_attention_norm.weight", "post_ffw_norm.weight"]);
    }
    if !config.fused_gate_up && config.moe.is_none() {
        what.push("ffn_gate.weight");
    }
    let mut names: Vec<String> = what.iter().map(|w| layer_tensor(il, w)).collect();
    names.extend(config.rope_factors.map(|f| f.tensor_name().to_string()));
    names
}

/// The tensors of a mixture-of-experts layer's feed-forward block, by their name in the layer:
/// the router, then the experts (what `--cpu-moe` places on the host, as llama.cpp's
/// `ffn_(up|down|gate)_exps` override does).
pub const EXPERT_TENSORS: [&str; 4] = [
    "ffn_gate_inp.weight",
    "ffn_gate_exps.weight",
    "ffn_up_exps.weight",
    "ffn_down_exps.weight",
];

/// The tensors of a layer's shared expert (Qwen2-MoE), by their name in the layer: layer weights
/// that stay with their layer under `--cpu-moe`, as under llama.cpp's `exps=CPU` override.
pub const SHARED_EXPERT_TENSORS: [&str; 4] = [
    "ffn_gate_inp_shexp.weight",
    "ffn_gate_shexp.weight",
    "ffn_up_shexp.weight",
    "ffn_down_shexp.weight",
];

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
            ffn: self.ffn.try_map(&mut f)?,
            shared_expert: match &self.shared_expert {
                Some(x) => Some(x.try_map(&mut f)?),
                None => None,
            },
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
            self.post_ffn_norm.as_ref(),
            self.rope_factors.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(self.ffn.tensors())
        .chain(self.shared_expert.iter().flat_map(SharedExpert::tensors))
    }
}

impl<W> SharedExpert<W> {
    /// The same shared expert with every tensor passed through `f`.
    pub fn try_map<'s, V, E>(
        &'s self,
        f: &mut impl FnMut(&'s W) -> Result<V, E>,
    ) -> Result<SharedExpert<V>, E> {
        Ok(SharedExpert {
            gate_inp: f(&self.gate_inp)?,
            gate: f(&self.gate)?,
            up: f(&self.up)?,
            down: f(&self.down)?,
        })
    }

    /// Its four tensors.
    pub fn tensors(&self) -> impl Iterator<Item = &W> {
        [&self.gate_inp, &self.gate, &self.up, &self.down].into_iter()
    }
}

impl<W> FeedForward<W> {
    /// The same block with every tensor passed through `f`.
    pub fn try_map<'s, V, E>(
        &'s self,
        f: &mut impl FnMut(&'s W) -> Result<V, E>,
    ) -> Result<FeedForward<V>, E> {
        Ok(match self {
            FeedForward::Dense { gate, up, down } => FeedForward::Dense {
                gate: f(gate)?,
                up: f(up)?,
                down: f(down)?,
            },
            FeedForward::Experts(x) => FeedForward::Experts(x.try_map(f)?),
            FeedForward::Elsewhere => FeedForward::Elsewhere,
        })
    }

    /// Every tensor of the block.
    pub fn tensors(&self) -> Box<dyn Iterator<Item = &W> + '_> {
        match self {
            FeedForward::Dense { gate, up, down } => Box::new([gate, up, down].into_iter()),
            FeedForward::Experts(x) => Box::new(
                std::iter::once(&x.router)
                    .chain(&x.gate)
                    .chain(&x.up)
                    .chain(&x.down),
            ),
            FeedForward::Elsewhere => Box::new(std::iter::empty()),
        }
    }
}

impl<W> ExpertWeights<W> {
    /// The same experts with every tensor passed through `f`.
    pub fn try_map<'s, V, E>(
        &'s self,
        f: &mut impl FnMut(&'s W) -> Result<V, E>,
    ) -> Result<ExpertWeights<V>, E> {
        Ok(ExpertWeights {
            router: f(&self.router)?,
            gate: self.gate.iter().map(&mut *f).collect::<Result<_, E>>()?,
            up: self.up.iter().map(&mut *f).collect::<Result<_, E>>()?,
            down: self.down.iter().map(&mut *f).collect::<Result<_, E>>()?,
        })
    }

    /// Every tensor: the router, then each expert's gate, up and down.
    pub fn tensors(&self) -> impl Iterator<Item = &W> {
        std::iter::once(&self.router)
            .chain(&self.gate)
            .chain(&self.up)
            .chain(&self.down)
    }
}

impl<'a> HeadWeights<HostTensor<'a>> {
    /// The output head's tensors in `source` (the token embedding when the model ties them).
    pub fn from_source<S: TensorSource + ?Sized>(
        source: &'a S,
        config: &ModelConfig,
    ) -> Result<Self, WeightError> {
        let ld = Finder { source };
        let output_norm = ld.required(OUTPUT_NORM, 1, config.n_embd)?;
        let output = match ld.optional(OUTPUT, config.n_vocab, config.n_embd)? {
            Some(w) => w,
            None => ld.required(TOKEN_EMBD, config.n_vocab, config.n_embd)?,
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
