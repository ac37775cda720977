//! The hyperparameters a forward pass needs, per architecture, resolved once at load from the
//! model's metadata. Everything architecture-specific that is not a weight lives here, so the
//! forward pass reads as one sequence of steps with a few flags.
//!
//! Rope scaling follows llama.cpp (`llama_model_base::load_hparams`, `llama_context`'s cparams):
//! `rope.scaling.type` (missing: "linear"), `rope.scaling.factor` (or the older
//! `rope.scale_linear`) as `freq_scale = 1 / factor`, `none` never scales, `yarn` sets
//! `ext_factor = 1` and the attention factor `(0.1 ln s + 1) / (1 + 0.1 ln s)` (which the rope
//! op's own YaRN magnitude then multiplies back), times `rope.scaling.attn_factor`; YaRN corrects
//! for `rope.scaling.original_context_length` (default: the training context) with llama.cpp's
//! `beta_fast = 32`, `beta_slow = 1` (the architectures here read no YaRN beta keys). Frequency
//! factors come from `rope_freqs.weight` (Llama 3.1+) or, for Phi-3 and `longrope` files, from
//! `rope_factors_long` / `rope_factors_short`, chosen by the context a model is loaded with.

use llmd_kernels::backend::{GatedActivation, RopeMode, RopeParams};
use llmd_kernels::moe::Routing;
use thiserror::Error;

/// Errors resolving a model's configuration.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// The architecture is not one llmd implements.
    #[error(
        "unsupported architecture {0:?} (llmd supports llama, qwen2, qwen2moe, qwen3, qwen3moe, \
     gemma2, gemma3, phi3)"
    )]
    UnsupportedArchitecture(String),
    /// A hyperparameter is missing or out of range.
    #[error("invalid model hyperparameter {key}: {reason}")]
    Invalid {
        /// The metadata key or derived quantity.
        key: String,
        /// Why it is rejected.
        reason: String,
    },
}

/// The transformer families llmd runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3/3.1+, Mistral, TinyLlama, SmolLM.
    Llama,
    /// Qwen 2 / 2.5 (biases on q, k, v).
    Qwen2,
    /// Qwen 3 (RMS norm on q and k).
    Qwen3,
    /// Qwen 3 mixture of experts (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen 3's attention, routed
    /// experts in every layer.
    Qwen3Moe,
    /// Qwen 2 mixture of experts (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen 2's attention (q/k/v
    /// biases), routed experts whose weights are not renormalised, and a sigmoid-gated shared
    /// expert in every layer.
    Qwen2Moe,
    /// Gemma 2 (alternating sliding-window layers, post norms, GeGLU, soft-capped attention
    /// and final logits, scaled embeddings).
    Gemma2,
    /// Gemma 3 (sliding-window and global layers, q/k norm, GeGLU, post norms, scaled embeddings).
    Gemma3,
    /// Phi-3 / 3.5 / Phi-4 (fused q/k/v and gate/up projections, long/short rope factors).
    Phi3,
}

impl Arch {
    /// The architecture named by `general.architecture`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            "qwen3moe" => Ok(Arch::Qwen3Moe),
            "qwen2moe" => Ok(Arch::Qwen2Moe),
            "gemma2" => Ok(Arch::Gemma2),
            "gemma3" => Ok(Arch::Gemma3),
            "phi3" => Ok(Arch::Phi3),
            other => Err(ConfigError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// The name as GGUF spells it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    /// How its rope pairs dimensions (llama.cpp's `llama_model_rope_type`).
    fn rope_mode(self) -> RopeMode {
        match self {
            Arch::Llama => RopeMode::Normal,
            Arch::Qwen2
            | Arch::Qwen3
            | Arch::Qwen3Moe
            | Arch::Qwen2Moe
            | Arch::Gemma2
            | Arch::Gemma3
            | Arch::Phi3 => RopeMode::Neox,
        }
    }

    /// The sliding-window layer period llama.cpp assumes when the file states no pattern
    /// (`load_swa_pattern`), for the architectures that use sliding windows. Phi-3 files may
    /// state a window, but llama.cpp disables it for them, and so does llmd.
    pub fn swa_period(self) -> Option<u32> {
        match self {
            Arch::Gemma2 => Some(2),
            Arch::Gemma3 => Some(6),
            Arch::Llama
            | Arch::Qwen2
            | Arch::Qwen3
            | Arch::Qwen3Moe
            | Arch::Qwen2Moe
            | Arch::Phi3 => None,
        }
    }

    /// The number of layers of the 27B size, whose query scale llama.cpp (after gemma_pytorch)
    /// takes from `n_embd / n_head` instead of the head size.
    fn gemma_27b_layers(self) -> Option<usize> {
        match self {
            Arch::Gemma2 => Some(46),
            Arch::Gemma3 => Some(62),
            _ => None,
        }
    }
}

/// How a model scales its rotary embeddings (`{arch}.rope.scaling.type`), the types llama.cpp
/// knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeScalingType {
    /// `none`: never scaled, whatever the factor.
    None,
    /// `linear` (also what a missing key means): positions divided by the factor.
    Linear,
    /// `yarn`: YaRN's ramp between interpolation and extrapolation and its magnitude factor.
    Yarn,
    /// `longrope`: per-dimension long/short factors (Phi-3 style) on a llama model.
    LongRope,
}

