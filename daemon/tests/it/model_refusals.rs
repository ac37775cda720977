//! Models llmd cannot run correctly are refused at load with a clear error naming what is wrong,
//! instead of producing wrong text: rope scaling types neither llama.cpp nor llmd implement,
//! frequency factor tensors an architecture does not use (llama.cpp refuses those files too),
//! and Phi-3 long factors without their short counterparts. Llama 3.1 files (which carry
//! `rope_freqs.weight`) load.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use llmd::model::load::{LoadError, OpenedModel};
use llmd_gguf::{GgufFile, GgufWriter, MetadataValue};
use llmd_kernels::quant::GgmlType;

/// A tiny model of `arch` written by `llmd make-model` with `extra` arguments.
fn make(dir: &Path, arch: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(format!("{arch}{}.gguf", extra.join("")));
    let out = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args([
            "make-model",
            "--arch",
            arch,
            "--preset",
            "tiny",
            "--type",
            "f32",
        ])
        .args(extra)
        .arg("-o")
        .arg(&path)
        .output()
        .expect("run make-model");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A copy of `src` as `name`, with metadata `set` (added or replaced), tensors named in `drop`
/// left out and an F32 vector tensor `add` of 32 ones added.
fn rewrite(
    src: &Path,
    name: &str,
    set: &[(&str, MetadataValue)],
    drop: &[&str],
    add: Option<&str>,
) -> PathBuf {
    let src = GgufFile::open(src).expect("open source");
    let mut w = GgufWriter::new();
    for e in src.metadata().entries() {
        if !set.iter().any(|(k, _)| *k == e.key) {
            w.add_metadata(e.key.clone(), e.value.clone())
                .expect("metadata");
        }
    }
    for (k, v) in set {
        w.add_metadata(k.to_string(), v.clone()).expect("metadata");
    }
    let kept: Vec<_> = src
        .tensors()
        .iter()
        .filter(|t| !drop.contains(&t.name.as_str()))
        .collect();
    for t in &kept {
        w.add_tensor(t.name.clone(), &t.dims, t.ty).expect("tensor");
    }
    if let Some(extra) = add {
        w.add_tensor(extra, &[32], GgmlType::F32).expect("tensor");
    }
    let path = PathBuf::from(format!("{}.{name}", src.path().display()));
    let mut stream = w
        .start(BufWriter::new(File::create(&path).expect("create")))
        .expect("start");
    for t in &kept {
        stream
            .write_tensor(src.tensor_data(t).expect("data"))
            .expect("write");
    }
    if add.is_some() {
        let ones: Vec<u8> = (0..32).flat_map(|_| 1.0f32.to_le_bytes()).collect();
        stream.write_tensor(&ones).expect("write");
    }
    stream.finish().expect("finish");
    path
}

/// The configuration error opening `path` gives, which must name every one of `words`.
fn refused(path: &Path, words: &[&str]) {
    match OpenedModel::open(path) {
        Err(e @ LoadError::Config(_)) => {
            let msg = e.to_string();
            for w in words {
                assert!(
                    msg.contains(w),
                    "{} does not name {w}: {msg}",
                    path.display()
                );
            }
        }
        Err(other) => panic!("{}: wrong error: {other}", path.display()),
        Ok(_) => panic!("{} must be refused", path.display()),
    }
}

#[test]
fn unsupported_rope_scaling_is_refused_naming_key_and_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let llama = make(dir.path(), "llama", &[]);
    assert!(
        OpenedModel::open(&llama).is_ok(),
        "the plain tiny model loads"
    );
    for ty in ["dynamic", "llama3"] {
        let scaled = rewrite(
            &llama,
            ty,
            &[("llama.rope.scaling.type", MetadataValue::String(ty.into()))],
            &[],
            None,
        );
        refused(&scaled, &["rope.scaling.type", ty]);
    }
}

#[test]
fn frequency_factors_an_architecture_does_not_use_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Llama 3.1: rope_freqs.weight loads.
    let llama31 = make(dir.path(), "llama", &["--rope-freqs"]);
    let model = OpenedModel::open(&llama31).expect("Llama 3.1 loads");
    assert!(model.config.rope_factors.is_some());
    // Qwen2 has no use for them; llama.cpp refuses the file for its unused tensor.
    let qwen = make(dir.path(), "qwen2", &[]);
    let with_freqs = rewrite(&qwen, "freqs", &[], &[], Some("rope_freqs.weight"));
    refused(&with_freqs, &["rope_freqs.weight", "qwen2"]);
    // Phi-3's long factors without the short ones.
    let phi = make(
        dir.path(),
        "phi3",
        &[
            "--rope-scaling",
            "longrope",
            "--ctx",
            "4096",
            "--rope-orig-ctx",
            "32",
        ],
    );
    assert!(
        OpenedModel::open(&phi).is_ok(),
        "long and short together load"
    );
    let long_only = rewrite(&phi, "long", &[], &["rope_factors_short.weight"], None);
    refused(&long_only, &["rope_factors_short.weight", "missing"]);
}
