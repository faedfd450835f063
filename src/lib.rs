//! cachecoord: a gRPC cache-coordination service. Polyglot services call it instead of re-implementing
//! cache-aside; it keeps entries in Redis (standalone or cluster) or in an embedded in-process store.
//!
//! # Layout
//! - [`config`]: the whole configuration tree (defaults → TOML file → `CACHECOORD_*` env → flags), parsed once.
//! - [`keys`]: the key and pattern grammar shared by every layer.
//! - [`api`]: gRPC handlers; proto ↔ domain conversion; [`Error`] → `tonic::Status`.
//! - [`breaker`]: circuit breakers for Redis and for loaders (single probe after each cooldown).
//! - [`auth`]: bearer tokens → a caller with a namespace and read/write/invalidate scopes.
//! - [`cache`]: the coordinator — validation, per-entity policies, the entry envelope. Talks only to traits.
//! - [`store`]: the `Store` trait and its backends, `memory` (embedded default) and `redis` (fred), with leases.
//! - [`loader`]: the `Loader` trait and its backends, `grpc` (the caller's LoaderService) and `postgres`.
//! - [`outbox`]: invalidation from outside the API: the Postgres outbox listener and its migration.
//! - [`telemetry`]: logs (text or JSON) and the Prometheus `/metrics` endpoint, installed once by `main`.
//! - [`tls`]: PEM files → rustls configurations for Redis, Postgres and the gRPC port (reloaded when they change).
//! - [`connections`]: what the gRPC port accepts: TLS handshakes, the connection age limit's hard end.
//! - [`server`]: wires store → coordinator → API with health and reflection, and serves.
//!
//! A request flows `api` → `cache::Coordinator` → `dyn store::Store`; on a miss the coordinator elects one
//! loader per key (in-process singleflight, then a store lease) and calls `dyn loader::Loader`.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod breaker;
pub mod cache;
pub mod config;
pub(crate) mod connections;
pub mod error;
pub mod keys;
pub mod loader;
pub mod outbox;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use error::{Error, Result, StartupError};

/// Code generated from `proto/cachecoord/v1/*.proto`, server and client.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("cachecoord.v1");

    /// The encoded FileDescriptorSet of every cachecoord proto, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cachecoord_descriptor.bin"));
}
