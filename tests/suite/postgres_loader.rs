//! The built-in Postgres loader against a real Postgres: rows fill `user:{id}` and `posts:{id}`, and a BatchGet
//! with misses of both entities runs one batch query per entity.

use crate::support::cluster::RedisCluster;
use crate::support::postgres::Postgres;
use crate::support::{TestServer, batch_get, config_on, get};
use cachecoord::config::{LoaderConfig, LoaderKind};
use cachecoord::proto::Source;
use std::time::Duration;

fn postgres_loader(pattern: &str, query: &str, batch_query: &str) -> LoaderConfig {
    LoaderConfig {
        query: Some(query.into()),
        batch_query: Some(batch_query.into()),
        timeout: Duration::from_secs(5),
        max_concurrency: 16,
        ..LoaderConfig::new(pattern, LoaderKind::Postgres)
    }
}

/// `user:{id}` is filled from a real `users` table as JSON; BatchGet misses across users and posts make exactly one
/// batch query per entity; ids with no row (or not even a number) are found=false.
#[tokio::test]
async fn postgres_rows_fill_misses_one_query_per_entity() {
    let postgres = Postgres::shared();
    let db = postgres.client().await;
    db.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE posts (id bigint PRIMARY KEY, title text NOT NULL);
         INSERT INTO users SELECT i, 'user ' || i FROM generate_series(1, 50) i;
         INSERT INTO posts SELECT i, 'post ' || i FROM generate_series(1, 50) i;",
    )
    .await
    .unwrap();

    // The keys are fixed (user:7 for row 7), so no other test may share the cluster.
    let cluster = RedisCluster::start_async(&[]).await;
    let mut config = config_on(&cluster);
    config.postgres.url = Some(postgres.connection_string());
    config.loaders = vec![
        postgres_loader(
            "user:*",
            "SELECT /* users-one */ row_to_json(u)::text FROM users u WHERE id = $1",
            "SELECT /* users-batch */ id::text, row_to_json(u)::text FROM users u WHERE id = ANY($1)",
        ),
        postgres_loader(
            "posts:*",
            "SELECT /* posts-one */ row_to_json(p)::text FROM posts p WHERE id = $1",
            "SELECT /* posts-batch */ id::text, row_to_json(p)::text FROM posts p WHERE id = ANY($1)",
        ),
    ];
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let user = get(&mut client, "user:7").await;
    assert_eq!(user.source(), Source::Loaded);
    assert_eq!(&user.value[..], br#"{"id":7,"name":"user 7"}"#);
    let again = get(&mut client, "user:7").await;
    assert_eq!(again.source(), Source::Hit);
    assert_eq!(postgres.executions_of("users-one"), 1);

    let mut keys: Vec<String> = (10..30)
        .flat_map(|i| [format!("user:{i}"), format!("posts:{i}")])
        .collect();
    keys.push("user:999".into());
    keys.push("user:not-a-number".into());
    let results = batch_get(&mut client, &keys).await;
    for (result, key) in results.iter().zip(&keys) {
        let (entity, id) = key.split_once(':').unwrap();
        if id == "999" || id == "not-a-number" {
            assert!(!result.found, "{key}");
            continue;
        }
        let expected = match entity {
            "user" => format!(r#"{{"id":{id},"name":"user {id}"}}"#),
            _ => format!(r#"{{"id":{id},"title":"post {id}"}}"#),
        };
        assert_eq!(String::from_utf8_lossy(&result.value), expected);
        assert_eq!(result.source(), Source::Loaded);
    }
    assert_eq!(
        postgres.executions_of("users-batch"),
        1,
        "one query for all user misses"
    );
    assert_eq!(
        postgres.executions_of("posts-batch"),
        1,
        "one query for all posts misses"
    );
}
