//! The daemon's one compute pool (issue 21): models loaded with different `--threads` are shares
//! of the pool the config sizes (a share larger than the pool is cut to it), two models generating
//! at once on the shared pool give the same tokens as each alone, and an idle daemon with two
//! loaded models uses no CPU (its workers are parked, not spinning), measured from
//! `/proc/PID/stat`. Every wait is bounded.

use std::time::Duration;

use crate::split_util::{greedy, last_json, ok};
use llmd_testkit::e2e::{tiny_model, Daemon};

/// Threads of the daemon's pool in this test: more than a small CI machine's cores, so that the
/// pool has workers to share and to park.
const POOL_THREADS: u32 = 3;

/// Most CPU an idle daemon may use over [`IDLE_WINDOW`], in clock ticks (usually 10 ms each):
/// a few ticks for the runtime's timers; a spinning worker would use the whole window (100).
const IDLE_TICKS: u64 = 5;

/// How long the idle daemon is watched.
const IDLE_WINDOW: Duration = Duration::from_secs(1);

/// The daemon's user + system CPU time in clock ticks (fields 14 and 15 of `/proc/PID/stat`,
/// counted after the parenthesised command name, which may contain spaces).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields from the state (field 3): utime is field 14, stime field 15.
    let tick = |i: usize| -> u64 { fields[i - 3].parse().expect("a tick count") };
    tick(14) + tick(15)
}

/// Loads `file` as `name` with a share of `threads`; returns the share the daemon reports.
fn load_share(d: &Daemon, file: &std::path::Path, name: &str, threads: u32) -> u64 {
    let file = file.to_str().expect("UTF-8 path");
    let threads = threads.to_string();
    ok(
        d,
        &[
            "load",
            file,
            "--name",
            name,
            "--threads",
            &threads,
            "--ctx",
            "256",
        ],
    );
    let list = last_json(&ok(d, &["list", "--json"]));
    list["models"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["name"] == name))
        .and_then(|m| m["threads"].as_u64())
        .unwrap_or_else(|| panic!("{name} not listed with its threads: {list}"))
}

#[test]
fn models_share_one_pool_that_parks_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tiny_model(dir.path(), "q8_0", None);
    let d = Daemon::builder()
        .config(&format!("threads = {POOL_THREADS}\n"))
        .start();

    assert_eq!(load_share(&d, &file, "a", 2), 2);
    assert_eq!(
        load_share(&d, &file, "b", 8),
        u64::from(POOL_THREADS),
        "a share is at most the pool"
    );

    // Each alone, then both at once on the shared pool: the same tokens.
    let alone_a = greedy(&d, "a", 24);
    let alone_b = greedy(&d, "b", 24);
    assert_eq!(alone_a, alone_b, "the share's size changed the tokens");
    let (together_a, together_b) = std::thread::scope(|s| {
        let a = s.spawn(|| greedy(&d, "a", 24));
        let b = s.spawn(|| greedy(&d, "b", 24));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert_eq!(together_a, alone_a, "model a's tokens changed beside b");
    assert_eq!(together_b, alone_b, "model b's tokens changed beside a");

    // Idle: the workers stop spinning within microseconds of the last job.
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(d.pid());
    std::thread::sleep(IDLE_WINDOW);
    let used = cpu_ticks(d.pid()) - before;
    assert!(
        used <= IDLE_TICKS,
        "an idle daemon with two models used {used} clock ticks of CPU in {IDLE_WINDOW:?}"
    );
}
