//! Dot-product dispatch: for each weight block type, its activation partner type (ggml's
//! `vec_dot_type`: Q8_0 for Q4_0, Q5_0, Q8_0, IQ4_NL and MXFP4; Q8_1 for Q4_1 and Q5_1; Q8_K for
//! the K-quants, the other IQ formats and TQ1_0 / TQ2_0; the float formats themselves), how to
//! quantize activations into it, and the kernels for the detected instruction set
//! ([`super::isa`]).
//!
//! [`VecDot`] is implemented for the weight element/block types; [`Activation`] for the partner
//! types. [`vec_dot`] is the safe single-row entry point; [`Kernels`] is what the matrix multiply
//! uses (one weight row against one or four activation rows).

use half::{bf16, f16};

use super::quantize::BlockQ8_0Act;
use super::{quantize, scalar, scalar_iq, Isa};
use crate::quant::types::{QK, QK_K};
use crate::quant::*;

/// How many activation rows the multi-row kernel takes at once.
pub const TILE: usize = 4;

/// A kernel computing the dot products of `R` weight rows with `K` activation rows.
type RowsKernel<W, A, const R: usize, const K: usize> =
    unsafe fn([&[W]; R], [&[A]; K]) -> [[f32; K]; R];

/// Dot-product kernels for weight type `W` against activation type `A`, for the instruction set
/// detected at run time.
pub struct Kernels<W: 'static, A: 'static> {
    /// One weight row · one activation row.
    one: RowsKernel<W, A, 1, 1>,
    /// Two weight rows · one activation row (decoding one token).
    pair: RowsKernel<W, A, 2, 1>,
    /// One weight row · [`TILE`] activation rows (prefill).
    tile: RowsKernel<W, A, 1, TILE>,
}

impl<W, A> Clone for Kernels<W, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W, A> Copy for Kernels<W, A> {}

impl<W, A> Kernels<W, A> {
    /// `w · a` (rows of equal block count; panics otherwise).
    #[inline]
    pub fn dot(&self, w: &[W], a: &[A]) -> f32 {
        // SAFETY: a `Kernels` only holds SIMD functions for an instruction set the CPU has
        // (`VecDot::kernels_for` checks `is_available`), and the kernels check the row lengths
        // themselves.
        unsafe { (self.one)([w], [a])[0][0] }
    }

    /// `[w0 · a, w1 · a]`.
    #[inline]
    pub fn dot_pair(&self, w0: &[W], w1: &[W], a: &[A]) -> [f32; 2] {
        // SAFETY: as in `dot`.
        let r = unsafe { (self.pair)([w0, w1], [a]) };
        [r[0][0], r[1][0]]
    }

    /// `w · a[t]` for [`TILE`] activation rows at once.
    #[inline]
    pub fn dot_tile(&self, w: &[W], a: [&[A]; TILE]) -> [f32; TILE] {
        // SAFETY: as in `dot`.
        unsafe { (self.tile)([w], a)[0] }
    }
}

/// An activation format: what a row of f32 activations is converted into before the dot.
pub trait Activation: Copy + Send + Sync + 'static {
    /// Elements per block.
    const BLOCK: usize;
    /// A block of zeros (to size buffers).
    const ZERO: Self;
    /// Converts `x` (`out.len() * BLOCK` long) into blocks, byte-exact with llama.cpp on x86.
    fn quantize(x: &[f32], out: &mut [Self]);
}

/// A weight format with a dot product against its [`Activation`] partner.
pub trait VecDot: Copy + Send + Sync + 'static {
    /// The partner activation format.
    type Act: Activation;
    /// The GGUF tensor type of this format.
    const TYPE: GgmlType;
    /// Elements per block (equal to the partner's).
    const BLOCK: usize;
    /// The kernels for instruction set `isa` (the best this format has at or below it), or
    /// `None` when this CPU lacks `isa`.
    fn kernels_for(isa: Isa) -> Option<Kernels<Self, Self::Act>>;
    /// The kernels for the instruction set in use ([`super::isa`]).
    fn kernels() -> Kernels<Self, Self::Act> {
        Self::kernels_for(super::isa())
            .or_else(|| Self::kernels_for(Isa::Scalar))
            .expect("scalar kernels are always available")
    }
}

/// `w · a` for one weight row and one activation row of the same number of blocks.
///
/// # Panics
/// If the block counts differ.
pub fn vec_dot<W: VecDot>(w: &[W], a: &[W::Act]) -> f32 {
    W::kernels().dot(w, a)
}

