//! The test bed itself: the cluster really is six redis-server processes (3 primaries + 3 replicas) and the
//! private Postgres really answers queries.

use crate::support::cluster::RedisCluster;
use crate::support::postgres::Postgres;

/// Six distinct redis-server processes form the cluster: three primaries, each with one replica.
#[test]
fn cluster_is_three_primaries_and_three_replicas() {
    let cluster = RedisCluster::shared();
    assert_eq!(cluster.primaries().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);
    let pids: std::collections::BTreeSet<String> = cluster
        .ports
        .iter()
        .map(|port| {
            let info = crate::support::cluster::redis_cli(*port, &["info", "server"]);
            info.lines()
                .find_map(|line| line.strip_prefix("process_id:"))
                .expect("process_id in INFO")
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(pids.len(), 6, "six separate processes");
}

/// The private Postgres accepts connections and runs SQL.
#[tokio::test]
async fn postgres_answers_queries() {
    let postgres = Postgres::shared();
    let (client, connection) =
        tokio_postgres::connect(&postgres.connection_string(), tokio_postgres::NoTls)
            .await
            .expect("connect to the private Postgres");
    tokio::spawn(connection);
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}
