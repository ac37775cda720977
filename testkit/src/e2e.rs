//! The end-to-end harness: finds the built `llmd` and `llmctl` (refusing binaries older than
//! the sources cargo built them from), starts a real daemon on a temporary socket with a temporary config and a
//! `NOTIFY_SOCKET` datagram socket owned by the test, and kills it when dropped. Every wait is
//! bounded.
//!
//! The binaries are expected next to the test executable's parent directory
//! (`target/<profile>/llmd`); `scripts/test` builds them with `cargo build --release --bins`
//! before running the tests.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Upper bound for the daemon to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for any single notification to arrive.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variables of the test process that must not leak into the daemon or llmctl.
const SCRUBBED_ENV: &[&str] = &[
    "LLMD_SOCKET",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RUNTIME_DIRECTORY",
    "RUST_LOG",
];

/// A test data file named by the environment variable `var` (scripts/test-deps sets them), or
/// `None` after printing a SKIPPED line; panics when `LLMD_REQUIRE_TEST_DATA` is set (as in CI)
/// and the file is missing, so CI never skips silently.
pub fn test_data(var: &str) -> Option<PathBuf> {
    crate::data::test_data_file(var)
}

/// Path of a workspace binary built alongside the tests. Panics when it is missing, or older
/// than a source it is built from (a test must never pass or fail on yesterday's daemon).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    // target/<profile>/deps/<test>-<hash>  →  target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable has no grandparent directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first (`cargo build --release --bins`, as scripts/test \
         does, or `cargo build --bins` for a debug test run)",
        path.display()
    );
    if let Some(stale) = newer_source(&path) {
        panic!(
            "{} is older than {}: rebuild the binaries (`cargo build --release --bins`, as \
             scripts/test does)",
            path.display(),
            stale.display()
        );
    }
    path
}

/// A source of the binary at `path` modified after the binary was written, if any (checked
/// once per binary and process). The sources are those cargo lists in the binary's dep-info file
/// (`target/<profile>/<name>.d`): exactly the files it was compiled from, so a change cargo
/// would rebuild it for counts, and a test-only file does not.
fn newer_source(path: &Path) -> Option<PathBuf> {
    static CHECKED: Mutex<Vec<(PathBuf, Option<PathBuf>)>> = Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, found)) = checked.iter().find(|(p, _)| p == path) {
        return found.clone();
    }
    let built = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("binary has no modification time");
    let dep_info = path.with_extension("d");
    let text = std::fs::read_to_string(&dep_info).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (cargo writes it beside every binary it builds)",
            dep_info.display()
        )
    });
    let found = dep_info_sources(&text)
        .into_iter()
        .find(|file| modified_after(file, built));
    checked.push((path.to_owned(), found.clone()));
    found
}

/// The sources a dep-info file lists after the target's `path:` (spaces in names escaped as
/// `\ `), from its first line.
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let line = text.lines().next().unwrap_or_default();
    let Some((_, deps)) = line.split_once(": ") else {
        return Vec::new();
    };
    let mut files = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    files.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        files.push(PathBuf::from(current));
    }
    files
}

/// Whether `file` exists and was modified after `time`.
fn modified_after(file: &Path, time: SystemTime) -> bool {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m > time)
}

/// A `Command` for `name` with the scrubbed environment.
pub fn command(name: &str) -> Command {
    command_at(&binary(name))
}

/// A command for the binary at `path` (a copy of one of the workspace's, e.g. where another
/// user can run it), with the same scrubbed environment as [`command`].
pub fn command_at(path: &Path) -> Command {
    let mut cmd = Command::new(path);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `llmctl --socket <socket> <args>` with a time bound.
pub fn llmctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = command("llmctl");
    cmd.arg("--socket").arg(socket).args(args);
    run_bounded(cmd, Duration::from_secs(20))
}

