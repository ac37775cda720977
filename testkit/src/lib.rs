//! Test support shared by llmd's test suites. A dev-dependency only: nothing here is part of a
//! shipped binary or library.
//!
//! - [`rng`]: the one seeded generator every suite draws its random inputs from.
//! - [`blocks`]: random quantized blocks whose scales are finite.
//! - [`data`]: test data named by environment variables (`scripts/test-deps`), skipped or
//!   required per `LLMD_REQUIRE_TEST_DATA`; [`python`]: the Python reference run with a time
//!   limit.
//! - [`check`]: comparisons that name the first difference.
//! - [`fake_cuda`]: the fake CUDA driver's build, and the launcher that runs an `#[ignore]`d GPU
//!   test on it in a child process; [`fake_nvml`]: the fake NVML library's build and readings.
//! - [`e2e`]: the end-to-end harness, a real `llmd` on a temporary socket driven by the real
//!   `llmctl` (binaries older than their sources refused).

pub mod blocks;
pub mod check;
pub mod data;
pub mod e2e;
pub mod fake_cuda;
pub mod fake_nvml;
pub mod python;
pub mod rng;

pub use rng::Rng;
