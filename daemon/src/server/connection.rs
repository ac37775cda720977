//! One client connection: the handshake, then requests answered one at a time, each with its
//! stream of events and its final reply.
//!
//! Every read from the client is bounded in time ([`HANDSHAKE_TIMEOUT`], [`IDLE_TIMEOUT`],
//! [`FRAME_TIMEOUT`]) and size (the handshake limit, then [`MAX_FRAME_BYTES`]), and every write
//! by [`WRITE_TIMEOUT`], so an idle, slow or hostile client cannot pin a connection slot forever.
//! A malformed frame gets a `bad_request` error reply (when the handshake is done) and the
//! connection is closed: after a framing error the stream cannot be resynchronised.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_shared::async_io::{read_frame_with_limit, read_header, read_payload, write_frame};
use llmd_shared::handshake::MAX_HELLO_BYTES;
use llmd_shared::{
    ErrorCode, ErrorReply, Event, FrameError, Hello, HelloReply, Reply, Request, Response,
    MAX_FRAME_BYTES,
};
use serde::Serialize;
use tokio::io::AsyncWrite;
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
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let ctx = Context::new(state.clone(), peer.clone(), events_tx);
    let outcome = drive(stream, shutdown, handler::dispatch(request, ctx), events_rx).await?;
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

/// Polls a handler to completion while writing the events it queues, in order; if shutdown
/// begins first, the handler is dropped (cancelled) and the outcome is a `shutting_down` error.
/// Only frames are written here; the final reply is the caller's.
async fn drive<W, F>(
    stream: &mut W,
    shutdown: &mut Shutdown,
    handler: F,
    mut events: mpsc::Receiver<Event>,
) -> Result<Result<Reply, ErrorReply>, ConnectionError>
where
    W: AsyncWrite + Unpin,
    F: Future<Output = Result<Reply, ErrorReply>>,
{
    tokio::pin!(handler);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => {
                return Ok(Err(ErrorReply::new(
                    ErrorCode::ShuttingDown,
                    "llmd is shutting down; the request was not completed",
                )));
            }
            result = &mut handler => {
                // Events queued just before the handler finished still go out, in order.
                while let Ok(event) = events.try_recv() {
                    send(stream, &Response::Event(event)).await?;
                }
                return Ok(result);
            }
            Some(event) = events.recv() => send(stream, &Response::Event(event)).await?,
        }
    }
}

async fn send<W, T>(stream: &mut W, msg: &T) -> Result<(), ConnectionError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    tokio::time::timeout(WRITE_TIMEOUT, write_frame(stream, msg))
        .await
        .map_err(|_| ConnectionError::Timeout("writing a reply"))?
        .map_err(ConnectionError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::ShutdownTrigger;
    use llmd_shared::async_io::read_frame;
    use llmd_shared::{Token, VersionReply};

    fn token(id: u32) -> Event {
        Event::Token(Token {
            id,
            text: format!("t{id}"),
        })
    }

    async fn next(r: &mut tokio::io::DuplexStream) -> Response {
        read_frame(r).await.expect("frame")
    }

    #[tokio::test]
    async fn events_go_out_in_order_before_the_outcome() {
        let trigger = ShutdownTrigger::new();
        let (mut shutdown, _guard) = trigger.subscribe();
        let (mut ours, mut client) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let handler = async move {
            for id in 0..5 {
                tx.send(token(id))
                    .await
                    .map_err(|_| ErrorReply::new(ErrorCode::Cancelled, "client gone"))?;
            }
            Ok(Reply::Version(VersionReply {
                daemon_version: "x".into(),
                protocol_version: 0,
            }))
        };
        let outcome = drive(&mut ours, &mut shutdown, handler, rx).await.unwrap();
        assert!(matches!(outcome, Ok(Reply::Version(_))));
        for id in 0..5 {
            assert_eq!(next(&mut client).await, Response::Event(token(id)));
        }
    }

    #[tokio::test]
    async fn a_running_request_is_answered_shutting_down() {
        let trigger = ShutdownTrigger::new();
        let (mut shutdown, guard) = trigger.subscribe();
        let (mut ours, mut client) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let handler = async move {
            let _ = tx.send(token(7)).await;
            std::future::pending::<Result<Reply, ErrorReply>>().await
        };
        let task = tokio::spawn(async move {
            let out = drive(&mut ours, &mut shutdown, handler, rx).await;
            drop(guard);
            out
        });
        // The event arrives while the handler is still running...
        assert_eq!(next(&mut client).await, Response::Event(token(7)));
        // ...and shutdown ends it with `shutting_down`, within the grace period.
        assert!(trigger.shutdown(Duration::from_secs(5)).await);
        let outcome = task.await.unwrap().unwrap();
        let err = outcome.unwrap_err();
        assert_eq!(err.code, ErrorCode::ShuttingDown);
    }
}
