//! End-to-end tests of the foundation (issue 2): a real `llmd` on a temporary socket, driven by
//! the real `llmctl` and by raw protocol clients, with systemd's notification socket played by
//! the test.

use llmd_testkit::e2e as common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{connect, handshaken, llmctl, Daemon};
use llmd_shared::frame::{read_frame, write_frame};
use llmd_shared::{
    ErrorCode, Hello, HelloReply, Reply, Request, Response, StatusRequest, VersionRequest,
    PROTOCOL_VERSION,
};
use llmd_testkit::Rng;

/// Reads until the daemon closes the connection (or 10 s pass); returns the bytes received.
fn read_until_closed(s: &mut UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("waiting for the daemon to close the connection: {e}"),
        }
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ready_then_status_and_version_answer() {
    let mut d = Daemon::start();
    // READY=1 carries the first status line.
    let ready = d.notify.seen.last().cloned().unwrap_or_default();
    assert!(
        ready.contains("STATUS=0 models resident, 0 requests running"),
        "{ready:?}"
    );

    let s = d.status_json();
    assert_eq!(s["daemon_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["protocol_version"], PROTOCOL_VERSION);
    assert_eq!(s["pid"], d.pid());
    assert!(s["uptime_secs"].is_u64(), "{s}");
    assert_eq!(s["socket"], d.socket.display().to_string());
    assert_eq!(s["config"], d.config.display().to_string());
    assert_eq!(s["devices"][0]["name"], "cpu:0");
    assert_eq!(s["devices"][0]["kind"], "cpu");
    assert_eq!(s["devices"][0]["memory_budget_bytes"], 1u64 << 30);
    assert_eq!(s["devices"][0]["memory_used_bytes"], 0);
    assert_eq!(s["models"], serde_json::json!([]));
    assert_eq!(s["connections"], 1);
    // Issue 15: the status request does not count itself.
    assert_eq!(s["requests_running"], 0);

    let human = d.llmctl(&["status"]);
    assert!(human.status.success(), "{}", stderr_of(&human));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("cpu:0") && text.contains("1.0 GiB"), "{text}");

    let v = d.llmctl(&["version", "--json"]);
    assert!(v.status.success(), "{}", stderr_of(&v));
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["client_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["daemon_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["daemon_protocol_version"], PROTOCOL_VERSION);

    // Socket file permissions: owner and group only.
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    // Every request is logged with the peer's uid and pid.
    let log = d.stderr();
    assert!(
        log.contains("uid=") && log.contains("pid=") && log.contains("request=\"status\""),
        "{log}"
    );
    drop(d.notify.seen.drain(..));
}

#[test]
fn several_requests_on_one_connection() {
    let d = Daemon::start();
    let mut s = handshaken(&d.socket);
    for req in [
        Request::Status(StatusRequest {}),
        Request::Version(VersionRequest {}),
        Request::Status(StatusRequest {}),
    ] {
        write_frame(&mut s, &req).unwrap();
        let resp: Response = read_frame(&mut s).unwrap();
        match (&req, resp) {
            (Request::Status(_), Response::Reply(Reply::Status(st))) => {
                assert_eq!(st.pid, d.pid())
            }
            (Request::Version(_), Response::Reply(Reply::Version(v))) => {
                assert_eq!(v.protocol_version, PROTOCOL_VERSION)
            }
            (req, resp) => panic!("{req:?} answered by {resp:?}"),
        }
    }
}

#[test]
fn sighup_reloads_and_bad_config_keeps_the_old_one() {
    let mut d = Daemon::start();
    std::fs::write(
        &d.config,
        "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"2GiB\"\n",
    )
    .unwrap();
    common::signal(d.pid(), "HUP");
    let reloading = d.notify.expect_line("RELOADING=1");
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{usec}");
    d.notify.expect_line("READY=1");
    assert_eq!(
        d.status_json()["devices"][0]["memory_budget_bytes"],
        2u64 << 30
    );

    // A broken file: reload fails, the old configuration stays, the daemon keeps serving.
    std::fs::write(&d.config, "no_such_key = true\n").unwrap();
    common::signal(d.pid(), "HUP");
    d.notify.expect_line("RELOADING=1");
    d.notify.expect_line("READY=1");
    assert_eq!(
        d.status_json()["devices"][0]["memory_budget_bytes"],
        2u64 << 30
    );
    let log = d.stderr();
    assert!(
        log.contains("keeping the previous configuration") && log.contains("no_such_key"),
        "{log}"
    );
}

#[test]
fn sigterm_stops_gracefully_and_removes_the_socket() {
    let mut d = Daemon::start();
    // An idle, handshaken client must not hold up the shutdown.
    let mut idle = handshaken(&d.socket);
    let started = Instant::now();
    common::signal(d.pid(), "TERM");
    d.notify.expect_line("STOPPING=1");
    let status = d
        .wait(Duration::from_secs(10))
        .expect("llmd did not exit within 10 s of SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        d.stderr()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(!d.socket.exists(), "socket file left behind");
    // The idle client sees the connection closed.
    assert_eq!(read_until_closed(&mut idle), b"");
}

#[test]
fn sigint_also_stops_with_exit_0() {
    let mut d = Daemon::start();
    common::signal(d.pid(), "INT");
    d.notify.expect_line("STOPPING=1");
    let status = d
        .wait(Duration::from_secs(10))
        .expect("no exit after SIGINT");
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists());
}

fn hostile_client(socket: &Path, kind: u64, rng: &mut Rng) -> bool {
    let mut s = UnixStream::connect(socket).expect("the daemon refused a connection");
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let hello = llmd_shared::encode_frame(&Hello::current()).unwrap();
    match kind {
        // Random bytes instead of a handshake.
        0 => {
            let n = 1 + (rng.next_u64() % 512) as usize;
            let _ = s.write_all(&rng.bytes(n));
        }
        // A 4 GiB length prefix, then garbage.
        1 => {
            let _ = s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
        }
        // A truncated handshake frame, then vanish.
        2 => {
            let _ = s.write_all(&hello[..hello.len() / 2]);
        }
        // A wrong protocol version: must be refused with both versions named.
        3 => {
            let wrong = Hello {
                protocol_version: PROTOCOL_VERSION + 1000,
                client_version: "hostile".into(),
            };
            let _ = write_frame(&mut s, &wrong);
            match read_frame::<_, HelloReply>(&mut s) {
                Ok(HelloReply::Accepted { .. }) => panic!("wrong protocol version accepted"),
                Ok(HelloReply::Rejected { .. }) => return true,
                Err(_) => {}
            }
        }
        // Valid handshake, then a request frame announcing the maximum size, cut short: the
        // daemon must not reserve 16 MiB for it.
        4 => {
            let _ = s.write_all(&hello);
            let req = llmd_shared::encode_frame(&Request::Status(StatusRequest {})).unwrap();
            let mut bogus = (llmd_shared::MAX_FRAME_BYTES as u32).to_be_bytes().to_vec();
            bogus.extend_from_slice(&req[4..]);
            let _ = s.write_all(&bogus);
        }
        // Valid handshake, then a huge request prefix: answered bad_request, then closed.
        5 => {
            let _ = s.write_all(&hello);
            let _ = read_frame::<_, HelloReply>(&mut s);
            let _ = s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]);
            if let Ok(Response::Error(e)) = read_frame::<_, Response>(&mut s) {
                assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
                return true;
            }
        }
        // Valid handshake, then random bytes as a request.
        6 => {
            let _ = s.write_all(&hello);
            let n = 1 + (rng.next_u64() % 64) as usize;
            let mut frame = (n as u32).to_be_bytes().to_vec();
            frame.extend(rng.bytes(n));
            let _ = s.write_all(&frame);
        }
        // Connect and vanish at once.
        _ => {}
    }
    false
}

