//! Budgets one caller cannot exceed at everyone else's expense: the bytes of one answer, and the size of a
//! loader's value.

use crate::support::loader::TestLoader;
use crate::support::{Backend, TestServer, assert_error, cached, set_request, unique};
use cachecoord::proto::{BatchGetRequest, GetRequest, Source};
use tonic::Code;

/// A BatchGet naming one large value many times (a 10 KB request for a 50 MiB answer) is refused before the
/// answer is built: RESOURCE_EXHAUSTED, reason RESPONSE_TOO_LARGE. Other calls go on.
#[tokio::test]
async fn an_amplifying_batch_get_is_refused() {
    let mut config = Backend::Embedded.config();
    config.limits.max_response_bytes = 4 * 1024 * 1024;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("big"));
    client
        .set(set_request(&key, &vec![7u8; 512 * 1024]))
        .await
        .unwrap();

    let amplified = client
        .batch_get(BatchGetRequest {
            keys: vec![key.clone(); 100],
            cache_only: true,
            lease: false,
        })
        .await;

    assert_error(
        &amplified.unwrap_err(),
        Code::ResourceExhausted,
        "RESPONSE_TOO_LARGE",
    );
    let within = client
        .batch_get(BatchGetRequest {
            keys: vec![key.clone(); 4],
            cache_only: true,
            lease: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(within.results.len(), 4);
}

/// A loader's value is held to `limits.max_value_bytes` like a Set's: refused (UNAVAILABLE, LOADER_FAILED),
/// neither cached nor served.
#[tokio::test]
async fn a_loader_value_over_the_limit_is_neither_cached_nor_served() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Embedded.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("huge-row"));
    loader.source.put(&key, &vec![1u8; 2 * 1024 * 1024]);

    let answer = client
        .get(GetRequest {
            key: key.clone(),
            cache_only: false,
            lease: false,
        })
        .await;

    assert_error(&answer.unwrap_err(), Code::Unavailable, "LOADER_FAILED");
    assert_eq!(cached(&mut client, &key).await.source(), Source::Miss);
}

/// A pattern built to be slow to match (`user:1:*` + 250 × `a` + `b` against 2,000 keys of 511 bytes in one group)
/// does not hold a Redis primary: matching runs in cachecoord, and another tenant's Gets on the same primary keep
/// answering throughout. (Before, one group script ran ~10 s and Redis answered BUSY meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_group_pattern_does_not_block_the_primary() {
    use crate::support::cluster::{RedisCluster, redis_cli};
    use cachecoord::proto::{BatchSetRequest, InvalidatePatternRequest};
    let cluster = RedisCluster::start_async(&[]).await;
    let server = TestServer::start_with(crate::support::config_on(&cluster)).await;
    let mut client = server.client().await;
    let primary = cluster.primary_of("{user:1}");
    let bystander = (0..)
        .map(|n| format!("invoice:{n}"))
        .find(|key| cluster.primary_of(&format!("{{{key}}}")) == primary)
        .unwrap();
    client.set(set_request(&bystander, b"paid")).await.unwrap();
    let padding = "a".repeat(499);
    for half in 0..2 {
        let entries = (half * 1000..(half + 1) * 1000)
            .map(|i| set_request(&format!("user:1:{i:05}{padding}"), b"v"))
            .collect();
        client.batch_set(BatchSetRequest { entries }).await.unwrap();
    }
    redis_cli(primary, &["SLOWLOG", "RESET"]);

    let mut attacker = client.clone();
    let attack = tokio::spawn(async move {
        // One wildcard before a long literal: the greedy glob retries the literal at every position of every key.
        let pattern = format!("user:1:*{}b", "a".repeat(250));
        attacker
            .invalidate_pattern(InvalidatePatternRequest { pattern })
            .await
    });
    let (mut answered, mut failed) = (0, Vec::new());
    while !attack.is_finished() {
        match client
            .get(GetRequest {
                key: bystander.clone(),
                cache_only: true,
                lease: false,
            })
            .await
        {
            Ok(_) => answered += 1,
            Err(status) => failed.push(status.code()),
        }
    }
    let attack = attack.await.unwrap();
    let slowest_us = redis_cli(primary, &["SLOWLOG", "GET", "128"])
        .lines()
        .filter_map(|line| line.trim().parse::<u64>().ok())
        .filter(|n| *n < 1_000_000_000)
        .max();
    // SLOWLOG keeps commands over slowlog-log-slower-than (10 ms by default): None means none was slower.
    println!(
        "hostile pattern: {answered} bystander Gets answered, {} failed; slowest command over 10 ms: {slowest_us:?} µs",
        failed.len()
    );

    assert_eq!(attack.unwrap().into_inner().deleted, 0);
    assert!(failed.is_empty(), "bystander Gets failed: {failed:?}");
    assert!(answered > 0);
}

/// A caller that retries an InvalidatePattern while its first call is still deleting (the documented advice on
/// UNAVAILABLE) does not multiply the work on the primary: ten identical concurrent calls fold into at most two
/// runs (the one running and one after it), counted in scripts the primary ran; every call still answers, and
/// nothing matching survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_pattern_invalidations_fold_into_one_run() {
    use crate::support::cluster::{RedisCluster, redis_cli};
    use cachecoord::proto::{BatchSetRequest, InvalidatePatternRequest};
    let cluster = RedisCluster::start_async(&[]).await;
    let server = TestServer::start_with(crate::support::config_on(&cluster)).await;
    let mut client = server.client().await;
    let primary = cluster.primary_of("{user:7}");
    let fill = |client: &mut crate::support::Client| {
        let mut client = client.clone();
        async move {
            for half in 0..2 {
                let entries = (half * 1000..(half + 1) * 1000)
                    .map(|i| set_request(&format!("user:7:{i:05}"), b"v"))
                    .collect();
                client.batch_set(BatchSetRequest { entries }).await.unwrap();
            }
        }
    };
    // Scripts run on the group's primary (the group read, the deletes, the fences).
    let scripts = || {
        redis_cli(primary, &["INFO", "commandstats"])
            .lines()
            .filter(|line| {
                line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:")
            })
            .filter_map(|line| {
                let calls = line.split("calls=").nth(1)?.split(',').next()?;
                calls.parse::<u64>().ok()
            })
            .sum::<u64>()
    };
    let pattern = || InvalidatePatternRequest {
        pattern: "user:7:*".into(),
    };

    fill(&mut client).await;
    let before = scripts();
    let deleted = client.invalidate_pattern(pattern()).await.unwrap();
    assert_eq!(deleted.into_inner().deleted, 2000);
    let one_run = scripts() - before;

    fill(&mut client).await;
    let before = scripts();
    let calls = (0..10).map(|_| {
        let mut client = client.clone();
        async move { client.invalidate_pattern(pattern()).await }
    });
    let answers = futures::future::join_all(calls).await;
    let ten_calls = scripts() - before;
    println!(
        "one InvalidatePattern of 2,000 keys: {one_run} scripts; ten at once: {ten_calls} scripts"
    );

    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(
        ten_calls <= 2 * one_run,
        "ten identical calls ran {ten_calls} scripts, one ran {one_run}"
    );
    for half in 0..2 {
        let left = client
            .batch_get(BatchGetRequest {
                keys: (half * 1000..(half + 1) * 1000)
                    .map(|i| format!("user:7:{i:05}"))
                    .collect(),
                cache_only: true,
                lease: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(left.results.iter().all(|result| !result.found));
    }
}
