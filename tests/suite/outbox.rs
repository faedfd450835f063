//! Invalidation from Postgres: a committed UPDATE removes the mapped keys with no Invalidate call, and rows
//! changed while cachecoord is stopped are applied when it starts.

use crate::support::cluster::RedisCluster;
use crate::support::postgres::Postgres;
use crate::support::process::migrate;
use crate::support::{Client, TestServer, cached, config_on, set};
use cachecoord::config::{Cli, Config};
use std::time::{Duration, Instant};

async fn is_cached(client: &mut Client, key: &str) -> bool {
    cached(client, key).await.found
}

/// Polls until `key` is no longer cached; answers how long that took.
async fn until_gone(client: &mut Client, key: &str) -> Duration {
    let started = Instant::now();
    while is_cached(client, key).await {
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
    migrate(&file).await;

    let mut config = Config::load(&Cli {
        config: Some(file.clone()),
        ..Cli::default()
    })
    .unwrap();
    // The keys are fixed (user:7 for row 7), so no other test may share the cluster.
    let redis = RedisCluster::start_async(&[]).await;
    let on_cluster = config_on(&redis);
    config.listen_addr = on_cluster.listen_addr;
    config.store.redis_url = on_cluster.store.redis_url;
    let mut plain = config.clone();
    plain.outbox.enabled = false;

    let server = TestServer::start_with(config.clone()).await;
    let mut client = server.client().await;
    for key in ["user:7", "user:7:posts", "user:8", "user:9"] {
        set(&mut client, key, b"cached").await;
    }
    let mut propagation = Vec::new();
    for round in 0..20 {
        set(&mut client, "user:7", b"cached").await;
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
        !is_cached(&mut client, "user:7:posts").await,
        "pattern user:7:* was not applied"
    );
    assert!(
        is_cached(&mut client, "user:8").await,
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
        is_cached(&mut observer_client, "user:9").await,
        "nothing should apply the row while down"
    );

    let restarted = TestServer::start_with(config).await;
    until_gone(&mut observer_client, "user:9").await;
    // The row is deleted in the transaction that applied it, which commits just after the invalidation is
    // visible: wait for that commit (bounded), then nothing may be left.
    let started = Instant::now();
    let left = loop {
        let left: i64 = db
            .query_one("SELECT count(*) FROM cachecoord.outbox", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 || started.elapsed() > Duration::from_secs(10) {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(left, 0, "applied rows are removed from the outbox");
    assert!(is_cached(&mut observer_client, "user:8").await);
    drop(restarted);
}
