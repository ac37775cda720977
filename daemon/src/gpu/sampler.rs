//! The background sampler: a dedicated thread takes a telemetry sample every interval and
//! publishes it; readers ([`GpuSampler::latest`]) only clone an `Arc`, so `status` never waits on
//! NVML (whose calls can take seconds when a GPU misbehaves).

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{nvml, GpuTelemetry};

/// Default time between samples: fresh enough for `status --watch`, cheap for the driver.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Shortest interval accepted: NVML's own counters (utilization, power) update no faster.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How often a failed NVML load is retried (the driver may be installed or loaded later).
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(30);

/// What the sampler loads and how often it samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerConfig {
    /// The NVML library to load (see [`nvml::library_path`]).
    pub library: PathBuf,
    /// Time between samples; raised to [`MIN_INTERVAL`] if lower.
    pub interval: Duration,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            library: nvml::library_path(None),
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// The running sampler. Dropping it stops the thread (within one NVML call).
pub struct GpuSampler {
    /// The latest sample, replaced whole after each round.
    latest: Arc<RwLock<Arc<GpuTelemetry>>>,
    /// Dropping this sender wakes and stops the thread.
    stop: Option<Sender<()>>,
    /// The sampling thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl GpuSampler {
    /// Starts the sampling thread. Until its first sample lands, [`latest`](Self::latest) reports
    /// [`NvmlStatus::NotSampledYet`](super::NvmlStatus::NotSampledYet).
    pub fn start(config: SamplerConfig) -> std::io::Result<Self> {
        let latest = Arc::new(RwLock::new(Arc::new(GpuTelemetry::not_sampled_yet())));
        let (stop, stopped) = mpsc::channel::<()>();
        let published = Arc::clone(&latest);
        let interval = config.interval.max(MIN_INTERVAL);
        let own_pid = std::process::id();
        let thread = std::thread::Builder::new()
            .name("llmd-gpu-sampler".to_owned())
            .spawn(move || {
                let mut handle = None;
                let mut next_open = Instant::now();
                loop {
                    if handle.is_none() && Instant::now() >= next_open {
                        match nvml::open(&config.library) {
                            Ok(opened) => handle = Some(opened),
                            Err(status) => {
                                next_open = Instant::now() + REOPEN_INTERVAL;
                                publish(
                                    &published,
                                    GpuTelemetry::unavailable(status, nvml::now_unix_ms()),
                                );
                            }
                        }
                    }
                    if let Some(opened) = &handle {
                        publish(&published, nvml::collect(opened, own_pid));
                    }
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        Ok(Self {
            latest,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The latest sample; never blocks on NVML.
    pub fn latest(&self) -> Arc<GpuTelemetry> {
        let guard = self
            .latest
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&guard)
    }

    /// Waits until a sample newer than "not sampled yet" exists, or `timeout` passes; returns it.
    pub fn wait_for_first_sample(&self, timeout: Duration) -> Arc<GpuTelemetry> {
        let deadline = Instant::now() + timeout;
        loop {
            let latest = self.latest();
            if latest.sampled_at_unix_ms != 0 || Instant::now() >= deadline {
                return latest;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for GpuSampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the sampler already lost its telemetry; nothing more to report here.
            let _ = thread.join();
        }
    }
}

/// Replaces the published sample.
fn publish(latest: &RwLock<Arc<GpuTelemetry>>, telemetry: GpuTelemetry) {
    let mut guard = latest
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *guard = Arc::new(telemetry);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::NvmlStatus;

    #[test]
    fn reports_a_missing_library_and_stops_promptly() {
        let sampler = GpuSampler::start(SamplerConfig {
            library: PathBuf::from("/nonexistent/libnvidia-ml.so.1"),
            interval: Duration::from_secs(60),
        })
        .expect("start");
        let telemetry = sampler.wait_for_first_sample(Duration::from_secs(10));
        assert!(
            matches!(telemetry.nvml, NvmlStatus::LibraryMissing { .. }),
            "{telemetry:?}"
        );
        let started = Instant::now();
        drop(sampler);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stop took {:?}",
            started.elapsed()
        );
    }
}
