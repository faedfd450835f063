//! The sections that shape the gRPC service itself: input limits, client connections, authentication, TLS,
//! telemetry and shutdown.

use super::duration::millis;
use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Input limits that protect the service and Redis from oversized or malformed requests.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest key (and pattern) accepted, in bytes. Default 512.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes. Default 1048576 (1 MiB).
    pub max_value_bytes: usize,
    /// Largest request message decoded, in bytes. Default 8388608 (8 MiB): room for a BatchSet of several large
    /// values; larger requests are refused before they are buffered.
    pub max_request_bytes: usize,
    /// Most keys (or entries) in one BatchGet, BatchSet or Invalidate. Default 1000.
    pub max_batch_keys: usize,
    /// `min_ttl_ms`: smallest TTL a request may ask for. Default 1000 ms.
    #[serde(rename = "min_ttl_ms", with = "millis")]
    pub min_ttl: Duration,
    /// `max_ttl_secs`: largest TTL a request may ask for. Default 604800 s (7 days).
    #[serde(rename = "max_ttl_secs", with = "super::duration::secs")]
    pub max_ttl: Duration,
    /// Most wildcards (`*`, `?`) in one pattern. Default 8.
    pub max_pattern_wildcards: usize,
    /// Most CacheService calls in flight on this replica, each counted from its request's headers until its
    /// response has been sent; the next is refused at once with RESOURCE_EXHAUSTED (reason TOO_MANY_IN_FLIGHT)
    /// rather than queued. Default 4096.
    pub max_in_flight: usize,
    /// Largest response one call may build, in bytes (a BatchGet's values, duplicates counted). Default
    /// 16777216 (16 MiB); larger answers RESOURCE_EXHAUSTED (reason RESPONSE_TOO_LARGE). With `max_in_flight`,
    /// it bounds the response bytes a replica holds for callers slow to read them.
    pub max_response_bytes: usize,
    /// Most concurrent HTTP/2 streams one connection may open (advertised in SETTINGS). Default 256.
    pub max_concurrent_streams: u32,
    /// Bytes of requests and responses this replica holds for calls in flight, all callers together: request
    /// bodies as they arrive, responses from when they are built until they are sent. Default 536870912
    /// (512 MiB); past it, calls answer RESOURCE_EXHAUSTED (reason MEMORY_BUDGET).
    pub memory_budget_bytes: usize,
    /// One caller's share of `memory_budget_bytes` (a caller is a token, or a peer address when auth is off).
    /// Default 134217728 (128 MiB); at least `max_request_bytes` + `max_response_bytes`.
    pub caller_memory_bytes: usize,
    /// One caller's share of `max_in_flight`. Default 1024.
    pub caller_max_in_flight: usize,
    /// `request_body_timeout_ms`: how long a call's request body may take to arrive in full, from its headers.
    /// Default 10000 ms; past it, RESOURCE_EXHAUSTED (reason REQUEST_BODY_TIMEOUT).
    #[serde(rename = "request_body_timeout_ms", with = "millis")]
    pub request_body_timeout: Duration,
    /// `response_send_timeout_ms`: how long a response may stay unsent because its peer does not read it; then
    /// the connection is closed. Default 30000 ms.
    #[serde(rename = "response_send_timeout_ms", with = "millis")]
    pub response_send_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_request_bytes: 8 * 1024 * 1024,
            max_batch_keys: 1000,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            max_pattern_wildcards: 8,
            max_in_flight: 4096,
            max_response_bytes: 16 * 1024 * 1024,
            max_concurrent_streams: 256,
            memory_budget_bytes: 512 * 1024 * 1024,
            caller_memory_bytes: 128 * 1024 * 1024,
            caller_max_in_flight: 1024,
            request_body_timeout: Duration::from_secs(10),
            response_send_timeout: Duration::from_secs(30),
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.min_ttl > self.max_ttl {
            return ConfigError::fail("limits.min_ttl_ms exceeds limits.max_ttl_secs");
        }
        if self.max_batch_keys == 0 || self.max_key_bytes == 0 {
            return ConfigError::fail(
                "limits.max_batch_keys and limits.max_key_bytes must be positive",
            );
        }
        if self.max_response_bytes < self.max_value_bytes || self.max_concurrent_streams == 0 {
            return ConfigError::fail(
                "limits.max_response_bytes must be at least limits.max_value_bytes, and \
                 limits.max_concurrent_streams positive",
            );
        }
        if self.max_request_bytes <= self.max_value_bytes {
            return ConfigError::fail(
                "limits.max_request_bytes must exceed limits.max_value_bytes",
            );
        }
        if self.max_in_flight == 0 || self.caller_max_in_flight == 0 {
            return ConfigError::fail(
                "limits.max_in_flight and limits.caller_max_in_flight must be positive",
            );
        }
        // One call of the largest size must fit in a caller's share, and a share in the replica's budget.
        let largest_call = self
            .max_request_bytes
            .saturating_add(self.max_response_bytes);
        if self.caller_memory_bytes < largest_call
            || self.memory_budget_bytes < self.caller_memory_bytes
        {
            return ConfigError::fail(
                "limits.caller_memory_bytes must be at least limits.max_request_bytes + \
                 limits.max_response_bytes, and limits.memory_budget_bytes at least \
                 limits.caller_memory_bytes",
            );
        }
        if self.request_body_timeout.is_zero() || self.response_send_timeout.is_zero() {
            return ConfigError::fail(
                "limits.request_body_timeout_ms and limits.response_send_timeout_ms must be positive",
            );
        }
        Ok(())
    }
}