/// The scalar kernel for any `R × K`, from a one-row reference function.
macro_rules! scalar_k {
    ($name:ident, $f:path, $w:ty, $a:ty) => {
        fn $name<const R: usize, const K: usize>(w: [&[$w]; R], a: [&[$a]; K]) -> [[f32; K]; R] {
            w.map(|wr| a.map(|ar| $f(wr, ar)))
        }
    };
}

scalar_k!(s_q4_0, scalar::dot_q4_0_q8_0, BlockQ4_0, BlockQ8_0Act);
scalar_k!(s_q4_1, scalar::dot_q4_1_q8_1, BlockQ4_1, BlockQ8_1);
scalar_k!(s_q5_0, scalar::dot_q5_0_q8_0, BlockQ5_0, BlockQ8_0Act);
scalar_k!(s_q5_1, scalar::dot_q5_1_q8_1, BlockQ5_1, BlockQ8_1);
scalar_k!(s_q8_0, scalar::dot_q8_0_q8_0, BlockQ8_0, BlockQ8_0Act);
scalar_k!(s_q2_k, scalar::dot_q2_k_q8_k, BlockQ2K, BlockQ8K);
scalar_k!(s_q3_k, scalar::dot_q3_k_q8_k, BlockQ3K, BlockQ8K);
scalar_k!(s_q4_k, scalar::dot_q4_k_q8_k, BlockQ4K, BlockQ8K);
scalar_k!(s_q5_k, scalar::dot_q5_k_q8_k, BlockQ5K, BlockQ8K);
scalar_k!(s_q6_k, scalar::dot_q6_k_q8_k, BlockQ6K, BlockQ8K);
scalar_k!(s_f16, scalar::dot_f16_f16, f16, f16);
scalar_k!(s_bf16, scalar::dot_bf16_bf16, bf16, bf16);
scalar_k!(s_f32, scalar::dot_f32_f32, f32, f32);
scalar_k!(
    s_iq2_xxs,
    scalar_iq::dot_iq2_xxs_q8_k,
    BlockIQ2XXS,
    BlockQ8K
);
scalar_k!(s_iq2_xs, scalar_iq::dot_iq2_xs_q8_k, BlockIQ2XS, BlockQ8K);
scalar_k!(s_iq2_s, scalar_iq::dot_iq2_s_q8_k, BlockIQ2S, BlockQ8K);
scalar_k!(
    s_iq3_xxs,
    scalar_iq::dot_iq3_xxs_q8_k,
    BlockIQ3XXS,
    BlockQ8K
);
scalar_k!(s_iq3_s, scalar_iq::dot_iq3_s_q8_k, BlockIQ3S, BlockQ8K);
scalar_k!(s_iq1_s, scalar_iq::dot_iq1_s_q8_k, BlockIQ1S, BlockQ8K);
scalar_k!(s_iq1_m, scalar_iq::dot_iq1_m_q8_k, BlockIQ1M, BlockQ8K);
scalar_k!(
    s_iq4_nl,
    scalar_iq::dot_iq4_nl_q8_0,
    BlockIQ4NL,
    BlockQ8_0Act
);
scalar_k!(s_iq4_xs, scalar_iq::dot_iq4_xs_q8_k, BlockIQ4XS, BlockQ8K);
scalar_k!(s_tq1_0, scalar_iq::dot_tq1_0_q8_k, BlockTQ1_0, BlockQ8K);
scalar_k!(s_tq2_0, scalar_iq::dot_tq2_0_q8_k, BlockTQ2_0, BlockQ8K);
scalar_k!(s_mxfp4, scalar_iq::dot_mxfp4_q8_0, BlockMXFP4, BlockQ8_0Act);

/// The `one` / `pair` / `tile` instances of an `R × K` kernel.
macro_rules! instances {
    ($($f:ident)::+) => {
        Kernels {
            one: $($f)::+::<1, 1>,
            pair: $($f)::+::<2, 1>,
            tile: $($f)::+::<1, TILE>,
        }
    };
}

