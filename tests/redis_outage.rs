//! The whole Redis Cluster dies mid-test: Gets keep answering from the loader (FALLBACK), writes answer
//! UNAVAILABLE, and once the cluster is back, hits resume without restarting cachecoord.

mod support;

use cachecoord::proto::{GetRequest, SetRequest, Source};
use std::time::{Duration, Instant};
use support::cluster::RedisCluster;
use support::loader::TestLoader;
use support::{Backend, TestServer, assert_error};
use tonic::Code;

/// Kill all six nodes, serve from the loader, restart them, and see hits come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_fall_back_to_the_loader_while_redis_is_down() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let loader = TestLoader::start().await;
    for i in 0..20 {
        loader
            .source
            .put(&format!("user:{i}"), format!("row {i}").as_bytes());
    }
    let mut config = Backend::Embedded.config();
    config.store.redis_url = Some(cluster.url());
    config.store.redis_command_timeout_ms = 300;
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let get = |key: &str| GetRequest {
        key: key.into(),
        cache_only: false,
    };

    assert_eq!(
        client
            .get(get("user:1"))
            .await
            .unwrap()
            .into_inner()
            .source(),
        Source::Loaded
    );
    assert_eq!(
        client
            .get(get("user:1"))
            .await
            .unwrap()
            .into_inner()
            .source(),
        Source::Hit
    );

    cluster.kill_all();
    for i in 0..20 {
        let answer = client
            .get(get(&format!("user:{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.source(), Source::Fallback, "user:{i}");
        assert_eq!(answer.value, format!("row {i}").into_bytes());
    }
    let status = client
        .set(SetRequest {
            key: "user:1".into(),
            value: b"x".to_vec().into(),
            ttl: None,
            version: None,
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unavailable, "BACKEND_UNAVAILABLE");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart_all();
        cluster
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.get(get("user:2")).await.unwrap().into_inner();
        if answer.source() == Source::Hit {
            assert_eq!(answer.value, b"row 2".to_vec());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hits never resumed (last source {:?})",
            answer.source()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cluster);
}
