//! `llmctl status`: the daemon's state. `--json` prints the daemon's `StatusReply` as is
//! (fields: daemon_version, protocol_version, pid, uptime_secs, socket, config, devices[{name,
//! kind, memory_budget_bytes, memory_used_bytes, description, unavailable}], models[{name, path,
//! devices, memory_bytes, host_memory {anon_bytes, file_bytes}, cache_type_k, cache_type_v,
//! failed, template_warning, prefix_cache {retained_bytes, retained_sequences}: finished
//! generations' KV kept for prompts sharing their prefix, part of memory_bytes}], connections, requests_running, cuda {devices, unavailable}, gpu {nvml,
//! driver_version, cuda_version, gpus[...], p2p[...], sampled_at_unix_ms}, power {psu_watts,
//! ..., worst_case_headroom_percent, ...}, model_layers[{name, layers[{device, layers}]}],
//! declared[{name, path, on_demand, keep_alive, state, note}]: state is "waiting",
//! {"loading": {done, total}}, "resident", "not_loaded" or {"failed": {reason}}), memory
//! {rss_bytes, anon_bytes, file_bytes, peak_bytes}: the daemon's resident memory). A GPU reading is `{"value": x}`,
//! `"not_supported"` or `{"error": "why"}`.
//!
//! `--watch [SECONDS]` asks again every SECONDS (default 2) on one connection until interrupted:
//! the human form clears the terminal and redraws in place; `--json` prints one line per refresh.

use std::fmt::Write;
use std::time::Duration;

use llmd_shared::render::{render_gpus, render_power};
use llmd_shared::{Reply, Request, StatusReply, StatusRequest};

use super::{unexpected, Ctx};
use crate::cli::StatusArgs;
use crate::client::Client;
use crate::output::{human_bytes, human_duration};
use crate::CtlError;

/// ANSI: cursor home, then erase the whole screen (redraw in place for `--watch`).
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Asks the daemon for its state and prints it (again every `--watch` seconds).
pub fn run(args: StatusArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut client = ctx.connect()?;
    let Some(every) = args.watch else {
        let status = ask(&mut client)?;
        return if ctx.out.json {
            ctx.out.json_line(&status)
        } else {
            ctx.out.text(&render(&status))
        };
    };
    loop {
        let status = ask(&mut client)?;
        if ctx.out.json {
            ctx.out.json_line(&status)?;
        } else {
            ctx.out.text(&format!(
                "{CLEAR_SCREEN}every {every}s (Ctrl-C to stop)\n\n{}",
                render(&status)
            ))?;
        }
        std::thread::sleep(Duration::from_secs(every));
    }
}

/// One status request on `client`.
fn ask(client: &mut Client) -> Result<Box<StatusReply>, CtlError> {
    match client.request(&Request::Status(StatusRequest {}), |_| Ok(()))? {
        Reply::Status(status) => Ok(status),
        _ => Err(unexpected("status")),
    }
}

fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// One `[[models]]` entry: name, state (with progress or the reason), policy, note.
fn declared_line(m: &llmd_shared::DeclaredModel) -> String {
    use llmd_shared::DeclaredState;
    let state = match &m.state {
        DeclaredState::Loading { done, total } => format!("loading {done}/{total}"),
        DeclaredState::Failed { reason } => format!("FAILED: {reason}"),
        other => other.word().to_owned(),
    };
    let policy = if m.on_demand {
        format!("on demand, keep alive {}", m.keep_alive)
    } else {
        format!("at start, keep alive {}", m.keep_alive)
    };
    let note = m
        .note
        .as_ref()
        .map(|n| format!("; {n}"))
        .unwrap_or_default();
    format!("{:<20} {state}  ({policy}{note}; {})", m.name, m.path)
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
    match (&s.cuda.unavailable, s.cuda.devices) {
        (Some(reason), _) => {
            let _ = writeln!(out, "cuda:     unavailable ({reason})");
        }
        (None, n) => {
            let _ = writeln!(out, "cuda:     {}", plural(u64::from(n), "GPU"));
        }
    }
    for peer in &s.cuda.peers {
        let path = match &peer.reason {
            None => "peer to peer".to_owned(),
            Some(reason) => format!("through host memory ({reason})"),
        };
        let _ = writeln!(out, "  {} <-> {}: {path}", peer.gpu_a, peer.gpu_b);
    }
    let m = &s.memory;
    let _ = writeln!(
        out,
        "memory:   {} resident ({} anonymous, {} file-backed), peak {}",
        human_bytes(m.rss_bytes),
        human_bytes(m.anon_bytes),
        human_bytes(m.file_bytes),
        human_bytes(m.peak_bytes)
    );
    let _ = writeln!(out, "devices:");
    for d in &s.devices {
        match &d.unavailable {
            Some(reason) => {
                let _ = writeln!(out, "  {:<8} {:<5} unavailable: {reason}", d.name, d.kind);
            }
            None => {
                let _ = writeln!(
                    out,
                    "  {:<8} {:<5} {} used of {}  ({})",
                    d.name,
                    d.kind,
                    human_bytes(d.memory_used_bytes),
                    human_bytes(d.memory_budget_bytes),
                    d.description
                );
            }
        }
    }
    if s.models.is_empty() {
        let _ = writeln!(out, "models:   none resident");
    } else {
        let _ = writeln!(out, "models:");
        for m in &s.models {
            match &m.failed {
                None => {
                    let _ = writeln!(
                        out,
                        "  {:<20} {:>10}  on {}  host {} anonymous, {} file-backed  KV cache \
                         {}/{}  ({})",
                        m.name,
                        human_bytes(m.memory_bytes),
                        m.devices.join(", "),
                        human_bytes(m.host_memory.anon_bytes),
                        human_bytes(m.host_memory.file_bytes),
                        m.cache_type_k,
                        m.cache_type_v,
                        m.path
                    );
                    if m.prefix_cache.retained_sequences > 0 {
                        let _ = writeln!(
                            out,
                            "  {:<20} prefix cache: {} in {} finished sequences (part of the \
                             above)",
                            "",
                            human_bytes(m.prefix_cache.retained_bytes),
                            m.prefix_cache.retained_sequences
                        );
                    }
                    if let Some(warning) = &m.template_warning {
                        let _ = writeln!(out, "  {:<20} warning: {warning}", "");
                    }
                }
                Some(why) => {
                    let _ = writeln!(
                        out,
                        "  {:<20} FAILED: {why}  ({}; llmctl reload {} loads it again)",
                        m.name, m.path, m.name
                    );
                }
            }
        }
    }
    out.push('\n');
    out.push_str(&render_gpus(&s.gpu));
    out.push('\n');
    out.push_str(&render_power(&s.power));
    if !s.declared.is_empty() {
        let _ = writeln!(out, "declared (config [[models]]):");
        for m in &s.declared {
            let _ = writeln!(out, "  {}", declared_line(m));
        }
    }
    if !s.model_layers.is_empty() {
        let _ = writeln!(out, "\nlayers per device:");
        for model in &s.model_layers {
            let _ = writeln!(out, "  {:<20} {}", model.name, model.split_summary(""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_shared::api::gpu::{GpuTelemetry, NvmlStatus};
    use llmd_shared::api::health::{DeviceLayers, DeviceRef, ModelPlacement, PowerBudget};
    use llmd_shared::{CudaStatus, DaemonMemory, DeviceInfo, DeviceKind};

    #[test]
    fn renders_every_field() {
        let s = StatusReply {
            daemon_version: "0.1.0".into(),
            protocol_version: 1,
            pid: 77,
            uptime_secs: 65,
            socket: "/run/llmd/llmd.sock".into(),
            config: String::new(),
            devices: vec![
                DeviceInfo {
                    name: "cpu:0".into(),
                    kind: DeviceKind::Cpu,
                    memory_budget_bytes: 1 << 30,
                    memory_used_bytes: 0,
                    description: "host memory".into(),
                    unavailable: None,
                },
                DeviceInfo {
                    name: "cuda:0".into(),
                    kind: DeviceKind::Cuda,
                    memory_budget_bytes: 0,
                    memory_used_bytes: 0,
                    description: "NVIDIA GPU".into(),
                    unavailable: Some("CUDA is unavailable: libcuda was not found".into()),
                },
            ],
            models: vec![],
            connections: 1,
            requests_running: 1,
            cuda: CudaStatus {
                devices: 0,
                unavailable: Some("libcuda was not found".into()),
                peers: Vec::new(),
            },
            gpu: GpuTelemetry::unavailable(
                NvmlStatus::LibraryMissing {
                    reason: "libnvidia-ml.so.1: cannot open shared object file".into(),
                },
                1,
            ),
            power: PowerBudget {
                psu_watts: Some(1000.0),
                system_watts: 150.0,
                transient_factor: 1.3,
                gpu_draw_watts: 0.0,
                current_watts: 150.0,
                gpu_limits_watts: 0.0,
                worst_case_watts: 150.0,
                current_headroom_percent: Some(85.0),
                worst_case_headroom_percent: Some(85.0),
                gpus_without_draw: vec![],
                gpus_without_limit: vec![],
            },
            model_layers: vec![ModelPlacement {
                name: "gemma".into(),
                layers: vec![
                    DeviceLayers {
                        device: DeviceRef::Cpu,
                        layers: 10,
                    },
                    DeviceLayers {
                        device: DeviceRef::Gpu(1),
                        layers: 8,
                    },
                ],
            }],
            declared: vec![
                llmd_shared::DeclaredModel {
                    name: "chat".into(),
                    path: "/m/chat.gguf".into(),
                    on_demand: true,
                    keep_alive: "300s".into(),
                    state: llmd_shared::DeclaredState::NotLoaded,
                    note: Some("unloaded after 300 s without requests".into()),
                },
                llmd_shared::DeclaredModel {
                    name: "gone".into(),
                    path: "/m/gone.gguf".into(),
                    on_demand: false,
                    keep_alive: "forever".into(),
                    state: llmd_shared::DeclaredState::Failed {
                        reason: "cannot open /m/gone.gguf: No such file".into(),
                    },
                    note: None,
                },
            ],
            memory: DaemonMemory {
                rss_bytes: 330 << 20,
                anon_bytes: 320 << 20,
                file_bytes: 10 << 20,
                peak_bytes: 400 << 20,
            },
        };
        let text = render(&s);
        for needle in [
            "memory:   330.0 MiB resident (320.0 MiB anonymous, 10.0 MiB file-backed), peak 400.0 MiB",
            "llmd 0.1.0 (protocol 1), pid 77, up 1m 05s",
            "/run/llmd/llmd.sock",
            "built-in defaults",
            "1 connection, 1 request running",
            "cpu:0",
            "1.0 GiB",
            "(host memory)",
            "cuda:     unavailable (libcuda was not found)",
            "cuda:0   cuda  unavailable: CUDA is unavailable: libcuda was not found",
            "none resident",
            "GPUs: none available (NVML library could not be loaded: libnvidia-ml.so.1: cannot open",
            "Power: PSU 1000 W",
            "worst case 150 W",
            "85% headroom",
            "layers per device:",
            "gemma                CPU 10, GPU 1 8",
            "declared (config [[models]]):",
            "chat                 not loaded  (on demand, keep alive 300s; unloaded after 300 s \
             without requests; /m/chat.gguf)",
            "gone                 FAILED: cannot open /m/gone.gguf: No such file  (at start, keep \
             alive forever; /m/gone.gguf)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
