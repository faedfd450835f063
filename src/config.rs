//! The whole configuration tree, parsed once at start-up.
//!
//! Layers, later wins: built-in defaults (which already hold the seed policy table) → the TOML file named by
//! `--config` / `CACHECOORD_CONFIG` → `CACHECOORD_*` environment variables (nested fields joined with `__`, e.g.
//! `CACHECOORD_STORE__REDIS_URL`) → command-line flags. `config/cachecoord.example.toml` lists every knob.

use crate::keys::Pattern;
use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line flags. Each one overrides the file and the environment.
#[derive(Debug, Default, Parser)]
#[command(
    name = "cachecoord",
    version,
    about = "cachecoord: a gRPC cache-coordination service (cache-aside done once, for every language)",
    after_help = "Every setting can also come from the TOML file or from CACHECOORD_* environment variables, \
                  nested fields joined by '__' (e.g. CACHECOORD_STORE__REDIS_URL, CACHECOORD_LIMITS__MAX_VALUE_BYTES). \
                  Precedence: flags > environment > file > defaults. See config/cachecoord.example.toml."
)]
pub struct Cli {
    /// TOML configuration file (every knob is listed in config/cachecoord.example.toml).
    #[arg(long, env = "CACHECOORD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the gRPC server listens on [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    pub listen_addr: Option<SocketAddr>,

    /// Redis URL: redis://host:port for one server, redis-cluster://host:port for a cluster. When unset the
    /// embedded in-process store is used.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,

    /// Memory budget of the embedded store, in bytes [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub memory_max_bytes: Option<u64>,

    /// Log filter, e.g. info or cachecoord=debug [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The root of the configuration tree.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on. Default `127.0.0.1:50051`: loopback, for local runs; the Helm chart
    /// sets `0.0.0.0:50051`.
    pub listen_addr: SocketAddr,
    /// tracing filter directive. Default `info`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// Where entries live.
    pub store: StoreConfig,
    /// Input limits that protect the service and Redis from oversized or malformed requests.
    pub limits: LimitsConfig,
    /// Pattern invalidation settings.
    pub invalidation: InvalidationConfig,
    /// TTL for keys no policy matches, and the jitter applied to every policy TTL.
    pub policy_defaults: PolicyDefaults,
    /// Per-entity policies, matched against the key in order; the first match wins.
    pub policies: Vec<PolicyConfig>,
}

/// Which store holds entries, and how cachecoord talks to it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Redis URL (`redis://host:port` standalone, `redis-cluster://host:port` cluster; more seed nodes with
    /// `?node=host:port`). Default: unset, which selects the embedded in-process store.
    pub redis_url: Option<String>,
    /// Memory budget of the embedded store in bytes (keys + values). Default 256 MiB. Least recently used
    /// entries are evicted beyond it.
    pub memory_max_bytes: u64,
    /// Timeout of one Redis command in milliseconds. Default 1000. A command past it answers UNAVAILABLE instead
    /// of hanging the caller.
    pub redis_command_timeout_ms: u64,
    /// Timeout for the first connection to Redis at start-up, in milliseconds. Default 5000.
    pub redis_connect_timeout_ms: u64,
}

/// Input limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// Smallest TTL a request may ask for, in milliseconds. Default 1000.
    pub min_ttl_ms: u64,
    /// Largest TTL a request may ask for, in seconds. Default 604800 (7 days).
    pub max_ttl_secs: u64,
}

/// Pattern invalidation settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvalidationConfig {
    /// Allow patterns whose first segment is not a literal entity (including `*`, which matches every key).
    /// Default false: one caller's typo must not wipe every team's cache.
    pub allow_cross_entity_patterns: bool,
    /// SCAN COUNT hint per Redis call while matching a pattern. Default 1000: large enough to be quick, small
    /// enough that each SCAN step keeps Redis responsive.
    pub scan_count: u32,
}

/// Defaults shared by every policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyDefaults {
    /// TTL in seconds of keys no policy matches. Default 600.
    pub ttl_secs: u64,
    /// Random jitter applied to policy TTLs, as a fraction: 0.1 spreads expiry over ±10 %, so keys written
    /// together do not expire together. Default 0.1. A TTL given in the request is applied exactly.
    pub jitter_ratio: f64,
}

