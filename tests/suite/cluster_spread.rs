//! Batches and pattern invalidation on a real 3 + 3 Redis Cluster reach every primary, verified by reading each
//! primary directly.

use crate::support::cluster::RedisCluster;
use crate::support::{Backend, TestServer, batch_get, set_request, unique};
use cachecoord::proto::{BatchSetRequest, InvalidatePatternRequest, InvalidateRequest};

/// Keys spread over all three primaries are written by one BatchSet and read back by one BatchGet.
#[tokio::test]
async fn batches_span_every_primary() {
    let cluster = RedisCluster::shared();
    let server = TestServer::start(Backend::Cluster).await;
    let mut client = server.client().await;
    let id = unique("");
    let keys: Vec<String> = (0..300).map(|i| format!("user:{id}x{i}")).collect();
    let entries = keys.iter().map(|k| set_request(k, k.as_bytes())).collect();
    assert_eq!(
        client
            .batch_set(BatchSetRequest { entries })
            .await
            .unwrap()
            .into_inner()
            .written,
        300
    );

    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let mut seen = 0;
    for port in &primaries {
        let on_node = cluster.keys_on_node(*port, &format!("{{user:{id}x*"));
        assert!(
            !on_node.is_empty(),
            "primary {port} holds none of the batch"
        );
        seen += on_node.len();
    }
    assert_eq!(seen, 300, "every key lives on exactly one primary");

    let results = batch_get(&mut client, &keys).await;
    for (result, key) in results.iter().zip(&keys) {
        assert!(result.found, "{key} missing from BatchGet");
        assert_eq!(&result.value[..], key.as_bytes());
    }

    let deleted = client
        .invalidate(InvalidateRequest {
            keys: keys[..100].to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 100);
}

/// InvalidatePattern across groups (the SCAN path) removes the matching keys from every primary and leaves every
/// other key alone.
#[tokio::test]
async fn pattern_invalidation_reaches_every_primary() {
    let cluster = RedisCluster::shared();
    let server = TestServer::start(Backend::Cluster).await;
    let mut client = server.client().await;
    let id = unique("");
    let matching: Vec<String> = (0..300).map(|i| format!("user:{id}x{i}:posts")).collect();
    let others: Vec<String> = (0..300).map(|i| format!("user:{id}x{i}:likes")).collect();
    for batch in [&matching, &others] {
        let entries = batch.iter().map(|k| set_request(k, k.as_bytes())).collect();
        client.batch_set(BatchSetRequest { entries }).await.unwrap();
    }
    let primaries = cluster.primaries();
    for port in &primaries {
        assert!(
            !cluster
                .keys_on_node(*port, &format!("{{user:{id}x*:posts"))
                .is_empty()
        );
    }

    let deleted = client
        .invalidate_pattern(InvalidatePatternRequest {
            pattern: format!("user:{id}x*:posts"),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 300);

    let mut others_left = 0;
    for port in &primaries {
        assert!(
            cluster
                .keys_on_node(*port, &format!("{{user:{id}x*:posts"))
                .is_empty(),
            "primary {port} still holds matching keys"
        );
        others_left += cluster
            .keys_on_node(*port, &format!("{{user:{id}x*:likes"))
            .len();
    }
    assert_eq!(others_left, 300, "non-matching keys were deleted");
}
