//! Read-through loading against the real Redis Cluster and a real LoaderService: one load per key across
//! replicas, no stale write-back, negative caching, cache-only reads, stale windows and versioned writes.

use crate::support::loader::TestLoader;
use crate::support::{Backend, Client, TestServer, assert_error, batch_get, cached, get, unique};
use cachecoord::proto::{
    GetRequest, InvalidatePatternRequest, InvalidateRequest, SetRequest, Source,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;

/// Three cachecoord replicas share one cluster; 300 concurrent Gets of one cold key, spread over them, with a
/// 200 ms loader: exactly one loader call, and every caller gets the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_across_three_replicas_loads_once() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(200));
    let key = format!("user:{}", unique(""));
    loader.source.put(&key, b"{\"name\":\"Ada\"}");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut config = Backend::Cluster.config();
        loader.route(&mut config, "user:*");
        replicas.push(TestServer::start_with(config).await);
    }
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.client().await);
    }

    let callers = (0..300).map(|i| {
        let mut client = clients[i % 3].clone();
        let key = key.clone();
        tokio::spawn(async move { get(&mut client, &key).await })
    });
    let answers = futures::future::join_all(callers).await;
    let mut by_source = std::collections::BTreeMap::new();
    for answer in answers {
        let answer = answer.unwrap();
        assert!(answer.found);
        assert_eq!(&answer.value[..], b"{\"name\":\"Ada\"}");
        *by_source
            .entry(format!("{:?}", answer.source()))
            .or_insert(0) += 1;
    }
    println!("300 callers by source: {by_source:?}");
    assert_eq!(
        loader.source.loads_of(&key),
        1,
        "exactly one load for 300 callers on 3 replicas"
    );
    assert_eq!(by_source.get("Loaded"), Some(&1));
}

/// How the racing writer invalidates.
#[derive(Clone, Copy)]
enum Invalidation {
    /// Invalidate of the key itself.
    Key,
    /// InvalidatePattern scoped to the key's `{entity}:{id}` group (one script on one primary).
    GroupPattern,
    /// InvalidatePattern spanning groups (SCAN on every primary).
    ScanPattern,
}

/// The race that breaks naive cache-aside: a reader misses and loads the old row; meanwhile a writer updates the
/// row and invalidates. Answers how many of `rounds` left a stale value in the cache after quiescence.
async fn stale_values_after_racing_invalidations(leases: bool, rounds: usize) -> usize {
    stale_values_after_racing(leases, rounds, Invalidation::Key).await
}