impl RopeScalingType {
    /// The type named by `rope.scaling.type`; `None`: the key is absent, which llama.cpp reads as
    /// "linear". A name llama.cpp does not know is refused naming the key and the value.
    pub fn from_name(name: Option<&str>) -> Result<Self, ConfigError> {
        match name {
            None | Some("linear") => Ok(Self::Linear),
            Some("none") => Ok(Self::None),
            Some("yarn") => Ok(Self::Yarn),
            Some("longrope") => Ok(Self::LongRope),
            Some(other) => Err(ConfigError::Invalid {
                key: "rope.scaling.type".into(),
                reason: format!(
                    "{other:?} is not a rope scaling type llama.cpp or llmd knows \
                     (none, linear, yarn, longrope)"
                ),
            }),
        }
    }
}

/// Rope scaling as the file states it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeScaling {
    /// `rope.scaling.type`.
    pub kind: RopeScalingType,
    /// `rope.scaling.factor` (or `rope.scale_linear`); 0 when absent (no scaling).
    pub factor: f32,
    /// `rope.scaling.original_context_length`, else the training context: what YaRN corrects for
    /// and what Phi-3's long factors start beyond.
    pub original_context: usize,
    /// `rope.scaling.attn_factor` (1 when absent): multiplies cos/sin (Phi-3 long-context models).
    pub attn_factor: f32,
}

/// Which per-dimension rope frequency factor tensors the file has (llama.cpp loads them as
/// optional tensors of `n_rot / 2` values, one copy shared by every layer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RopeFactorTensors {
    /// `rope_freqs.weight` (Llama 3.1 and later).
    pub freqs: bool,
    /// `rope_factors_long.weight` (Phi-3 long context, `longrope` llama files).
    pub long: bool,
    /// `rope_factors_short.weight`.
    pub short: bool,
}

/// The frequency factors a model's rope divides its angles by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeFactors {
    /// `rope_freqs.weight`.
    Freqs,
    /// `rope_factors_long.weight` when `long` (the context the model runs with exceeds the
    /// original context, as llama.cpp's `get_rope_factors` decides), else
    /// `rope_factors_short.weight`.
    LongShort {
        /// Whether the long factors are in use.
        long: bool,
    },
}

impl RopeFactors {
    /// The tensor holding the factors in use.
    pub fn tensor_name(self) -> &'static str {
        match self {
            RopeFactors::Freqs => ROPE_FREQS,
            RopeFactors::LongShort { long: true } => ROPE_FACTORS_LONG,
            RopeFactors::LongShort { long: false } => ROPE_FACTORS_SHORT,
        }
    }
}

/// Llama 3.1's per-dimension frequency factors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";
/// Phi-3's factors for contexts beyond the original one.
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
/// Phi-3's factors within the original context.
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";

/// The raw hyperparameters as read from GGUF metadata, before per-architecture rules apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Hyperparameters {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// `{arch}.embedding_length`.
    pub n_embd: usize,
    /// `{arch}.feed_forward_length`, per layer.
    pub n_ff: Vec<usize>,
    /// `{arch}.attention.head_count`.
    pub n_head: usize,
    /// `{arch}.attention.head_count_kv`.
    pub n_head_kv: usize,
    /// `{arch}.attention.key_length` (default `n_embd / n_head`).
    pub head_dim: usize,
    /// `{arch}.attention.value_length` (default `head_dim`).
    pub head_dim_v: usize,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
    /// `{arch}.attention.layer_norm_rms_epsilon`.
    pub norm_eps: f32,
    /// `{arch}.rope.freq_base` (default 10000).
    pub rope_freq_base: f32,
    /// `{arch}.rope.freq_base_swa`: base of sliding-window layers, if the file sets one.
    pub rope_freq_base_swa: Option<f32>,
    /// `{arch}.rope.dimension_count` (default `head_dim`).
    pub rope_dims: usize,
    /// `{arch}.rope.scaling.*`.
    pub rope_scaling: RopeScaling,
    /// The rope frequency factor tensors present in the file.
    pub rope_factor_tensors: RopeFactorTensors,
    /// `{arch}.attention.sliding_window`, if any.
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (from the file's pattern or the architecture's).
    pub swa_layers: Vec<bool>,
    /// `{arch}.attn_logit_softcapping`, if present.
    pub attn_softcap: Option<f32>,
    /// `{arch}.final_logit_softcapping`, if present.
    pub final_softcap: Option<f32>,
    /// `{arch}.context_length`.
    pub context_length: usize,
    /// `{arch}.expert_count` (0: a dense model).
    pub n_expert: usize,
    /// `{arch}.expert_used_count`.
    pub n_expert_used: usize,
    /// `{arch}.expert_feed_forward_length`, if the file states it.
    pub n_ff_exp: Option<usize>,
    /// `{arch}.expert_shared_feed_forward_length`, if the file states it.
    pub n_ff_shexp: Option<usize>,
}

