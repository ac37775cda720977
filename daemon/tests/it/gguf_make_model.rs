//! `llmd make-model`: tiny models of every architecture and type are written, read back by our
//! reader with the intended shape, metadata and tokenizer, are deterministic per seed, and a
//! 70B header-only file opens header-only with every tensor listed as missing; a 405B one is
//! planned from its header; gemma2, phi3 and the rope scaling options write what their
//! converters write. Also checks
//! `InspectReport` on these files and on the real models when installed.

use std::path::{Path, PathBuf};

use clap::Parser;
use llmd::inspect::ReportFromFile;
use llmd::make_model::{self, MakeModelArgs};
use llmd_gguf::{GgufError, GgufFile, ModelDescription, NormKind};
use llmd_kernels::backend::KvTypes;
use llmd_kernels::quant::{dequantize, GgmlType};
use llmd_shared::InspectReport;

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

/// Llama 3.1 405B as a header (with its `rope_freqs`): the planner sizes it from the header
/// alone, every layer charged its copy of the rope factors, and says it does not fit two
/// 24 GB GPUs.
#[test]
fn header_only_405b_with_rope_freqs_is_planned() {
    use llmd::model::plan::{plan, ModelSizes, PlanDevice, PlanOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = make(
        dir.path(),
        "405b.gguf",
        &[
            "--arch",
            "llama",
            "--preset",
            "405b",
            "--type",
            "q4_k_m",
            "--rope-freqs",
            "--header-only",
        ],
    );
    let f = GgufFile::open_header(&path).unwrap();
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
        (126, 16384, 53248, 128, 8, 128256)
    );
    let freqs = f.tensor("rope_freqs.weight").unwrap();
    assert_eq!(
        (freqs.dims.as_slice(), freqs.ty),
        (&[64u64][..], GgmlType::F32)
    );
    let r = InspectReport::from_file(&f);
    assert!(
        (405e9..407e9).contains(&(r.parameters as f64)),
        "{}",
        r.parameters
    );
    let (_, config, sizes) = ModelSizes::open(&path, 512, 64, KvTypes::F16).unwrap();
    assert!(config.rope_factors.is_some());
    // Each layer: its tensors plus the 64 factors (256 bytes and their f32 copy).
    let blk0: u64 = f
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("blk.0."))
        .map(|t| t.n_bytes + if t.n_rows() == 1 { t.dims[0] * 4 } else { 0 })
        .sum();
    assert_eq!(sizes.layer_weight_bytes[0], blk0 + 512);
    let gpu = |name: &str| PlanDevice {
        name: name.into(),
        gpu: true,
        budget_bytes: 24 << 30,
        free_bytes: 24 << 30,
    };
    let opts = PlanOptions {
        split: None,
        gpu_layers: None,
        ctx: 8192,
        experts: None,
        expert_host: None,
    };
    let p = plan(&sizes, &[gpu("cuda:0"), gpu("cuda:1")], &opts).unwrap();
    assert!(!p.fits(), "405B in Q4_K_M needs far more than 48 GB");
}

