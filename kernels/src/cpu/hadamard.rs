//! The orthonormal Walsh-Hadamard rotation llama.cpp applies to the keys, queries, values and
//! attention outputs of quantized KV caches (see `KvTypes::rotation`): each consecutive chunk of
//! `n` values (`n` a power of two) becomes `H x` with `H[i][j] = (-1)^popcount(i & j) / sqrt(n)`,
//! its own inverse. Computed as ggml-cpu's `ggml_compute_forward_fwht` does: every value
//! multiplied by `1 / sqrt(n)` first, then `log2(n)` butterfly passes `(u, v) -> (u + v, u - v)`
//! of widths 1, 2, 4, ..., so the f32 results are the same bit for bit.

/// Rotates each consecutive chunk of `n` values of `x` in place.
///
/// # Panics
/// If `n` is not a power of two or `x.len()` is not a multiple of it.
pub fn rotate(x: &mut [f32], n: usize) {
    assert!(n.is_power_of_two(), "Hadamard rotation of {n} values");
    assert!(
        x.len().is_multiple_of(n),
        "{} values are not whole chunks of {n}",
        x.len()
    );
    let scale = 1.0f32 / (n as f32).sqrt();
    for chunk in x.chunks_exact_mut(n) {
        chunk.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        while len < n {
            for pair in chunk.chunks_exact_mut(2 * len) {
                let (lo, hi) = pair.split_at_mut(len);
                for (u, v) in lo.iter_mut().zip(hi) {
                    (*u, *v) = (*u + *v, *u - *v);
                }
            }
            len <<= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_the_normalised_hadamard_matrix_and_its_own_inverse() {
        for n in [1usize, 2, 64, 128, 256] {
            let x: Vec<f32> = (0..2 * n).map(|i| ((i * 37 % 17) as f32) - 8.0).collect();
            let mut y = x.clone();
            rotate(&mut y, n);
            let s = 1.0 / (n as f64).sqrt();
            for (c, (xc, yc)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
                for (i, &got) in yc.iter().enumerate() {
                    let want: f64 = xc
                        .iter()
                        .enumerate()
                        .map(|(j, &x)| {
                            let sign = if (i & j).count_ones() % 2 == 0 { s } else { -s };
                            sign * f64::from(x)
                        })
                        .sum();
                    assert!(
                        (f64::from(got) - want).abs() < 1e-4,
                        "n {n} chunk {c} row {i}: {got} vs {want}"
                    );
                }
            }
            rotate(&mut y, n);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-4, "n {n}: H H x = x");
            }
        }
    }
}
