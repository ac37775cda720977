//! The quantization crate's integration tests, in one binary: the committed reference fixtures
//! (`fixtures`), the live comparison with the `gguf` pip package (`live`) and the quantizers'
//! properties (`roundtrip`); `util` holds what they share.

mod fixtures;
mod live;
mod roundtrip;
mod util;
