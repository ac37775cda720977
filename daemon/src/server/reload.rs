//! SIGHUP: re-read the configuration without a restart. A bad new file keeps the old
//! configuration (and says why in the log); systemd sees `RELOADING=1` … `READY=1` either way.

use crate::config::ConfigSource;
use crate::logging::LogHandle;
use crate::notify;
use crate::state::State;

/// Re-reads the configuration from where it was first read.
pub struct Reloader {
    /// The file the daemon was started with.
    source: ConfigSource,
    /// To apply a new log level; `None` when logging is not ours (tests).
    log: Option<LogHandle>,
}

impl Reloader {
    /// A reloader for `source`.
    pub fn new(source: ConfigSource, log: Option<LogHandle>) -> Self {
        Reloader { source, log }
    }

    /// Reloads, applying what can change at run time (log level, devices); socket settings
    /// only take effect on restart.
    pub fn reload(&self, state: &std::sync::Arc<State>) {
        notify::reloading();
        tracing::info!("SIGHUP received: reloading configuration");
        match self.source.load() {
            Ok(new) => {
                let old = state.config();
                if new.config.socket != old.config.socket
                    || new.config.socket_group != old.config.socket_group
                {
                    tracing::warn!("socket settings changed; they take effect on restart");
                }
                if new.config.gpu != old.config.gpu {
                    tracing::warn!(
                        "[gpu] settings changed; the telemetry sampler keeps the old ones until \
                         restart"
                    );
                }
                if let Some(log) = &self.log {
                    if let Err(e) = log.set_level(new.config.log_level.as_deref()) {
                        tracing::error!("{e}");
                    }
                }
                if new.config.access != old.config.access {
                    crate::server::access::log_policy(new.config.access.as_ref());
                }
                let from = new.path.as_ref().map_or_else(
                    || "built-in defaults".to_string(),
                    |p| p.display().to_string(),
                );
                state.replace_config(new);
                tracing::info!("configuration reloaded from {from}");
                // Declared models follow the new file in the background: added ones load,
                // removed ones unload, moved ones re-split live.
                super::declared::spawn_reconcile(state);
            }
            Err(e) => tracing::error!("reload failed, keeping the previous configuration: {e}"),
        }
        notify::ready(&state.status_line());
    }
}
