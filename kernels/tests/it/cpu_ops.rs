//! The f32 row operations against direct formulas: rms_norm, rope (normal, neox, partial,
//! linear scaling), softmax, GELU (ggml's f16 table), SiLU, elementwise ops, soft-capping, and
//! the SIMD f32 dot / axpy against plain loops.

use crate::cpu_common::Rng;
use llmd_kernels::cpu::dot::{axpy_f32, dot_f32};
use llmd_kernels::cpu::ops::{self, RopeMode, RopeParams};

#[test]
fn rms_norm_matches_formula() {
    let mut rng = Rng(1);
    let x = rng.f32s(640, 4.0);
    let w = rng.f32s(640, 1.0);
    let eps = 1e-6f32;
    let mut out = vec![0.0; 640];
    ops::rms_norm(&x, &w, eps, &mut out);
    let mean: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / 640.0;
    let scale = 1.0 / (mean + f64::from(eps)).sqrt();
    for i in 0..640 {
        let want = f64::from(x[i]) * scale * f64::from(w[i]);
        assert!(
            (f64::from(out[i]) - want).abs() <= 1e-5 * want.abs() + 1e-7,
            "{i}"
        );
    }
    let mut inplace = x.clone();
    ops::rms_norm_inplace(&mut inplace, &w, eps);
    assert_eq!(inplace, out);
    // eps dominates an all-zero row instead of dividing by zero.
    let mut zeros = vec![0.0f32; 8];
    ops::rms_norm_inplace(&mut zeros, &[1.0; 8], eps);
    assert!(zeros.iter().all(|v| *v == 0.0));
}

fn rope_one(mode: RopeMode, n_dims: usize, head: &[f32], pos: i32, base: f32) -> Vec<f32> {
    let p = RopeParams::new(mode, n_dims, base);
    let mut h = head.to_vec();
    let mut cache = vec![0.0; n_dims];
    ops::rope(&p, pos, None, &mut h, head.len(), &mut cache);
    h
}

#[test]
fn rope_rotates_the_right_pairs() {
    let head = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    // Position 0 is the identity.
    assert_eq!(rope_one(RopeMode::Normal, 6, &head, 0, 10000.0), head);
    assert_eq!(rope_one(RopeMode::Neox, 6, &head, 0, 10000.0), head);

    // n_dims = 4, base 10000: pair 0 turns by pos, pair 1 by pos * 10000^(-1/2) = pos / 100.
    let rot = |x0: f32, x1: f32, a: f32| (x0 * a.cos() - x1 * a.sin(), x0 * a.sin() + x1 * a.cos());
    let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
    let n = rope_one(RopeMode::Normal, 4, &head, 3, 10000.0);
    let (a0, a1) = rot(1.0, 2.0, 3.0);
    let (b0, b1) = rot(3.0, 4.0, 0.03);
    assert!(
        close(n[0], a0) && close(n[1], a1) && close(n[2], b0) && close(n[3], b1),
        "{n:?}"
    );
    assert_eq!(&n[4..], &head[4..], "dims past n_dims pass through");

    let x = rope_one(RopeMode::Neox, 4, &head, 3, 10000.0);
    let (a0, a2) = rot(1.0, 3.0, 3.0);
    let (b1, b3) = rot(2.0, 4.0, 0.03);
    assert!(
        close(x[0], a0) && close(x[2], a2) && close(x[1], b1) && close(x[3], b3),
        "{x:?}"
    );
    assert_eq!(&x[4..], &head[4..]);
}

#[test]
fn rope_cache_follows_ggml_theta_recurrence() {
    // theta_i = pos * theta_scale^i with theta_scale = powf(base, -2 / n_dims), multiplied
    // cumulatively in f32 exactly as ggml_rope_cache_init does.
    let p = RopeParams::new(RopeMode::Neox, 256, 1_000_000.0);
    let mut cache = vec![0.0; 256];
    ops::rope_cache(&p, 1234, None, &mut cache);
    let theta_scale = 1_000_000.0f32.powf(-2.0 / 256.0);
    let mut theta = 1234.0f32;
    for i in 0..128 {
        assert_eq!(cache[2 * i], theta.cos(), "cos {i}");
        assert_eq!(cache[2 * i + 1], theta.sin(), "sin {i}");
        theta *= theta_scale;
    }
    // Linear scaling multiplies every angle by freq_scale; frequency factors divide it.
    let scaled = RopeParams {
        freq_scale: 0.25,
        ..RopeParams::new(RopeMode::Normal, 2, 10000.0)
    };
    let mut c = vec![0.0; 2];
    ops::rope_cache(&scaled, 8, None, &mut c);
    assert_eq!(c, vec![2.0f32.cos(), 2.0f32.sin()]);
    ops::rope_cache(
        &RopeParams::new(RopeMode::Normal, 2, 10000.0),
        8,
        Some(&[4.0]),
        &mut c,
    );
    assert_eq!(c, vec![2.0f32.cos(), 2.0f32.sin()]);
}

