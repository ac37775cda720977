//! Shared helpers of the quantization tests: fixture files, a seeded random generator, random
//! blocks with finite scales, test-data environment variables, and running the Python reference
//! with a time limit.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use half::f16;
use llmd_kernels::quant::GgmlType;

/// The directory of the committed fixtures.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

/// One fixture file: the type, element count, quantized bytes and f32 values (input or output).
pub struct Fixture {
    /// The tensor type the fixture is about.
    pub ty: GgmlType,
    /// Elements in `floats`.
    pub n: usize,
    /// The quantized bytes (random input blocks, or the reference quantization).
    pub bytes: Vec<u8>,
    /// The f32 values (the reference dequantization, or the input to quantize).
    pub floats: Vec<f32>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads `dequant_<TYPE>.bin` (bytes then floats) or `quant_<TYPE>.bin` (floats then bytes), as
/// written by scripts/gen-quant-fixtures.py.
pub fn read_fixture(name: &str) -> Fixture {
    let path = fixture_dir().join(name);
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let magic = &b[..4];
    let ty = GgmlType::from_id(u32_at(&b, 4)).expect("fixture type id");
    let n = u32_at(&b, 8) as usize;
    let nbytes = u32_at(&b, 12) as usize;
    assert_eq!(b.len(), 16 + nbytes + 4 * n, "{name}: size");
    let floats_at = |at: usize| -> Vec<f32> {
        b[at..at + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    match magic {
        b"LQDQ" => Fixture {
            ty,
            n,
            bytes: b[16..16 + nbytes].to_vec(),
            floats: floats_at(16 + nbytes),
        },
        b"LQQU" => Fixture {
            ty,
            n,
            floats: floats_at(16),
            bytes: b[16 + 4 * n..].to_vec(),
        },
        other => panic!("{name}: bad magic {other:?}"),
    }
}

/// SplitMix64: a small, seedable, good-enough generator for test data.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u64() as u8;
        }
    }

    /// A finite scale: sign times 10^(-6..2), sometimes zero.
    pub fn scale(&mut self) -> f32 {
        if self.unit() < 0.05 {
            return 0.0;
        }
        let sign = if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        sign * 10f32.powf(self.unit() * 8.0 - 6.0)
    }
}

/// Byte offsets of the f16 scale fields of each block type.
pub fn f16_scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS => &[0],
        GgmlType::TQ1_0 => &[52],
        GgmlType::TQ2_0 => &[64],
        _ => &[],
    }
}

/// Writes finite scales into one block of `ty`: every f16 scale field gets `scale()`, IQ1_M's
/// scale (spread over the top nibbles of its four scale words) too, and MXFP4 an exponent byte
/// for 2^-30 .. 2^30 chosen from `scale()`'s bits. Other bytes are left as they are.
pub fn set_block_scales(ty: GgmlType, block: &mut [u8], mut scale: impl FnMut() -> f16) {
    for &off in f16_scale_offsets(ty) {
        block[off..off + 2].copy_from_slice(&scale().to_bits().to_le_bytes());
    }
    match ty {
        GgmlType::IQ1_M => {
            let d = scale().to_bits();
            for k in 0..4 {
                let at = 48 + 2 * k;
                let w = u16::from_le_bytes([block[at], block[at + 1]]);
                let w = (w & 0x0fff) | (((d >> (4 * k)) & 0xf) << 12);
                block[at..at + 2].copy_from_slice(&w.to_le_bytes());
            }
        }
        GgmlType::MXFP4 => block[0] = 97 + (scale().to_bits() % 61) as u8,
        _ => {}
    }
}

/// `n_blocks` random blocks of `ty` whose scales are finite (so no output is NaN or infinite).
/// F16 gets random non-NaN halves, BF16 and F32 random bits.
pub fn random_blocks(rng: &mut Rng, ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut out = vec![0u8; n_blocks * bb];
    rng.fill(&mut out);
    for block in out.chunks_exact_mut(bb) {
        set_block_scales(ty, block, || f16::from_f32(rng.scale()));
        match ty {
            GgmlType::Q8_K => block[..4].copy_from_slice(&(rng.scale() * 1e-2).to_le_bytes()),
            GgmlType::F16 => {
                let h = u16::from_le_bytes([block[0], block[1]]);
                if f16::from_bits(h).is_nan() {
                    block.copy_from_slice(&(h & 0xfc00).to_le_bytes());
                }
            }
            _ => {}
        }
    }
    out
}

/// A test row of `n` values: gaussian blocks of `block` at varied magnitudes, with some blocks of
/// awkward content (zeros, a constant, exact half-steps, one outlier, all negative).
pub fn random_row(rng: &mut Rng, n: usize, block: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    for b in 0..n / block {
        let mag = 10f32.powf(rng.unit() * 5.0 - 3.0);
        for i in 0..block {
            x.push(match b % 9 {
                1 => 0.0,
                3 => 0.75,
                5 => (i as f32 - block as f32 / 2.0) * 0.5,
                7 if i == 3 => 100.0,
                7 => 0.01,
                8 => -(rng.normal().abs()) * mag,
                _ => rng.normal() * mag,
            });
        }
    }
    x
}

/// Whether the tests must fail (rather than skip) when test data is missing.
pub fn require_test_data() -> bool {
    std::env::var_os("LLMD_REQUIRE_TEST_DATA").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The value of environment variable `var`, or `None` after printing a SKIPPED line; panics if
/// it is missing while LLMD_REQUIRE_TEST_DATA is set.
pub fn test_data_var(var: &str, why: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if require_test_data() => panic!("{var} is not set but LLMD_REQUIRE_TEST_DATA is: {why}"),
        _ => {
            println!("SKIPPED: {var} is not set ({why})");
            None
        }
    }
}

/// A Python reference process started by [`spawn_python`].
pub struct PythonRun {
    child: std::process::Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// Starts `python -c script args...`, draining its output on threads so it never blocks.
pub fn spawn_python(python: &str, script: &str, args: &[&str]) -> PythonRun {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {python}: {e}"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    PythonRun {
        child,
        stdout,
        stderr,
    }
}

impl PythonRun {
    /// Waits for the process (killing it and failing after `limit`) and returns its stdout.
    pub fn finish(mut self, limit: Duration) -> String {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for python") {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("python reference did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.join().expect("stdout reader");
        let stderr = self.stderr.join().expect("stderr reader");
        assert!(
            status.success(),
            "python reference failed: {status}\n{}",
            String::from_utf8_lossy(&stderr)
        );
        String::from_utf8(stdout).expect("python output is UTF-8")
    }
}

/// Runs `python -c script args...` and returns its stdout, failing the test after `limit`.
pub fn run_python(python: &str, script: &str, args: &[&str], limit: Duration) -> String {
    spawn_python(python, script, args).finish(limit)
}

/// Asserts two f32 slices are identical bit for bit, naming the first difference.
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} differs: got {} ({:#010x}), reference {} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}
