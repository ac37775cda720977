//! Every tensor of the real Gemma 3 270M Q4_K_M file (LLMD_GEMMA_GGUF: F32, Q8_0, Q5_0, Q4_K and
//! Q6_K tensors), located by llmd's GGUF reader and dequantized by llmd's kernels, is
//! bit-identical to the gguf package's reference (LLMD_TEST_PYTHON).
//!
//! A Python process, running alongside the Rust side, lists each tensor's type, absolute data
//! offset and element count (gguf.GGUFReader) and the SHA-256 of its reference float32
//! dequantization (gguf.quants); the Rust side hashes llmd's little-endian f32 output and checks
//! both the layout the reader found and the hashes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::GgufFile;
use llmd_quant::{dequantize, GgmlType};
use llmd_testkit::data::test_data_var;
use llmd_testkit::python::spawn_python;
use sha2::{Digest, Sha256};

const HASH: &str = r#"
import hashlib, sys
import numpy as np
from gguf import GGUFReader, quants
for t in GGUFReader(sys.argv[1]).tensors:
    out = np.ascontiguousarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    assert out.size == t.n_elements
    digest = hashlib.sha256(out.data).hexdigest()
    print(t.name, int(t.tensor_type), int(t.data_offset), int(t.n_elements), digest, sep="\t")
"#;

#[test]
fn every_gemma_tensor_dequantizes_like_gguf_reference() {
    let Some(python) = test_data_var("LLMD_TEST_PYTHON", "needs the gguf pip package") else {
        return;
    };
    let Some(model) = test_data_var("LLMD_GEMMA_GGUF", "needs the Gemma 3 270M GGUF") else {
        return;
    };
    let start = Instant::now();
    let reference = spawn_python(&python, HASH, &[&model]);

    let file = GgufFile::open(&model).expect("opening the model");
    let tensors = file.tensors();
    assert_eq!(tensors.len(), 236, "Gemma 3 270M has 236 tensors");
    let types: BTreeSet<GgmlType> = tensors.iter().map(|t| t.ty).collect();
    let expected = [
        GgmlType::F32,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];
    assert_eq!(
        types,
        expected.into_iter().collect(),
        "tensor types of the file"
    );

    let mut ours = Vec::with_capacity(tensors.len());
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    for t in tensors {
        let data = file.tensor_data(t).expect("tensor data");
        out.clear();
        out.resize(t.n_elements() as usize, 0.0f32);
        dequantize(t.ty, data, &mut out).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        let mut hash = Sha256::new();
        for chunk in out.chunks(1 << 16) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            hash.update(&bytes);
        }
        ours.push(format!(
            "{}\t{}\t{}\t{}\t{:x}",
            t.name,
            t.ty.id(),
            t.data_start,
            t.n_elements(),
            hash.finalize()
        ));
    }
    let rust_done = start.elapsed();

    let reference = reference.finish(Duration::from_secs(150));
    let reference: Vec<&str> = reference.lines().collect();
    assert_eq!(reference.len(), ours.len(), "python listed every tensor");
    for (got, want) in ours.iter().zip(&reference) {
        assert_eq!(
            got, want,
            "tensor (name, type, offset, elements, sha256 of f32) differs from gguf's reference"
        );
    }
    println!(
        "{} tensors identical; llmd side {:.1}s, total {:.1}s",
        ours.len(),
        rust_done.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
