//! `llmctl inspect` against a real daemon: the real Gemma 3 270M file and the partial Qwen2 7B
//! download are described from their headers; 1,000+ corrupted files each get an error reply
//! (never a dropped connection), and the daemon keeps answering afterwards.

use llmd_testkit::e2e as common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::Daemon;
use llmd_shared::{
    read_frame, write_frame, Hello, HelloReply, InspectRequest, Reply, Request, Response,
};
use llmd_testkit::Rng;
use serde_json::Value;

fn inspect_json(d: &Daemon, path: &Path) -> Value {
    let out = d.llmctl(&["inspect", path.to_str().expect("utf-8 path"), "--json"]);
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

#[test]
fn inspect_reports_the_real_models() {
    let d = Daemon::start();
    if let Some(gemma) = common::test_data("LLMD_GEMMA_GGUF") {
        let r = inspect_json(&d, &gemma);
        assert_eq!(r["architecture"], "gemma3");
        assert_eq!(r["layers"], 18);
        assert_eq!(r["embedding_length"], 640);
        assert_eq!(r["vocab_size"], 262144);
        assert_eq!(r["complete"], true);
        assert_eq!(r["chat_template"], false);
        let counts: Vec<(String, u64)> = r["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| {
                (
                    t["ty"].as_str().expect("ty").to_string(),
                    t["tensors"].as_u64().expect("tensors"),
                )
            })
            .collect();
        for want in [
            ("F32", 109),
            ("Q5_0", 81),
            ("Q8_0", 10),
            ("Q4_K", 27),
            ("Q6_K", 9),
        ] {
            assert!(
                counts.contains(&(want.0.to_string(), want.1)),
                "{want:?} not in {counts:?}"
            );
        }
        let text = d.llmctl(&["inspect", gemma.to_str().expect("utf-8")]);
        assert!(String::from_utf8_lossy(&text.stdout).contains("gemma3"));
    }
    if let Some(qwen) = common::test_data("LLMD_QWEN_HEADER_GGUF") {
        let r = inspect_json(&d, &qwen);
        assert_eq!(r["architecture"], "qwen2");
        assert_eq!(
            r["complete"], false,
            "the first chunk of a download is partial"
        );
        assert_eq!(r["vocab_size"], 152064);
        assert_eq!(r["chat_template"], true);
        assert!(r["missing_tensors"].as_u64().expect("missing") > 0);
    }
}

/// A tiny valid model written by `llmd make-model`, and where its tensor data starts.
fn tiny_model(dir: &Path) -> (Vec<u8>, usize) {
    let path = common::tiny_model(dir, "q8_0", None);
    let file = llmd_gguf::GgufFile::open(&path).expect("valid tiny model");
    let header = file.data_offset() as usize;
    (std::fs::read(&path).expect("read"), header)
}

#[test]
fn a_thousand_corrupted_files_each_get_an_error_and_the_daemon_keeps_answering() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (valid, header_len) = tiny_model(dir.path());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    // Truncated inside the header (a header-only open still needs the whole header).
    for i in 0..600 {
        let cut = (i * header_len / 600).min(header_len - 1);
        corpus.push(valid[..cut].to_vec());
    }
    // Bad magic, unsupported versions, absurd tensor and metadata counts.
    for i in 0..400u64 {
        let mut f = valid.clone();
        match i % 4 {
            0 => f[(rng.next_u64() % 4) as usize] ^= 1 + (rng.next_u64() % 255) as u8,
            1 => {
                let v = [0u32, 1, 4, 7, 0x0300_0000, u32::MAX][(rng.next_u64() % 6) as usize];
                f[4..8].copy_from_slice(&v.to_le_bytes());
            }
            2 => f[8..16].copy_from_slice(&(u64::MAX - rng.next_u64() % 1000).to_le_bytes()),
            _ => f[16..24]
                .copy_from_slice(&((1u64 << 40) + rng.next_u64() % (1 << 40)).to_le_bytes()),
        }
        corpus.push(f);
    }

    let socket = UnixStream::connect(&d.socket).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = socket.try_clone().expect("clone");
    let mut writer = socket;
    write_frame(&mut writer, &Hello::current()).expect("hello");
    let hello: HelloReply = read_frame(&mut reader).expect("hello reply");
    assert!(matches!(hello, HelloReply::Accepted { .. }), "{hello:?}");
    let path = dir.path().join("corrupt.gguf");
    for (i, bytes) in corpus.iter().enumerate() {
        std::fs::write(&path, bytes).expect("write corrupt file");
        let request = Request::Inspect(InspectRequest {
            path: path.display().to_string(),
        });
        write_frame(&mut writer, &request).expect("send");
        let response: Response = read_frame(&mut reader)
            .unwrap_or_else(|e| panic!("file {i}: no reply ({e})\n{}", d.stderr()));
        match response {
            Response::Error(e) => assert!(!e.message.is_empty()),
            Response::Reply(Reply::Inspect(r)) => panic!("corrupted file {i} was accepted: {r:?}"),
            other => panic!("file {i}: unexpected {other:?}"),
        }
    }
    assert!(corpus.len() >= 1000);
    // The daemon still answers, on the same connection and on a new one.
    std::fs::write(&path, &valid).expect("write valid file");
    write_frame(
        &mut writer,
        &Request::Inspect(InspectRequest {
            path: path.display().to_string(),
        }),
    )
    .expect("send");
    let response: Response = read_frame(&mut reader).expect("reply");
    assert!(
        matches!(response, Response::Reply(Reply::Inspect(_))),
        "{response:?}"
    );
    assert!(d.status_json()["pid"].as_u64().is_some());
}
