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

    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,

    /// Address of the Prometheus /metrics endpoint [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// What to do; serving is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve cachecoord.v1 (the default).
    Serve,
    /// Validate the configuration (file, environment, flags), print it as TOML, and exit.
    CheckConfig,
    /// Install the Postgres outbox (table, trigger function, and a trigger on every `[[outbox.tables]]` table)
    /// into the database at `postgres.url`, then exit. Idempotent.
    Migrate,
    /// Read a bearer token from stdin and print the SHA-256 the tokens file stores for it.
    HashToken,
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
    /// Loaders that fill misses, matched against the key in order; the first match wins. Keys no loader matches
    /// are plain cache entries: a miss stays a miss.
    pub loaders: Vec<LoaderConfig>,
    /// Connection pool for the built-in Postgres loader.
    pub postgres: PostgresConfig,
    /// Leases, waiting and the Redis circuit breaker.
    pub read_through: ReadThroughConfig,
    /// Invalidation driven by Postgres row changes.
    pub outbox: OutboxConfig,
    /// The per-replica in-process near-cache.
    pub near_cache: NearCacheConfig,
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

/// Bearer-token authentication.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a bearer token on every CacheService call. Default false (local runs); the Helm chart's
    /// production values turn it on. Health and reflection never need one.
    pub enabled: bool,
    /// TOML file of `[[tokens]]` (name, namespace, sha256, read, write, invalidate); see
    /// config/tokens.example.toml. Required when enabled. Re-read when it changes.
    pub tokens_file: Option<PathBuf>,
    /// How often the tokens file is checked for changes, in ms. Default 5000.
    pub reload_interval_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            tokens_file: None,
            reload_interval_ms: 5000,
        }
    }
}

/// TLS on the gRPC port. Both files set turns it on.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
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
}

/// Keys for encrypting entries at rest.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Directory holding one file per key: the file name is the key id, the content 64 hex digits (32 bytes for
    /// AES-256-GCM). A Kubernetes Secret mounted as a volume has exactly this shape.
    pub keys_dir: Option<PathBuf>,
    /// Id of the key new entries are encrypted with. Older keys stay in the directory until the entries they
    /// encrypted have expired.
    pub active_key: Option<String>,
}

/// What must never be cached: keys and JSON field names containing these words (case-insensitive).
#[derive(Clone, Debug, Deserialize, Serialize)]
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

/// Logs, metrics and traces.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the Prometheus `/metrics` endpoint. Default `127.0.0.1:9464`; the chart sets `0.0.0.0:9464`.
    /// Unset (empty in the environment) turns it off.
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

/// Draining on SIGTERM/SIGINT.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After the signal, health says NOT_SERVING but calls are still accepted for this long (ms), so load
    /// balancers stop sending new ones first. Default 0; the chart sets 5000.
    pub drain_delay_ms: u64,
    /// Then in-flight calls get this long (ms) to finish before the process exits anyway. Default 20000. Keep
    /// the pod's terminationGracePeriodSeconds above drain delay + grace period.
    pub grace_period_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_delay_ms: 0,
            grace_period_ms: 20_000,
        }
    }
}

/// The near-cache: hot keys of opted-in entities answered from this replica's memory, kept coherent by notices
/// over Redis pub/sub.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NearCacheConfig {
    /// Memory budget in bytes; 0 turns the near-cache off. Default 0. Entities opt in with
    /// `near_cache_ttl_secs` in their policy.
    pub max_bytes: u64,
    /// How often this replica checks its own subscription by publishing a heartbeat, in ms. Default 200.
    pub heartbeat_ms: u64,
    /// Without hearing its own heartbeat for this long (ms), the replica stops serving from the near-cache (it
    /// may be missing invalidations) until it hears one again, after flushing. Default 1000.
    pub deaf_after_ms: u64,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        NearCacheConfig {
            max_bytes: 0,
            heartbeat_ms: 200,
            deaf_after_ms: 1000,
        }
    }
}

