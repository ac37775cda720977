//! Generates shell completions and man pages from the clap definitions.
fn main() {}
