//! Synthetic models (what `llmd make-model` writes): a random-weight GGUF model of a real
//! architecture (llama, qwen2, qwen3, gemma2, gemma3, phi3) and shape, with every piece of
//! metadata llama.cpp needs to load it and a real tokenizer vocabulary ([`vocab`]); optionally
//! with rope scaling as converted models carry it ([`rope`]: Llama 3.1's `rope_freqs`, linear,
//! YaRN, Phi-3's long/short). Weights are seeded and deterministic, scaled like a trained
//! model's (matrices ~N(0, 0.02²), norms ≈ 1) so the forward pass gives finite, varied logits.
//!
//! Tensors are generated, quantized and written in row batches on all cores, so full-size
//! presets (8B, 70B) stream to disk without holding the model in memory;
//! [`ModelSpec::header_only`] writes just the header (all tensor infos), which looks like a
//! partial download.
//!
//! [`Fill::Tiled`] generates and quantizes only a small pool of rows per tensor
//! ([`TILE_POOL_ROWS`]) and writes every row as a copy of a pool row chosen by a hash of its
//! index, so full-size models for benchmarks are written at disk speed. The values have the same
//! distribution as the default fill (pool row `j` is exactly the default fill's row `j`).
//! [`write_model`] returns a [`ModelSummary`], including the bytes of weights a decode step
//! reads.
//!
//! Errors are [`SynthError`]s; option errors name the `make-model` flag of the field at fault,
//! since that is where a spec usually comes from.

pub mod rope;
pub mod vocab;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use llmd_quant::{quantize, GgmlType, QuantError};

use crate::{GgufError, GgufFile, GgufWriter, MetadataArray, MetadataValue, WriteError};
pub use rope::{RopeScalingArg, RopeScalingPlan};
use vocab::{Flavor, Vocab};
pub use vocab::{VocabError, VocabKind};

/// Why a synthetic model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The architecture has no model of the preset's size.
    #[error("{arch} has no {preset} preset")]
    NoPreset {
        /// The architecture's name.
        arch: &'static str,
        /// The preset's name.
        preset: &'static str,
    },
    /// An option is out of range or does not apply to the architecture (the message names the
    /// `make-model` flag).
    #[error("{0}")]
    Spec(String),
    /// The vocabulary could not be built.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// A tensor's rows are not whole blocks of its type, or its size overflows.
    #[error("{tensor}: {reason}")]
    Layout {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// Quantizing a tensor failed.
    #[error("quantizing {tensor} to {ty}: {source}")]
    Quantize {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Why.
        source: QuantError,
    },
    /// The header could not be laid out or the data not streamed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Creating, writing or flushing the output failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("cannot create", "writing", "flushing").
        what: &'static str,
        /// The output file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The written model does not read back.
    #[error("reading back the written model: {0}")]
    ReadBack(#[from] GgufError),
    /// A generating thread panicked.
    #[error("a worker thread generating {0} panicked")]
    WorkerPanicked(String),
}

/// `Err(SynthError::Spec(..))` with a formatted message.
macro_rules! spec_error {
    ($($arg:tt)*) => {
        return Err(SynthError::Spec(format!($($arg)*)))
    };
}

/// Elements generated per batch of a tensor (64 MiB of f32), bounding memory for any size.
const BATCH_ELEMS: usize = 16 << 20;
/// Standard deviation of weight matrices (what trained transformers roughly have).
const WEIGHT_STD: f32 = 0.02;
/// Standard deviation of the noise around 1 in norm weights, and of biases.
const NORM_STD: f32 = 0.02;
/// Distinct rows per tensor with `--fill tiled`.
pub const TILE_POOL_ROWS: u64 = 64;

/// How tensor rows are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Fill {
    /// Every row drawn and quantized on its own (slow for full-size models: CPU bound).
    #[default]
    Random,
    /// A pool of [`TILE_POOL_ROWS`] random rows per tensor, quantized once; every row is a copy
    /// of a pool row picked by a hash of its index (fast: disk bound).
    Tiled,
}

/// The architectures `make-model` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Arch {
    /// Llama 2/3: RMSNorm, SwiGLU, GQA.
    Llama,
    /// Qwen2/2.5: as llama plus q/k/v biases.
    Qwen2,
    /// Qwen3: as llama plus per-head q/k RMSNorm.
    Qwen3,
    /// Gemma 2: post-attention/FFN norms, alternating sliding-window layers, soft-capped
    /// attention and final logits, tied embeddings.
    Gemma2,
    /// Gemma 3: q/k norms, post-attention/FFN norms, sliding-window layers, tied embeddings.
    Gemma3,
    /// Phi-3 / Phi-4: fused q/k/v (`attn_qkv`) and gate+up (`ffn_up`) projections.
    Phi3,
    /// Qwen3-MoE: Qwen3's attention, routed experts (`ffn_*_exps`, router `ffn_gate_inp`) in
    /// every layer, each `expert_feed_forward_length` wide.
    #[cfg_attr(feature = "clap", value(name = "qwen3moe"))]
    Qwen3Moe,
    /// Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases), routed
    /// experts plus a shared expert (`ffn_*_shexp`, gated by `ffn_gate_inp_shexp`) in every
    /// layer.
    #[cfg_attr(feature = "clap", value(name = "qwen2moe"))]
    Qwen2Moe,
    /// Mixtral: a `llama` file with experts (`expert_count`), each `feed_forward_length` wide.
    Mixtral,
}

impl Arch {
    /// The `general.architecture` value.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Mixtral => "mixtral",
        }
    }

    /// The `general.architecture` value (Mixtral files are `llama` files with experts).
    pub const fn gguf_arch(self) -> &'static str {
        match self {
            Arch::Mixtral => "llama",
            other => other.name(),
        }
    }

    /// Whether every layer's feed-forward block is routed experts.
    pub const fn has_experts(self) -> bool {
        matches!(self, Arch::Qwen3Moe | Arch::Qwen2Moe | Arch::Mixtral)
    }

    /// Whether every layer also has a shared expert (`ffn_*_shexp`) beside the routed ones.
    pub const fn has_shared_expert(self) -> bool {
        matches!(self, Arch::Qwen2Moe)
    }

    /// Whether the output projection is the token embedding (no `output.weight`).
    const fn tied(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }
}

/// Shape presets. Each is the real shape of a released model of the architecture:
/// llama: Llama 3.2 1B / 3.1 8B / 3.1 70B / 3.1 405B, and Mistral Nemo 12B and Mistral Small
/// 24B (llama files with a head size other than `embd / heads`); qwen2: Qwen2.5 1.5B / 7B /
/// 72B; qwen3: Qwen3 1.7B / 8B / 32B (the largest dense Qwen3); gemma2: Gemma 2 2B / 9B / 27B;
/// gemma3: Gemma 3 1B / 12B / 27B; phi3: Phi-3.5-mini (3.8B) / Phi-4 (14B). `tiny` is a small
/// shape for tests. A preset the family has no model of is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Preset {
    /// A few layers of width 256, vocabulary 1024: for tests.
    Tiny,
    /// About 1B parameters.
    #[cfg_attr(feature = "clap", value(name = "1b"))]
    B1,
    /// About 8B parameters.
    #[cfg_attr(feature = "clap", value(name = "8b"))]
    B8,
    /// About 70B parameters (the largest dense model of the family).
    #[cfg_attr(feature = "clap", value(name = "70b"))]
    B70,
    /// Llama 3.1 405B.
    #[cfg_attr(feature = "clap", value(name = "405b"))]
    B405,
    /// Mistral Nemo 12B (llama).
    #[cfg_attr(feature = "clap", value(name = "nemo-12b"))]
    Nemo12B,
    /// Mistral Small 3 24B (llama).
    #[cfg_attr(feature = "clap", value(name = "mistral-small-24b"))]
    MistralSmall24B,
    /// Qwen3-30B-A3B (qwen3moe): 128 experts, 8 used.
    #[cfg_attr(feature = "clap", value(name = "30b-a3b"))]
    A3B30,
    /// Qwen3-235B-A22B (qwen3moe): 128 experts, 8 used.
    #[cfg_attr(feature = "clap", value(name = "235b-a22b"))]
    A22B235,
    /// Qwen1.5-MoE-A2.7B (qwen2moe): 60 experts, 4 used, a shared expert.
    #[cfg_attr(feature = "clap", value(name = "a2.7b"))]
    A2_7B,
    /// Mixtral 8x7B: 8 experts, 2 used.
    #[cfg_attr(feature = "clap", value(name = "8x7b"))]
    X8_7B,
    /// Mixtral 8x22B: 8 experts, 2 used.
    #[cfg_attr(feature = "clap", value(name = "8x22b"))]
    X8_22B,
}

impl Preset {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::B1 => "1b",
            Preset::B8 => "8b",
            Preset::B70 => "70b",
            Preset::B405 => "405b",
            Preset::Nemo12B => "nemo-12b",
            Preset::MistralSmall24B => "mistral-small-24b",
            Preset::A3B30 => "30b-a3b",
            Preset::A22B235 => "235b-a22b",
            Preset::A2_7B => "a2.7b",
            Preset::X8_7B => "8x7b",
            Preset::X8_22B => "8x22b",
        }
    }
}

