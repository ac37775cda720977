//! Row and elementwise f32 operations of the forward passes (llama, qwen2, qwen3, gemma3),
//! written to give the same floats as ggml's CPU ops: the same formulas, the same precision for
//! intermediate sums, the same epsilon placement.
//!
//! - [`rms_norm`]: `x * (1 / sqrt(mean(x²) + eps)) * w`, the sum of squares in f64 as ggml does.
//!   GGUF stores Gemma's norm weights with the `+ 1` already added by the converter, so the
//!   weights multiply plainly for every architecture.
//! - [`rope`]: ggml's rope with its angle cache (`theta *= powf(base, -2 / n_dims)` per pair),
//!   normal (adjacent pairs) and neox (halves) layouts, YaRN scaling and frequency factors.
//! - [`softmax`]: max subtraction, f64 sum, scale by `1 / sum`.
//! - [`gelu`]: ggml's tanh approximation through its f16 lookup table (`GGML_GELU_FP16`).
//! - [`silu`], elementwise [`add`], [`mul`], [`scale`], and [`softcap`].

use std::sync::OnceLock;

use half::f16;

/// `out = x / sqrt(mean(x²) + eps) * weight`.
///
/// # Panics
/// If the lengths differ.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm length mismatch"
    );
    let scale = rms_scale(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * g;
    }
}

/// [`rms_norm`] in place.
///
/// # Panics
/// If the lengths differ.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(x.len(), weight.len(), "rms_norm length mismatch");
    let scale = rms_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(weight) {
        *v = *v * scale * g;
    }
}

/// `1 / sqrt(mean(x²) + eps)`: squares in f32, summed in f64, the mean rounded to f32.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len().max(1) as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// How rope pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs `(2i, 2i + 1)` (llama).
    Normal,
    /// Halves `(i, i + n_dims / 2)` (qwen2, qwen3, gemma3: GPT-NeoX style).
    Neox,
}

/// Rope parameters, as `ggml_rope_ext` takes them (the frequency factors, a tensor, are passed
/// beside them). A small `Copy` value: the backends' rope op takes it as is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// The pairing layout.
    pub mode: RopeMode,
    /// Rotated dimensions per head (even, at most the head size); the rest pass through.
    pub n_dims: usize,
    /// `rope.freq_base` (per layer: sliding-window layers may have their own).
    pub freq_base: f32,
    /// `1 / rope.scaling.factor` for linear and YaRN scaling, 1 otherwise.
    pub freq_scale: f32,
    /// YaRN extrapolation mix: 1 with YaRN scaling, 0 disables YaRN.
    pub ext_factor: f32,
    /// Magnitude scale of cos/sin (llama.cpp's `yarn_attn_factor`: 1 normally, the file's
    /// `rope.scaling.attn_factor` for Phi-3's long-context models).
    pub attn_factor: f32,
    /// YaRN `beta_fast` (32 in llama.cpp).
    pub beta_fast: f32,
    /// YaRN `beta_slow` (1 in llama.cpp).
    pub beta_slow: f32,
    /// The training context length YaRN corrects for (`rope.scaling.original_context_length`).
    pub n_ctx_orig: usize,
}

impl RopeParams {
    /// Plain rope: no scaling, no YaRN.
    pub fn new(mode: RopeMode, n_dims: usize, freq_base: f32) -> Self {
        RopeParams {
            mode,
            n_dims,
            freq_base,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 0,
        }
    }

    /// ggml's YaRN correction range `[start, end]` in dimension pairs
    /// (`ggml_rope_yarn_corr_dims`).
    pub fn corr_dims(&self) -> [f32; 2] {
        let n_dims = self.n_dims as f32;
        let corr_dim = |n_rot: f32| {
            n_dims * (self.n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * self.freq_base.ln())
        };
        let start = corr_dim(self.beta_fast).floor();
        let end = corr_dim(self.beta_slow).ceil();
        [start.max(0.0), end.min(n_dims - 1.0)]
    }
}

