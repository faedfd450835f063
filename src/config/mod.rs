//! The whole configuration tree, parsed once at start-up.
//!
//! Layers, later wins: built-in defaults (which already hold the seed policy table) → the TOML file named by
//! `--config` / `CACHECOORD_CONFIG` → `CACHECOORD_*` environment variables (nested fields joined with `__`, e.g.
//! `CACHECOORD_STORE__REDIS_URL`) → command-line flags. `config/cachecoord.example.toml` lists every knob.
//!
//! Each section is a plain struct with its defaults and its own `validate` beside it, in the file of the part
//! of cachecoord it configures; each component is built from its own section. Durations are `Duration` in the
//! code; the file keeps the unit in the knob's name (`lease_ttl_ms`), read by the adapters in `duration`.
//! Knobs that moved keep their old names as aliases ([`Config::renamed_knobs`] says which were used).

mod cache;
mod cli;
mod duration;
mod env;
mod loader;
mod secrets;
mod service;
#[cfg(test)]
mod settings_schema;
mod store;

pub use cache::{
    EncryptionConfig, InvalidationConfig, NearCacheConfig, NearCacheMode, PolicyConfig,
    PolicyDefaults, ReadThroughConfig, SensitiveDataConfig, StalenessSamplerConfig,
};
pub use cli::{Cli, Command};
pub use loader::{LoaderConfig, LoaderKind, OutboxConfig, OutboxTable, PostgresConfig};
pub use service::{
    AuthConfig, ConnectionsConfig, LimitsConfig, ShutdownConfig, TelemetryConfig, TlsConfig,
};
pub use store::StoreConfig;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The root of the configuration tree.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on. Default `127.0.0.1:50051`: loopback, for local runs; the Helm chart
    /// sets `0.0.0.0:50051`.
    pub listen_addr: SocketAddr,
    /// tracing filter directive. Default `info`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// Where entries live, and how cachecoord talks to Redis.
    pub store: StoreConfig,
    /// Input limits that protect the service and Redis from oversized or malformed requests.
    pub limits: LimitsConfig,
    /// How long client connections live (so clients rebalance over replicas).
    pub connections: ConnectionsConfig,
    /// Pattern invalidation rules.
    pub invalidation: InvalidationConfig,
    /// TTL for keys no policy matches, and the jitter applied to every policy TTL.
    pub policy_defaults: PolicyDefaults,
    /// Per-entity policies, matched against the key in order; the first match wins.
    pub policies: Vec<PolicyConfig>,
    /// Loaders that fill misses, matched against the key in order; the first match wins. Keys no loader matches
    /// are plain cache entries: a miss stays a miss.
    pub loaders: Vec<LoaderConfig>,
    /// Connection pool for the built-in Postgres loader.
    pub postgres: PostgresConfig,
    /// Leases, waiting and retries of read-through loading.
    pub read_through: ReadThroughConfig,
    /// Invalidation driven by Postgres row changes.
    pub outbox: OutboxConfig,
    /// The per-replica in-process near-cache.
    pub near_cache: NearCacheConfig,
    /// Bounds of the staleness sampler (entities opt in with `staleness_sample_rate`).
    pub staleness_sampler: StalenessSamplerConfig,
    /// Logs, metrics and traces.
    pub telemetry: TelemetryConfig,
    /// How the server stops.
    pub shutdown: ShutdownConfig,
    /// What must never be cached.
    pub sensitive_data: SensitiveDataConfig,
    /// Bearer-token authentication, namespaces and scopes.
    pub auth: AuthConfig,
    /// TLS (and optionally mutual TLS) on the gRPC port.
    pub tls: TlsConfig,
    /// Encryption at rest for entities whose policy says `encrypt = true`.
    pub encryption: EncryptionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            log_level: "info".into(),
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            connections: ConnectionsConfig::default(),
            invalidation: InvalidationConfig::default(),
            policy_defaults: PolicyDefaults::default(),
            policies: cache::seed_policies(),
            loaders: Vec::new(),
            postgres: PostgresConfig::default(),
            read_through: ReadThroughConfig::default(),
            outbox: OutboxConfig::default(),
            near_cache: NearCacheConfig::default(),
            staleness_sampler: StalenessSamplerConfig::default(),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig::default(),
            sensitive_data: SensitiveDataConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            encryption: EncryptionConfig::default(),
        }
    }
}

pub use crate::error::ConfigError;

