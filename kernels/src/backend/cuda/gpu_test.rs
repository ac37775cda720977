//! The two halves of this crate's GPU tests (see `llmd_testkit::fake_cuda`): the `#[ignore]`d
//! test starts with [`require_cuda`], its launcher calls [`run_on_fake_driver`]; both ask
//! [`cuda_available`] whether a real driver works here.

use super::cuda_available;

pub(crate) use llmd_testkit::fake_cuda::{on_fake_driver, stats};

/// Runs the ignored test `name` in a child on the fake driver with `env` added, and asserts that
/// it passed and printed `must_print` (nothing when a real driver is here or inside the child).
pub(crate) fn run_on_fake_driver(name: &str, env: &[(&str, &str)], must_print: &str) {
    llmd_testkit::fake_cuda::run_on_fake_driver(cuda_available().is_ok(), name, env, must_print);
}

/// Panics unless CUDA works here: the first line of every ignored GPU test.
pub(crate) fn require_cuda() {
    llmd_testkit::fake_cuda::require_cuda(cuda_available());
}
