//! Every tensor of the real Gemma 3 270M Q4_K_M file (LLMD_GEMMA_GGUF: F32, Q8_0, Q5_0, Q4_K and
//! Q6_K tensors) dequantizes bit-identically to the gguf package's reference (LLMD_TEST_PYTHON).
//!
//! Python lists each tensor's absolute data offset, type and element count (gguf.GGUFReader),
//! then, in a second process running alongside the Rust side, the SHA-256 of its reference
//! float32 dequantization. The Rust side reads the same byte ranges, dequantizes them with llmd
//! and hashes the little-endian f32 output. (The GGUF reader of the daemon is tested on its own;
//! this test depends on nothing but the quant module.)

mod quant_util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use llmd_kernels::quant::{dequantize, GgmlType};
use quant_util::{run_python, spawn_python, test_data_var};
use sha2::{Digest, Sha256};

const LIST: &str = r#"
import sys
from gguf import GGUFReader
for t in GGUFReader(sys.argv[1]).tensors:
    print(t.name, int(t.tensor_type), int(t.data_offset), int(t.n_elements), sep="\t")
"#;

const HASH: &str = r#"
import hashlib, sys
import numpy as np
from gguf import GGUFReader, quants
for t in GGUFReader(sys.argv[1]).tensors:
    out = np.ascontiguousarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    assert out.size == t.n_elements
    print(t.name, hashlib.sha256(out.data).hexdigest(), sep="\t")
"#;

struct Tensor {
    name: String,
    ty: GgmlType,
    offset: usize,
    n: usize,
}

#[test]
fn every_gemma_tensor_dequantizes_like_gguf_reference() {
    let Some(python) = test_data_var("LLMD_TEST_PYTHON", "needs the gguf pip package") else {
        return;
    };
    let Some(model) = test_data_var("LLMD_GEMMA_GGUF", "needs the Gemma 3 270M GGUF") else {
        return;
    };
    let start = Instant::now();
    let tensors: Vec<Tensor> = run_python(&python, LIST, &[&model], Duration::from_secs(60))
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4, "bad listing line {line:?}");
            Tensor {
                name: f[0].to_string(),
                ty: GgmlType::from_id(f[1].parse().expect("type id")).expect("known type"),
                offset: f[2].parse().expect("offset"),
                n: f[3].parse().expect("element count"),
            }
        })
        .collect();
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

    let reference = spawn_python(&python, HASH, &[&model]);

    let file = std::fs::read(&model).expect("reading the model");
    let mut ours = BTreeMap::new();
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    for t in &tensors {
        let len = t.ty.row_bytes(t.n as u64).expect("whole blocks") as usize;
        let data = file
            .get(t.offset..t.offset + len)
            .expect("tensor data inside the file");
        out.clear();
        out.resize(t.n, 0.0f32);
        dequantize(t.ty, data, &mut out).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        let mut hash = Sha256::new();
        for chunk in out.chunks(1 << 16) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            hash.update(&bytes);
        }
        ours.insert(t.name.clone(), format!("{:x}", hash.finalize()));
    }
    let rust_done = start.elapsed();

    let reference = reference.finish(Duration::from_secs(120));
    let mut checked = 0;
    for line in reference.lines() {
        let (name, want) = line.split_once('\t').expect("hash line");
        let got = ours
            .get(name)
            .unwrap_or_else(|| panic!("python hashed unknown tensor {name}"));
        let ty = tensors.iter().find(|t| t.name == name).map(|t| t.ty);
        assert_eq!(
            got, want,
            "tensor {name} ({ty:?}) dequantizes differently from gguf.quants"
        );
        checked += 1;
    }
    assert_eq!(checked, tensors.len(), "python hashed every tensor");
    println!(
        "{checked} tensors identical; llmd side {:.1}s, total {:.1}s",
        rust_done.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
