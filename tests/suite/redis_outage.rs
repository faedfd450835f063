//! The whole Redis Cluster dies mid-test: Gets keep answering from the loader (FALLBACK), writes answer
//! UNAVAILABLE, and once the cluster is back, hits resume without restarting cachecoord.

use crate::support::cluster::RedisCluster;
use crate::support::loader::TestLoader;
use crate::support::{TestServer, assert_error, config_on, get, set_request};
use cachecoord::proto::Source;
use std::time::{Duration, Instant};
use tonic::Code;

/// Kill all six nodes, serve from the loader, restart them, and see hits come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_fall_back_to_the_loader_while_redis_is_down() {
    let cluster = RedisCluster::start_async(&[]).await;
    let loader = TestLoader::start().await;
    for i in 0..20 {
        loader
            .source
            .put(&format!("user:{i}"), format!("row {i}").as_bytes());
    }
    let mut config = config_on(&cluster);
    config.store.redis_command_timeout = std::time::Duration::from_millis(300);
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    assert_eq!(get(&mut client, "user:1").await.source(), Source::Loaded);
    assert_eq!(get(&mut client, "user:1").await.source(), Source::Hit);

    cluster.kill_all();
    for i in 0..20 {
        let answer = get(&mut client, &format!("user:{i}")).await;
        assert_eq!(answer.source(), Source::Fallback, "user:{i}");
        assert_eq!(answer.value, format!("row {i}").into_bytes());
    }
    let status = client.set(set_request("user:1", b"x")).await.unwrap_err();
    assert_error(&status, Code::Unavailable, "BACKEND_UNAVAILABLE");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart_all();
        cluster
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get(&mut client, "user:2").await;
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
