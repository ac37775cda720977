//! Logging through `tracing`: to journald when stderr is connected to the journal (systemd sets
//! `JOURNAL_STREAM` to the device and inode of that stream), else human-readable lines on stderr.
//!
//! The level comes from `RUST_LOG` when set, else from the config's `log_level`, else "info"; it
//! can be changed at run time (on config reload) through [`LogHandle`].

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Level used when neither `RUST_LOG` nor the config sets one.
pub const DEFAULT_LEVEL: &str = "info";

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level is not a valid tracing filter directive.
    #[error("invalid log level `{directive}`: {reason}")]
    BadFilter {
        /// The offending directive.
        directive: String,
        /// The parser's explanation.
        reason: String,
    },
    /// A global subscriber was already installed, or the filter could not be swapped.
    #[error("cannot install or update the log subscriber: {0}")]
    Subscriber(String),
}

/// Parses a level or filter directive ("info", "llmd=debug,warn").
pub fn parse_filter(directive: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| LoggingError::BadFilter {
            directive: directive.to_string(),
            reason: e.to_string(),
        })
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The systemd journal (structured fields, priorities).
    Journald,
    /// Formatted lines on stderr.
    Stderr,
}

/// Handle on the installed subscriber, to change the level on reload.
pub struct LogHandle {
    /// Swaps the filter of the installed subscriber.
    reload: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` as found at start; when set it overrides the config's level, also on reload.
    env_override: Option<String>,
    /// Where logs go.
    pub sink: Sink,
}

impl LogHandle {
    /// Applies the config's level (no-op when `RUST_LOG` overrides it).
    pub fn set_level(&self, config_level: Option<&str>) -> Result<(), LoggingError> {
        if self.env_override.is_some() {
            return Ok(());
        }
        let filter = parse_filter(config_level.unwrap_or(DEFAULT_LEVEL))?;
        self.reload
            .reload(filter)
            .map_err(|e| LoggingError::Subscriber(e.to_string()))
    }
}

/// True when stderr is the journal stream systemd announced in `JOURNAL_STREAM` ("dev:inode").
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(announced) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let announced = announced.to_string_lossy().into_owned();
    let Some((dev, ino)) = announced.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber. Call once, early.
pub fn init(config_level: Option<&str>) -> Result<LogHandle, LoggingError> {
    let env_override = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = match &env_override {
        Some(v) => parse_filter(v)?,
        None => parse_filter(config_level.unwrap_or(DEFAULT_LEVEL))?,
    };
    let (filter_layer, reload) = reload::Layer::new(filter);
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let sink = if journald.is_some() {
        Sink::Journald
    } else {
        Sink::Stderr
    };
    let fmt = match sink {
        Sink::Stderr => Some(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        ),
        Sink::Journald => None,
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(journald)
        .with(fmt)
        .try_init()
        .map_err(|e| LoggingError::Subscriber(e.to_string()))?;
    Ok(LogHandle {
        reload,
        env_override,
        sink,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_explain() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("llmd=debug,warn").is_ok());
        let err = parse_filter("llmd=loud").unwrap_err();
        assert!(err.to_string().contains("llmd=loud"), "{err}");
    }
}
