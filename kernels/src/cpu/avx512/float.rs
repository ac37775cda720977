//! 512-bit elementwise f32 operations of the forward pass.

use super::attention::exp_ps;
use super::*;

/// `gate[i] = gate[i] / (1 + e^-gate[i]) * up[i]` (SwiGLU) for the whole 16-value chunks; returns
/// how many values it did (the caller finishes the rest).
///
/// # Safety
/// AVX-512 F/BW/VL; `gate` and `up` of equal length.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) -> usize {
    let n = gate.len() - gate.len() % 16;
    let one = _mm512_set1_ps(1.0);
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 <= n <= gate.len(): 16 values in bounds.
        let g = unsafe { _mm512_loadu_ps(gate.as_ptr().add(i)) };
        // SAFETY: as `g`, with up.len() == gate.len() (the contract).
        let u = unsafe { _mm512_loadu_ps(up.as_ptr().add(i)) };
        // SAFETY: the caller guarantees AVX-512 F (the contract), all `exp_ps` needs.
        let e = unsafe { exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g)) };
        let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
        // SAFETY: the 16 values of `g`, in bounds of `gate`.
        unsafe { _mm512_storeu_ps(gate.as_mut_ptr().add(i), _mm512_mul_ps(s, u)) };
    }
    n
}
