//! The float formats (F32, F16, BF16 against themselves), and the f32 helpers of attention
//! (`dot_f32`, `axpy_f32`) and of GELU.

use half::bf16;

use super::*;

rows_of!(dot_f16_f16_rows, dot_f16_f16, f16, f16);
rows_of!(dot_bf16_bf16_rows, dot_bf16_bf16, bf16, bf16);
rows_of!(dot_f32_f32_rows, dot_f32_f32, f32, f32);

/// Shared body of the float kernels: `load(row, i)` gives eight f32 lanes at element `i`.
///
/// # Safety
/// AVX2, FMA and F16C; `load` is only called with `i + 8 <= row.len()` (the rows' lengths are
/// asserted equal first).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_float<T, const K: usize>(
    w: &[T],
    a: [&[T]; K],
    load: impl Fn(&[T], usize) -> __m256,
    scalar: impl Fn(&T) -> f32,
) -> [f32; K] {
    for row in &a {
        assert_eq!(
            row.len(),
            w.len(),
            "dot product of rows of different lengths"
        );
    }
    let n = w.len();
    let main = n - n % 16;
    let mut acc0 = [_mm256_setzero_ps(); K];
    let mut acc1 = [_mm256_setzero_ps(); K];
    let mut i = 0;
    while i < main {
        let w0 = load(w, i);
        let w1 = load(w, i + 8);
        for t in 0..K {
            acc0[t] = _mm256_fmadd_ps(w0, load(a[t], i), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, load(a[t], i + 8), acc1[t]);
        }
        i += 16;
    }
    let mut out = [0.0f32; K];
    for t in 0..K {
        let mut tail = 0.0f64;
        for j in main..n {
            tail += f64::from(scalar(&w[j]) * scalar(&a[t][j]));
        }
        out[t] = (f64::from(hsum_ps(_mm256_add_ps(acc0[t], acc1[t]))) + tail) as f32;
    }
    out
}

/// F16 × F16 for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_f16<const K: usize>(w: &[f16], a: [&[f16]; K]) -> [f32; K] {
    let load = |row: &[f16], i: usize| {
        // SAFETY: 8 halves from `i`, in bounds as `dot_float` promises (i + 8 <= row.len()).
        let h = unsafe { _mm_loadu_si128(row.as_ptr().add(i).cast()) };
        _mm256_cvtph_ps(h)
    };
    // SAFETY: the caller guarantees the target features (the contract); `load` reads only the
    // eight values `dot_float` asks for.
    unsafe { dot_float(w, a, load, |v| v.to_f32()) }
}

/// BF16 × BF16 for `K` activation rows: each bfloat16 widened to f32 by a 16-bit shift.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16_bf16<const K: usize>(w: &[bf16], a: [&[bf16]; K]) -> [f32; K] {
    let load = |row: &[bf16], i: usize| {
        // SAFETY: 8 bfloat16 from `i`, in bounds as `dot_float` promises (i + 8 <= row.len()).
        let h = unsafe { _mm_loadu_si128(row.as_ptr().add(i).cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    };
    // SAFETY: the caller guarantees the target features (the contract); `load` reads only the
    // eight values `dot_float` asks for.
    unsafe { dot_float(w, a, load, |v| v.to_f32()) }
}

/// F32 × F32 for `K` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_f32<const K: usize>(w: &[f32], a: [&[f32]; K]) -> [f32; K] {
    let load = |row: &[f32], i: usize| {
        // SAFETY: 8 floats from `i`, in bounds as `dot_float` promises (i + 8 <= row.len()).
        unsafe { _mm256_loadu_ps(row.as_ptr().add(i)) }
    };
    // SAFETY: the caller guarantees the target features (the contract); `load` reads only the
    // eight values `dot_float` asks for.
    unsafe { dot_float(w, a, load, |v| *v) }
}

/// `Σ x_i y_i` over two f32 slices of equal length (attention scores).
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    // SAFETY: the same target features (the caller's contract); `dot_f32_f32` asserts the
    // lengths equal.
    unsafe { dot_f32_f32::<1>(x, [y])[0] }
}

/// `y += alpha * x` over two f32 slices of equal length (attention value accumulation).
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy of slices of different lengths");
    let n = x.len();
    let main = n - n % 8;
    let va = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i < main {
        // SAFETY: i + 8 <= main <= n == x.len() == y.len() (asserted): 8 floats in bounds of
        // both slices, read and written through their own pointers.
        unsafe {
            let px = x.as_ptr().add(i);
            let py = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                py,
                _mm256_fmadd_ps(va, _mm256_loadu_ps(px), _mm256_loadu_ps(py)),
            );
        }
        i += 8;
    }
    for j in main..n {
        y[j] = alpha.mul_add(x[j], y[j]);
    }
}

/// GELU through ggml's f16 table for eight lanes at a time, optionally times `up`:
/// `gate[i] = gelu(gate[i]) (* up[i])`. Identical to the scalar version in [`super::ops`]: the
/// f16 rounding (to nearest even), the table and the clamps are the same.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::cpu) unsafe fn gelu_table_mul(table: &[f16], gate: &mut [f32], up: Option<&[f32]>) {
    assert_eq!(table.len(), 1 << 16, "gelu table must cover every f16");
    if let Some(up) = up {
        assert_eq!(up.len(), gate.len(), "gelu_mul length mismatch");
    }
    let n = gate.len();
    let main = n - n % 8;
    let lo = _mm256_set1_ps(-10.0);
    let hi = _mm256_set1_ps(10.0);
    let mut idx = [0u16; 8];
    let mut i = 0;
    while i < main {
        // SAFETY: i + 8 <= main <= gate.len(): 8 floats in bounds.
        let x = unsafe { _mm256_loadu_ps(gate.as_ptr().add(i)) };
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        // SAFETY: the 16 bytes of `idx` (eight u16).
        unsafe { _mm_storeu_si128(idx.as_mut_ptr().cast(), h) };
        // SAFETY: the table has 65536 entries (asserted), one per u16 index.
        let looked = unsafe {
            _mm_setr_epi16(
                table.get_unchecked(usize::from(idx[0])).to_bits() as i16,
                table.get_unchecked(usize::from(idx[1])).to_bits() as i16,
                table.get_unchecked(usize::from(idx[2])).to_bits() as i16,
                table.get_unchecked(usize::from(idx[3])).to_bits() as i16,
                table.get_unchecked(usize::from(idx[4])).to_bits() as i16,
                table.get_unchecked(usize::from(idx[5])).to_bits() as i16,
                table.get_unchecked(usize::from(idx[6])).to_bits() as i16,
                table.get_unchecked(usize::from(idx[7])).to_bits() as i16,
            )
        };
        let mut y = _mm256_cvtph_ps(looked);
        // x >= 10 passes through, x <= -10 gives 0 (ggml's clamps).
        y = _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
        y = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), y);
        if let Some(up) = up {
            // SAFETY: up.len() == gate.len() (asserted): 8 floats in bounds as for `x`.
            y = _mm256_mul_ps(y, unsafe { _mm256_loadu_ps(up.as_ptr().add(i)) });
        }
        // SAFETY: the 8 floats of `x`, in bounds of `gate`.
        unsafe { _mm256_storeu_ps(gate.as_mut_ptr().add(i), y) };
        i += 8;
    }
    for j in main..n {
        let x = gate[j];
        let g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[usize::from(f16::from_f32(x).to_bits())].to_f32()
        };
        gate[j] = match up {
            Some(up) => g * up[j],
            None => g,
        };
    }
}
