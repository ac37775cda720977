//! Health of the box: the PSU power budget, `doctor` checks and Prometheus metrics, all pure
//! functions over a [`GpuTelemetry`](crate::gpu::GpuTelemetry) sample, plus their human rendering.
//!
//! - [`power`]: power budget configuration and arithmetic.
//! - [`doctor`]: the checks, each OK / WARN / FAIL with one line on how to fix it.
//! - [`metrics`]: the Prometheus text exposition of the same figures.
//! - [`registry`]: request, token and latency metrics (`prometheus-client`) and the one
//!   exposition `llmctl metrics` and `GET /metrics` both print.
//! - [`render`]: the human status table and doctor report.

pub mod doctor;
pub mod metrics;
pub mod power;
pub mod registry;
pub mod render;
