//! What an acknowledged write or invalidation promises, checked against what breaks it: versions that must
//! outlive values, group indexes that must not hoard expired keys, and invalidation fences that must hold on
//! every Redis version while a replica lags or is gone. scripts/test runs this module on Redis 7.0 and 7.2.

use crate::support::cluster::{RedisCluster, redis_cli};
use crate::support::loader::TestLoader;
use crate::support::{
    Backend, Client, TestServer, assert_error, cached, config_on, get, set, unique,
};
use cachecoord::proto::{GetRequest, InvalidateRequest, SetRequest, Source};
use std::time::Duration;
use tonic::Code;

on_both_stores!(
    an_invalidation_does_not_forget_versions,
    expiry_does_not_forget_versions,
    a_loader_version_versions_the_fill,
    a_fill_older_than_a_written_version_is_not_cached,
);

fn versioned(key: &str, value: &[u8], version: u64, ttl: Option<Duration>) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: value.to_vec().into(),
        ttl: ttl.map(|ttl| ttl.try_into().unwrap()),
        version: Some(version),
        lease_token: Default::default(),
    }
}

async fn invalidate(client: &mut Client, key: &str) -> Result<(), tonic::Status> {
    let request = InvalidateRequest {
        keys: vec![key.into()],
    };
    client.invalidate(request).await.map(|_| ())
}

/// `Set(v5)`, `Invalidate`, `Set(v4)`: the late v4 is refused, and never served.
async fn an_invalidation_does_not_forget_versions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("forget"));
    client.set(versioned(&key, b"v5", 5, None)).await.unwrap();
    invalidate(&mut client, &key).await.unwrap();

    let late = client.set(versioned(&key, b"v4", 4, None)).await;

    assert_error(
        &late.unwrap_err(),
        Code::FailedPrecondition,
        "STALE_VERSION",
    );
    assert_eq!(cached(&mut client, &key).await.source(), Source::Miss);
    client.set(versioned(&key, b"v6", 6, None)).await.unwrap();
    assert_eq!(&cached(&mut client, &key).await.value[..], b"v6");
}

/// A v4 Set after the v5 entry expired is refused too.
async fn expiry_does_not_forget_versions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("expired"));
    let ttl = Some(Duration::from_secs(1));
    client.set(versioned(&key, b"v5", 5, ttl)).await.unwrap();
    while cached(&mut client, &key).await.found {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let late = client.set(versioned(&key, b"v4", 4, None)).await;

    assert_error(
        &late.unwrap_err(),
        Code::FailedPrecondition,
        "STALE_VERSION",
    );
}

/// A loader that reports the row's version (`LoadResponse.version`) makes the fill versioned: a Set older than
/// the filled row is refused, a newer one accepted.
async fn a_loader_version_versions_the_fill(backend: Backend) {
    let loader = TestLoader::start().await;
    let mut config = backend.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("filled"));
    loader.source.put_versioned(&key, b"row 7", 7);
    assert_eq!(get(&mut client, &key).await.source(), Source::Loaded);

    let older = client.set(versioned(&key, b"row 6", 6, None)).await;

    assert_error(
        &older.unwrap_err(),
        Code::FailedPrecondition,
        "STALE_VERSION",
    );
    assert_eq!(&cached(&mut client, &key).await.value[..], b"row 7");
    client
        .set(versioned(&key, b"row 8", 8, None))
        .await
        .unwrap();
    assert_eq!(&cached(&mut client, &key).await.value[..], b"row 8");
}

