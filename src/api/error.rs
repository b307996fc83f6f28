//! One mapping from every error to a gRPC `Status` (SPEC §9). Internal
//! causes are logged here and never returned to the caller.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    NotFound(String),
    /// The operation does not apply to the current state; `reason` and
    /// `metadata` go into a `google.rpc.ErrorInfo`.
    #[error("{message}")]
    FailedPrecondition { message: String, reason: &'static str, metadata: Vec<(String, String)> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Collects field violations while a request is converted.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Longest list returned; a huge bad batch should not make a huge error.
    const MAX: usize = 100;

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.0.len() < Self::MAX {
            self.0.push(FieldViolation::new(field, description));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations as an error (call when some were added).
    pub fn into_error(self) -> ApiError {
        ApiError::InvalidArgument(self.0)
    }

    /// `Ok(value)` when nothing was violated.
    pub fn into_result<T>(self, value: T) -> Result<T, ApiError> {
        if self.0.is_empty() { Ok(value) } else { Err(ApiError::InvalidArgument(self.0)) }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => {
                let summary = violations
                    .iter()
                    .take(3)
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {summary}"),
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::FailedPrecondition { message, reason, metadata } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    reason,
                    "leadscore",
                    metadata.into_iter().collect::<std::collections::HashMap<_, _>>(),
                ),
            ),
            ApiError::Store(e @ (StoreError::Unavailable(_) | StoreError::Timeout(_))) => {
                tracing::warn!(error = %e, "store unavailable");
                Status::unavailable("the lead store is unavailable; retry later")
            }
            ApiError::Store(StoreError::BadCursor(why)) => {
                let mut v = Violations::default();
                v.add("after_cursor", why);
                Status::from(v.into_error())
            }
            ApiError::Store(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(error = %e, "corrupt lead data");
                Status::data_loss(e.to_string())
            }
            ApiError::Store(e @ StoreError::Internal(_)) => {
                tracing::error!(error = %e, "internal store error");
                Status::internal("internal error")
            }
        }
    }
}