async fn stale_values_after_racing(leases: bool, rounds: usize, how: Invalidation) -> usize {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    config.read_through.leases = leases;
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    let stale = Arc::new(AtomicUsize::new(0));
    let id = unique("");
    const PARALLEL_KEYS: usize = 50;

    let workers = (0..PARALLEL_KEYS).map(|k| {
        let source = loader.source.clone();
        let mut client = client.clone();
        let stale = stale.clone();
        let key = format!("user:{id}x{k}:data");
        let pattern = match how {
            Invalidation::Key => None,
            Invalidation::GroupPattern => Some(format!("user:{id}x{k}:*")),
            // A wildcard in the id sends the pattern down the cross-group SCAN path.
            Invalidation::ScanPattern => Some(format!("user:?{}x{k}:da*", &id[1..])),
        };
        tokio::spawn(async move {
            for round in 0..rounds / PARALLEL_KEYS {
                let (old, new) = (format!("v{}", 2 * round), format!("v{}", 2 * round + 1));
                source.put(&key, old.as_bytes());
                // The load answers only once the invalidation is acknowledged: the race, every round.
                let answer_load = source.hold_next_read(&key);
                let mut reads = source.subscribe_reads();
                let mut reader = client.clone();
                let reader_key = key.clone();
                let read = tokio::spawn(async move { get(&mut reader, &reader_key).await });
                // Wait until the loader has read the old row, then update the row and invalidate.
                while reads.recv().await.unwrap() != key {}
                source.put(&key, new.as_bytes());
                match &pattern {
                    None => {
                        let keys = vec![key.clone()];
                        client.invalidate(InvalidateRequest { keys }).await.unwrap();
                    }
                    Some(pattern) => {
                        let pattern = pattern.clone();
                        let request = InvalidatePatternRequest { pattern };
                        client.invalidate_pattern(request).await.unwrap();
                    }
                }
                let _ = answer_load.send(());
                read.await.unwrap();
                let after = cached(&mut client, &key).await;
                if after.found && after.value != new.as_bytes() {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
                client
                    .invalidate(InvalidateRequest {
                        keys: vec![key.clone()],
                    })
                    .await
                    .unwrap();
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.unwrap();
    }
    stale.load(Ordering::Relaxed)
}

/// With leases, 1,000 rounds of load-vs-invalidate races leave no stale value in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_invalidations_never_leave_stale_values() {
    let stale = stale_values_after_racing_invalidations(true, 1000).await;
    println!("leases on: {stale} stale values in 1000 rounds");
    assert_eq!(stale, 0);
}

/// The same race against InvalidatePattern, scoped to one group and spanning groups: a fill that started before
/// the pattern invalidation never makes a matching key visible afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pattern_invalidations_never_leave_stale_values() {
    let group = stale_values_after_racing(true, 500, Invalidation::GroupPattern).await;
    let scan = stale_values_after_racing(true, 200, Invalidation::ScanPattern).await;
    let unprotected = stale_values_after_racing(false, 100, Invalidation::ScanPattern).await;
    println!(
        "leases on: {group} stale in 500 group-pattern rounds, {scan} in 200 scan-pattern rounds; \
         leases off: {unprotected} stale in 100 scan-pattern rounds"
    );
    assert_eq!((group, scan), (0, 0));
    assert!(
        unprotected > 0,
        "the pattern race must be observable without leases"
    );
}

/// The same race with leases turned off does write stale values back: the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_leases_the_race_leaves_stale_values() {
    let stale = stale_values_after_racing_invalidations(false, 200).await;
    println!("leases off: {stale} stale values in 200 rounds");
    assert!(stale > 0, "the race must be observable without leases");
}

/// A loader's "not found" is cached: the second Get answers NEGATIVE without calling the loader.
#[tokio::test]
async fn not_found_is_cached_negatively() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("ghost"));
    let first = get(&mut client, &key).await;
    assert!(!first.found);
    assert_eq!(first.source(), Source::Loaded);
    let second = get(&mut client, &key).await;
    assert!(!second.found);
    assert_eq!(second.source(), Source::Negative);
    assert_eq!(loader.source.loads_of(&key), 1);
}

/// cache_only never calls the loader; a normal Get then loads, and the next is a HIT.
#[tokio::test]
async fn cache_only_reads_do_not_load() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique(""));
    loader.source.put(&key, b"row");
    assert_eq!(cached(&mut client, &key).await.source(), Source::Miss);
    assert_eq!(loader.source.loads_of(&key), 0);
    let loaded = get(&mut client, &key).await;
    assert_eq!(
        (loaded.source(), &loaded.value[..]),
        (Source::Loaded, &b"row"[..])
    );
    assert!(loaded.ttl_remaining.is_some());
    assert_eq!(get(&mut client, &key).await.source(), Source::Hit);
}