/// A load that read a row older than a version already written (a lagging read replica of the database, say)
/// is neither cached nor served: the caller gets UNAVAILABLE / LOADER_FAILED and retries, and once the source
/// has caught up the next Get loads and caches the newer row.
async fn a_fill_older_than_a_written_version_is_not_cached(backend: Backend) {
    let loader = TestLoader::start().await;
    let mut config = backend.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("older-fill"));
    client
        .set(versioned(&key, b"row 9", 9, None))
        .await
        .unwrap();
    invalidate(&mut client, &key).await.unwrap();
    loader.source.put_versioned(&key, b"row 8", 8);

    let behind = client.get(read_through(&key)).await;

    assert_error(&behind.unwrap_err(), Code::Unavailable, "LOADER_FAILED");
    assert_eq!(
        cached(&mut client, &key).await.source(),
        Source::Miss,
        "a fill older than version 9 was cached"
    );
    assert_eq!(loader.source.loads_of(&key), 1, "loaded again in vain");
    loader.source.put_versioned(&key, b"row 10", 10);
    assert_eq!(&get(&mut client, &key).await.value[..], b"row 10");
    assert_eq!(&cached(&mut client, &key).await.value[..], b"row 10");
}

fn read_through(key: &str) -> GetRequest {
    GetRequest {
        key: key.into(),
        cache_only: false,
        lease: false,
    }
}

/// The members of the Redis index of group `group` (whatever its name and type), counted on `port`.
fn index_members(port: u16, group: &str) -> usize {
    let bookkeeping = redis_cli(port, &["--scan", "--pattern", &format!("{{{group}}}#*")]);
    let mut members = 0;
    for name in bookkeeping.lines().filter(|name| !name.contains("#lease")) {
        let count = match redis_cli(port, &["TYPE", name]).trim() {
            "set" => redis_cli(port, &["SCARD", name]),
            "zset" => redis_cli(port, &["ZCARD", name]),
            _ => continue,
        };
        members += count.trim().parse::<usize>().unwrap();
    }
    members
}

/// 2,000 short-lived keys beside one long-lived key of the same group: once they expired, the group's index
/// holds the live key, not 2,001 members that every pattern invalidation of the group would walk.
#[tokio::test]
async fn expired_keys_leave_the_group_index() {
    let server = TestServer::start(Backend::Cluster).await;
    let mut client = server.client().await;
    let group = format!("user:{}", unique("index"));
    set(&mut client, &group, b"long-lived").await;
    let short = Some(Duration::from_secs(1));
    for chunk in (0..2000).collect::<Vec<_>>().chunks(200) {
        let writes = chunk.iter().map(|i| {
            let mut client = client.clone();
            let key = format!("{group}:s{i}");
            async move {
                let request = SetRequest {
                    ttl: short.map(|ttl| ttl.try_into().unwrap()),
                    ..crate::support::set_request(&key, b"short-lived")
                };
                client.set(request).await.unwrap();
            }
        });
        futures::future::join_all(writes).await;
    }
    let primary = RedisCluster::shared().primary_of(&format!("{{{group}}}"));
    let before = index_members(primary, &group);
    // Past the short TTL and the index's grace period (2 s, src/store/redis/scripts/helpers.lua), then one more
    // write to the group.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    set(&mut client, &group, b"long-lived, rewritten").await;

    let after = index_members(primary, &group);

    assert_eq!(before, 2001);
    assert_eq!(after, 1, "the index still holds expired members");
}

/// A test's own cluster and a server on it with `acks` replica acknowledgements and the given ack timeout.
async fn own_cluster_server(cluster: &RedisCluster, acks: usize) -> TestServer {
    let mut config = config_on(cluster);
    config.store.invalidation_replica_acks = acks;
    config.store.replica_ack_timeout = Duration::from_millis(300);
    TestServer::start_with(config).await
}

