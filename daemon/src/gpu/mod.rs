//! GPU telemetry: what NVML reports about each GPU, sampled in the background so that `status`
//! never waits on the driver.
//!
//! - [`Reading`]: one field as the GPU reported it (a value, "not supported", or an error).
//! - [`GpuTelemetry`] / [`GpuSnapshot`]: one sample of every GPU, plus peer-to-peer status.
//!   These data types live in the wire protocol crate (`llmd_shared::api::gpu`) and are
//!   re-exported here.
//! - [`GpuConfig`]: the `[gpu]` config section.
//! - [`nvml`]: takes a sample through nvml-wrapper ([`nvml::collect`]).
//! - [`sampler`]: the background thread keeping the latest sample ([`sampler::GpuSampler`]).
//!

pub mod nvml;
pub mod sampler;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use llmd_shared::api::gpu::{
    GpuSnapshot, GpuTelemetry, MemoryReading, NvLinkReading, NvmlStatus, P2pPair, P2pState,
    PcieReading, PowerLimits, Reading, ThrottleReason, Utilization,
};

/// Shortest accepted `gpu.sample_interval_ms`: NVML's own counters update no faster.
pub const MIN_SAMPLE_INTERVAL_MS: u64 = 100;

/// Longest accepted `gpu.sample_interval_ms` (one hour): slower telemetry would be stale.
pub const MAX_SAMPLE_INTERVAL_MS: u64 = 3_600_000;

/// The `[gpu]` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// NVML library to load; absent: `$LLMD_NVML_LIB`, else `libnvidia-ml.so.1`.
    pub nvml_library: Option<PathBuf>,
    /// Milliseconds between telemetry samples.
    pub sample_interval_ms: u64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            nvml_library: None,
            sample_interval_ms: 2000,
        }
    }
}

impl GpuConfig {
    /// Checks the values; the error names the key and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(MIN_SAMPLE_INTERVAL_MS..=MAX_SAMPLE_INTERVAL_MS).contains(&self.sample_interval_ms) {
            return Err((
                "gpu.sample_interval_ms".to_owned(),
                format!(
                    "must be between {MIN_SAMPLE_INTERVAL_MS} and {MAX_SAMPLE_INTERVAL_MS}, got {}",
                    self.sample_interval_ms
                ),
            ));
        }
        if self
            .nvml_library
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err((
                "gpu.nvml_library".to_owned(),
                "must not be empty".to_owned(),
            ));
        }
        Ok(())
    }

    /// The sampler settings this section asks for.
    pub fn sampler_config(&self) -> sampler::SamplerConfig {
        sampler::SamplerConfig {
            library: nvml::library_path(self.nvml_library.as_deref()),
            interval: Duration::from_millis(self.sample_interval_ms),
        }
    }
}
