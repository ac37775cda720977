//! One client connection: the handshake, then requests answered one at a time, each with its
//! stream of events and its final reply.
//!
//! Every read from the client is bounded in time ([`HANDSHAKE_TIMEOUT`], [`IDLE_TIMEOUT`],
//! [`FRAME_TIMEOUT`]) and size (the handshake limit, then [`MAX_FRAME_BYTES`]), and every write
//! by [`WRITE_TIMEOUT`], so an idle, slow or hostile client cannot pin a connection slot forever.
//! A malformed frame gets a `bad_request` error reply (when the handshake is done) and the
//! connection is closed: after a framing error the stream cannot be resynchronised.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_shared::async_io::{read_frame_with_limit, read_header, read_payload, write_frame};
use llmd_shared::handshake::MAX_HELLO_BYTES;
use llmd_shared::{
    ErrorCode, ErrorReply, FrameError, Hello, HelloReply, Request, Response, MAX_FRAME_BYTES,
};
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::handler::{self, Context, Peer};
use crate::shutdown::Shutdown;
use crate::state::State;

/// How long a new client has to send its complete `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may sit idle between requests before the daemon closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the rest of a request frame may take once its first byte arrived.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one reply frame may take to write (a client that stops reading is dropped).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Events a handler may queue before it has to wait for the client to read them.
const EVENT_QUEUE: usize = 64;

/// Why a connection ended early. Only logged: the client is gone or misbehaving.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("timed out {0}")]
    Timeout(&'static str),
}

/// Serves one client until it disconnects, misbehaves, idles out or the daemon shuts down.
pub async fn serve(mut stream: UnixStream, state: Arc<State>, mut shutdown: Shutdown) {
    let _connection = state.track_connection();
    let peer = Peer::of(&stream);
    match run(&mut stream, &state, &peer, &mut shutdown).await {
        Ok(()) => tracing::debug!(uid = peer.uid, pid = peer.pid, "connection closed"),
        Err(ConnectionError::Frame(e)) if e.is_disconnect() => {
            tracing::debug!(uid = peer.uid, pid = peer.pid, "client went away: {e}")
        }
        Err(e) => tracing::info!(uid = peer.uid, pid = peer.pid, "dropping connection: {e}"),
    }
}

/// Waits for `fut` (a read from the client), bounded by `limit`; `None` if the daemon starts
/// shutting down first (the read is abandoned and the connection closed).
async fn client_read<T>(
    shutdown: &mut Shutdown,
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, FrameError>>,
) -> Result<Option<T>, ConnectionError> {
    tokio::select! {
        r = tokio::time::timeout(limit, fut) => match r {
            Err(_) => Err(ConnectionError::Timeout(what)),
            Ok(r) => r.map(Some).map_err(ConnectionError::from),
        },
        _ = shutdown.recv() => Ok(None),
    }
}

async fn run(
    stream: &mut UnixStream,
    state: &Arc<State>,
    peer: &Peer,
    shutdown: &mut Shutdown,
) -> Result<(), ConnectionError> {
    if !handshake(stream, peer, shutdown).await? {
        return Ok(());
    }
    loop {
        let header = match client_read(
            shutdown,
            IDLE_TIMEOUT,
            "waiting for a request",
            read_header(stream),
        )
        .await
        {
            Ok(Some(h)) => h,
            Ok(None) | Err(ConnectionError::Frame(FrameError::Closed)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let payload = read_payload(stream, header, MAX_FRAME_BYTES);
        let request = match client_read(shutdown, FRAME_TIMEOUT, "reading a request", payload).await
        {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(ConnectionError::Frame(e)) if e.is_protocol_error() => {
                let reply = ErrorReply::new(ErrorCode::BadRequest, format!("bad request: {e}"));
                send(stream, &Response::Error(reply)).await?;
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        answer(stream, state, peer, shutdown, request).await?;
        if shutdown.is_shutdown() {
            return Ok(());
        }
    }
}

/// Reads the client's `Hello` and answers it. Returns whether requests may follow.
async fn handshake(
    stream: &mut UnixStream,
    peer: &Peer,
    shutdown: &mut Shutdown,
) -> Result<bool, ConnectionError> {
    let hello = read_frame_with_limit::<_, Hello>(stream, MAX_HELLO_BYTES);
    let Some(hello) = client_read(
        shutdown,
        HANDSHAKE_TIMEOUT,
        "waiting for the handshake",
        hello,
    )
    .await?
    else {
        return Ok(false);
    };
    let reply = HelloReply::for_hello(&hello);
    let accepted = matches!(reply, HelloReply::Accepted { .. });
    if !accepted {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            client_version = %hello.client_version,
            client_protocol = hello.protocol_version,
            "refusing client of another protocol version"
        );
    }
    send(stream, &reply).await?;
    Ok(accepted)
}

/// Runs one request: forwards its events, then sends its final reply (or `shutting_down` if the
/// daemon stops first).
async fn answer(
    stream: &mut UnixStream,
    state: &Arc<State>,
    peer: &Peer,
    shutdown: &mut Shutdown,
    request: Request,
) -> Result<(), ConnectionError> {
    let name = request.name();
    tracing::info!(uid = peer.uid, pid = peer.pid, request = name, "request");
    let started = Instant::now();
    let _running = state.track_request();
    let (events_tx, mut events_rx) = mpsc::channel(EVENT_QUEUE);
    let ctx = Context::new(state.clone(), peer.clone(), events_tx);
    let handler = handler::dispatch(request, ctx);
    tokio::pin!(handler);
    let outcome = loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => {
                break Err(ErrorReply::new(
                    ErrorCode::ShuttingDown,
                    "llmd is shutting down; the request was not completed",
                ));
            }
            result = &mut handler => {
                // Events queued just before the handler finished still go out, in order.
                while let Ok(event) = events_rx.try_recv() {
                    send(stream, &Response::Event(event)).await?;
                }
                break result;
            }
            Some(event) = events_rx.recv() => send(stream, &Response::Event(event)).await?,
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let response = match outcome {
        Ok(reply) => {
            tracing::debug!(
                uid = peer.uid,
                pid = peer.pid,
                request = name,
                elapsed_ms,
                "ok"
            );
            Response::Reply(reply)
        }
        Err(err) => {
            tracing::info!(
                uid = peer.uid,
                pid = peer.pid,
                request = name,
                elapsed_ms,
                code = %err.code,
                "request failed: {}",
                err.message
            );
            Response::Error(err)
        }
    };
    send(stream, &response).await
}

async fn send<T: Serialize>(stream: &mut UnixStream, msg: &T) -> Result<(), ConnectionError> {
    tokio::time::timeout(WRITE_TIMEOUT, write_frame(stream, msg))
        .await
        .map_err(|_| ConnectionError::Timeout("writing a reply"))?
        .map_err(ConnectionError::from)
}
