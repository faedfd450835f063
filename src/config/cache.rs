//! The coordinator's sections: read-through loading, policies and their defaults, pattern rules, the
//! near-cache, the never-cache rule and encryption at rest.

use super::duration::{millis, opt_millis, opt_secs, secs};
use crate::error::ConfigError;
use crate::keys::Pattern;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How misses are loaded: leases, waiting for another loader, retries.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReadThroughConfig {
    /// Elect one loader per key across replicas with a Redis lease, and let an invalidation void a load in
    /// flight. Default true. Turning it off is for comparison only: loads may then write stale values back.
    pub leases: bool,
    /// `lease_ttl_ms`: lease lifetime. Default 10000 ms. A holder that dies frees the key after this long; keep
    /// it above the slowest loader timeout.
    #[serde(rename = "lease_ttl_ms", with = "millis")]
    pub lease_ttl: Duration,
    /// `lease_wait_ms`: how long a caller waits for another replica's load before loading itself (uncached).
    /// Default 5000 ms.
    #[serde(rename = "lease_wait_ms", with = "millis")]
    pub lease_wait: Duration,
    /// `lease_poll_ms`: safety poll while waiting: fills are announced by pub/sub, and this catches a lost
    /// announcement or an expired lease. Default 50 ms.
    #[serde(rename = "lease_poll_ms", with = "millis")]
    pub lease_poll: Duration,
    /// Loads retried when an invalidation voided them, before the last value is served uncached. Default 3.
    pub max_voided_retries: u32,
    /// Old name of `store.node_breaker_failures`, still accepted (the breaker guards Redis nodes and lives with
    /// the store).
    #[serde(default, skip_serializing)]
    pub breaker_failures: Option<u32>,
    /// Old name of `store.node_breaker_cooldown_ms`, in ms, still accepted.
    #[serde(default, skip_serializing)]
    pub breaker_cooldown_ms: Option<u64>,
}

impl Default for ReadThroughConfig {
    fn default() -> Self {
        ReadThroughConfig {
            leases: true,
            lease_ttl: Duration::from_secs(10),
            lease_wait: Duration::from_secs(5),
            lease_poll: Duration::from_millis(50),
            max_voided_retries: 3,
            breaker_failures: None,
            breaker_cooldown_ms: None,
        }
    }
}

impl ReadThroughConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ttl.is_zero() || self.lease_poll.is_zero() {
            return ConfigError::fail(
                "read_through.lease_ttl_ms and lease_poll_ms must be positive",
            );
        }
        Ok(())
    }
}

/// Pattern invalidation rules.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InvalidationConfig {
    /// Allow patterns whose first segment is not a literal entity (including `*`, which matches every key).
    /// Default false: one caller's typo must not wipe every team's cache.
    pub allow_cross_entity_patterns: bool,
    /// Old name of `store.scan_count`, still accepted.
    #[serde(default, skip_serializing)]
    pub scan_count: Option<u32>,
}