/// Weight types and mixes, as llama.cpp's quantize names them (`llama-quantize --help`), plus
/// the pure `q4_k` and a dense `mxfp4`. Every type llmd can quantize is reachable: the mixes
/// follow `llama_tensor_get_type` for a dense model without an importance matrix (see
/// [`choose_type`]).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum WeightType {
    /// Every matrix F32.
    F32,
    /// Every matrix F16.
    F16,
    /// Every matrix BF16.
    #[cfg_attr(feature = "clap", value(name = "bf16"))]
    BF16,
    /// Q8_0 matrices.
    #[cfg_attr(feature = "clap", value(name = "q8_0"))]
    Q8_0,
    /// Q4_0 matrices, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q4_0"))]
    Q4_0,
    /// Q4_1 matrices, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q4_1"))]
    Q4_1,
    /// Q5_0 matrices, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q5_0"))]
    Q5_0,
    /// Q5_1 matrices, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q5_1"))]
    Q5_1,
    /// llama.cpp's Q2_K mix: Q2_K, with Q3_K for ffn_down and attn_output, Q3_K (Q4_K with 4+
    /// query heads per KV head) for attn_v, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q2_k"))]
    Q2_K,
    /// llama.cpp's Q3_K_S: Q3_K matrices, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q3_k_s"))]
    Q3_K_S,
    /// llama.cpp's Q3_K_M: Q3_K, with Q4_K attn_output, Q5_K attn_v on the first two layers
    /// and Q4_K on the others, Q5_K ffn_down on the first 1/16 of the layers and Q4_K on the
    /// others, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q3_k_m"))]
    Q3_K_M,
    /// llama.cpp's Q3_K_L: Q3_K, with Q5_K attn_v, ffn_down and attn_output, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q3_k_l"))]
    Q3_K_L,
    /// Q4_K matrices, Q6_K output (no per-layer bumps).
    #[cfg_attr(feature = "clap", value(name = "q4_k"))]
    Q4_K,
    /// llama.cpp's Q4_K_S: Q4_K, with Q5_K attn_v on the first four layers and Q5_K ffn_down on
    /// the first 1/8, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q4_k_s"))]
    Q4_K_S,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the output and for attn_v / ffn_down on
    /// the layers llama.cpp gives more bits.
    #[cfg_attr(feature = "clap", value(name = "q4_k_m"))]
    Q4_K_M,
    /// llama.cpp's Q5_K_S: Q5_K matrices, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "q5_k_s"))]
    Q5_K_S,
    /// llama.cpp's Q5_K_M: Q5_K, with Q6_K for the output and for attn_v / ffn_down on the
    /// layers llama.cpp gives more bits.
    #[cfg_attr(feature = "clap", value(name = "q5_k_m"))]
    Q5_K_M,
    /// Q6_K matrices.
    #[cfg_attr(feature = "clap", value(name = "q6_k"))]
    Q6_K,
    /// llama.cpp's IQ4_NL: IQ4_NL, with Q5_K attn_v (with 4+ query heads per KV head) and
    /// Q5_K ffn_down on the first 1/8 of the layers, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "iq4_nl"))]
    IQ4_NL,
    /// llama.cpp's IQ4_XS: as `iq4_nl` with IQ4_XS matrices.
    #[cfg_attr(feature = "clap", value(name = "iq4_xs"))]
    IQ4_XS,
    /// llama.cpp's IQ1_S mix: IQ1_S, with Q2_K token embedding, attn_v (Q4_K with 4+ query heads
    /// per KV head) and ffn_down on the first 1/8 of the layers, IQ2_XXS attn_output, Q5_K
    /// output. Header only (`--header-only`): ggml quantizes IQ1 and IQ2_XXS/XS only with an
    /// importance matrix.
    #[cfg_attr(feature = "clap", value(name = "iq1_s"))]
    IQ1_S,
    /// llama.cpp's IQ1_M mix: as `iq1_s` with IQ1_M matrices. Header only.
    #[cfg_attr(feature = "clap", value(name = "iq1_m"))]
    IQ1_M,
    /// llama.cpp's IQ2_XXS mix: IQ2_XXS, with Q2_K token embedding, attn_v (Q4_K with 4+ query
    /// heads per KV head) and ffn_down on the first 1/8 of the layers, Q5_K output. Header only.
    #[cfg_attr(feature = "clap", value(name = "iq2_xxs"))]
    IQ2_XXS,
    /// llama.cpp's IQ2_XS mix: as `iq2_xxs` with IQ2_XS matrices. Header only.
    #[cfg_attr(feature = "clap", value(name = "iq2_xs"))]
    IQ2_XS,
    /// llama.cpp's IQ2_M (whose matrices are IQ2_S): IQ2_S, with IQ3_S token embedding,
    /// attn_output, ffn_down on the first 1/8 of the layers and attn_v (Q4_K with 4+ query heads
    /// per KV head), Q5_K output. llama-quantize makes this mix only with an importance matrix;
    /// here its rules apply to ggml's quantizers without one.
    #[cfg_attr(feature = "clap", value(name = "iq2_m"))]
    IQ2_M,
    /// llama.cpp's IQ3_XXS without an importance matrix: IQ3_XXS, with IQ2_S attn_q / attn_k,
    /// IQ3_S token embedding, attn_output and attn_v (Q4_K with 4+ query heads per KV head),
    /// Q4_K ffn_down on the first 1/8 of the layers and Q3_K on the others, Q5_K output.
    /// (llama-quantize makes IQ3_XXS only with an importance matrix, which changes the attn_v
    /// and ffn_down rules.)
    #[cfg_attr(feature = "clap", value(name = "iq3_xxs"))]
    IQ3_XXS,
    /// llama.cpp's IQ3_XS: IQ3_S, with IQ3_XXS attn_q / attn_k and ffn_gate / ffn_up on the
    /// middle 3/4 of the layers, Q4_K attn_v with 4+ query heads per KV head, Q6_K output.
    /// (llama-quantize makes it only with an importance matrix.)
    #[cfg_attr(feature = "clap", value(name = "iq3_xs"))]
    IQ3_XS,
    /// llama.cpp's IQ3_S: IQ3_S, with Q4_K attn_v with 4+ query heads per KV head, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "iq3_s"))]
    IQ3_S,
    /// llama.cpp's IQ3_M: IQ3_S, with Q4_K attn_v, attn_output and ffn_down on the first 1/8 of
    /// the layers, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "iq3_m"))]
    IQ3_M,
    /// llama.cpp's TQ1_0: ternary TQ1_0 matrices, Q4_K token embedding, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "tq1_0"))]
    TQ1_0,
    /// llama.cpp's TQ2_0: ternary TQ2_0 matrices, Q4_K token embedding, Q6_K output.
    #[cfg_attr(feature = "clap", value(name = "tq2_0"))]
    TQ2_0,
    /// MXFP4 matrices, Q8_0 token embedding and output. (llama.cpp's MXFP4_MOE gives MXFP4 to
    /// mixture-of-experts tensors only and Q8_0 to the rest; the architectures here are dense.)
    #[cfg_attr(feature = "clap", value(name = "mxfp4"))]
    MXFP4,
}

impl WeightType {
    /// The base matrix type.
    fn base(self) -> GgmlType {
        use WeightType as W;
        match self {
            W::F32 => GgmlType::F32,
            W::F16 => GgmlType::F16,
            W::BF16 => GgmlType::BF16,
            W::Q8_0 => GgmlType::Q8_0,
            W::Q4_0 => GgmlType::Q4_0,
            W::Q4_1 => GgmlType::Q4_1,
            W::Q5_0 => GgmlType::Q5_0,
            W::Q5_1 => GgmlType::Q5_1,
            W::Q2_K => GgmlType::Q2_K,
            W::Q3_K_S | W::Q3_K_M | W::Q3_K_L => GgmlType::Q3_K,
            W::Q4_K | W::Q4_K_S | W::Q4_K_M => GgmlType::Q4_K,
            W::Q5_K_S | W::Q5_K_M => GgmlType::Q5_K,
            W::Q6_K => GgmlType::Q6_K,
            W::IQ1_S => GgmlType::IQ1_S,
            W::IQ1_M => GgmlType::IQ1_M,
            W::IQ2_XXS => GgmlType::IQ2_XXS,
            W::IQ2_XS => GgmlType::IQ2_XS,
            W::IQ2_M => GgmlType::IQ2_S,
            W::IQ3_XXS => GgmlType::IQ3_XXS,
            W::IQ3_XS | W::IQ3_S | W::IQ3_M => GgmlType::IQ3_S,
            W::IQ4_NL => GgmlType::IQ4_NL,
            W::IQ4_XS => GgmlType::IQ4_XS,
            W::TQ1_0 => GgmlType::TQ1_0,
            W::TQ2_0 => GgmlType::TQ2_0,
            W::MXFP4 => GgmlType::MXFP4,
        }
    }

    /// Whether llama.cpp types this mix in its own IQ1/IQ2 branch (`llama_tensor_get_type`),
    /// which skips some of the other mixes' rules (the 70B attn_v bump among them).
    fn is_iq1_iq2(self) -> bool {
        use WeightType as W;
        matches!(
            self,
            W::IQ1_S | W::IQ1_M | W::IQ2_XXS | W::IQ2_XS | W::IQ2_M
        )
    }

    /// Whether make-model can write the mix's tensors, not only its header: ggml quantizes IQ1
    /// and IQ2_XXS/XS only with an importance matrix, which make-model does not have.
    pub fn has_quantizer(self) -> bool {
        !matches!(
            self,
            WeightType::IQ1_S | WeightType::IQ1_M | WeightType::IQ2_XXS | WeightType::IQ2_XS
        )
    }

    /// llama.cpp's `llama_ftype` value for `general.file_type`.
    fn file_type(self) -> u32 {
        use WeightType as W;
        match self {
            W::F32 => 0,
            W::F16 => 1,
            W::Q4_0 => 2,
            W::Q4_1 => 3,
            W::Q8_0 => 7,
            W::Q5_0 => 8,
            W::Q5_1 => 9,
            W::Q2_K => 10,
            W::Q3_K_S => 11,
            W::Q3_K_M => 12,
            W::Q3_K_L => 13,
            W::Q4_K | W::Q4_K_S => 14,
            W::Q4_K_M => 15,
            W::Q5_K_S => 16,
            W::Q5_K_M => 17,
            W::Q6_K => 18,
            W::IQ2_XXS => 19,
            W::IQ2_XS => 20,
            W::IQ3_XS => 22,
            W::IQ3_XXS => 23,
            W::IQ4_NL => 25,
            W::IQ1_S => 24,
            W::IQ3_S => 26,
            W::IQ3_M => 27,
            W::IQ2_M => 29,
            W::IQ4_XS => 30,
            W::IQ1_M => 31,
            W::BF16 => 32,
            W::TQ1_0 => 36,
            W::TQ2_0 => 37,
            W::MXFP4 => 38,
        }
    }
}

/// What model to write: an architecture and a preset shape, the fields that override it, the
/// weights' type, rope scaling, tokenizer and seed. [`ModelSpec::new`] gives `make-model`'s
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Architecture to write.
    pub arch: Arch,
    /// Shape preset; the explicit shape options below override its fields.
    pub preset: Preset,
    /// Number of transformer layers.
    pub layers: Option<u32>,
    /// Embedding (hidden) size.
    pub embd: Option<u32>,
    /// Feed-forward size.
    pub ff: Option<u32>,
    /// Attention heads.
    pub heads: Option<u32>,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: Option<u32>,
    /// Head dimension (default: the preset's, or embd / heads when either is given).
    pub head_dim: Option<u32>,
    /// Vocabulary size.
    pub vocab: Option<u32>,
    /// Training context length written to the metadata.
    pub ctx: Option<u32>,
    /// RoPE frequency base (default: the preset's).
    pub rope_base: Option<f32>,
    /// Write Llama 3.1's `rope_freqs.weight` (the `llama3` rope scaling: factor 8, low/high
    /// frequency factors 1/4, original context 8192); llama only.
    pub rope_freqs: bool,
    /// Rope scaling keys (and, for longrope, Phi-3's long/short factor tensors) to write.
    pub rope_scaling: Option<RopeScalingArg>,
    /// `rope.scaling.factor` of linear and YaRN scaling (default 4); with `--rope-freqs`, the
    /// `llama3` factor (default 8).
    pub rope_factor: Option<f32>,
    /// `rope.scaling.original_context_length` of YaRN and longrope (default: the context over
    /// the factor for YaRN, over 32 for longrope); with `--rope-freqs`, the `llama3` original
    /// context (default 8192).
    pub rope_orig_ctx: Option<u32>,
    /// `attn_logit_softcapping` of gemma2 (default 50, Gemma 2's).
    pub attn_softcap: Option<f32>,
    /// `final_logit_softcapping` of gemma2 (default 30, Gemma 2's) or gemma3 (default: none).
    pub final_softcap: Option<f32>,
    /// `rope.scaling.attn_factor` (default: none; Phi-3's for longrope).
    pub rope_attn_factor: Option<f32>,
    /// Weight type.
    pub ty: WeightType,
    /// Tokenizer family (default: SentencePiece for gemma3, byte-level BPE otherwise).
    pub vocab_kind: Option<VocabKind>,
    /// Seed of the random weights (same seed, same file).
    pub seed: u64,
    /// Write only the header (every tensor info, no data), like a partial download.
    pub header_only: bool,
    /// Worker threads for generating and quantizing (default: all cores).
    pub threads: Option<usize>,
    /// How rows are filled: `random` draws every row; `tiled` repeats a small pool of random
    /// rows per tensor, writing at disk speed (for benchmark-size models).
    pub fill: Fill,
}

