//! Cross-check with llama.cpp's own `gguf` Python package (independent implementation): files
//! our writer and `llmd make-model` produce must read back in Python with the same metadata
//! (every value type), tensor names, types, shapes, sizes and data bytes.
//! Needs LLMD_TEST_PYTHON (a Python with `gguf` and `numpy`; scripts/test-deps makes one).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::synth::{write_model, Arch, ModelSpec, WeightType};
use crate::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use llmd_quant::GgmlType;
use serde_json::Value;

/// Dumps every key/value and tensor of a GGUF file as JSON, using the `gguf` package.
const DUMP: &str = r#"
import sys, json
import numpy as np
import gguf

def conv(x):
    if isinstance(x, (list, tuple)):
        return [conv(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x

r = gguf.GGUFReader(sys.argv[1])
out = {"kv": {}, "tensors": []}
for k, f in r.fields.items():
    if k.startswith("GGUF."):
        continue
    out["kv"][k] = conv(f.contents())
for t in r.tensors:
    raw = np.frombuffer(t.data.tobytes(), dtype=np.uint8)
    out["tensors"].append({
        "name": t.name,
        "type": t.tensor_type.name,
        "shape": [int(d) for d in t.shape],
        "n_bytes": int(t.n_bytes),
        "byte_sum": int(raw.astype(np.uint64).sum()),
    })
json.dump(out, sys.stdout)
"#;

/// The Python to use, or `None` (after printing SKIPPED) when not configured and not required.
fn python() -> Option<PathBuf> {
    llmd_testkit::data::test_data_var("LLMD_TEST_PYTHON", "scripts/test-deps creates it")
        .map(PathBuf::from)
}

fn dump(python: &Path, file: &Path) -> Value {
    let out = Command::new(python)
        .arg("-c")
        .arg(DUMP)
        .arg(file)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "gguf package failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python output is JSON")
}

fn to_json(v: &MetadataValue) -> Value {
    fn arr(a: &MetadataArray) -> Value {
        fn nums<T: Copy + Into<f64>>(v: &[T]) -> Value {
            Value::Array(v.iter().map(|&x| serde_json::json!(x.into())).collect())
        }
        match a {
            MetadataArray::U8(v) => serde_json::json!(v),
            MetadataArray::I8(v) => serde_json::json!(v),
            MetadataArray::U16(v) => serde_json::json!(v),
            MetadataArray::I16(v) => serde_json::json!(v),
            MetadataArray::U32(v) => serde_json::json!(v),
            MetadataArray::I32(v) => serde_json::json!(v),
            MetadataArray::U64(v) => serde_json::json!(v),
            MetadataArray::I64(v) => serde_json::json!(v),
            MetadataArray::F32(v) => nums(v),
            MetadataArray::F64(v) => nums(v),
            MetadataArray::Bool(v) => serde_json::json!(v),
            MetadataArray::String(v) => serde_json::json!(v),
            MetadataArray::Array(v) => Value::Array(v.iter().map(arr).collect()),
        }
    }
    match v {
        MetadataValue::U8(x) => serde_json::json!(x),
        MetadataValue::I8(x) => serde_json::json!(x),
        MetadataValue::U16(x) => serde_json::json!(x),
        MetadataValue::I16(x) => serde_json::json!(x),
        MetadataValue::U32(x) => serde_json::json!(x),
        MetadataValue::I32(x) => serde_json::json!(x),
        MetadataValue::U64(x) => serde_json::json!(x),
        MetadataValue::I64(x) => serde_json::json!(x),
        MetadataValue::F32(x) => serde_json::json!(f64::from(*x)),
        MetadataValue::F64(x) => serde_json::json!(x),
        MetadataValue::Bool(x) => serde_json::json!(x),
        MetadataValue::String(x) => serde_json::json!(x),
        MetadataValue::Array(a) => arr(a),
    }
}

/// JSON equality where numbers compare by value (Python may print 3 where we have 3.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        _ => a == b,
    }
}

