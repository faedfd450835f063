//! The sections of the database side: loader routes, the built-in Postgres loader's pool, and the Postgres
//! outbox that turns committed row changes into invalidations.

use super::duration::millis;
use crate::error::ConfigError;
use crate::keys::{Key, Pattern};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// One loader route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Key pattern this loader fills, e.g. `user:*`.
    pub pattern: String,
    /// `grpc` (a LoaderService the caller implements) or `postgres` (the built-in loader).
    pub kind: LoaderKind,
    /// gRPC: the LoaderService endpoint, e.g. `http://127.0.0.1:50052`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Postgres: SQL returning one text or bytea column for `$1` = the key's id, e.g.
    /// `SELECT row_to_json(u)::text FROM users u WHERE id = $1`. An integer `$1` gets the id parsed as one.
    #[serde(default)]
    pub query: Option<String>,
    /// Postgres, optional: SQL returning (id text, value) rows for `$1` = an array of ids, e.g.
    /// `SELECT id::text, row_to_json(u)::text FROM users u WHERE id = ANY($1)`. Serves BatchGet's misses in one
    /// query; without it each miss runs `query`.
    #[serde(default)]
    pub batch_query: Option<String>,
    /// `timeout_ms`: timeout of one load. Default 2000 ms.
    #[serde(
        rename = "timeout_ms",
        with = "millis",
        default = "LoaderConfig::default_timeout"
    )]
    pub timeout: Duration,
    /// Most loads in flight at once through this loader (per replica). Default 64. Give each entity its own
    /// route to bound loads per entity.
    #[serde(default = "LoaderConfig::default_max_concurrency")]
    pub max_concurrency: usize,
    /// Consecutive failed loads (errors and timeouts) that open this route's circuit breaker. Default 5.
    #[serde(default = "LoaderConfig::default_breaker_failures")]
    pub breaker_failures: u32,
    /// `breaker_cooldown_ms`: how long the open breaker refuses loads before one probe. Default 1000 ms.
    /// Meanwhile misses are answered from stale entries (stale_if_error) or UNAVAILABLE / LOADER_FAILED at once.
    #[serde(
        rename = "breaker_cooldown_ms",
        with = "millis",
        default = "LoaderConfig::default_breaker_cooldown"
    )]
    pub breaker_cooldown: Duration,
    /// gRPC over TLS (`https://` endpoints): PEM CA bundle to verify the loader with. Unset: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

/// Which loader implementation a route uses.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoaderKind {
    /// The caller's LoaderService over gRPC.
    Grpc,
    /// The built-in Postgres loader.
    Postgres,
}

impl LoaderConfig {
    /// A route of `kind` for `pattern` with every optional field at its default.
    pub fn new(pattern: &str, kind: LoaderKind) -> LoaderConfig {
        LoaderConfig {
            pattern: pattern.into(),
            kind,
            endpoint: None,
            query: None,
            batch_query: None,
            timeout: Self::default_timeout(),
            max_concurrency: Self::default_max_concurrency(),
            breaker_failures: Self::default_breaker_failures(),
            breaker_cooldown: Self::default_breaker_cooldown(),
            tls_ca_file: None,
        }
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(2)
    }

    fn default_max_concurrency() -> usize {
        64
    }

    fn default_breaker_failures() -> u32 {
        5
    }

    fn default_breaker_cooldown() -> Duration {
        Duration::from_secs(1)
    }

    /// Checks this route alone; `postgres_url_set` and `lease_ttl` come from the sections it depends on.
    pub(super) fn validate(
        &self,
        max_key_bytes: usize,
        postgres_url_set: bool,
        lease_ttl: Duration,
    ) -> Result<(), ConfigError> {
        let name = &self.pattern;
        if let Err(e) = Pattern::parse(name, max_key_bytes, true) {
            return ConfigError::fail(format!("loader {name:?}: {e}"));
        }
        let complete = match self.kind {
            LoaderKind::Grpc => self.endpoint.is_some(),
            LoaderKind::Postgres => self.query.is_some() && postgres_url_set,
        };
        if !complete {
            return ConfigError::fail(format!(
                "loader {name:?}: kind grpc needs endpoint; kind postgres needs query and postgres.url"
            ));
        }
        if self.timeout >= lease_ttl {
            return ConfigError::fail(format!(
                "loader {name:?}: timeout_ms must be below read_through.lease_ttl_ms, or a slow load outlives its lease"
            ));
        }
        if self.timeout.is_zero() || self.max_concurrency == 0 {
            return ConfigError::fail(format!(
                "loader {name:?}: timeout_ms and max_concurrency must be positive"
            ));
        }
        Ok(())
    }
}

