//! Every CacheService RPC, run against the embedded store and against the real Redis Cluster.

use crate::support::{Backend, TestServer, batch_get, get, set_request, unique};
use cachecoord::proto::{BatchSetRequest, InvalidatePatternRequest, InvalidateRequest, Source};
use std::time::{Duration, Instant};

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.as_ref().expect("ttl present");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

/// A value set is read back byte for byte as a HIT; an unknown key is a MISS, not an error.
async fn set_then_get(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique(""));
    // Real NUL and 0xFF bytes; not JSON-shaped, since JSON that does not parse is refused as unverifiable.
    let value = b"Ada \x00 binary \xff ok";
    client.set(set_request(&key, value)).await.unwrap();
    let hit = get(&mut client, &key).await;
    assert!(hit.found);
    assert_eq!(&hit.value[..], &value[..]);
    assert_eq!(hit.source(), Source::Hit);
    let miss = get(&mut client, &format!("user:{}", unique("absent"))).await;
    assert!(!miss.found);
    assert!(miss.value.is_empty());
    assert_eq!(miss.source(), Source::Miss);
    assert!(miss.ttl_remaining.is_none());
}

/// Without a TTL in the request, a key's TTL comes from its entity policy (±10 % jitter).
async fn ttl_comes_from_the_entity_policy(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("");
    for (key, policy_secs) in [
        (format!("user:{id}"), 3600.0),
        (format!("user:{id}:posts"), 900.0),
        (format!("posts:{id}"), 1800.0),
        (format!("posts:page:{id}"), 900.0),
        (format!("settings:{id}"), 86400.0),
        (format!("unlisted:{id}"), 600.0),
    ] {
        let applied = client
            .set(set_request(&key, b"v"))
            .await
            .unwrap()
            .into_inner()
            .ttl;
        let remaining = get(&mut client, &key).await.ttl_remaining;
        for ttl in [secs(&applied), secs(&remaining)] {
            assert!(
                ttl > policy_secs * 0.9 - 5.0 && ttl <= policy_secs * 1.1,
                "{key}: ttl {ttl}s is not {policy_secs}s ± 10 %"
            );
        }
    }
}

/// A TTL in the request is applied exactly, and the entry disappears once it runs out.
async fn request_ttl_overrides_policy_and_expires(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique(""));
    let mut request = set_request(&key, b"short-lived");
    request.ttl = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let applied = client.set(request).await.unwrap().into_inner().ttl;
    assert_eq!(secs(&applied), 1.0);
    let remaining = secs(&get(&mut client, &key).await.ttl_remaining);
    assert!(remaining > 0.0 && remaining <= 1.0);
    // Expiry is a deadline, not an event: poll until it has passed, bounded generously.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut client, &key).await.found {
        assert!(Instant::now() < deadline, "{key} never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// BatchSet writes every entry; BatchGet answers each key in request order, duplicates identically.
async fn batch_set_then_batch_get(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("");
    let keys: Vec<String> = (0..50).map(|i| format!("user:{id}:{i}")).collect();
    let entries = keys.iter().map(|k| set_request(k, k.as_bytes())).collect();
    let written = client
        .batch_set(BatchSetRequest { entries })
        .await
        .unwrap()
        .into_inner()
        .written;
    assert_eq!(written, 50);

    let missing = format!("user:{id}:missing");
    let mut requested: Vec<String> = keys.iter().rev().cloned().collect();
    requested.insert(10, missing.clone());
    requested.push(keys[3].clone());
    requested.push(keys[3].clone());
    let results = batch_get(&mut client, &requested).await;
    assert_eq!(results.len(), requested.len());
    for (result, key) in results.iter().zip(&requested) {
        assert_eq!(&result.key, key);
        if *key == missing {
            assert!(!result.found);
            assert_eq!(result.source(), Source::Miss);
        } else {
            assert!(result.found, "{key} not found");
            assert_eq!(&result.value[..], key.as_bytes());
            assert_eq!(result.source(), Source::Hit);
            assert!(result.ttl_remaining.is_some());
        }
    }
    let last = results.len() - 1;
    assert_eq!(results[last].value, results[last - 1].value);
}

/// Invalidate deletes the named keys and counts only those that existed.
async fn invalidate_deletes_keys(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("");
    let (a, b, absent) = (
        format!("user:{id}:a"),
        format!("user:{id}:b"),
        format!("user:{id}:c"),
    );
    for key in [&a, &b] {
        client.set(set_request(key, b"v")).await.unwrap();
    }
    let deleted = client
        .invalidate(InvalidateRequest {
            keys: vec![a.clone(), absent, a.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 1);
    assert!(!get(&mut client, &a).await.found);
    assert!(get(&mut client, &b).await.found);
}

/// InvalidatePattern deletes exactly the keys its glob matches, and nothing else.
async fn invalidate_pattern_deletes_exactly_the_matches(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("");
    let matching: Vec<String> = (0..40).map(|i| format!("user:{id}:{i}")).collect();
    let kept = vec![
        format!("user:{id}"),
        format!("user:{id}0:1"),
        format!("posts:{id}:1"),
    ];
    let entries = matching
        .iter()
        .chain(&kept)
        .map(|k| set_request(k, b"v"))
        .collect();
    client.batch_set(BatchSetRequest { entries }).await.unwrap();

    let deleted = client
        .invalidate_pattern(InvalidatePatternRequest {
            pattern: format!("user:{id}:*"),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 40);
    for key in &matching {
        assert!(!get(&mut client, key).await.found, "{key} survived");
    }
    for key in &kept {
        assert!(
            get(&mut client, key).await.found,
            "{key} was wrongly deleted"
        );
    }

    // Mid-key globs work too.
    let posts: Vec<String> = (0..5).map(|i| format!("user:{id}{i}:posts")).collect();
    let entries = posts.iter().map(|k| set_request(k, b"v")).collect();
    client.batch_set(BatchSetRequest { entries }).await.unwrap();
    let deleted = client
        .invalidate_pattern(InvalidatePatternRequest {
            pattern: format!("user:{id}?:posts"),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 5);
}

on_both_stores!(
    set_then_get,
    ttl_comes_from_the_entity_policy,
    request_ttl_overrides_policy_and_expires,
    batch_set_then_batch_get,
    invalidate_deletes_keys,
    invalidate_pattern_deletes_exactly_the_matches,
);
