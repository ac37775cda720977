//! The end-to-end tests (tests/e2e/) have no library code; their harness is `llmd_testkit::e2e`.