/// The Postgres outbox listener (uses `postgres.url`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Listen for outbox rows and apply them. Default false.
    pub enabled: bool,
    /// Rows applied per transaction. Default 500.
    pub batch_size: i64,
    /// Safety poll of the outbox in milliseconds, in case a NOTIFY is missed. Default 1000.
    pub poll_interval_ms: u64,
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
            poll_interval_ms: 1000,
            tables: Vec::new(),
            namespaces: Vec::new(),
        }
    }
}

/// One table's mapping from a changed row to cache keys.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboxTable {
    /// Table name (in the search path), e.g. `users`.
    pub table: String,
    /// Column holding the row id. Default `id`.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// Keys to invalidate; `{id}` is replaced by the row id, e.g. `user:{id}`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Patterns to invalidate; `{id}` is replaced by the row id, e.g. `user:{id}:*` or `posts:page:*`.
    #[serde(default)]
    pub patterns: Vec<String>,
}

fn default_id_column() -> String {
    "id".into()
}

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
    /// Timeout of one load, in milliseconds. Default 2000.
    #[serde(default = "default_loader_timeout_ms")]
    pub timeout_ms: u64,
    /// Most loads in flight at once through this loader (per replica). Default 64. Give each entity its own
    /// route to bound loads per entity.
    #[serde(default = "default_loader_concurrency")]
    pub max_concurrency: usize,
    /// Consecutive failed loads (errors and timeouts) that open this route's circuit breaker. Default 5.
    #[serde(default = "default_loader_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the open breaker refuses loads before one probe, in ms. Default 1000. Meanwhile misses are
    /// answered from stale entries (stale_if_error) or UNAVAILABLE / LOADER_FAILED at once.
    #[serde(default = "default_loader_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
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

fn default_loader_timeout_ms() -> u64 {
    2000
}

fn default_loader_concurrency() -> usize {
    64
}

fn default_loader_breaker_failures() -> u32 {
    5
}

fn default_loader_breaker_cooldown_ms() -> u64 {
    1000
}

/// The Postgres loader's connection pool.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style connection string, e.g. `host=127.0.0.1 port=5432 user=app dbname=app`. Required when a
    /// loader has kind `postgres`.
    pub url: Option<String>,
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
            pool_size: 8,
            tls_ca_file: None,
        }
    }
}

/// How misses are loaded: leases, waiting for another loader, retries, and the Redis circuit breaker.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadThroughConfig {
    /// Elect one loader per key across replicas with a Redis lease, and let an invalidation void a load in
    /// flight. Default true. Turning it off is for comparison only: loads may then write stale values back.
    pub leases: bool,
    /// Lease lifetime in milliseconds. Default 10000. A holder that dies frees the key after this long; keep it
    /// above the slowest loader timeout.
    pub lease_ttl_ms: u64,
    /// How long a caller waits for another replica's load, in milliseconds, before loading itself (uncached).
    /// Default 5000.
    pub lease_wait_ms: u64,
    /// Safety poll while waiting, in milliseconds: fills are announced by pub/sub, and this catches a lost
    /// announcement or an expired lease. Default 50.
    pub lease_poll_ms: u64,
    /// Loads retried when an invalidation voided them, before the last value is served uncached. Default 3.
    pub max_voided_retries: u32,
    /// Consecutive failures of one Redis node that open its circuit breaker. Default 5. Each node has its own,
    /// so a failing primary does not take the healthy ones out of service.
    pub breaker_failures: u32,
    /// How long an open node breaker keeps calls away from its node (Gets go to the loader, writes fail fast)
    /// before one probe, in milliseconds. Default 1000.
    pub breaker_cooldown_ms: u64,
}