/// BatchGet with misses of two entities makes one BatchLoad per entity, and answers every key in order.
#[tokio::test]
async fn batch_get_loads_each_entity_in_one_call() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    loader.route(&mut config, "posts:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let id = unique("");
    let users: Vec<String> = (0..20).map(|i| format!("user:{id}{i}")).collect();
    let posts: Vec<String> = (0..20).map(|i| format!("posts:{id}{i}")).collect();
    for key in users.iter().chain(&posts) {
        loader.source.put(key, key.as_bytes());
    }
    let mut keys: Vec<String> = users
        .iter()
        .zip(&posts)
        .flat_map(|(u, p)| [u.clone(), p.clone()])
        .collect();
    keys.push(format!("user:{id}missing"));
    let results = batch_get(&mut client, &keys).await;
    for (result, key) in results.iter().zip(&keys) {
        assert_eq!(&result.key, key);
        if key.ends_with("missing") {
            assert!(!result.found);
        } else {
            assert!(result.found, "{key}");
            assert_eq!(&result.value[..], key.as_bytes());
            assert_eq!(result.source(), Source::Loaded);
        }
    }
    let batches = loader.source.batches();
    assert_eq!(batches.len(), 2, "one BatchLoad per entity: {batches:?}");
    assert_eq!(loader.source.loads.load(Ordering::Relaxed), 0);
    for batch in batches {
        let entity = batch[0].split(':').next().unwrap().to_owned();
        assert!(batch.iter().all(|k| k.starts_with(&format!("{entity}:"))));
    }
}

/// A failing loader answers UNAVAILABLE / LOADER_FAILED; inside stale_if_error the expired value is served
/// STALE instead.
#[tokio::test]
async fn loader_failure_serves_stale_within_stale_if_error() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    config.policies.insert(0, brief_policy("brief:*", 0, 300));
    loader.route(&mut config, "brief:*");
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    loader.source.set_failing(true);
    let status = client
        .get(GetRequest {
            key: format!("user:{}", unique("")),
            cache_only: false,
            lease: false,
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unavailable, "LOADER_FAILED");

    loader.source.set_failing(false);
    let key = format!("brief:{}", unique(""));
    loader.source.put(&key, b"first");
    assert_eq!(get(&mut client, &key).await.source(), Source::Loaded);
    wait_until_expired(&mut client, &key).await;
    loader.source.set_failing(true);
    let stale = get(&mut client, &key).await;
    assert_eq!(
        (stale.source(), &stale.value[..]),
        (Source::Stale, &b"first"[..])
    );
}

