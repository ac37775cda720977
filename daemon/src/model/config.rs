//! The hyperparameters a forward pass needs, per architecture, resolved once at load from the
//! model's metadata. Everything architecture-specific that is not a weight lives here, so the
//! forward pass reads as one sequence of steps with a few flags.

use llmd_kernels::backend::{GatedActivation, RopeMode, RopeParams};
use thiserror::Error;

/// Errors resolving a model's configuration.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// The architecture is not one llmd implements.
    #[error("unsupported architecture {0:?} (llmd supports llama, qwen2, qwen3, gemma3)")]
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
    /// Llama 2/3, Mistral, TinyLlama, SmolLM.
    Llama,
    /// Qwen 2 / 2.5 (biases on q, k, v).
    Qwen2,
    /// Qwen 3 (RMS norm on q and k).
    Qwen3,
    /// Gemma 3 (sliding-window and global layers, q/k norm, GeGLU, post norms, scaled embeddings).
    Gemma3,
}

impl Arch {
    /// The architecture named by `general.architecture`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            "gemma3" => Ok(Arch::Gemma3),
            other => Err(ConfigError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// The name as GGUF spells it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

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
    /// Linear rope scaling factor (`{arch}.rope.scaling.factor` when the type is linear), else 1.
    pub rope_freq_scale: f32,
    /// `{arch}.attention.sliding_window`, if any.
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (from the file's pattern or the architecture's).
    pub swa_layers: Vec<bool>,
    /// `{arch}.context_length`.
    pub context_length: usize,
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
    /// Rope of each layer (Gemma 3's sliding-window layers use another base).
    pub rope: Vec<RopeParams>,
    /// Sliding window of each layer (`None`: global attention).
    pub window: Vec<Option<usize>>,
    /// Multiplier of the token embeddings (Gemma: `sqrt(n_embd)`).
    pub embed_scale: Option<f32>,
    /// Multiplier applied to queries before attention (`None`: `1/sqrt(head_dim)` in the softmax).
    pub query_scale: Option<f32>,
    /// RMS norm on each query and key head.
    pub qk_norm: bool,
    /// Norms after the attention and feed-forward blocks (Gemma).
    pub post_norms: bool,
    /// The gated feed-forward activation.
    pub activation: GatedActivation,
    /// The context length the model was trained with.
    pub context_length: usize,
}

/// Gemma 3's rope base for sliding-window layers when the file does not set one (llama.cpp's
/// default as well).
const GEMMA3_SWA_ROPE_BASE: f32 = 10_000.0;

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
        let rope_mode = match arch {
            Arch::Llama => RopeMode::Normal,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeMode::Neox,
        };
        let global_rope = RopeParams {
            freq_scale: hp.rope_freq_scale,
            ..RopeParams::new(rope_mode, hp.rope_dims, hp.rope_freq_base)
        };
        let (rope, window) = match arch {
            Arch::Gemma3 => {
                let swa = hp.sliding_window.ok_or_else(|| {
                    invalid(
                        "attention.sliding_window",
                        "gemma3 needs a sliding window".into(),
                    )
                })?;
                if hp.swa_layers.len() != hp.n_layer {
                    return Err(invalid(
                        "attention.sliding_window_pattern",
                        "one entry per layer needed".into(),
                    ));
                }
                let local_base = hp.rope_freq_base_swa.unwrap_or(GEMMA3_SWA_ROPE_BASE);
                (0..hp.n_layer)
                    .map(|il| {
                        if hp.swa_layers[il] {
                            let local = RopeParams {
                                freq_base: local_base,
                                freq_scale: 1.0,
                                ..global_rope
                            };
                            (local, Some(swa))
                        } else {
                            (global_rope, None)
                        }
                    })
                    .unzip()
            }
            _ => (vec![global_rope; hp.n_layer], vec![None; hp.n_layer]),
        };
        let gemma = arch == Arch::Gemma3;
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
            window,
            embed_scale: gemma.then(|| (hp.n_embd as f32).sqrt()),
            query_scale: gemma.then(|| 1.0 / (hp.head_dim as f32).sqrt()),
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            post_norms: gemma,
            activation: if gemma {
                GatedActivation::Gelu
            } else {
                GatedActivation::Silu
            },
            context_length: hp.context_length,
        })
    }

    /// Width of the query projection (`n_head * head_dim`).
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the key and value projections (`n_head_kv * head_dim`).
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// The largest feed-forward width.
    pub fn max_ff(&self) -> usize {
        self.n_ff.iter().copied().max().unwrap_or(0)
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
            rope_freq_scale: 1.0,
            sliding_window: Some(512),
            swa_layers: (0..18).map(|il| (il + 1) % 6 != 0).collect(),
            context_length: 32_768,
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