/// A model shape: every hyperparameter written to the metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Transformer layers.
    pub n_layer: u32,
    /// Hidden size.
    pub n_embd: u32,
    /// Feed-forward size.
    pub n_ff: u32,
    /// Attention heads.
    pub n_head: u32,
    /// Key/value heads.
    pub n_head_kv: u32,
    /// Head dimension (keys and values).
    pub head_dim: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Training context length.
    pub n_ctx: u32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Sliding window of windowed layers (gemma2, gemma3).
    pub sliding_window: Option<u32>,
    /// Soft-cap of attention logits (gemma2).
    pub attn_softcap: Option<f32>,
    /// Soft-cap of the output logits (gemma2, optionally gemma3).
    pub final_softcap: Option<f32>,
    /// Experts per layer (0: a dense model).
    pub n_expert: u32,
    /// Experts used per token.
    pub n_expert_used: u32,
    /// Feed-forward width of each expert (Qwen3-MoE's `expert_feed_forward_length`; Mixtral's
    /// experts are `n_ff` wide).
    pub n_ff_exp: u32,
    /// Feed-forward width of the shared expert (Qwen2-MoE's
    /// `expert_shared_feed_forward_length`; 0: none).
    pub n_ff_shexp: u32,
}

/// The preset shape of `arch`, if the family has a model of that size.
pub fn preset_shape(arch: Arch, preset: Preset) -> Result<Shape, SynthError> {
    #[allow(clippy::too_many_arguments)]
    let s = |n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, n_ctx| Shape {
        n_layer,
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        head_dim,
        n_vocab,
        n_ctx,
        rope_base: 10000.0,
        norm_eps: 1e-6,
        sliding_window: None,
        attn_softcap: None,
        final_softcap: None,
        n_expert: 0,
        n_expert_used: 0,
        n_ff_exp: 0,
        n_ff_shexp: 0,
    };
    let none = || SynthError::NoPreset {
        arch: arch.name(),
        preset: preset.name(),
    };
    Ok(match arch {
        Arch::Llama => {
            let mut sh = match preset {
                Preset::Tiny => s(2, 256, 512, 4, 2, 64, 1024, 4096),
                Preset::B1 => s(16, 2048, 8192, 32, 8, 64, 128256, 131072),
                Preset::B8 => s(32, 4096, 14336, 32, 8, 128, 128256, 131072),
                Preset::B70 => s(80, 8192, 28672, 64, 8, 128, 128256, 131072),
                Preset::B405 => s(126, 16384, 53248, 128, 8, 128, 128256, 131072),
                Preset::Nemo12B => s(40, 5120, 14336, 32, 8, 128, 131072, 1024000),
                Preset::MistralSmall24B => s(40, 5120, 32768, 32, 8, 128, 131072, 32768),
                _ => return Err(none()),
            };
            (sh.rope_base, sh.norm_eps) = match preset {
                Preset::Nemo12B => (1_000_000.0, 1e-5),
                Preset::MistralSmall24B => (100_000_000.0, 1e-5),
                _ => (500_000.0, 1e-5),
            };
            sh
        }
        Arch::Qwen2 => {
            let mut sh = match preset {
                Preset::Tiny => s(2, 256, 512, 4, 2, 64, 1024, 4096),
                Preset::B1 => s(28, 1536, 8960, 12, 2, 128, 151936, 32768),
                Preset::B8 => s(28, 3584, 18944, 28, 4, 128, 152064, 32768),
                Preset::B70 => s(80, 8192, 29568, 64, 8, 128, 152064, 32768),
                _ => return Err(none()),
            };
            sh.rope_base = 1_000_000.0;
            sh
        }
        Arch::Qwen3 => {
            let mut sh = match preset {
                Preset::Tiny => s(2, 256, 512, 4, 2, 64, 1024, 4096),
                Preset::B1 => s(28, 2048, 6144, 16, 8, 128, 151936, 40960),
                Preset::B8 => s(36, 4096, 12288, 32, 8, 128, 151936, 40960),
                Preset::B70 => s(64, 5120, 25600, 64, 8, 128, 151936, 40960),
                _ => return Err(none()),
            };
            sh.rope_base = 1_000_000.0;
            sh
        }
        Arch::Gemma2 => {
            let (mut sh, window) = match preset {
                // Four layers: two windowed, two global. The window is small enough for the
                // tests' sequences to reach past it.
                Preset::Tiny => (s(4, 256, 512, 4, 2, 64, 1024, 4096), 16),
                Preset::B1 => (s(26, 2304, 9216, 8, 4, 256, 256000, 8192), 4096),
                Preset::B8 => (s(42, 3584, 14336, 16, 8, 256, 256000, 8192), 4096),
                Preset::B70 => (s(46, 4608, 36864, 32, 16, 128, 256000, 8192), 4096),
                _ => return Err(none()),
            };
            sh.sliding_window = Some(window);
            // Gemma 2's soft-caps, as its converter writes them.
            (sh.attn_softcap, sh.final_softcap) = (Some(50.0), Some(30.0));
            sh
        }
        Arch::Gemma3 => {
            let (mut sh, window) = match preset {
                // Six layers so that the 5-local/1-global pattern has a global layer.
                Preset::Tiny => (s(6, 256, 512, 4, 1, 64, 1024, 4096), 128),
                Preset::B1 => (s(26, 1152, 6912, 4, 1, 256, 262144, 32768), 512),
                Preset::B8 => (s(48, 3840, 15360, 16, 8, 256, 262144, 131072), 1024),
                Preset::B70 => (s(62, 5376, 21504, 32, 16, 128, 262144, 131072), 1024),
                _ => return Err(none()),
            };
            sh.rope_base = 1_000_000.0;
            sh.sliding_window = Some(window);
            sh
        }
        Arch::Qwen3Moe => {
            // (experts, used, expert width) beside the dense shape.
            let (mut sh, experts) = match preset {
                Preset::Tiny => (s(2, 256, 512, 4, 2, 64, 1024, 4096), (8, 2, 128)),
                Preset::A3B30 => (s(48, 2048, 6144, 32, 4, 128, 151936, 40960), (128, 8, 768)),
                Preset::A22B235 => (
                    s(94, 4096, 12288, 64, 4, 128, 151936, 40960),
                    (128, 8, 1536),
                ),
                _ => return Err(none()),
            };
            (sh.n_expert, sh.n_expert_used, sh.n_ff_exp) = experts;
            sh.rope_base = 1_000_000.0;
            sh
        }
        Arch::Qwen2Moe => {
            // (experts, used, expert width, shared expert width) beside the dense shape.
            let (mut sh, experts) = match preset {
                Preset::Tiny => (s(4, 256, 512, 4, 2, 64, 1024, 4096), (8, 2, 128, 256)),
                Preset::A2_7B => (
                    s(24, 2048, 5632, 16, 16, 128, 151936, 8192),
                    (60, 4, 1408, 5632),
                ),
                _ => return Err(none()),
            };
            (sh.n_expert, sh.n_expert_used, sh.n_ff_exp, sh.n_ff_shexp) = experts;
            sh.rope_base = 1_000_000.0;
            sh
        }
        Arch::Mixtral => {
            let (mut sh, n_expert) = match preset {
                Preset::Tiny => (s(2, 256, 256, 4, 2, 64, 1024, 4096), 4),
                Preset::X8_7B => (s(32, 4096, 14336, 32, 8, 128, 32000, 32768), 8),
                Preset::X8_22B => (s(56, 6144, 16384, 48, 8, 128, 32768, 65536), 8),
                _ => return Err(none()),
            };
            (sh.n_expert, sh.n_expert_used, sh.n_ff_exp) = (n_expert, 2, sh.n_ff);
            (sh.rope_base, sh.norm_eps) = (1_000_000.0, 1e-5);
            sh
        }
        Arch::Phi3 => {
            let mut sh = match preset {
                Preset::Tiny => s(2, 256, 512, 4, 4, 64, 1024, 4096),
                Preset::B1 => s(32, 3072, 8192, 32, 32, 96, 32064, 131072),
                Preset::B8 => s(40, 5120, 17920, 40, 10, 128, 100352, 16384),
                _ => return Err(none()),
            };
            sh.rope_base = if preset == Preset::B8 {
                250_000.0
            } else {
                10_000.0
            };
            sh.norm_eps = 1e-5;
            sh
        }
    })
}

impl ModelSpec {
    /// `make-model`'s defaults for `arch`: the tiny preset, F16 weights, seed 0, random fill, no
    /// rope scaling, every row written.
    pub fn new(arch: Arch) -> Self {
        ModelSpec {
            arch,
            preset: Preset::Tiny,
            layers: None,
            embd: None,
            ff: None,
            heads: None,
            kv_heads: None,
            head_dim: None,
            vocab: None,
            ctx: None,
            rope_base: None,
            rope_freqs: false,
            rope_scaling: None,
            rope_factor: None,
            rope_orig_ctx: None,
            attn_softcap: None,
            final_softcap: None,
            rope_attn_factor: None,
            ty: WeightType::F16,
            vocab_kind: None,
            seed: 0,
            header_only: false,
            threads: None,
            fill: Fill::Random,
        }
    }

