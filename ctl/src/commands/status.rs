//! `llmctl status`: the daemon's state. `--json` prints the daemon's `StatusReply` as is
//! (fields: daemon_version, protocol_version, pid, uptime_secs, socket, config, devices[{name,
//! kind, memory_budget_bytes, memory_used_bytes}], models[{name, path, devices, memory_bytes}],
//! connections, requests_running).

use std::fmt::Write;

use llmd_shared::{Reply, Request, StatusReply, StatusRequest};

use super::{unexpected, Ctx};
use crate::cli::StatusArgs;
use crate::output::{human_bytes, human_duration};
use crate::CtlError;

/// Asks the daemon for its state and prints it.
pub fn run(_args: StatusArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut client = ctx.connect()?;
    let reply = client.request(&Request::Status(StatusRequest {}), |_| Ok(()))?;
    let Reply::Status(status) = reply else {
        return Err(unexpected("status"));
    };
    if ctx.out.json {
        ctx.out.json_line(&status)
    } else {
        ctx.out.text(&render(&status))
    }
}

fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The human-readable form.
fn render(s: &StatusReply) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "llmd {} (protocol {}), pid {}, up {}",
        s.daemon_version,
        s.protocol_version,
        s.pid,
        human_duration(s.uptime_secs)
    );
    let _ = writeln!(out, "socket:   {}", s.socket);
    let config = if s.config.is_empty() {
        "(built-in defaults)"
    } else {
        &s.config
    };
    let _ = writeln!(out, "config:   {config}");
    let _ = writeln!(
        out,
        "load:     {}, {} running",
        plural(s.connections, "connection"),
        plural(s.requests_running, "request")
    );
    let _ = writeln!(out, "devices:");
    for d in &s.devices {
        let _ = writeln!(
            out,
            "  {:<8} {:<5} {} used of {}",
            d.name,
            d.kind,
            human_bytes(d.memory_used_bytes),
            human_bytes(d.memory_budget_bytes)
        );
    }
    if s.models.is_empty() {
        let _ = writeln!(out, "models:   none resident");
    } else {
        let _ = writeln!(out, "models:");
        for m in &s.models {
            let _ = writeln!(
                out,
                "  {:<20} {:>10}  on {}  ({})",
                m.name,
                human_bytes(m.memory_bytes),
                m.devices.join(", "),
                m.path
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_shared::{DeviceInfo, DeviceKind};

    #[test]
    fn renders_every_field() {
        let s = StatusReply {
            daemon_version: "0.1.0".into(),
            protocol_version: 1,
            pid: 77,
            uptime_secs: 65,
            socket: "/run/llmd/llmd.sock".into(),
            config: String::new(),
            devices: vec![DeviceInfo {
                name: "cpu:0".into(),
                kind: DeviceKind::Cpu,
                memory_budget_bytes: 1 << 30,
                memory_used_bytes: 0,
            }],
            models: vec![],
            connections: 1,
            requests_running: 1,
        };
        let text = render(&s);
        for needle in [
            "llmd 0.1.0 (protocol 1), pid 77, up 1m 05s",
            "/run/llmd/llmd.sock",
            "built-in defaults",
            "1 connection, 1 request running",
            "cpu:0",
            "1.0 GiB",
            "none resident",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
