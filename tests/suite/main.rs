//! The black-box tests, one module per behaviour, linked as one test binary (one link of the dependency tree
//! instead of one per file). Run one behaviour with `cargo test --test suite auth::`.
//!
//! The modules run as threads of one process, so they share what a process has: one Redis Cluster and one Postgres
//! (`support::cluster::RedisCluster::shared`, `support::postgres::Postgres::shared`), one tracing subscriber and
//! the port registry. A test that uses fixed key names, or that disturbs every client of the cluster, starts a
//! cluster of its own (`RedisCluster::start`, stopped when it is dropped) so no other test can see its keys or
//! lose its connections. The long drills (the chaos test, pattern invalidation at a million keys) are separate
//! binaries in tests/, sharing the same tests/support.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod alerting;
mod auth;
mod bad_input;
mod budgets;
mod cache_rpcs;
mod caller_leases;
mod certificate_reload;
mod clients;
mod cluster_spread;
mod consistency;
mod discovery;
mod encryption;
mod lease_examples;
mod lifecycle;
mod load_balancing;
mod memory_budget;
mod near_cache;
mod near_cache_coherence;
mod near_cache_strict_acks;
mod near_cache_strict_faults;
mod outbox;
mod postgres_loader;
mod properties;
mod python_client;
mod python_loader;
mod read_through;
mod redaction;
mod redis_health;
mod redis_outage;
mod secret_files;
mod sensitive_data;
mod staleness_sampler;
mod telemetry;
mod test_bed;
mod tls;
mod tracing;