    /// The shape: the preset with the explicit options applied, validated.
    pub fn shape(&self) -> Result<Shape, SynthError> {
        let mut sh = preset_shape(self.arch, self.preset)?;
        let set = |f: &mut u32, v: Option<u32>| {
            if let Some(v) = v {
                *f = v;
            }
        };
        set(&mut sh.n_layer, self.layers);
        set(&mut sh.n_embd, self.embd);
        set(&mut sh.n_ff, self.ff);
        if self.arch == Arch::Mixtral {
            // Mixtral's experts are the feed-forward width.
            sh.n_ff_exp = sh.n_ff;
        }
        set(&mut sh.n_head, self.heads);
        set(&mut sh.n_head_kv, self.kv_heads);
        set(&mut sh.n_vocab, self.vocab);
        set(&mut sh.n_ctx, self.ctx);
        match self.head_dim {
            Some(h) => sh.head_dim = h,
            None if self.embd.is_some() || self.heads.is_some() => {
                if sh.n_head == 0 {
                    spec_error!("--heads must be nonzero");
                }
                sh.head_dim = sh.n_embd / sh.n_head;
            }
            None => {}
        }
        if self.kv_heads.is_none() && sh.n_head_kv > sh.n_head {
            sh.n_head_kv = sh.n_head;
        }
        for (name, v) in [
            ("layers", sh.n_layer),
            ("embd", sh.n_embd),
            ("ff", sh.n_ff),
            ("heads", sh.n_head),
            ("kv-heads", sh.n_head_kv),
            ("head-dim", sh.head_dim),
            ("vocab", sh.n_vocab),
            ("ctx", sh.n_ctx),
        ] {
            if v == 0 {
                spec_error!("--{name} must be nonzero");
            }
        }
        if !sh.n_head.is_multiple_of(sh.n_head_kv) {
            spec_error!(
                "--heads ({}) must be a multiple of --kv-heads ({})",
                sh.n_head,
                sh.n_head_kv
            );
        }
        if !sh.head_dim.is_multiple_of(2) {
            spec_error!(
                "--head-dim ({}) must be even for rotary embeddings",
                sh.head_dim
            );
        }
        if self.arch == Arch::Phi3 && sh.n_head * sh.head_dim != sh.n_embd {
            spec_error!(
                "phi3 needs heads x head-dim = embd (llama.cpp's attn_output is embd x embd), \
                 not {} x {} for {}",
                sh.n_head,
                sh.head_dim,
                sh.n_embd
            );
        }
        for (flag, value, archs) in [
            ("attn-softcap", self.attn_softcap, &[Arch::Gemma2][..]),
            (
                "final-softcap",
                self.final_softcap,
                &[Arch::Gemma2, Arch::Gemma3][..],
            ),
        ] {
            match value {
                Some(_) if !archs.contains(&self.arch) => {
                    spec_error!("--{flag} applies to {archs:?} models only")
                }
                Some(cap) if !(cap.is_finite() && cap > 0.0) => {
                    spec_error!("--{flag} must be positive, not {cap}")
                }
                _ => {}
            }
        }
        if let Some(cap) = self.attn_softcap {
            sh.attn_softcap = Some(cap);
        }
        if let Some(cap) = self.final_softcap {
            sh.final_softcap = Some(cap);
        }
        if let Some(base) = self.rope_base {
            if !(base.is_finite() && base > 0.0) {
                spec_error!("--rope-base must be positive, not {base}");
            }
            sh.rope_base = base;
        }
        Ok(sh)
    }

    /// The rope scaling to write.
    pub fn rope_plan(&self, sh: &Shape) -> Result<RopeScalingPlan, SynthError> {
        RopeScalingPlan::new(
            self.arch.gguf_arch(),
            sh.n_ctx,
            self.rope_freqs,
            self.rope_scaling,
            self.rope_factor,
            self.rope_orig_ctx,
            self.rope_attn_factor,
        )
    }

    fn vocab_kind(&self) -> VocabKind {
        self.vocab_kind.unwrap_or(match self.arch {
            Arch::Gemma2 | Arch::Gemma3 | Arch::Phi3 => VocabKind::Spm,
            _ => VocabKind::Bpe,
        })
    }
}

/// What a tensor is, which decides its type and initial values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Token embeddings.
    TokenEmbd,
    /// The output projection.
    Output,
    /// A norm weight (≈ 1, always F32).
    Norm,
    /// A bias (≈ 0, always F32).
    Bias,
    /// attn_v: more bits on some layers in Q4_K_M.
    AttnV,
    /// ffn_down: more bits on some layers in Q4_K_M.
    FfnDown,
    /// attn_output: more bits in the Q2_K, Q3_K and IQ mixes.
    AttnOutput,
    /// attn_q: fewer bits in the IQ3_XXS and IQ3_XS mixes.
    AttnQ,
    /// attn_k: fewer bits in the IQ3_XXS and IQ3_XS mixes.
    AttnK,
    /// ffn_gate and ffn_up: fewer bits on the middle layers in the IQ3_XS mix.
    FfnGateUp,
    /// A mixture of experts' router (`ffn_gate_inp`): never quantized (F32, as converters
    /// write it and llama-quantize leaves it).
    Router,
    /// Values given in advance (rope frequency factors, always F32).
    Fixed,
}

/// One tensor to write.
#[derive(Debug, Clone)]
struct TensorPlan {
    /// GGUF tensor name.
    name: String,
    /// GGML dims (`dims[0]` is the row length).
    dims: Vec<u64>,
    /// What it is.
    role: Role,
    /// Chosen storage type.
    ty: GgmlType,
    /// Standard deviation of the random values (around 1 for norms).
    std: f32,
    /// The values of a [`Role::Fixed`] tensor.
    fixed: Option<Vec<f32>>,
}

/// llama.cpp's rule for which layers get more bits in the *_M mixes.
fn use_more_bits(i: u32, n: u32) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// A type compatible with rows of `row` elements: llama.cpp's fallbacks
/// (`tensor_type_fallback`) for shapes that are not a whole number of blocks.
fn fit(ty: GgmlType, row: u64) -> GgmlType {
    let fits = |t: GgmlType| row.is_multiple_of(t.block_elems() as u64);
    if fits(ty) {
        return ty;
    }
    let fallback = match ty {
        GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if fits(fallback) {
        fallback
    } else {
        GgmlType::F16
    }
}

/// Where a tensor sits: its layer and the model's layer count and grouped-query ratio, which
/// llama.cpp's mixes consult.
#[derive(Debug, Clone, Copy)]
struct Site {
    /// The layer (0 for tensors outside the layers).
    layer: u32,
    /// Layers in the model.
    n_layer: u32,
    /// Query heads per KV head (llama.cpp's `n_gqa`).
    n_gqa: u32,
    /// Whether llama.cpp classes the model as a 70B (80 layers of llama with grouped KV heads,
    /// or of qwen2), whose small attn_v takes more bits.
    is_70b: bool,
    /// Experts per layer (llama-quantize gives an 8-expert model's attn_k/attn_v Q8_0 and its
    /// attn_output Q5_K in the K and IQ3/IQ4 mixes).
    n_expert: u32,
}

/// The type of an attn_v matrix in mix `wt` (`base` otherwise), as `llama_tensor_get_type`.
fn attn_v_type(wt: WeightType, base: GgmlType, at: Site) -> GgmlType {
    use WeightType as W;
    let ty = match wt {
        W::Q2_K | W::IQ2_M | W::IQ3_XXS | W::IQ3_XS | W::IQ3_S if at.n_gqa >= 4 => GgmlType::Q4_K,
        W::IQ1_S | W::IQ1_M | W::IQ2_XXS | W::IQ2_XS if at.n_gqa >= 4 => GgmlType::Q4_K,
        W::IQ1_S | W::IQ1_M | W::IQ2_XXS | W::IQ2_XS => GgmlType::Q2_K,
        W::IQ2_M | W::IQ3_XXS => GgmlType::IQ3_S,
        W::IQ3_M => GgmlType::Q4_K,
        W::Q2_K => GgmlType::Q3_K,
        W::Q3_K_M if at.layer < 2 => GgmlType::Q5_K,
        W::Q3_K_M => GgmlType::Q4_K,
        W::Q3_K_L => GgmlType::Q5_K,
        W::IQ4_NL | W::IQ4_XS if at.n_gqa >= 4 => GgmlType::Q5_K,
        W::Q4_K_M | W::Q5_K_M if use_more_bits(at.layer, at.n_layer) => GgmlType::Q6_K,
        W::Q4_K_S if at.layer < 4 => GgmlType::Q5_K,
        _ => base,
    };
    // A 70B's eight query heads share each attn_v row, so llama.cpp spends more bits on it
    // (in every mix but the IQ1/IQ2 ones, which it types in a branch of their own).
    match ty {
        GgmlType::Q3_K | GgmlType::Q4_K if at.is_70b && !wt.is_iq1_iq2() => GgmlType::Q5_K,
        other => other,
    }
}

/// The type of an ffn_down matrix in mix `wt` (`base` otherwise), as `llama_tensor_get_type`.
fn ffn_down_type(wt: WeightType, base: GgmlType, at: Site) -> GgmlType {
    use WeightType as W;
    let (i, n) = (at.layer, at.n_layer);
    match wt {
        W::Q2_K => GgmlType::Q3_K,
        W::IQ2_M if i < n / 8 => GgmlType::IQ3_S,
        W::IQ1_S | W::IQ1_M | W::IQ2_XXS | W::IQ2_XS if i < n / 8 => GgmlType::Q2_K,
        W::IQ3_XXS | W::IQ3_M if i < n / 8 => GgmlType::Q4_K,
        W::IQ3_XXS => GgmlType::Q3_K,
        W::Q3_K_M if i < n / 16 => GgmlType::Q5_K,
        W::Q3_K_M => GgmlType::Q4_K,
        W::Q3_K_L => GgmlType::Q5_K,
        W::Q4_K_M | W::Q5_K_M if use_more_bits(i, n) => GgmlType::Q6_K,
        W::IQ4_NL | W::IQ4_XS | W::Q4_K_S if i < n / 8 => GgmlType::Q5_K,
        _ => base,
    }
}

/// The type of an attn_output matrix in mix `wt` (`base` otherwise).
fn attn_output_type(wt: WeightType, base: GgmlType) -> GgmlType {
    use WeightType as W;
    match wt {
        W::Q2_K => GgmlType::Q3_K,
        W::Q3_K_M | W::IQ3_M => GgmlType::Q4_K,
        W::Q3_K_L => GgmlType::Q5_K,
        W::IQ2_M | W::IQ3_XXS => GgmlType::IQ3_S,
        W::IQ1_S | W::IQ1_M => GgmlType::IQ2_XXS,
        _ => base,
    }
}

/// The type of an attn_q or attn_k matrix in mix `wt` (`base` otherwise).
fn attn_qk_type(wt: WeightType, base: GgmlType) -> GgmlType {
    use WeightType as W;
    match wt {
        W::IQ3_XS => GgmlType::IQ3_XXS,
        W::IQ3_XXS => GgmlType::IQ2_S,
        _ => base,
    }
}

/// The type of an ffn_gate or ffn_up matrix in mix `wt` (`base` otherwise).
fn ffn_gate_up_type(wt: WeightType, base: GgmlType, at: Site) -> GgmlType {
    let (i, n) = (at.layer, at.n_layer);
    if wt == WeightType::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
        GgmlType::IQ3_XXS
    } else {
        base
    }
}