/// Writes `dir/tiny.gguf`, a tiny random-weight llama (`llmd make-model --preset tiny`) with
/// `ty` weights and, when given, `layers` layers; returns its path.
pub fn tiny_model(dir: &Path, ty: &str, layers: Option<u32>) -> PathBuf {
    let path = dir.join("tiny.gguf");
    let mut cmd = command("llmd");
    cmd.args([
        "make-model",
        "--arch",
        "llama",
        "--preset",
        "tiny",
        "--type",
        ty,
    ]);
    if let Some(layers) = layers {
        cmd.arg("--layers").arg(layers.to_string());
    }
    cmd.arg("-o").arg(&path);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "make-model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Runs `cmd` to completion, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn");
    let status = wait_bounded(&mut child, limit);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {limit:?}");
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Waits for `child` to exit, at most `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// The path of `program` if it is on `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Kills and reaps a child process when dropped, so a failing test leaves nothing running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends a signal with the `kill` utility (no unsafe FFI in tests).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Resident set size of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A KiB figure of /proc/PID/status: `VmRSS` (resident now), `VmHWM` (the peak resident size
/// so far), ...
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process gone");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} line"))
}

/// True when this process runs as root (uid 0), read from /proc/self/status.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Raw protocol client: connects to `socket` with reads and writes bounded by 10 s.
pub fn connect(socket: &Path) -> std::os::unix::net::UnixStream {
    let s = std::os::unix::net::UnixStream::connect(socket).expect("cannot connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Raw protocol client: connects and completes the handshake.
pub fn handshaken(socket: &Path) -> std::os::unix::net::UnixStream {
    use llmd_shared::frame::{read_frame, write_frame};
    let mut s = connect(socket);
    write_frame(&mut s, &llmd_shared::Hello::current()).unwrap();
    let reply: llmd_shared::HelloReply = read_frame(&mut s).unwrap();
    assert!(
        matches!(reply, llmd_shared::HelloReply::Accepted { .. }),
        "{reply:?}"
    );
    s
}

/// Raw protocol client: sends `request` and returns its final response, skipping events.
pub fn request(
    s: &mut std::os::unix::net::UnixStream,
    request: &llmd_shared::Request,
) -> llmd_shared::Response {
    use llmd_shared::frame::{read_frame, write_frame};
    write_frame(s, request).expect("send the request");
    loop {
        let response: llmd_shared::Response = read_frame(s).expect("read a response");
        if response.is_final() {
            return response;
        }
    }
}

/// The test's end of `NOTIFY_SOCKET`: collects the daemon's sd_notify datagrams.
pub struct Notifications {
    /// Bound datagram socket the daemon sends to.
    socket: UnixDatagram,
    /// Every message received so far, in order.
    pub seen: Vec<String>,
}

impl Notifications {
    /// Binds the socket at `path`.
    pub fn bind(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).expect("cannot bind the notify socket");
        Notifications {
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `limit`) for the next message that has a line for which `pred` holds,
    /// skipping others. Returns the whole message.
    pub fn wait_for(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let n = self.socket.recv(&mut buf).ok()?;
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(&pred) {
                return Some(msg);
            }
        }
    }

    /// Like [`Notifications::wait_for`] for an exact line, panicking with what was seen.
    pub fn expect_line(&mut self, line: &str) -> String {
        match self.wait_for(NOTIFY_TIMEOUT, |l| l == line) {
            Some(msg) => msg,
            None => panic!(
                "no `{line}` notification within {NOTIFY_TIMEOUT:?}; seen: {:?}",
                self.seen
            ),
        }
    }
}

/// How to start a [`Daemon`].
pub struct DaemonBuilder {
    /// Contents of the config file passed with `--config`.
    config: String,
    /// Whether to pass `--socket` (otherwise the config or env decides).
    pass_socket: bool,
    /// Extra environment.
    env: Vec<(String, String)>,
    /// An existing directory to use (to share a socket path between daemons).
    dir: Option<PathBuf>,
}

impl DaemonBuilder {
    /// Config file contents (default: a 1 GiB CPU device).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_string();
        self
    }

    /// Do not pass `--socket`.
    pub fn without_socket_arg(mut self) -> Self {
        self.pass_socket = false;
        self
    }

    /// Adds an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn spawn_inner(self, missing_config: bool) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("llmd-e2e-")
            .tempdir_in("/tmp")
            .expect("cannot create a temp dir");
        let socket = match &self.dir {
            Some(d) => d.join("llmd.sock"),
            None => dir.path().join("llmd.sock"),
        };
        let config = dir.path().join("llmd.toml");
        if !missing_config {
            std::fs::write(&config, &self.config).expect("cannot write the config");
        }
        let notify_path = dir.path().join("notify.sock");
        let notify = Notifications::bind(&notify_path);
        let stderr_path = dir.path().join("llmd.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("cannot create the log file");
        let mut cmd = command("llmd");
        if self.pass_socket {
            cmd.arg("--socket").arg(&socket);
        }
        cmd.arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("cannot start llmd");
        Daemon {
            child,
            socket,
            config,
            stderr_path,
            notify,
            dir,
        }
    }

    /// Starts the daemon with `--config` naming a file that does not exist.
    pub fn spawn_with_missing_config(self) -> Daemon {
        self.spawn_inner(true)
    }

    /// Starts the daemon without waiting for readiness.
    pub fn spawn(self) -> Daemon {
        self.spawn_inner(false)
    }

    /// Starts the daemon and waits for `READY=1`.
    pub fn start(self) -> Daemon {
        let mut d = self.spawn();
        if d.notify
            .wait_for(READY_TIMEOUT, |l| l == "READY=1")
            .is_none()
        {
            panic!(
                "llmd did not send READY=1 within {READY_TIMEOUT:?}; stderr:\n{}",
                d.stderr()
            );
        }
        d
    }
}

