//! Command-line flags and subcommands (clap). Each flag overrides the file and the environment.

use clap::Parser;
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
