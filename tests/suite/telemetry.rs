//! What operators watch: per-entity counters and hit ratio on /metrics after a scripted mix of hits, misses,
//! loads and stale serves for two entities, with the Stats RPC agreeing.

use crate::support::cluster::RedisCluster;
use crate::support::loader::TestLoader;
use crate::support::process::{ServerProcess, metric};
use crate::support::{cached, get, unique};
use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{Source, StatsRequest};
use std::time::Duration;

/// Entity `user` gets 2 hits, 1 load and 1 miss; entity `brief` (1 s TTL, 300 s stale-while-revalidate) gets 1
/// load, 1 hit and 1 stale serve. /metrics and Stats both show exactly that, and the hit ratios 0.5 and 2/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_stats_count_every_answer_per_entity() {
    let loader = TestLoader::start().await;
    let cluster = RedisCluster::shared();
    let config = format!(
        r#"
[store]
redis_url = "{}"

[[policies]]
name = "brief"
pattern = "brief:*"
ttl_secs = 1
stale_while_revalidate_secs = 300
xfetch_beta = 0.0

[[policies]]
name = "user"
pattern = "user:*"
ttl_secs = 3600
xfetch_beta = 0.0

{}
{}
"#,
        cluster.url(),
        loader.route_toml("user:*"),
        loader.route_toml("brief:*"),
    );
    let server = ServerProcess::start(&config).await;
    let mut client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let id = unique("");
    let (user, absent, brief) = (
        format!("user:{id}"),
        format!("user:{id}x"),
        format!("brief:{id}"),
    );
    loader.source.put(&user, b"u");
    loader.source.put(&brief, b"b1");
    let sources = [
        get(&mut client, &user).await.source(),
        get(&mut client, &user).await.source(),
        get(&mut client, &user).await.source(),
        cached(&mut client, &absent).await.source(),
    ];
    assert_eq!(
        sources,
        [Source::Loaded, Source::Hit, Source::Hit, Source::Miss]
    );
    let loaded = get(&mut client, &brief).await;
    assert_eq!(loaded.source(), Source::Loaded);
    assert_eq!(get(&mut client, &brief).await.source(), Source::Hit);
    // Expiry is a deadline, not an event: wait out the entry's remaining TTL.
    let left = loaded.ttl_remaining.unwrap();
    tokio::time::sleep(
        Duration::from_secs(left.seconds as u64)
            + Duration::from_nanos(left.nanos as u64)
            + Duration::from_millis(200),
    )
    .await;
    assert_eq!(get(&mut client, &brief).await.source(), Source::Stale);

    let text = server.scrape().await;
    let lookups = |entity: &str, source: &str| {
        metric(
            &text,
            "cachecoord_lookups_total",
            &[("entity", entity), ("source", source)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        [
            lookups("user", "hit"),
            lookups("user", "loaded"),
            lookups("user", "miss")
        ],
        [2.0, 1.0, 1.0],
        "{text}"
    );
    assert_eq!(
        [
            lookups("brief", "hit"),
            lookups("brief", "loaded"),
            lookups("brief", "stale")
        ],
        [1.0, 1.0, 1.0]
    );
    assert_eq!(
        metric(&text, "cachecoord_hit_ratio", &[("entity", "user")]),
        Some(0.5)
    );
    let brief_ratio = metric(&text, "cachecoord_hit_ratio", &[("entity", "brief")]).unwrap();
    assert!((brief_ratio - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        metric(
            &text,
            "cachecoord_requests_total",
            &[("rpc", "Get"), ("code", "Ok")]
        ),
        Some(7.0)
    );
    for histogram in [
        "cachecoord_request_duration_seconds_count",
        "cachecoord_store_duration_seconds_count",
        "cachecoord_loader_duration_seconds_count",
    ] {
        assert!(
            text.contains(histogram),
            "{histogram} missing from /metrics"
        );
    }

    let stats = client
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .entities;
    let user_stats = stats.iter().find(|e| e.entity == "user").unwrap();
    assert_eq!(
        (user_stats.hits, user_stats.loads, user_stats.misses),
        (2, 1, 1)
    );
    assert_eq!(user_stats.hit_ratio, 0.5);
    let brief_stats = stats.iter().find(|e| e.entity == "brief").unwrap();
    assert_eq!(
        (brief_stats.hits, brief_stats.loads, brief_stats.stale),
        (1, 1, 1)
    );
    assert!((brief_stats.hit_ratio - brief_ratio).abs() < 1e-9);
}

/// Three Gets wait on a slow loader: /metrics shows `cachecoord_requests_in_flight` 0 before any call, 3 while
/// they wait, and 0 once they are answered (the autoscaler's load signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_a_gauge() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(1500));
    let server = ServerProcess::start(&loader.route_toml("user:*")).await;
    let scraped = server.scrape().await;
    assert_eq!(
        metric(&scraped, "cachecoord_requests_in_flight", &[]),
        Some(0.0),
        "exported before the first call: {scraped}"
    );
    let client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let mut reads = loader.source.subscribe_reads();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let key = format!("user:{}", unique(&i.to_string()));
            loader.source.put(&key, b"v");
            let mut client = client.clone();
            tokio::spawn(async move { get(&mut client, &key).await })
        })
        .collect();
    for _ in 0..3 {
        reads.recv().await.unwrap();
    }
    let scraped = server.scrape().await;
    assert_eq!(
        metric(&scraped, "cachecoord_requests_in_flight", &[]),
        Some(3.0),
        "{scraped}"
    );
    for call in calls {
        call.await.unwrap();
    }
    // A slot is released when the server drops the response body, just after the client has read it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scraped = server.scrape().await;
        let in_flight = metric(&scraped, "cachecoord_requests_in_flight", &[]);
        if in_flight == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{in_flight:?}: {scraped}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