impl Default for ReadThroughConfig {
    fn default() -> Self {
        ReadThroughConfig {
            leases: true,
            lease_ttl_ms: 10_000,
            lease_wait_ms: 5_000,
            lease_poll_ms: 50,
            max_voided_retries: 3,
            breaker_failures: 5,
            breaker_cooldown_ms: 1_000,
        }
    }
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
    /// Redis ACL user (AUTH username). Unset: the URL's user, if any.
    pub redis_username: Option<String>,
    /// Redis password; set it from a Secret via `CACHECOORD_STORE__REDIS_PASSWORD`. Unset: the URL's.
    pub redis_password: Option<String>,
    /// PEM CA bundle to verify Redis's certificate with TLS (`rediss://`). Unset: the system roots.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// How often the cluster slot map is re-read, in ms. Default 1000. A node failure or redirection also
    /// triggers a refresh at once, so a promoted replica takes traffic within ~100 ms of being seen.
    pub redis_topology_refresh_ms: u64,
    /// Replicas that must acknowledge an Invalidate or InvalidatePattern (Redis `WAIT`) before it is answered,
    /// so it survives a failover of its primary. Default 1; capped by the replicas each primary has (0 on a
    /// server without replicas); 0 turns the wait off.
    pub invalidation_replica_acks: usize,
    /// How long an invalidation waits for those acknowledgements, in ms, before answering UNAVAILABLE (retry).
    /// Default 500.
    pub replica_ack_timeout_ms: u64,
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
    /// Most wildcards (`*`, `?`) in one pattern. Default 8.
    pub max_pattern_wildcards: usize,
    /// Most CacheService calls in flight on this replica; the next is refused at once with RESOURCE_EXHAUSTED
    /// (reason TOO_MANY_IN_FLIGHT) rather than queued. Default 4096.
    pub max_in_flight: usize,
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
    /// How long a loader's "not found" is remembered, in seconds. Default 30.
    pub negative_ttl_secs: u64,
    /// After its TTL, an entry is still served (source STALE) for this many seconds while one background load
    /// refreshes it. Default 0 (off).
    pub stale_while_revalidate_secs: u64,
    /// After its TTL, an entry is served (source STALE) for this many seconds when its loader fails. Default 0.
    pub stale_if_error_secs: u64,
    /// XFetch β: a hit refreshes early, in the background, with probability rising as expiry nears, scaled by how
    /// long the last load took. 1.0 is the paper's optimum; 0 turns early refresh off. Default 1.0.
    pub xfetch_beta: f64,
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
    /// Overrides `policy_defaults.negative_ttl_secs` for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_ttl_secs: Option<u64>,
    /// Overrides `policy_defaults.stale_while_revalidate_secs` for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate_secs: Option<u64>,
    /// Overrides `policy_defaults.stale_if_error_secs` for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error_secs: Option<u64>,
    /// Overrides `policy_defaults.xfetch_beta` for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfetch_beta: Option<f64>,
    /// Opts this policy's keys into the near-cache, holding each for at most this many seconds (never past its
    /// TTL). Unset: never near-cached. Another replica's invalidation reaches this one within the pub/sub delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near_cache_ttl_secs: Option<u64>,
    /// Marks the entity's keys as sensitive: they are redacted from logs and traces. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
    /// Stores the entity's values encrypted (AES-256-GCM, key from `encryption`). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypt: bool,
}

impl PolicyConfig {
    /// A policy with only a name, a pattern and a TTL; every other field takes the defaults.
    pub fn new(name: &str, pattern: &str, ttl_secs: u64) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            pattern: pattern.into(),
            ttl_secs,
            negative_ttl_secs: None,
            stale_while_revalidate_secs: None,
            stale_if_error_secs: None,
            xfetch_beta: None,
            near_cache_ttl_secs: None,
            sensitive: false,
            encrypt: false,
        }
    }
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
            loaders: Vec::new(),
            postgres: PostgresConfig::default(),
            read_through: ReadThroughConfig::default(),
            outbox: OutboxConfig::default(),
            near_cache: NearCacheConfig::default(),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig::default(),
            sensitive_data: SensitiveDataConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            encryption: EncryptionConfig::default(),
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
            redis_username: None,
            redis_password: None,
            redis_tls_ca_file: None,
            redis_topology_refresh_ms: 1000,
            invalidation_replica_acks: 1,
            replica_ack_timeout_ms: 500,
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
            max_pattern_wildcards: 8,
            max_in_flight: 4096,
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
            negative_ttl_secs: 30,
            stale_while_revalidate_secs: 0,
            stale_if_error_secs: 0,
            xfetch_beta: 1.0,
        }
    }
}