/// Gemma 2 and Phi-3 (plain and with long/short rope factors), Llama 3.1-shaped, YaRN and
/// Mistral-shaped llama files read back with the metadata and tensors their converters write,
/// and open as llmd models.
#[test]
fn new_architectures_and_rope_scaling_read_back() {
    use llmd::model::config::{Arch, RopeFactors};
    use llmd::model::load::OpenedModel;
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, args: &[&str]| {
        let path = make(dir.path(), name, args);
        let f = GgufFile::open(&path).unwrap();
        f.check_supported().unwrap();
        let m = ModelDescription::from_gguf(&f).unwrap();
        let model = OpenedModel::open(&path).unwrap();
        (f, m, model)
    };

    let (f, m, g) = open("gemma2.gguf", &["--arch", "gemma2", "--type", "q8_0"]);
    assert_eq!((m.n_layer, m.sliding_window), (4, Some(16)));
    assert_eq!(
        (m.attn_logit_softcapping, m.final_logit_softcapping),
        (Some(50.0), Some(30.0))
    );
    assert!(
        f.tensor("blk.0.post_ffw_norm.weight").is_some() && f.tensor("output.weight").is_none()
    );
    assert_eq!(g.config.arch, Arch::Gemma2);
    assert_eq!(g.config.window, vec![Some(16), None, Some(16), None]);

    let (f, m, p) = open("phi3.gguf", &["--arch", "phi3", "--type", "f16"]);
    assert_eq!(m.tokenizer.model, "llama");
    assert_eq!(
        f.tensor("blk.0.attn_qkv.weight").unwrap().dims,
        vec![256, 256 * 3]
    );
    assert_eq!(
        f.tensor("blk.1.ffn_up.weight").unwrap().dims,
        vec![256, 1024]
    );
    assert!(
        f.tensor("blk.0.ffn_gate.weight").is_none() && f.tensor("blk.0.attn_q.weight").is_none()
    );
    assert!(p.config.fused_gate_up && p.config.rope_factors.is_none());

    let (f, m, p) = open(
        "phi3-long.gguf",
        &[
            "--arch",
            "phi3",
            "--rope-scaling",
            "longrope",
            "--ctx",
            "4096",
            "--rope-orig-ctx",
            "32",
        ],
    );
    assert_eq!(m.rope.scaling_original_context, Some(32));
    assert_eq!(
        m.rope.scaling_type, None,
        "the phi3 converter writes no scaling type"
    );
    let a = m.rope.scaling_attn_factor.unwrap();
    assert!(
        (a - (1.0 + 128f32.ln() / 32f32.ln()).sqrt()).abs() < 1e-6,
        "{a}"
    );
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        assert_eq!(f.tensor(name).unwrap().dims, vec![32], "{name}");
    }
    let choice = |n_ctx| p.config.with_context(n_ctx).rope_factors;
    assert_eq!(choice(32), Some(RopeFactors::LongShort { long: false }));
    assert_eq!(choice(33), Some(RopeFactors::LongShort { long: true }));

    let (f, m, l) = open("llama31.gguf", &["--arch", "llama", "--rope-freqs"]);
    assert_eq!(m.rope.scaling_type, None);
    assert_eq!(f.tensor("rope_freqs.weight").unwrap().dims, vec![32]);
    assert_eq!(l.config.rope_factors, Some(RopeFactors::Freqs));

    let (_, m, y) = open(
        "yarn.gguf",
        &[
            "--arch",
            "qwen2",
            "--rope-scaling",
            "yarn",
            "--ctx",
            "128",
            "--rope-orig-ctx",
            "32",
        ],
    );
    assert_eq!(m.rope.scaling_type.as_deref(), Some("yarn"));
    assert_eq!((m.rope.scaling_factor, m.context_length), (Some(4.0), 128));
    let r = y.config.rope[0];
    assert_eq!((r.freq_scale, r.ext_factor, r.n_ctx_orig), (0.25, 1.0, 32));

    let (_, m, n) = open(
        "nemo.gguf",
        &[
            "--arch",
            "llama",
            "--head-dim",
            "128",
            "--rope-base",
            "1000000",
        ],
    );
    assert_eq!((m.head_dim_k, m.rope.freq_base), (128, 1e6));
    assert_eq!(
        n.config.q_width(),
        512,
        "4 heads of 128 over a 256-wide stream"
    );

    // Options a family does not take are refused with a message.
    for (args, want) in [
        (
            &["--arch", "qwen2", "--rope-freqs"][..],
            "llama models only",
        ),
        (
            &["--arch", "phi3", "--heads", "8", "--head-dim", "64"][..],
            "phi3 needs",
        ),
        (
            &["--arch", "qwen3", "--preset", "405b"][..],
            "no 405b preset",
        ),
        (
            &["--arch", "llama", "--final-softcap", "3"][..],
            "--final-softcap",
        ),
    ] {
        let mut argv = vec!["make-model", "-o", "/nonexistent/x"];
        argv.extend_from_slice(args);
        let err = make_model::run(Cli::parse_from(argv).args)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// The presets of the new families, header-only: each opens for planning (the configuration
/// resolves from the header) with about the parameter count of the model it copies.
#[test]
fn new_presets_plan_from_their_headers() {
    use llmd::model::plan::ModelSizes;
    let dir = tempfile::tempdir().unwrap();
    for (arch, preset, billions) in [
        ("phi3", "1b", 3.8),
        ("phi3", "8b", 14.7),
        ("gemma2", "1b", 2.6),
        ("gemma2", "8b", 9.2),
        ("gemma2", "70b", 27.2),
        ("llama", "nemo-12b", 12.2),
        ("llama", "mistral-small-24b", 23.6),
    ] {
        let path = make(
            dir.path(),
            &format!("{arch}-{preset}.gguf"),
            &[
                "--arch",
                arch,
                "--preset",
                preset,
                "--type",
                "q4_k_m",
                "--header-only",
            ],
        );
        let f = GgufFile::open_header(&path).unwrap();
        let r = InspectReport::from_file(&f);
        let b = r.parameters as f64 / 1e9;
        assert!(
            (b / billions - 1.0).abs() < 0.05,
            "{arch} {preset}: {b:.2}B"
        );
        let (_, config, sizes) = ModelSizes::open(&path, 512, 64, KvTypes::F16).unwrap();
        assert_eq!(sizes.layer_weight_bytes.len(), config.n_layer);
        assert!(sizes.layer_weight_bytes.iter().all(|&b| b > 0));
    }
}