/// A running `llmd` with its temporary directory; killed on drop.
pub struct Daemon {
    /// The daemon process.
    pub child: Child,
    /// Its socket (when started with `--socket`).
    pub socket: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Where its stderr goes.
    stderr_path: PathBuf,
    /// Its sd_notify messages.
    pub notify: Notifications,
    /// Holds the temporary directory until drop.
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// A builder with the default config: a CPU device with a 1 GiB budget.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            config: "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n".to_string(),
            pass_socket: true,
            env: Vec::new(),
            dir: None,
        }
    }

    /// A builder whose socket lives in `dir` (to start a second daemon on the same socket).
    pub fn builder_in(dir: &Path) -> DaemonBuilder {
        DaemonBuilder {
            dir: Some(dir.to_path_buf()),
            ..Daemon::builder()
        }
    }

    /// Starts a daemon with the default config and waits until it is ready.
    pub fn start() -> Daemon {
        Daemon::builder().start()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Runs llmctl against this daemon.
    pub fn llmctl(&self, args: &[&str]) -> Output {
        llmctl(&self.socket, args)
    }

    /// `llmctl status --json`, parsed; panics (with the daemon's log) if it fails.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.llmctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "llmctl status failed: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        serde_json::from_slice(&out.stdout).expect("llmctl status --json printed invalid JSON")
    }

    /// Waits at most `limit` for the daemon to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_bounded(&mut self.child, limit)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_lists_every_source_with_escaped_spaces() {
        let text = "/t/llmd: /src/a.rs /src/my\\ file.rs /src/b.rs\n\n/src/a.rs:\n";
        assert_eq!(
            dep_info_sources(text),
            vec![
                PathBuf::from("/src/a.rs"),
                PathBuf::from("/src/my file.rs"),
                PathBuf::from("/src/b.rs")
            ]
        );
        assert!(dep_info_sources("").is_empty());
    }

    #[test]
    fn a_binary_older_than_a_listed_source_is_stale() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("main.rs");
        std::fs::write(&source, "fn main() {}").expect("source");
        std::thread::sleep(Duration::from_millis(20));
        let binary = dir.path().join("tool");
        std::fs::write(&binary, "built").expect("binary");
        std::fs::write(
            dir.path().join("tool.d"),
            format!("{}: {}\n", binary.display(), source.display()),
        )
        .expect("dep-info");
        assert_eq!(newer_source(&binary), None, "fresh binary");
        // A second binary built before its source changed.
        let old = dir.path().join("old");
        std::fs::write(&old, "built").expect("binary");
        std::thread::sleep(Duration::from_millis(20));
        let changed = dir.path().join("lib.rs");
        std::fs::write(&changed, "// edited").expect("source");
        std::fs::write(
            dir.path().join("old.d"),
            format!("{}: {}\n", old.display(), changed.display()),
        )
        .expect("dep-info");
        assert_eq!(newer_source(&old), Some(changed));
    }
}
