//! The runtime's error: what went wrong in a model operation, as a kind each front end maps to
//! its own wire form (the socket's `ErrorReply` codes in `server::wire`, HTTP status codes and
//! OpenAI error types in `http::error`), and a message complete enough to act on.

/// What kind of failure a [`RuntimeError`] is; each front end chooses its status from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request's values are invalid (a bad name, a context of 0, a malformed prompt).
    BadRequest,
    /// A named model or device does not exist.
    NotFound,
    /// A model of that name is already resident.
    AlreadyExists,
    /// The operation waited its bounded time for another (a placement, a template render).
    Busy,
    /// The model does not fit in the memory of the chosen devices.
    DoesNotFit,
    /// Valid, but not supported by this model, file or device.
    Unsupported,
    /// Reading a model file failed.
    Io,
    /// Work took longer than its limit (a chat template render).
    Timeout,
    /// The client went away, so the operation stopped.
    Cancelled,
    /// A bug, a stopped worker or a failed model.
    Internal,
}

/// A model operation's failure: its kind and a plain-language message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// How front ends classify it.
    pub kind: ErrorKind,
    /// What happened and, where there is one, what to do about it.
    pub message: String,
    /// For [`ErrorKind::DoesNotFit`]: the bytes the devices lack, where known, so the caller
    /// can free that much (retained prefix caches) and try again.
    pub short_bytes: Option<u64>,
}

impl RuntimeError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RuntimeError {
            kind,
            message: message.into(),
            short_bytes: None,
        }
    }

    /// The same error, saying the devices lack `bytes` (see [`RuntimeError::short_bytes`]).
    pub fn short_by(mut self, bytes: u64) -> Self {
        self.short_bytes = Some(bytes);
        self
    }
}
