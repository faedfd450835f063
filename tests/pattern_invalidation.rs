//! Pattern invalidation at scale on clusters of the test's own: its cost follows the keys it matches, not the
//! keyspace (timings printed, not asserted), and under memory pressure with eviction no matching key survives.

mod support;

use cachecoord::proto::{BatchGetRequest, BatchSetRequest, InvalidatePatternRequest, SetRequest};
use fred::prelude::{Builder, ClientLike, Config as FredConfig, KeysInterface};
use std::time::{Duration, Instant};
use support::cluster::{RedisCluster, redis_cli};
use support::{Client, TestServer, config_on};

fn entry(key: String, value: &[u8]) -> SetRequest {
    SetRequest {
        key,
        value: value.to_vec().into(),
        ttl: None,
        version: None,
        lease_token: Default::default(),
    }
}

async fn write(client: &mut Client, keys: &[String], value: &[u8]) {
    for chunk in keys.chunks(1000) {
        let entries = chunk.iter().map(|k| entry(k.clone(), value)).collect();
        client.batch_set(BatchSetRequest { entries }).await.unwrap();
    }
}

async fn invalidate(client: &mut Client, pattern: String) -> (u64, Duration) {
    let started = Instant::now();
    let deleted = client
        .invalidate_pattern(InvalidatePatternRequest { pattern })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    (deleted, started.elapsed())
}

async fn found(client: &mut Client, keys: &[String]) -> usize {
    let mut found = 0;
    for chunk in keys.chunks(1000) {
        let request = BatchGetRequest {
            keys: chunk.to_vec(),
            cache_only: true,
            lease: false,
        };
        let results = client
            .batch_get(request)
            .await
            .unwrap()
            .into_inner()
            .results;
        found += results.iter().filter(|r| r.found).count();
    }
    found
}

fn dbsize(cluster: &RedisCluster) -> u64 {
    cluster
        .primaries()
        .iter()
        .map(|port| {
            redis_cli(*port, &["dbsize"])
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}

/// InvalidatePattern of 1,000 keys of one `{entity}:{id}` group takes about as long in a 1,000,000-key cluster as
/// in a 10,000-key one; the cross-group SCAN path, for contrast, grows with the keyspace. Prints both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_invalidation_cost_follows_matches_not_keyspace() {
    let cluster = RedisCluster::start_async(&[]).await;
    let filler = Builder::from_config(FredConfig::from_url(&cluster.url()).unwrap())
        .build()
        .unwrap();
    filler.init().await.unwrap();
    let mut config = config_on(&cluster);
    config.store.redis_command_timeout = std::time::Duration::from_secs(30);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let mut report = Vec::new();
    let mut filled = 0u64;
    for (size_label, target) in [("10k", 10_000u64), ("1M", 1_000_000u64)] {
        // Filler keys in chunks of 1,000 sharing a hash tag, so each chunk is one MSET.
        let chunks: Vec<u64> = (filled / 1000..target / 1000).collect();
        for batch in chunks.chunks(32) {
            let sets = batch.iter().map(|chunk| {
                let pairs: Vec<(String, &str)> = (0..1000)
                    .map(|i| (format!("{{filler:{chunk}}}:{i}"), "x"))
                    .collect();
                filler.mset(pairs)
            });
            futures::future::try_join_all(sets).await.unwrap();
        }
        filled = target;
        let keyspace = dbsize(&cluster);

        let mut group_times = Vec::new();
        let mut scan_times = Vec::new();
        for round in 0..3 {
            let group: Vec<String> = (0..1000)
                .map(|i| format!("user:{size_label}r{round}:f{i}"))
                .collect();
            write(&mut client, &group, b"v").await;
            let (deleted, took) =
                invalidate(&mut client, format!("user:{size_label}r{round}:*")).await;
            assert_eq!(deleted, 1000);
            assert_eq!(found(&mut client, &group).await, 0);
            group_times.push(took);

            let spread: Vec<String> = (0..1000)
                .map(|i| format!("user:{size_label}s{round}x{i}:p"))
                .collect();
            write(&mut client, &spread, b"v").await;
            let (deleted, took) =
                invalidate(&mut client, format!("user:{size_label}s{round}x*:p")).await;
            assert_eq!(deleted, 1000);
            scan_times.push(took);
        }
        group_times.sort();
        scan_times.sort();
        report.push((size_label, keyspace, group_times[1], scan_times[1]));
    }

    println!("\nInvalidatePattern of 1,000 keys (median of 3, debug build, loopback 3+3 cluster):");
    println!(
        "| keyspace | Redis keys | one group (`user:ID:*`) | across groups (`user:ID*:p`, SCAN) |"
    );
    println!("|---|---|---|---|");
    for (label, keys, group, scan) in &report {
        println!("| {label} | {keys} | {group:?} | {scan:?} |");
    }
    let ratio = report[1].2.as_secs_f64() / report[0].2.as_secs_f64();
    println!("one-group ratio 1M / 10k: {ratio:.2}");
    drop(cluster);
}

/// Redis near its maxmemory with allkeys-lru evicts values and bookkeeping alike; pattern invalidation may then
/// drop more than asked, but no matching key ever survives. A group whose index is lost outright (deleted here,
/// as eviction would) is dropped whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_key_survives_eviction() {
    let cluster =
        RedisCluster::start_async(&["--maxmemory", "6mb", "--maxmemory-policy", "allkeys-lru"])
            .await;
    let config = config_on(&cluster);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let groups: Vec<Vec<String>> = (0..200)
        .map(|g| (0..20).map(|i| format!("user:g{g}:k{i}")).collect())
        .collect();
    let all: Vec<String> = groups.iter().flatten().cloned().collect();
    let value = vec![7u8; 512];
    write(&mut client, &all, &value).await;
    // Push well past 3 × 6 MB so LRU eviction runs on every primary, over values and bookkeeping alike.
    let filler: Vec<String> = (0..40_000).map(|i| format!("posts:f{i}")).collect();
    write(&mut client, &filler, &value).await;
    let evicted: u64 = cluster
        .primaries()
        .iter()
        .map(|port| {
            redis_cli(*port, &["info", "stats"])
                .lines()
                .find_map(|l| l.strip_prefix("evicted_keys:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    println!("evicted keys: {evicted}");
    assert!(
        evicted > 0,
        "the test must actually run Redis into eviction"
    );

    // Rewrite half the groups so they are certainly present, then invalidate every group by pattern.
    let rewritten: Vec<String> = groups[..100].iter().flatten().cloned().collect();
    write(&mut client, &rewritten, &value).await;
    for g in 0..200 {
        invalidate(&mut client, format!("user:g{g}:*")).await;
    }
    assert_eq!(
        found(&mut client, &all).await,
        0,
        "a matching key survived its pattern invalidation"
    );

    // The index of a live group lost outright: the whole group goes, never less than asked.
    let lost: Vec<String> = (0..20).map(|i| format!("user:lost:k{i}")).collect();
    write(&mut client, &lost, b"v").await;
    let port = cluster.ports[0];
    assert_eq!(
        redis_cli(port, &["-c", "DEL", "{user:lost}#index"]).trim(),
        "1"
    );
    invalidate(&mut client, "user:lost:k1*".into()).await;
    assert_eq!(found(&mut client, &lost).await, 0);
    drop(cluster);
}
