//! `llmd make-model`: tiny models of every architecture and type are written, read back by our
//! reader with the intended shape, metadata and tokenizer, are deterministic per seed, and a
//! 70B header-only file opens header-only with every tensor listed as missing. Also checks
//! `InspectReport` on these files and on the real models when installed.

use std::path::{Path, PathBuf};

use clap::Parser;
use llmd::gguf::{GgufError, GgufFile, InspectReport, ModelDescription, NormKind, ReportFromFile};
use llmd::make_model::{self, MakeModelArgs};
use llmd_kernels::quant::{dequantize, GgmlType};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: MakeModelArgs,
}

fn make(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut argv = vec!["make-model", "-o", path.to_str().unwrap()];
    argv.extend_from_slice(extra);
    make_model::run(Cli::parse_from(argv).args).unwrap();
    path
}

#[test]
fn tiny_models_of_every_arch_read_back() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        for ty in [
            "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s",
            "q3_k_m", "q3_k_l", "q4_k", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "iq4_nl",
            "iq4_xs", "tq1_0", "tq2_0", "mxfp4",
        ] {
            let path = make(
                dir.path(),
                &format!("{arch}-{ty}.gguf"),
                &["--arch", arch, "--type", ty],
            );
            let f = GgufFile::open(&path).unwrap();
            f.check_supported().unwrap();
            let m = ModelDescription::from_gguf(&f).unwrap();
            assert_eq!(m.architecture, arch);
            assert_eq!(m.n_embd, 256);
            assert_eq!(m.n_layer, if arch == "gemma3" { 6 } else { 2 });
            assert_eq!(m.vocab_size, 1024);
            assert_eq!(m.tokenizer.tokens.len(), 1024);
            assert_eq!(m.norm_kind, NormKind::Rms);
            assert!(m.tokenizer.chat_template.is_some());
            let kind = if arch == "gemma3" { "llama" } else { "gpt2" };
            assert_eq!(m.tokenizer.model, kind);
            assert_eq!(m.tokenizer.merges.is_some(), kind == "gpt2");
            assert_eq!(m.tokenizer.scores.is_some(), kind == "llama");
            assert_eq!(m.sliding_window.is_some(), arch == "gemma3");
            // Norms are F32 and ≈ 1; matrices decode to small finite values.
            let norm = f.tensor("blk.0.attn_norm.weight").unwrap();
            assert_eq!(norm.ty, GgmlType::F32);
            let q = f.tensor("blk.1.attn_q.weight").unwrap();
            let mut vals = vec![0f32; q.n_elements() as usize];
            dequantize(q.ty, f.tensor_data(q).unwrap(), &mut vals).unwrap();
            let rms = (vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32).sqrt();
            assert!(vals.iter().all(|v| v.is_finite()));
            assert!((0.01..0.04).contains(&rms), "{arch} {ty}: rms {rms}");
            let mut nv = vec![0f32; norm.n_elements() as usize];
            dequantize(norm.ty, f.tensor_data(norm).unwrap(), &mut nv).unwrap();
            assert!(nv.iter().all(|v| (0.9..1.1).contains(v)));
            let has = |n: &str| f.tensor(n).is_some();
            assert_eq!(has("blk.0.attn_q.bias"), arch == "qwen2");
            assert_eq!(
                has("blk.0.attn_q_norm.weight"),
                arch == "qwen3" || arch == "gemma3"
            );
            assert_eq!(has("blk.0.post_ffw_norm.weight"), arch == "gemma3");
            assert_eq!(has("output.weight"), arch != "gemma3");
        }
    }
}

#[test]
fn explicit_shape_and_seed_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--arch",
        "qwen3",
        "--layers",
        "3",
        "--embd",
        "512",
        "--ff",
        "768",
        "--heads",
        "8",
        "--kv-heads",
        "2",
        "--head-dim",
        "32",
        "--vocab",
        "700",
        "--ctx",
        "2048",
        "--type",
        "q8_0",
        "--seed",
        "9",
    ];
    let a = make(dir.path(), "a.gguf", &args);
    let b = make(dir.path(), "b.gguf", &args);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed, same bytes"
    );
    let mut other = args.to_vec();
    let last = other.len() - 1;
    other[last] = "10";
    let c = make(dir.path(), "c.gguf", &other);
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    // Thread count does not change the output.
    let mut one = args.to_vec();
    one.extend(["--threads", "1"]);
    let d = make(dir.path(), "d.gguf", &one);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&d).unwrap());

    let f = GgufFile::open(&a).unwrap();
    let m = ModelDescription::from_gguf(&f).unwrap();
    assert_eq!(
        (m.n_layer, m.n_embd, m.n_ff[0], m.n_head[0], m.n_head_kv[0]),
        (3, 512, 768, 8, 2)
    );
    assert_eq!(
        (m.head_dim_k, m.vocab_size, m.context_length),
        (32, 700, 2048)
    );
    assert_eq!(
        f.tensor("blk.0.attn_q.weight").unwrap().dims,
        vec![512, 256]
    );
    // SentencePiece on a llama.
    let s = make(
        dir.path(),
        "spm.gguf",
        &["--arch", "llama", "--vocab-kind", "spm"],
    );
    let m = ModelDescription::from_gguf(&GgufFile::open(&s).unwrap()).unwrap();
    assert_eq!(m.tokenizer.model, "llama");
    assert_eq!(m.tokenizer.tokens[3], "<0x00>");
    // Invalid shapes are refused with a message.
    let bad = Cli::parse_from([
        "make-model",
        "--arch",
        "llama",
        "--heads",
        "6",
        "--kv-heads",
        "4",
        "-o",
        "/nonexistent/x",
    ]);
    let err = make_model::run(bad.args).unwrap_err().to_string();
    assert!(err.contains("multiple of --kv-heads"), "{err}");
}

