//! Where the daemon's socket lives when no path is given explicitly.
//!
//! Full order for the daemon: `--socket PATH`, else `LLMD_SOCKET`, else `socket` in the config
//! file, else [`default_candidates`]'s first entry. The first two and the config file are handled
//! by the daemon and `llmctl` themselves; this module holds the environment-derived defaults that
//! both share:
//!
//! 1. `$RUNTIME_DIRECTORY/llmd.sock` (set by systemd from `RuntimeDirectory=llmd`, i.e.
//!    `/run/llmd/llmd.sock`; if it lists several directories, the first),
//! 2. `$XDG_RUNTIME_DIR/llmd/llmd.sock` (a daemon run by a user outside systemd),
//! 3. [`SYSTEM_SOCKET`] (`/run/llmd/llmd.sock`, where the packaged service listens).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Environment variable naming the socket, honoured by both `llmd` and `llmctl`.
pub const SOCKET_ENV: &str = "LLMD_SOCKET";

/// File name of the socket inside its runtime directory.
pub const SOCKET_FILE_NAME: &str = "llmd.sock";

/// The socket of the packaged system service (`RuntimeDirectory=llmd`).
pub const SYSTEM_SOCKET: &str = "/run/llmd/llmd.sock";

/// The default socket paths, most specific first, derived from the given environment lookup
/// (`std::env::var_os` in production; injectable for tests).
pub fn default_candidates_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let non_empty = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty());
    if let Some(dirs) = non_empty(env("RUNTIME_DIRECTORY")) {
        if let Some(first) = first_of_colon_list(&dirs) {
            out.push(first.join(SOCKET_FILE_NAME));
        }
    }
    if let Some(xdg) = non_empty(env("XDG_RUNTIME_DIR")) {
        out.push(Path::new(&xdg).join("llmd").join(SOCKET_FILE_NAME));
    }
    out.push(PathBuf::from(SYSTEM_SOCKET));
    out
}

/// [`default_candidates_from`] over the process environment.
pub fn default_candidates() -> Vec<PathBuf> {
    default_candidates_from(|k| std::env::var_os(k))
}

/// The daemon's default: the first candidate.
pub fn daemon_default() -> PathBuf {
    default_candidates()
        .into_iter()
        .next()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_SOCKET))
}

/// The client's default: the first candidate that exists, else the first one. A user whose
/// session has `XDG_RUNTIME_DIR` set still finds the system daemon at [`SYSTEM_SOCKET`].
pub fn client_default() -> PathBuf {
    let candidates = default_candidates();
    candidates
        .iter()
        .find(|p| p.exists())
        .or_else(|| candidates.first())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_SOCKET))
}

fn first_of_colon_list(list: &OsStr) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    list.as_bytes()
        .split(|&b| b == b':')
        .find(|part| !part.is_empty())
        .map(|part| PathBuf::from(OsStr::from_bytes(part)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn order_is_runtime_directory_then_xdg_then_system() {
        let all = default_candidates_from(env_of(&[
            ("RUNTIME_DIRECTORY", "/run/llmd:/run/other"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ]));
        assert_eq!(
            all,
            [
                PathBuf::from("/run/llmd/llmd.sock"),
                PathBuf::from("/run/user/1000/llmd/llmd.sock"),
                PathBuf::from(SYSTEM_SOCKET),
            ]
        );
        let none = default_candidates_from(env_of(&[("XDG_RUNTIME_DIR", "")]));
        assert_eq!(none, [PathBuf::from(SYSTEM_SOCKET)]);
    }
}
