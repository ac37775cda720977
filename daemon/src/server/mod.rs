//! The server: start-up ([`serve`]), the accept loop with its connection limit, signals (SIGHUP
//! reload, SIGTERM/SIGINT graceful stop), the systemd watchdog and status line.
//!
//! Request flow: [`listener`] accepts a Unix connection → [`connection`] does the handshake and
//! reads one length-prefixed frame per request (bounded in time and size) → [`handler::dispatch`]
//! runs the request's own handler file against the shared [`State`] → the connection writes the
//! handler's events and then its final reply (or error) as frames, and waits for the next request.

pub mod access;
pub mod admission;
pub mod connection;
pub mod declared;
pub mod frame_budget;
pub mod handler;
pub mod listener;
pub mod peek;
pub mod peer;
mod reload;
pub mod wire;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use llmd_shared::async_io::{read_frame_with_limit, write_frame};
use llmd_shared::handshake::MAX_HELLO_BYTES;
use llmd_shared::{Hello, HelloReply, PACKAGE_VERSION, PROTOCOL_VERSION};
use tokio::net::UnixStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::cli::ServeArgs;
use crate::config::{Config, ConfigError, ConfigSource};
use crate::logging::{self, LoggingError};
use crate::notify;
use crate::shutdown::ShutdownTrigger;
use crate::state::State;
use admission::{Admission, Admit};
use frame_budget::FrameBudget;
use listener::{BoundSocket, ListenerError};
use peer::Peer;
pub use reload::Reloader;

pub use admission::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_UID};

/// Connections being refused at once (each gets the reason in a handshake reply); past this a
/// refused connection is just closed, so a flood cannot turn refusals into work.
const MAX_REFUSALS: usize = 16;

/// How long a refused client has to send its `Hello` before it is closed without a reply.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long running requests get to finish (or be answered `shutting_down`) after SIGTERM
/// before the daemon exits anyway. Well under systemd's default stop timeout of 90 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Delay before refreshing `STATUS=` after a change, so bursts of requests send one update.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(250);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Logging(#[from] LoggingError),
    /// The socket could not be obtained.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The async runtime or the signal handlers could not be set up.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The HTTP API (`[http]`) could not start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

/// The socket path when not socket-activated: `--socket` / `LLMD_SOCKET` (clap reads both into
/// `cli`), else `socket` in the config, else `$RUNTIME_DIRECTORY/llmd.sock`, else
/// `$XDG_RUNTIME_DIR/llmd/llmd.sock`, else `/run/llmd/llmd.sock`.
pub fn resolve_socket_path(cli: Option<PathBuf>, config: &Config) -> PathBuf {
    cli.or_else(|| config.socket.clone())
        .unwrap_or_else(llmd_shared::socket::daemon_default)
}

