//! Process-wide observability: the tracing subscriber (text or JSON logs), and the Prometheus exporter serving
//! `/metrics` on its own port. Called once by `main`; the library itself only emits spans and metrics.

use crate::config::Config;
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log_level` (or `RUST_LOG`) is not a valid filter.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// The metrics endpoint could not be set up.
    #[error("cannot serve metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
}

/// Latency buckets in seconds, 100 µs to 10 s: loopback Redis hits sit at the low end, slow loaders at the top.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs logging and, when configured, the `/metrics` endpoint. Must run inside the tokio runtime.
pub fn init(config: &Config) -> Result<(), TelemetryError> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(&config.log_level)?,
    };
    let logs = if config.telemetry.log_json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .init();

    if let Some(addr) = config.telemetry.metrics_addr {
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets(LATENCY_BUCKETS)?
            .install()?;
        describe_metrics();
        tracing::info!(%addr, "metrics on /metrics");
    }
    Ok(())
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cachecoord_requests_total",
        "RPCs answered, by RPC and gRPC status code"
    );
    describe_histogram!("cachecoord_request_duration_seconds", "RPC latency, by RPC");
    describe_counter!(
        "cachecoord_lookups_total",
        "Keys answered, by entity (policy) and source: hit, near_hit, negative, stale, miss, loaded, coalesced, fallback"
    );
    describe_gauge!(
        "cachecoord_hit_ratio",
        "Answers from cache over all answers, by entity, since start-up"
    );
    describe_histogram!(
        "cachecoord_store_duration_seconds",
        "Redis (or embedded store) call latency, by operation"
    );
    describe_counter!(
        "cachecoord_store_errors_total",
        "Failed store calls, by operation and kind"
    );
    describe_histogram!(
        "cachecoord_loader_duration_seconds",
        "Loader call latency, by route"
    );
    describe_counter!(
        "cachecoord_loader_errors_total",
        "Failed loader calls, by route"
    );
    describe_counter!(
        "cachecoord_lease_waits_total",
        "Waits for another replica's load"
    );
    describe_counter!(
        "cachecoord_lease_wait_timeouts_total",
        "Lease waits that gave up and loaded uncached"
    );
    describe_gauge!(
        "cachecoord_breaker_open",
        "1 while the store circuit breaker is open"
    );
}
