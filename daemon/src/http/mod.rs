//! The OpenAI-compatible HTTP API: a second front end to the same [`Runtime`] as the Unix
//! socket, on the daemon's tokio runtime, when the config has an `[http]` section.
//!
//! - `error`: OpenAI-shaped errors (the `[http]` section is `crate::config::http`); `openai`: the request
//!   bodies and their translation into the runtime's checked request.
//! - `generate`: chat and text completions, whole or streamed; `routes`: models, health and
//!   metrics (the same text as `llmctl metrics`).
//!
//! Every answer is counted in the daemon's metrics by route and status.
//!
//! Every route but `/health` needs the API key when one is configured. At most
//! `max_concurrent_requests` requests are served at once (a stream holds its slot until it
//! ends); more get 429. Bodies over `max_body_bytes` get 413.
//!
//! [`Runtime`]: crate::runtime::Runtime

mod error;
mod generate;
pub mod openai;
mod routes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State as AxumState};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{HttpConfig, HttpConfigError};
use error::ApiError;

use crate::shutdown::{Shutdown, ShutdownGuard};
use crate::state::State;

/// What every HTTP handler shares.
pub struct ApiState {
    /// The daemon's state (its runtime above all).
    pub state: Arc<State>,
    /// The Bearer key required, if any.
    api_key: Option<String>,
    /// Request slots (`max_concurrent_requests`).
    slots: Arc<Semaphore>,
    /// How many slots there are, for the 429 message.
    max_requests: usize,
    /// The body limit, for the 413 message.
    max_body_bytes: usize,
    /// Numbers completion ids.
    ids: AtomicU64,
}

impl ApiState {
    /// A fresh number for a completion id.
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// A request's slot, held until its answer (a whole stream) is sent.
#[derive(Clone)]
pub struct RequestSlot {
    /// The semaphore permit, released when the last clone drops; shared because request
    /// extensions must be `Clone`.
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Why the HTTP API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The `[http]` section is unusable.
    #[error(transparent)]
    Config(#[from] HttpConfigError),
    /// An address could not be bound.
    #[error("HTTP API: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The router with its middleware.
pub fn router(api: Arc<ApiState>, max_body_bytes: usize) -> Router {
    let guarded = Router::new()
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/metrics", get(routes::metrics))
        .layer(middleware::from_fn_with_state(Arc::clone(&api), take_slot))
        .layer(middleware::from_fn_with_state(Arc::clone(&api), check_key));
    Router::new()
        .route("/health", get(routes::health))
        .merge(guarded)
        .fallback(|req: Request| async move { ApiError::no_route(req.uri().path()) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(Arc::clone(&api), count))
        .with_state(api)
}

/// Binds every address of `config` and serves the API on each until the shutdown that
/// `subscribe` hands out (each server holds its guard until its connections end); returns the
/// bound addresses (port 0 resolved) after logging them.
pub async fn start(
    config: &HttpConfig,
    state: Arc<State>,
    subscribe: impl Fn() -> (Shutdown, ShutdownGuard),
) -> Result<Vec<SocketAddr>, HttpError> {
    let api_key = config.api_key()?;
    let api = Arc::new(ApiState {
        state,
        api_key: api_key.clone(),
        slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        max_requests: config.max_concurrent_requests,
        max_body_bytes: config.max_body_bytes,
        ids: AtomicU64::new(0),
    });
    let app = router(api, config.max_body_bytes);
    let mut bound = Vec::new();
    for &addr in &config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        tracing::info!(
            "HTTP API listening on http://{local}{}",
            if api_key.is_some() {
                " (API key required)"
            } else {
                ""
            }
        );
        let (mut stop, guard) = subscribe();
        let app = app.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.recv().await })
                .await;
            if let Err(e) = served {
                tracing::error!("HTTP API on {local} stopped: {e}");
            }
        });
        bound.push(local);
    }
    Ok(bound)
}

/// The routes counted by name; anything else counts as "other" (so that scans of random paths
/// cannot grow the metrics without bound).
const ROUTES: [&str; 5] = [
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/health",
    "/metrics",
];

/// Counts the request by route and status once answered (a stream when its headers go out).
async fn count(AxumState(api): AxumState<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let route = ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other");
    let response = next.run(req).await;
    api.state
        .metrics
        .request("http", route, response.status().as_str());
    response
}

/// Refuses a request without the configured key (401).
async fn check_key(AxumState(api): AxumState<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &api.api_key {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_key(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares keys in time independent of where they differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Takes a request slot for the request (429 when none is free) and hands it to the handler.
async fn take_slot(
    AxumState(api): AxumState<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match Arc::clone(&api.slots).try_acquire_owned() {
        Ok(permit) => {
            req.extensions_mut().insert(RequestSlot {
                _permit: Arc::new(permit),
            });
            next.run(req).await
        }
        Err(_) => ApiError::full(api.max_requests).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"abc", b"abc"));
        assert!(!same_key(b"abc", b"abd"));
        assert!(!same_key(b"ab", b"abc"));
        assert!(!same_key(b"", b"a"));
    }
}
