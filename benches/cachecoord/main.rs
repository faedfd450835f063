//! The benchmark: cachecoord side by side with its floor (a gRPC health check against the same server) and its
//! alternative (fred straight to the same Redis Cluster), measured in one run on one machine, reported as
//! figures and as ratios against those baselines.
//!
//!     cargo bench --bench cachecoord              # full run (a few minutes)
//!     cargo bench --bench cachecoord -- --quick   # CI smoke, well under 2 minutes
//!     cargo bench --bench cachecoord -- --quick --strict-only   # only strict near-cache write cost
//!     cargo bench --bench cachecoord -- --stampedes-only        # only the four cold-key stampedes
//!
//! It starts what it needs on loopback — a 3 + 3 Redis Cluster, the release `cachecoord` binary as separate
//! server processes (so their peak RSS is their own), a LoaderService with configurable latency — using the
//! integration tests' support code. Closed loop, fixed concurrency per scenario. Writes a markdown table to
//! stdout and `bench/results/latest.md`, JSON to `bench/results/latest.json`, and an SVG chart to
//! `bench/results/latest.svg`.

//!
//! Layout: `scenarios` (the steady scenarios on one server), `storms` (stampede and expiry storm on servers of
//! their own), `strict` (write cost of strict near-cache mode at 1, 3 and 10 members), `measure` (the closed loop
//! and its percentiles), `report` (table, targets, JSON, SVG).

#[path = "../../tests/support/mod.rs"]
mod support;

mod measure;
mod report;
mod scenarios;
mod storms;
mod strict;

use std::time::Duration;
use support::cluster::RedisCluster;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    eprintln!(
        "cachecoord benchmark ({} mode): starting a 3 + 3 Redis Cluster",
        if quick { "quick" } else { "full" }
    );
    let cluster = RedisCluster::start_async(&[]).await;
    // One group of scenarios alone, its rows printed: for measuring one change without the whole run.
    let only = if std::env::args().any(|a| a == "--strict-only") {
        Some(strict::strict_writes(&cluster, quick).await)
    } else if std::env::args().any(|a| a == "--stampedes-only") {
        Some(stampedes(&cluster, quick).await)
    } else {
        None
    };
    if let Some(figures) = only {
        for f in figures {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                f.name,
                f.concurrency,
                f.per_second,
                f.p50_us,
                f.p99_us,
                f.p999_us,
                f.errors,
                f.note
            );
        }
        return;
    }
    let steady = scenarios::steady(&cluster, quick).await;
    let mut results = steady.results;
    results.extend(stampedes(&cluster, quick).await);
    let storm_for = Duration::from_secs(if quick { 5 } else { 12 });
    results.push(storms::expiry_storm(&cluster, true, 2000, storm_for).await);
    results.push(storms::expiry_storm(&cluster, false, 2000, storm_for).await);
    drop(steady.server);
    results.extend(strict::strict_writes(&cluster, quick).await);

    report::report(
        &results,
        steady.server_peak_rss_mib,
        steady.server_idle_rss_mib,
        quick,
    );
}

/// The four stampedes on cold keys: through a loader and through the callers' own loop, with leases and without.
async fn stampedes(cluster: &RedisCluster, quick: bool) -> Vec<measure::Figures> {
    let (replicas, callers, keys) = if quick { (2, 20, 5) } else { (3, 100, 20) };
    vec![
        storms::stampede(cluster, true, replicas, callers, keys).await,
        storms::stampede(cluster, false, replicas, callers, keys).await,
        storms::cache_aside_stampede(cluster, true, replicas, callers, keys).await,
        storms::cache_aside_stampede(cluster, false, replicas, callers, keys).await,
    ]
}