/// Whether llama-quantize gives an 8-expert model's attn_output Q5_K in mix `wt`.
fn eight_expert_output_bump(wt: WeightType) -> bool {
    use WeightType as W;
    matches!(
        wt,
        W::Q2_K
            | W::IQ3_XS
            | W::IQ3_XXS
            | W::Q3_K_S
            | W::Q3_K_M
            | W::IQ4_NL
            | W::Q4_K_S
            | W::Q4_K_M
            | W::IQ3_S
            | W::IQ3_M
            | W::IQ4_XS
    )
}

/// The storage type of a tensor, following llama.cpp's `llama_tensor_get_type` for a dense
/// model quantized without an importance matrix.
fn choose_type(wt: WeightType, role: Role, at: Site, tied: bool, row: u64) -> GgmlType {
    use WeightType as W;
    let base = wt.base();
    let output = matches!(role, Role::Output) || (tied && role == Role::TokenEmbd);
    let ty = match role {
        Role::Norm | Role::Bias | Role::Fixed | Role::Router => return GgmlType::F32,
        _ if matches!(wt, W::F32 | W::F16 | W::BF16) => base,
        _ if output && matches!(wt, W::Q8_0 | W::MXFP4) => GgmlType::Q8_0,
        // The output (or tied embedding) takes Q8_0 when its rows do not fit K blocks.
        _ if output && !row.is_multiple_of(256) => GgmlType::Q8_0,
        _ if output && (wt.is_iq1_iq2() || wt == W::IQ3_XXS) => GgmlType::Q5_K,
        _ if output => GgmlType::Q6_K,
        Role::TokenEmbd if matches!(wt, W::TQ1_0 | W::TQ2_0) => GgmlType::Q4_K,
        Role::TokenEmbd if matches!(wt, W::IQ2_M | W::IQ3_XXS) => GgmlType::IQ3_S,
        Role::TokenEmbd if wt.is_iq1_iq2() => GgmlType::Q2_K,
        Role::TokenEmbd if wt == W::MXFP4 => GgmlType::Q8_0,
        Role::AttnV | Role::AttnK if at.n_expert == 8 => GgmlType::Q8_0,
        Role::AttnOutput if at.n_expert == 8 && eight_expert_output_bump(wt) => GgmlType::Q5_K,
        Role::AttnV => attn_v_type(wt, base, at),
        Role::FfnDown => ffn_down_type(wt, base, at),
        Role::AttnOutput => attn_output_type(wt, base),
        Role::AttnQ | Role::AttnK => attn_qk_type(wt, base),
        Role::FfnGateUp => ffn_gate_up_type(wt, base, at),
        _ => base,
    };
    fit(ty, row)
}

/// Every tensor of the model, in file order.
fn plan(arch: Arch, sh: &Shape, wt: WeightType, rope: &RopeScalingPlan) -> Vec<TensorPlan> {
    let (e, ff, v) = (sh.n_embd as u64, sh.n_ff as u64, sh.n_vocab as u64);
    let (q, kv, hd) = (
        (sh.n_head * sh.head_dim) as u64,
        (sh.n_head_kv * sh.head_dim) as u64,
        sh.head_dim as u64,
    );
    let tied = arch.tied();
    let mut out = Vec::new();
    let mut add = |name: String, dims: Vec<u64>, role: Role, layer: Option<u32>| {
        let std = match role {
            Role::Norm | Role::Bias => NORM_STD,
            // Unit-variance hidden states after the final norm give logits of std ~1.
            Role::Output => 1.0 / (e as f32).sqrt(),
            // Gemma scales embeddings by sqrt(n_embd) and ties them to the output. At unit
            // scale the input token's own row dominates the final hidden state and greedy
            // decoding just repeats the last token; half scale leaves the layers' (normed)
            // contributions in charge.
            Role::TokenEmbd if tied => 0.5 / (e as f32).sqrt(),
            _ => WEIGHT_STD,
        };
        let at = Site {
            layer: layer.unwrap_or(0),
            n_layer: sh.n_layer,
            n_gqa: sh.n_head / sh.n_head_kv.max(1),
            is_70b: sh.n_layer == 80
                && match arch {
                    Arch::Llama => sh.n_head != sh.n_head_kv,
                    Arch::Qwen2 => true,
                    _ => false,
                },
            n_expert: sh.n_expert,
        };
        let ty = choose_type(wt, role, at, tied, dims[0]);
        out.push(TensorPlan {
            name,
            dims,
            role,
            ty,
            std,
            fixed: None,
        });
    };
    add(
        "token_embd.weight".into(),
        vec![e, v],
        Role::TokenEmbd,
        None,
    );
    let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    for il in 0..sh.n_layer {
        let l = Some(il);
        let b = |s: &str| format!("blk.{il}.{s}");
        add(b("attn_norm.weight"), vec![e], Role::Norm, l);
        if arch == Arch::Phi3 {
            // llama.cpp's mixes treat a fused q/k/v like attn_v.
            add(b("attn_qkv.weight"), vec![e, q + 2 * kv], Role::AttnV, l);
        } else {
            add(b("attn_q.weight"), vec![e, q], Role::AttnQ, l);
            add(b("attn_k.weight"), vec![e, kv], Role::AttnK, l);
            add(b("attn_v.weight"), vec![e, kv], Role::AttnV, l);
        }
        if matches!(arch, Arch::Qwen2 | Arch::Qwen2Moe) {
            add(b("attn_q.bias"), vec![q], Role::Bias, l);
            add(b("attn_k.bias"), vec![kv], Role::Bias, l);
            add(b("attn_v.bias"), vec![kv], Role::Bias, l);
        }
        if matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3) {
            add(b("attn_q_norm.weight"), vec![hd], Role::Norm, l);
            add(b("attn_k_norm.weight"), vec![hd], Role::Norm, l);
        }
        add(b("attn_output.weight"), vec![q, e], Role::AttnOutput, l);
        if gemma {
            add(b("post_attention_norm.weight"), vec![e], Role::Norm, l);
        }
        add(b("ffn_norm.weight"), vec![e], Role::Norm, l);
        if arch.has_experts() {
            // ggml's dims: expert `x` is the `x`-th block of rows of each 3-D tensor.
            let (n, fx) = (sh.n_expert as u64, sh.n_ff_exp as u64);
            add(b("ffn_gate_inp.weight"), vec![e, n], Role::Router, l);
            add(
                b("ffn_gate_exps.weight"),
                vec![e, fx, n],
                Role::FfnGateUp,
                l,
            );
            add(b("ffn_up_exps.weight"), vec![e, fx, n], Role::FfnGateUp, l);
            add(b("ffn_down_exps.weight"), vec![fx, e, n], Role::FfnDown, l);
            if arch.has_shared_expert() {
                // The shared expert's gate is one logit per token (1-D, kept f32 as llama.cpp
                // keeps every 1-D tensor).
                let fs = sh.n_ff_shexp as u64;
                add(b("ffn_gate_inp_shexp.weight"), vec![e], Role::Router, l);
                add(b("ffn_gate_shexp.weight"), vec![e, fs], Role::FfnGateUp, l);
                add(b("ffn_up_shexp.weight"), vec![e, fs], Role::FfnGateUp, l);
                add(b("ffn_down_shexp.weight"), vec![fs, e], Role::FfnDown, l);
            }
        } else if arch == Arch::Phi3 {
            // Gate and up in one tensor, gate first (llama.cpp's mixes see an ffn_up).
            add(b("ffn_up.weight"), vec![e, 2 * ff], Role::FfnGateUp, l);
        } else {
            add(b("ffn_gate.weight"), vec![e, ff], Role::FfnGateUp, l);
            add(b("ffn_up.weight"), vec![e, ff], Role::FfnGateUp, l);
        }
        if !arch.has_experts() {
            add(b("ffn_down.weight"), vec![ff, e], Role::FfnDown, l);
        }
        if gemma {
            add(b("post_ffw_norm.weight"), vec![e], Role::Norm, l);
        }
    }
    add("output_norm.weight".into(), vec![e], Role::Norm, None);
    if !tied {
        add("output.weight".into(), vec![e, v], Role::Output, None);
    }
    // Rope frequency factors last, so the random tensors (seeded by their index) are the same
    // with and without them.
    for (name, values) in rope.tensors(sh.head_dim, sh.rope_base) {
        out.push(TensorPlan {
            name: name.into(),
            dims: vec![values.len() as u64],
            role: Role::Fixed,
            ty: GgmlType::F32,
            std: 0.0,
            fixed: Some(values),
        });
    }
    out
}

/// The metadata llama.cpp needs, in the order its converters write it.
fn metadata(
    arch: Arch,
    sh: &Shape,
    wt: WeightType,
    vocab: &Vocab,
    preset: Preset,
    rope: &RopeScalingPlan,
) -> Vec<(String, MetadataValue)> {
    use MetadataValue as V;
    let a = arch.gguf_arch();
    let k = |s: &str| format!("{a}.{s}");
    let preset_name = preset.name();
    // llama.cpp gives vocabularies of models named "phi3" Phi-3.5's token attributes, which
    // need its SentencePiece tokens; a byte-level BPE phi3 vocabulary is Phi-4's.
    let family = match arch {
        Arch::Phi3 if vocab.model == "gpt2" => "phi4",
        _ => arch.name(),
    };
    let mut m: Vec<(String, MetadataValue)> = vec![
        ("general.architecture".into(), V::String(a.into())),
        ("general.type".into(), V::String("model".into())),
        (
            "general.name".into(),
            V::String(format!("llmd synthetic {family} {preset_name}")),
        ),
        ("general.file_type".into(), V::U32(wt.file_type())),
        ("general.quantization_version".into(), V::U32(2)),
        (k("vocab_size"), V::U32(sh.n_vocab)),
        (k("context_length"), V::U32(sh.n_ctx)),
        (k("embedding_length"), V::U32(sh.n_embd)),
        (k("block_count"), V::U32(sh.n_layer)),
        (k("feed_forward_length"), V::U32(sh.n_ff)),
        (k("attention.head_count"), V::U32(sh.n_head)),
        (k("attention.head_count_kv"), V::U32(sh.n_head_kv)),
        (k("attention.key_length"), V::U32(sh.head_dim)),
        (k("attention.value_length"), V::U32(sh.head_dim)),
        (k("rope.dimension_count"), V::U32(sh.head_dim)),
        (k("rope.freq_base"), V::F32(sh.rope_base)),
        (k("attention.layer_norm_rms_epsilon"), V::F32(sh.norm_eps)),
    ];
    if arch.has_experts() {
        m.push((k("expert_count"), V::U32(sh.n_expert)));
        m.push((k("expert_used_count"), V::U32(sh.n_expert_used)));
    }
    if matches!(arch, Arch::Qwen3Moe | Arch::Qwen2Moe) {
        m.push((k("expert_feed_forward_length"), V::U32(sh.n_ff_exp)));
    }
    if arch.has_shared_expert() {
        m.push((
            k("expert_shared_feed_forward_length"),
            V::U32(sh.n_ff_shexp),
        ));
    }
    if let Some(w) = sh.sliding_window {
        m.push((k("attention.sliding_window"), V::U32(w)));
    }
    if let Some(cap) = sh.attn_softcap {
        m.push((k("attn_logit_softcapping"), V::F32(cap)));
    }
    if let Some(cap) = sh.final_softcap {
        m.push((k("final_logit_softcapping"), V::F32(cap)));
    }
    for (key, value) in rope.metadata(a) {
        m.push((k(key), value));
    }
    let t = |s: &str| format!("tokenizer.{s}");
    m.push((t("ggml.model"), V::String(vocab.model.into())));
    m.push((t("ggml.pre"), V::String(vocab.pre.into())));
    m.push((
        t("ggml.tokens"),
        V::Array(MetadataArray::String(vocab.tokens.clone())),
    ));
    if let Some(s) = &vocab.scores {
        m.push((t("ggml.scores"), V::Array(MetadataArray::F32(s.clone()))));
    }
    m.push((
        t("ggml.token_type"),
        V::Array(MetadataArray::I32(vocab.token_types.clone())),
    ));
    if let Some(mg) = &vocab.merges {
        m.push((
            t("ggml.merges"),
            V::Array(MetadataArray::String(mg.clone())),
        ));
    }
    m.push((t("ggml.bos_token_id"), V::U32(vocab.bos)));
    m.push((t("ggml.eos_token_id"), V::U32(vocab.eos)));
    if let Some(id) = vocab.eot {
        m.push((t("ggml.eot_token_id"), V::U32(id)));
    }
    if let Some(id) = vocab.unk {
        m.push((t("ggml.unknown_token_id"), V::U32(id)));
    }
    if let Some(id) = vocab.pad {
        m.push((t("ggml.padding_token_id"), V::U32(id)));
    }
    m.push((t("ggml.add_bos_token"), V::Bool(vocab.add_bos)));
    m.push((t("ggml.add_eos_token"), V::Bool(false)));
    if let Some(p) = vocab.add_space_prefix {
        m.push((t("ggml.add_space_prefix"), V::Bool(p)));
    }
    m.push((t("chat_template"), V::String(vocab.chat_template.into())));
    m
}