/// One per-entity policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name reported in logs and metrics, e.g. `user`.
    pub name: String,
    /// Key pattern this policy applies to, e.g. `user:*` or `posts:page:*`.
    pub pattern: String,
    /// Time to live in seconds.
    pub ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            log_level: "info".into(),
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            invalidation: InvalidationConfig::default(),
            policy_defaults: PolicyDefaults::default(),
            policies: seed_policies(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis_url: None,
            memory_max_bytes: 256 * 1024 * 1024,
            redis_command_timeout_ms: 1000,
            redis_connect_timeout_ms: 5000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_request_bytes: 8 * 1024 * 1024,
            max_batch_keys: 1000,
            min_ttl_ms: 1000,
            max_ttl_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for InvalidationConfig {
    fn default() -> Self {
        InvalidationConfig {
            allow_cross_entity_patterns: false,
            scan_count: 1000,
        }
    }
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        PolicyDefaults {
            ttl_secs: 600,
            jitter_ratio: 0.1,
        }
    }
}

/// The seed table: list and pagination keys 15 min, user data 1 h, posts 30 min, settings 24 h. List patterns
/// come first because the first match wins.
fn seed_policies() -> Vec<PolicyConfig> {
    let policy = |name: &str, pattern: &str, ttl_secs| PolicyConfig {
        name: name.into(),
        pattern: pattern.into(),
        ttl_secs,
    };
    vec![
        policy("posts_list", "posts:page:*", 15 * 60),
        policy("user_posts", "user:*:posts", 15 * 60),
        policy("user_settings", "user:*:settings", 24 * 3600),
        policy("user", "user:*", 3600),
        policy("posts", "posts:*", 30 * 60),
        policy("settings", "settings:*", 24 * 3600),
    ]
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Builds the configuration from defaults, the file, the environment and `cli`, then validates it.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &cli.config {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("CACHECOORD_").ignore(&["config"]).split("__"));
        if let Some(addr) = cli.listen_addr {
            figment = figment.merge(Serialized::default("listen_addr", addr));
        }
        if let Some(url) = &cli.redis_url {
            figment = figment.merge(Serialized::default("store.redis_url", url));
        }
        if let Some(bytes) = cli.memory_max_bytes {
            figment = figment.merge(Serialized::default("store.memory_max_bytes", bytes));
        }
        if let Some(level) = &cli.log_level {
            figment = figment.merge(Serialized::default("log_level", level));
        }
        let config: Config = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        let jitter = self.policy_defaults.jitter_ratio;
        if !(0.0..1.0).contains(&jitter) {
            return fail(format!(
                "policy_defaults.jitter_ratio must be in [0, 1), got {jitter}"
            ));
        }
        if self.limits.min_ttl_ms > self.limits.max_ttl_secs.saturating_mul(1000) {
            return fail("limits.min_ttl_ms exceeds limits.max_ttl_secs".into());
        }
        if self.limits.max_batch_keys == 0 || self.limits.max_key_bytes == 0 {
            return fail("limits.max_batch_keys and limits.max_key_bytes must be positive".into());
        }
        if self.limits.max_request_bytes <= self.limits.max_value_bytes {
            return fail("limits.max_request_bytes must exceed limits.max_value_bytes".into());
        }
        if self.invalidation.scan_count == 0 {
            return fail("invalidation.scan_count must be positive".into());
        }
        for policy in &self.policies {
            if let Err(e) = Pattern::parse(&policy.pattern, self.limits.max_key_bytes, true) {
                return fail(format!("policy {:?}: {e}", policy.name));
            }
            if policy.ttl_secs == 0 {
                return fail(format!(
                    "policy {:?}: ttl_secs must be positive",
                    policy.name
                ));
            }
        }
        if let Some(url) = &self.store.redis_url {
            let known = ["redis://", "rediss://", "redis-cluster://"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return fail(format!(
                    "store.redis_url must start with one of {known:?}, got {url:?}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_the_defaults() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/cachecoord.example.toml"
        );
        let cli = Cli {
            config: Some(example.into()),
            ..Cli::default()
        };
        let loaded = Config::load(&cli).unwrap();
        assert_eq!(loaded.policies, seed_policies());
        assert_eq!(loaded.listen_addr, Config::default().listen_addr);
    }

    #[test]
    fn flags_override_everything() {
        let cli = Cli {
            listen_addr: Some("127.0.0.1:6000".parse().unwrap()),
            redis_url: Some("redis-cluster://127.0.0.1:7000".into()),
            ..Cli::default()
        };
        let loaded = Config::load(&cli).unwrap();
        assert_eq!(loaded.listen_addr.port(), 6000);
        assert_eq!(
            loaded.store.redis_url.as_deref(),
            Some("redis-cluster://127.0.0.1:7000")
        );
    }

    #[test]
    fn rejects_bad_policies() {
        let mut config = Config::default();
        config.policies[0].pattern = "user:[x]".into();
        assert!(config.validate().is_err());
    }
}
