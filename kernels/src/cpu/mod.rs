//! CPU compute: quantized dot products (scalar reference + AVX2 / AVX-VNNI), the quantized matrix
//! multiply of the forward pass, the process-wide compute pool and its per-model shares, and the f32 row operations (norms,
//! rope, softmax, activations) the supported architectures need.
//!
//! Layout:
//! - [`quantize`]: activation quantization (f32 rows to Q8_0 / Q8_1 / Q8_K / F16 / BF16), the
//!   byte-exact partner formats llama.cpp's CPU backend uses on x86.
//! - [`scalar`] (legacy, K-quant and float formats) and [`scalar_iq`] (IQ, TQ, MXFP4): readable
//!   reference dot products for every weight type × activation type pair.
//! - `avx2`: AVX2 + FMA + F16C versions of every dot product (x86-64 only), one file per family,
//!   with an AVX-VNNI variant of the 32-wide ones, chosen at run time ([`isa`]).
//! - [`dot`]: the weight/activation type pairing and the safe dispatch between the levels.
//! - `avx512`: AVX-512 VNNI kernels over the packed weight layout of [`packed`] (Q4_K, Q6_K,
//!   Q8_0, Q5_0), sixteen rows per register, chosen at load when the CPU has them.
//! - [`mod@matmul`]: `out = x · Wᵀ` for a quantized `W`, split over a [`pool::ThreadPool`].
//! - [`ops`]: elementwise and row operations.
//! - [`attention`]: one query head over a KV cache of f16, Q8_0 or Q4_0 rows, as llama.cpp's CPU
//!   backend computes it (AVX2 twins of its value accumulation in `attention_avx2`);
//!   [`hadamard`]: the rotation llama.cpp applies around quantized caches.

pub mod attention;
pub mod attention_tile;
pub mod dot;
pub mod error;
pub mod hadamard;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod pool;
pub mod quantize;
pub mod scalar;
pub mod scalar_iq;

#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

pub use error::KernelError;
pub use matmul::{matmul, Layout, MatmulScratch, QMatrix};
pub use pool::{ComputePool, ThreadPool};

use std::sync::OnceLock;

/// The instruction set the CPU kernels use, detected once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust; the reference implementation.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// [`Isa::Avx2`] plus AVX-VNNI (256-bit `vpdpbusd`), used by the 32-wide quant kernels.
    Avx2Vnni,
    /// [`Isa::Avx2Vnni`] plus AVX-512 F, BW, VL and VNNI: the packed weight layout and its
    /// kernels ([`packed`]), 512-bit attention helpers.
    Avx512,
}

impl Isa {
    /// A short name for logs and benchmark output.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx2Vnni => "avx2+vnni",
            Isa::Avx512 => "avx512",
        }
    }

    /// Every level, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx2Vnni, Isa::Avx512];

    /// Whether this CPU can run kernels of this level (detected once).
    pub fn is_available(self) -> bool {
        self <= detect_cached()
    }
}

/// The instruction set the kernels use: the best this CPU supports, unless the environment
/// variable `LLMD_CPU_ISA` names a lower one (`scalar`, `avx2`, `avx2+vnni`, `avx512`) for
/// debugging and comparisons. Read once, on the first call.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect_cached();
        let wanted = std::env::var("LLMD_CPU_ISA").ok().and_then(|v| {
            Isa::ALL
                .into_iter()
                .find(|i| i.name().eq_ignore_ascii_case(v.trim()))
        });
        wanted.map_or(best, |w| w.min(best))
    })
}

/// The best level this CPU supports.
fn detect_cached() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        Isa::Scalar
    } else if !is_x86_feature_detected!("avxvnni") {
        // AVX-512 without AVX-VNNI (Skylake-X to Ice Lake) stays at AVX2: the levels are a
        // chain, and the 256-bit VNNI kernels need the VEX encoding.
        Isa::Avx2
    } else if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
    {
        Isa::Avx512
    } else {
        Isa::Avx2Vnni
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}