/// The Postgres loader's connection pool (the outbox uses the same database).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style connection string, e.g. `host=127.0.0.1 port=5432 user=app dbname=app`. Required when a
    /// loader has kind `postgres`.
    pub url: Option<String>,
    /// A file holding `url` (a connection string with its password, from a mounted Secret), read verbatim but
    /// for one trailing line ending. Setting both is refused.
    pub url_file: Option<PathBuf>,
    /// Connections in the pool. Default 8.
    pub pool_size: usize,
    /// PEM CA bundle for TLS to Postgres. When set, connections use TLS as `sslmode` in `url` asks
    /// (`sslmode=require` to insist on it); unset, connections are plain.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            url_file: None,
            pool_size: 8,
            tls_ca_file: None,
        }
    }
}

/// The Postgres outbox listener (uses `postgres.url`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Listen for outbox rows and apply them. Default false.
    pub enabled: bool,
    /// Rows applied per transaction. Default 500.
    pub batch_size: i64,
    /// `poll_interval_ms`: safety poll of the outbox, in case a NOTIFY is missed. Default 1000 ms.
    #[serde(rename = "poll_interval_ms", with = "millis")]
    pub poll_interval: Duration,
    /// Which keys and patterns each table's changed row invalidates.
    pub tables: Vec<OutboxTable>,
    /// Namespaces (auth tokens' tenants) whose copies of those keys are invalidated too, besides the default
    /// namespace. Default none. With auth on, list every namespace that caches these tables' rows.
    pub namespaces: Vec<String>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            enabled: false,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            tables: Vec::new(),
            namespaces: Vec::new(),
        }
    }
}

impl OutboxConfig {
    /// Checks the section; keys and patterns are checked against the same limits the API applies.
    pub(super) fn validate(
        &self,
        max_key_bytes: usize,
        allow_cross_entity_patterns: bool,
        postgres_url_set: bool,
    ) -> Result<(), ConfigError> {
        if self.enabled && !postgres_url_set {
            return ConfigError::fail("outbox.enabled needs postgres.url");
        }
        if let Some(bad) = self
            .namespaces
            .iter()
            .find(|ns| !crate::keys::is_namespace(ns))
        {
            return ConfigError::fail(format!(
                "outbox.namespaces: {bad:?} is not a namespace name ([A-Za-z0-9_.-], 1-64)"
            ));
        }
        for table in &self.tables {
            table.validate(max_key_bytes, allow_cross_entity_patterns)?;
        }
        Ok(())
    }
}

/// One table's mapping from a changed row to cache keys.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboxTable {
    /// Table name (in the search path), e.g. `users`.
    pub table: String,
    /// Column holding the row id. Default `id`.
    #[serde(default = "OutboxTable::default_id_column")]
    pub id_column: String,
    /// Keys to invalidate; `{id}` is replaced by the row id, e.g. `user:{id}`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Patterns to invalidate; `{id}` is replaced by the row id, e.g. `user:{id}:*` or `posts:page:*`.
    #[serde(default)]
    pub patterns: Vec<String>,
}

impl OutboxTable {
    fn default_id_column() -> String {
        "id".into()
    }

    fn validate(&self, max_key_bytes: usize, allow_cross_entity: bool) -> Result<(), ConfigError> {
        let name = &self.table;
        let sample = |template: &str| template.replace("{id}", "1");
        for key in &self.keys {
            if let Err(e) = Key::parse(&sample(key), max_key_bytes) {
                return ConfigError::fail(format!("outbox table {name:?}: {e}"));
            }
        }
        for pattern in &self.patterns {
            if let Err(e) = Pattern::parse(&sample(pattern), max_key_bytes, allow_cross_entity) {
                return ConfigError::fail(format!("outbox table {name:?}: {e}"));
            }
        }
        // Unquoted identifiers, as Postgres folds them: what the trigger reports as TG_TABLE_NAME.
        let plain = |s: &str| {
            let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
            !s.is_empty() && s.chars().all(allowed)
        };
        if !plain(&self.table) || !plain(&self.id_column) {
            return ConfigError::fail(format!(
                "outbox table {name:?}: table and id_column must be lowercase identifiers ([a-z0-9_])"
            ));
        }
        Ok(())
    }
}
