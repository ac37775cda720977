//! Request handlers: [`dispatch`] is the one `match` that hands each [`Request`] to its own file.
//!
//! A handler is an `async fn(RequestStruct, &Context) -> Result<ReplyStruct, ErrorReply>`. It
//! stays thin: it reads [`State`], sends any events through [`Context::event`], and hands heavy
//! work (loading, inference) to dedicated threads, awaiting their result. If the daemon shuts
//! down or the client disappears, the handler's future is dropped: long work must watch for that
//! (e.g. a cancellation flag set by a drop guard).

mod bench;
mod doctor;
mod generate;
mod inspect;
mod list;
mod load;
mod metrics;
mod plan;
mod resplit;
mod status;
mod tokenize;
mod unload;
mod version;

use std::sync::Arc;

use llmd_shared::{ErrorCode, ErrorReply, Event, Reply, Request};
use tokio::sync::mpsc;

use super::access;
use super::peer::Peer;
use crate::state::State;

/// What a handler gets besides its request.
pub struct Context {
    /// The daemon's shared state.
    pub state: Arc<State>,
    /// Who asked.
    pub peer: Peer,
    /// Events for the client, written by the connection in order before the final reply.
    events: mpsc::Sender<Event>,
}

impl Context {
    /// A context for one request.
    pub fn new(state: Arc<State>, peer: Peer, events: mpsc::Sender<Event>) -> Self {
        Context {
            state,
            peer,
            events,
        }
    }

    /// Sends an event to the client, waiting if the client reads slowly. Fails with `cancelled`
    /// if the connection is gone.
    pub async fn event(&self, event: Event) -> Result<(), ErrorReply> {
        self.events
            .send(event)
            .await
            .map_err(|_| ErrorReply::new(ErrorCode::Cancelled, "the client went away"))
    }
}

/// Runs the handler for `request`, once the client's user may make it (`server::access`).
pub async fn dispatch(request: Request, ctx: Context) -> Result<Reply, ErrorReply> {
    let route = route_of(&request);
    let state = Arc::clone(&ctx.state);
    let reply = run(request, ctx).await;
    let outcome = match &reply {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    state.metrics.request("socket", route, outcome);
    reply
}

/// The request's name, as metrics count it.
fn route_of(request: &Request) -> &'static str {
    match request {
        Request::Status(_) => "status",
        Request::Version(_) => "version",
        Request::Load(_) => "load",
        Request::Unload(_) => "unload",
        Request::List(_) => "list",
        Request::Generate(_) => "generate",
        Request::Tokenize(_) => "tokenize",
        Request::Bench(_) => "bench",
        Request::Plan(_) => "plan",
        Request::Resplit(_) => "resplit",
        Request::Inspect(_) => "inspect",
        Request::Doctor(_) => "doctor",
        Request::Metrics(_) => "metrics",
    }
}

/// Checks access and runs the request's handler.
async fn run(request: Request, ctx: Context) -> Result<Reply, ErrorReply> {
    if let Some(action) = access::managed_action(&request) {
        let config = ctx.state.config();
        if config.config.access.is_some() {
            let peer = ctx.peer.clone();
            tokio::task::spawn_blocking(move || {
                access::authorize(config.config.access.as_ref(), &peer, action)
            })
            .await
            .map_err(|e| {
                ErrorReply::new(ErrorCode::Internal, format!("the access check failed: {e}"))
            })??;
        }
    }
    match request {
        Request::Status(r) => status::handle(r, &ctx).await.map(Reply::Status),
        Request::Version(r) => version::handle(r, &ctx).await.map(Reply::Version),
        Request::Load(r) => load::handle(r, &ctx).await.map(Reply::Load),
        Request::Unload(r) => unload::handle(r, &ctx).await.map(Reply::Unload),
        Request::List(r) => list::handle(r, &ctx).await.map(Reply::List),
        Request::Generate(r) => generate::handle(r, &ctx).await.map(Reply::Generate),
        Request::Tokenize(r) => tokenize::handle(r, &ctx).await.map(Reply::Tokenize),
        Request::Bench(r) => bench::handle(r, &ctx).await.map(Reply::Bench),
        Request::Plan(r) => plan::handle(r, &ctx).await.map(Reply::Plan),
        Request::Resplit(r) => resplit::handle(r, &ctx).await.map(Reply::Resplit),
        Request::Inspect(r) => inspect::handle(r, &ctx).await.map(Reply::Inspect),
        Request::Doctor(r) => doctor::handle(r, &ctx).await.map(Reply::Doctor),
        Request::Metrics(r) => metrics::handle(r, &ctx).await.map(Reply::Metrics),
    }
}

/// Runs `work` while forwarding the load progress it sends to `rx` (`(stages done, stages)`)
/// to the client as `Event::Progress`, in order, the last ones before its result.
pub async fn with_progress<T>(
    ctx: &Context,
    mut rx: mpsc::UnboundedReceiver<(usize, usize)>,
    work: impl std::future::Future<Output = Result<T, ErrorReply>>,
) -> Result<T, ErrorReply> {
    let send = |(done, total): (usize, usize)| {
        ctx.event(Event::Progress(llmd_shared::Progress {
            done: done as u64,
            total: total as u64,
            what: "layers".into(),
        }))
    };
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => {
                while let Ok(p) = rx.try_recv() {
                    send(p).await?;
                }
                return result;
            }
            Some(p) = rx.recv() => send(p).await?,
        }
    }
}

/// The model `name` for a request that uses it (generate, chat, tokenize): the resident one,
/// or one the configuration declares on demand, loaded now with its progress sent to the client
/// (`runtime::acquire`).
pub async fn model_for_request(
    ctx: &Context,
    name: &str,
) -> Result<crate::runtime::InUse, ErrorReply> {
    let (tx, rx) = mpsc::unbounded_channel();
    let acquire = async {
        ctx.state
            .runtime
            .acquire(name, tx)
            .await
            .map_err(ErrorReply::from)
    };
    with_progress(ctx, rx, acquire).await
}

/// The resident model called `name`, or a `not_found` error.
pub fn model_named(ctx: &Context, name: &str) -> Result<crate::runtime::ResidentModel, ErrorReply> {
    Ok(ctx.state.runtime.model(name)?)
}
