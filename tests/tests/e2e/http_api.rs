//! End-to-end tests of the OpenAI-compatible HTTP API (issue 16): a real daemon with an `[http]`
//! section on 127.0.0.1 port 0 (the bound port read from its log), driven by `curl` and by the
//! official `openai` Python client, unmodified.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llmd_testkit::e2e::{run_bounded, test_data, tiny_model, Daemon};
use serde_json::Value;

/// The API key the tests configure.
const KEY: &str = "test-key-16";
/// How long one curl may take.
const CURL_LIMIT: Duration = Duration::from_secs(60);

/// A daemon serving HTTP with [`KEY`] and the tiny model loaded as "tiny"; its base URL.
fn daemon_with_model() -> (Daemon, tempfile::TempDir, String) {
    daemon_with_limits(16)
}

/// As [`daemon_with_model`], serving at most `requests` HTTP requests at once and bodies of at
/// most 64 KiB.
fn daemon_with_limits(requests: usize) -> (Daemon, tempfile::TempDir, String) {
    let d = Daemon::builder()
        .config(&format!(
            "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n\n[http]\nlisten = \
             [\"127.0.0.1:0\"]\napi_key = \"{KEY}\"\nmax_concurrent_requests = {requests}\n\
             max_body_bytes = 65536\n"
        ))
        .start();
    let base = base_url(&d);
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_model(dir.path(), "q8_0", None);
    let out = d.llmctl(&["load", model.to_str().expect("utf-8"), "--name", "tiny"]);
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (d, dir, base)
}

/// The `http://127.0.0.1:PORT` the daemon logged.
fn base_url(d: &Daemon) -> String {
    let log = d.stderr();
    let at = log
        .find("HTTP API listening on http://")
        .unwrap_or_else(|| panic!("no HTTP listening line in the log:\n{log}"));
    let rest = &log[at + "HTTP API listening on ".len()..];
    rest.split_whitespace()
        .next()
        .expect("an address")
        .to_owned()
}

/// Runs curl with `args` against `path`; returns (status code, body).
fn curl(base: &str, path: &str, args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "50", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("{base}{path}"));
    let out = run_bounded(cmd, CURL_LIMIT);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    (code.trim().parse().expect("a status code"), body.to_owned())
}

/// POSTs `json` to `path` with the key.
fn post(base: &str, path: &str, json: &str) -> (u16, String) {
    let auth = format!("Authorization: Bearer {KEY}");
    curl(
        base,
        path,
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            json,
        ],
    )
}