/// A mixture-of-experts feed-forward block, as every layer of the model has it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeConfig {
    /// Experts per layer, used per token, and how their weights are computed.
    pub routing: Routing,
    /// Feed-forward width of each expert.
    pub n_ff_exp: usize,
    /// Feed-forward width of the shared expert every token goes through beside its routed ones
    /// (Qwen2-MoE); `None`: no shared expert.
    pub n_ff_shexp: Option<usize>,
}

/// Everything the forward pass needs to know about a model, resolved for its architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Arch,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Feed-forward width per layer.
    pub n_ff: Vec<usize>,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Dimension of each query/key head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// RMS norm epsilon.
    pub norm_eps: f32,
    /// Rope of each layer (Gemma's sliding-window layers use another base and scale).
    pub rope: Vec<RopeParams>,
    /// The frequency factors every layer's rope uses, if any.
    pub rope_factors: Option<RopeFactors>,
    /// The original (pre-scaling) context: beyond it Phi-3 uses its long rope factors.
    pub rope_original_context: usize,
    /// Sliding window of each layer (`None`: global attention).
    pub window: Vec<Option<usize>>,
    /// Multiplier of the token embeddings (Gemma: `sqrt(n_embd)`).
    pub embed_scale: Option<f32>,
    /// Multiplier applied to queries before attention (`None`: `1/sqrt(head_dim)` in the softmax).
    pub query_scale: Option<f32>,
    /// Tanh soft-capping of attention logits (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Tanh soft-capping of the output logits (Gemma 2, Gemma 3 files that set it).
    pub final_softcap: Option<f32>,
    /// RMS norm on each query and key head.
    pub qk_norm: bool,
    /// Norms after the attention and feed-forward blocks (Gemma).
    pub post_norms: bool,
    /// The gate and up projections are one tensor, `ffn_up` of `2 * n_ff` rows, gate first
    /// (Phi-3).
    pub fused_gate_up: bool,
    /// The gated feed-forward activation.
    pub activation: GatedActivation,
    /// The context length the model was trained with.
    pub context_length: usize,
    /// Routed experts instead of a dense feed-forward block in every layer (Mixtral,
    /// Qwen3-MoE); `None`: a dense model.
    pub moe: Option<MoeConfig>,
}

/// Gemma's rope base for sliding-window layers when the file does not set one (llama.cpp's
/// default as well).
const GEMMA_SWA_ROPE_BASE: f32 = 10_000.0;
/// Gemma 2's sliding window when the file does not state one (llama.cpp's default).
const GEMMA2_DEFAULT_WINDOW: usize = 4096;
/// Gemma 2's attention logit soft-cap when the file does not state one (llama.cpp's default).
const GEMMA2_DEFAULT_ATTN_SOFTCAP: f32 = 50.0;
/// Gemma 2's final logit soft-cap when the file does not state one (llama.cpp's default).
const GEMMA2_DEFAULT_FINAL_SOFTCAP: f32 = 30.0;
/// llama.cpp's YaRN `beta_fast` (no architecture llmd runs reads another from the file).
const YARN_BETA_FAST: f32 = 32.0;
/// llama.cpp's YaRN `beta_slow`.
const YARN_BETA_SLOW: f32 = 1.0;

/// llama.cpp's YaRN magnitude for a scale `s` (`get_mscale` with `mscale = 1`).
fn yarn_mscale(s: f32) -> f32 {
    if s <= 1.0 {
        1.0
    } else {
        0.1 * s.ln() + 1.0
    }
}