/// splitmix64: a fast, well-mixed generator; one stream per tensor row keeps the output
/// independent of how rows are split across threads.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// An approximately standard normal value: the Irwin–Hall sum of four 16-bit uniforms,
    /// centred and scaled to unit variance (cheap, bounded by ±3.46).
    fn normal(&mut self) -> f32 {
        let r = self.next();
        let sum: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xFFFF) as u32).sum();
        let u = sum as f32 / 65536.0; // sum of four U(0,1): mean 2, variance 1/3
        (u - 2.0) * 3.0f32.sqrt()
    }
}

/// splitmix64's output function: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG of row `row` of tensor number `index`. The starting state is a full hash of
/// (seed, tensor, row): starting states that differ by a multiple of the generator's increment
/// would make rows shifted copies of each other, correlating them.
fn row_rng(seed: u64, index: usize, row: u64) -> SplitMix {
    let t = mix(mix(seed ^ 0x6C6C_6D64_6D6F_6465) ^ index as u64);
    SplitMix(mix(t ^ mix(row.wrapping_add(0x5851_F42D_4C95_7F2D))))
}

/// Generates and encodes rows `rows` of tensor `t` (number `index`).
fn encode_rows(
    t: &TensorPlan,
    index: usize,
    seed: u64,
    rows: std::ops::Range<u64>,
) -> Result<Vec<u8>, SynthError> {
    let row_len = t.dims[0] as usize;
    let quantized = |values: &[f32]| {
        quantize(t.ty, values).map_err(|source| SynthError::Quantize {
            tensor: t.name.clone(),
            ty: t.ty,
            source,
        })
    };
    if let Some(values) = &t.fixed {
        let (a, b) = (rows.start as usize * row_len, rows.end as usize * row_len);
        let part = values.get(a..b).ok_or_else(|| SynthError::Layout {
            tensor: t.name.clone(),
            reason: format!("rows {rows:?} beyond its values"),
        })?;
        return quantized(part);
    }
    let mut vals = Vec::with_capacity(row_len * (rows.end - rows.start) as usize);
    for r in rows {
        let mut rng = row_rng(seed, index, r);
        let center = if t.role == Role::Norm { 1.0 } else { 0.0 };
        vals.extend((0..row_len).map(|_| center + t.std * rng.normal()));
    }
    quantized(&vals)
}

/// Generates and encodes rows `rows` of tensor `t` (number `index`), split across `threads`
/// workers; the rows' bytes in order.
fn encode_parallel(
    t: &TensorPlan,
    index: usize,
    seed: u64,
    rows: std::ops::Range<u64>,
    threads: usize,
) -> Result<Vec<u8>, SynthError> {
    let (start, end) = (rows.start, rows.end);
    let per = (end - start).div_ceil(threads as u64).max(1);
    let parts: Vec<Result<Vec<u8>, SynthError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (start..end)
            .step_by(per as usize)
            .map(|a| {
                let b = (a + per).min(end);
                s.spawn(move || encode_rows(t, index, seed, a..b))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SynthError::WorkerPanicked(t.name.clone())))
            })
            .collect()
    });
    let mut data = Vec::new();
    for p in parts {
        data.extend_from_slice(&p?);
    }
    Ok(data)
}

/// Number of rows of a tensor (every dimension but the first).
fn n_rows(t: &TensorPlan) -> u64 {
    t.dims[1..].iter().product()
}

/// Bytes of one row of `t`.
fn row_bytes(t: &TensorPlan) -> Result<u64, SynthError> {
    t.ty.row_bytes(t.dims[0]).ok_or_else(|| SynthError::Layout {
        tensor: t.name.clone(),
        reason: format!(
            "rows of {} elements are not whole {} blocks",
            t.dims[0], t.ty
        ),
    })
}

/// Bytes of the data of `t`.
fn tensor_bytes(t: &TensorPlan) -> Result<u64, SynthError> {
    row_bytes(t)?
        .checked_mul(n_rows(t))
        .ok_or_else(|| SynthError::Layout {
            tensor: t.name.clone(),
            reason: "size overflows".into(),
        })
}

/// Rows in the pool of a tensor of `n_rows` rows with [`Fill::Tiled`].
fn pool_rows(n_rows: u64) -> u64 {
    n_rows.min(TILE_POOL_ROWS)
}

/// The pool row that row `row` of tensor number `index` copies with [`Fill::Tiled`]. Tensors
/// with no more rows than the pool copy it in order (they equal the default fill).
fn pool_pick(seed: u64, index: usize, row: u64, n_rows: u64) -> u64 {
    let pool = pool_rows(n_rows);
    if n_rows <= pool {
        return row;
    }
    mix(row_rng(seed ^ 0x7469_6C65_645F_6669, index, row).next()) % pool
}

/// Bytes buffered per write with [`Fill::Tiled`].
const TILE_BATCH_BYTES: usize = 16 << 20;

/// Generates, encodes and writes one tensor: with [`Fill::Random`] in batches of rows, each
/// batch split across `threads` workers; with [`Fill::Tiled`] as copies of a pool of rows.
fn write_tensor<W: Write>(
    stream: &mut crate::TensorStream<W>,
    t: &TensorPlan,
    index: usize,
    seed: u64,
    threads: usize,
    fill: Fill,
) -> Result<(), SynthError> {
    let row_len = t.dims[0];
    let n_rows = n_rows(t);
    let mut sink = stream.tensor_writer()?;
    match fill {
        Fill::Random => {
            let batch_rows = (BATCH_ELEMS as u64 / row_len).max(1);
            let mut start = 0;
            while start < n_rows {
                let end = (start + batch_rows).min(n_rows);
                sink.write_all(&encode_parallel(t, index, seed, start..end, threads)?)
                    .map_err(WriteError::from)?;
                start = end;
            }
        }
        Fill::Tiled => {
            let pool = encode_parallel(t, index, seed, 0..pool_rows(n_rows), threads)?;
            let rb = usize::try_from(row_bytes(t)?).map_err(|_| SynthError::Layout {
                tensor: t.name.clone(),
                reason: "row too large".into(),
            })?;
            let batch_rows = (TILE_BATCH_BYTES / rb.max(1)).max(1) as u64;
            let mut data = Vec::with_capacity(rb * batch_rows as usize);
            let mut start = 0;
            while start < n_rows {
                let end = (start + batch_rows).min(n_rows);
                data.clear();
                for r in start..end {
                    let j = pool_pick(seed, index, r, n_rows) as usize;
                    data.extend_from_slice(&pool[j * rb..(j + 1) * rb]);
                }
                sink.write_all(&data).map_err(WriteError::from)?;
                start = end;
            }
        }
    }
    sink.finish()?;
    Ok(())
}

/// What was written: the model's sizes (`make-model --json` prints them).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// The output file.
    pub path: PathBuf,
    /// `general.architecture`.
    pub arch: String,
    /// The weight type option (`q4_k_m`, ...).
    pub ty: String,
    /// The fill option (`random` or `tiled`).
    pub fill: String,
    /// Transformer layers.
    pub layers: u32,
    /// Total elements of all tensors.
    pub parameters: u64,
    /// Number of tensors.
    pub tensors: u64,
    /// The tokenizer model written (`gpt2`, `llama`).
    pub vocab_model: String,
    /// Tokens of the vocabulary that were learned from the sample text (the rest are fixed).
    pub vocab_learned: usize,
    /// Size of the file (of the whole file even with a header-only write).
    pub file_bytes: u64,
    /// Bytes of all tensor data (no padding).
    pub tensor_bytes: u64,
    /// Bytes of `token_embd.weight`.
    pub token_embd_bytes: u64,
    /// Whether the output projection is tied to the token embeddings (no `output.weight`).
    pub tied_output: bool,
    /// Bytes of weights one decode step reads: every tensor except the token embeddings, of
    /// which only the looked-up rows are read, unless they double as the output projection, and
    /// of a mixture of experts only the experts one token uses.
    pub decode_bytes_per_token: u64,
    /// Whether only the header was written.
    pub header_only: bool,
    /// Seconds taken.
    pub seconds: f64,
}