/// Implements [`VecDot`] for a weight type: its partner, GGUF type, block size, scalar kernel,
/// and optionally its AVX2 kernel and its AVX-VNNI kernel.
macro_rules! weight {
    ($w:ty, $a:ty, $ty:expr, $block:expr, $scalar:ident
     $(, avx2 = $($simd:ident)::+ $(, vnni = $($vnni:ident)::+)?)?) => {
        impl VecDot for $w {
            type Act = $a;
            const TYPE: GgmlType = $ty;
            const BLOCK: usize = $block;
            fn kernels_for(isa: Isa) -> Option<Kernels<Self, Self::Act>> {
                if !isa.is_available() {
                    return None;
                }
                $(
                    #[cfg(target_arch = "x86_64")]
                    {
                        $(
                            if isa >= Isa::Avx2Vnni {
                                return Some(instances!(super::avx2::$($vnni)::+));
                            }
                        )?
                        if isa >= Isa::Avx2 {
                            return Some(instances!(super::avx2::$($simd)::+));
                        }
                    }
                )?
                Some(instances!($scalar))
            }
        }
    };
}

weight!(
    BlockQ4_0,
    BlockQ8_0Act,
    GgmlType::Q4_0,
    QK,
    s_q4_0,
    avx2 = legacy::plain::dot_q4_0_q8_0,
    vnni = legacy::vnni::dot_q4_0_q8_0
);
weight!(
    BlockQ4_1,
    BlockQ8_1,
    GgmlType::Q4_1,
    QK,
    s_q4_1,
    avx2 = legacy::plain::dot_q4_1_q8_1,
    vnni = legacy::vnni::dot_q4_1_q8_1
);
weight!(
    BlockQ5_0,
    BlockQ8_0Act,
    GgmlType::Q5_0,
    QK,
    s_q5_0,
    avx2 = legacy::plain::dot_q5_0_q8_0,
    vnni = legacy::vnni::dot_q5_0_q8_0
);
weight!(
    BlockQ5_1,
    BlockQ8_1,
    GgmlType::Q5_1,
    QK,
    s_q5_1,
    avx2 = legacy::plain::dot_q5_1_q8_1,
    vnni = legacy::vnni::dot_q5_1_q8_1
);
weight!(
    BlockQ8_0,
    BlockQ8_0Act,
    GgmlType::Q8_0,
    QK,
    s_q8_0,
    avx2 = legacy::plain::dot_q8_0_q8_0,
    vnni = legacy::vnni::dot_q8_0_q8_0
);
weight!(
    BlockIQ4NL,
    BlockQ8_0Act,
    GgmlType::IQ4_NL,
    QK,
    s_iq4_nl,
    avx2 = legacy::plain::dot_iq4_nl_q8_0,
    vnni = legacy::vnni::dot_iq4_nl_q8_0
);
weight!(
    BlockMXFP4,
    BlockQ8_0Act,
    GgmlType::MXFP4,
    QK,
    s_mxfp4,
    avx2 = legacy::plain::dot_mxfp4_q8_0,
    vnni = legacy::vnni::dot_mxfp4_q8_0
);
weight!(
    BlockQ2K,
    BlockQ8K,
    GgmlType::Q2_K,
    QK_K,
    s_q2_k,
    avx2 = kquant::dot_q2_k_q8_k_rows
);
weight!(
    BlockQ3K,
    BlockQ8K,
    GgmlType::Q3_K,
    QK_K,
    s_q3_k,
    avx2 = kquant::dot_q3_k_q8_k_rows
);
weight!(
    BlockQ4K,
    BlockQ8K,
    GgmlType::Q4_K,
    QK_K,
    s_q4_k,
    avx2 = kquant::dot_q4_k_q8_k_rows
);
weight!(
    BlockQ5K,
    BlockQ8K,
    GgmlType::Q5_K,
    QK_K,
    s_q5_k,
    avx2 = kquant::dot_q5_k_q8_k_rows
);
weight!(
    BlockQ6K,
    BlockQ8K,
    GgmlType::Q6_K,
    QK_K,
    s_q6_k,
    avx2 = kquant::dot_q6_k_q8_k_rows
);
weight!(
    BlockIQ2XXS,
    BlockQ8K,
    GgmlType::IQ2_XXS,
    QK_K,
    s_iq2_xxs,
    avx2 = iq::dot_iq2_xxs_q8_k_rows
);
weight!(
    BlockIQ2XS,
    BlockQ8K,
    GgmlType::IQ2_XS,
    QK_K,
    s_iq2_xs,
    avx2 = iq::dot_iq2_xs_q8_k_rows
);
weight!(
    BlockIQ2S,
    BlockQ8K,
    GgmlType::IQ2_S,
    QK_K,
    s_iq2_s,
    avx2 = iq::dot_iq2_s_q8_k_rows
);
weight!(
    BlockIQ3XXS,
    BlockQ8K,
    GgmlType::IQ3_XXS,
    QK_K,
    s_iq3_xxs,
    avx2 = iq::dot_iq3_xxs_q8_k_rows
);
weight!(
    BlockIQ3S,
    BlockQ8K,
    GgmlType::IQ3_S,
    QK_K,
    s_iq3_s,
    avx2 = iq::dot_iq3_s_q8_k_rows
);
weight!(
    BlockIQ1S,
    BlockQ8K,
    GgmlType::IQ1_S,
    QK_K,
    s_iq1_s,
    avx2 = iq::dot_iq1_s_q8_k_rows
);
weight!(
    BlockIQ1M,
    BlockQ8K,
    GgmlType::IQ1_M,
    QK_K,
    s_iq1_m,
    avx2 = iq::dot_iq1_m_q8_k_rows
);
weight!(
    BlockIQ4XS,
    BlockQ8K,
    GgmlType::IQ4_XS,
    QK_K,
    s_iq4_xs,
    avx2 = iq::dot_iq4_xs_q8_k_rows
);
weight!(
    BlockTQ1_0,
    BlockQ8K,
    GgmlType::TQ1_0,
    QK_K,
    s_tq1_0,
    avx2 = ternary::dot_tq1_0_q8_k_rows
);
weight!(
    BlockTQ2_0,
    BlockQ8K,
    GgmlType::TQ2_0,
    QK_K,
    s_tq2_0,
    avx2 = ternary::dot_tq2_0_q8_k_rows
);
weight!(
    f16,
    f16,
    GgmlType::F16,
    1,
    s_f16,
    avx2 = float::dot_f16_f16_rows
);
weight!(
    bf16,
    bf16,
    GgmlType::BF16,
    1,
    s_bf16,
    avx2 = float::dot_bf16_bf16_rows
);
weight!(
    f32,
    f32,
    GgmlType::F32,
    1,
    s_f32,
    avx2 = float::dot_f32_f32_rows
);

