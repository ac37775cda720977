//! The messages exchanged after the handshake.
//!
//! - [`Request`]: what a client asks; one variant per command, each wrapping its own struct from
//!   its own file (`status.rs`, `version.rs`, ...). Adding a request = a new file here with its
//!   request and reply structs, a variant in [`Request`] and [`Reply`], a handler file in the
//!   daemon and a command file in `llmctl`; then bump [`crate::PROTOCOL_VERSION`].
//! - [`Response`]: what the daemon sends back, one frame each. For every request: zero or more
//!   [`Response::Event`]s (progress, tokens), then exactly one final [`Response::Reply`] or
//!   [`Response::Error`]. Requests on one connection are answered in order, one at a time.
//!
//! Field names are part of the interface: `llmctl --json` prints these structs with serde_json,
//! so renaming a field breaks scripts. Keep the serde attributes to those bincode supports
//! (`rename`, `rename_all`; no `tag`, `flatten`, `skip_serializing_if` or `untagged`).

mod cache;
mod doctor;
mod generate;
pub mod gpu;
pub mod health;
mod inspect;
mod models;
mod plan;
mod status;
mod version;

use serde::{Deserialize, Serialize};

pub use cache::KvCacheType;
pub use doctor::{DoctorRequest, MetricsReply, MetricsRequest};
pub use generate::{
    BenchReply, BenchRequest, ChatMessage, GenerateReply, GenerateRequest, Prompt, Sampling,
    TokenPiece, TokenizeReply, TokenizeRequest, MAX_CHAT_MESSAGES, MAX_PRESENCE_PENALTY,
    MAX_STOP_BYTES, MAX_STOP_STRINGS, MAX_TOKENIZE_BYTES, MAX_TOKENS_LIMIT,
};
pub use inspect::{InspectReport, InspectRequest, TokenizerSummary, TypeStats};
pub use models::{
    ListReply, ListRequest, LoadReply, LoadRequest, ModelDetails, StagePlacement, UnloadReply,
    UnloadRequest,
};
pub use plan::{
    PlanReply, PlanRequest, PlannedDevice, PlannedExperts, PlannedStage, ResplitReply,
    ResplitRequest,
};
pub use status::{
    CudaPeer, CudaStatus, DaemonMemory, DeclaredModel, DeclaredState, DeviceInfo, DeviceKind,
    HostMemory, ModelInfo, PrefixCacheUsage, StatusReply, StatusRequest,
};
pub use version::{VersionReply, VersionRequest};

/// A client request. New variants go at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Daemon state: version, uptime, devices, resident models.
    Status(StatusRequest),
    /// Daemon and protocol versions.
    Version(VersionRequest),
    /// Make a model resident.
    Load(LoadRequest),
    /// Free a resident model.
    Unload(UnloadRequest),
    /// List resident models with their placement.
    List(ListRequest),
    /// Generate text.
    Generate(GenerateRequest),
    /// Tokenize text.
    Tokenize(TokenizeRequest),
    /// Measure speed.
    Bench(BenchRequest),
    /// Plan a model's placement without loading it.
    Plan(PlanRequest),
    /// Change a loaded model's split live.
    Resplit(ResplitRequest),
    /// Describe a GGUF file from its header.
    Inspect(InspectRequest),
    /// Check the box's health: NVML, PCIe links, PSU budget, splits, NVLink, P2P, thermals.
    Doctor(DoctorRequest),
    /// GPU telemetry and power budget in the Prometheus text format.
    Metrics(MetricsRequest),
}

impl Request {
    /// Short lowercase name of the request, for logs.
    pub fn name(&self) -> &'static str {
        match self {
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
}

/// The final, successful answer to a request; its variant matches the request's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Answer to [`Request::Status`] (boxed: it carries the whole GPU telemetry).
    Status(Box<StatusReply>),
    /// Answer to [`Request::Version`].
    Version(VersionReply),
    /// Answer to [`Request::Load`].
    Load(LoadReply),
    /// Answer to [`Request::Unload`].
    Unload(UnloadReply),
    /// Answer to [`Request::List`].
    List(ListReply),
    /// Answer to [`Request::Generate`].
    Generate(GenerateReply),
    /// Answer to [`Request::Tokenize`].
    Tokenize(TokenizeReply),
    /// Answer to [`Request::Bench`].
    Bench(BenchReply),
    /// Answer to [`Request::Plan`].
    Plan(PlanReply),
    /// Answer to [`Request::Resplit`].
    Resplit(ResplitReply),
    /// Answer to [`Request::Inspect`].
    Inspect(Box<InspectReport>),
    /// Answer to [`Request::Doctor`].
    Doctor(health::DoctorReport),
    /// Answer to [`Request::Metrics`].
    Metrics(MetricsReply),
}

/// An intermediate message of a streaming reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Progress of a long operation (loading a model, running a benchmark).
    Progress(Progress),
    /// One generated token.
    Token(Token),
}

/// Progress of a long operation: `done` of `total` units of `what`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Units completed so far.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// What is being counted, e.g. "tensors" or "bytes".
    pub what: String,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Token id in the model's vocabulary.
    pub id: u32,
    /// Its text (may be empty for a token that completes only with the next one).
    pub text: String,
}

/// One frame sent by the daemon after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// An intermediate event; more frames follow for the same request.
    Event(Event),
    /// The final successful result of the request.
    Reply(Reply),
    /// The final failure of the request.
    Error(ErrorReply),
}

impl Response {
    /// True for the frame that ends a request's reply stream.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Event(_))
    }
}

/// What kind of failure an [`ErrorReply`] reports; scripts may branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or its arguments are invalid.
    BadRequest,
    /// A named model, file or device does not exist.
    NotFound,
    /// The thing to create (e.g. a model under that name) already exists.
    AlreadyExists,
    /// The daemon or the resource is busy; retry later.
    Busy,
    /// The model does not fit in the memory budget of the chosen devices.
    DoesNotFit,
    /// Valid request, but not supported by this daemon, model or device.
    Unsupported,
    /// An I/O error on the daemon's side (reading a model file, ...).
    Io,
    /// A bug or unexpected condition in the daemon.
    Internal,
    /// The request was cancelled.
    Cancelled,
    /// The daemon is shutting down and will not finish this request.
    ShuttingDown,
    /// Client and daemon speak different protocol versions.
    VersionMismatch,
    /// The request took longer than allowed.
    Timeout,
    /// The client's user may not make this request (the daemon's `[access]` configuration).
    Forbidden,
}

impl ErrorCode {
    /// The snake_case name used in JSON output and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Busy => "busy",
            ErrorCode::DoesNotFit => "does_not_fit",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Io => "io",
            ErrorCode::Internal => "internal",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed failure: a machine-readable code and a message for humans (printed as is by llmctl).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Plain-language explanation, complete enough to act on.
    pub message: String,
}

impl ErrorReply {
    /// An error reply with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}