/// Writes the model `spec` describes to `output` (created or truncated) and reads it back; with
/// [`ModelSpec::header_only`], only the header.
pub fn write_model(spec: &ModelSpec, output: &Path) -> Result<ModelSummary, SynthError> {
    let started = Instant::now();
    if !spec.header_only && !spec.ty.has_quantizer() {
        return Err(SynthError::Spec(format!(
            "make-model cannot quantize to {} (ggml quantizes it only with an importance \
             matrix): write the header alone with --header-only, e.g. for `llmctl plan`, or \
             quantize an f16 model with llama-quantize --imatrix",
            spec.ty.base()
        )));
    }
    let sh = spec.shape()?;
    let rope = spec.rope_plan(&sh)?;
    let flavor = match spec.arch {
        Arch::Llama | Arch::Mixtral => Flavor::Llama,
        Arch::Phi3 => Flavor::Phi3,
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Qwen2Moe => Flavor::Qwen,
        Arch::Gemma2 | Arch::Gemma3 => Flavor::Gemma,
    };
    let vocab = vocab::build(spec.vocab_kind(), flavor, sh.n_vocab as usize)?;
    let tensors = plan(spec.arch, &sh, spec.ty, &rope);

    let mut w = GgufWriter::new();
    for (k, v) in metadata(spec.arch, &sh, spec.ty, &vocab, spec.preset, &rope) {
        w.add_metadata(k, v)?;
    }
    for t in &tensors {
        w.add_tensor(t.name.clone(), &t.dims, t.ty)?;
    }
    let total_size = w.file_size();
    let io = |what: &'static str| {
        move |source| SynthError::Io {
            what,
            path: output.to_owned(),
            source,
        }
    };
    let file = File::create(output).map_err(io("cannot create"))?;
    let mut stream = w.start(BufWriter::with_capacity(8 << 20, file))?;
    if spec.header_only {
        stream.finish_partial()?;
    } else {
        let threads = spec
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        for (i, t) in tensors.iter().enumerate() {
            write_tensor(&mut stream, t, i, spec.seed, threads, spec.fill)?;
        }
        let out = stream.finish()?;
        out.into_inner()
            .map_err(|e| io("flushing")(e.into_error()))?
            .sync_all()
            .map_err(io("flushing"))?;
        // Read it back: what we wrote must parse.
        GgufFile::open(output)?;
    }
    summarize(spec, output, &sh, &tensors, &vocab, total_size, started)
}

