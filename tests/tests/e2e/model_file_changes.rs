//! A loaded model's file changing under the daemon (issue 14, finding 1), with the real `llmd`
//! and `llmctl`: truncated while a generation runs and while idle, overwritten in place with
//! another model, renamed and deleted, and a re-split that must read the file again after it
//! changed. The daemon never dies, never serves other weights than those it loaded (greedy
//! tokens equal to the ones before the change), answers another client within a second, and its
//! memory stays bounded. Every wait is bounded.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::split_util::{daemon_with_devices, greedy, last_json, load, ranges, Background};
use llmd_shared::{Reply, Request, Response, VersionRequest};
use llmd_testkit::e2e::{handshaken, request, rss_kib, tiny_model, Daemon};

/// How fast another client must be answered after the file changed (issue 14).
const ANSWER_LIMIT: Duration = Duration::from_secs(1);
/// Greedy tokens compared before and after a change.
const N: u32 = 24;
/// Tokens of the generation the file is truncated under: long enough to still run then.
const LONG: u32 = 1500;
/// How much the daemon's resident memory may grow across an attack (allocator slack, a KV
/// cache): far less than another copy of the model would take.
const RSS_SLACK_KIB: u64 = 64 << 10;

/// The daemon is alive and another client is answered within [`ANSWER_LIMIT`].
fn assert_responsive(d: &mut Daemon, during: &str) {
    assert!(
        matches!(d.child.try_wait(), Ok(None)),
        "llmd died {during}; log:\n{}",
        d.stderr()
    );
    let started = Instant::now();
    let mut s = handshaken(&d.socket);
    match request(&mut s, &Request::Version(VersionRequest {})) {
        Response::Reply(Reply::Version(_)) => {}
        other => panic!("version answered by {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < ANSWER_LIMIT,
        "another client waited {took:?} {during}; log:\n{}",
        d.stderr()
    );
}

/// Cuts `path` to `len` bytes in place (as `truncate -s`).
fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the model file for writing")
        .set_len(len)
        .expect("truncate");
}

/// Writes a tiny model of `ty` weights and `layers` layers at `path` (through `tiny_model`'s
/// `tiny.gguf` in a directory of its own).
fn model_at(path: &Path, ty: &str, layers: Option<u32>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = tiny_model(dir.path(), ty, layers);
    std::fs::copy(made, path).expect("copy the model");
}

#[test]
fn hostile_model_file_truncated_while_generating_and_while_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("model.gguf");
    model_at(&file, "q8_0", None);
    let mut d = daemon_with_devices(&["1GiB"]);
    load(&d, &file, "m", &[]);
    let before = greedy(&d, "m", N);
    let rss_before = rss_kib(d.pid());

    // While a generation runs.
    let mut gen = Background::start(&d, "m", LONG);
    assert!(gen.wait_lines(4), "the generation ended early");
    let size = std::fs::metadata(&file).expect("stat").len();
    truncate(&file, size / 2);
    assert_responsive(&mut d, "after the file was truncated under a generation");
    let done = gen.finish();
    assert!(
        done["tokens"].as_array().is_some_and(|t| !t.is_empty()),
        "{done}"
    );
    assert_eq!(greedy(&d, "m", N), before, "other weights were served");

    // While idle, then any generate.
    truncate(&file, 1000);
    assert_eq!(greedy(&d, "m", N), before, "other weights were served");
    truncate(&file, 0);
    assert_eq!(greedy(&d, "m", N), before, "other weights were served");
    assert_responsive(&mut d, "after the file was truncated to nothing");
    let rss_after = rss_kib(d.pid());
    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn hostile_model_file_overwritten_in_place_keeps_the_loaded_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("model.gguf");
    let other = dir.path().join("other.gguf");
    model_at(&file, "q8_0", None);
    model_at(&other, "q4_0", Some(3));
    let mut d = daemon_with_devices(&["1GiB"]);
    load(&d, &file, "m", &[]);
    load(&d, &other, "other", &[]);
    let before = greedy(&d, "m", N);
    let theirs = greedy(&d, "other", N);
    assert_ne!(before, theirs, "the two models must tell each other apart");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).expect("stat"));

    // `cp other.gguf model.gguf`: the same inode, rewritten.
    std::fs::copy(&other, &file).expect("overwrite in place");
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).expect("stat")),
        inode,
        "not an overwrite in place"
    );
    assert_eq!(
        greedy(&d, "m", N),
        before,
        "the rewritten file's weights were served"
    );
    assert_responsive(&mut d, "after the file was overwritten in place");

    // Loading it again (what the error of a re-read asks for) loads the new bytes.
    load(&d, &file, "m", &["--replace"]);
    assert_eq!(greedy(&d, "m", N), theirs);
}

/// Three CPU devices with a 4-layer model: layers 0..2 on `cpu:0`, 2..4 on `cpu:1`, the head on
/// `cpu:2`. Swapping the first two devices trades equal shares with no room to spare, so one
/// layer goes through the host and is read again from the file.
fn traded_layers_daemon(file: &Path) -> Daemon {
    model_at(file, "q8_0", Some(4));
    let d = daemon_with_devices(&["1GiB", "1GiB", "1GiB"]);
    let r = load(
        &d,
        file,
        "m",
        &["--devices", "cpu:0,cpu:1,cpu:2", "--split", "2,2,1"],
    );
    assert_eq!(
        ranges(&r["placement"]),
        [
            ("cpu:0".into(), 0, 2, false),
            ("cpu:1".into(), 2, 4, false),
            ("cpu:2".into(), 4, 4, true),
        ],
        "{r}"
    );
    d
}

/// `llmctl reload m` swapping the layers of `cpu:0` and `cpu:1`.
const TRADE: [&str; 7] = [
    "reload",
    "m",
    "--devices",
    "cpu:1,cpu:0,cpu:2",
    "--split",
    "2,2,1",
    "--json",
];

#[test]
fn hostile_resplit_after_the_file_changed_refuses_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("model.gguf");
    let mut d = traded_layers_daemon(&file);
    let before = greedy(&d, "m", N);
    let placement = |d: &Daemon| {
        ranges(&last_json(&crate::split_util::ok(d, &["list", "--json"]))["models"][0]["placement"])
    };
    let was = placement(&d);
    truncate(&file, 1000);

    let out = d.llmctl(&TRADE);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the re-split read a changed file");
    assert!(
        err.contains("changed since it was loaded") && err.contains("keeps serving"),
        "{err}"
    );
    assert_responsive(&mut d, "after a re-split was refused");
    assert_eq!(placement(&d), was, "the placement changed");
    assert_eq!(greedy(&d, "m", N), before);
}

#[test]
fn model_file_renamed_or_deleted_keeps_serving_and_resplitting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("model.gguf");
    let mut d = traded_layers_daemon(&file);
    let before = greedy(&d, "m", N);

    let renamed = dir.path().join("renamed.gguf");
    std::fs::rename(&file, &renamed).expect("rename");
    assert_eq!(greedy(&d, "m", N), before);
    std::fs::remove_file(&renamed).expect("delete");
    assert_eq!(greedy(&d, "m", N), before);

    // A re-split that reads layers again from the (deleted) file still works.
    let r = last_json(&crate::split_util::ok(&d, &TRADE));
    assert_eq!(
        ranges(&r["placement"]),
        [
            ("cpu:1".into(), 0, 2, false),
            ("cpu:0".into(), 2, 4, false),
            ("cpu:2".into(), 4, 4, true),
        ],
        "{r}"
    );
    assert_eq!(greedy(&d, "m", N), before);
    assert_responsive(&mut d, "after the file was deleted");
}
