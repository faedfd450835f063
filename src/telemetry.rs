//! Process-wide observability: the tracing subscriber (text or JSON logs), OpenTelemetry trace export over
//! OTLP/gRPC (off unless an endpoint is configured), W3C trace-context propagation in gRPC metadata (in from
//! callers, out to LoaderService calls), and the Prometheus exporter serving `/metrics` on its own port.
//! `init` is called once by `main`; the library itself only emits spans and metrics.

use crate::config::Config;
use metrics_exporter_prometheus::PrometheusBuilder;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
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
    /// The OTLP exporter could not be built.
    #[error("cannot export traces: {0}")]
    Traces(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps trace export running; `shutdown` flushes the spans still buffered.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops trace export.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace export did not flush");
        }
    }
}

/// Latency buckets in seconds, 100 µs to 10 s: loopback Redis hits sit at the low end, slow loaders at the top.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs logging, trace export and the `/metrics` endpoint as configured. Must run inside the tokio runtime.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(&config.log_level)?,
    };
    let logs = if config.telemetry.log_json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer_provider = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let ratio = config.telemetry.trace_sampling_ratio;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("cachecoord")
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                // A caller's sampling decision is followed; traces that start here are sampled at the ratio.
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    ratio,
                ))))
                .with_resource(resource)
                .build();
            Some(provider)
        }
        None => None,
    };
    let traces = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("cachecoord")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }

    if let Some(addr) = config.telemetry.metrics_addr {
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets(LATENCY_BUCKETS)?
            .install()?;
        describe_metrics();
        tracing::info!(%addr, "metrics on /metrics");
    }
    Ok(Telemetry { tracer_provider })
}

/// Makes `span` continue the caller's trace, when its gRPC metadata carries W3C trace context. Call before the
/// span is first entered.
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataCarrier(metadata)));
    // Without the OpenTelemetry layer (export off) there is no trace to continue: nothing to do.
    let _ = span.set_parent(parent);
}

/// Writes the current span's trace context into outgoing gRPC metadata, so the callee continues the trace.
pub fn propagate_trace(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut MetadataSink(metadata))
    });
}

struct MetadataCarrier<'a>(&'a MetadataMap);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataSink<'a>(&'a mut MetadataMap);

impl Injector for MetadataSink<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, MetadataValue::try_from(value)) {
            self.0.insert(key, value);
        }
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cachecoord_requests_total",
        "RPCs answered, by RPC and gRPC status code"
    );
    describe_histogram!("cachecoord_request_duration_seconds", "RPC latency, by RPC");
    describe_gauge!(
        "cachecoord_requests_in_flight",
        "CacheService calls in flight on this replica, each from its headers until its response is sent"
    );
    describe_gauge!(
        "cachecoord_held_bytes",
        "Request and response bytes held for calls in flight, against limits.memory_budget_bytes"
    );
    describe_counter!(
        "cachecoord_connections_cut_total",
        "Connections closed because a response went unread past limits.response_send_timeout_ms"
    );
    describe_counter!(
        "cachecoord_pattern_runs_total",
        "Pattern invalidations by outcome: ran, or joined a run that started after the call arrived"
    );
    describe_counter!(
        "cachecoord_lookups_total",
        "Keys answered, by entity (policy) and source: hit, near_hit, negative, stale, miss, loaded, coalesced, fallback"
    );
    describe_gauge!(
        "cachecoord_hit_ratio",
        "Answers from cache over all answers, by entity, since start-up"
    );
    describe_histogram!(
        "cachecoord_near_notice_delay_seconds",
        "Near-cache notices (invalidations and heartbeats) from their sender to this replica"
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
        "1 while a circuit breaker is open, by breaker (redis host:port, or loader pattern)"
    );
    describe_gauge!(
        "cachecoord_redis_used_memory_bytes",
        "A Redis node's used_memory, by node and role, from its INFO"
    );
    describe_gauge!(
        "cachecoord_redis_maxmemory_bytes",
        "A Redis node's maxmemory (0: unset), by node and role"
    );
    describe_counter!(
        "cachecoord_redis_evicted_keys_total",
        "A Redis node's evicted_keys, by node and role"
    );
    describe_gauge!(
        "cachecoord_redis_maxmemory_policy",
        "1 on a Redis node's current maxmemory-policy, by node, role and policy"
    );
    describe_gauge!(
        "cachecoord_redis_eviction_disabled",
        "1 when a Redis node does not evict (maxmemory unset or noeviction)"
    );
    describe_gauge!(
        "cachecoord_redis_replication_lag_bytes",
        "Bytes a Redis replica has not acknowledged to its primary, by node"
    );
    describe_counter!(
        "cachecoord_redis_refusals_total",
        "Commands a Redis node refused with OOM or BUSY, by node and reason"
    );
}
