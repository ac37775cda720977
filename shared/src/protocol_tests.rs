//! Round-trip and hostile-input tests of the wire protocol: every message type survives
//! encode → decode unchanged, and random bytes, truncated frames, huge length prefixes and
//! corrupted payloads produce errors, never panics, and never make a reader consume (or allocate
//! for) more than the limit allows.

use std::io::Read;

use llmd_testkit::Rng;

use crate::api::gpu::{GpuTelemetry, NvmlStatus};
use crate::api::health::{
    Check, CheckKind, DeviceLayers, DeviceRef, DoctorReport, ModelPlacement, PowerBudget, Verdict,
};
use crate::frame::{read_frame_with_limit, HEADER_BYTES};
use crate::handshake::MAX_HELLO_BYTES;
use crate::{
    decode_frame, encode_frame, read_frame, write_frame, CudaStatus, DaemonMemory, DeviceInfo,
    DeviceKind, DoctorRequest, ErrorCode, ErrorReply, Event, FrameError, Hello, HelloReply,
    HostMemory, KvCacheType, ListReply, LoadReply, LoadRequest, MetricsReply, MetricsRequest,
    ModelDetails, ModelInfo, PrefixCacheUsage, Reply, Request, Response, StatusReply,
    StatusRequest, Token, VersionReply, VersionRequest, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};

fn sample_responses() -> Vec<Response> {
    vec![
        Response::Reply(Reply::Status(Box::new(StatusReply {
            daemon_version: "0.1.0".into(),
            protocol_version: PROTOCOL_VERSION,
            pid: 4242,
            uptime_secs: 3600,
            socket: "/run/llmd/llmd.sock".into(),
            config: "/etc/llmd/llmd.toml".into(),
            devices: vec![DeviceInfo {
                name: "cpu:0".into(),
                kind: DeviceKind::Cpu,
                memory_budget_bytes: 16 << 30,
                memory_used_bytes: 0,
                description: "host memory".into(),
                unavailable: None,
            }],
            models: vec![
                ModelInfo {
                    name: "gemma".into(),
                    path: "/models/gemma.gguf".into(),
                    devices: vec!["cpu:0".into()],
                    memory_bytes: 253 << 20,
                    host_memory: HostMemory {
                        anon_bytes: 253 << 20,
                        file_bytes: 0,
                    },
                    cache_type_k: KvCacheType::Q8_0,
                    cache_type_v: KvCacheType::F16,
                    failed: None,
                    template_warning: None,
                    prefix_cache: PrefixCacheUsage {
                        retained_bytes: 9 << 20,
                        retained_sequences: 3,
                    },
                },
                ModelInfo {
                    name: "qwen".into(),
                    path: "/models/qwen.gguf".into(),
                    devices: Vec::new(),
                    memory_bytes: 0,
                    host_memory: HostMemory::default(),
                    cache_type_k: KvCacheType::F16,
                    cache_type_v: KvCacheType::F16,
                    failed: Some("the model failed (a step panicked: boom); reload it".into()),
                    template_warning: Some("no chat template".into()),
                    prefix_cache: PrefixCacheUsage::default(),
                },
            ],
            connections: 3,
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
                1_700_000_000_000,
            ),
            power: PowerBudget {
                psu_watts: Some(850.0),
                system_watts: 150.0,
                transient_factor: 1.3,
                gpu_draw_watts: 0.0,
                current_watts: 150.0,
                gpu_limits_watts: 0.0,
                worst_case_watts: 150.0,
                current_headroom_percent: Some(82.4),
                worst_case_headroom_percent: Some(82.4),
                gpus_without_draw: vec![],
                gpus_without_limit: vec![1],
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
                crate::DeclaredModel {
                    name: "gemma".into(),
                    path: "/var/lib/llmd/models/gemma.gguf".into(),
                    on_demand: false,
                    keep_alive: "forever".into(),
                    state: crate::DeclaredState::Resident,
                    note: None,
                },
                crate::DeclaredModel {
                    name: "big".into(),
                    path: "/m/big.gguf".into(),
                    on_demand: true,
                    keep_alive: "300s".into(),
                    state: crate::DeclaredState::Failed {
                        reason: "does not fit".into(),
                    },
                    note: Some("evicted to make room for \"x\"".into()),
                },
            ],
            memory: DaemonMemory {
                rss_bytes: 330 << 20,
                anon_bytes: 320 << 20,
                file_bytes: 10 << 20,
                peak_bytes: 400 << 20,
            },
        }))),
        Response::Reply(Reply::Doctor(DoctorReport {
            checks: vec![
                Check {
                    kind: CheckKind::Psu,
                    subject: "system".into(),
                    verdict: Verdict::Warn,
                    summary: "worst case 1060 W, 12% headroom".into(),
                    fix: Some("fit a bigger PSU".into()),
                },
                Check {
                    kind: CheckKind::Model,
                    subject: "model qwen".into(),
                    verdict: Verdict::Fail,
                    summary: "not serving: the model failed".into(),
                    fix: Some("llmctl reload qwen".into()),
                },
            ],
        })),
        Response::Reply(Reply::Metrics(MetricsReply {
            text: "# HELP llmd_gpu_power_watts Power draw\n".into(),
        })),
        Response::Reply(Reply::Load(LoadReply {
            name: "gemma".into(),
            path: "/models/gemma.gguf".into(),
            architecture: "gemma3".into(),
            n_layer: 18,
            ctx: 4096,
            placement: vec![],
            load_secs: 0.5,
            bytes_loaded: 1 << 20,
            replaced: false,
            cache_type_k: KvCacheType::Q4_0,
            cache_type_v: KvCacheType::Q8_0,
        })),
        Response::Reply(Reply::List(ListReply {
            models: vec![ModelDetails {
                name: "gemma".into(),
                path: "/models/gemma.gguf".into(),
                architecture: "gemma3".into(),
                n_layer: 18,
                ctx: 4096,
                threads: 2,
                placement: vec![],
                running: 0,
                cache_type_k: KvCacheType::F16,
                cache_type_v: KvCacheType::Q4_0,
                failed: Some("the model failed (a step panicked: boom); reload it".into()),
                host_memory: HostMemory::default(),
                prefix_cache: PrefixCacheUsage {
                    retained_bytes: 1 << 20,
                    retained_sequences: 1,
                },
            }],
        })),
        Response::Reply(Reply::Version(VersionReply {
            daemon_version: "0.1.0".into(),
            protocol_version: PROTOCOL_VERSION,
        })),
        Response::Event(Event::Token(Token {
            id: 151_643,
            text: "héllo ✓".into(),
        })),
        Response::Event(Event::Progress(crate::Progress {
            done: 5,
            total: 10,
            what: "tensors".into(),
        })),
        Response::Error(ErrorReply::new(ErrorCode::ShuttingDown, "llmd is stopping")),
        Response::Error(ErrorReply::new(ErrorCode::VersionMismatch, "")),
        Response::Error(ErrorReply::new(
            ErrorCode::Forbidden,
            "user 1000 may not unload models",
        )),
    ]
}

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Status(StatusRequest {}),
        Request::Version(VersionRequest {}),
        Request::Doctor(DoctorRequest {}),
        Request::Metrics(MetricsRequest {}),
        Request::Load(LoadRequest {
            path: "/models/gemma.gguf".into(),
            cache_type_k: Some(KvCacheType::Q8_0),
            cache_type_v: Some(KvCacheType::Q4_0),
            ..LoadRequest::default()
        }),
        Request::Load(LoadRequest {
            path: "/models/gemma.gguf".into(),
            ..LoadRequest::default()
        }),
    ]
}

