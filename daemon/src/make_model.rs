//! `llmd make-model`: the command line of the synthetic-model writer ([`llmd_gguf::synth`]). Its
//! options map one to one onto a [`ModelSpec`]; this module adds the output path, the line it
//! prints on stderr and the `--json` summary on stdout.

use std::path::PathBuf;

use clap::Args;
use llmd_gguf::synth::{
    write_model, Arch, Fill, ModelSpec, ModelSummary, Preset, RopeScalingArg, SynthError,
    VocabKind, WeightType,
};

/// Arguments of `llmd make-model`.
#[derive(Debug, Clone, Args)]
pub struct MakeModelArgs {
    /// Architecture to write.
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// Shape preset; the explicit shape options below override its fields.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Number of transformer layers.
    #[arg(long)]
    pub layers: Option<u32>,
    /// Embedding (hidden) size.
    #[arg(long)]
    pub embd: Option<u32>,
    /// Feed-forward size.
    #[arg(long)]
    pub ff: Option<u32>,
    /// Attention heads.
    #[arg(long)]
    pub heads: Option<u32>,
    /// Key/value heads (grouped-query attention).
    #[arg(long)]
    pub kv_heads: Option<u32>,
    /// Head dimension (default: the preset's, or embd / heads when either is given).
    #[arg(long)]
    pub head_dim: Option<u32>,
    /// Vocabulary size.
    #[arg(long)]
    pub vocab: Option<u32>,
    /// Training context length written to the metadata.
    #[arg(long)]
    pub ctx: Option<u32>,
    /// RoPE frequency base (default: the preset's).
    #[arg(long)]
    pub rope_base: Option<f32>,
    /// Write Llama 3.1's `rope_freqs.weight` (the `llama3` rope scaling: factor 8, low/high
    /// frequency factors 1/4, original context 8192); llama only.
    #[arg(long)]
    pub rope_freqs: bool,
    /// Rope scaling keys (and, for longrope, Phi-3's long/short factor tensors) to write.
    #[arg(long, value_enum)]
    pub rope_scaling: Option<RopeScalingArg>,
    /// `rope.scaling.factor` of linear and YaRN scaling (default 4); with `--rope-freqs`, the
    /// `llama3` factor (default 8).
    #[arg(long)]
    pub rope_factor: Option<f32>,
    /// `rope.scaling.original_context_length` of YaRN and longrope (default: the context over
    /// the factor for YaRN, over 32 for longrope); with `--rope-freqs`, the `llama3` original
    /// context (default 8192).
    #[arg(long)]
    pub rope_orig_ctx: Option<u32>,
    /// `attn_logit_softcapping` of gemma2 (default 50, Gemma 2's).
    #[arg(long)]
    pub attn_softcap: Option<f32>,
    /// `final_logit_softcapping` of gemma2 (default 30, Gemma 2's) or gemma3 (default: none).
    #[arg(long)]
    pub final_softcap: Option<f32>,
    /// `rope.scaling.attn_factor` (default: none; Phi-3's for longrope).
    #[arg(long)]
    pub rope_attn_factor: Option<f32>,
    /// Weight type.
    #[arg(long = "type", value_enum, default_value = "f16")]
    pub ty: WeightType,
    /// Tokenizer family (default: SentencePiece for gemma3, byte-level BPE otherwise).
    #[arg(long, value_enum)]
    pub vocab_kind: Option<VocabKind>,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write only the header (every tensor info, no data), like a partial download.
    #[arg(long)]
    pub header_only: bool,
    /// Worker threads for generating and quantizing (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How rows are filled: `random` draws every row; `tiled` repeats a small pool of random
    /// rows per tensor, writing at disk speed (for benchmark-size models).
    #[arg(long, value_enum, default_value = "random")]
    pub fill: Fill,
    /// Print a one-line JSON summary on stdout (sizes, and the bytes of weights a decode step
    /// reads).
    #[arg(long)]
    pub json: bool,
    /// Output file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

impl MakeModelArgs {
    /// The model these options describe.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: self.arch,
            preset: self.preset,
            layers: self.layers,
            embd: self.embd,
            ff: self.ff,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            vocab: self.vocab,
            ctx: self.ctx,
            rope_base: self.rope_base,
            rope_freqs: self.rope_freqs,
            rope_scaling: self.rope_scaling,
            rope_factor: self.rope_factor,
            rope_orig_ctx: self.rope_orig_ctx,
            attn_softcap: self.attn_softcap,
            final_softcap: self.final_softcap,
            rope_attn_factor: self.rope_attn_factor,
            ty: self.ty,
            vocab_kind: self.vocab_kind,
            seed: self.seed,
            header_only: self.header_only,
            threads: self.threads,
            fill: self.fill,
        }
    }
}

/// Why `llmd make-model` failed.
#[derive(Debug, thiserror::Error)]
pub enum MakeModelError {
    /// The model could not be written.
    #[error(transparent)]
    Synth(#[from] SynthError),
    /// The `--json` summary could not be printed.
    #[error("printing the summary: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `--json` prints: the written model's sizes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MakeModelSummary {
    /// The output file.
    pub path: String,
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
    /// Size of the file (of the whole file even with `--header-only`).
    pub file_bytes: u64,
    /// Bytes of all tensor data (no padding).
    pub tensor_bytes: u64,
    /// Bytes of `token_embd.weight`.
    pub token_embd_bytes: u64,
    /// Whether the output projection is tied to the token embeddings (no `output.weight`).
    pub tied_output: bool,
    /// Bytes of weights one decode step reads: every tensor except the token embeddings, of
    /// which only the looked-up rows are read, unless they double as the output projection.
    pub decode_bytes_per_token: u64,
    /// Whether only the header was written.
    pub header_only: bool,
    /// Seconds taken.
    pub seconds: f64,
}

impl From<&ModelSummary> for MakeModelSummary {
    fn from(s: &ModelSummary) -> Self {
        MakeModelSummary {
            path: s.path.display().to_string(),
            arch: s.arch.clone(),
            ty: s.ty.clone(),
            fill: s.fill.clone(),
            layers: s.layers,
            parameters: s.parameters,
            tensors: s.tensors,
            file_bytes: s.file_bytes,
            tensor_bytes: s.tensor_bytes,
            token_embd_bytes: s.token_embd_bytes,
            tied_output: s.tied_output,
            decode_bytes_per_token: s.decode_bytes_per_token,
            header_only: s.header_only,
            seconds: s.seconds,
        }
    }
}

/// Runs `llmd make-model`: writes the model, says so on stderr and, with `--json`, prints the
/// summary on stdout.
pub fn run(args: MakeModelArgs) -> Result<ModelSummary, MakeModelError> {
    let s = write_model(&args.spec(), &args.output)?;
    eprintln!(
        "wrote {}: {} {}, {} layers, {} tensors, {:.3}B parameters, {} vocabulary ({} learned), {} bytes{} in {:.1}s",
        s.path.display(),
        s.arch,
        s.ty,
        s.layers,
        s.tensors,
        s.parameters as f64 / 1e9,
        s.vocab_model,
        s.vocab_learned,
        if s.header_only { 0 } else { s.file_bytes },
        if s.header_only { " (header only)" } else { "" },
        s.seconds
    );
    if args.json {
        println!("{}", serde_json::to_string(&MakeModelSummary::from(&s))?);
    }
    Ok(s)
}