/// The near-cache: hot keys of opted-in entities answered from this replica's memory, kept coherent by notices
/// over Redis pub/sub.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NearCacheConfig {
    /// Memory budget in bytes; 0 turns the near-cache off. Default 0. Entities opt in with
    /// `near_cache_ttl_secs` in their policy.
    pub max_bytes: u64,
    /// `heartbeat_ms`: how often this replica checks its own subscription by publishing a heartbeat.
    /// Default 200 ms.
    #[serde(rename = "heartbeat_ms", with = "millis")]
    pub heartbeat: Duration,
    /// `deaf_after_ms`: without hearing its own heartbeat for this long, the replica stops serving from the
    /// near-cache (it may be missing invalidations) until it hears one again, after flushing. Default 1000 ms.
    #[serde(rename = "deaf_after_ms", with = "millis")]
    pub deaf_after: Duration,
    /// `member_lease_ms`: with a `near_cache = "strict"` policy, each replica is a near-cache member holding a
    /// lease in the store, renewed every third of it. A strict write waits for every member's acknowledgement or
    /// for its lease to lapse, so a paused or cut-off replica delays such writes by at most about this long.
    /// Default 2000 ms.
    #[serde(rename = "member_lease_ms", with = "millis")]
    pub member_lease: Duration,
    /// `member_lease_margin_ms`: a member stops serving strict keys this long before its lease ends, counted on
    /// its own clock from when it sent the renewal (covers clock-rate drift between it and the store). Default
    /// 200 ms; less than `member_lease_ms`.
    #[serde(rename = "member_lease_margin_ms", with = "millis")]
    pub member_lease_margin: Duration,
    /// `strict_ack_timeout_ms`: how long a strict write waits for a member's acknowledgement before revoking its
    /// membership and waiting out its lease instead (an acknowledgement still ends that wait). Default 100 ms.
    #[serde(rename = "strict_ack_timeout_ms", with = "millis")]
    pub strict_ack_timeout: Duration,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        NearCacheConfig {
            max_bytes: 0,
            heartbeat: Duration::from_millis(200),
            deaf_after: Duration::from_secs(1),
            member_lease: Duration::from_secs(2),
            member_lease_margin: Duration::from_millis(200),
            strict_ack_timeout: Duration::from_millis(100),
        }
    }
}

impl NearCacheConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.member_lease_margin >= self.member_lease {
            return ConfigError::fail(
                "near_cache.member_lease_margin_ms must be less than near_cache.member_lease_ms",
            );
        }
        Ok(())
    }
}

/// How a policy's keys are kept coherent in the near-cache.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NearCacheMode {
    /// Bounded staleness: another replica stops serving an invalidated value within the notice delay.
    #[default]
    Bounded,
    /// An acknowledged write means no replica's near-cache serves the older value afterwards: writes wait for
    /// every near-cache member's acknowledgement, or for its membership lease to lapse.
    Strict,
}

impl NearCacheMode {
    fn is_bounded(&self) -> bool {
        *self == NearCacheMode::Bounded
    }
}

/// What must never be cached: keys and JSON field names containing these words (case-insensitive).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SensitiveDataConfig {
    /// Words that mark a key segment (the entity included) or a JSON field name as a secret. Default
    /// `password, passwd, secret, token, api_key, session`. A Set touching one is refused (SENSITIVE_DATA); a
    /// loader result touching one is served but not cached.
    pub deny: Vec<String>,
}

impl Default for SensitiveDataConfig {
    fn default() -> Self {
        let deny = [
            "password", "passwd", "secret", "token", "api_key", "session",
        ];
        SensitiveDataConfig {
            deny: deny.iter().map(|w| (*w).to_owned()).collect(),
        }
    }
}

/// Keys for encrypting entries at rest.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Directory holding one file per key: the file name is the key id, the content 64 hex digits (32 bytes for
    /// AES-256-GCM). A Kubernetes Secret mounted as a volume has exactly this shape.
    pub keys_dir: Option<PathBuf>,
    /// Id of the key new entries are encrypted with. Older keys stay in the directory until the entries they
    /// encrypted have expired.
    pub active_key: Option<String>,
}

