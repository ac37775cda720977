//! The PSU power budget: how the GPUs' draw and their worst case compare with the PSU's rating.
//!
//! NVML's power reading is an average over roughly a second; RTX 30-series cards in particular
//! spike far above their limit for a millisecond or less, which is what trips an undersized
//! PSU's over-current protection. The worst case therefore multiplies the sum of the enforced
//! power limits by a transient factor before adding the rest of the system.

use serde::{Deserialize, Serialize};

pub use llmd_shared::api::health::PowerBudget;

use crate::gpu::GpuTelemetry;

/// Default transient factor. RTX 3090-class cards have been measured at 1.5-2x their limit for
/// well under a millisecond; PSUs absorb much of that (ATX 3.0 units are specified for 2x for
/// 100 µs), and 1.3 covers the millisecond-scale excursions that trip older units. Raise it to
/// 1.5-2.0 for pre-ATX-3.0 PSUs feeding several 30-series cards.
pub const DEFAULT_TRANSIENT_FACTOR: f64 = 1.3;

/// Default estimate for the CPU, board, drives and fans, in W.
pub const DEFAULT_SYSTEM_WATTS: f64 = 150.0;

/// Largest accepted transient factor: beyond it the worst case is meaningless.
pub const MAX_TRANSIENT_FACTOR: f64 = 4.0;

/// The `[power]` section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// The PSU's rated continuous output, in W; unset: the budget cannot be judged.
    pub psu_watts: Option<f64>,
    /// Estimated draw of everything but the GPUs (CPU, board, drives, fans), in W.
    pub system_watts: f64,
    /// Multiplier on the GPUs' enforced power limits for short spikes (see the module doc).
    pub transient_factor: f64,
}

// Validation rejects NaN, so equality is reflexive (lets the daemon's Config derive Eq).
impl Eq for PowerConfig {}

impl Default for PowerConfig {
    fn default() -> Self {
        Self {
            psu_watts: None,
            system_watts: DEFAULT_SYSTEM_WATTS,
            transient_factor: DEFAULT_TRANSIENT_FACTOR,
        }
    }
}

/// A `[power]` value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerConfigError {
    /// `psu_watts` must be a positive finite number.
    #[error("power.psu_watts must be a positive number of watts, got {0}")]
    PsuWatts(f64),
    /// `system_watts` must be a non-negative finite number.
    #[error("power.system_watts must be zero or a positive number of watts, got {0}")]
    SystemWatts(f64),
    /// `transient_factor` must be in 1.0..=MAX_TRANSIENT_FACTOR.
    #[error("power.transient_factor must be between 1.0 and {MAX_TRANSIENT_FACTOR}, got {0}")]
    TransientFactor(f64),
}

impl PowerConfig {
    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), PowerConfigError> {
        if let Some(psu) = self.psu_watts {
            if !(psu.is_finite() && psu > 0.0) {
                return Err(PowerConfigError::PsuWatts(psu));
            }
        }
        if !(self.system_watts.is_finite() && self.system_watts >= 0.0) {
            return Err(PowerConfigError::SystemWatts(self.system_watts));
        }
        if !(1.0..=MAX_TRANSIENT_FACTOR).contains(&self.transient_factor) {
            return Err(PowerConfigError::TransientFactor(self.transient_factor));
        }
        Ok(())
    }
}

/// Computes the budget for one telemetry sample.
pub fn budget(config: &PowerConfig, telemetry: &GpuTelemetry) -> PowerBudget {
    let mut gpu_draw_watts = 0.0;
    let mut gpu_limits_watts = 0.0;
    let mut gpus_without_draw = Vec::new();
    let mut gpus_without_limit = Vec::new();
    for gpu in &telemetry.gpus {
        match gpu.power_draw_w.get() {
            Some(watts) => gpu_draw_watts += watts,
            None => gpus_without_draw.push(gpu.index),
        }
        match gpu
            .power_limits
            .enforced_w
            .get()
            .or_else(|| gpu.power_limits.default_w.get())
        {
            Some(watts) => gpu_limits_watts += watts,
            None => gpus_without_limit.push(gpu.index),
        }
    }
    let current_watts = gpu_draw_watts + config.system_watts;
    let worst_case_watts = gpu_limits_watts * config.transient_factor + config.system_watts;
    let headroom = |watts: f64| config.psu_watts.map(|psu| (psu - watts) / psu * 100.0);
    PowerBudget {
        psu_watts: config.psu_watts,
        system_watts: config.system_watts,
        transient_factor: config.transient_factor,
        gpu_draw_watts,
        current_watts,
        gpu_limits_watts,
        worst_case_watts,
        current_headroom_percent: headroom(current_watts),
        worst_case_headroom_percent: headroom(worst_case_watts),
        gpus_without_draw,
        gpus_without_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_values() {
        assert!(PowerConfig::default().validate().is_ok());
        let bad_psu = PowerConfig {
            psu_watts: Some(0.0),
            ..PowerConfig::default()
        };
        assert_eq!(bad_psu.validate(), Err(PowerConfigError::PsuWatts(0.0)));
        let bad_factor = PowerConfig {
            transient_factor: 0.9,
            ..PowerConfig::default()
        };
        assert_eq!(
            bad_factor.validate(),
            Err(PowerConfigError::TransientFactor(0.9))
        );
        let bad_system = PowerConfig {
            system_watts: f64::NAN,
            ..PowerConfig::default()
        };
        assert!(matches!(
            bad_system.validate(),
            Err(PowerConfigError::SystemWatts(_))
        ));
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_keys() {
        let config: PowerConfig =
            toml::from_str("psu_watts = 850\ntransient_factor = 1.5").expect("parse");
        assert_eq!(config.psu_watts, Some(850.0));
        assert_eq!(config.system_watts, DEFAULT_SYSTEM_WATTS);
        assert!(toml::from_str::<PowerConfig>("psu_wats = 850").is_err());
    }
}