/// The JSON of a body.
fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn keys_models_errors_and_health() {
    let (d, _dir, base) = daemon_with_model();
    let auth = format!("Authorization: Bearer {KEY}");
    let (code, body) = curl(&base, "/v1/models", &["-H", &auth]);
    assert_eq!(code, 200, "{body}");
    let models = json(&body);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny", "{body}");

    // A wrong or missing key: 401, OpenAI-shaped; /health needs none.
    let (code, body) = curl(&base, "/v1/models", &["-H", "Authorization: Bearer nope"]);
    assert_eq!(code, 401, "{body}");
    assert_eq!(json(&body)["error"]["code"], "invalid_api_key");
    let (code, _) = curl(&base, "/v1/models", &[]);
    assert_eq!(code, 401);
    let (code, body) = curl(&base, "/health", &[]);
    assert_eq!(code, 200, "{body}");
    let health = json(&body);
    assert_eq!(health["models"][0]["name"], "tiny");
    assert_eq!(health["models"][0]["state"], "serving");

    // Unknown model 404, malformed JSON 400, refused values 400, all with an error message.
    let (code, body) = post(&base, "/v1/completions", r#"{"model":"nope","prompt":"x"}"#);
    assert_eq!(code, 404, "{body}");
    assert!(json(&body)["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("nope")));
    let (code, body) = post(
        &base,
        "/v1/chat/completions",
        r#"{"model":"tiny","messages":"#,
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["error"]["type"], "invalid_request_error");
    let (code, body) = post(
        &base,
        "/v1/completions",
        r#"{"model":"tiny","prompt":"x","temperature":-1}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("temperature"), "{body}");
    let (code, body) = post(
        &base,
        "/v1/completions",
        r#"{"model":"tiny","prompt":"x","n":3}"#,
    );
    assert_eq!(code, 400, "{body}");
    drop(d);
}

#[test]
fn a_repeated_prompt_reports_its_cached_tokens() {
    let (_d, _dir, base) = daemon_with_model();
    let prompt = "Once upon a time, in a city by a river, there lived a baker who rose before \
                  dawn every day to light the ovens and knead the dough for the whole street.";
    let body = format!(r#"{{"model":"tiny","prompt":"{prompt}","max_tokens":4,"temperature":0}}"#);
    let (code, first) = post(&base, "/v1/completions", &body);
    assert_eq!(code, 200, "{first}");
    let first = json(&first);
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    let (code, again) = post(&base, "/v1/completions", &body);
    assert_eq!(code, 200, "{again}");
    let again = json(&again);
    let prompt_tokens = again["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt_tokens");
    assert!(
        prompt_tokens > 17,
        "a prompt of more than one block: {again}"
    );
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(prompt_tokens - 1),
        "all but the last prompt token reused: {again}"
    );
    assert_eq!(
        again["choices"][0]["text"], first["choices"][0]["text"],
        "the same greedy text"
    );
}

#[test]
fn greedy_completion_equals_llmctl_and_chat_streams() {
    let (d, _dir, base) = daemon_with_model();
    let prompt = "The capital of France is";
    let (code, body) = post(
        &base,
        "/v1/completions",
        &format!(r#"{{"model":"tiny","prompt":"{prompt}","max_tokens":8,"temperature":0}}"#),
    );
    assert_eq!(code, 200, "{body}");
    let http = json(&body);
    let out = d.llmctl(&[
        "generate",
        "tiny",
        prompt,
        "--raw",
        "--temperature",
        "0",
        "-n",
        "8",
        "--json",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = json(stdout.lines().last().expect("summary"));
    assert_eq!(http["choices"][0]["text"], summary["text"], "{body}");
    assert_eq!(
        http["usage"]["completion_tokens"].as_u64(),
        summary["tokens"].as_array().map(|t| t.len() as u64)
    );
    assert_eq!(http["usage"]["prompt_tokens"], summary["prompt_tokens"]);

    // Streamed chat: a role chunk, content chunks, a finish chunk, usage, [DONE].
    let (code, body) = post(
        &base,
        "/v1/chat/completions",
        r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":6,
            "temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json(d)).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 6, "{body}");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length", "{body}");

    // /metrics counts what was asked, through both front ends, and prints what llmctl prints.
    let auth = format!("Authorization: Bearer {KEY}");
    let (code, metrics) = curl(&base, "/metrics", &["-H", &auth]);
    assert_eq!(code, 200, "{metrics}");
    for line in [
        "llmd_requests_total{front_end=\"http\",route=\"/v1/completions\",outcome=\"200\"} 1",
        "llmd_requests_total{front_end=\"http\",route=\"/v1/chat/completions\",outcome=\"200\"} 1",
        "llmd_requests_total{front_end=\"socket\",route=\"generate\",outcome=\"ok\"} 1",
        "llmd_generated_tokens_total{model=\"tiny\"} 22",
        "llmd_time_to_first_token_seconds_count{model=\"tiny\"} 3",
        "llmd_running_sequences{model=\"tiny\"} 0",
        "llmd_nvml_up ",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    let out = d.llmctl(&["metrics"]);
    assert!(out.status.success());
    let ctl = String::from_utf8_lossy(&out.stdout);
    let families = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("# TYPE"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(families(&ctl), families(&metrics), "llmctl metrics:\n{ctl}");
    assert!(
        ctl.contains("llmd_generated_tokens_total{model=\"tiny\"} 22"),
        "{ctl}"
    );
    drop(d);
}

#[test]
fn eight_concurrent_streams_and_a_disconnect_frees_its_sequence() {
    let (d, _dir, base) = daemon_with_model();
    let auth = format!("Authorization: Bearer {KEY}");
    let body = r#"{"model":"tiny","prompt":"Once","max_tokens":16,"stream":true,"seed":1}"#;
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new("curl")
                .args(["-sS", "-N", "--max-time", "50", "-H", &auth])
                .args(["-H", "Content-Type: application/json", "-d", body])
                .arg(format!("{base}/v1/completions"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("curl")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("curl output");
        let text = String::from_utf8_lossy(&out.stdout);
        let data = sse_data(&text);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
        let finish = json(&data[data.len() - 2]);
        assert_eq!(finish["choices"][0]["finish_reason"], "length", "{text}");
    }

    // A client that hangs up mid-stream: its generation is dropped, the model runs nothing.
    let long = r#"{"model":"tiny","prompt":"Once","max_tokens":1000000,"stream":true}"#;
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "50", "-H", &auth])
        .args(["-H", "Content-Type: application/json", "-d", long])
        .arg(format!("{base}/v1/completions"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a first event").expect("readable");
    assert!(first.starts_with("data: "), "{first}");
    let running = || -> u64 {
        let (_, body) = curl(&base, "/health", &[]);
        json(&body)["models"][0]["running"]
            .as_u64()
            .expect("running")
    };
    assert_eq!(running(), 1, "the stream runs");
    child.kill().expect("kill curl");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() != 0 {
        assert!(
            Instant::now() < deadline,
            "the generation still runs 10 s after its client hung up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Dropped by the worker because its client went away, not ended by a limit.
    let log = d.stderr();
    assert!(
        log.contains("generation cancelled by the client"),
        "no cancellation in the log:\n{log}"
    );
}

#[test]
fn bodies_over_the_limit_get_413_and_a_full_server_429() {
    let (d, _dir, base) = daemon_with_limits(1);
    let big = format!(r#"{{"model":"tiny","prompt":"{}"}}"#, "a".repeat(100_000));
    let file = d.dir.path().join("big.json");
    std::fs::write(&file, big).expect("write the body");
    let auth = format!("Authorization: Bearer {KEY}");
    let at = format!("@{}", file.display());
    let (code, body) = curl(
        &base,
        "/v1/completions",
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &at,
        ],
    );
    assert_eq!(code, 413, "{body}");
    assert!(json(&body)["error"]["message"].is_string(), "{body}");

    // One slot, held by a stream: the next request gets 429 until the stream ends.
    let long = r#"{"model":"tiny","prompt":"Once","max_tokens":1000000,"stream":true}"#;
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "50", "-H", &auth])
        .args(["-H", "Content-Type: application/json", "-d", long])
        .arg(format!("{base}/v1/completions"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a first event").expect("readable");
    assert!(first.starts_with("data: "), "{first}");
    let (code, body) = curl(&base, "/v1/models", &["-H", &auth]);
    assert_eq!(code, 429, "{body}");
    assert_eq!(
        json(&body)["error"]["code"],
        "rate_limit_exceeded",
        "{body}"
    );
    child.kill().expect("kill curl");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = curl(&base, "/v1/models", &["-H", &auth]);
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot is still held 10 s after its stream's client left: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_official_openai_client_works_unmodified() {
    let Some(python) = test_data("LLMD_TEST_PYTHON") else {
        return;
    };
    let (d, _dir, base) = daemon_with_model();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http/openai_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(format!("{base}/v1"))
        .arg(KEY)
        .arg("tiny");
    let out = run_bounded(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "openai client: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.stderr()
    );
    let seen = json(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(seen["models"][0], "tiny", "{seen}");
    assert_eq!(seen["completion"]["finish"], "length", "{seen}");
    assert_eq!(seen["completion"]["completion_tokens"], 6, "{seen}");
    assert_eq!(seen["penalised"]["completion_tokens"], 6, "{seen}");
    assert_eq!(seen["chat_stream"]["usage"], 5, "{seen}");
    let chunks = seen["chat_stream"]["chunks"].as_array().expect("chunks");
    assert_eq!(
        chunks.last().expect("a chunk")["finish"],
        "length",
        "{seen}"
    );
    assert_eq!(seen["unknown_model"], 404, "{seen}");
    assert_eq!(seen["wrong_key"], 401, "{seen}");
}