/// Runs the daemon until SIGTERM/SIGINT: loads the config, sets up logging, obtains the socket,
/// serves. Returns `Ok` after a graceful shutdown.
pub fn serve(args: ServeArgs) -> Result<(), ServerError> {
    let source = ConfigSource::from_arg(args.config);
    let config = source.load()?;
    let log = logging::init(config.config.log_level.as_deref())?;
    // Before the runtime starts any thread: this unsets LISTEN_PID/LISTEN_FDS.
    let activated = listener::take_activated_socket()?;
    crate::host_memory::return_freed_memory_to_the_system();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("llmd-io")
        .build()
        .map_err(ServerError::Runtime)?;
    let result = runtime.block_on(async {
        let bound = match activated {
            Some(l) => listener::from_activated(l)?,
            None => {
                let path = resolve_socket_path(args.socket, &config.config);
                listener::bind(&path, config.config.socket_group.as_deref())?
            }
        };
        let state = State::new(bound.path.clone(), config);
        run(bound, state, Reloader::new(source, Some(log))).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Accepts and serves connections on `bound` until SIGTERM or SIGINT, then shuts down
/// gracefully and removes the socket file.
pub async fn run(
    bound: BoundSocket,
    state: Arc<State>,
    reloader: Reloader,
) -> Result<(), ServerError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Runtime)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServerError::Runtime)?;
    let trigger = ShutdownTrigger::new();
    let admission = Admission::new();
    let frames = Arc::new(FrameBudget::default());
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let (ping_tx, mut ping_rx) = mpsc::channel::<oneshot::Sender<()>>(1);
    let watchdog = notify::watchdog_timeout().map(|t| {
        tracing::info!("systemd watchdog enabled: timeout {t:?}");
        tokio::spawn(watchdog_task(t / 2, ping_tx))
    });
    let status = tokio::spawn(status_task(state.clone()));

    tracing::info!(
        "llmd {} listening on {} (protocol {}{})",
        llmd_shared::PACKAGE_VERSION,
        bound.path.display(),
        llmd_shared::PROTOCOL_VERSION,
        if bound.is_activated() {
            ", socket activation"
        } else {
            ""
        }
    );
    access::log_policy(state.config().config.access.as_ref());
    if let Some(http) = state.config().config.http.clone() {
        crate::http::start(&http, Arc::clone(&state), || trigger.subscribe()).await?;
    }
    notify::ready(&state.status_line());
    // After READY: declared models load in the background while the socket serves.
    declared::spawn_reconcile(&state);
    let keep_alive = tokio::spawn(declared::keep_alive(state.clone()));

    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM received: shutting down");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT received: shutting down");
                break;
            }
            _ = sighup.recv() => reloader.reload(&state),
            Some(pong) = ping_rx.recv() => {
                let _ = pong.send(());
            }
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let peer = Peer::of(&stream);
                    match admission.admit(peer.uid, stream.as_raw_fd()) {
                        Admit::Admitted { ticket, evicted } => {
                            if let Some(uid) = evicted {
                                tracing::debug!(
                                    uid = peer.uid,
                                    evicted_uid = uid,
                                    "connection limit reached: closed the oldest idle connection \
                                     to make room"
                                );
                            }
                            let (shutdown, guard) = trigger.subscribe();
                            let state = state.clone();
                            let limits = connection::Limits {
                                ticket,
                                frames: Arc::clone(&frames),
                            };
                            tokio::spawn(async move {
                                connection::serve(stream, peer, state, shutdown, limits).await;
                                drop(guard);
                            });
                        }
                        Admit::Refused(reason) => {
                            tracing::warn!(uid = peer.uid, pid = peer.pid, "refusing a connection: {reason}");
                            if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
                                tokio::spawn(async move {
                                    refuse(stream, reason).await;
                                    drop(permit);
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }

    notify::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    bound.remove_file();
    drop(bound);
    if !trigger.shutdown(SHUTDOWN_GRACE).await {
        tracing::warn!(
            "connections still open after {SHUTDOWN_GRACE:?}; closing them and exiting anyway"
        );
    }
    status.abort();
    keep_alive.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Tells a client that could not be admitted why, in the handshake's own terms (a rejection
/// naming the daemon's protocol version, which llmctl tells apart from a version mismatch),
/// then closes the connection. Bounded by [`REFUSAL_TIMEOUT`].
async fn refuse(mut stream: UnixStream, reason: String) {
    let exchange = async {
        let _: Hello = read_frame_with_limit(&mut stream, MAX_HELLO_BYTES).await?;
        let reply = HelloReply::Rejected {
            protocol_version: PROTOCOL_VERSION,
            server_version: PACKAGE_VERSION.to_string(),
            message: format!("llmd refused the connection: {reason}"),
        };
        write_frame(&mut stream, &reply).await
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, exchange).await;
}

/// Sends `WATCHDOG=1` every `interval`, but only after the accept loop answered a ping: a
/// wedged loop stops the pings and lets systemd restart the daemon.
async fn watchdog_task(interval: Duration, pings: mpsc::Sender<oneshot::Sender<()>>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (tx, rx) = oneshot::channel();
        if pings.send(tx).await.is_err() {
            return;
        }
        match tokio::time::timeout(interval / 2, rx).await {
            Ok(Ok(())) => notify::watchdog(),
            _ => tracing::warn!("request loop did not answer within {:?}", interval / 2),
        }
    }
}

/// Keeps systemd's `STATUS=` line current as models and requests come and go.
async fn status_task(state: Arc<State>) {
    let mut last = state.status_line();
    loop {
        state.changed.notified().await;
        tokio::time::sleep(STATUS_DEBOUNCE).await;
        let line = state.status_line();
        if line != last {
            notify::status(&line);
            last = line;
        }
    }
}
