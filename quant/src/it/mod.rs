//! The quantization crate's tests against references, run in the crate's one test binary beside
//! the unit tests: the committed reference fixtures
//! (`fixtures`), the live comparison with the `gguf` pip package (`live`) and the quantizers'
//! properties (`roundtrip`); `util` holds what they share.

mod fixtures;
mod live;
mod roundtrip;
mod util;
