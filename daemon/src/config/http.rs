//! The `[http]` section: where the OpenAI-compatible HTTP API listens, its API key and its
//! limits. Absent: the API is off. Changes take effect on restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Request bodies accepted at most by default: a long conversation is well under this, and the
/// whole body is read before it is parsed.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Requests served at once by default (streams included); more get 429.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
/// Longest API key file read: a key is a line, not a document.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Addresses to listen on (`"127.0.0.1:8080"`; port 0 picks a free port, which the log
    /// names). At least one.
    pub listen: Vec<SocketAddr>,
    /// The Bearer key every route but `/health` requires. Prefer `api_key_file`, which keeps the
    /// key out of a world-readable config.
    #[serde(default)]
    pub api_key: Option<String>,
    /// A file holding the key (surrounding whitespace ignored); read at start.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Request bodies accepted at most, in bytes; larger get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests served at once (a stream counts until it ends); more get 429.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

fn default_max_concurrent_requests() -> usize {
    DEFAULT_MAX_CONCURRENT_REQUESTS
}

/// Why the `[http]` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// `listen` is empty.
    #[error("[http] listen names no address")]
    NoAddress,
    /// Both or a zero limit given.
    #[error("[http] {0}")]
    Invalid(String),
    /// The key file could not be read.
    #[error("[http] api_key_file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl HttpConfig {
    /// Checks the section and returns the API key, if one is required (read from
    /// `api_key_file` where given).
    pub fn api_key(&self) -> Result<Option<String>, HttpConfigError> {
        if self.listen.is_empty() {
            return Err(HttpConfigError::NoAddress);
        }
        if self.max_body_bytes == 0 || self.max_concurrent_requests == 0 {
            return Err(HttpConfigError::Invalid(
                "max_body_bytes and max_concurrent_requests must be at least 1".into(),
            ));
        }
        match (&self.api_key, &self.api_key_file) {
            (Some(_), Some(_)) => Err(HttpConfigError::Invalid(
                "give api_key or api_key_file, not both".into(),
            )),
            (Some(key), None) => non_empty(key.trim().to_owned(), None).map(Some),
            (None, Some(path)) => read_key(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The key in `path`, trimmed.
fn read_key(path: &Path) -> Result<String, HttpConfigError> {
    let fail = |reason: String| HttpConfigError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes; a key file holds at most {MAX_KEY_FILE_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    non_empty(text.trim().to_owned(), Some(path))
}

/// `key`, unless it is empty.
fn non_empty(key: String, path: Option<&Path>) -> Result<String, HttpConfigError> {
    if !key.is_empty() {
        return Ok(key);
    }
    Err(match path {
        Some(p) => HttpConfigError::KeyFile {
            path: p.to_owned(),
            reason: "the file is empty".into(),
        },
        None => HttpConfigError::Invalid("api_key is empty".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> HttpConfig {
        toml::from_str(text).expect("valid [http]")
    }

    #[test]
    fn defaults_and_keys() {
        let c = parse("listen = [\"127.0.0.1:0\"]");
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.api_key().unwrap(), None);
        let c = parse("listen = [\"127.0.0.1:0\"]\napi_key = \" k \"");
        assert_eq!(c.api_key().unwrap().as_deref(), Some("k"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "secret\n").unwrap();
        let c = parse(&format!(
            "listen = [\"127.0.0.1:0\"]\napi_key_file = {:?}",
            file.display().to_string()
        ));
        assert_eq!(c.api_key().unwrap().as_deref(), Some("secret"));
    }

    #[test]
    fn bad_sections_are_refused_naming_the_problem() {
        assert!(matches!(
            parse("listen = []").api_key(),
            Err(HttpConfigError::NoAddress)
        ));
        let e = parse("listen = [\"127.0.0.1:0\"]\napi_key = \"a\"\napi_key_file = \"/x\"")
            .api_key()
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let e = parse("listen = [\"127.0.0.1:0\"]\napi_key_file = \"/nonexistent/key\"")
            .api_key()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/key"), "{e}");
        assert!(toml::from_str::<HttpConfig>("listen = [\"nope\"]").is_err());
        assert!(toml::from_str::<HttpConfig>("listen = []\nport = 1").is_err());
    }
}
