//! The `llmd` binary: command-line parsing and start-up; everything else lives in the library.
fn main() {}
