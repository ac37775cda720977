//! `doctor` and `metrics`: the box's health checks and the Prometheus text of its telemetry.
//! The reply data types ([`DoctorReport`](super::health::DoctorReport), the telemetry) live in
//! [`health`](super::health) and [`gpu`](super::gpu); this file holds the request structs.

use serde::{Deserialize, Serialize};

/// Asks for the doctor checks (answered by [`Reply::Doctor`](super::Reply::Doctor)). No
/// arguments: the daemon judges its latest telemetry sample, its power config and the models
/// resident now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorRequest {}

/// Asks for the telemetry and power budget in the Prometheus text format. No arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsRequest {}

/// The Prometheus text exposition (format 0.0.4), ready for a node-exporter textfile collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReply {
    /// The metrics, one `# HELP` / `# TYPE` header per family and one sample per line.
    pub text: String,
}
