//! Helpers shared by the split-plan tests (`split_*.rs`): the Gemma 3 270M file from the
//! environment (skipped or failed per `LLMD_REQUIRE_TEST_DATA`), daemons with several CPU
//! devices, greedy generations (in the foreground or streaming in the background) and JSON
//! parsing of llmctl's output.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use llmd_testkit::e2e::{command, wait_bounded, Daemon};

/// The Gemma 3 270M file, or `None` (after printing why) when the test should be skipped.
/// Panics when `LLMD_REQUIRE_TEST_DATA` is set and the file is missing.
pub fn gemma() -> Option<PathBuf> {
    llmd_testkit::e2e::test_data("LLMD_GEMMA_GGUF")
}

/// A daemon with CPU devices `cpu:0..` of the given budgets (TOML byte sizes), its prefix
/// cache off: the split tests pin each device's memory to the plan's weights once generations
/// end, and count the generations a re-split moves (`prefix_cache.rs` checks the cache there).
pub fn daemon_with_devices(budgets: &[&str]) -> Daemon {
    let mut toml = String::from("prefix_cache_mib = 0\n");
    for (i, b) in budgets.iter().enumerate() {
        toml.push_str(&format!(
            "[[devices]]\nid = \"cpu:{i}\"\nmemory_budget = \"{b}\"\n"
        ));
    }
    Daemon::builder().config(&toml).start()
}

/// Runs llmctl, asserting success; returns stdout.
pub fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = d.llmctl(args);
    assert!(
        out.status.success(),
        "llmctl {args:?} failed ({}): {}\ndaemon log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&d.stderr())
    );
    String::from_utf8(out.stdout).expect("llmctl printed invalid UTF-8")
}

/// The last lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The last line of `out` as JSON.
pub fn last_json(out: &str) -> serde_json::Value {
    let line = out.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The prompt every test generates from.
pub const PROMPT: &str = "The history of the city of Paris begins";

/// Greedy token ids of `n` tokens from `model`.
pub fn greedy(d: &Daemon, model: &str, n: u32) -> Vec<u64> {
    let n = n.to_string();
    let out = ok(
        d,
        &[
            "generate",
            model,
            PROMPT,
            "--raw",
            "--temperature",
            "0",
            "-n",
            &n,
            "--json",
        ],
    );
    tokens_of(&last_json(&out))
}

/// The `tokens` array of a generate reply.
pub fn tokens_of(reply: &serde_json::Value) -> Vec<u64> {
    reply["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {reply}"))
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

/// Loads `file` as `name` with extra arguments; returns the load reply.
pub fn load(d: &Daemon, file: &std::path::Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let file = file.to_str().expect("UTF-8 path");
    let mut args = vec!["load", file, "--name", name, "--threads", "2", "--json"];
    args.extend_from_slice(extra);
    last_json(&ok(d, &args))
}

/// One stage: `(device, layer_start, layer_end, output)`.
pub type Range = (String, u64, u64, bool);

/// `(device, layer_start, layer_end, output)` of each stage of a placement array.
pub fn ranges(placement: &serde_json::Value) -> Vec<Range> {
    placement
        .as_array()
        .unwrap_or_else(|| panic!("no placement in {placement}"))
        .iter()
        .map(|s| {
            (
                s["device"].as_str().unwrap().to_string(),
                s["layer_start"].as_u64().unwrap(),
                s["layer_end"].as_u64().unwrap(),
                s["output"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A greedy generation running in a background llmctl, its output lines collected as they come.
pub struct Background {
    child: Child,
    lines: Receiver<String>,
    /// Lines received so far.
    pub seen: Vec<String>,
}

impl Background {
    /// Starts generating `n` greedy tokens from `model`.
    pub fn start(d: &Daemon, model: &str, n: u32) -> Background {
        let mut cmd = command("llmctl");
        cmd.arg("--socket").arg(&d.socket).args([
            "generate",
            model,
            PROMPT,
            "--raw",
            "--temperature",
            "0",
            "-n",
            &n.to_string(),
            "--json",
        ]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start llmctl");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 60 s) until `count` lines have been printed; false if it ended first.
    pub fn wait_lines(&mut self, count: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(l) => self.seen.push(l),
                Err(_) => return false,
            }
        }
        true
    }

    /// Waits for the generation to end and returns its final reply.
    pub fn finish(mut self) -> serde_json::Value {
        let status = wait_bounded(&mut self.child, Duration::from_secs(120))
            .expect("the background generation did not finish in time");
        assert!(
            status.success(),
            "the background generation failed: {status}"
        );
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        let last = self.seen.last().expect("no output").clone();
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