#[test]
fn every_message_round_trips() {
    for msg in sample_responses() {
        let frame = encode_frame(&msg).unwrap();
        let (back, used) = decode_frame::<Response>(&frame).unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, frame.len());
    }
    for msg in sample_requests() {
        let frame = encode_frame(&msg).unwrap();
        let (back, _) = decode_frame::<Request>(&frame).unwrap();
        assert_eq!(back, msg);
    }
    let replies = [
        HelloReply::for_hello(&Hello::current()),
        HelloReply::for_hello(&Hello {
            protocol_version: 0,
            client_version: "old".into(),
        }),
    ];
    for r in replies {
        let (back, _) = decode_frame::<HelloReply>(&encode_frame(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}

#[test]
fn several_frames_on_one_stream() {
    let mut stream = Vec::new();
    for msg in sample_responses() {
        write_frame(&mut stream, &msg).unwrap();
    }
    let mut reader = &stream[..];
    for msg in sample_responses() {
        let back: Response = read_frame(&mut reader).unwrap();
        assert_eq!(back, msg);
    }
    assert!(matches!(
        read_frame::<_, Response>(&mut reader),
        Err(FrameError::Closed)
    ));
}

/// Random buffers fed to every decoder: errors only, no panic.
#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5EED_0001);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let mut buf = rng.bytes(len);
        // Half the time, make the prefix plausible so the payload decoder is exercised too.
        if len >= HEADER_BYTES && rng.below(2) == 0 {
            let payload = (len - HEADER_BYTES) as u32;
            buf[..4].copy_from_slice(&payload.to_be_bytes());
        }
        let _ = decode_frame::<Request>(&buf);
        let _ = decode_frame::<Response>(&buf);
        let _ = decode_frame::<Hello>(&buf);
        let _ = decode_frame::<HelloReply>(&buf);
        let _ = read_frame::<_, Request>(&mut &buf[..]);
    }
}

