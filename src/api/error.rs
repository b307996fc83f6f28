//! One mapping from every error to a gRPC `Status` (SPEC §9). Internal
//! causes are logged here and never returned to the caller.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::engine::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The violations, and a hint said once in the message (e.g. the
    /// valid values).
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>, Option<String>),
    #[error("{0}")]
    NotFound(String),
    /// The operation does not apply to the current state; `reason` and
    /// `metadata` go into a `google.rpc.ErrorInfo`.
    #[error("{message}")]
    FailedPrecondition { message: String, reason: &'static str, metadata: Vec<(String, String)> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Collects field violations while a request is converted. Bounded, so a
/// huge bad batch still gets a small error (clients cap the trailers: grpcio
/// at 16 KiB, and reports a larger error as RESOURCE_EXHAUSTED): each field
/// and description is cut to a few hundred bytes, and after about 3 KiB in
/// all the rest are only counted. A hint (e.g. the valid values) is given
/// once, in the message.
#[derive(Debug, Default)]
pub struct Violations {
    list: Vec<FieldViolation>,
    bytes: usize,
    omitted: usize,
    hint: Option<String>,
}

/// Longest field path kept, in bytes.
const MAX_FIELD_BYTES: usize = 160;
/// Longest description kept, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 320;
/// Bytes of fields and descriptions returned in all.
const MAX_VIOLATION_BYTES: usize = 3072;

pub use crate::text::{bounded, escaped};

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        let field = bounded(&field.into(), MAX_FIELD_BYTES);
        let description = bounded(&description.into(), MAX_DESCRIPTION_BYTES);
        if self.bytes + field.len() + description.len() > MAX_VIOLATION_BYTES {
            self.omitted += 1;
            return;
        }
        self.bytes += field.len() + description.len();
        self.list.push(FieldViolation::new(field, description));
    }

    /// Says something once for all violations, in the message, e.g. which
    /// values are valid (the first call wins).
    pub fn hint(&mut self, hint: impl Into<String>) {
        if self.hint.is_none() {
            self.hint = Some(bounded(&hint.into(), 2 * MAX_DESCRIPTION_BYTES));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.omitted == 0
    }

    /// The violations as an error (call when some were added).
    pub fn into_error(self) -> ApiError {
        let mut list = self.list;
        if self.omitted > 0 {
            list.push(FieldViolation::new("...", format!("{} more violations not listed", self.omitted)));
        }
        ApiError::InvalidArgument(list, self.hint)
    }

    /// `Ok(value)` when nothing was violated.
    pub fn into_result<T>(self, value: T) -> Result<T, ApiError> {
        if self.is_empty() { Ok(value) } else { Err(self.into_error()) }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations, hint) => {
                let summary = violations
                    .iter()
                    .take(3)
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(
                    Code::InvalidArgument,
                    bounded(&format!("invalid request: {summary}"), 512)
                        + &hint.map(|h| format!("; {h}")).unwrap_or_default(),
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
