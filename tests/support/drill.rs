//! What the load drills share (`tests/chaos.rs`, `tests/resharding.rs`, `tests/replica_churn.rs`): the versioned
//! values their source of truth holds, each worker's random numbers, the outcomes counted per phase, the retry
//! rule's notion of a retryable failure, and the Markdown tables they print.
//!
//! A drill's stale read is a Get answering a version below one already acknowledged to the test: every value is
//! `v<version>`, so the version can be read back from any answer.

use super::calls::Client;
use super::loader::SourceOfTruth;
use super::process::ServerProcess;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

/// The loader-backed key of item `i`.
pub fn item(i: usize) -> String {
    format!("item:{i}")
}

/// The value of version `version`: `v<version>`.
pub fn value(version: u64) -> Vec<u8> {
    format!("v{version}").into_bytes()
}

/// The version a [`value`] holds; `None` for anything else.
pub fn version_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix('v')?
        .parse()
        .ok()
}

/// The next version of item `index`: counted in `version` (the item's writer lock, which the caller holds, so
/// versions reach the source and the cache in order) and put in `source`.
pub fn next_version(source: &SourceOfTruth, index: usize, version: &mut u64) -> u64 {
    *version += 1;
    source.put(&item(index), &value(*version));
    *version
}

/// Worker `id`'s random numbers: xorshift, cheap and deterministic per worker.
pub fn worker_rng(id: usize) -> impl FnMut() -> u64 {
    let mut seed = id as u64 * 7919 + 17;
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A client of `process`, connecting lazily (a drill starts and stops processes under it).
pub fn connect(process: &ServerProcess) -> Client {
    let channel = Channel::from_shared(process.uri())
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    CacheServiceClient::new(channel)
}

/// `message` as a request with `deadline` (the README tells clients to set one on every call).
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Whether the call's failure says the server or the connection broke: UNAVAILABLE, or a broken connection
/// (tonic's UNKNOWN or CANCELLED).
pub fn unavailable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// Whether a failed call may be sent again to another process: the server or the connection broke
/// ([`unavailable`]), or the server never started it because its connection was closing ([`refused_by_goaway`]).
pub fn retryable(status: &tonic::Status) -> bool {
    unavailable(status) || refused_by_goaway(status)
}

/// A stream the server refused with a graceful GOAWAY: it never reached a handler, so it is safe to send again.
/// A draining process's HTTP/2 GOAWAY (NO_ERROR) refuses streams opened after it, which tonic reports as INTERNAL.
pub fn refused_by_goaway(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut cause = status.source();
    while let Some(error) = cause {
        let described = format!("{error:?}");
        if described.contains("GoAway(") && described.contains("NO_ERROR") {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The calls of one phase, as every drill counts them.
#[derive(Default)]
pub struct Calls {
    pub requests: u64,
    /// Calls whose first attempt failed retryably and whose retry succeeded.
    pub retried: u64,
    /// Failures (after the retry, where the drill retries), by code.
    pub errors: BTreeMap<String, u64>,
    pub latencies_us: Vec<u64>,
    /// Gets that answered below an acknowledged version.
    pub stale: u64,
}

impl Calls {
    /// Counts one call begun at `started`: `Ok(retried)` or the code it failed with, and whether it read stale.
    pub fn note(&mut self, started: Instant, outcome: Result<bool, Code>, stale: bool) {
        self.requests += 1;
        self.latencies_us
            .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        self.stale += u64::from(stale);
        match outcome {
            Ok(true) => self.retried += 1,
            Ok(false) => {}
            Err(code) => *self.errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }

    /// The 99th percentile of the latencies, in milliseconds (0 without calls).
    pub fn p99_ms(&mut self) -> f64 {
        let latencies = &mut self.latencies_us;
        if latencies.is_empty() {
            return 0.0;
        }
        latencies.sort_unstable();
        latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)] as f64 / 1000.0
    }

    /// The errors as a table cell: `0`, or `Code n, Code n` in code order.
    pub fn errors_cell(&self) -> String {
        if self.errors.is_empty() {
            return "0".to_owned();
        }
        self.errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Prints a Markdown table's header row and its separator.
pub fn print_header(columns: &[&str]) {
    println!("| {} |", columns.join(" | "));
    println!("|{}", "---|".repeat(columns.len()));
}

/// Prints one row of a Markdown table.
pub fn print_row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}
