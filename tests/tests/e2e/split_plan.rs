//! `llmctl plan` on a 70B-shaped model (80 layers, Q4_K_M, header only, made by
//! `llmd make-model`): two 24 GiB devices at split 1,1 get llama.cpp's layer ranges, it fits at
//! 8k context, and at 64k it does not, with the numbers and a context that fits; at 32k it fits
//! only with a quantized KV cache.

use llmd_testkit::e2e as common;

use common::{command, run_bounded, Daemon};
use std::time::Duration;

/// A header-only 70B-shaped Q4_K_M model (`llmd make-model --preset 70b --header-only`).
fn seventy_b(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("70b.gguf");
    let mut make = command("llmd");
    make.args([
        "make-model",
        "--arch",
        "llama",
        "--preset",
        "70b",
        "--type",
        "q4_k_m",
    ])
    .arg("--header-only")
    .arg("-o")
    .arg(&file);
    let out = run_bounded(make, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

/// A daemon with two CPU devices of 24 GiB, standing in for two 24 GiB GPUs.
fn two_24_gib_devices() -> Daemon {
    Daemon::builder()
        .config(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"24GiB\"\n\
             [[devices]]\nid = \"cpu:1\"\nmemory_budget = \"24GiB\"\n",
        )
        .start()
}

/// `llmctl plan FILE --devices cpu:0,cpu:1 --split 1,1 --ctx CTX --json EXTRA..`: exit code,
/// the plan, stderr.
fn plan_json(
    d: &Daemon,
    file: &str,
    ctx: &str,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec![
        "plan",
        file,
        "--devices",
        "cpu:0,cpu:1",
        "--split",
        "1,1",
        "--ctx",
        ctx,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = d.llmctl(&args);
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{e}: {line}\n{}", String::from_utf8_lossy(&out.stderr)));
    (
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn seventy_b_on_two_24_gib_devices() {
    let dir = tempfile::tempdir().unwrap();
    let file = seventy_b(dir.path());
    let d = two_24_gib_devices();
    let f = file.to_str().unwrap();
    let plan = |ctx: &str| plan_json(&d, f, ctx, &[]);

    let (code, p, _) = plan("8192");
    assert_eq!(code, Some(0), "{p}");
    assert_eq!(p["n_layer"], 80);
    assert_eq!(p["fits"], true);
    // llama.cpp: layer il (of 80 + output) goes to the first device whose cumulative split
    // fraction exceeds il / 81.
    let cumulative = [0.5, 1.0];
    let device_of = |il: u64| {
        cumulative
            .iter()
            .position(|&c| c > il as f64 / 81.0)
            .unwrap()
    };
    let stages = p["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{p}");
    for (k, s) in stages.iter().enumerate() {
        let (a, b) = (
            s["layer_start"].as_u64().unwrap(),
            s["layer_end"].as_u64().unwrap(),
        );
        assert!((a..b).all(|il| device_of(il) == k), "{p}");
        assert_eq!(s["device"], format!("cpu:{k}"));
    }
    assert_eq!(stages[0]["layer_end"], 41);
    assert_eq!(stages[1]["output"], true);
    assert_eq!(device_of(80), 1);
    // KV: one sequence of 8192 positions, 8 KV heads of 128, f16 K and V.
    assert_eq!(stages[0]["kv_bytes"], 41u64 * 8192 * 2 * 8 * 128 * 2);
    // Q4_K_M 70B: about 40 GiB of weights.
    let weights: u64 = stages
        .iter()
        .map(|s| s["weight_bytes"].as_u64().unwrap())
        .sum();
    assert!((35u64 << 30..45u64 << 30).contains(&weights), "{weights}");

    let (code, p, err) = plan("65536");
    assert_eq!(code, Some(1), "{p}");
    assert_eq!(p["fits"], false);
    assert!(
        err.contains("does not fit") && err.contains("cpu:0 needs"),
        "{err}"
    );
    let suggestion = p["suggestion"].as_str().expect("a suggestion");
    let ctx: u64 = suggestion
        .strip_prefix("--ctx ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{suggestion}"));
    assert!((8192..65536).contains(&ctx), "{suggestion}");
    let (code, p, _) = plan(&ctx.to_string());
    assert_eq!(code, Some(0), "the suggested context {ctx} must fit");
    assert!(p["warnings"].as_array().unwrap().is_empty(), "{p}");

    // -ngl has no GPU to put layers on: refused with the reason.
    let out = d.llmctl(&["plan", f, "--devices", "cpu:0,cpu:1", "--gpu-layers", "40"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("all CPU devices") && err.contains("--split"),
        "{err}"
    );

    // Every layer on one of two devices is flagged.
    let out = d.llmctl(&[
        "plan",
        f,
        "--devices",
        "cpu:0,cpu:1",
        "--split",
        "1,0",
        "--ctx",
        "512",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("warning: every layer is on cpu:0"), "{text}");
    assert!(text.contains("warning: cpu:1 gets no layers"), "{text}");
}

/// The case quantized KV caches are for: a 70B at 32k context on two 24 GiB devices does not
/// fit with an f16 cache, and fits with a q8_0 one, whose plan counts 34 bytes per 32 values of
/// K and of V (`plan` shows the smaller KV and the type it assumed).
#[test]
fn seventy_b_at_32k_fits_two_24_gib_devices_only_with_a_q8_0_cache() {
    let dir = tempfile::tempdir().unwrap();
    let file = seventy_b(dir.path());
    let d = two_24_gib_devices();
    let f = file.to_str().unwrap();
    let (code, f16, err) = plan_json(&d, f, "32768", &[]);
    assert_eq!(code, Some(1), "f16 at 32k must not fit: {f16}");
    assert!(err.contains("does not fit"), "{err}");
    assert_eq!(f16["cache_type_k"], "f16");
    let (code, q8, _) = plan_json(
        &d,
        f,
        "32768",
        &["--cache-type-k", "q8_0", "--cache-type-v", "q8_0"],
    );
    assert_eq!(code, Some(0), "q8_0 at 32k must fit: {q8}");
    assert_eq!(
        (&q8["cache_type_k"], &q8["cache_type_v"]),
        (&"q8_0".into(), &"q8_0".into())
    );
    let stages = q8["stages"].as_array().unwrap();
    // 41 layers, 32768 positions, 8 KV heads of 128: 1024 values of K and of V per layer and
    // position, 32 blocks of 34 bytes each.
    assert_eq!(stages[0]["layer_end"], 41);
    assert_eq!(stages[0]["kv_bytes"], 41u64 * 32768 * 2 * 1024 / 32 * 34);
    assert_eq!(
        stages[0]["kv_bytes"].as_u64().unwrap() * 64,
        f16["stages"][0]["kv_bytes"].as_u64().unwrap() * 34
    );
    let text = String::from_utf8_lossy(
        &d.llmctl(&[
            "plan",
            f,
            "--devices",
            "cpu:0,cpu:1",
            "--ctx",
            "32768",
            "--ctk",
            "q8_0",
            "--ctv",
            "q8_0",
        ])
        .stdout,
    )
    .into_owned();
    assert!(
        text.contains("KV cache q8_0/q8_0") && text.contains("fits"),
        "{text}"
    );
}
