//! The fake CUDA driver (`kernels/cuda/fake_driver/fake_cuda.cpp`), a `libcuda.so` whose "GPU"
//! runs the real kernels under the host emulation, so that the CUDA backend and everything above
//! it run end to end on machines without a GPU (CI).
//!
//! A process picks its CUDA library once, when it first touches CUDA, so a GPU test comes in two
//! halves: the test itself, `#[ignore]`d (it cannot run in a process without CUDA, and an ignored
//! test shows as ignored, never as passed) and starting with [`require_cuda`]; and a launcher,
//! an ordinary test calling [`run_on_fake_driver`], which runs the ignored test with `--ignored`
//! in a child process started with the fake on `LD_LIBRARY_PATH`. On a machine with a real
//! driver the launcher leaves the test to be run directly (`--include-ignored`, as
//! `scripts/gpu-check` does).
//!
//! This crate does not link the CUDA backend: callers pass what
//! `llmd_kernels::backend::cuda_available()` says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Set in a child test process that runs on the fake driver.
pub const CHILD_ENV: &str = "LLMD_FAKE_CUDA_CHILD";
/// Where the fake driver writes its counters (after every host synchronisation).
pub const STATS_ENV: &str = "LLMD_FAKE_CUDA_STATS";

/// Whether this process is a child test process running on the fake driver.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// The kernels' CUDA folder (kernel sources, the emulation, the fake driver), in this checkout.
fn cuda_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/cuda")
}

/// The fake driver's source, in this checkout.
fn source() -> PathBuf {
    cuda_dir().join("fake_driver/fake_cuda.cpp")
}