/// An invalidation whose fence timed out on one replica (UNAVAILABLE, as a lagging Redis replica makes it), then
/// retried on another cachecoord replica as the README advises, is not acknowledged while the Redis replica still
/// lags. On Redis 7.2 a retry that deletes nothing wrote nothing, so a bare `WAIT` answered at once.
#[tokio::test]
async fn a_retried_invalidation_is_fenced_while_the_replica_lags() {
    let cluster = RedisCluster::start_async(&[]).await;
    let a = own_cluster_server(&cluster, 1).await;
    let b = own_cluster_server(&cluster, 1).await;
    let (mut client_a, mut client_b) = (a.client().await, b.client().await);
    let key = format!("user:{}", unique("retried"));
    set(&mut client_a, &key, b"old").await;
    // Both replicas of cachecoord have written through their fence connection before (so neither is new).
    invalidate(&mut client_a, &format!("user:{}", unique("warm-a")))
        .await
        .unwrap();
    invalidate(&mut client_b, &format!("user:{}", unique("warm-b")))
        .await
        .unwrap();
    let primary = cluster.primary_of(&format!("{{{key}}}"));
    let replica = cluster.replica_of(primary);

    cluster.pause(replica);
    let first = invalidate(&mut client_a, &key).await;
    let retried = invalidate(&mut client_b, &key).await;
    cluster.resume(replica);

    assert_error(
        &first.unwrap_err(),
        Code::Unavailable,
        "BACKEND_UNAVAILABLE",
    );
    let retried =
        retried.expect_err("the retry was acknowledged while the only replica was stopped");
    assert_error(&retried, Code::Unavailable, "BACKEND_UNAVAILABLE");
    // Once the replica has caught up the invalidation is acknowledged. How long a resumed replica takes to answer
    // the primary's GETACK depends on the machine's load, so a fence that times out meanwhile is tried again.
    let mut attempts = 0;
    while let Err(status) = invalidate(&mut client_b, &key).await {
        assert_error(&status, Code::Unavailable, "BACKEND_UNAVAILABLE");
        attempts += 1;
        assert!(
            attempts < 50,
            "never acknowledged after the replica resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A primary whose replica is down (flagged failed, so the slot map lists none) does not acknowledge
/// invalidations unfenced: the configured replica count is never lowered to what the slot map lists.
#[tokio::test]
async fn a_primary_whose_replica_is_down_answers_unavailable() {
    let cluster = RedisCluster::start_async(&[]).await;
    let server = own_cluster_server(&cluster, 1).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("no-replica"));
    set(&mut client, &key, b"old").await;
    let primary = cluster.primary_of(&format!("{{{key}}}"));
    let replica = cluster.replica_of(primary);
    cluster.kill_node(replica);
    // Until the cluster flags the replica failed (and Redis 7.0's CLUSTER SLOTS stops listing it), and the
    // server's slot map refresh has seen that.
    while !redis_cli(primary, &["CLUSTER", "NODES"])
        .lines()
        .any(|line| line.contains(&format!(":{replica}@")) && line.contains("fail"))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let answer = invalidate(&mut client, &key).await;

    assert_error(
        &answer.expect_err("acknowledged with no replica to hold it"),
        Code::Unavailable,
        "BACKEND_UNAVAILABLE",
    );
    assert_eq!(
        cached(&mut client, &key).await.source(),
        Source::Miss,
        "the primary still applied the invalidation"
    );
}

/// Fifty concurrent invalidations while a primary's replica is stopped (not yet failed): each is applied on the
/// primary by the time it answers (UNAVAILABLE, having timed out waiting for the replica), and the waits neither
/// queue the deletes behind each other nor cut off that healthy primary's reads meanwhile.
#[tokio::test]
async fn invalidations_under_a_lagging_replica_all_apply_and_reads_go_on() {
    let cluster = RedisCluster::start_async(&[]).await;
    let server = own_cluster_server(&cluster, 1).await;
    let mut client = server.client().await;
    let group = format!("user:{}", unique("lagging"));
    let keys: Vec<String> = (0..50).map(|i| format!("{group}:k{i}")).collect();
    for key in &keys {
        set(&mut client, key, b"old").await;
    }
    let bystander = format!("{group}:bystander");
    set(&mut client, &bystander, b"still here").await;
    let primary = cluster.primary_of(&format!("{{{group}}}"));
    let replica = cluster.replica_of(primary);

    let waits_before = wait_calls(primary);
    cluster.pause(replica);
    let invalidations = tokio::spawn(futures::future::join_all(keys.iter().cloned().map(|key| {
        let mut client = client.clone();
        async move {
            let answer = invalidate(&mut client, &key).await;
            // Read back the moment the invalidation answered: applied, whatever the answer.
            let still_there = cached(&mut client, &key).await.found;
            (answer, still_there)
        }
    })));
    let mut bystander_reads = Vec::new();
    while !invalidations.is_finished() {
        let read = cached(&mut client, &bystander).await;
        bystander_reads.push(read.source());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answers = invalidations.await.unwrap();
    cluster.resume(replica);
    let waits = wait_calls(primary) - waits_before;

    let unavailable = answers
        .iter()
        .filter(|(a, _)| a.as_ref().is_err_and(|s| s.code() == Code::Unavailable))
        .count();
    let unapplied = answers.iter().filter(|(_, still)| *still).count();
    println!(
        "50 invalidations under a stopped replica: {unavailable} UNAVAILABLE, {unapplied} not applied when \
         answered, {waits} WAITs on the primary; {} bystander reads",
        bystander_reads.len()
    );
    // Concurrent invalidations share fences: a handful of waits, not one (queued) per invalidation.
    assert!(waits <= 5, "{waits} WAITs for 50 concurrent invalidations");
    assert_eq!(unavailable, 50);
    assert_eq!(
        unapplied, 0,
        "invalidations answered before they were applied"
    );
    assert!(
        bystander_reads.iter().all(|source| *source == Source::Hit),
        "reads of the healthy primary were cut off: {bystander_reads:?}"
    );
}

/// How many WAIT commands the Redis node on `port` has run (`INFO commandstats`).
fn wait_calls(port: u16) -> u64 {
    redis_cli(port, &["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// A primary out of memory under `noeviction` refuses writes but still deletes: its invalidations are applied,
/// and their fence (a script allowed to run when out of memory) still gets them acknowledged.
#[tokio::test]
async fn a_full_primary_still_acknowledges_invalidations() {
    let cluster = RedisCluster::start_async(&[]).await;
    let server = own_cluster_server(&cluster, 1).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("full"));
    set(&mut client, &key, b"old").await;
    let primary = cluster.primary_of(&format!("{{{key}}}"));
    redis_cli(
        primary,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    redis_cli(primary, &["CONFIG", "SET", "maxmemory", "1"]);

    let answer = invalidate(&mut client, &key).await;
    let after = cached(&mut client, &key).await;
    redis_cli(primary, &["CONFIG", "SET", "maxmemory", "0"]);

    answer.expect("an applied invalidation on a full primary was not acknowledged");
    assert_eq!(after.source(), Source::Miss);
}

/// While old and new releases write the same groups during a rolling upgrade, a group pattern invalidation sees
/// the members either release indexed: new writes also join the older index (a plain set) while it exists, and
/// the pattern walks both. The older release's index is made here with redis-cli, as such a replica would.
#[tokio::test]
async fn a_fleet_mid_upgrade_misses_no_member() {
    let server = TestServer::start(Backend::Cluster).await;
    let mut client = server.client().await;
    let group = format!("user:{}", unique("upgrade"));
    let primary = RedisCluster::shared().primary_of(&format!("{{{group}}}"));
    let (index, legacy) = (format!("{{{group}}}#index"), format!("{{{group}}}#keys"));
    set(&mut client, &format!("{group}:a"), b"a").await;
    // An old replica writes `:b` into the group: its index is the plain set.
    set(&mut client, &format!("{group}:b"), b"b").await;
    redis_cli(primary, &["ZREM", &index, ":b"]);
    redis_cli(primary, &["SADD", &legacy, ":b"]);
    // A new replica writes `:c` while the old index exists: the old releases' patterns must see it too.
    set(&mut client, &format!("{group}:c"), b"c").await;
    let legacy_members = redis_cli(primary, &["SMEMBERS", &legacy]);

    let deleted = client
        .invalidate_pattern(cachecoord::proto::InvalidatePatternRequest {
            pattern: format!("{group}:*"),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;

    assert!(
        legacy_members.lines().any(|m| m.trim() == ":c"),
        "{legacy_members}"
    );
    assert_eq!(deleted, 3);
    for member in ["a", "b", "c"] {
        let key = format!("{group}:{member}");
        assert_eq!(
            cached(&mut client, &key).await.source(),
            Source::Miss,
            "{key}"
        );
    }
}