impl ModelConfig {
    /// Applies the architecture's rules to raw hyperparameters and checks them.
    pub fn resolve(hp: &Hyperparameters) -> Result<Self, ConfigError> {
        let arch = Arch::from_name(&hp.arch)?;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_string(),
            reason,
        };
        if hp.n_layer == 0 {
            return Err(invalid("block_count", "must be at least 1".into()));
        }
        if hp.n_head == 0 || hp.n_head_kv == 0 || !hp.n_head.is_multiple_of(hp.n_head_kv) {
            return Err(invalid(
                "attention.head_count_kv",
                format!(
                    "{} query heads cannot be grouped over {} kv heads",
                    hp.n_head, hp.n_head_kv
                ),
            ));
        }
        if hp.head_dim == 0 || !hp.head_dim.is_multiple_of(2) || hp.head_dim_v != hp.head_dim {
            return Err(invalid(
                "attention.key_length",
                format!(
                    "head dims {}/{} (must be even and equal)",
                    hp.head_dim, hp.head_dim_v
                ),
            ));
        }
        if hp.rope_dims == 0 || hp.rope_dims > hp.head_dim || !hp.rope_dims.is_multiple_of(2) {
            return Err(invalid(
                "rope.dimension_count",
                format!("{} for head dim {}", hp.rope_dims, hp.head_dim),
            ));
        }
        if arch == Arch::Llama && hp.rope_dims != hp.head_dim {
            // llama.cpp refuses such a llama file too ("invalid n_rot").
            return Err(invalid(
                "rope.dimension_count",
                format!(
                    "{} must equal the head dim {} for llama models",
                    hp.rope_dims, hp.head_dim
                ),
            ));
        }
        if hp.n_ff.len() != hp.n_layer || hp.n_ff.contains(&0) {
            return Err(invalid("feed_forward_length", format!("{:?}", hp.n_ff)));
        }
        if !(hp.norm_eps > 0.0 && hp.norm_eps < 1.0) {
            return Err(invalid(
                "attention.layer_norm_rms_epsilon",
                format!("{}", hp.norm_eps),
            ));
        }
        if !(hp.rope_freq_base.is_finite() && hp.rope_freq_base > 0.0) {
            return Err(invalid("rope.freq_base", format!("{}", hp.rope_freq_base)));
        }
        let rope_factors = Self::rope_factors(arch, hp)?;
        let (global_rope, swa_scale) = Self::global_rope(arch, hp)?;

        let swa_window = match arch {
            Arch::Gemma2 => Some(hp.sliding_window.unwrap_or(GEMMA2_DEFAULT_WINDOW)),
            // Gemma 3 without a window (or a zero one) attends globally everywhere, as in
            // llama.cpp.
            Arch::Gemma3 => hp.sliding_window.filter(|&w| w > 0),
            _ => None,
        };
        let (rope, window) = match swa_window {
            Some(swa) => {
                if swa == 0 {
                    return Err(invalid(
                        "attention.sliding_window",
                        "must be nonzero".into(),
                    ));
                }
                if hp.swa_layers.len() != hp.n_layer {
                    return Err(invalid(
                        "attention.sliding_window_pattern",
                        "one entry per layer needed".into(),
                    ));
                }
                let local_base = match arch {
                    // Gemma 2's sliding-window layers share the global base unless the file
                    // sets one; Gemma 3's default to 10000.
                    Arch::Gemma2 => hp.rope_freq_base_swa.unwrap_or(hp.rope_freq_base),
                    _ => hp.rope_freq_base_swa.unwrap_or(GEMMA_SWA_ROPE_BASE),
                };
                if !(local_base.is_finite() && local_base > 0.0) {
                    return Err(invalid("rope.freq_base_swa", format!("{local_base}")));
                }
                (0..hp.n_layer)
                    .map(|il| {
                        if hp.swa_layers[il] {
                            let local = RopeParams {
                                freq_base: local_base,
                                freq_scale: swa_scale,
                                ..global_rope
                            };
                            (local, Some(swa))
                        } else {
                            (global_rope, None)
                        }
                    })
                    .unzip()
            }
            None => (vec![global_rope; hp.n_layer], vec![None; hp.n_layer]),
        };

