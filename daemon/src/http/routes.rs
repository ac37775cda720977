//! `GET /v1/models` (the resident models and the declared ones, OpenAI's list shape), `GET /health` (200 with every
//! model's state while the daemon serves) and `GET /metrics` (the Prometheus text, the same as
//! `llmctl metrics`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::ApiState;

/// `GET /v1/models`.
pub async fn models(State(api): State<Arc<ApiState>>) -> Json<Value> {
    // When the daemon started, as Unix seconds (the models' creation time is not tracked).
    let started = SystemTime::now()
        .checked_sub(api.state.started.elapsed())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let runtime = &api.state.runtime;
    // The resident models, then the declared ones not resident now (an on-demand model is
    // loaded by its first request, so clients must see it to ask for it).
    let mut names: Vec<String> = runtime
        .models()
        .all()
        .iter()
        .map(|m| m.name.clone())
        .collect();
    for entry in runtime.declared.snapshot() {
        if !names.contains(&entry.decl.name) {
            names.push(entry.decl.name);
        }
    }
    let data: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": started,
                "owned_by": "llmd",
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /metrics`.
pub async fn metrics(State(api): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        api.state.metrics_text(),
    )
}

/// `GET /health`.
pub async fn health(State(api): State<Arc<ApiState>>) -> Json<Value> {
    let models: Vec<Value> = api
        .state
        .runtime
        .models()
        .all()
        .iter()
        .map(|m| match m.failure() {
            Some(why) => json!({"name": m.name, "state": "failed", "reason": why}),
            None => json!({
                "name": m.name,
                "state": "serving",
                "running": m.running.load(std::sync::atomic::Ordering::SeqCst),
            }),
        })
        .collect();
    Json(json!({"status": "ok", "models": models}))
}
