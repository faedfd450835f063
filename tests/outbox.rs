//! Invalidation from Postgres: a committed UPDATE removes the mapped keys with no Invalidate call, and rows
//! changed while cachecoord is stopped are applied when it starts.

mod support;

use cachecoord::config::{Cli, Config};
use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{GetRequest, SetRequest};
use std::time::{Duration, Instant};
use support::postgres::Postgres;
use support::{Backend, TestServer};
use tonic::transport::Channel;

async fn cached(client: &mut CacheServiceClient<Channel>, key: &str) -> bool {
    let request = GetRequest {
        key: key.into(),
        cache_only: true,
    };
    client.get(request).await.unwrap().into_inner().found
}

async fn set(client: &mut CacheServiceClient<Channel>, key: &str) {
    let request = SetRequest {
        key: key.into(),
        value: b"cached".to_vec().into(),
        ttl: None,
        version: None,
    };
    client.set(request).await.unwrap();
}

/// Polls until `key` is no longer cached; answers how long that took.
async fn until_gone(client: &mut CacheServiceClient<Channel>, key: &str) -> Duration {
    let started = Instant::now();
    while cached(client, key).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{key} was never invalidated"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// The outbox migration is applied by `cachecoord migrate`; UPDATEs then invalidate `user:{id}` and
/// `user:{id}:*` on their own, including updates committed while the service was stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_updates_invalidate_mapped_keys() {
    let postgres = Postgres::shared();
    let db = postgres.client().await;
    db.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO accounts SELECT i, 'account ' || i FROM generate_series(1, 20) i;",
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cachecoord.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[postgres]
url = "{}"

[outbox]
enabled = true

[[outbox.tables]]
table = "accounts"
keys = ["user:{{id}}"]
patterns = ["user:{{id}}:*"]
"#,
            postgres.connection_string()
        ),
    )
    .unwrap();
    let migrate = tokio::process::Command::new(env!("CARGO_BIN_EXE_cachecoord"))
        .arg("--config")
        .arg(&file)
        .arg("migrate")
        .status()
        .await
        .unwrap();
    assert!(migrate.success(), "cachecoord migrate failed");

    let mut config = Config::load(&Cli {
        config: Some(file.clone()),
        ..Cli::default()
    })
    .unwrap();
    let cluster = Backend::Cluster.config();
    config.listen_addr = cluster.listen_addr;
    config.store.redis_url = cluster.store.redis_url.clone();
    let mut plain = config.clone();
    plain.outbox.enabled = false;

    let server = TestServer::start_with(config.clone()).await;
    let mut client = server.client().await;
    for key in ["user:7", "user:7:posts", "user:8", "user:9"] {
        set(&mut client, key).await;
    }
    let mut propagation = Vec::new();
    for round in 0..20 {
        set(&mut client, "user:7").await;
        db.execute(
            "UPDATE accounts SET name = $1 WHERE id = 7",
            &[&format!("round {round}")],
        )
        .await
        .unwrap();
        propagation.push(until_gone(&mut client, "user:7").await);
    }
    propagation.sort();
    println!(
        "UPDATE → key gone: median {:?}, max {:?} over 20 updates",
        propagation[10], propagation[19]
    );
    assert!(
        !cached(&mut client, "user:7:posts").await,
        "pattern user:7:* was not applied"
    );
    assert!(
        cached(&mut client, "user:8").await,
        "an unrelated key was invalidated"
    );
    server.stop().await;

    // While no cachecoord listens, the change waits in the outbox.
    db.execute(
        "UPDATE accounts SET name = 'changed while down' WHERE id = 9",
        &[],
    )
    .await
    .unwrap();
    let waiting: i64 = db
        .query_one("SELECT count(*) FROM cachecoord.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(waiting >= 1);
    let observer = TestServer::start_with(plain).await;
    let mut observer_client = observer.client().await;
    assert!(
        cached(&mut observer_client, "user:9").await,
        "nothing should apply the row while down"
    );

    let restarted = TestServer::start_with(config).await;
    until_gone(&mut observer_client, "user:9").await;
    let left: i64 = db
        .query_one("SELECT count(*) FROM cachecoord.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "applied rows are removed from the outbox");
    assert!(cached(&mut observer_client, "user:8").await);
    drop(restarted);
}
