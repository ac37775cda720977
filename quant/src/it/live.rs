//! Live comparison with the `gguf` pip package (LLMD_TEST_PYTHON): fresh random blocks every run
//! (seeded by the clock; the seed is printed, and LLMD_QUANT_SEED replays one) are dequantized by
//! gguf.quants and by llmd and compared bit for bit; random rows are quantized by both to every
//! format numpy can quantize and compared byte for byte.

use std::time::Duration;

use super::util::{assert_bits_eq, random_blocks, random_row, run_python, test_data_var, Rng};
use crate::{dequantize, quantize, GgmlType};

/// Reads `op type_id src dst` quadruples: `d` dequantizes the bytes in src to f32, `q` quantizes
/// the f32 in src; the result goes to dst.
const SCRIPT: &str = r#"
import sys
import numpy as np
from gguf import GGMLQuantizationType, quants
args = sys.argv[1:]
for i in range(0, len(args), 4):
    op, tid, src, dst = args[i:i + 4]
    qt = GGMLQuantizationType(int(tid))
    if op == "d":
        out = np.asarray(quants.dequantize(np.fromfile(src, dtype=np.uint8), qt), dtype=np.float32)
    else:
        out = np.asarray(quants.quantize(np.fromfile(src, dtype=np.float32), qt)).view(np.uint8)
    np.ascontiguousarray(out).tofile(dst)
"#;

/// Types gguf.quants can dequantize: the type table's types llmd computes with
/// ([`GgmlType::is_supported`]) but Q8_K, which gguf.quants lacks (the committed fixtures cover
/// that one).
fn dequant_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|t| t.is_supported() && *t != GgmlType::Q8_K)
}

/// Types gguf.quants can quantize that llmd quantizes too.
const QUANT: [GgmlType; 10] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
];

#[test]
fn random_blocks_match_gguf_python_reference() {
    let Some(python) = test_data_var("LLMD_TEST_PYTHON", "needs the gguf pip package") else {
        return;
    };
    let seed = match std::env::var("LLMD_QUANT_SEED") {
        Ok(s) => s.parse().expect("LLMD_QUANT_SEED must be an integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    println!("quant_live seed: {seed} (replay with LLMD_QUANT_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("temp dir");

    struct Case {
        ty: GgmlType,
        dequant: bool,
        n: usize,
        input: Vec<u8>,
        dst: std::path::PathBuf,
    }
    let mut cases = Vec::new();
    let mut args = Vec::new();
    for ty in dequant_types() {
        let n_blocks = if ty.block_elems() == 1 {
            8192
        } else {
            4096 / ty.block_elems() * 8
        };
        // The test kit links the crate as a dependency, a copy whose `GgmlType` is another type:
        // it gets the same type by its id.
        let kit_ty = ty.id().try_into().expect("one type table");
        let input = random_blocks(&mut rng, kit_ty, n_blocks);
        let n = n_blocks * ty.block_elems();
        cases.push(Case {
            ty,
            dequant: true,
            n,
            input,
            dst: dir.path().join(format!("d_{ty}.out")),
        });
    }
    for ty in QUANT {
        let block = ty.block_elems().max(32);
        let x = random_row(&mut rng, 64 * block, block);
        let input = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        cases.push(Case {
            ty,
            dequant: false,
            n: x.len(),
            input,
            dst: dir.path().join(format!("q_{ty}.out")),
        });
    }
    for c in &cases {
        let src = dir
            .path()
            .join(format!("{}_{}.in", if c.dequant { "d" } else { "q" }, c.ty));
        std::fs::write(&src, &c.input).expect("writing input");
        args.push(if c.dequant {
            "d".to_string()
        } else {
            "q".to_string()
        });
        args.push(c.ty.id().to_string());
        args.push(src.display().to_string());
        args.push(c.dst.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_python(&python, SCRIPT, &args, Duration::from_secs(120));

    for c in &cases {
        let reference = std::fs::read(&c.dst).expect("reading python output");
        if c.dequant {
            let want: Vec<f32> = reference
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let mut got = vec![f32::NAN; c.n];
            dequantize(c.ty, &c.input, &mut got).unwrap();
            assert_bits_eq(&format!("seed {seed}: dequantize {}", c.ty), &got, &want);
        } else {
            let x: Vec<f32> = c
                .input
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let got = quantize(c.ty, &x).unwrap();
            assert!(
                got == reference,
                "seed {seed}: quantize {} differs from gguf.quants",
                c.ty
            );
        }
    }
}
