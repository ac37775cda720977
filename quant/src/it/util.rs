//! The committed quantization fixtures (`tests/fixtures/`, written by
//! scripts/gen-quant-fixtures.py); the generator, random blocks, test data and the Python
//! reference come from the test kit.

use std::path::{Path, PathBuf};

use crate::GgmlType;

pub use llmd_testkit::blocks::{random_blocks, random_row};
pub use llmd_testkit::check::assert_bits_eq;
pub use llmd_testkit::data::test_data_var;
pub use llmd_testkit::python::run_python;
pub use llmd_testkit::Rng;

/// The directory of the committed fixtures.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One fixture file: the type, element count, quantized bytes and f32 values (input or output).
pub struct Fixture {
    /// The tensor type the fixture is about.
    pub ty: GgmlType,
    /// Elements in `floats`.
    pub n: usize,
    /// The quantized bytes (random input blocks, or the reference quantization).
    pub bytes: Vec<u8>,
    /// The f32 values (the reference dequantization, or the input to quantize).
    pub floats: Vec<f32>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads `dequant_<TYPE>.bin` (bytes then floats) or `quant_<TYPE>.bin` (floats then bytes), as
/// written by scripts/gen-quant-fixtures.py.
pub fn read_fixture(name: &str) -> Fixture {
    let path = fixture_dir().join(name);
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let magic = &b[..4];
    let ty = GgmlType::from_id(u32_at(&b, 4)).expect("fixture type id");
    let n = u32_at(&b, 8) as usize;
    let nbytes = u32_at(&b, 12) as usize;
    assert_eq!(b.len(), 16 + nbytes + 4 * n, "{name}: size");
    let floats_at = |at: usize| -> Vec<f32> {
        b[at..at + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    match magic {
        b"LQDQ" => Fixture {
            ty,
            n,
            bytes: b[16..16 + nbytes].to_vec(),
            floats: floats_at(16 + nbytes),
        },
        b"LQQU" => Fixture {
            ty,
            n,
            floats: floats_at(16),
            bytes: b[16 + 4 * n..].to_vec(),
        },
        other => panic!("{name}: bad magic {other:?}"),
    }
}
