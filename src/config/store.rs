//! `[store]`: which store holds entries, and how cachecoord talks to Redis.

use super::duration::{millis, secs};
use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Which store holds entries, and how cachecoord talks to it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Redis URL (`redis://host:port` standalone, `redis-cluster://host:port` cluster; more seed nodes with
    /// `?node=host:port`). Default: unset, which selects the embedded in-process store.
    pub redis_url: Option<String>,
    /// A file holding `redis_url` (for a URL with credentials in a mounted Secret), read verbatim but for one
    /// trailing line ending. Unset: `redis_url`. Setting both is refused.
    pub redis_url_file: Option<PathBuf>,
    /// Memory budget of the embedded store in bytes (keys + values). Default 256 MiB. Least recently used
    /// entries are evicted beyond it.
    pub memory_max_bytes: u64,
    /// `redis_command_timeout_ms`: timeout of one Redis command. Default 1000 ms. A command past it answers
    /// UNAVAILABLE instead of hanging the caller.
    #[serde(rename = "redis_command_timeout_ms", with = "millis")]
    pub redis_command_timeout: Duration,
    /// `redis_connect_timeout_ms`: timeout for the first connection to Redis at start-up. Default 5000 ms.
    #[serde(rename = "redis_connect_timeout_ms", with = "millis")]
    pub redis_connect_timeout: Duration,
    /// Redis ACL user (AUTH username). Unset: the URL's user, if any.
    pub redis_username: Option<String>,
    /// A file holding `redis_username`, read verbatim but for one trailing line ending. Setting both is refused.
    pub redis_username_file: Option<PathBuf>,
    /// Redis password. Unset: the URL's. Prefer `redis_password_file`; from the environment
    /// (`CACHECOORD_STORE__REDIS_PASSWORD`) it is taken as text too (`123456` stays a string).
    pub redis_password: Option<String>,
    /// A file holding `redis_password` (a mounted Secret), read verbatim: no trimming and no type conversion,
    /// only one trailing line ending (`\n` or `\r\n`) is dropped. Setting both is refused.
    pub redis_password_file: Option<PathBuf>,
    /// PEM CA bundle to verify Redis's certificate with TLS (`rediss://`). Unset: the system roots.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// `redis_topology_refresh_ms`: how often the cluster slot map is re-read. Default 1000 ms. A node failure
    /// or redirection also triggers a refresh at once, so a promoted replica takes traffic within ~100 ms of
    /// being seen.
    #[serde(rename = "redis_topology_refresh_ms", with = "millis")]
    pub redis_topology_refresh: Duration,
    /// `redis_health_interval_ms`: how often every Redis node's `INFO` is read for the `cachecoord_redis_*`
    /// metrics and Stats (memory, maxmemory, eviction policy, evicted keys, replica lag). Default 10000 ms.
    #[serde(rename = "redis_health_interval_ms", with = "millis")]
    pub redis_health_interval: Duration,
    /// Consecutive failures of one Redis node that open its circuit breaker. Default 5. Each node has its own,
    /// so a failing primary does not take the healthy ones out of service. Formerly
    /// `read_through.breaker_failures` (still accepted).
    pub node_breaker_failures: u32,
    /// `node_breaker_cooldown_ms`: how long an open node breaker keeps calls away from its node (Gets go to the
    /// loader, writes fail fast) before one probe. Default 1000 ms. Formerly
    /// `read_through.breaker_cooldown_ms` (still accepted).
    #[serde(rename = "node_breaker_cooldown_ms", with = "millis")]
    pub node_breaker_cooldown: Duration,
    /// SCAN COUNT hint per Redis call while matching a cross-group pattern. Default 1000: large enough to be
    /// quick, small enough that each SCAN step keeps Redis responsive. Formerly `invalidation.scan_count`
    /// (still accepted).
    pub scan_count: u32,
    /// Replicas that must acknowledge an Invalidate or InvalidatePattern (Redis `WAIT`) before it is answered,
    /// so it survives a failover of its primary. Default 1; 0 turns the wait off (a server or cluster without
    /// replicas needs 0). Never lowered to what the slot map lists: a primary whose replica is down or lagging
    /// answers UNAVAILABLE until one acknowledges.
    pub invalidation_replica_acks: usize,
    /// `replica_ack_timeout_ms`: how long an invalidation waits for those acknowledgements before answering
    /// UNAVAILABLE (retry). Default 500 ms.
    #[serde(rename = "replica_ack_timeout_ms", with = "millis")]
    pub replica_ack_timeout: Duration,
    /// `version_retention_secs`: how long a key remembers the highest version written to it (by a versioned
    /// Set, or a fill whose loader reported the row's version) after its value expired or was invalidated, so
    /// a late writer holding an older version is still refused. Default 691200 s (8 days). Must cover the
    /// longest life a value can have plus a lease: `limits.max_ttl_secs` + the longest stale window +
    /// `read_through.lease_ttl_ms`.
    #[serde(rename = "version_retention_secs", with = "secs")]
    pub version_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis_url: None,
            redis_url_file: None,
            memory_max_bytes: 256 * 1024 * 1024,
            redis_command_timeout: Duration::from_secs(1),
            redis_connect_timeout: Duration::from_secs(5),
            redis_username: None,
            redis_username_file: None,
            redis_password: None,
            redis_password_file: None,
            redis_tls_ca_file: None,
            redis_topology_refresh: Duration::from_secs(1),
            redis_health_interval: Duration::from_secs(10),
            node_breaker_failures: 5,
            node_breaker_cooldown: Duration::from_secs(1),
            scan_count: 1000,
            invalidation_replica_acks: 1,
            replica_ack_timeout: Duration::from_millis(500),
            version_retention: Duration::from_secs(8 * 24 * 3600),
        }
    }
}

impl StoreConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            let known = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
            ];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return ConfigError::fail(format!(
                    "store.redis_url must start with one of {known:?}, got {url:?}"
                ));
            }
        }
        if self.redis_health_interval.is_zero() {
            return ConfigError::fail("store.redis_health_interval_ms must be positive");
        }
        if self.scan_count == 0 || self.node_breaker_failures == 0 {
            return ConfigError::fail(
                "store.scan_count and store.node_breaker_failures must be positive",
            );
        }
        Ok(())
    }
}
