//! What a fred error means to a caller: Redis topology in flux (connections, timeouts, failovers, slots moving)
//! is "try again later" (UNAVAILABLE), never a caller's mistake; anything else is a backend failure cachecoord
//! cannot explain.

use crate::Error;
use fred::prelude::{Error as FredError, ErrorKind};

/// Words in a Redis error that mean the node or the cluster is in flux. Matched anywhere in the message: Redis
/// wraps an error raised inside a script ("ERR Error running script ...").
const TRANSIENT_CODES: &[&str] = &[
    "CLUSTERDOWN",
    "TRYAGAIN",
    "LOADING",
    "MASTERDOWN",
    "READONLY",
    // The slot moved (a failover the slot map has not caught up with yet).
    "MOVED",
    "ASK",
    // A WAIT cut short, or refused, because its primary was just demoted.
    "UNBLOCKED",
    "WAIT cannot be used with replica",
    // A node refusing writes while full (`noeviction`), or busy with a long script: conditions of that one node,
    // which pass, so they count against its breaker and a read falls back to the loader.
    "OOM command not allowed",
    "BUSY Redis is busy",
];

/// Classifies `error`: transient conditions are [`Error::BackendUnavailable`], the rest [`Error::Backend`].
pub(super) fn backend_error(error: FredError) -> Error {
    let transient = matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Cluster
            | ErrorKind::Routing
            | ErrorKind::Backpressure
    ) || TRANSIENT_CODES
        .iter()
        .any(|code| error.details().contains(code));
    let source = Box::new(error);
    if transient {
        Error::BackendUnavailable { source }
    } else {
        Error::Backend { source }
    }
}

/// A node refusing a command for a condition of its own, counted per node (`cachecoord_redis_refusals_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Full under `noeviction`: `OOM command not allowed when used memory > 'maxmemory'`.
    Oom,
    /// A script or function running too long: `BUSY Redis is busy running a script`.
    Busy,
}

impl Refusal {
    /// The `reason` label.
    pub(super) fn label(self) -> &'static str {
        match self {
            Refusal::Oom => "oom",
            Refusal::Busy => "busy",
        }
    }
}

/// Whether `error` is an OOM or BUSY refusal (also when raised inside a script, which Redis wraps).
pub(super) fn refusal(error: &FredError) -> Option<Refusal> {
    let details = error.details();
    if details.contains("OOM command not allowed") {
        Some(Refusal::Oom)
    } else if details.contains("BUSY Redis is busy") {
        Some(Refusal::Busy)
    } else {
        None
    }
}

/// UNAVAILABLE for a reason cachecoord found itself (a node not connected, a breaker open, a timeout).
pub(super) fn unavailable(reason: impl Into<String>) -> Error {
    let reason: String = reason.into();
    Error::BackendUnavailable {
        source: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_in_flux_is_unavailable() {
        for details in [
            "CLUSTERDOWN The cluster is down",
            "ERR Error running script: TRYAGAIN",
        ] {
            let error = FredError::new(ErrorKind::Unknown, details);
            assert!(
                matches!(backend_error(error), Error::BackendUnavailable { .. }),
                "{details}"
            );
        }
        let timeout = FredError::new(ErrorKind::Timeout, "");
        assert!(matches!(
            backend_error(timeout),
            Error::BackendUnavailable { .. }
        ));
        let script = FredError::new(ErrorKind::Unknown, "ERR wrong number of arguments");
        assert!(matches!(backend_error(script), Error::Backend { .. }));
    }

    #[test]
    fn oom_and_busy_are_refusals_of_one_node_and_transient() {
        let oom = "OOM command not allowed when used memory > 'maxmemory'.";
        let in_script = "ERR Error running script (call to f_1): @user_script:1: OOM command not allowed when \
                         used memory > 'maxmemory'.";
        let busy = "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.";
        for (details, expected) in [
            (oom, Some(Refusal::Oom)),
            (in_script, Some(Refusal::Oom)),
            (busy, Some(Refusal::Busy)),
            ("ERR wrong number of arguments", None),
        ] {
            let error = FredError::new(ErrorKind::Unknown, details);
            assert_eq!(refusal(&error), expected, "{details}");
            if expected.is_some() {
                assert!(matches!(
                    backend_error(error),
                    Error::BackendUnavailable { .. }
                ));
            }
        }
    }
}