        let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        let query_scale = match arch {
            Arch::Gemma2 | Arch::Gemma3 => {
                let per = if arch.gemma_27b_layers() == Some(hp.n_layer) {
                    hp.n_embd / hp.n_head
                } else {
                    hp.head_dim
                };
                Some(1.0 / (per as f32).sqrt())
            }
            // Phi-3 scales the queries itself and attends with a scale of 1.
            Arch::Phi3 => Some(1.0 / (hp.head_dim as f32).sqrt()),
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Qwen2Moe => None,
        };
        let positive = |key: &str, v: Option<f32>| match v {
            Some(cap) if !(cap.is_finite() && cap > 0.0) => {
                Err(invalid(key, format!("{cap} (a soft-cap must be positive)")))
            }
            _ => Ok(v),
        };
        let (attn_softcap, final_softcap) = match arch {
            Arch::Gemma2 => (
                positive(
                    "attn_logit_softcapping",
                    Some(hp.attn_softcap.unwrap_or(GEMMA2_DEFAULT_ATTN_SOFTCAP)),
                )?,
                positive(
                    "final_logit_softcapping",
                    Some(hp.final_softcap.unwrap_or(GEMMA2_DEFAULT_FINAL_SOFTCAP)),
                )?,
            ),
            // Gemma 3 caps its final logits only when the file asks (0 means off).
            Arch::Gemma3 => (
                None,
                positive(
                    "final_logit_softcapping",
                    hp.final_softcap.filter(|&c| c != 0.0),
                )?,
            ),
            _ => (None, None),
        };
        let moe = Self::moe(arch, hp)?;
        Ok(ModelConfig {
            arch,
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
            n_ff: hp.n_ff.clone(),
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            n_vocab: hp.n_vocab,
            norm_eps: hp.norm_eps,
            rope,
            rope_factors,
            rope_original_context: hp.rope_scaling.original_context,
            window,
            embed_scale: gemma.then(|| (hp.n_embd as f32).sqrt()),
            query_scale,
            attn_softcap,
            final_softcap,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3),
            post_norms: gemma,
            fused_gate_up: arch == Arch::Phi3,
            activation: if gemma {
                GatedActivation::Gelu
            } else {
                GatedActivation::Silu
            },
            context_length: hp.context_length,
            moe,
        })
    }

    /// The experts of a mixture-of-experts model, as llama.cpp reads them: Qwen3-MoE and
    /// Qwen2-MoE must have experts (each `expert_feed_forward_length` wide, else
    /// `feed_forward_length / used`); a llama file with `expert_count` is Mixtral-style (experts
    /// `feed_forward_length` wide). Both normalise the chosen experts' weights; Qwen2-MoE does
    /// not (llama.cpp's `norm_w = false`), and adds a shared expert
    /// `expert_shared_feed_forward_length` wide (else `feed_forward_length`). Other
    /// architectures with experts are refused.
    fn moe(arch: Arch, hp: &Hyperparameters) -> Result<Option<MoeConfig>, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_string(),
            reason,
        };
        let n_ff = hp.n_ff.first().copied().unwrap_or(0);
        let n_ff_exp = match arch {
            Arch::Qwen3Moe | Arch::Qwen2Moe if hp.n_expert == 0 || hp.n_expert_used == 0 => {
                return Err(invalid(
                    "expert_count",
                    format!(
                        "{} needs experts ({} experts, {} used)",
                        arch.name(),
                        hp.n_expert,
                        hp.n_expert_used
                    ),
                ))
            }
            Arch::Qwen3Moe | Arch::Qwen2Moe => hp
                .n_ff_exp
                .filter(|&f| f > 0)
                .unwrap_or(n_ff / hp.n_expert_used),
            _ if hp.n_expert == 0 => return Ok(None),
            Arch::Llama => n_ff,
            other => {
                return Err(invalid(
                    "expert_count",
                    format!(
                        "mixture-of-experts {} models are not supported (llmd runs qwen3moe, \
                         qwen2moe and llama files with experts)",
                        other.name()
                    ),
                ))
            }
        };
        let routing = Routing {
            n_expert: hp.n_expert,
            n_used: hp.n_expert_used,
            normalize: arch != Arch::Qwen2Moe,
        };
        routing
            .check()
            .map_err(|e| invalid("expert_used_count", e.to_string()))?;
        if n_ff_exp == 0 {
            return Err(invalid(
                "expert_feed_forward_length",
                "experts of width 0".into(),
            ));
        }
        let n_ff_shexp = match arch {
            Arch::Qwen2Moe => match hp.n_ff_shexp.filter(|&f| f > 0).unwrap_or(n_ff) {
                0 => {
                    return Err(invalid(
                        "expert_shared_feed_forward_length",
                        "a shared expert of width 0".into(),
                    ))
                }
                f => Some(f),
            },
            _ => None,
        };
        Ok(Some(MoeConfig {
            routing,
            n_ff_exp,
            n_ff_shexp,
        }))
    }

    /// The rope of global layers as llama.cpp's context computes it (frequency scale, YaRN
    /// extrapolation and attention factor, original context), and the frequency scale of
    /// Gemma's sliding-window layers.
    fn global_rope(arch: Arch, hp: &Hyperparameters) -> Result<(RopeParams, f32), ConfigError> {
        let s = &hp.rope_scaling;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_string(),
            reason,
        };
        if !(s.factor.is_finite() && s.factor >= 0.0) {
            return Err(invalid("rope.scaling.factor", format!("{}", s.factor)));
        }
        if !(s.attn_factor.is_finite() && s.attn_factor > 0.0) {
            return Err(invalid(
                "rope.scaling.attn_factor",
                format!("{}", s.attn_factor),
            ));
        }
        if s.original_context == 0 {
            return Err(invalid(
                "rope.scaling.original_context_length",
                "must be nonzero".into(),
            ));
        }
        // hparams.rope_freq_scale_train, then the context's: `none` never scales.
        let freq_scale_train = if s.factor == 0.0 { 1.0 } else { 1.0 / s.factor };
        let freq_scale = if s.kind == RopeScalingType::None {
            1.0
        } else {
            freq_scale_train
        };
        let ext_factor = if s.kind == RopeScalingType::Yarn {
            1.0
        } else {
            0.0
        };
        let mut attn_factor = 1.0f32;
        if ext_factor != 0.0 {
            // The YaRN magnitude, cancelled by the one the rope op applies itself with
            // ext_factor != 0 (llama.cpp PR 17945): what is left is (mostly) 1.
            let factor = 1.0 / freq_scale;
            attn_factor = yarn_mscale(factor);
            attn_factor *= 1.0 / (1.0 + 0.1 * factor.ln());
        }
        attn_factor *= s.attn_factor;
        let rope = RopeParams {
            freq_scale,
            ext_factor,
            attn_factor,
            beta_fast: YARN_BETA_FAST,
            beta_slow: YARN_BETA_SLOW,
            n_ctx_orig: s.original_context,
            ..RopeParams::new(arch.rope_mode(), hp.rope_dims, hp.rope_freq_base)
        };
        // Gemma 2's sliding-window layers keep the file's scale (rope_freq_scale_train_swa =
        // rope_freq_scale_train); Gemma 3's are never scaled.
        let swa_scale = match arch {
            Arch::Gemma2 => freq_scale_train,
            _ => 1.0,
        };
        Ok((rope, swa_scale))
    }

    /// The frequency factors the architecture takes from the file's tensors, as llama.cpp
    /// loads them: `rope_freqs` on llama (long/short with `longrope` scaling), long/short on
    /// Phi-3, none elsewhere (llama.cpp refuses a file with tensors it does not use).
    fn rope_factors(arch: Arch, hp: &Hyperparameters) -> Result<Option<RopeFactors>, ConfigError> {
        let t = hp.rope_factor_tensors;
        let long_short = || match (t.long, t.short) {
            (true, true) => Ok(Some(RopeFactors::LongShort { long: false })),
            (false, false) => Ok(None),
            (long, _) => Err(ConfigError::Invalid {
                key: if long {
                    ROPE_FACTORS_SHORT
                } else {
                    ROPE_FACTORS_LONG
                }
                .into(),
                reason: "missing: long and short rope factors come in pairs".into(),
            }),
        };
        let unused = |name: &str, why: &str| ConfigError::Invalid {
            key: name.into(),
            reason: format!(
                "{} models {why}; llama.cpp refuses a file with this tensor",
                arch.name()
            ),
        };
        let longrope = hp.rope_scaling.kind == RopeScalingType::LongRope;
        match arch {
            Arch::Llama if longrope => {
                if t.freqs {
                    return Err(unused(
                        ROPE_FREQS,
                        "with longrope scaling use long/short factors",
                    ));
                }
                long_short()
            }
            Arch::Llama => {
                if t.long || t.short {
                    return Err(unused(
                        ROPE_FACTORS_LONG,
                        "use long/short rope factors only with rope.scaling.type longrope",
                    ));
                }
                Ok(t.freqs.then_some(RopeFactors::Freqs))
            }
            Arch::Phi3 => {
                if t.freqs {
                    return Err(unused(
                        ROPE_FREQS,
                        "use long/short rope factors, not rope_freqs",
                    ));
                }
                long_short()
            }
            Arch::Qwen2
            | Arch::Qwen3
            | Arch::Qwen3Moe
            | Arch::Qwen2Moe
            | Arch::Gemma2
            | Arch::Gemma3 => {
                match [
                    (t.freqs, ROPE_FREQS),
                    (t.long, ROPE_FACTORS_LONG),
                    (t.short, ROPE_FACTORS_SHORT),
                ]
                .into_iter()
                .find(|(present, _)| *present)
                {
                    Some((_, name)) => Err(unused(name, "use no rope frequency factors")),
                    None => Ok(None),
                }
            }
        }
    }

    /// The configuration for running with a context of `n_ctx` positions per sequence: Phi-3's
    /// long rope factors apply beyond the original context (llama.cpp decides by the context
    /// per sequence, `n_ctx_seq`).
    pub fn with_context(&self, n_ctx: usize) -> ModelConfig {
        let mut c = self.clone();
        if let Some(RopeFactors::LongShort { long }) = &mut c.rope_factors {
            *long = n_ctx > c.rope_original_context;
        }
        c
    }

    /// Width of the query projection (`n_head * head_dim`).
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the key and value projections (`n_head_kv * head_dim`).
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// The largest feed-forward width (an expert's or the shared expert's, in a mixture of
    /// experts).
    pub fn max_ff(&self) -> usize {
        match &self.moe {
            Some(m) => m.n_ff_exp.max(m.n_ff_shexp.unwrap_or(0)),
            None => self.n_ff.iter().copied().max().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemma_270m() -> Hyperparameters {
        Hyperparameters {
            arch: "gemma3".into(),
            n_layer: 18,
            n_embd: 640,
            n_ff: vec![2048; 18],
            n_head: 4,
            n_head_kv: 1,
            head_dim: 256,
            head_dim_v: 256,
            n_vocab: 262_144,
            norm_eps: 1e-6,
            rope_freq_base: 1e6,
            rope_freq_base_swa: None,
            rope_dims: 256,
            rope_scaling: RopeScaling {
                kind: RopeScalingType::Linear,
                factor: 0.0,
                original_context: 32_768,
                attn_factor: 1.0,
            },
            rope_factor_tensors: RopeFactorTensors::default(),
            sliding_window: Some(512),
            swa_layers: (0..18).map(|il| (il + 1) % 6 != 0).collect(),
            attn_softcap: None,
            final_softcap: None,
            context_length: 32_768,
            n_expert: 0,
            n_expert_used: 0,
            n_ff_exp: None,
            n_ff_shexp: None,
        }
    }

    fn llama() -> Hyperparameters {
        Hyperparameters {
            arch: "llama".into(),
            n_layer: 2,
            n_embd: 256,
            n_ff: vec![512; 2],
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            head_dim_v: 64,
            rope_dims: 64,
            sliding_window: None,
            swa_layers: vec![false; 2],
            ..gemma_270m()
        }
    }

    #[test]
    fn gemma3_alternates_local_and_global_layers() {
        let c = ModelConfig::resolve(&gemma_270m()).expect("valid");
        let globals: Vec<usize> = (0..18).filter(|&il| c.window[il].is_none()).collect();
        assert_eq!(globals, vec![5, 11, 17]);
        assert_eq!(c.rope[0].freq_base, 10_000.0);
        assert_eq!(c.rope[5].freq_base, 1e6);
        assert_eq!(c.window[0], Some(512));
        assert_eq!(c.query_scale, Some(1.0 / 16.0));
        assert!(c.qk_norm && c.post_norms);
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
    }

    #[test]
    fn gemma3_without_a_window_is_global_everywhere() {
        let mut hp = gemma_270m();
        hp.sliding_window = None;
        let c = ModelConfig::resolve(&hp).expect("valid");
        assert!(c.window.iter().all(Option::is_none));
        assert!(c.rope.iter().all(|r| r.freq_base == 1e6));
    }

    #[test]
    fn gemma3_scales_global_layers_only_and_27b_queries_by_embd_over_heads() {
        let mut hp = gemma_270m();
        hp.rope_scaling.factor = 8.0;
        let c = ModelConfig::resolve(&hp).expect("valid");
        assert_eq!((c.rope[5].freq_scale, c.rope[0].freq_scale), (0.125, 1.0));
        // Gemma 3 27B: 62 layers, 5376 wide, 32 heads of 128.
        let mut hp = gemma_270m();
        (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv) = (62, 5376, 32, 16);
        (hp.head_dim, hp.head_dim_v, hp.rope_dims) = (128, 128, 128);
        hp.n_ff = vec![21504; 62];
        hp.swa_layers = (0..62).map(|il| (il + 1) % 6 != 0).collect();
        let c = ModelConfig::resolve(&hp).expect("valid");
        assert_eq!(c.query_scale, Some(1.0 / 168f32.sqrt()));
    }

    #[test]
    fn gemma2_alternates_windows_and_caps_logits() {
        let mut hp = gemma_270m();
        hp.arch = "gemma2".into();
        hp.sliding_window = None;
        hp.swa_layers = (0..18).map(|il| il % 2 == 0).collect();
        let c = ModelConfig::resolve(&hp).expect("valid");
        assert_eq!(c.window[0], Some(4096), "llama.cpp's default window");
        assert_eq!(c.window[1], None);
        assert_eq!(
            c.rope[0].freq_base, c.rope[1].freq_base,
            "one base for both"
        );
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert!(c.post_norms && !c.qk_norm && c.embed_scale.is_some());
        hp.final_softcap = Some(0.0);
        assert!(
            ModelConfig::resolve(&hp).is_err(),
            "a zero cap divides by zero"
        );
    }

    #[test]
    fn rope_scaling_as_llama_cpp_reads_it() {
        let mut hp = llama();
        hp.rope_scaling.factor = 4.0;
        let c = ModelConfig::resolve(&hp).expect("linear");
        assert_eq!((c.rope[0].freq_scale, c.rope[0].ext_factor), (0.25, 0.0));
        hp.rope_scaling.kind = RopeScalingType::None;
        let c = ModelConfig::resolve(&hp).expect("none");
        assert_eq!(c.rope[0].freq_scale, 1.0, "none never scales");
        hp.rope_scaling.kind = RopeScalingType::Yarn;
        hp.rope_scaling.original_context = 32;
        let c = ModelConfig::resolve(&hp).expect("yarn");
        let r = c.rope[0];
        assert_eq!((r.freq_scale, r.ext_factor, r.n_ctx_orig), (0.25, 1.0, 32));
        assert!((r.attn_factor - 1.0).abs() < 1e-6, "{}", r.attn_factor);
        assert_eq!((r.beta_fast, r.beta_slow), (32.0, 1.0));
        hp.rope_scaling.attn_factor = 0.5;
        let r = ModelConfig::resolve(&hp).expect("yarn").rope[0];
        assert!((r.attn_factor - 0.5).abs() < 1e-6);
        assert!(matches!(
            RopeScalingType::from_name(Some("dynamic")),
            Err(ConfigError::Invalid { key, reason }) if key == "rope.scaling.type" && reason.contains("dynamic")
        ));
    }

    #[test]
    fn rope_factors_by_architecture_and_context() {
        let mut hp = llama();
        hp.rope_factor_tensors.freqs = true;
        let c = ModelConfig::resolve(&hp).expect("llama 3.1");
        assert_eq!(c.rope_factors, Some(RopeFactors::Freqs));
        assert_eq!(
            c.with_context(1 << 20).rope_factors,
            Some(RopeFactors::Freqs)
        );
        hp.arch = "qwen2".into();
        assert!(
            ModelConfig::resolve(&hp).is_err(),
            "qwen2 does not use rope_freqs"
        );
        let mut hp = llama();
        hp.arch = "phi3".into();
        hp.rope_scaling.original_context = 4096;
        hp.rope_factor_tensors = RopeFactorTensors {
            freqs: false,
            long: true,
            short: true,
        };
        let c = ModelConfig::resolve(&hp).expect("phi3");
        let name = |n| c.with_context(n).rope_factors.map(RopeFactors::tensor_name);
        assert_eq!(name(4096), Some(ROPE_FACTORS_SHORT));
        assert_eq!(name(4097), Some(ROPE_FACTORS_LONG));
        hp.rope_factor_tensors.short = false;
        assert!(ModelConfig::resolve(&hp).is_err(), "long without short");
    }

    #[test]
    fn experts_as_llama_cpp_reads_them() {
        let mut hp = llama();
        hp.arch = "qwen3moe".into();
        assert!(
            ModelConfig::resolve(&hp).is_err(),
            "qwen3moe without experts is refused, as llama.cpp does"
        );
        (hp.n_expert, hp.n_expert_used) = (8, 2);
        let c = ModelConfig::resolve(&hp).expect("qwen3moe");
        let moe = c.moe.expect("experts");
        assert_eq!(
            moe.n_ff_exp, 256,
            "n_ff / used without expert_feed_forward_length"
        );
        assert!(moe.routing.normalize && c.qk_norm);
        hp.n_ff_exp = Some(64);
        assert_eq!(ModelConfig::resolve(&hp).expect("qwen3moe").max_ff(), 64);
        assert_eq!(moe.n_ff_shexp, None, "qwen3moe has no shared expert");
        // Qwen2-MoE: raw (not renormalised) weights, a shared expert of feed_forward_length
        // unless the file states its width, Qwen 2's attention (no q/k norm).
        hp.arch = "qwen2moe".into();
        let c = ModelConfig::resolve(&hp).expect("qwen2moe");
        let moe = c.moe.expect("experts");
        assert!(!moe.routing.normalize && !c.qk_norm);
        assert_eq!((moe.n_ff_exp, moe.n_ff_shexp), (64, Some(512)));
        assert_eq!(c.max_ff(), 512, "the shared expert is the widest block");
        hp.n_ff_shexp = Some(96);
        let moe = ModelConfig::resolve(&hp).expect("qwen2moe").moe;
        assert_eq!(moe.and_then(|m| m.n_ff_shexp), Some(96));
        (hp.n_expert, hp.n_expert_used) = (0, 0);
        assert!(
            ModelConfig::resolve(&hp).is_err(),
            "qwen2moe without experts is refused, as llama.cpp does"
        );
        // A llama file with experts is Mixtral: experts as wide as feed_forward_length.
        let mut hp = llama();
        (hp.n_expert, hp.n_expert_used) = (8, 2);
        let c = ModelConfig::resolve(&hp).expect("mixtral");
        assert_eq!(c.moe.map(|m| m.n_ff_exp), Some(512));
        hp.n_expert_used = 9;
        assert!(
            ModelConfig::resolve(&hp).is_err(),
            "more used than there are"
        );
        let mut hp = llama();
        hp.arch = "qwen2".into();
        (hp.n_expert, hp.n_expert_used) = (8, 2);
        assert!(matches!(
            ModelConfig::resolve(&hp),
            Err(ConfigError::Invalid { key, .. }) if key == "expert_count"
        ));
    }

    #[test]
    fn rejects_unknown_architecture_and_bad_heads() {
        let mut hp = gemma_270m();
        hp.arch = "mamba".into();
        assert_eq!(
            ModelConfig::resolve(&hp),
            Err(ConfigError::UnsupportedArchitecture("mamba".into()))
        );
        let mut hp = gemma_270m();
        hp.n_head_kv = 3;
        assert!(matches!(
            ModelConfig::resolve(&hp),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
