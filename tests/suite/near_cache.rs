//! Two replicas with near-caches on the real cluster: an Invalidate acknowledged by replica A stops replica B
//! answering the old value within the pub/sub delay (measured, printed), and a replica whose subscription is
//! killed serves no near-cache hit until it hears again.

use crate::support::cluster::{RedisCluster, redis_cli};
use crate::support::{Client, TestServer, cached as get, config_on, set, unique};
use cachecoord::config::Config;
use cachecoord::proto::{GetResponse, InvalidateRequest, Source};
use std::time::{Duration, Instant};

/// Near-caching `user:*` for a minute, on `cluster`.
fn near_cached_config(cluster: &RedisCluster) -> Config {
    let mut config = config_on(cluster);
    config.near_cache.max_bytes = 16 * 1024 * 1024;
    let user = config
        .policies
        .iter_mut()
        .find(|p| p.name == "user")
        .unwrap();
    user.near_cache_ttl = Some(std::time::Duration::from_secs(60));
    config
}

/// Reads until the answer comes from the near-cache (the replica hears its notices and holds the key).
async fn until_near_hit(client: &mut Client, key: &str) -> GetResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(client, key).await;
        if answer.source() == Source::NearHit {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never became a near-cache hit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Over 200 rounds: B holds the key in its near-cache, A invalidates it, and B is polled until it stops
/// answering the value. Prints the propagation delay's percentiles; asserts only that it always ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidation_on_one_replica_reaches_the_others() {
    let cluster = RedisCluster::shared();
    let (a, b) = (
        TestServer::start_with(near_cached_config(cluster)).await,
        TestServer::start_with(near_cached_config(cluster)).await,
    );
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    let key = format!("user:{}", unique("near"));
    let mut delays = Vec::new();
    for round in 0..200 {
        let value = format!("v{round}");
        set(&mut on_a, &key, value.as_bytes()).await;
        let held = until_near_hit(&mut on_b, &key).await;
        assert_eq!(held.value, value.as_bytes());
        on_a.invalidate(InvalidateRequest {
            keys: vec![key.clone()],
        })
        .await
        .unwrap();
        let acknowledged = Instant::now();
        loop {
            let answer = get(&mut on_b, &key).await;
            if !answer.found {
                break;
            }
            assert_eq!(answer.value, value.as_bytes());
            assert!(
                acknowledged.elapsed() < Duration::from_secs(10),
                "B never dropped {key}"
            );
        }
        delays.push(acknowledged.elapsed());
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
    println!(
        "near-cache invalidation A → B over {} rounds: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        at(0.5),
        at(0.99),
        delays[delays.len() - 1]
    );
}

/// With its pub/sub connections killed, a replica serves no near-cache hit (so it cannot serve a value
/// invalidated while it was deaf) until it has resubscribed and flushed; then near hits resume, fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deaf_replica_serves_nothing_from_its_near_cache() {
    // Killing pub/sub connections would deafen every server on a shared cluster, so this test has its own.
    let cluster = RedisCluster::start_async(&[]).await;
    let (a, b) = (
        TestServer::start_with(near_cached_config(&cluster)).await,
        TestServer::start_with(near_cached_config(&cluster)).await,
    );
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    let key = format!("user:{}", unique("deaf"));
    set(&mut on_a, &key, b"old").await;
    until_near_hit(&mut on_b, &key).await;

    for port in &cluster.ports {
        redis_cli(*port, &["client", "kill", "type", "pubsub"]);
    }
    // B notices at once (connection closed) or within deaf_after_ms (its heartbeat stops coming back).
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&mut on_b, &key).await.source() == Source::NearHit {
        assert!(
            Instant::now() < deadline,
            "B kept serving its near-cache after losing its subscription"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    set(&mut on_a, &key, b"new").await;
    let mut sources = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = get(&mut on_b, &key).await;
        assert_eq!(
            &answer.value[..],
            b"new",
            "B served a value invalidated while it was deaf"
        );
        sources.push(answer.source());
        if answer.source() == Source::NearHit {
            break;
        }
        assert!(Instant::now() < deadline, "B never resubscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "after the kill: {} reads from Redis, then a near-cache hit once B heard again",
        sources.len() - 1
    );
}
