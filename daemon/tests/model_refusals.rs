//! Models llmd cannot run correctly are refused at load with a clear error instead of producing
//! wrong text: here, a llama model carrying per-dimension rope frequency factors (Llama 3.1+).

use std::fs::File;
use std::io::BufWriter;
use std::process::Command;

use llmd::gguf::{GgufFile, GgufWriter};
use llmd::model::load::{LoadError, OpenedModel};
use llmd_kernels::quant::GgmlType;

#[test]
fn rope_frequency_factors_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = dir.path().join("tiny.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args([
            "make-model",
            "--arch",
            "llama",
            "--preset",
            "tiny",
            "--type",
            "f32",
            "-o",
        ])
        .arg(&tiny)
        .output()
        .expect("run make-model");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        OpenedModel::open(&tiny).is_ok(),
        "the plain tiny model loads"
    );

    // The same model with a rope_freqs tensor added.
    let src = GgufFile::open(&tiny).expect("open tiny");
    let mut w = GgufWriter::new();
    for e in src.metadata().entries() {
        w.add_metadata(e.key.clone(), e.value.clone())
            .expect("metadata");
    }
    for t in src.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ty).expect("tensor");
    }
    let head_dim = 64u64;
    w.add_tensor("rope_freqs.weight", &[head_dim / 2], GgmlType::F32)
        .expect("rope_freqs");
    let with_factors = dir.path().join("factors.gguf");
    let mut stream = w
        .start(BufWriter::new(File::create(&with_factors).expect("create")))
        .expect("start");
    for t in src.tensors() {
        stream
            .write_tensor(src.tensor_data(t).expect("data"))
            .expect("write");
    }
    let ones: Vec<u8> = (0..head_dim / 2)
        .flat_map(|_| 1.0f32.to_le_bytes())
        .collect();
    stream.write_tensor(&ones).expect("write rope_freqs");
    stream.finish().expect("finish");

    match OpenedModel::open(&with_factors) {
        Err(e @ LoadError::Config(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("rope_freqs.weight") && msg.contains("not supported"),
                "{msg}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a model with rope frequency factors must be refused"),
    }
}