/// The seed table: list and pagination keys 15 min, user data 1 h, posts 30 min, settings 24 h. List patterns
/// come first because the first match wins.
fn seed_policies() -> Vec<PolicyConfig> {
    let policy = PolicyConfig::new;
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
        if cli.log_json {
            figment = figment.merge(Serialized::default("telemetry.log_json", true));
        }
        if let Some(addr) = cli.metrics_addr {
            figment = figment.merge(Serialized::default("telemetry.metrics_addr", addr));
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
        for loader in &self.loaders {
            if let Err(e) = Pattern::parse(&loader.pattern, self.limits.max_key_bytes, true) {
                return fail(format!("loader {:?}: {e}", loader.pattern));
            }
            let complete = match loader.kind {
                LoaderKind::Grpc => loader.endpoint.is_some(),
                LoaderKind::Postgres => loader.query.is_some() && self.postgres.url.is_some(),
            };
            if !complete {
                return fail(format!(
                    "loader {:?}: kind grpc needs endpoint; kind postgres needs query and postgres.url",
                    loader.pattern
                ));
            }
            if loader.timeout_ms >= self.read_through.lease_ttl_ms {
                return fail(format!(
                    "loader {:?}: timeout_ms must be below read_through.lease_ttl_ms, or a slow load outlives its lease",
                    loader.pattern
                ));
            }
            if loader.timeout_ms == 0 || loader.max_concurrency == 0 {
                return fail(format!(
                    "loader {:?}: timeout_ms and max_concurrency must be positive",
                    loader.pattern
                ));
            }
        }
        if self.outbox.enabled && self.postgres.url.is_none() {
            return fail("outbox.enabled needs postgres.url".into());
        }
        if let Some(bad) = self
            .outbox
            .namespaces
            .iter()
            .find(|ns| !crate::keys::is_namespace(ns))
        {
            return fail(format!(
                "outbox.namespaces: {bad:?} is not a namespace name ([A-Za-z0-9_.-], 1-64)"
            ));
        }
        for table in &self.outbox.tables {
            let sample = |template: &str| template.replace("{id}", "1");
            for key in &table.keys {
                if let Err(e) = crate::keys::Key::parse(&sample(key), self.limits.max_key_bytes) {
                    return fail(format!("outbox table {:?}: {e}", table.table));
                }
            }
            for pattern in &table.patterns {
                let allow = self.invalidation.allow_cross_entity_patterns;
                if let Err(e) = Pattern::parse(&sample(pattern), self.limits.max_key_bytes, allow) {
                    return fail(format!("outbox table {:?}: {e}", table.table));
                }
            }
            // Unquoted identifiers, as Postgres folds them: what the trigger reports as TG_TABLE_NAME.
            let plain = |s: &str| {
                let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
                !s.is_empty() && s.chars().all(allowed)
            };
            if !plain(&table.table) || !plain(&table.id_column) {
                return fail(format!(
                    "outbox table {:?}: table and id_column must be lowercase identifiers ([a-z0-9_])",
                    table.table
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.trace_sampling_ratio) {
            return fail("telemetry.trace_sampling_ratio must be within 0.0..=1.0".into());
        }
        let rt = &self.read_through;
        if rt.lease_ttl_ms == 0 || rt.lease_poll_ms == 0 || rt.breaker_failures == 0 {
            return fail(
                "read_through.lease_ttl_ms, lease_poll_ms and breaker_failures must be positive"
                    .into(),
            );
        }
        if self.auth.enabled && self.auth.tokens_file.is_none() {
            return fail("auth.enabled needs auth.tokens_file".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return fail("tls.cert_file and tls.key_file go together".into());
        }
        if self.tls.client_ca_file.is_some() && self.tls.cert_file.is_none() {
            return fail(
                "tls.client_ca_file (mutual TLS) needs tls.cert_file and tls.key_file".into(),
            );
        }
        if self.limits.max_in_flight == 0 {
            return fail("limits.max_in_flight must be positive".into());
        }
        let encrypting = self.policies.iter().any(|p| p.encrypt);
        let keys = &self.encryption;
        if encrypting && (keys.keys_dir.is_none() || keys.active_key.is_none()) {
            return fail(
                "a policy sets encrypt = true: encryption.keys_dir and encryption.active_key are required".into(),
            );
        }
        if let Some(url) = &self.store.redis_url {
            let known = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
            ];
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
