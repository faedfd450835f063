//! A non-Rust loader: the Python LoaderService in examples/python serves a Get end to end, on the cluster.

use crate::support::cluster::RedisCluster;
use crate::support::loader::grpc_loader;
use crate::support::ports::free_port;
use crate::support::{TestServer, config_on};
use cachecoord::proto::{BatchGetRequest, GetRequest, Source};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Get and BatchGet of `user:{id}` are filled by the Python LoaderService.
#[tokio::test]
async fn python_loader_fills_misses() {
    let port = free_port();
    let python = std::env::var("CC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/loader_service.py"
    );
    let mut loader = Command::new(&python)
        .arg(script)
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e} (scripts/test prepares a venv with grpcio)")
        });
    let mut lines = BufReader::new(loader.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("ready"),
        "python loader did not start"
    );

    let cluster = RedisCluster::start_async(&[]).await;
    let mut config = config_on(&cluster);
    config
        .loaders
        .push(grpc_loader("user:*", &format!("http://127.0.0.1:{port}")));
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    // Keys are shared with other runs only through this test's own cluster, which starts empty.
    let answer = client
        .get(GetRequest {
            key: "user:42".into(),
            cache_only: false,
            lease: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.source(), Source::Loaded);
    assert_eq!(
        &answer.value[..],
        br#"{"id":42,"name":"user 42","served_by":"python"}"#
    );

    let results = client
        .batch_get(BatchGetRequest {
            keys: vec![
                "user:42".into(),
                "user:43".into(),
                "user:44".into(),
                "user:4242".into(),
            ],
            cache_only: false,
            lease: false,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let sources: Vec<Source> = results.iter().map(|r| r.source()).collect();
    assert_eq!(
        sources,
        [Source::Hit, Source::Loaded, Source::Loaded, Source::Loaded]
    );
    assert!(results[1].found && results[2].found && !results[3].found);
    loader.kill().await.unwrap();
}
