//! Printing: human-readable text, or with `--json` one JSON object per line on stdout.

use std::io::Write;

use serde::Serialize;

use crate::CtlError;

/// Where and how a command prints its result.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json` was given.
    pub json: bool,
}

impl Output {
    /// Prints `value` as one line of JSON.
    pub fn json_line<T: Serialize>(&self, value: &T) -> Result<(), CtlError> {
        let line =
            serde_json::to_string(value).map_err(|e| CtlError::Output(std::io::Error::other(e)))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").map_err(CtlError::Output)?;
        out.flush().map_err(CtlError::Output)
    }

    /// Prints human-readable text as is.
    pub fn text(&self, text: &str) -> Result<(), CtlError> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).map_err(CtlError::Output)?;
        out.flush().map_err(CtlError::Output)
    }
}

/// "1.5 GiB", "512 B": a byte count for humans (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "3d 4h 05m 06s", "5m 06s", "42s": a duration in seconds for humans.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m:02}m {s:02}s")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humans() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(3723), "1h 02m 03s");
        assert_eq!(human_duration(90_061), "1d 1h 01m 01s");
    }
}