/// Defaults shared by every policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyDefaults {
    /// `ttl_secs`: TTL of keys no policy matches. Default 600 s.
    #[serde(rename = "ttl_secs", with = "secs")]
    pub ttl: Duration,
    /// Random jitter applied to policy TTLs, as a fraction: 0.1 spreads expiry over ±10 %, so keys written
    /// together do not expire together. Default 0.1. A TTL given in the request is applied exactly.
    pub jitter_ratio: f64,
    /// `negative_ttl_secs`: how long a loader's "not found" is remembered. Default 30 s.
    #[serde(rename = "negative_ttl_secs", with = "secs")]
    pub negative_ttl: Duration,
    /// `stale_while_revalidate_secs`: after its TTL, an entry is still served (source STALE) for this long while
    /// one background load refreshes it. Default 0 (off).
    #[serde(rename = "stale_while_revalidate_secs", with = "secs")]
    pub stale_while_revalidate: Duration,
    /// `stale_if_error_secs`: after its TTL, an entry is served (source STALE) for this long when its loader
    /// fails. Default 0 (off).
    #[serde(rename = "stale_if_error_secs", with = "secs")]
    pub stale_if_error: Duration,
    /// XFetch β: a hit refreshes early, in the background, with probability rising as expiry nears, scaled by how
    /// long the last load took. 1.0 is the paper's optimum; 0 turns early refresh off. Default 1.0.
    pub xfetch_beta: f64,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        PolicyDefaults {
            ttl: Duration::from_secs(600),
            jitter_ratio: 0.1,
            negative_ttl: Duration::from_secs(30),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            xfetch_beta: 1.0,
        }
    }
}

impl PolicyDefaults {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let jitter = self.jitter_ratio;
        if !(0.0..1.0).contains(&jitter) {
            return ConfigError::fail(format!(
                "policy_defaults.jitter_ratio must be in [0, 1), got {jitter}"
            ));
        }
        Ok(())
    }
}

/// One per-entity policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name reported in logs and metrics, e.g. `user`.
    pub name: String,
    /// Key pattern this policy applies to, e.g. `user:*` or `posts:page:*`.
    pub pattern: String,
    /// `ttl_secs`: time to live.
    #[serde(rename = "ttl_secs", with = "secs")]
    pub ttl: Duration,
    /// `negative_ttl_secs`: overrides `policy_defaults.negative_ttl_secs` for this policy.
    #[serde(
        default,
        rename = "negative_ttl_secs",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub negative_ttl: Option<Duration>,
    /// `stale_while_revalidate_secs`: overrides `policy_defaults.stale_while_revalidate_secs` for this policy.
    #[serde(
        default,
        rename = "stale_while_revalidate_secs",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_while_revalidate: Option<Duration>,
    /// `stale_if_error_secs`: overrides `policy_defaults.stale_if_error_secs` for this policy.
    #[serde(
        default,
        rename = "stale_if_error_secs",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_if_error: Option<Duration>,
    /// Overrides `policy_defaults.xfetch_beta` for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfetch_beta: Option<f64>,
    /// `near_cache_ttl_secs`: opts this policy's keys into the near-cache, holding each for at most this long
    /// (never past its TTL). Unset: never near-cached. Another replica's invalidation reaches this one within the
    /// pub/sub delay.
    #[serde(
        default,
        rename = "near_cache_ttl_secs",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub near_cache_ttl: Option<Duration>,
    /// `near_cache`: `bounded` (default) or `strict` (see [`NearCacheMode`]); strict needs `near_cache_ttl_secs`.
    #[serde(default, skip_serializing_if = "NearCacheMode::is_bounded")]
    pub near_cache: NearCacheMode,
    /// Marks the entity's keys as sensitive: they are redacted from logs and traces. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
    /// Stores the entity's values encrypted (AES-256-GCM, key from `encryption`). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypt: bool,
    /// `lease_ttl_ms`: overrides `read_through.lease_ttl_ms` for this policy's keys: how long a lease (a loader's,
    /// or one handed to a caller by a Get with `lease`) holds before a waiter may take it over.
    #[serde(
        default,
        rename = "lease_ttl_ms",
        with = "opt_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_ttl: Option<Duration>,
    /// `lease_wait_ms`: overrides `read_through.lease_wait_ms` for this policy's keys: how long a caller waits for
    /// another's fill.
    #[serde(
        default,
        rename = "lease_wait_ms",
        with = "opt_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_wait: Option<Duration>,
    /// Fraction of this policy's cache hits (store and near-cache) the staleness sampler re-reads through the
    /// entity's loader, in the background, to compare with what was served: 0 (the default) is off, 1 checks
    /// every hit the sampler's bounds (`staleness_sampler`) let through. Needs a loader route for the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_sample_rate: Option<f64>,
}