impl Activation for BlockQ8_0Act {
    const BLOCK: usize = QK;
    const ZERO: Self = BlockQ8_0Act {
        d: 0.0,
        qs: [0; QK],
    };
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize::quantize_row_q8_0_act(x, out);
    }
}

impl Activation for BlockQ8_1 {
    const BLOCK: usize = QK;
    const ZERO: Self = BlockQ8_1 {
        d: f16::ZERO,
        s: f16::ZERO,
        qs: [0; QK],
    };
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize::quantize_row_q8_1(x, out);
    }
}

impl Activation for BlockQ8K {
    const BLOCK: usize = QK_K;
    const ZERO: Self = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize::quantize_row_q8_k(x, out);
    }
}

impl Activation for f16 {
    const BLOCK: usize = 1;
    const ZERO: Self = f16::ZERO;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize::convert_row_f16(x, out);
    }
}

impl Activation for bf16 {
    const BLOCK: usize = 1;
    const ZERO: Self = bf16::ZERO;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize::convert_row_bf16(x, out);
    }
}

impl Activation for f32 {
    const BLOCK: usize = 1;
    const ZERO: Self = 0.0;
    fn quantize(x: &[f32], out: &mut [Self]) {
        out.copy_from_slice(x);
    }
}

/// `Σ x_i y_i` in f32 (for attention scores), SIMD when available.
///
/// # Panics
/// If the lengths differ.
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_f32 of slices of different lengths");
    #[cfg(target_arch = "x86_64")]
    if super::isa() >= Isa::Avx2 {
        // SAFETY: isa() detected AVX2, FMA and F16C.
        return unsafe { super::avx2::float::dot_f32(x, y) };
    }
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// `y += alpha * x` in f32 (for attention values), SIMD when available.
///
/// # Panics
/// If the lengths differ.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32 of slices of different lengths");
    #[cfg(target_arch = "x86_64")]
    if super::isa() >= Isa::Avx2 {
        // SAFETY: isa() detected AVX2, FMA and F16C.
        unsafe { super::avx2::float::axpy_f32(alpha, x, y) };
        return;
    }
    for (o, v) in y.iter_mut().zip(x) {
        *o = alpha.mul_add(*v, *o);
    }
}