/// Inside stale_while_revalidate an expired value is served STALE at once while one background load refreshes
/// it; the refreshed value follows.
#[tokio::test]
async fn stale_while_revalidate_serves_then_refreshes() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    config.policies.insert(0, brief_policy("brief:*", 300, 0));
    loader.route(&mut config, "brief:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("brief:{}", unique(""));
    loader.source.put(&key, b"v1");
    assert_eq!(get(&mut client, &key).await.source(), Source::Loaded);
    wait_until_expired(&mut client, &key).await;
    loader.source.put(&key, b"v2");
    let stale = get(&mut client, &key).await;
    assert_eq!(
        (stale.source(), &stale.value[..]),
        (Source::Stale, &b"v1"[..])
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = cached(&mut client, &key).await;
        if answer.source() == Source::Hit {
            assert_eq!(&answer.value[..], b"v2");
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(loader.source.loads_of(&key), 2);
}

/// A versioned Set older than the stored version is refused with FAILED_PRECONDITION / STALE_VERSION.
#[tokio::test]
async fn versioned_sets_refuse_older_versions() {
    for backend in [Backend::Embedded, Backend::Cluster] {
        let server = TestServer::start(backend).await;
        let mut client = server.client().await;
        let key = format!("user:{}", unique(""));
        let set = |version, value: &str| SetRequest {
            key: key.clone(),
            value: value.as_bytes().to_vec().into(),
            ttl: None,
            version: Some(version),
            lease_token: Default::default(),
        };
        client.set(set(5, "five")).await.unwrap();
        let status = client.set(set(4, "four")).await.unwrap_err();
        assert_error(&status, Code::FailedPrecondition, "STALE_VERSION");
        client.set(set(6, "six")).await.unwrap();
        assert_eq!(&get(&mut client, &key).await.value[..], b"six");
    }
}

/// A one-second policy with the given stale windows (seconds).
fn brief_policy(pattern: &str, swr: u64, sie: u64) -> cachecoord::config::PolicyConfig {
    cachecoord::config::PolicyConfig {
        stale_while_revalidate: Some(std::time::Duration::from_secs(swr)),
        stale_if_error: Some(std::time::Duration::from_secs(sie)),
        xfetch_beta: Some(0.0),
        ..cachecoord::config::PolicyConfig::new("brief", pattern, std::time::Duration::from_secs(1))
    }
}

/// Polls (cache-only) until the entry's one-second TTL has run out; bounded generously.
async fn wait_until_expired(client: &mut Client, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cached(client, key).await.source() == Source::Hit {
        assert!(Instant::now() < deadline, "{key} never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lease left by a holder that died (taken straight in Redis, never filled) expires, and a waiting caller then
/// loads the key itself.
#[tokio::test]
async fn a_dead_holders_lease_expires_and_a_waiter_takes_over() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("orphan"));
    loader.source.put(&key, b"row");
    let port = crate::support::cluster::RedisCluster::shared().ports[0];
    // Where cachecoord keeps the lease of user:<id> (see src/store/redis/layout.rs).
    let lease = format!("{{{key}}}#lease");
    let reply = crate::support::cluster::redis_cli(
        port,
        &["-c", "SET", &lease, "dead-holder", "PX", "1500"],
    );
    assert_eq!(reply.trim(), "OK");

    let answer = get(&mut client, &key).await;
    assert_eq!(
        (answer.source(), &answer.value[..]),
        (Source::Loaded, &b"row"[..])
    );
    assert_eq!(loader.source.loads_of(&key), 1);
}

/// A caller's deadline is honoured: a Get on a slow loader ends at its deadline (DEADLINE_EXCEEDED from the
/// server, or the client's own CANCELLED when its timer fires first), while the load it started carries on and
/// fills the cache for the next caller.
#[tokio::test]
async fn the_callers_deadline_is_respected() {
    let loader = TestLoader::start().await;
    // The load must have started before the deadline ends the call (so the deadline is generous for a shared
    // machine) and must take longer still.
    loader.source.set_delay(Duration::from_millis(3000));
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("slow"));
    loader.source.put(&key, b"row");

    let mut request = tonic::Request::new(GetRequest {
        key: key.clone(),
        cache_only: false,
        lease: false,
    });
    request.set_timeout(Duration::from_millis(1000));
    let status = client.get(request).await.unwrap_err();
    match status.code() {
        Code::DeadlineExceeded => {
            assert_error(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED")
        }
        Code::Cancelled => {}
        other => panic!("unexpected {other:?}: {status:?}"),
    }
    assert_eq!(
        cached(&mut client, &key).await.source(),
        Source::Miss,
        "the call ended before its 3 s load did"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    while cached(&mut client, &key).await.source() != Source::Hit {
        assert!(
            Instant::now() < deadline,
            "the abandoned load never filled the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(loader.source.loads_of(&key), 1);
}

/// A fill that the key's primary refuses (out of memory under `noeviction`, set while the load runs) is served
/// uncached, and its lease is given back at once: other replicas must not wait out the lease TTL on every miss
/// of that key. While the primary stays full, its refusals are a passing condition of that node: a Set answers
/// UNAVAILABLE (retry), never INTERNAL, and a Get that cannot take a lease falls back to the loader.
#[tokio::test]
async fn a_failed_fill_gives_its_lease_back() {
    let cluster = crate::support::cluster::RedisCluster::start_async(&[]).await;
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(300));
    let mut config = crate::support::config_on(&cluster);
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("oom"));
    loader.source.put(&key, b"row");
    // Where cachecoord keeps the lease of user:<id> (see src/store/redis/layout.rs), and the primary owning it.
    let lease = format!("{{{key}}}#lease");
    let cli = crate::support::cluster::redis_cli;
    let owner = cluster.primary_of(&lease);

    let mut reads = loader.source.subscribe_reads();
    let mut reader = client.clone();
    let reader_key = key.clone();
    let answer = tokio::spawn(async move { get(&mut reader, &reader_key).await });
    while reads.recv().await.unwrap() != key {}
    // The lease is taken and the load is running: from now on the primary refuses writes.
    cli(owner, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    cli(owner, &["CONFIG", "SET", "maxmemory", "1"]);
    let answer = answer.await.unwrap();
    let lease_left = cli(owner, &["EXISTS", &lease]);
    let refused_set = client
        .set(crate::support::set_request(&key, b"new"))
        .await
        .unwrap_err();
    loader.source.put(&key, b"row 2");
    let while_full = get(&mut client, &key).await;
    cli(owner, &["CONFIG", "SET", "maxmemory", "0"]);

    assert_eq!(
        (answer.source(), &answer.value[..]),
        (Source::Loaded, &b"row"[..])
    );
    assert_eq!(cached(&mut client, &key).await.source(), Source::Miss);
    assert_eq!(
        lease_left.trim(),
        "0",
        "the failed fill left its lease behind"
    );
    assert_error(&refused_set, Code::Unavailable, "BACKEND_UNAVAILABLE");
    assert_eq!(
        (while_full.source(), &while_full.value[..]),
        (Source::Fallback, &b"row 2"[..])
    );
}

/// A caller never joins a load that read the source before the caller's request began. Two replicas: A holds the
/// lease on a slow load; B's caller gives up waiting for it and loads for itself (uncached), reading v0; the row
/// becomes v1 and an invalidation is acknowledged; a new Get on B must then answer v1, not B's running v0 load.
#[tokio::test]
async fn a_new_caller_never_joins_a_load_older_than_itself() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(1000));
    let mut config = Backend::Cluster.config();
    config.read_through.lease_wait = Duration::from_millis(200);
    loader.route(&mut config, "user:*");
    let a = TestServer::start_with(config.clone()).await;
    let b = TestServer::start_with(config).await;
    let (client_a, client_b) = (a.client().await, b.client().await);
    let key = format!("user:{}", unique("join"));
    loader.source.put(&key, b"v0");
    let mut reads = loader.source.subscribe_reads();

    let holder = spawn_get(&client_a, &key);
    while reads.recv().await.unwrap() != key {}
    let gave_up = spawn_get(&client_b, &key);
    // B's caller waited out the lease and is now reading v0 itself.
    while reads.recv().await.unwrap() != key {}
    loader.source.put(&key, b"v1");
    client_a
        .clone()
        .invalidate(InvalidateRequest {
            keys: vec![key.clone()],
        })
        .await
        .unwrap();

    let after = spawn_get(&client_b, &key).await.unwrap();
    assert_eq!(
        &after.value[..],
        b"v1",
        "a Get that began after the acknowledged invalidation answered {:?} ({:?})",
        String::from_utf8_lossy(&after.value),
        after.source()
    );
    holder.await.unwrap();
    gave_up.await.unwrap();
}

/// Callers that arrive one after another while a slow load runs (longer than `lease_wait`) still cost one load:
/// none of them may start a load of its own because the running one began before it did.
#[tokio::test]
async fn callers_arriving_during_a_slow_load_share_it() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(1000));
    let mut config = Backend::Cluster.config();
    config.read_through.lease_wait = Duration::from_millis(200);
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    let key = format!("user:{}", unique("slow"));
    loader.source.put(&key, b"row");
    let mut reads = loader.source.subscribe_reads();

    let mut callers = vec![spawn_get(&client, &key)];
    while reads.recv().await.unwrap() != key {}
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        callers.push(spawn_get(&client, &key));
    }
    for caller in callers {
        assert_eq!(&caller.await.unwrap().value[..], b"row");
    }
    assert_eq!(loader.source.loads_of(&key), 1);
}

/// A Get of `key` through `client`, running on its own while the test goes on.
fn spawn_get(
    client: &Client,
    key: &str,
) -> tokio::task::JoinHandle<cachecoord::proto::GetResponse> {
    let (mut client, key) = (client.clone(), key.to_owned());
    tokio::spawn(async move { get(&mut client, &key).await })
}