/// Valid frames with random bytes flipped: errors or (rarely) another valid message, no panic.
#[test]
fn corrupted_frames_never_panic() {
    let mut rng = Rng(0x5EED_0002);
    let frames: Vec<Vec<u8>> = sample_responses()
        .iter()
        .map(|m| encode_frame(m).unwrap())
        .collect();
    for _ in 0..20_000 {
        let mut f = frames[rng.below(frames.len())].clone();
        for _ in 0..=rng.below(4) {
            let i = HEADER_BYTES + rng.below(f.len() - HEADER_BYTES);
            f[i] = rng.next_u64() as u8;
        }
        match decode_frame::<Response>(&f) {
            Ok(_) => {}
            Err(e) => assert!(e.is_protocol_error(), "{e}"),
        }
    }
}

/// Every prefix of a valid frame is "incomplete", never a protocol error.
#[test]
fn truncated_frames_are_incomplete() {
    for msg in sample_responses() {
        let f = encode_frame(&msg).unwrap();
        for cut in 0..f.len() {
            let err = decode_frame::<Response>(&f[..cut]).unwrap_err();
            assert!(err.is_incomplete(), "cut {cut}: {err}");
            let err = read_frame::<_, Response>(&mut &f[..cut]).unwrap_err();
            let expected = if cut == 0 {
                matches!(err, FrameError::Closed)
            } else {
                matches!(err, FrameError::Truncated { .. })
            };
            assert!(expected, "cut {cut}: {err}");
        }
    }
}

/// A reader that serves `prefix` and then an endless stream of zeros, counting what is read.
struct Endless {
    prefix: Vec<u8>,
    pos: usize,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(4096);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self.prefix.get(self.pos + i).copied().unwrap_or(0);
        }
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn huge_length_prefixes_are_refused_before_reading_the_payload() {
    for len in [u32::MAX, 0x8000_0000, MAX_FRAME_BYTES as u32 + 1] {
        let mut r = Endless {
            prefix: len.to_be_bytes().to_vec(),
            pos: 0,
        };
        let err = read_frame::<_, Request>(&mut r).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        // Only the header (one read call's worth) was consumed: nothing of the payload.
        assert!(r.pos <= 4096, "read {} bytes", r.pos);
        let err = decode_frame::<Request>(&len.to_be_bytes()).unwrap_err();
        assert!(err.is_protocol_error(), "{err}");
    }
    // The handshake limit is smaller still.
    let mut r = Endless {
        prefix: (MAX_HELLO_BYTES as u32 + 1).to_be_bytes().to_vec(),
        pos: 0,
    };
    let err = read_frame_with_limit::<_, Hello>(&mut r, MAX_HELLO_BYTES).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
}

/// A payload whose inner length fields claim more than the frame holds is a decode error.
#[test]
fn inner_lengths_beyond_the_frame_are_errors() {
    // Request::Status is variant 0 with no fields; Hello's string length claims 2^40 bytes.
    let mut payload = vec![1u8]; // protocol_version 1
    payload.push(253); // bincode varint marker for u64
    payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let err = decode_frame::<Hello>(&frame).unwrap_err();
    assert!(err.is_protocol_error(), "{err}");
}

#[test]
fn wrong_protocol_version_is_rejected_with_both_versions() {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        client_version: "99.0.0".into(),
    };
    match HelloReply::for_hello(&hello) {
        HelloReply::Rejected {
            protocol_version,
            message,
            ..
        } => {
            assert_eq!(protocol_version, PROTOCOL_VERSION);
            assert!(
                message.contains(&(PROTOCOL_VERSION + 1).to_string()),
                "{message}"
            );
            assert!(message.contains(&PROTOCOL_VERSION.to_string()), "{message}");
        }
        other => panic!("wrong version accepted: {other:?}"),
    }
}

#[test]
fn oversized_message_is_refused_when_sending() {
    let huge = Response::Event(Event::Token(Token {
        id: 0,
        text: "x".repeat(MAX_FRAME_BYTES),
    }));
    let err = encode_frame(&huge).unwrap_err();
    assert!(
        matches!(err, FrameError::TooLarge { .. } | FrameError::Encode(_)),
        "{err}"
    );
}
