//! A model whose worker panics (issue 14, finding 8), end to end: the daemon's own server code
//! runs in this process (so the test can make a step panic, which no request can), and the real
//! `llmctl` drives it over its socket. The model is reported failed by `status`, `list`,
//! `doctor` and the `STATUS=` line, requests are refused with the panic's message, its memory
//! is returned, other clients are answered, and `llmctl reload` recovers it.
//!
//! In a file of its own: the in-process server installs the daemon's signal handlers.

use llmd_testkit::e2e as common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{llmctl, tiny_model};
use llmd::config::{ConfigSource, LoadedConfig};
use llmd::engine::Job;
use llmd::server::{self, listener, Reloader};
use llmd::state::State;

/// Starts the daemon's server in this process on `dir/llmd.sock` with a 1 GiB CPU device;
/// returns its state and socket.
fn in_process_daemon(dir: &Path) -> (Arc<State>, PathBuf) {
    let socket = dir.join("llmd.sock");
    let config_path = dir.join("llmd.toml");
    let text = "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n";
    std::fs::write(&config_path, text).expect("write the config");
    let config = LoadedConfig {
        config: llmd::config::parse(text, &config_path).expect("config"),
        path: Some(config_path.clone()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let path = socket.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let bound = listener::bind(&path, None).expect("bind");
            let state = State::new(bound.path.clone(), config);
            let _ = tx.send(Arc::clone(&state));
            let reloader = Reloader::new(ConfigSource::Explicit(config_path), None);
            let _ = server::run(bound, state, reloader).await;
        });
    });
    let state = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server starts within 10 s");
    (state, socket)
}

fn ok(socket: &Path, args: &[&str]) -> String {
    let out = llmctl(socket, args);
    assert!(
        out.status.success(),
        "llmctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(socket: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(ok(socket, args).trim()).expect("llmctl printed JSON")
}

#[test]
fn hostile_a_panicking_model_is_reported_failed_and_reload_recovers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, socket) = in_process_daemon(dir.path());
    let model = tiny_model(dir.path(), "q8_0", None);
    ok(
        &socket,
        &["load", model.to_str().expect("utf-8"), "--name", "tiny"],
    );
    ok(&socket, &["generate", "tiny", "hi", "--raw", "-n", "4"]);

    // A step of the model's worker panics.
    let resident = state
        .runtime
        .models()
        .get("tiny")
        .cloned()
        .expect("registered");
    resident
        .submit(Job::WithPipeline(Box::new(|_| {
            panic!("injected fault for the test")
        })))
        .expect("queued");
    let deadline = Instant::now() + Duration::from_secs(10);
    while resident.failure().is_none() {
        assert!(Instant::now() < deadline, "the failure was not recorded");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(resident);

    // Reported everywhere, with the panic's message.
    let status = json(&socket, &["status", "--json"]);
    let failed = status["models"][0]["failed"].as_str().unwrap_or_default();
    assert!(failed.contains("injected fault for the test"), "{status}");
    assert_eq!(
        status["devices"][0]["memory_used_bytes"], 0,
        "the failed model's memory is returned: {status}"
    );
    assert!(ok(&socket, &["status"]).contains("FAILED"));
    let list = json(&socket, &["list", "--json"])["models"][0].clone();
    assert!(list["failed"].as_str().is_some(), "{list}");
    let line = state.status_line();
    assert!(line.contains("(1 failed: tiny)"), "{line}");
    let doctor = llmctl(&socket, &["doctor"]);
    assert_eq!(doctor.status.code(), Some(2), "a failed model is a FAIL");
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.contains("not serving") && report.contains("llmctl reload tiny"),
        "{report}"
    );

    // Requests are refused with the reason; everyone else is answered.
    let out = llmctl(&socket, &["generate", "tiny", "hi", "--raw", "-n", "4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("injected fault for the test") && err.contains("llmctl reload tiny"),
        "{err}"
    );
    let started = Instant::now();
    ok(&socket, &["version"]);
    assert!(started.elapsed() < Duration::from_secs(1));

    // A reload loads it again from its file.
    ok(&socket, &["reload", "tiny"]);
    let status = json(&socket, &["status", "--json"]);
    assert!(status["models"][0]["failed"].is_null(), "{status}");
    assert!(status["devices"][0]["memory_used_bytes"].as_u64() > Some(0));
    ok(&socket, &["generate", "tiny", "hi", "--raw", "-n", "4"]);
    assert!(!state.status_line().contains("failed"));
    let doctor = llmctl(&socket, &["doctor"]);
    assert!(!String::from_utf8_lossy(&doctor.stdout).contains("not serving"));
}
