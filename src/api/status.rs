//! The one place a domain [`Error`] becomes a gRPC status. Every non-OK status carries a `google.rpc.ErrorInfo`
//! (domain `cachecoord.v1`) whose reason a client can switch on; the message is for the person reading it.

use crate::Error;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo domain of every error cachecoord returns.
pub const ERROR_DOMAIN: &str = "cachecoord.v1";

/// Converts a domain error into the status sent to the caller.
pub fn to_status(error: &Error) -> Status {
    let (code, reason) = match error {
        Error::Shared(inner) => return to_status(inner),
        Error::StaleVersion { .. } => (Code::FailedPrecondition, "STALE_VERSION"),
        Error::LoaderFailed { .. } => (Code::Unavailable, "LOADER_FAILED"),
        Error::DeadlineExceeded { .. } => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
        Error::InvalidKey { .. } => (Code::InvalidArgument, "INVALID_KEY"),
        Error::InvalidPattern { .. } => (Code::InvalidArgument, "INVALID_PATTERN"),
        Error::PatternTooBroad { .. } => (Code::InvalidArgument, "PATTERN_TOO_BROAD"),
        Error::ValueTooLarge { .. } => (Code::InvalidArgument, "VALUE_TOO_LARGE"),
        Error::SensitiveData { .. } => (Code::InvalidArgument, "SENSITIVE_DATA"),
        Error::TtlOutOfBounds { .. } => (Code::InvalidArgument, "TTL_OUT_OF_BOUNDS"),
        Error::InvalidTtl { .. } => (Code::InvalidArgument, "INVALID_TTL"),
        Error::EmptyRequest { .. } => (Code::InvalidArgument, "EMPTY_REQUEST"),
        Error::BatchTooLarge { .. } => (Code::InvalidArgument, "BATCH_TOO_LARGE"),
        Error::Unauthenticated { .. } => (Code::Unauthenticated, "UNAUTHENTICATED"),
        Error::PermissionDenied { .. } => (Code::PermissionDenied, "OUT_OF_SCOPE"),
        Error::Overloaded { .. } => (Code::ResourceExhausted, "TOO_MANY_IN_FLIGHT"),
        // Redis down, timing out or resharding: the client may retry, so never INTERNAL or INVALID_ARGUMENT.
        Error::BackendUnavailable { .. } => (Code::Unavailable, "BACKEND_UNAVAILABLE"),
        Error::Backend { .. } => (Code::Internal, "BACKEND_ERROR"),
    };
    if code == Code::Internal {
        tracing::error!(error = %error, "backend failure");
    }
    Status::with_error_details(
        code,
        error.to_string(),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new()),
    )
}