/// How long a client connection may live. gRPC clients keep one HTTP/2 connection per address for as long as it
/// works, so without an age limit the replicas started by a scale-out or a rolling restart get no calls from the
/// clients already connected. At `max_age_secs` the server sends GOAWAY: calls in flight on the connection
/// finish, new ones go to a new connection (a `dns:///` + round_robin client re-resolves and spreads them over
/// every replica). A connection still busy `max_age_grace_secs` later is closed, cutting what is left on it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// `max_age_secs`: a connection is asked to go away (GOAWAY) this long after it was accepted. Default 300 s;
    /// 0 turns the limit off (connections live until the client or a failure closes them). Each connection's
    /// age is drawn uniformly within ±10 % of it, so clients that connected together do not reconnect together.
    #[serde(rename = "max_age_secs", with = "super::duration::secs")]
    pub max_age: Duration,
    /// `max_age_grace_secs`: how long the calls in flight on an aged-out connection may still run before it is
    /// closed. Default 30 s: more than a call takes (a load waits at most its loader's timeout). Must be
    /// positive when `max_age_secs` is set.
    #[serde(rename = "max_age_grace_secs", with = "super::duration::secs")]
    pub max_age_grace: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_age: Duration::from_secs(300),
            max_age_grace: Duration::from_secs(30),
        }
    }
}

impl ConnectionsConfig {
    /// The age and grace when connections age out at all.
    pub fn age_limit(&self) -> Option<(Duration, Duration)> {
        (!self.max_age.is_zero()).then_some((self.max_age, self.max_age_grace))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.max_age.is_zero() && self.max_age_grace.is_zero() {
            return ConfigError::fail(
                "connections.max_age_grace_secs must be positive when connections.max_age_secs is set: with no \
                 grace, every call in flight when a connection ages out would be cut",
            );
        }
        Ok(())
    }
}

/// Bearer-token authentication.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a bearer token on every CacheService call. Default false (local runs); the Helm chart's
    /// production values turn it on. Health and reflection never need one.
    pub enabled: bool,
    /// TOML file of `[[tokens]]` (name, namespace, sha256, read, write, invalidate); see
    /// config/tokens.example.toml. Required when enabled. Re-read when it changes.
    pub tokens_file: Option<PathBuf>,
    /// `reload_interval_ms`: how often the tokens file is checked for changes. Default 5000 ms.
    #[serde(rename = "reload_interval_ms", with = "millis")]
    pub reload_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            tokens_file: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.tokens_file.is_none() {
            return ConfigError::fail("auth.enabled needs auth.tokens_file");
        }
        Ok(())
    }
}

/// TLS on the gRPC port. Both files set turns it on.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A second, plaintext listener serving only grpc.health.v1, e.g. `0.0.0.0:50052`: Kubernetes' gRPC probes
    /// cannot speak TLS. Unset: health is served on the main port only.
    pub health_listen_addr: Option<SocketAddr>,
    /// PEM certificate chain of the server.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// `reload_interval_ms`: how often the three files are checked for changes; changed files are taken for new
    /// connections without a restart, unusable ones refused (the last good certificate stays). Default 5000 ms.
    #[serde(rename = "reload_interval_ms", with = "millis")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            health_listen_addr: None,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl TlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return ConfigError::fail("tls.cert_file and tls.key_file go together");
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            return ConfigError::fail(
                "tls.client_ca_file (mutual TLS) needs tls.cert_file and tls.key_file",
            );
        }
        if self.reload_interval.is_zero() {
            return ConfigError::fail("tls.reload_interval_ms must be positive");
        }
        Ok(())
    }
}

/// Logs, metrics and traces.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the Prometheus `/metrics` endpoint. Default `127.0.0.1:9464`; the chart sets `0.0.0.0:9464`.
    /// (The default cannot be unset from a file or the environment: the endpoint is always served.)
    pub metrics_addr: Option<SocketAddr>,
    /// Logs as JSON lines instead of human-readable text. Default false.
    pub log_json: bool,
    /// OTLP/gRPC endpoint for trace export, e.g. `http://otel-collector:4317`. Default unset: no export.
    pub otlp_endpoint: Option<String>,
    /// Fraction of traces sampled when exporting, 0.0–1.0 (a sampled parent is always followed). Default 1.0.
    pub trace_sampling_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            log_json: false,
            otlp_endpoint: None,
            trace_sampling_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.trace_sampling_ratio) {
            return ConfigError::fail("telemetry.trace_sampling_ratio must be within 0.0..=1.0");
        }
        Ok(())
    }
}

/// Draining on SIGTERM/SIGINT.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// `drain_delay_ms`: after the signal, health says NOT_SERVING but calls are still accepted for this long,
    /// so load balancers stop sending new ones first. Default 0 ms; the chart sets 5000.
    #[serde(rename = "drain_delay_ms", with = "millis")]
    pub drain_delay: Duration,
    /// `grace_period_ms`: then in-flight calls get this long to finish before the process exits anyway.
    /// Default 20000 ms. Keep the pod's terminationGracePeriodSeconds above drain delay + grace period.
    #[serde(rename = "grace_period_ms", with = "millis")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_delay: Duration::ZERO,
            grace_period: Duration::from_secs(20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_age_needs_a_grace_and_zero_turns_it_off() {
        let defaults = ConnectionsConfig::default();
        assert_eq!(
            defaults.age_limit(),
            Some((Duration::from_secs(300), Duration::from_secs(30)))
        );
        let no_grace = ConnectionsConfig {
            max_age_grace: Duration::ZERO,
            ..defaults.clone()
        };
        assert!(no_grace.validate().is_err());
        let off = ConnectionsConfig {
            max_age: Duration::ZERO,
            max_age_grace: Duration::ZERO,
        };
        assert!(off.validate().is_ok());
        assert_eq!(off.age_limit(), None);
    }
}