/// Fills `cache` (length `n_dims`) with `(cos, sin)` pairs of each rotated pair at position
/// `pos`, exactly as ggml's `ggml_rope_cache_init`: `theta` starts at `pos` and is multiplied by
/// `powf(freq_base, -2 / n_dims)` after each pair.
///
/// `freq_factors` (rope_freqs), when given, divides each pair's angle (length `n_dims / 2`).
///
/// # Panics
/// If `cache.len() != n_dims` or `freq_factors` is too short.
pub fn rope_cache(p: &RopeParams, pos: i32, freq_factors: Option<&[f32]>, cache: &mut [f32]) {
    assert_eq!(cache.len(), p.n_dims, "rope cache length must be n_dims");
    if let Some(ff) = freq_factors {
        assert!(
            ff.len() >= p.n_dims / 2,
            "rope freq_factors shorter than n_dims / 2"
        );
    }
    let theta_scale = p.freq_base.powf(-2.0 / p.n_dims as f32);
    let corr = p.corr_dims();
    let mut theta = pos as f32;
    for i0 in (0..p.n_dims).step_by(2) {
        let ff = freq_factors.map_or(1.0, |f| f[i0 / 2]);
        let theta_extrap = theta / ff;
        let theta_interp = p.freq_scale * theta_extrap;
        let mut angle = theta_interp;
        let mut mscale = p.attn_factor;
        if p.ext_factor != 0.0 {
            let y = ((i0 / 2) as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
            let ramp = 1.0 - y.clamp(0.0, 1.0);
            let ramp_mix = ramp * p.ext_factor;
            angle = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            mscale *= 1.0 + 0.1 * (1.0 / p.freq_scale).ln();
        }
        cache[i0] = angle.cos() * mscale;
        cache[i0 + 1] = angle.sin() * mscale;
        theta *= theta_scale;
    }
}

/// Rotates one head (`head.len()` = head size ≥ `n_dims`) in place with a cache from
/// [`rope_cache`]; dimensions past `n_dims` are left as they are.
///
/// # Panics
/// If the head is shorter than the cache or the cache length is odd.
pub fn rope_apply(mode: RopeMode, cache: &[f32], head: &mut [f32]) {
    let n_dims = cache.len();
    assert!(
        n_dims.is_multiple_of(2) && n_dims <= head.len(),
        "rope: bad n_dims for the head size"
    );
    let rotate = |x0: f32, x1: f32, i0: usize| {
        let (c, s) = (cache[i0], cache[i0 + 1]);
        (x0 * c - x1 * s, x0 * s + x1 * c)
    };
    match mode {
        RopeMode::Normal => {
            for i0 in (0..n_dims).step_by(2) {
                let (a, b) = rotate(head[i0], head[i0 + 1], i0);
                head[i0] = a;
                head[i0 + 1] = b;
            }
        }
        RopeMode::Neox => {
            let half = n_dims / 2;
            for i0 in (0..n_dims).step_by(2) {
                let ic = i0 / 2;
                let (a, b) = rotate(head[ic], head[ic + half], i0);
                head[ic] = a;
                head[ic + half] = b;
            }
        }
    }
}

/// Applies rope at position `pos` to every head in `heads` (`n_heads × head_dim`, contiguous),
/// using `cache` (length `p.n_dims`) as scratch.
///
/// # Panics
/// If `heads.len()` is not a multiple of `head_dim` or the shapes disagree as in
/// [`rope_cache`] / [`rope_apply`].
pub fn rope(
    p: &RopeParams,
    pos: i32,
    freq_factors: Option<&[f32]>,
    heads: &mut [f32],
    head_dim: usize,
    cache: &mut [f32],
) {
    assert!(
        head_dim > 0 && heads.len().is_multiple_of(head_dim),
        "rope: heads not a multiple of head_dim"
    );
    rope_cache(p, pos, freq_factors, cache);
    for head in heads.chunks_exact_mut(head_dim) {
        rope_apply(p.mode, cache, head);
    }
}

/// In-place softmax as ggml's `soft_max` (after any scaling and masking): subtract the max,
/// exponentiate, sum in f64, multiply by `1 / sum`. `-inf` entries become 0.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        let e = (*v - max).exp();
        sum += f64::from(e);
        *v = e;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU, tanh approximation, computed directly in f32 (ggml's `ggml_gelu_f32`).
pub fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// ggml's f16 GELU table: entry `h` is `f16(gelu_f32(f32(h)))` for every f16 bit pattern.
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| f16::from_f32(gelu_f32(f16::from_bits(h).to_f32())))
            .collect()
    })
}

/// GELU of one value as ggml-cpu computes it for f32 tensors: 0 at or below -10, identity at
/// or above 10, otherwise the f16 table entry of `x` rounded to f16.
#[inline]
fn gelu_one(table: &[f16], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[usize::from(f16::from_f32(x).to_bits())].to_f32()
    }
}

/// In-place GELU, as ggml's `ggml_vec_gelu_f32` (table version).
pub fn gelu(x: &mut [f32]) {
    let table = gelu_table();
    #[cfg(target_arch = "x86_64")]
    if super::isa() >= super::Isa::Avx2 {
        // SAFETY: isa() detected AVX2, FMA and F16C.
        unsafe { super::avx2::float::gelu_table_mul(table, x, None) };
        return;
    }
    for v in x.iter_mut() {
        *v = gelu_one(table, *v);
    }
}

/// `gate = gelu(gate) * up` (GeGLU), as ggml's `ggml_vec_geglu_f32`.
///
/// # Panics
/// If the lengths differ.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gelu_mul length mismatch");
    let table = gelu_table();
    #[cfg(target_arch = "x86_64")]
    if super::isa() >= super::Isa::Avx2 {
        // SAFETY: isa() detected AVX2, FMA and F16C.
        unsafe { super::avx2::float::gelu_table_mul(table, gate, Some(up)) };
        return;
    }
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_one(table, *g) * u;
    }
}

/// SiLU of one value: `x / (1 + exp(-x))`.
#[inline]
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// In-place SiLU.
pub fn silu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = silu_f32(*v);
    }
}

/// `gate = silu(gate) * up` (SwiGLU); with AVX-512 sixteen at a time with a polynomial `exp`
/// (within a few ulp of [`silu_f32`], as ggml's SIMD SiLU is of its scalar one).
///
/// # Panics
/// If the lengths differ.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul length mismatch");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::isa() >= super::Isa::Avx512 {
        // SAFETY: isa() detected AVX-512 F/BW/VL; the lengths are equal (asserted).
        done = unsafe { super::avx512::float::silu_mul(gate, up) };
    }
    for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = silu_f32(*g) * u;
    }
}

/// `y += x` elementwise.
///
/// # Panics
/// If the lengths differ.
pub fn add(y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "add length mismatch");
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// `y *= x` elementwise.
///
/// # Panics
/// If the lengths differ.
pub fn mul(y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "mul length mismatch");
    for (a, &b) in y.iter_mut().zip(x) {
        *a *= b;
    }
}

/// `y *= s`.
pub fn scale(y: &mut [f32], s: f32) {
    for a in y.iter_mut() {
        *a *= s;
    }
}

/// Soft-capping as llama.cpp builds it: `tanh(x * (1 / cap)) * cap`.
pub fn softcap(y: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for a in y.iter_mut() {
        *a = (*a * inv).tanh() * cap;
    }
}
