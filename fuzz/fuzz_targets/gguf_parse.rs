//! Fuzz target: the GGUF parser on arbitrary bytes, both as a complete file and header-only.
//! Any panic, abort, hang or oversized allocation is a bug.
//!
//! Run with `cargo +nightly fuzz run gguf_parse` from the repository root (needs cargo-fuzz).

#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_gguf::{self as gguf, DataCheck, GgufHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = gguf::parse(data) {
        // Whatever parses must describe tensors that lie inside the input.
        for t in &h.tensors {
            assert!(t.data_end() <= data.len() as u64);
        }
    }
    let _ = GgufHeader::parse_with(data, DataCheck::HeaderOnly);
});
