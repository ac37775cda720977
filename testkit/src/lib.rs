//! Test support shared by llmd's test suites. A dev-dependency only: nothing here is part of a
//! shipped binary or library.
//!
//! - [`rng`]: the one seeded generator every suite draws its random inputs from.
//! - [`blocks`]: random quantized blocks whose scales are finite.
//! - [`data`]: test data named by environment variables (`scripts/test-deps`), skipped or
//!   required per `LLMD_REQUIRE_TEST_DATA`; [`python`]: the Python reference run with a time
//!   limit.
//! - [`check`]: comparisons that name the first difference.

pub mod blocks;
pub mod check;
pub mod data;
pub mod python;
pub mod rng;

pub use rng::Rng;
