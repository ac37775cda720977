//! The Python reference (`LLMD_TEST_PYTHON`: llama.cpp's `gguf` package and numpy) run as a child
//! with a time limit, its output drained on threads so it never blocks.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A Python reference process started by [`spawn_python`].
pub struct PythonRun {
    child: std::process::Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// Starts `python -c script args...`, draining its output on threads so it never blocks.
pub fn spawn_python(python: &str, script: &str, args: &[&str]) -> PythonRun {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {python}: {e}"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    PythonRun {
        child,
        stdout,
        stderr,
    }
}

impl PythonRun {
    /// Waits for the process (killing it and failing after `limit`) and returns its stdout.
    pub fn finish(mut self, limit: Duration) -> String {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for python") {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("python reference did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.join().expect("stdout reader");
        let stderr = self.stderr.join().expect("stderr reader");
        assert!(
            status.success(),
            "python reference failed: {status}\n{}",
            String::from_utf8_lossy(&stderr)
        );
        String::from_utf8(stdout).expect("python output is UTF-8")
    }
}

/// Runs `python -c script args...` and returns its stdout, failing the test after `limit`.
pub fn run_python(python: &str, script: &str, args: &[&str], limit: Duration) -> String {
    spawn_python(python, script, args).finish(limit)
}