impl Config {
    /// Builds the configuration from defaults, the file, the environment and `cli`, then validates it.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &cli.config {
            if !path.exists() {
                return ConfigError::fail(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        for (key, text) in env::variables(&Config::default())? {
            figment = figment.merge(Serialized::default(&key, text));
        }
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
        if cli.log_json {
            figment = figment.merge(Serialized::default("telemetry.log_json", true));
        }
        if let Some(addr) = cli.metrics_addr {
            figment = figment.merge(Serialized::default("telemetry.metrics_addr", addr));
        }
        // Lossy: environment values arrive as text, and "5" must still fill a number (see `env`).
        let mut config: Config = figment
            .extract_lossy()
            .map_err(|e| ConfigError(e.to_string()))?;
        config.apply_renamed_knobs();
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Fills each credential from its `…_file` setting (see `secrets`): the file's path stays in the
    /// configuration, its contents become the value.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let store = &mut self.store;
        secrets::resolve(
            &mut store.redis_url,
            store.redis_url_file.as_ref(),
            "store.redis_url",
            "store.redis_url_file",
        )?;
        secrets::resolve(
            &mut store.redis_username,
            store.redis_username_file.as_ref(),
            "store.redis_username",
            "store.redis_username_file",
        )?;
        secrets::resolve(
            &mut store.redis_password,
            store.redis_password_file.as_ref(),
            "store.redis_password",
            "store.redis_password_file",
        )?;
        let postgres = &mut self.postgres;
        secrets::resolve(
            &mut postgres.url,
            postgres.url_file.as_ref(),
            "postgres.url",
            "postgres.url_file",
        )
    }

    /// This configuration as `check-config` prints it: the Redis password replaced by `<redacted>`, and the
    /// password inside the Redis URL and the Postgres connection string too. Its output ends up in logs (the
    /// chart's pre-upgrade hook runs it), so it never holds a credential.
    pub fn redacted(&self) -> Config {
        let mut printed = self.clone();
        let store = &mut printed.store;
        if store.redis_password.is_some() {
            store.redis_password = Some(secrets::REDACTED.into());
        }
        store.redis_url = store.redis_url.as_deref().map(secrets::redact_url);
        printed.postgres.url = printed
            .postgres
            .url
            .as_deref()
            .map(secrets::redact_postgres);
        printed
    }

    /// The old names of moved knobs that this configuration used, as `old → new` lines for a start-up warning.
    /// [`Config::load`] copies their values to the new knobs and leaves the old ones set for this report.
    pub fn renamed_knobs(&self) -> Vec<&'static str> {
        let mut used = Vec::new();
        if self.read_through.breaker_failures.is_some() {
            used.push("read_through.breaker_failures → store.node_breaker_failures");
        }
        if self.read_through.breaker_cooldown_ms.is_some() {
            used.push("read_through.breaker_cooldown_ms → store.node_breaker_cooldown_ms");
        }
        if self.invalidation.scan_count.is_some() {
            used.push("invalidation.scan_count → store.scan_count");
        }
        used
    }

    /// Copies values given under old names to the knobs' new homes. An old name, being explicit, wins over the
    /// new name's default; setting both is not useful.
    fn apply_renamed_knobs(&mut self) {
        if let Some(failures) = self.read_through.breaker_failures {
            self.store.node_breaker_failures = failures;
        }
        if let Some(ms) = self.read_through.breaker_cooldown_ms {
            self.store.node_breaker_cooldown = Duration::from_millis(ms);
        }
        if let Some(count) = self.invalidation.scan_count {
            self.store.scan_count = count;
        }
    }

    /// Checks every section, then the rules that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate()?;
        self.limits.validate()?;
        self.connections.validate()?;
        self.policy_defaults.validate()?;
        self.read_through.validate()?;
        self.staleness_sampler.validate()?;
        self.telemetry.validate()?;
        self.auth.validate()?;
        self.tls.validate()?;
        self.near_cache.validate()?;
        let max_key_bytes = self.limits.max_key_bytes;
        for policy in &self.policies {
            policy.validate(max_key_bytes)?;
        }
        let postgres_url_set = self.postgres.url.is_some();
        for loader in &self.loaders {
            loader.validate(max_key_bytes, postgres_url_set, self.read_through.lease_ttl)?;
        }
        let allow_cross_entity = self.invalidation.allow_cross_entity_patterns;
        self.outbox
            .validate(max_key_bytes, allow_cross_entity, postgres_url_set)?;
        self.check_version_retention()?;
        let encrypting = self.policies.iter().any(|p| p.encrypt);
        let keys = &self.encryption;
        if encrypting && (keys.keys_dir.is_none() || keys.active_key.is_none()) {
            return ConfigError::fail(
                "a policy sets encrypt = true: encryption.keys_dir and encryption.active_key are required",
            );
        }
        Ok(())
    }
}

impl Config {
    /// A version floor must outlive every value it guards, and a lease's late fill: otherwise a late writer
    /// holding an older version finds the floor gone and is accepted.
    fn check_version_retention(&self) -> Result<(), ConfigError> {
        let defaults = &self.policy_defaults;
        let longest_stale = self
            .policies
            .iter()
            .flat_map(|p| [p.stale_while_revalidate, p.stale_if_error])
            .flatten()
            .chain([defaults.stale_while_revalidate, defaults.stale_if_error])
            .max()
            .unwrap_or_default();
        let longest_lease = self
            .policies
            .iter()
            .filter_map(|p| p.lease_ttl)
            .chain([self.read_through.lease_ttl])
            .max()
            .unwrap_or_default();
        let longest_life = self.limits.max_ttl + longest_stale + longest_lease;
        if self.store.version_retention < longest_life {
            return ConfigError::fail(format!(
                "store.version_retention_secs ({} s) must cover limits.max_ttl_secs + the longest stale window + \
                 the longest lease TTL ({} s)",
                self.store.version_retention.as_secs(),
                longest_life.as_secs_f64().ceil()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
