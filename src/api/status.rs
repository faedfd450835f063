//! The one place a domain [`Error`] becomes a gRPC status. Every non-OK status carries a `google.rpc.ErrorInfo`
//! (domain `cachecoord.v1`) whose reason a client can switch on; the message is for the person reading it.

use crate::Error;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo domain of every error cachecoord returns.
pub const ERROR_DOMAIN: &str = "cachecoord.v1";

/// Longest status message sent, in bytes. Messages may quote the caller's input; gRPC carries them in a header,
/// and a header past the client's limit turns the answer into RESOURCE_EXHAUSTED with the reason lost.
const MAX_MESSAGE_BYTES: usize = 1024;

/// What a caller is told when a load fails. A loader's own error speaks of the caller's backend (hosts, users,
/// queries, sometimes the key): it goes to cachecoord's log, redacted, and never to a caller, who may be another
/// team. The reason LOADER_FAILED says what happened; this says what to do.
const LOADER_FAILED_MESSAGE: &str = "the loader failed or did not answer in time, and no stale value could stand \
     in; retry with backoff (the cause is in cachecoord's log)";

/// What a caller is told when Redis is down, slow or moving slots.
const BACKEND_UNAVAILABLE_MESSAGE: &str = "the cache backend is unavailable or did not answer in time; retry with backoff (the cause is in \
     cachecoord's log)";

/// What a caller is told when Redis answered with something cachecoord cannot use.
const BACKEND_FAILED_MESSAGE: &str = "the cache backend failed; the cause is in cachecoord's log";

/// Converts a domain error into the status sent to the caller.
pub fn to_status(error: &Error) -> Status {
    let (code, reason) = match error {
        Error::Shared(inner) => return to_status(inner),
        Error::StaleVersion { .. } => (Code::FailedPrecondition, "STALE_VERSION"),
        Error::LeaseLost { .. } => (Code::FailedPrecondition, "LEASE_LOST"),
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
        Error::ResponseTooLarge { .. } => (Code::ResourceExhausted, "RESPONSE_TOO_LARGE"),
        Error::MemoryBudget { .. } => (Code::ResourceExhausted, "MEMORY_BUDGET"),
        Error::RequestBodyTimeout { .. } => (Code::ResourceExhausted, "REQUEST_BODY_TIMEOUT"),
        // Redis down, timing out or resharding: the client may retry, so never INTERNAL or INVALID_ARGUMENT.
        Error::BackendUnavailable { .. } => (Code::Unavailable, "BACKEND_UNAVAILABLE"),
        Error::Backend { .. } => (Code::Internal, "BACKEND_ERROR"),
    };
    let message = match error {
        Error::LoaderFailed { .. } => LOADER_FAILED_MESSAGE.to_owned(),
        // The Redis client's own words name nodes, addresses and sometimes keys: the operator's log gets them,
        // the caller (maybe another team) the reason and what to do.
        Error::BackendUnavailable { .. } => {
            tracing::warn!(error = %error, "cache backend unavailable");
            BACKEND_UNAVAILABLE_MESSAGE.to_owned()
        }
        Error::Backend { .. } => {
            tracing::error!(error = %error, "backend failure");
            BACKEND_FAILED_MESSAGE.to_owned()
        }
        _ => bounded(error.to_string()),
    };
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new()),
    )
}

/// Gives the transport's own refusal of an oversized request (tonic answers OUT_OF_RANGE from the message's
/// length prefix, before any handler runs) the ErrorInfo every other error carries: reason `REQUEST_TOO_LARGE`.
/// Such a refusal is a trailers-only response, its status in the headers; every other response passes as is.
pub fn explain_transport_refusal<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    if !out_of_range || headers.contains_key("grpc-status-details-bin") {
        return response;
    }
    let message = Status::from_header_map(headers)
        .map(|status| bounded(status.message().to_owned()))
        .unwrap_or_default();
    let status = Status::with_error_details(
        Code::OutOfRange,
        message,
        ErrorDetails::with_error_info(
            "REQUEST_TOO_LARGE",
            ERROR_DOMAIN,
            HashMap::<String, String>::new(),
        ),
    );
    if let Err(error) = status.add_header(headers) {
        tracing::warn!(%error, "could not describe an oversized request's refusal");
    }
    response
}

/// `message`, cut at a character boundary to [`MAX_MESSAGE_BYTES`] (marked with `…`) when longer.
fn bounded(mut message: String) -> String {
    const MARK: &str = "…";
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES - MARK.len();
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(MARK);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_quoting_input_stay_bounded() {
        let status = to_status(&Error::PermissionDenied {
            token: "reader".into(),
            action: "read",
            target: format!("user:{}", "é".repeat(50_000)),
        });
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(status.message().ends_with('…'));
        let short = to_status(&Error::EmptyRequest { what: "keys" });
        assert!(!short.message().ends_with('…'));
    }
}
