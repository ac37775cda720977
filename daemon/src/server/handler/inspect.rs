//! `inspect`: a GGUF file described from its header alone (a partly downloaded file works).

use std::path::Path;

use llmd_shared::{ErrorCode, ErrorReply, InspectReport, InspectRequest};

use super::Context;
use llmd_gguf::{GgufError, GgufFile};

use crate::inspect::ReportFromFile;

/// Reads the header on a blocking thread and builds the report.
pub async fn handle(req: InspectRequest, _ctx: &Context) -> Result<Box<InspectReport>, ErrorReply> {
    if !Path::new(&req.path).is_absolute() {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("path {:?} must be absolute", req.path),
        ));
    }
    let path = req.path.clone();
    tokio::task::spawn_blocking(move || {
        let file = GgufFile::open_unmapped(
            std::path::Path::new(&path),
            llmd_gguf::DataCheck::HeaderOnly,
        )
        .map_err(|e| {
            let code = if matches!(e, GgufError::Io { .. }) {
                ErrorCode::Io
            } else {
                ErrorCode::BadRequest
            };
            ErrorReply::new(code, e.to_string())
        })?;
        Ok(Box::new(InspectReport::from_file(&file)))
    })
    .await
    .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("the inspect task failed: {e}")))?
}