#[test]
fn survives_a_thousand_hostile_connections_without_growing() {
    const CLIENTS: u64 = 1000;
    const THREADS: u64 = 8;
    let d = Daemon::start();
    let socket = d.socket.clone();
    // Returns how many clients got a checkable answer.
    let run_batch = |seed: u64, count: u64| -> u64 {
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let socket = socket.clone();
                    scope.spawn(move || {
                        let mut rng = Rng(seed + t);
                        (0..count / THREADS)
                            .filter(|i| hostile_client(&socket, (i * THREADS + t) % 8, &mut rng))
                            .count() as u64
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        })
    };
    // Warm up (runtime threads, allocator arenas), then measure.
    run_batch(1, 80);
    d.status_json();
    let before = common::rss_kib(d.pid());
    let started = Instant::now();
    let answered = run_batch(1000, CLIENTS);
    let elapsed = started.elapsed();
    // Kinds 3 (wrong version) and 5 (huge request prefix) are each 1/8 of the clients and must
    // all get their refusal.
    assert_eq!(answered, CLIENTS / 4, "not every refusal arrived");
    let status = d.status_json();
    assert_eq!(status["pid"], d.pid());
    let after = common::rss_kib(d.pid());
    eprintln!(
        "{CLIENTS} hostile clients in {elapsed:?}; RSS {before} KiB -> {after} KiB (+{} KiB)",
        after.saturating_sub(before)
    );
    assert!(
        after <= before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Status still answers promptly and correctly.
    let human = d.llmctl(&["status"]);
    assert!(human.status.success(), "{}", stderr_of(&human));
}

#[test]
fn sixty_four_concurrent_status_clients_all_answered() {
    let d = Daemon::start();
    let children: Vec<_> = (0..64)
        .map(|_| {
            common::command("llmctl")
                .arg("--socket")
                .arg(&d.socket)
                .args(["status", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("cannot spawn llmctl")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for mut child in children {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = common::wait_bounded(&mut child, left).expect("llmctl status hung");
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(status.success(), "llmctl status failed: {status}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("invalid JSON");
        assert_eq!(v["pid"], d.pid());
    }
}

#[test]
fn second_daemon_on_a_live_socket_exits_with_a_clear_error() {
    let d = Daemon::start();
    let mut second = Daemon::builder_in(d.socket.parent().unwrap()).spawn();
    let status = second
        .wait(Duration::from_secs(10))
        .expect("second llmd did not exit");
    assert!(!status.success());
    let err = second.stderr();
    assert!(err.contains("already listening"), "{err}");
    assert!(err.contains(&d.socket.display().to_string()), "{err}");
    // The first one is undisturbed.
    assert_eq!(d.status_json()["pid"], d.pid());
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("llmd.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "stale socket not created");
    let d = Daemon::builder_in(dir.path()).start();
    assert_eq!(d.status_json()["pid"], d.pid());
    assert!(d.stderr().contains("stale"), "{}", d.stderr());
}

#[test]
fn socket_path_from_config_and_from_env() {
    // From the config file when neither --socket nor LLMD_SOCKET is given.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let from_config = dir.path().join("cfg.sock");
    let d = Daemon::builder()
        .without_socket_arg()
        .config(&format!("socket = \"{}\"\n", from_config.display()))
        .start();
    assert_eq!(
        llmctl(&from_config, &["status", "--json"]).status.code(),
        Some(0)
    );
    drop(d);
    // LLMD_SOCKET beats the config file.
    let from_env = dir.path().join("env.sock");
    let d = Daemon::builder()
        .without_socket_arg()
        .config(&format!("socket = \"{}\"\n", from_config.display()))
        .env("LLMD_SOCKET", &from_env.display().to_string())
        .start();
    assert!(from_env.exists());
    // The first daemon was killed, so its socket file at `from_config` is left stale.
    assert!(std::os::unix::net::UnixStream::connect(&from_config).is_err());
    let out = common::run_bounded(
        {
            let mut c = common::command("llmctl");
            c.env("LLMD_SOCKET", &from_env).args(["status", "--json"]);
            c
        },
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    drop(d);
}

#[test]
fn unknown_config_key_is_an_error_naming_file_and_key() {
    let mut d = Daemon::builder()
        .config("log_level = \"info\"\nfrobnicate = 3\n")
        .spawn();
    let status = d.wait(Duration::from_secs(10)).expect("llmd did not exit");
    assert_eq!(status.code(), Some(1));
    let err = d.stderr();
    assert!(err.contains(&d.config.display().to_string()), "{err}");
    assert!(err.contains("frobnicate"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn missing_explicit_config_is_an_error() {
    let mut d = Daemon::builder().spawn_with_missing_config();
    let status = d.wait(Duration::from_secs(10)).expect("llmd did not exit");
    assert_eq!(status.code(), Some(1));
    assert!(
        d.stderr().contains("cannot read config file"),
        "{}",
        d.stderr()
    );
}

#[test]
fn exit_code_3_when_no_daemon() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let nowhere = dir.path().join("none.sock");
    let out = llmctl(&nowhere, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr_of(&out);
    assert!(err.starts_with("llmctl: error: "), "{err}");
    assert!(err.contains("systemctl status llmd"), "{err}");

    // `version` still prints the client's own version.
    let out = llmctl(&nowhere, &["version"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("llmctl {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );

    // --json: an error object on stdout.
    let out = llmctl(&nowhere, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "unreachable");

    // Usage errors keep clap's code 2.
    let out = llmctl(&nowhere, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn wrong_protocol_version_gets_a_clear_error() {
    let d = Daemon::start();
    let mut s = connect(&d.socket);
    let theirs = PROTOCOL_VERSION + 7;
    write_frame(
        &mut s,
        &Hello {
            protocol_version: theirs,
            client_version: "9.9.9".into(),
        },
    )
    .unwrap();
    match read_frame::<_, HelloReply>(&mut s).unwrap() {
        HelloReply::Rejected {
            protocol_version,
            message,
            ..
        } => {
            assert_eq!(protocol_version, PROTOCOL_VERSION);
            assert!(message.contains(&format!("protocol {theirs}")), "{message}");
            assert!(
                message.contains(&format!("protocol {PROTOCOL_VERSION}")),
                "{message}"
            );
        }
        other => panic!("accepted: {other:?}"),
    }
    // Then the daemon hangs up.
    assert_eq!(read_until_closed(&mut s), b"");
}

/// llmctl facing a daemon of another protocol version prints the daemon's explanation and
/// exits 1. The "daemon" here is a fake that only answers the (frozen) handshake.
#[test]
fn llmctl_reports_a_version_mismatch_and_exits_1() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let hello: Hello = read_frame(&mut s).unwrap();
            let reply = HelloReply::Rejected {
                protocol_version: 99,
                server_version: "42.0.0".into(),
                message: llmd_shared::handshake::version_mismatch_message(
                    hello.protocol_version,
                    &hello.client_version,
                    99,
                    "42.0.0",
                ),
            };
            write_frame(&mut s, &reply).unwrap();
        }
    });
    let out = llmctl(&path, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("protocol version mismatch")
            && err.contains("protocol 99")
            && err.contains(&format!("protocol {PROTOCOL_VERSION}")),
        "{err}"
    );
    let out = llmctl(&path, &["version"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("llmd   42.0.0 (protocol 99)"), "{text}");
    server.join().unwrap();
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let d = Daemon::start();
    let mut s = connect(&d.socket);
    let started = Instant::now();
    assert_eq!(
        read_until_closed(&mut s),
        b"",
        "daemon sent data to a silent client"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(9),
        "closed after {waited:?}"
    );
}

#[test]
fn watchdog_pings_while_healthy() {
    let mut d = Daemon::builder().env("WATCHDOG_USEC", "400000").start();
    for _ in 0..2 {
        d.notify.expect_line("WATCHDOG=1");
    }
    assert_eq!(d.status_json()["pid"], d.pid());
}

/// systemd socket activation: `systemd-socket-activate` (from the systemd package) listens,
/// then execs llmd with `LISTEN_FDS`/`LISTEN_PID` on the first connection, as a `.socket` unit
/// would. llmd must serve that socket and leave the file to its owner on exit.
#[test]
fn socket_activation_is_accepted() {
    let Some(activate) = common::find_in_path("systemd-socket-activate") else {
        eprintln!("SKIPPED: systemd-socket-activate is not installed (Debian package systemd)");
        return;
    };
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let socket = dir.path().join("activated.sock");
    let config = dir.path().join("llmd.toml");
    std::fs::write(&config, "").unwrap();
    let notify_path = dir.path().join("notify.sock");
    let mut notify = common::Notifications::bind(&notify_path);
    let mut cmd = std::process::Command::new(activate);
    for var in [
        "LLMD_SOCKET",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "RUNTIME_DIRECTORY",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("-l")
        .arg(&socket)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg(common::binary("llmd"))
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = common::ChildGuard(cmd.spawn().expect("cannot start systemd-socket-activate"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the activator never created its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The first connection makes the activator exec llmd (same pid).
    let out = llmctl(&socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["pid"], child.0.id());
    assert_eq!(s["socket"], socket.display().to_string());
    notify.expect_line("READY=1");

    common::signal(child.0.id(), "TERM");
    notify.expect_line("STOPPING=1");
    let status = common::wait_bounded(&mut child.0, Duration::from_secs(10))
        .expect("activated llmd did not exit within 10 s");
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "llmd removed a socket it does not own");
}