/// The summary of the model just written.
fn summarize(
    spec: &ModelSpec,
    output: &Path,
    sh: &Shape,
    tensors: &[TensorPlan],
    vocab: &Vocab,
    file_bytes: u64,
    started: Instant,
) -> Result<ModelSummary, SynthError> {
    let mut tensor_total = 0u64;
    let mut token_embd_bytes = 0u64;
    let mut tied_output = true;
    // Bytes of experts a decode step does not read (a token uses `n_expert_used` of them).
    let mut unused_expert_bytes = 0u64;
    for t in tensors {
        let b = tensor_bytes(t)?;
        tensor_total += b;
        if t.dims.len() == 3 && sh.n_expert > 0 {
            unused_expert_bytes += b / sh.n_expert as u64 * (sh.n_expert - sh.n_expert_used) as u64;
        }
        match t.role {
            Role::TokenEmbd => token_embd_bytes = b,
            Role::Output => tied_output = false,
            _ => {}
        }
    }
    Ok(ModelSummary {
        path: output.to_owned(),
        arch: spec.arch.gguf_arch().to_owned(),
        ty: format!("{:?}", spec.ty).to_lowercase(),
        fill: format!("{:?}", spec.fill).to_lowercase(),
        layers: sh.n_layer,
        parameters: tensors.iter().map(|t| t.dims.iter().product::<u64>()).sum(),
        tensors: tensors.len() as u64,
        vocab_model: vocab.model.to_string(),
        vocab_learned: vocab.learned,
        file_bytes,
        tensor_bytes: tensor_total,
        token_embd_bytes,
        tied_output,
        decode_bytes_per_token: if tied_output {
            tensor_total
        } else {
            tensor_total - token_embd_bytes
        } - unused_expert_bytes,
        header_only: spec.header_only,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No rope scaling.
    fn no_rope() -> RopeScalingPlan {
        RopeScalingPlan::new("llama", 4096, false, None, None, None, None).unwrap()
    }

    #[test]
    fn q4_k_m_mix_follows_llama_cpp() {
        let sh = preset_shape(Arch::Llama, Preset::B8).unwrap();
        let p = plan(Arch::Llama, &sh, WeightType::Q4_K_M, &no_rope());
        let ty = |n: &str| p.iter().find(|t| t.name == n).unwrap().ty;
        assert_eq!(ty("output.weight"), GgmlType::Q6_K);
        assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.5.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.6.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.5.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.31.ffn_down.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.3.attn_q.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.3.attn_norm.weight"), GgmlType::F32);
        // Llama 3 8B: 8.03B parameters.
        let n: u64 = p.iter().map(|t| t.dims.iter().product::<u64>()).sum();
        assert!((8.0e9..8.1e9).contains(&(n as f64)), "{n}");
        // Gemma: tied embedding takes the output's type; 1152-wide rows fall back.
        let sh = preset_shape(Arch::Gemma3, Preset::B1).unwrap();
        let p = plan(Arch::Gemma3, &sh, WeightType::Q4_K_M, &no_rope());
        let ty = |n: &str| p.iter().find(|t| t.name == n).unwrap().ty;
        assert_eq!(ty("token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.1.attn_q.weight"), GgmlType::Q5_0);
        assert!(p.iter().all(|t| t.name != "output.weight"));
    }

    #[test]
    fn qwen2moe_preset_has_a_shared_expert_beside_the_routed_ones() {
        let sh = preset_shape(Arch::Qwen2Moe, Preset::A2_7B).unwrap();
        assert_eq!(
            (sh.n_expert, sh.n_expert_used, sh.n_ff_exp, sh.n_ff_shexp),
            (60, 4, 1408, 5632)
        );
        let p = plan(Arch::Qwen2Moe, &sh, WeightType::Q8_0, &no_rope());
        let t = |n: &str| p.iter().find(|t| t.name == n).unwrap();
        assert_eq!(t("blk.0.ffn_gate_exps.weight").dims, vec![2048, 1408, 60]);
        assert_eq!(t("blk.0.ffn_gate_shexp.weight").dims, vec![2048, 5632]);
        assert_eq!(t("blk.0.ffn_down_shexp.weight").dims, vec![5632, 2048]);
        assert_eq!(t("blk.0.ffn_gate_inp_shexp.weight").dims, vec![2048]);
        assert_eq!(t("blk.0.ffn_gate_inp_shexp.weight").ty, GgmlType::F32);
        assert_eq!(t("blk.23.attn_q.bias").ty, GgmlType::F32);
        assert!(p.iter().all(|t| !t.name.contains("attn_q_norm")));
        // Qwen1.5-MoE-A2.7B: 14.3B parameters.
        let n: u64 = p.iter().map(|t| t.dims.iter().product::<u64>()).sum();
        assert!((14.2e9..14.4e9).contains(&(n as f64)), "{n}");
        assert!(preset_shape(Arch::Qwen2Moe, Preset::A3B30).is_err());
    }

    #[test]
    fn moe_presets_write_3d_experts_and_an_f32_router() {
        let sh = preset_shape(Arch::Qwen3Moe, Preset::A3B30).unwrap();
        assert_eq!((sh.n_expert, sh.n_expert_used, sh.n_ff_exp), (128, 8, 768));
        let p = plan(Arch::Qwen3Moe, &sh, WeightType::Q4_K_M, &no_rope());
        let t = |n: &str| p.iter().find(|t| t.name == n).unwrap();
        assert_eq!(t("blk.0.ffn_gate_exps.weight").dims, vec![2048, 768, 128]);
        assert_eq!(t("blk.0.ffn_down_exps.weight").dims, vec![768, 2048, 128]);
        assert_eq!(t("blk.0.ffn_gate_inp.weight").ty, GgmlType::F32);
        assert_eq!(t("blk.0.ffn_down_exps.weight").ty, GgmlType::Q6_K);
        assert!(p.iter().all(|t| t.name != "blk.0.ffn_gate.weight"));
        // Qwen3-30B-A3B: 30.5B parameters.
        let n: u64 = p.iter().map(|t| t.dims.iter().product::<u64>()).sum();
        assert!((30.4e9..30.6e9).contains(&(n as f64)), "{n}");
        // Mixtral: a llama file; 8 experts give attn_v and attn_k Q8_0.
        let sh = preset_shape(Arch::Mixtral, Preset::X8_7B).unwrap();
        let p = plan(Arch::Mixtral, &sh, WeightType::Q4_K_M, &no_rope());
        let ty = |n: &str| p.iter().find(|t| t.name == n).unwrap().ty;
        assert_eq!(ty("blk.3.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.3.attn_k.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.3.attn_output.weight"), GgmlType::Q5_K);
        let n: u64 = p.iter().map(|t| t.dims.iter().product::<u64>()).sum();
        assert!(
            (46.6e9..46.8e9).contains(&(n as f64)),
            "Mixtral 8x7B: 46.7B, not {n}"
        );
        assert_eq!(Arch::Mixtral.gguf_arch(), "llama");
        assert!(preset_shape(Arch::Mixtral, Preset::A3B30).is_err());
    }

    #[test]
    fn k_quant_and_iq_mixes_follow_llama_cpp() {
        // Llama 3 8B: 32 layers, 4 query heads per KV head.
        let sh = preset_shape(Arch::Llama, Preset::B8).unwrap();
        let types = |wt| {
            let p = plan(Arch::Llama, &sh, wt, &no_rope());
            move |n: &str| p.iter().find(|t| t.name == n).unwrap().ty
        };
        let ty = types(WeightType::Q2_K);
        assert_eq!(ty("blk.3.attn_q.weight"), GgmlType::Q2_K);
        assert_eq!(ty("blk.3.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q3_K);
        assert_eq!(ty("blk.3.attn_output.weight"), GgmlType::Q3_K);
        assert_eq!(ty("output.weight"), GgmlType::Q6_K);
        let ty = types(WeightType::Q3_K_M);
        assert_eq!(ty("blk.1.attn_v.weight"), GgmlType::Q5_K);
        assert_eq!(ty("blk.2.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q5_K);
        assert_eq!(ty("blk.2.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.2.attn_output.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.2.ffn_up.weight"), GgmlType::Q3_K);
        let ty = types(WeightType::Q4_K_S);
        assert_eq!(ty("blk.3.attn_v.weight"), GgmlType::Q5_K);
        assert_eq!(ty("blk.4.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q5_K);
        assert_eq!(ty("blk.4.ffn_down.weight"), GgmlType::Q4_K);
        let ty = types(WeightType::Q5_K_M);
        assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.5.attn_v.weight"), GgmlType::Q5_K);
        assert_eq!(ty("blk.6.ffn_down.weight"), GgmlType::Q6_K);
        for wt in [WeightType::IQ4_NL, WeightType::IQ4_XS] {
            let ty = types(wt);
            assert_eq!(ty("blk.9.attn_q.weight"), wt.base());
            assert_eq!(ty("blk.9.attn_v.weight"), GgmlType::Q5_K);
            assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q5_K);
            assert_eq!(ty("blk.4.ffn_down.weight"), wt.base());
            assert_eq!(ty("output.weight"), GgmlType::Q6_K);
        }
        let ty = types(WeightType::IQ3_XXS);
        assert_eq!(ty("token_embd.weight"), GgmlType::IQ3_S);
        assert_eq!(ty("blk.3.attn_q.weight"), GgmlType::IQ2_S);
        assert_eq!(ty("blk.3.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.4.ffn_down.weight"), GgmlType::Q3_K);
        assert_eq!(ty("blk.4.attn_output.weight"), GgmlType::IQ3_S);
        assert_eq!(ty("blk.4.ffn_up.weight"), GgmlType::IQ3_XXS);
        assert_eq!(ty("output.weight"), GgmlType::Q5_K);
        let ty = types(WeightType::IQ3_XS);
        assert_eq!(ty("blk.3.ffn_up.weight"), GgmlType::IQ3_S);
        assert_eq!(ty("blk.4.ffn_up.weight"), GgmlType::IQ3_XXS);
        assert_eq!(ty("blk.28.ffn_gate.weight"), GgmlType::IQ3_S);
        assert_eq!(ty("blk.4.attn_k.weight"), GgmlType::IQ3_XXS);
        let ty = types(WeightType::IQ2_M);
        assert_eq!(ty("blk.9.attn_q.weight"), GgmlType::IQ2_S);
        assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::IQ3_S);
        assert_eq!(ty("blk.9.attn_output.weight"), GgmlType::IQ3_S);
        let ty = types(WeightType::IQ3_M);
        assert_eq!(ty("blk.9.attn_v.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.9.attn_output.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.9.ffn_down.weight"), GgmlType::IQ3_S);
        let ty = types(WeightType::TQ1_0);
        assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::TQ1_0);
        let ty = types(WeightType::MXFP4);
        assert_eq!(ty("token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(ty("output.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::MXFP4);
        // Llama 3 70B: llama.cpp's 70B rule lifts a Q3_K/Q4_K attn_v to Q5_K.
        let sh70 = preset_shape(Arch::Llama, Preset::B70).unwrap();
        let p = plan(Arch::Llama, &sh70, WeightType::Q4_K_M, &no_rope());
        let ty70 = |n: &str| p.iter().find(|t| t.name == n).unwrap().ty;
        assert_eq!(ty70("blk.20.attn_v.weight"), GgmlType::Q5_K);
        assert_eq!(ty70("blk.0.attn_v.weight"), GgmlType::Q6_K);
        assert_eq!(ty70("blk.20.attn_q.weight"), GgmlType::Q4_K);
        // The IQ1/IQ2 mixes (header only): Q2_K token embedding, Q5_K output, Q4_K attn_v with
        // 4+ query heads per KV head (no 70B bump), Q2_K ffn_down on the first 1/8 of the layers.
        for wt in [
            WeightType::IQ2_XXS,
            WeightType::IQ2_XS,
            WeightType::IQ1_S,
            WeightType::IQ1_M,
        ] {
            let p = plan(Arch::Llama, &sh70, wt, &no_rope());
            let ty = |n: &str| p.iter().find(|t| t.name == n).unwrap().ty;
            assert_eq!(ty("token_embd.weight"), GgmlType::Q2_K);
            assert_eq!(ty("output.weight"), GgmlType::Q5_K);
            assert_eq!(ty("blk.40.attn_v.weight"), GgmlType::Q4_K);
            assert_eq!(ty("blk.2.ffn_down.weight"), GgmlType::Q2_K);
            assert_eq!(ty("blk.40.ffn_down.weight"), wt.base());
            assert_eq!(ty("blk.40.attn_q.weight"), wt.base());
            let attn_output = if matches!(wt, WeightType::IQ1_S | WeightType::IQ1_M) {
                GgmlType::IQ2_XXS
            } else {
                wt.base()
            };
            assert_eq!(ty("blk.40.attn_output.weight"), attn_output);
            assert!(!wt.has_quantizer());
        }
        // Qwen3 1.7B: 2 query heads per KV head, so Q2_K's attn_v is Q3_K.
        let sh = preset_shape(Arch::Qwen3, Preset::B1).unwrap();
        let p = plan(Arch::Qwen3, &sh, WeightType::Q2_K, &no_rope());
        let v = p.iter().find(|t| t.name == "blk.0.attn_v.weight").unwrap();
        assert_eq!(v.ty, GgmlType::Q3_K);
        // Gemma 3 1B: 1152-wide rows take the fallbacks (IQ4_XS -> IQ4_NL, Q2_K / Q3_K / TQ ->
        // Q4_0, Q5_K -> Q5_1).
        let sh = preset_shape(Arch::Gemma3, Preset::B1).unwrap();
        let ty = |wt, n: &str| {
            let p = plan(Arch::Gemma3, &sh, wt, &no_rope());
            p.iter().find(|t| t.name == n).unwrap().ty
        };
        assert_eq!(
            ty(WeightType::IQ4_XS, "blk.1.attn_q.weight"),
            GgmlType::IQ4_NL
        );
        assert_eq!(
            ty(WeightType::Q3_K_S, "blk.1.attn_q.weight"),
            GgmlType::Q4_0
        );
        assert_eq!(ty(WeightType::TQ2_0, "blk.1.ffn_up.weight"), GgmlType::Q4_0);
        assert_eq!(
            ty(WeightType::Q5_K_S, "blk.1.attn_q.weight"),
            GgmlType::Q5_1
        );
        assert_eq!(ty(WeightType::Q2_K, "token_embd.weight"), GgmlType::Q8_0);
    }

    #[test]
    fn rows_are_deterministic_and_scaled() {
        let t = TensorPlan {
            name: "x".into(),
            dims: vec![256, 64],
            role: Role::FfnGateUp,
            ty: GgmlType::F32,
            std: 0.02,
            fixed: None,
        };
        let a = encode_rows(&t, 3, 7, 0..64).unwrap();
        let b = encode_rows(&t, 3, 7, 32..64).unwrap();
        assert_eq!(&a[32 * 256 * 4..], &b[..]);
        let vals: Vec<f32> = a
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mean = vals.iter().sum::<f32>() / vals.len() as f32;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / vals.len() as f32;
        assert!(mean.abs() < 0.002, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.002, "{}", var.sqrt());
        assert_ne!(a, encode_rows(&t, 3, 8, 0..64).unwrap());
    }

    #[test]
    fn tiled_fill_repeats_pool_rows_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let (tiled, random) = (out("tiled.gguf"), out("random.gguf"));
        let common = ModelSpec {
            ty: WeightType::Q4_K_M,
            seed: 5,
            ..ModelSpec::new(Arch::Llama)
        };
        assert_eq!(common.fill, Fill::Random, "the default fill is unchanged");
        write_model(&common, Path::new(&random)).unwrap();
        let a = ModelSpec {
            fill: Fill::Tiled,
            threads: Some(2),
            ..common
        };
        let sh = a.shape().unwrap();
        write_model(&a, Path::new(&tiled)).unwrap();

        let (ft, fr) = (
            GgufFile::open(&tiled).unwrap(),
            GgufFile::open(&random).unwrap(),
        );
        ft.check_supported().unwrap();
        assert_eq!(ft.file_size(), fr.file_size());
        let p = plan(Arch::Llama, &sh, WeightType::Q4_K_M, &no_rope());
        assert_eq!(ft.tensors().len(), p.len());
        let mut big = 0;
        for (index, t) in p.iter().enumerate() {
            let info = ft.tensor(&t.name).unwrap();
            assert_eq!((&info.dims, info.ty), (&t.dims, t.ty), "{}", t.name);
            let data = ft.tensor_data(info).unwrap();
            assert_eq!(data.len() as u64, tensor_bytes(t).unwrap(), "{}", t.name);
            assert_eq!(
                (
                    &fr.tensor(&t.name).unwrap().dims,
                    fr.tensor(&t.name).unwrap().ty
                ),
                (&t.dims, t.ty)
            );
            let rows = n_rows(t);
            let pool = encode_rows(t, index, 5, 0..pool_rows(rows)).unwrap();
            let rb = row_bytes(t).unwrap() as usize;
            if rows <= TILE_POOL_ROWS {
                // Small tensors (norms, the tiny shape's k/v) equal the default fill.
                assert_eq!(data, &pool[..], "{}", t.name);
                assert_eq!(data, fr.tensor_data_by_name(&t.name).unwrap(), "{}", t.name);
                continue;
            }
            big += 1;
            // Pool rows are the default fill's first rows.
            let random_data = fr.tensor_data_by_name(&t.name).unwrap();
            assert_eq!(&random_data[..pool.len()], &pool[..], "{}", t.name);
            let mut used = vec![false; TILE_POOL_ROWS as usize];
            for (r, row) in data.chunks_exact(rb).enumerate() {
                let j = pool_pick(5, index, r as u64, rows) as usize;
                assert_eq!(row, &pool[j * rb..(j + 1) * rb], "{} row {r}", t.name);
                used[j] = true;
            }
            let used = used.iter().filter(|&&u| u).count();
            assert!(
                used > TILE_POOL_ROWS as usize / 2,
                "{}: {used} pool rows used",
                t.name
            );
            assert_ne!(data, random_data, "{}", t.name);
        }
        assert!(big >= 8, "only {big} tensors have more rows than the pool");

        // The values decode finite and scaled like the default fill's.
        let emb = ft.tensor("token_embd.weight").unwrap();
        let mut vals = vec![0f32; emb.n_elements() as usize];
        llmd_quant::dequantize(emb.ty, ft.tensor_data(emb).unwrap(), &mut vals).unwrap();
        assert!(vals.iter().all(|v| v.is_finite()));
        let rms = (vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32).sqrt();
        assert!((rms - WEIGHT_STD).abs() < 0.005, "{rms}");
    }

    #[test]
    fn summary_counts_the_bytes_a_decode_step_reads() {
        let dir = tempfile::tempdir().unwrap();
        for (arch, tied) in [(Arch::Llama, false), (Arch::Gemma3, true)] {
            let a = ModelSpec {
                ty: WeightType::Q8_0,
                header_only: true,
                ..ModelSpec::new(arch)
            };
            let output = dir.path().join(format!("{}.gguf", arch.name()));
            let sh = a.shape().unwrap();
            let p = plan(a.arch, &sh, a.ty, &a.rope_plan(&sh).unwrap());
            let vocab = vocab::build(a.vocab_kind(), Flavor::Llama, sh.n_vocab as usize).unwrap();
            let s = summarize(&a, &output, &sh, &p, &vocab, 1, Instant::now()).unwrap();
            assert_eq!(s.tied_output, tied);
            let total: u64 = p.iter().map(|t| tensor_bytes(t).unwrap()).sum();
            let emb = sh.n_vocab as u64 * sh.n_embd as u64 / 32 * 34;
            assert_eq!((s.tensor_bytes, s.token_embd_bytes), (total, emb));
            let expect = if tied { total } else { total - emb };
            assert_eq!(s.decode_bytes_per_token, expect);
            assert_eq!(s.tensors, p.len() as u64);
        }
    }
}