impl PolicyConfig {
    /// A policy with only a name, a pattern and a TTL; every other field takes the defaults.
    pub fn new(name: &str, pattern: &str, ttl: Duration) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            pattern: pattern.into(),
            ttl,
            negative_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            xfetch_beta: None,
            near_cache_ttl: None,
            near_cache: NearCacheMode::Bounded,
            sensitive: false,
            encrypt: false,
            lease_ttl: None,
            lease_wait: None,
            staleness_sample_rate: None,
        }
    }

    pub(super) fn validate(&self, max_key_bytes: usize) -> Result<(), ConfigError> {
        if let Err(e) = Pattern::parse(&self.pattern, max_key_bytes, true) {
            return ConfigError::fail(format!("policy {:?}: {e}", self.name));
        }
        if self.ttl.is_zero() {
            return ConfigError::fail(format!("policy {:?}: ttl_secs must be positive", self.name));
        }
        if self.near_cache == NearCacheMode::Strict && self.near_cache_ttl.is_none() {
            return ConfigError::fail(format!(
                "policy {:?}: near_cache = \"strict\" needs near_cache_ttl_secs",
                self.name
            ));
        }
        if self.lease_ttl.is_some_and(|ttl| ttl.is_zero()) {
            return ConfigError::fail(format!(
                "policy {:?}: lease_ttl_ms must be positive",
                self.name
            ));
        }
        if self
            .staleness_sample_rate
            .is_some_and(|rate| !(0.0..=1.0).contains(&rate))
        {
            return ConfigError::fail(format!(
                "policy {:?}: staleness_sample_rate must be between 0 and 1",
                self.name
            ));
        }
        Ok(())
    }
}

/// The staleness sampler's bounds, shared by every entity that opts in (`staleness_sample_rate` in its policy):
/// sampling must never cost the loaders more than this, whatever the hit rate.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StalenessSamplerConfig {
    /// Checks running at once on this replica, a mismatch's wait for its grace included; a sampled hit that
    /// finds them all taken is dropped (counted `dropped`), never queued. Default 4.
    pub max_in_flight: u32,
    /// Checks started per second on this replica (a token bucket holding one second's worth); a sampled hit
    /// over the rate is dropped. Default 50.
    pub max_checks_per_sec: u32,
    /// `grace_ms`: how long a value that differs from the source may still be served before it counts as
    /// stale: a mismatch is checked again after this long, and counts `stale` only if the cache still serves
    /// the same entry and the source still differs; otherwise `in_flight` (an invalidation or fill was on its
    /// way). Keep it above the near-cache's `deaf_after_ms` when sampling near-cached entities. Default 2000 ms.
    #[serde(rename = "grace_ms", with = "millis")]
    pub grace: Duration,
}

impl Default for StalenessSamplerConfig {
    fn default() -> Self {
        StalenessSamplerConfig {
            max_in_flight: 4,
            max_checks_per_sec: 50,
            grace: Duration::from_secs(2),
        }
    }
}

impl StalenessSamplerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 || self.max_checks_per_sec == 0 {
            return ConfigError::fail(
                "staleness_sampler.max_in_flight and max_checks_per_sec must be positive",
            );
        }
        Ok(())
    }
}

/// The seed table: list and pagination keys 15 min, user data 1 h, posts 30 min, settings 24 h. List patterns
/// come first because the first match wins.
pub(super) fn seed_policies() -> Vec<PolicyConfig> {
    let policy = |name, pattern, secs| PolicyConfig::new(name, pattern, Duration::from_secs(secs));
    vec![
        policy("posts_list", "posts:page:*", 15 * 60),
        policy("user_posts", "user:*:posts", 15 * 60),
        policy("user_settings", "user:*:settings", 24 * 3600),
        policy("user", "user:*", 3600),
        policy("posts", "posts:*", 30 * 60),
        policy("settings", "settings:*", 24 * 3600),
    ]
}
