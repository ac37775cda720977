//! Rope scaling of synthetic models: the metadata keys and frequency-factor tensors that
//! llama.cpp's converters write for each kind of scaling (`--rope-scaling`, `--rope-freqs`).
//!
//! - `--rope-freqs` (llama): Llama 3.1's `rope_freqs.weight`, computed as the converter does for
//!   the `llama3` rope type (factor 8, low/high frequency factors 1 and 4, original context
//!   8192; `--rope-factor` and `--rope-orig-ctx` override the factor and the original context,
//!   so a tiny model's short sequences reach the scaled band); no scaling keys, as in real
//!   Llama 3.1 files.
//! - `--rope-scaling linear`: `rope.scaling.type = linear` and `rope.scaling.factor`.
//! - `--rope-scaling yarn`: also `rope.scaling.original_context_length`.
//! - `--rope-scaling longrope`: Phi-3's long and short factor tensors, the original context and
//!   the attention factor `sqrt(1 + ln(s) / ln(original))` with `s = context / original`, as
//!   the Phi-3 converter writes them (it writes no scaling type for phi3; a llama file says
//!   `longrope`).

use super::SynthError;
use crate::MetadataValue;

/// `--rope-scaling`: the rope scaling kinds `make-model` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RopeScalingArg {
    /// Positions divided by the factor.
    Linear,
    /// YaRN over an original context.
    Yarn,
    /// Phi-3's long/short per-dimension factors.
    Longrope,
}

/// Llama 3.1's `rope_scaling` (type `llama3`): the factor.
const LLAMA3_FACTOR: f32 = 8.0;
/// Llama 3.1's low frequency factor.
const LLAMA3_LOW_FREQ_FACTOR: f64 = 1.0;
/// Llama 3.1's high frequency factor.
const LLAMA3_HIGH_FREQ_FACTOR: f64 = 4.0;
/// Llama 3.1's original context.
const LLAMA3_ORIGINAL_CONTEXT: u32 = 8192;
/// The default `--rope-factor` of linear and YaRN scaling.
const DEFAULT_FACTOR: f32 = 4.0;
/// The largest long factor of the synthetic Phi-3 long factors (Phi-3.5-mini's reach 50-60).
const LONGROPE_MAX_LONG: f64 = 40.0;
/// The largest short factor (Phi-3.5-mini's stay near 1).
const LONGROPE_MAX_SHORT: f64 = 1.2;

/// The rope scaling a synthetic model carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScalingPlan {
    /// `--rope-freqs`.
    pub freqs: bool,
    /// `--rope-scaling`.
    pub scaling: Option<RopeScalingArg>,
    /// `rope.scaling.factor` (linear, yarn), or the `llama3` factor of `rope_freqs`.
    pub factor: f32,
    /// `rope.scaling.original_context_length` (yarn, longrope), or the `llama3` original
    /// context of `rope_freqs`.
    pub original_context: u32,
    /// `rope.scaling.attn_factor`, if written.
    pub attn_factor: Option<f32>,
}

impl RopeScalingPlan {
    /// The plan for `arch_name`'s model of training context `n_ctx` from the options:
    /// `factor` defaults to 4 (8 for `rope_freqs`), the original context to `n_ctx / factor`
    /// (yarn), `n_ctx / 32` (longrope) or 8192 (`rope_freqs`), the longrope attention factor to
    /// Phi-3's.
    pub fn new(
        arch_name: &str,
        n_ctx: u32,
        freqs: bool,
        scaling: Option<RopeScalingArg>,
        factor: Option<f32>,
        original_context: Option<u32>,
        attn_factor: Option<f32>,
    ) -> Result<Self, SynthError> {
        if freqs && arch_name != "llama" {
            return Err(SynthError::Spec(
                "--rope-freqs writes Llama 3.1's rope_freqs.weight: llama models only".into(),
            ));
        }
        if freqs && scaling.is_some() {
            return Err(SynthError::Spec("--rope-freqs and --rope-scaling do not go together (Llama 3.1 has no scaling keys)".into()));
        }
        match scaling {
            Some(RopeScalingArg::Longrope) if !matches!(arch_name, "llama" | "phi3") => {
                return Err(SynthError::Spec(
                    "--rope-scaling longrope: phi3 and llama models only".into(),
                ))
            }
            Some(RopeScalingArg::Linear | RopeScalingArg::Yarn) if matches!(arch_name, "phi3") => {
                return Err(SynthError::Spec(
                    "llama.cpp's phi3 models take only longrope scaling".into(),
                ))
            }
            _ => {}
        }
        let factor = factor.unwrap_or(if freqs { LLAMA3_FACTOR } else { DEFAULT_FACTOR });
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(SynthError::Spec(format!(
                "--rope-factor must be at least 1, not {factor}"
            )));
        }
        let original_context = match (original_context, scaling) {
            (Some(n), _) => n,
            (None, _) if freqs => LLAMA3_ORIGINAL_CONTEXT,
            (None, Some(RopeScalingArg::Longrope)) => n_ctx / 32,
            (None, _) => (n_ctx as f32 / factor) as u32,
        };
        if (freqs || scaling.is_some()) && original_context == 0 {
            return Err(SynthError::Spec(
                "the original context (--rope-orig-ctx) must be nonzero".into(),
            ));
        }
        if let Some(a) = attn_factor.filter(|a| !(a.is_finite() && *a > 0.0)) {
            return Err(SynthError::Spec(format!(
                "--rope-attn-factor must be positive, not {a}"
            )));
        }
        let attn_factor = match scaling {
            Some(RopeScalingArg::Longrope) => attn_factor.or_else(|| {
                let s = f64::from(n_ctx) / f64::from(original_context);
                Some(if s > 1.0 {
                    (1.0 + s.ln() / f64::from(original_context).ln()).sqrt() as f32
                } else {
                    1.0
                })
            }),
            _ => attn_factor,
        };
        Ok(RopeScalingPlan {
            freqs,
            scaling,
            factor,
            original_context,
            attn_factor,
        })
    }

    /// The metadata keys (without the `{arch}.` prefix) and values to write.
    pub fn metadata(&self, arch_name: &str) -> Vec<(&'static str, MetadataValue)> {
        use MetadataValue as V;
        let mut m = Vec::new();
        match self.scaling {
            Some(RopeScalingArg::Linear) => {
                m.push(("rope.scaling.type", V::String("linear".into())));
                m.push(("rope.scaling.factor", V::F32(self.factor)));
            }
            Some(RopeScalingArg::Yarn) => {
                m.push(("rope.scaling.type", V::String("yarn".into())));
                m.push(("rope.scaling.factor", V::F32(self.factor)));
                m.push((
                    "rope.scaling.original_context_length",
                    V::U32(self.original_context),
                ));
            }
            Some(RopeScalingArg::Longrope) => {
                if arch_name != "phi3" {
                    m.push(("rope.scaling.type", V::String("longrope".into())));
                }
                m.push((
                    "rope.scaling.original_context_length",
                    V::U32(self.original_context),
                ));
            }
            None => {}
        }
        if let Some(a) = self.attn_factor {
            m.push(("rope.scaling.attn_factor", V::F32(a)));
        }
        m
    }

    /// The factor tensors to write: name and values (`n_dims / 2` each).
    pub fn tensors(&self, n_dims: u32, freq_base: f32) -> Vec<(&'static str, Vec<f32>)> {
        let pairs = (n_dims / 2) as usize;
        if self.freqs {
            let freqs = llama3_rope_freqs(n_dims, freq_base, self.factor, self.original_context);
            return vec![("rope_freqs.weight", freqs)];
        }
        match self.scaling {
            Some(RopeScalingArg::Longrope) => vec![
                (
                    "rope_factors_long.weight",
                    ramp_factors(pairs, LONGROPE_MAX_LONG),
                ),
                (
                    "rope_factors_short.weight",
                    ramp_factors(pairs, LONGROPE_MAX_SHORT),
                ),
            ],
            _ => Vec::new(),
        }
    }
}

