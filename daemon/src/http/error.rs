//! Errors as OpenAI clients expect them: a status code and
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::runtime::{ErrorKind, RuntimeError};

/// An error answer of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's error `type` ("invalid_request_error", "authentication_error", ...).
    pub kind: &'static str,
    /// OpenAI's `code`, where one applies ("model_not_found", "invalid_api_key").
    pub code: Option<&'static str>,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// 400: the request is malformed or a value is out of range.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
        }
    }

    /// 401: no key, or the wrong one.
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            code: Some("invalid_api_key"),
            message: "a valid API key is required: send it as \"Authorization: Bearer KEY\"".into(),
        }
    }

    /// 404: no such route.
    pub fn no_route(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: None,
            message: format!("no route {path}"),
        }
    }

    /// 413: the body is over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: None,
            message: format!("the request body is larger than the {limit} bytes accepted"),
        }
    }

    /// 429: every request slot is taken.
    pub fn full(limit: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: Some("rate_limit_exceeded"),
            message: format!("the server is serving its limit of {limit} requests; retry later"),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let (status, kind, code) = match e.kind {
            ErrorKind::BadRequest | ErrorKind::Unsupported => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None)
            }
            ErrorKind::NotFound => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "invalid_request_error", None),
            ErrorKind::Busy | ErrorKind::DoesNotFit => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", None)
            }
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "server_error", None),
            ErrorKind::Io | ErrorKind::Cancelled | ErrorKind::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
            }
        };
        ApiError {
            status,
            kind,
            code,
            message: e.message,
        }
    }
}

impl ApiError {
    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
