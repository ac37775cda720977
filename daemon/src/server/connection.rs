//! One client connection: the handshake, then requests answered one at a time, each with its
//! stream of events and its final reply.
//!
//! Every read from the client is bounded in time ([`HANDSHAKE_TIMEOUT`], [`IDLE_TIMEOUT`],
//! [`FRAME_TIMEOUT`]) and size (the handshake limit, then [`MAX_FRAME_BYTES`]), and every write
//! by [`WRITE_TIMEOUT`], so an idle, slow or hostile client cannot pin a connection slot forever.
//! A frame larger than a few KiB first reserves its bytes from the daemon-wide
//! [`FrameBudget`] (refused `busy` when there is no room in time), so frames in flight cannot
//! take memory without bound. A malformed frame gets a `bad_request` error reply (when the
//! handshake is done) and the connection is closed: after a framing error the stream cannot be
//! resynchronised.
//!
//! Any wait on the client also ends when the daemon shuts down or when the connection is closed
//! to make room for a new one ([`Ticket::evicted`]; never while it runs a request). While a
//! request runs, a client that hangs up cancels it: the handler is dropped at once instead of
//! running (and holding its slot) until it finishes.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_shared::async_io::{read_frame_with_limit, read_header, read_payload_of_len, write_frame};
use llmd_shared::frame::payload_len;
use llmd_shared::handshake::MAX_HELLO_BYTES;
use llmd_shared::{
    ErrorCode, ErrorReply, Event, FrameError, Hello, HelloReply, Reply, Request, Response,
    MAX_FRAME_BYTES,
};
use serde::Serialize;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::admission::Ticket;
use super::frame_budget::{FrameBudget, MAX_FRAME_BYTES_IN_FLIGHT};
use super::handler::{self, Context};
use super::peek::peek_one;
use super::peer::Peer;
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
    #[error("closed to make room for a new connection")]
    Evicted,
    #[error("no room for a {0}-byte request among the frames in flight")]
    NoRoom(usize),
    #[error("the client hung up while its request ran; the request was cancelled")]
    HungUp,
}

/// What a connection owns besides its stream: its slot and the daemon's shared limits.
pub struct Limits {
    /// Its slot in the connection table.
    pub ticket: Ticket,
    /// The budget of bytes large frames may hold.
    pub frames: Arc<FrameBudget>,
}

/// Serves one client (whose credentials the accept loop read as `peer`) until it disconnects,
/// misbehaves, idles out, is closed to make room, or the daemon shuts down.
pub async fn serve(
    mut stream: UnixStream,
    peer: Peer,
    state: Arc<State>,
    mut shutdown: Shutdown,
    limits: Limits,
) {
    let _connection = state.track_connection();
    let mut stop = Stop {
        shutdown: &mut shutdown,
        ticket: &limits.ticket,
    };
    match run(&mut stream, &state, &peer, &mut stop, &limits.frames).await {
        Ok(()) => tracing::debug!(uid = peer.uid, pid = peer.pid, "connection closed"),
        Err(ConnectionError::Frame(e)) if e.is_disconnect() => {
            tracing::debug!(uid = peer.uid, pid = peer.pid, "client went away: {e}")
        }
        Err(e) => tracing::info!(uid = peer.uid, pid = peer.pid, "dropping connection: {e}"),
    }
    // The slot goes before the socket closes: the table may look at the socket while it holds
    // the slot (`Admission`), and the descriptor must still be this connection's then.
    drop(limits);
    drop(stream);
}

/// What ends a wait on the client besides the client itself.
struct Stop<'a> {
    /// The daemon is shutting down.
    shutdown: &'a mut Shutdown,
    /// The connection was closed to make room.
    ticket: &'a Ticket,
}

