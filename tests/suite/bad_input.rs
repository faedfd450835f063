//! Bad input gets INVALID_ARGUMENT with an ErrorInfo reason, never a panic and never damage to other entries; an
//! unreachable Redis gets UNAVAILABLE.

use crate::support::cluster::StandaloneRedis;
use crate::support::{Backend, TestServer, assert_error, set_request, unique};
use cachecoord::proto::{
    BatchGetRequest, BatchSetRequest, GetRequest, InvalidatePatternRequest, InvalidateRequest,
};
use tonic::Code;

/// Every malformed request is refused with the documented reason, and an innocent key set beforehand is intact
/// afterwards.
async fn malformed_requests_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let bystander = format!("user:{}", unique(""));
    client
        .set(set_request(&bystander, b"intact"))
        .await
        .unwrap();

    let long_key = format!("user:{}", "x".repeat(600));
    for key in [
        "",
        "user",
        "user::1",
        "user:1 2",
        "user:a|b",
        "user:*",
        "user:{1}",
        "user:1\n",
        "ユーザー:1",
        long_key.as_str(),
    ] {
        let status = client
            .get(GetRequest {
                key: key.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_KEY");
        let status = client.set(set_request(key, b"v")).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_KEY");
    }

    let too_large = vec![0u8; 1024 * 1024 + 1];
    let status = client
        .set(set_request("user:1", &too_large))
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "VALUE_TOO_LARGE");

    for ttl in [
        prost_types::Duration {
            seconds: 0,
            nanos: 1_000,
        },
        prost_types::Duration {
            seconds: 30 * 24 * 3600,
            nanos: 0,
        },
    ] {
        let mut request = set_request("user:1", b"v");
        request.ttl = Some(ttl);
        let status = client.set(request).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "TTL_OUT_OF_BOUNDS");
    }
    let mut request = set_request("user:1", b"v");
    request.ttl = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    let status = client.set(request).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_TTL");

    let status = client
        .batch_get(BatchGetRequest {
            keys: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "EMPTY_REQUEST");
    let status = client
        .batch_set(BatchSetRequest { entries: vec![] })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "EMPTY_REQUEST");
    let status = client
        .invalidate(InvalidateRequest { keys: vec![] })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "EMPTY_REQUEST");
    let too_many: Vec<String> = (0..1001).map(|i| format!("user:{i}")).collect();
    let status = client
        .batch_get(BatchGetRequest {
            keys: too_many,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "BATCH_TOO_LARGE");

    // One bad key spoils the whole batch, and nothing of it is written or deleted.
    let first = format!("user:{}", unique(""));
    let entries = vec![set_request(&first, b"v"), set_request("user:[2]", b"v")];
    let status = client
        .batch_set(BatchSetRequest { entries })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_KEY");
    assert!(
        !client
            .get(GetRequest {
                key: first,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .found
    );
    let status = client
        .invalidate(InvalidateRequest {
            keys: vec![bystander.clone(), "bad key".into()],
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_KEY");

    for pattern in ["*", "*:*", "us?r:1", "user*"] {
        let status = client
            .invalidate_pattern(InvalidatePatternRequest {
                pattern: pattern.into(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "PATTERN_TOO_BROAD");
    }
    let many_wildcards = format!("user:{}", "*a".repeat(9));
    for pattern in [
        "",
        "user:[12]",
        "user:{1}:*",
        "user: *",
        "user:a|b",
        &many_wildcards,
    ] {
        let status = client
            .invalidate_pattern(InvalidatePatternRequest {
                pattern: pattern.into(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_PATTERN");
    }

    let survivor = client
        .get(GetRequest {
            key: bystander,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(survivor.found, "a refused request damaged another entry");
    assert_eq!(&survivor.value[..], b"intact");
}

/// A match-everything pattern works only when the configuration explicitly allows it.
async fn match_all_pattern_needs_explicit_permission(backend: Backend) {
    let mut config = backend.config();
    config.invalidation.allow_cross_entity_patterns = true;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let id = unique("");
    let keys = [format!("alpha{id}:1"), format!("beta{id}:1")];
    let entries = keys.iter().map(|k| set_request(k, b"v")).collect();
    client.batch_set(BatchSetRequest { entries }).await.unwrap();
    let deleted = client
        .invalidate_pattern(InvalidatePatternRequest {
            pattern: format!("*{id}:*"),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 2);
}

on_both_stores!(
    malformed_requests_are_refused,
    match_all_pattern_needs_explicit_permission
);

/// When Redis goes away, every RPC answers UNAVAILABLE / BACKEND_UNAVAILABLE promptly instead of hanging or
/// pretending success.
/// Past `limits.max_in_flight` calls, the next is refused at once with RESOURCE_EXHAUSTED (not queued), and
/// served again once the slots free up.
#[tokio::test]
async fn excess_in_flight_calls_are_refused_at_once() {
    let loader = crate::support::loader::TestLoader::start().await;
    let mut config = Backend::Embedded.config();
    config.limits.max_in_flight = 4;
    loader.route(&mut config, "slow:*");
    loader.source.set_delay(std::time::Duration::from_secs(2));
    let server = TestServer::start_with(config).await;
    let client = server.client().await;

    let mut reads = loader.source.subscribe_reads();
    let id = unique("");
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let mut client = client.clone();
            let key = format!("slow:{id}{i}");
            loader.source.put(&key, b"eventually");
            tokio::spawn(async move {
                let request = GetRequest {
                    key,
                    cache_only: false,
                    lease: false,
                };
                client.get(request).await
            })
        })
        .collect();
    // All four slots are taken once the loader has seen all four keys.
    for _ in 0..4 {
        reads.recv().await.unwrap();
    }
    let mut extra = client.clone();
    for _ in 0..5 {
        let status = extra
            .set(set_request(&format!("user:{id}"), b"x"))
            .await
            .unwrap_err();
        assert_error(&status, Code::ResourceExhausted, "TOO_MANY_IN_FLIGHT");
    }
    for call in slow {
        assert_eq!(
            &call.await.unwrap().unwrap().into_inner().value[..],
            b"eventually"
        );
    }
    extra
        .set(set_request(&format!("user:{id}"), b"x"))
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_redis_is_unavailable() {
    let redis = StandaloneRedis::start();
    let mut config = Backend::Embedded.config();
    config.store.redis_url = Some(redis.url());
    config.store.redis_command_timeout = std::time::Duration::from_millis(500);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client.set(set_request("user:1", b"v")).await.unwrap();

    redis.kill();
    let mut refusals = Vec::new();
    refusals.push(
        client
            .get(GetRequest {
                key: "user:1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    refusals.push(client.set(set_request("user:1", b"v2")).await.unwrap_err());
    refusals.push(
        client
            .invalidate(InvalidateRequest {
                keys: vec!["user:1".into()],
            })
            .await
            .unwrap_err(),
    );
    refusals.push(
        client
            .invalidate_pattern(InvalidatePatternRequest {
                pattern: "user:*".into(),
            })
            .await
            .unwrap_err(),
    );
    // The Redis client's own words (addresses, nodes, keys) stay in cachecoord's log: the caller, maybe another
    // team, gets the reason and what to do.
    for status in refusals {
        assert_error(&status, Code::Unavailable, "BACKEND_UNAVAILABLE");
        assert!(
            status
                .message()
                .ends_with("(the cause is in cachecoord's log)"),
            "{}",
            status.message()
        );
    }
}

/// An oversized key is refused as INVALID_KEY even when the request has another fault too (a negative TTL), and
/// no error message echoes more than a bounded piece of the input: a 100,000-byte key must not become 100 KB of
/// response headers, which the client would see as RESOURCE_EXHAUSTED instead of the error.
#[tokio::test]
async fn errors_never_echo_unbounded_input() {
    const BOUND: usize = 1024;
    let server = TestServer::start(Backend::Embedded).await;
    let mut client = server.client().await;
    let huge_key = format!("user:{}", "k".repeat(100_000));
    let mut negative_ttl = set_request(&huge_key, b"v");
    negative_ttl.ttl = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });

    let set = client.set(negative_ttl.clone()).await.unwrap_err();
    let batch_set = client
        .batch_set(BatchSetRequest {
            entries: vec![negative_ttl],
        })
        .await
        .unwrap_err();
    let get = client
        .get(GetRequest {
            key: huge_key.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    for status in [&set, &batch_set, &get] {
        assert_error(status, Code::InvalidArgument, "INVALID_KEY");
        assert!(
            status.message().len() <= BOUND,
            "a {}-byte message echoes the input",
            status.message().len()
        );
    }
    let pattern = client
        .invalidate_pattern(InvalidatePatternRequest {
            pattern: format!("user:{}*", "p".repeat(100_000)),
        })
        .await
        .unwrap_err();
    assert_error(&pattern, Code::InvalidArgument, "INVALID_PATTERN");
    assert!(pattern.message().len() <= BOUND);
}

/// A request larger than `limits.max_request_bytes` is refused by the transport before any handler runs, and
/// still carries the ErrorInfo every error promises (reason REQUEST_TOO_LARGE); the server keeps serving.
#[tokio::test]
async fn an_oversized_request_gets_out_of_range_with_a_reason() {
    let mut config = Backend::Embedded.config();
    config.limits.max_request_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("oversized"));

    let refused = client
        .set(set_request(&key, &[7u8; 8192]))
        .await
        .unwrap_err();

    assert_error(&refused, Code::OutOfRange, "REQUEST_TOO_LARGE");
    client.set(set_request(&key, b"small")).await.unwrap();
}