/// The sources the fake driver is built from: its own files (the driver and its strict device
/// model), the emulation header and every kernel file it includes.
fn sources() -> Result<Vec<PathBuf>, String> {
    let cuda = cuda_dir();
    let mut files = vec![cuda.join("host_check/emu.h")];
    for (dir, wanted) in [
        (cuda.clone(), &["cu", "cuh"][..]),
        (cuda.join("fake_driver"), &["cpp", "h"][..]),
    ] {
        let listing =
            std::fs::read_dir(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
        for entry in listing {
            let path = entry
                .map_err(|e| format!("listing {}: {e}", dir.display()))?
                .path();
            if path
                .extension()
                .is_some_and(|ext| wanted.iter().any(|w| ext == *w))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// FNV-1a over the sources' names and contents and the compiler: a build is reused (across test
/// processes too) exactly while none of them changed.
fn fingerprint(files: &[PathBuf], compiler: &str) -> Result<u64, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(compiler.as_bytes());
    for file in files {
        feed(file.to_string_lossy().as_bytes());
        feed(&std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?);
    }
    Ok(hash)
}

/// Builds the fake `libcuda.so` with the system C++ compiler (`$CXX`, else `g++`) into a
/// directory of the system's temporary directory named after the sources' fingerprint (so test
/// processes share one build, and a changed source builds anew); returns that directory (to put
/// on `LD_LIBRARY_PATH`). Once per process at most.
pub fn build() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = source();
            if !src.exists() {
                return Err(format!(
                    "{} is missing (not a source checkout?)",
                    src.display()
                ));
            }
            let compiler = std::env::var("CXX").unwrap_or_else(|_| "g++".to_owned());
            let key = fingerprint(&sources()?, &compiler)?;
            let dir = std::env::temp_dir().join(format!("llmd-fake-cuda-{key:016x}"));
            let library = dir.join("libcuda.so");
            if library.exists() {
                return Ok(dir);
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            // Built under a name of this process, then renamed into place: a concurrent build
            // of the same sources never exposes a half-written library.
            let partial = dir.join(format!("libcuda.so.{}.partial", std::process::id()));
            let out = Command::new(&compiler)
                .args([
                    "-std=c++20",
                    "-O2",
                    "-pthread",
                    "-shared",
                    "-fPIC",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                ])
                .args([
                    "-Wno-unknown-pragmas",
                    "-Wno-unused-function",
                    "-Wno-unused-parameter",
                ])
                .arg("-o")
                .arg(&partial)
                .arg(&src)
                .output()
                .map_err(|e| format!("running {compiler}: {e}"))?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&partial);
                return Err(format!(
                    "building the fake CUDA driver failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::fs::rename(&partial, &library)
                .map_err(|e| format!("installing {}: {e}", library.display()))?;
            Ok(dir)
        })
        .clone()
}

/// The directory of the fake driver for a test to put on a child's `LD_LIBRARY_PATH`, given
/// whether a real CUDA driver works here (`real_cuda`): `Ok(None)` (with the reason printed as
/// SKIPPED) when one does (the GPU tests then run on it directly) or when the fake cannot be
/// built and test data is not required (`LLMD_REQUIRE_TEST_DATA` unset); an error when it cannot
/// be built but is required.
pub fn driver_for_tests(real_cuda: bool) -> Result<Option<PathBuf>, String> {
    if real_cuda {
        println!("SKIPPED: a real CUDA driver is present; the GPU tests run on it directly");
        return Ok(None);
    }
    match build() {
        Ok(dir) => Ok(Some(dir)),
        Err(reason) if !crate::data::require_test_data() => {
            println!("SKIPPED: the fake CUDA driver cannot be built ({reason})");
            Ok(None)
        }
        Err(reason) => Err(reason),
    }
}

/// The directory of the fake driver for a daemon that a test starts with it on its
/// `LD_LIBRARY_PATH`, also on a machine with a real GPU: the daemon, a process of its own, finds
/// the fake `libcuda` there first, so a test that asserts the fake devices it asked for runs (and
/// fails if they are missing) instead of passing as skipped. `Ok(None)` only as
/// [`driver_for_tests`] without a real driver: the fake cannot be built and test data is not
/// required.
pub fn driver_for_daemon() -> Result<Option<PathBuf>, String> {
    driver_for_tests(false)
}

/// Runs the ignored test `name` of this test binary in a child process on the fake driver, with
/// `env` added; `Ok(None)` when [`driver_for_tests`] skips (`real_cuda`: whether a real driver
/// works here).
pub fn rerun_test(
    real_cuda: bool,
    name: &str,
    env: &[(&str, &str)],
) -> Result<Option<Output>, String> {
    let Some(dir) = driver_for_tests(real_cuda)? else {
        return Ok(None);
    };
    let exe = std::env::current_exe().map_err(|e| format!("finding this test binary: {e}"))?;
    // Each child its own counters file, so that its test can read the fake driver's counters.
    static CHILDREN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let stats = std::env::temp_dir().join(format!(
        "llmd-fake-cuda-stats-{}-{}",
        std::process::id(),
        CHILDREN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LD_LIBRARY_PATH", &dir)
    .env(CHILD_ENV, "1")
    .env(STATS_ENV, &stats);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .map(Some)
        .map_err(|e| format!("running {name} on the fake driver: {e}"));
    let _ = std::fs::remove_file(&stats);
    out
}

/// Whether this process runs on the fake driver (a launcher started it): tests of what only the
/// fake driver promises (stricter refusals than a real driver's, faults on freed memory that a
/// real GPU's memory pool may still map) check it first.
pub fn on_fake_driver() -> bool {
    std::env::var_os(STATS_ENV).is_some()
}

/// The fake driver's counters as of its last host synchronisation (`launches`, `host_syncs`,
/// `h2d_bytes`, `d2h_bytes`, `peer_copies_direct`, `peer_copies_staged`, `pageable_copies`,
/// `faults`, ...), read from [`STATS_ENV`]'s file; empty when it is not set or not written yet
/// (not running on the fake driver).
pub fn stats() -> std::collections::BTreeMap<String, i64> {
    let Some(path) = std::env::var_os(STATS_ENV) else {
        return Default::default();
    };
    parse_stats(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Parses the fake driver's "key value" lines.
pub fn parse_stats(text: &str) -> std::collections::BTreeMap<String, i64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Asserts that a child run by [`rerun_test`] passed its one test, printing its output.
pub fn assert_child_passed(output: &Output, must_print: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("1 passed") && stdout.contains(must_print),
        "the test on the fake CUDA driver failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// The first line of every `#[ignore]`d GPU test: panics with the reason unless CUDA works
/// (`available`: what `llmd_kernels::backend::cuda_available()` returned), so that an ignored
/// test run where it cannot run fails rather than passes.
pub fn require_cuda<T>(available: Result<T, String>) {
    if let Err(reason) = available {
        panic!("this GPU test needs CUDA (a real driver, or the fake one in its launcher's child): {reason}");
    }
}

/// The launcher of the ignored GPU test `name` of this test binary: runs it on the fake driver
/// (see [`rerun_test`], with `env` added) and asserts that it passed and printed `must_print`.
/// Does nothing inside that child run itself, or when [`driver_for_tests`] skips (`real_cuda`:
/// whether a real driver works here).
pub fn run_on_fake_driver(real_cuda: bool, name: &str, env: &[(&str, &str)], must_print: &str) {
    if is_child() {
        return;
    }
    if let Some(out) = rerun_test(real_cuda, name, env).expect("fake CUDA driver") {
        assert_child_passed(&out, must_print);
    }
}
