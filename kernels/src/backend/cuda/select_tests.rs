//! The selection kernels (`select.cu`) against the host's selection ([`crate::select`]), bit for
//! bit: rows of 1 to 300,000 values (within one chunk, exactly one, one past, many), ties, signed
//! zeros, infinities, NaNs (first or not, of either sign), all-equal rows, several rows, every k
//! from 1 to [`MAX_DEVICE_TOP_K`], greedy and top-k, through the real `CudaBackend` on the fake driver
//! in CI (on a GPU when one is present).

use super::tests::{acts, read};
use super::*;
use crate::select::{select_rows, Selection, CANDIDATE_FLOATS, MAX_DEVICE_TOP_K};
use llmd_testkit::Rng;

/// A NaN with the sign bit set (f32::NAN's is clear).
fn negative_nan() -> f32 {
    f32::from_bits(0xffc0_0000)
}

/// `(what, rows, values per row, values)` of every case.
fn cases() -> Vec<(&'static str, usize, usize, Vec<f32>)> {
    let mut rng = Rng(0x510c_7e57);
    let mut cases = Vec::new();
    // Few distinct values: many ties, with the special values mixed in.
    let tied = |n: usize, rng: &mut Rng| -> Vec<f32> {
        (0..n)
            .map(|_| match rng.below(40) {
                0 => -0.0,
                1 => 0.0,
                2 => f32::NEG_INFINITY,
                3 => f32::INFINITY,
                4 => f32::NAN,
                5 => negative_nan(),
                r => (r % 9) as f32 * 0.5 - 2.0,
            })
            .collect()
    };
    cases.push(("one value", 1, 1, vec![0.5]));
    cases.push(("one NaN", 1, 1, vec![f32::NAN]));
    let mut small = vec![3.0, 1.0, 3.0, f32::NAN, -0.0];
    small.extend([f32::NAN, 2.0, 2.0, 0.0, 9.0]);
    small.extend([-0.0, 0.0, 0.0, -0.0, f32::NEG_INFINITY]);
    cases.push(("small rows with NaN first, zeros, ties", 3, 5, small));
    cases.push(("tied, within a chunk", 4, 1000, tied(4000, &mut rng)));
    cases.push((
        "tied, every k",
        2,
        EVERY_K_ROWS,
        tied(2 * EVERY_K_ROWS, &mut rng),
    ));
    cases.push(("tied, exactly a chunk", 2, 4096, tied(2 * 4096, &mut rng)));
    // The last chunk of each row holds one value: fewer than k.
    cases.push(("tied, one past a chunk", 2, 4097, tied(2 * 4097, &mut rng)));
    cases.push((
        "tied, several chunks",
        3,
        10_007,
        tied(3 * 10_007, &mut rng),
    ));
    let mut equal = vec![1.25f32; 9000];
    equal.extend(vec![f32::NEG_INFINITY; 9000]);
    equal.extend(vec![f32::NAN; 9000]);
    let mut nan_but_first = vec![negative_nan(); 9000];
    nan_but_first[0] = -7.0;
    equal.extend(nan_but_first);
    cases.push((
        "all equal, all -inf, all NaN, NaN but the first",
        4,
        9000,
        equal,
    ));
    cases.push(("random, 152k", 2, 151_936, rng.f32s(2 * 151_936, 8.0)));
    let mut big = rng.f32s(300_001, 8.0);
    // The best value at the very end, a tie for it in the middle.
    big[300_000] = 100.0;
    big[123_456] = 100.0;
    cases.push(("random, 300k", 1, 300_001, big));
    cases
}

/// Rows of this many values are selected with every k (others with a few).
const EVERY_K_ROWS: usize = 300;

/// The selections to run on rows of `n` values.
fn selections(n: usize) -> Vec<Selection> {
    let mut sels = vec![Selection::Argmax];
    let ks: Vec<usize> = if n == EVERY_K_ROWS {
        (1..=MAX_DEVICE_TOP_K).collect()
    } else {
        vec![1, 2, 3, 40, MAX_DEVICE_TOP_K]
    };
    sels.extend(ks.into_iter().filter(|&k| k <= n).map(Selection::TopK));
    sels
}

/// Every case and selection on `b`: the raw candidates, by name, after a leading candidate of
/// padding (the output starts at candidate 1).
fn run_selections<B: Backend>(b: &B) -> Vec<(String, Vec<u32>)> {
    let mut results = Vec::new();
    for (what, m, n, values) in cases() {
        let x = acts(b, &values);
        for sel in selections(n) {
            let len = (1 + m * sel.k()) * CANDIDATE_FLOATS;
            let mut out = acts(b, &vec![-1.0; len]);
            b.select(&x, m, n, sel, &mut out, 1).expect("select");
            let got = read(b, &out, len);
            results.push((
                format!("{what}: {m} x {n}, {sel:?}"),
                got.iter().map(|v| v.to_bits()).collect(),
            ));
        }
    }
    results
}

/// The host's answer for every case, as [`run_selections`] lays it out.
fn host_selections() -> Vec<(String, Vec<u32>)> {
    let mut results = Vec::new();
    for (what, m, n, values) in cases() {
        for sel in selections(n) {
            let mut out = vec![-1.0f32; (1 + m * sel.k()) * CANDIDATE_FLOATS];
            select_rows(&values, m, n, sel, &mut out[CANDIDATE_FLOATS..]);
            results.push((
                format!("{what}: {m} x {n}, {sel:?}"),
                out.iter().map(|v| v.to_bits()).collect(),
            ));
        }
    }
    results
}

fn assert_same(device: &str, got: &[(String, Vec<u32>)]) {
    let want = host_selections();
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert!(g == w, "{device} {name}: {g:x?} != {w:x?}");
    }
    println!("{device} selections equal the host's: {} cases", got.len());
}

/// The comparison below on the fake driver.
#[test]
fn selection_matches_the_host_on_the_fake_driver() {
    crate::backend::cuda::gpu_test::run_on_fake_driver(
        "backend::cuda::select_tests::selection_matches_the_host_when_a_gpu_is_present",
        &[],
        "cuda:0 selections equal the host's",
    );
}

#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn selection_matches_the_host_when_a_gpu_is_present() {
    crate::backend::cuda::gpu_test::require_cuda();
    let gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    assert_same("cuda:0", &run_selections(&gpu));
    // Bad requests are refused, naming what is wrong.
    let x = acts(&gpu, &[1.0; 8]);
    let mut out = acts(&gpu, &[0.0; 200]);
    let e = gpu
        .select(&x, 1, 8, Selection::TopK(9), &mut out, 0)
        .expect_err("k above the row");
    assert!(e.to_string().contains("TopK(9)"), "{e}");
    assert!(gpu
        .select(&x, 2, 8, Selection::Argmax, &mut out, 0)
        .is_err());
}

/// The same on the CPU backend (which runs the host's code).
#[test]
fn selection_runs_on_the_cpu_backend() {
    let pool = std::sync::Arc::new(crate::cpu::ThreadPool::new(1).expect("thread pool"));
    let cpu = crate::backend::CpuBackend::new("cpu:0", DeviceMemory::new(1 << 30), pool);
    assert_same("cpu:0", &run_selections(&cpu));
}