/// Checks Python sees exactly what our reader sees.
fn compare(python: &Path, path: &Path) {
    let ours = GgufFile::open(path).unwrap();
    let theirs = dump(python, path);
    let kv = theirs["kv"].as_object().unwrap();
    assert_eq!(
        kv.len(),
        ours.metadata().len(),
        "{}: key count",
        path.display()
    );
    for e in ours.metadata().entries() {
        let t = kv
            .get(&e.key)
            .unwrap_or_else(|| panic!("python lacks key {}", e.key));
        assert!(
            same(&to_json(&e.value), t),
            "{}: key {} differs: ours {:?}, python {t}",
            path.display(),
            e.key,
            e.value
        );
    }
    let tensors = theirs["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), ours.tensors().len());
    for (t, p) in ours.tensors().iter().zip(tensors) {
        assert_eq!(p["name"], t.name.as_str());
        assert_eq!(p["type"], t.ty.name(), "{}", t.name);
        assert_eq!(p["shape"], serde_json::json!(t.dims), "{}", t.name);
        assert_eq!(p["n_bytes"], t.n_bytes, "{}", t.name);
        let sum: u64 = ours
            .tensor_data(t)
            .unwrap()
            .iter()
            .map(|&b| u64::from(b))
            .sum();
        assert_eq!(p["byte_sum"], sum, "{}", t.name);
    }
}

#[test]
fn gguf_package_reads_what_the_writer_writes() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.gguf");
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    let values = [
        MetadataValue::U8(200),
        MetadataValue::I8(-100),
        MetadataValue::U16(60000),
        MetadataValue::I16(-30000),
        MetadataValue::U32(4_000_000_000),
        MetadataValue::I32(-2_000_000_000),
        MetadataValue::F32(1.5e-6),
        MetadataValue::Bool(true),
        MetadataValue::String("héllo ▁wörld".into()),
        MetadataValue::U64(u64::MAX - 1),
        MetadataValue::I64(i64::MIN + 1),
        MetadataValue::F64(-2.5e300),
        MetadataValue::Array(MetadataArray::U8(vec![1, 2, 3])),
        MetadataValue::Array(MetadataArray::I16(vec![-7, 7])),
        MetadataValue::Array(MetadataArray::F32(vec![0.5, -0.25])),
        MetadataValue::Array(MetadataArray::Bool(vec![true, false])),
        MetadataValue::Array(MetadataArray::String(vec![
            "a".into(),
            "".into(),
            "ü".into(),
        ])),
        MetadataValue::Array(MetadataArray::U64(vec![u64::MAX])),
        MetadataValue::Array(MetadataArray::F64(vec![1e-300])),
    ];
    for (i, v) in values.into_iter().enumerate() {
        w.add_metadata(format!("test.key{i:02}"), v).unwrap();
    }
    let shapes: [(&str, &[u64], GgmlType); 6] = [
        ("f32", &[8, 3], GgmlType::F32),
        ("f16", &[4, 2, 2], GgmlType::F16),
        ("q8_0", &[64, 2], GgmlType::Q8_0),
        ("q4_k", &[256, 2], GgmlType::Q4_K),
        ("q6_k", &[512], GgmlType::Q6_K),
        ("q5_0", &[32, 1, 1, 2], GgmlType::Q5_0),
    ];
    for (n, d, t) in shapes {
        w.add_tensor(n, d, t).unwrap();
    }
    let datas: Vec<Vec<u8>> = w
        .tensors()
        .iter()
        .map(|t| (0..t.n_bytes).map(|i| (i * 7 % 256) as u8).collect())
        .collect();
    let mut s = w.start(std::fs::File::create(&path).unwrap()).unwrap();
    for d in &datas {
        s.write_tensor(d).unwrap();
    }
    s.finish().unwrap();
    compare(&py, &path);
}

#[test]
fn gguf_package_reads_make_model_files() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (arch, ty) in [
        (Arch::Llama, WeightType::Q4_K_M),
        (Arch::Qwen2, WeightType::Q8_0),
        (Arch::Qwen3, WeightType::F16),
        (Arch::Gemma3, WeightType::Q4_K_M),
    ] {
        let path = dir.path().join(format!("{}.gguf", arch.name()));
        let spec = ModelSpec {
            ty,
            ..ModelSpec::new(arch)
        };
        write_model(&spec, &path).unwrap();
        compare(&py, &path);
    }
}
