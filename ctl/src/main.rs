//! The `llmctl` binary.
fn main() {}