#[test]
fn header_only_70b_opens_as_partial_download() {
    let dir = tempfile::tempdir().unwrap();
    let path = make(
        dir.path(),
        "70b.gguf",
        &[
            "--arch",
            "llama",
            "--preset",
            "70b",
            "--type",
            "q4_k_m",
            "--header-only",
        ],
    );
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 16 << 20, "header-only file is {size} bytes");
    assert!(matches!(
        GgufFile::open(&path),
        Err(GgufError::TensorOutOfRange { .. })
    ));
    let f = GgufFile::open_header(&path).unwrap();
    assert_eq!(f.missing_tensors().count(), f.tensors().len());
    let m = ModelDescription::from_gguf(&f).unwrap();
    assert_eq!(
        (
            m.n_layer,
            m.n_embd,
            m.n_ff[0],
            m.n_head[0],
            m.n_head_kv[0],
            m.vocab_size
        ),
        (80, 8192, 28672, 64, 8, 128256)
    );
    let r = InspectReport::from_file(&f);
    assert!(
        (70.0e9..71.0e9).contains(&(r.parameters as f64)),
        "{}",
        r.parameters
    );
    assert!(!r.complete);
    assert_eq!(r.missing_tensors, r.tensor_count);
    assert_eq!(r.missing_bytes, r.weights_bytes);
    // Q4_K_M of Llama 3 70B is about 42.5 GB.
    assert!(
        (40e9..45e9).contains(&(r.weights_bytes as f64)),
        "{}",
        r.weights_bytes
    );
    assert_eq!(r.file_type_name.as_deref(), Some("Q4_K_M"));
    let q6 = r.types.iter().find(|t| t.ty == "Q6_K").unwrap();
    assert!(q6.tensors > 40);
    assert!(r.to_string().contains("partial"));
}

#[test]
fn inspect_report_of_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = make(
        dir.path(),
        "g.gguf",
        &["--arch", "gemma3", "--type", "q4_k_m"],
    );
    let r = InspectReport::from_file(&GgufFile::open(&path).unwrap());
    assert_eq!(r.architecture.as_deref(), Some("gemma3"));
    assert_eq!(
        (r.layers, r.embedding_length, r.vocab_size),
        (Some(6), Some(256), Some(1024))
    );
    assert_eq!(r.tokenizer.as_ref().unwrap().kind, "SentencePiece");
    assert!(r.chat_template && r.complete);
    assert_eq!(
        r.types.iter().map(|t| t.tensors).sum::<u64>(),
        r.tensor_count
    );
    assert_eq!(
        r.types.iter().map(|t| t.bytes).sum::<u64>(),
        r.weights_bytes
    );
    assert!(r.weights_bytes < r.file_size);
    let json = serde_json::to_string(&r).unwrap();
    let back: InspectReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let text = r.to_string();
    assert!(
        text.contains("gemma3") && text.contains("Q4_K_M") && text.contains("Q6_K"),
        "{text}"
    );
}

/// A path from `var`; `None` (after printing SKIPPED) when not installed and not required.
fn test_data(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(p.into()),
        None if std::env::var_os("LLMD_REQUIRE_TEST_DATA").is_some() => {
            panic!("{var} is not set but LLMD_REQUIRE_TEST_DATA is")
        }
        None => {
            println!("SKIPPED: {var} is not set (run scripts/test-deps to fetch the model)");
            None
        }
    }
}

#[test]
fn inspect_report_of_real_models() {
    if let Some(path) = test_data("LLMD_GEMMA_GGUF") {
        let r = InspectReport::from_file(&GgufFile::open_header(&path).unwrap());
        assert_eq!(r.architecture.as_deref(), Some("gemma3"));
        assert_eq!(
            (r.layers, r.embedding_length, r.vocab_size),
            (Some(18), Some(640), Some(262144))
        );
        assert_eq!(r.file_type_name.as_deref(), Some("Q4_K_M"));
        let count = |ty: &str| r.types.iter().find(|t| t.ty == ty).map_or(0, |t| t.tensors);
        // Per-type counts as the gguf package reports them.
        assert_eq!(
            (
                count("F32"),
                count("Q5_0"),
                count("Q4_K"),
                count("Q8_0"),
                count("Q6_K")
            ),
            (109, 81, 27, 10, 9)
        );
        assert_eq!(r.parameters, 268_098_176);
        assert_eq!(r.weights_bytes, 246_587_904);
        assert!(r.complete && !r.chat_template);
        assert_eq!(r.tokenizer.as_ref().unwrap().tokens, 262144);
    }
    if let Some(path) = test_data("LLMD_QWEN_HEADER_GGUF") {
        let r = InspectReport::from_file(&GgufFile::open_header(&path).unwrap());
        assert_eq!(r.architecture.as_deref(), Some("qwen2"));
        assert!(!r.complete && r.missing_tensors > 0 && r.missing_bytes > 0);
        assert_eq!(r.layers, Some(28));
        assert_eq!(r.tokenizer.as_ref().unwrap().kind, "byte-level BPE");
        assert!(r.chat_template);
    }
}
