//! The llmd wire protocol: the request and reply types that `llmd` and `llmctl` exchange over the
//! Unix socket, their framing (a 4-byte length prefix plus bincode 2) and the version handshake.
//!
//! Layout:
//! - [`frame`]: one message ⇄ one length-prefixed frame; [`FrameError`]; blocking `std::io` helpers.
//! - [`async_io`] (feature `tokio`): the same read/write helpers over tokio's `AsyncRead`/`AsyncWrite`.
//! - [`handshake`]: [`Hello`] / [`HelloReply`], the first exchange on every connection. Frozen: these
//!   two types never change, so that peers of different versions can always tell each other apart.
//! - [`api`]: [`Request`] (a struct per variant, one file per request), [`Response`] (a stream of
//!   zero or more [`Event`]s closed by exactly one [`Reply`] or [`ErrorReply`]).
//! - [`socket`]: where the daemon's socket lives when no path is given.
//! - [`render`]: human text of the GPU telemetry, power budget, model splits and doctor report,
//!   shared by `llmctl` and the daemon's tests.
//!
//! A conversation on one connection:
//!
//! ```text
//! client                                   daemon
//! Hello { protocol_version, .. }  ──────▶
//!                                 ◀──────  HelloReply::Accepted { .. }  (or ::Rejected, then close)
//! Request::Status(..)             ──────▶
//!                                 ◀──────  Response::Event(..)   (zero or more)
//!                                 ◀──────  Response::Reply(..) | Response::Error(..)  (exactly one)
//! Request::Version(..)            ──────▶  (any number of requests, one after another)
//!                                 ◀──────  ...
//! ```

pub mod api;
#[cfg(feature = "tokio")]
pub mod async_io;
pub mod frame;
pub mod handshake;
pub mod render;
pub mod socket;

#[cfg(test)]
mod protocol_tests;

pub use api::{
    BenchReply, BenchRequest, ChatMessage, CudaPeer, CudaStatus, DaemonMemory, DeclaredModel,
    DeclaredState, DeviceInfo, DeviceKind, DoctorRequest, ErrorCode, ErrorReply, Event,
    GenerateReply, GenerateRequest, HostMemory, InspectReport, InspectRequest, KvCacheType,
    ListReply, ListRequest, LoadReply, LoadRequest, MetricsReply, MetricsRequest, ModelDetails,
    ModelInfo, PlanReply, PlanRequest, PlannedDevice, PlannedExperts, PlannedStage,
    PrefixCacheUsage, Progress, Prompt, Reply, Request, ResplitReply, ResplitRequest, Response,
    Sampling, StagePlacement, StatusReply, StatusRequest, Token, TokenPiece, TokenizeReply,
    TokenizeRequest, UnloadReply, UnloadRequest, VersionReply, VersionRequest,
};
pub use frame::{decode_frame, encode_frame, read_frame, write_frame, FrameError};
pub use handshake::{Hello, HelloReply};

/// Version of the wire protocol spoken after the handshake. Bump it whenever any type in [`api`]
/// changes incompatibly (a field added, removed or reordered, a variant inserted before another);
/// appending a new variant at the end of [`Request`], [`Reply`] or [`Event`] also bumps it, so
/// that an older peer gets a clear version error instead of an undecodable frame.
pub const PROTOCOL_VERSION: u32 = 10;

/// Largest payload (bytes after the 4-byte length prefix) either side accepts or sends: 16 MiB.
/// Big enough for any prompt or token batch, small enough that a hostile length prefix cannot make
/// a peer allocate without bound. A frame announcing more is refused before anything is allocated.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Version of this build of the llmd packages (the same for `llmd`, `llmctl` and this crate).
pub const PACKAGE_VERSION: &str = env!("CARGO_PKG_VERSION");