impl Stop<'_> {
    /// Waits for `fut`, bounded by `limit`; `None` if the daemon starts shutting down first,
    /// [`ConnectionError::Evicted`] if the connection is closed to make room first.
    async fn wait<T>(
        &mut self,
        limit: Duration,
        what: &'static str,
        fut: impl Future<Output = Result<T, ConnectionError>>,
    ) -> Result<Option<T>, ConnectionError> {
        tokio::select! {
            r = tokio::time::timeout(limit, fut) => match r {
                Err(_) => Err(ConnectionError::Timeout(what)),
                Ok(r) => r.map(Some),
            },
            _ = self.shutdown.recv() => Ok(None),
            _ = self.ticket.evicted() => Err(ConnectionError::Evicted),
        }
    }

    /// [`Stop::wait`] for a read from the client.
    async fn read<T>(
        &mut self,
        limit: Duration,
        what: &'static str,
        fut: impl Future<Output = Result<T, FrameError>>,
    ) -> Result<Option<T>, ConnectionError> {
        self.wait(limit, what, async {
            fut.await.map_err(ConnectionError::from)
        })
        .await
    }
}

async fn run(
    stream: &mut UnixStream,
    state: &Arc<State>,
    peer: &Peer,
    stop: &mut Stop<'_>,
    frames: &FrameBudget,
) -> Result<(), ConnectionError> {
    if !handshake(stream, peer, stop).await? {
        return Ok(());
    }
    loop {
        let header = match stop
            .read(IDLE_TIMEOUT, "waiting for a request", read_header(stream))
            .await
        {
            Ok(Some(h)) => h,
            Ok(None) | Err(ConnectionError::Frame(FrameError::Closed)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let len = match payload_len(header, MAX_FRAME_BYTES) {
            Ok(len) => len,
            Err(e) => {
                return refuse(
                    stream,
                    ErrorCode::BadRequest,
                    format!("bad request: {e}"),
                    e.into(),
                )
                .await
            }
        };
        // A client that hangs up while its frame waits for room gives the wait up.
        let reserve = async {
            tokio::select! {
                r = frames.reserve(len) => Ok(r),
                _ = hung_up(stream) => Err(ConnectionError::HungUp),
            }
        };
        let Some(reservation) = stop
            .wait(FRAME_TIMEOUT, "waiting for room", reserve)
            .await?
        else {
            return Ok(());
        };
        let Some(_reservation) = reservation else {
            let message = format!(
                "llmd is busy receiving other large requests ({} MiB at most in flight); retry \
                 in a moment",
                MAX_FRAME_BYTES_IN_FLIGHT >> 20
            );
            return refuse(
                stream,
                ErrorCode::Busy,
                message,
                ConnectionError::NoRoom(len),
            )
            .await;
        };
        let request = match stop
            .read(
                FRAME_TIMEOUT,
                "reading a request",
                read_payload_of_len(stream, len),
            )
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(ConnectionError::Frame(e)) if e.is_protocol_error() => {
                return refuse(
                    stream,
                    ErrorCode::BadRequest,
                    format!("bad request: {e}"),
                    e.into(),
                )
                .await
            }
            Err(e) => return Err(e),
        };
        if !stop.ticket.set_busy(true) {
            return Err(ConnectionError::Evicted);
        }
        answer(stream, state, peer, stop.shutdown, request).await?;
        stop.ticket.set_busy(false);
        if stop.shutdown.is_shutdown() {
            return Ok(());
        }
    }
}

/// Sends a final error reply (a request that cannot be read or served), then ends the
/// connection with `why`.
async fn refuse(
    stream: &mut UnixStream,
    code: ErrorCode,
    message: String,
    why: ConnectionError,
) -> Result<(), ConnectionError> {
    send(stream, &Response::Error(ErrorReply::new(code, message))).await?;
    Err(why)
}

/// Reads the client's `Hello` and answers it. Returns whether requests may follow.
async fn handshake(
    stream: &mut UnixStream,
    peer: &Peer,
    stop: &mut Stop<'_>,
) -> Result<bool, ConnectionError> {
    let hello = read_frame_with_limit::<_, Hello>(stream, MAX_HELLO_BYTES);
    let Some(hello) = stop
        .read(HANDSHAKE_TIMEOUT, "waiting for the handshake", hello)
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
/// daemon stops first). If the client hangs up meanwhile, the request is cancelled.
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
    let (reader, mut writer) = stream.split();
    let outcome = drive(
        &mut writer,
        shutdown,
        handler::dispatch(request, ctx),
        events_rx,
        hung_up(reader.as_ref()),
    )
    .await;
    let outcome = match outcome {
        Err(ConnectionError::HungUp) => {
            tracing::info!(
                uid = peer.uid,
                pid = peer.pid,
                request = name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "client hung up; request cancelled"
            );
            return Err(ConnectionError::HungUp);
        }
        other => other?,
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
    send(&mut writer, &response).await
}

/// Completes when the client has closed its end of the connection (end of stream, or a reset).
/// Bytes sent ahead of the reply are not a hang-up: they are left (unread) for the next
/// request, and the watch ends there (it would otherwise wake at once again and again).
async fn hung_up(stream: &UnixStream) {
    loop {
        match stream.ready(Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() => return,
            Err(_) => return,
            Ok(_) => {}
        }
        // Readable: an end of stream, bytes sent ahead, or a stale readiness (the request's
        // last read did not drain the socket to "would block"). A peek tells them apart
        // without taking anything; "would block" clears the stale readiness.
        match stream.try_io(Interest::READABLE, || peek_one(stream.as_raw_fd())) {
            Ok(0) => return,
            Ok(_) => return std::future::pending().await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Polls a handler to completion while writing the events it queues, in order; if shutdown
/// begins first, the handler is dropped (cancelled) and the outcome is a `shutting_down` error;
/// if `hung_up` completes first, the handler is dropped and the result is
/// [`ConnectionError::HungUp`]. Only frames are written here; the final reply is the caller's.
async fn drive<W, F>(
    stream: &mut W,
    shutdown: &mut Shutdown,
    handler: F,
    mut events: mpsc::Receiver<Event>,
    hung_up: impl Future<Output = ()>,
) -> Result<Result<Reply, ErrorReply>, ConnectionError>
where
    W: AsyncWrite + Unpin,
    F: Future<Output = Result<Reply, ErrorReply>>,
{
    tokio::pin!(handler);
    tokio::pin!(hung_up);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => {
                return Ok(Err(ErrorReply::new(
                    ErrorCode::ShuttingDown,
                    "llmd is shutting down; the request was not completed",
                )));
            }
            _ = &mut hung_up => return Err(ConnectionError::HungUp),
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
        let outcome = drive(
            &mut ours,
            &mut shutdown,
            handler,
            rx,
            std::future::pending(),
        )
        .await
        .unwrap();
        assert!(matches!(outcome, Ok(Reply::Version(_))));
        for id in 0..5 {
            assert_eq!(next(&mut client).await, Response::Event(token(id)));
        }
    }

    /// Issue 14: a client killed while its request runs must not keep the request (and its
    /// slot, or a lock the handler holds) alive until it finishes.
    #[tokio::test]
    async fn a_client_hanging_up_cancels_its_request() {
        struct DropFlag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for DropFlag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let trigger = ShutdownTrigger::new();
        let (mut shutdown, _guard) = trigger.subscribe();
        let (mut ours, _client) = tokio::io::duplex(1 << 16);
        let (_tx, rx) = mpsc::channel(EVENT_QUEUE);
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let handler = async move {
            let _flag = flag;
            std::future::pending::<Result<Reply, ErrorReply>>().await
        };
        let hung_up = tokio::time::sleep(Duration::from_millis(10));
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            drive(&mut ours, &mut shutdown, handler, rx, hung_up),
        )
        .await
        .expect("drive returns once the client hangs up");
        assert!(matches!(out, Err(ConnectionError::HungUp)), "{out:?}");
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
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
            let out = drive(
                &mut ours,
                &mut shutdown,
                handler,
                rx,
                std::future::pending(),
            )
            .await;
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
