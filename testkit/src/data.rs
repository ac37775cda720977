//! Test data named by environment variables (`scripts/test-deps` sets them): a test without its
//! data prints SKIPPED and returns, unless `LLMD_REQUIRE_TEST_DATA` is set (as in CI), where the
//! missing data fails it.

use std::path::PathBuf;

/// Whether the tests must fail (rather than skip) when test data is missing.
pub fn require_test_data() -> bool {
    std::env::var_os("LLMD_REQUIRE_TEST_DATA").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The value of environment variable `var`, or `None` after printing a SKIPPED line; panics if
/// it is missing while LLMD_REQUIRE_TEST_DATA is set. `why` says what the data is for.
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

/// The file named by environment variable `var`, or `None` after printing a SKIPPED line; panics
/// when LLMD_REQUIRE_TEST_DATA is set and the variable is unset or names no file.
pub fn test_data_file(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        Some(p) if require_test_data() => panic!("{var}={} is not a file", p.display()),
        None if require_test_data() => panic!("{var} is not set but LLMD_REQUIRE_TEST_DATA is"),
        _ => {
            println!("SKIPPED: {var} is not set (scripts/test-deps installs the test data)");
            None
        }
    }
}
