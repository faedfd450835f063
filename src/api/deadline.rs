//! The caller's gRPC deadline (`grpc-timeout`), applied to the whole call.
//!
//! tonic also enforces the header, but answers CANCELLED with no details. Finishing a little earlier lets the
//! caller get DEADLINE_EXCEEDED with an ErrorInfo instead. Work shared with other callers (a load in flight)
//! is not cancelled with the call: it runs in its own task and still fills the cache.

use crate::Error;
use std::time::Duration;
use tonic::metadata::MetadataMap;

/// The part of the caller's budget kept back so our answer arrives before tonic's own cancellation.
const MARGIN_RATIO: f64 = 0.05;
const MAX_MARGIN: Duration = Duration::from_millis(20);

/// The time this call may take, from the `grpc-timeout` header; `None` when the caller set no deadline.
pub(super) fn budget(metadata: &MetadataMap) -> Option<Duration> {
    let header = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(header)?;
    let margin = timeout.mul_f64(MARGIN_RATIO).min(MAX_MARGIN);
    Some(timeout.saturating_sub(margin))
}

/// Runs `call` within `budget`, answering DEADLINE_EXCEEDED when it runs out.
pub(super) async fn within<T>(
    budget: Option<Duration>,
    call: impl Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    match budget {
        None => call.await,
        Some(budget) => tokio::time::timeout(budget, call)
            .await
            .unwrap_or(Err(Error::DeadlineExceeded { budget })),
    }
}

/// `grpc-timeout` is at most 8 digits and a unit: H, M, S, m (ms), u (µs), n (ns).
fn parse_grpc_timeout(header: &str) -> Option<Duration> {
    let (digits, unit) = header.split_at(header.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "S", "12", "1x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