/// Llama 3.1's per-pair frequency factors for heads of `n_dims` rotated dimensions, as
/// llama.cpp's converter computes them from the `llama3` rope scaling with `factor` and
/// `original` context (Llama 3.1: 8 and 8192): 1 for wavelengths below
/// `original / high_freq_factor`, the factor above `original / low_freq_factor`, a smooth
/// interpolation between.
pub fn llama3_rope_freqs(n_dims: u32, freq_base: f32, factor: f32, original: u32) -> Vec<f32> {
    let (factor, original) = (f64::from(factor), f64::from(original));
    let low_wavelen = original / LLAMA3_LOW_FREQ_FACTOR;
    let high_wavelen = original / LLAMA3_HIGH_FREQ_FACTOR;
    (0..n_dims)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / f64::from(freq_base).powf(f64::from(i) / f64::from(n_dims));
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - LLAMA3_LOW_FREQ_FACTOR)
                    / (LLAMA3_HIGH_FREQ_FACTOR - LLAMA3_LOW_FREQ_FACTOR);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// Synthetic long/short factors rising from 1 at the highest frequency to `max` at the lowest
/// (the shape of Phi-3's).
fn ramp_factors(pairs: usize, max: f64) -> Vec<f32> {
    let last = pairs.saturating_sub(1).max(1) as f64;
    (0..pairs)
        .map(|i| max.powf((i as f64 / last).powi(2)) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama31_factors_span_one_to_eight() {
        // Llama 3.1 8B: 64 pairs, base 500000.
        let f = llama3_rope_freqs(128, 500_000.0, 8.0, 8192);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0, "high frequencies are kept");
        assert_eq!(f[63], 8.0, "low frequencies are divided by the factor");
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0), "a smooth band");
    }

    #[test]
    fn plans_refuse_what_llama_cpp_would_not_load() {
        let plan = |arch, freqs, scaling| {
            RopeScalingPlan::new(arch, 4096, freqs, scaling, None, None, None)
        };
        assert!(plan("qwen2", true, None).is_err());
        assert!(plan("qwen2", false, Some(RopeScalingArg::Longrope)).is_err());
        assert!(plan("phi3", false, Some(RopeScalingArg::Yarn)).is_err());
        let freqs = plan("llama", true, None).unwrap();
        assert_eq!((freqs.factor, freqs.original_context), (8.0, 8192));
        assert!(
            freqs.metadata("llama").is_empty(),
            "Llama 3.1 files carry no scaling keys"
        );
        let yarn = plan("qwen2", false, Some(RopeScalingArg::Yarn)).unwrap();
        assert_eq!((yarn.factor, yarn.original_context), (4.0, 1024));
        let long = plan("phi3", false, Some(RopeScalingArg::Longrope)).unwrap();
        assert_eq!(long.original_context, 128);
        let a = long.attn_factor.unwrap();
        assert!((a - (1.0 + 32f32.ln() / 128f32.ln()).sqrt()).abs() < 1e-6);
        assert!(long
            .metadata("phi3")
            .iter()
            .all(|(k, _)| *k != "rope.scaling.type"));
        let t = long.tensors(64, 10_000.0);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|(_, v)| v.len() == 32 && v[0] == 1.0));
    }
}