#[test]
fn rope_preserves_norms() {
    let mut rng = Rng(9);
    let heads = rng.f32s(4 * 256, 1.0);
    let p = RopeParams::new(RopeMode::Neox, 256, 10000.0);
    let mut h = heads.clone();
    let mut cache = vec![0.0; 256];
    ops::rope(&p, 777, None, &mut h, 256, &mut cache);
    for (a, b) in heads.chunks(256).zip(h.chunks(256)) {
        let na: f32 = a.iter().map(|v| v * v).sum();
        let nb: f32 = b.iter().map(|v| v * v).sum();
        assert!((na - nb).abs() < 1e-3 * na);
    }
}

#[test]
fn softmax_is_stable_and_normalized() {
    let mut x = vec![1000.0f32, 1001.0, f32::NEG_INFINITY, 999.0];
    ops::softmax(&mut x);
    let s: f32 = x.iter().sum();
    assert!((s - 1.0).abs() < 1e-6);
    assert_eq!(x[2], 0.0);
    assert!(x[1] > x[0] && x[0] > x[3]);
    let e = [1.0f64.exp(), 2.0f64.exp(), 0.0, 0.0f64.exp()];
    let total: f64 = e.iter().sum();
    for (got, want) in x.iter().zip(e) {
        assert!((f64::from(*got) - want / total).abs() < 1e-6);
    }
}

#[test]
fn gelu_uses_the_f16_table_like_ggml() {
    let mut rng = Rng(4);
    let xs = rng.f32s(10_000, 12.0);
    let mut g = xs.clone();
    ops::gelu(&mut g);
    for (&x, &y) in xs.iter().zip(&g) {
        if x <= -10.0 {
            assert_eq!(y, 0.0);
        } else if x >= 10.0 {
            assert_eq!(y, x);
        } else {
            // The table is indexed by x rounded to f16 and stores an f16 result.
            let want = ops::gelu_f32(half::f16::from_f32(x).to_f32());
            assert_eq!(y, half::f16::from_f32(want).to_f32(), "x = {x}");
            assert!((y - ops::gelu_f32(x)).abs() <= 4e-3 * x.abs().max(1e-2));
        }
    }
    let mut gate = xs[..100].to_vec();
    let up = rng.f32s(100, 1.0);
    ops::gelu_mul(&mut gate, &up);
    for i in 0..100 {
        assert_eq!(gate[i], g[i] * up[i]);
    }
    assert_eq!(ops::gelu_f32(0.0), 0.0);
}

#[test]
fn silu_and_elementwise_ops() {
    let mut x = vec![-2.0f32, 0.0, 3.0];
    ops::silu(&mut x);
    assert!((x[0] - (-2.0 / (1.0 + 2.0f32.exp()))).abs() < 1e-7);
    assert_eq!(x[1], 0.0);
    let mut g = vec![-2.0f32, 0.0, 3.0];
    ops::silu_mul(&mut g, &[2.0, 5.0, -1.0]);
    assert_eq!(g, vec![x[0] * 2.0, 0.0, -x[2]]);
    // Long rows (the SIMD path where the CPU has one) agree with the scalar SiLU to a few ulp,
    // including large magnitudes where e^-x over- or underflows.
    let gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.21).collect();
    let up: Vec<f32> = (0..1000).map(|i| 1.0 + (i % 7) as f32 * 0.5).collect();
    let mut got = gate.clone();
    ops::silu_mul(&mut got, &up);
    for i in 0..1000 {
        let want = ops::silu_f32(gate[i]) * up[i];
        assert!(
            (got[i] - want).abs() <= 4.0 * f32::EPSILON * want.abs() + 1e-30,
            "silu({}) * {}: {} vs {want}",
            gate[i],
            up[i],
            got[i]
        );
    }

    let mut y = vec![1.0f32, 2.0, 3.0];
    ops::add(&mut y, &[1.0, 1.0, 1.0]);
    assert_eq!(y, vec![2.0, 3.0, 4.0]);
    ops::mul(&mut y, &[2.0, 0.5, -1.0]);
    assert_eq!(y, vec![4.0, 1.5, -4.0]);
    ops::scale(&mut y, 0.5);
    assert_eq!(y, vec![2.0, 0.75, -2.0]);

    let mut c = vec![-1000.0f32, 0.0, 15.0];
    ops::softcap(&mut c, 30.0);
    assert!((c[0] + 30.0).abs() < 1e-4 && c[1] == 0.0);
    assert!((c[2] - 30.0 * 0.5f32.tanh()).abs() < 1e-5);
}

#[test]
fn f32_dot_and_axpy_match_plain_loops() {
    let mut rng = Rng(8);
    for n in [0usize, 1, 7, 8, 33, 256, 1000] {
        let x = rng.f32s(n, 1.0);
        let y = rng.f32s(n, 1.0);
        let want: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let abs: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
            .sum();
        assert!(
            (f64::from(dot_f32(&x, &y)) - want).abs() <= 1e-5 * abs + 1e-9,
            "n = {n}"
        );

        let mut z = y.clone();
        axpy_f32(0.75, &x, &mut z);
        for i in 0..n {
            assert!(
                (z[i] - (y[i] + 0.75 * x[i])).abs() <= 1e-6,
                "n = {n}, i = {i}"
            );
        }
    }
}
