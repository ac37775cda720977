//! Human rendering of the telemetry, power budget, model splits and doctor report. The code
//! lives in the protocol crate ([`llmd_shared::render`]) so that `llmctl` shares it; re-exported
//! here for the daemon and its tests.

pub use llmd_shared::render::{render_doctor, render_gpus, render_models, render_power};
