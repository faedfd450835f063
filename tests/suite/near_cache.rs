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

/// Two near-caching replicas on `cluster`: A as the default Redis user, B as `user` (created on every node with
/// every permission), so a test can take pub/sub channels from B alone or find B's connections.
async fn replicas_with_b_as(cluster: &RedisCluster, user: &str) -> (TestServer, TestServer) {
    for port in &cluster.ports {
        redis_cli(
            *port,
            &["ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all"],
        );
    }
    let a = TestServer::start_with(near_cached_config(cluster)).await;
    let mut b_config = near_cached_config(cluster);
    b_config.store.redis_username = Some(user.into());
    b_config.store.redis_password = Some("secret".into());
    (a, TestServer::start_with(b_config).await)
}

/// A replica that cannot hear (its Redis user loses every pub/sub channel: its subscription is dropped and cannot
/// be made again, while its reads and writes go on) stops serving its near-cache within `deaf_after_ms`, by
/// noticing that its own heartbeat no longer comes back, not because a reconnect told it: a value written and
/// acknowledged elsewhere meanwhile is never answered old. Once it hears again it flushes, and near hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_cannot_resubscribe_stops_serving_its_near_cache() {
    let cluster = RedisCluster::start_async(&[]).await;
    let (a, b) = replicas_with_b_as(&cluster, "deaf").await;
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    let key = format!("user:{}", unique("no-channels"));
    set(&mut on_a, &key, b"old").await;
    until_near_hit(&mut on_b, &key).await;
    eprintln!("B near-hits before the revocation");

    for port in &cluster.ports {
        redis_cli(*port, &["ACL", "SETUSER", "deaf", "resetchannels"]);
        redis_cli(*port, &["CLIENT", "KILL", "USER", "deaf", "TYPE", "pubsub"]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut on_b, &key).await.source() == Source::NearHit {
        assert!(
            Instant::now() < deadline,
            "B kept serving its near-cache while it could not hear"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    set(&mut on_a, &key, b"new").await;
    let mut sources = Vec::new();
    for _ in 0..20 {
        let answer = get(&mut on_b, &key).await;
        assert_eq!(
            &answer.value[..],
            b"new",
            "B answered a value overwritten while it was deaf"
        );
        sources.push(answer.source());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sources.iter().all(|s| *s != Source::NearHit),
        "B served near hits while it could not hear: {sources:?}"
    );
    eprintln!("B was deaf and answered the new value from Redis");

    for port in &cluster.ports {
        redis_cli(*port, &["ACL", "SETUSER", "deaf", "allchannels"]);
        redis_cli(*port, &["CLIENT", "KILL", "USER", "deaf", "TYPE", "pubsub"]);
    }
    let heard = until_near_hit(&mut on_b, &key).await;
    assert_eq!(&heard.value[..], b"new");
}

/// Sets `key` through A and waits until B answers it from its near-cache.
async fn until_near_hit_after_set(on_a: &mut Client, on_b: &mut Client, key: &str) {
    set(on_a, key, b"warm").await;
    until_near_hit(on_b, key).await;
}

/// Deafness noticed from silence alone: the node B's subscriber is connected to is frozen (SIGSTOP), so B's
/// subscription neither errs nor reconnects; it just hears nothing. B must stop serving its near-cache once its
/// own heartbeat has not come back for `deaf_after_ms`, so a value written and acknowledged through A meanwhile is
/// never answered old. (With `deaf_after_ms` set to an hour, this test fails: B keeps its near hits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_subscription_turns_the_near_cache_off() {
    let cluster = RedisCluster::start_async(&[]).await;
    let (a, b) = replicas_with_b_as(&cluster, "listener").await;
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    // Once B serves, its subscription is up.
    until_near_hit_after_set(&mut on_a, &mut on_b, &format!("user:{}", unique("warm-up"))).await;
    // The node holding B's subscription: the one listing a pub/sub client of user `listener`.
    let subscribed_on = *cluster
        .ports
        .iter()
        .find(|port| {
            redis_cli(**port, &["CLIENT", "LIST", "TYPE", "pubsub"])
                .lines()
                .any(|line| line.contains("user=listener"))
        })
        .unwrap_or_else(|| {
            let lists: Vec<String> = cluster
                .ports
                .iter()
                .map(|port| redis_cli(*port, &["CLIENT", "LIST"]))
                .collect();
            panic!("no pub/sub client of user listener: {lists:#?}")
        });
    // A key whose primary is another node, so it stays writable while that node is frozen.
    let key = (0..)
        .map(|n| format!("user:{}", unique(&format!("silent{n}"))))
        .find(|key| cluster.primary_of(&format!("{{{key}}}")) != subscribed_on)
        .unwrap();
    set(&mut on_a, &key, b"old").await;
    until_near_hit(&mut on_b, &key).await;

    cluster.pause(subscribed_on);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut still_near = true;
    while Instant::now() < deadline {
        if get(&mut on_b, &key).await.source() != Source::NearHit {
            still_near = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let written = if still_near {
        None
    } else {
        // As clients are told to: retry on UNAVAILABLE (A's notice may first go to the frozen node).
        let mut attempts = 0;
        while let Err(status) = on_a.set(crate::support::set_request(&key, b"new")).await {
            attempts += 1;
            assert!(attempts < 50, "A could not write: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(get(&mut on_b, &key).await)
    };
    cluster.resume(subscribed_on);

    assert!(
        !still_near,
        "B kept serving its near-cache while it heard nothing"
    );
    let answer = written.unwrap();
    assert_eq!(
        &answer.value[..],
        b"new",
        "B answered a value overwritten while it was deaf"
    );
    let heard = until_near_hit(&mut on_b, &key).await;
    assert_eq!(&heard.value[..], b"new");
}
