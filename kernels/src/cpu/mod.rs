//! CPU compute: quantized dot products (scalar reference + AVX2), the quantized matrix multiply
//! of the forward pass, a low-overhead thread pool, and the f32 row operations (norms, rope,
//! softmax, activations) the supported architectures need.
//!
//! Layout:
//! - [`quantize`]: activation quantization (f32 rows to Q8_0 / Q8_1 / Q8_K / F16 / BF16), the
//!   byte-exact partner formats llama.cpp's CPU backend uses on x86.
//! - [`scalar`]: readable reference dot products for every weight type × activation type pair.
//! - `avx2`: AVX2 + FMA + F16C versions of the hot dot products (x86-64 only), chosen at run time.
//! - [`dot`]: the safe dispatch between the two.
//! - [`matmul`]: `out = x · Wᵀ` for a quantized `W`, split over a [`pool::ThreadPool`].
//! - [`ops`]: elementwise and row operations.

pub mod dot;
pub mod error;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quantize;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;

pub use error::KernelError;
pub use matmul::{matmul, MatmulScratch, QMatrix};
pub use pool::ThreadPool;

use std::sync::OnceLock;

/// The instruction set the CPU kernels use, detected once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust; the reference implementation.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
}

impl Isa {
    /// A short name for logs and benchmark output.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }
}

/// The best instruction set this CPU supports (cached after the first call).
///
/// Setting the environment variable `LLMD_CPU_ISA=scalar` before the first call forces the
/// scalar kernels (for debugging and for comparing against the reference).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var("LLMD_CPU_ISA").is_ok_and(|v| v.eq_ignore_ascii_case("scalar")) {
            return Isa::Scalar;
        }
        detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}
