//! Strict near-cache acknowledgements go to their writer only: over three cachecoord processes on one Redis
//! Cluster, A's strict writes are acknowledged by B and C on A's own acknowledgement channel, and nothing is sent on
//! B's or C's (on a channel every replica hears, each acknowledgement cost one delivery per replica: with 10 members
//! that traffic overflowed subscriber buffers and lost acknowledgements, each costing a write a member's lease).

use crate::support::cluster::RedisCluster;
use crate::support::process::ServerProcess;
use crate::support::strict::{member_id, strict_toml, timed_set, until_near_hit_of};
use crate::support::{Client, unique};
use fred::prelude::{Builder, ClientLike, Config, EventInterface, PubsubInterface};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A writer's acknowledgement channel (see `store/redis/layout.rs`).
fn ack_channel(writer: &str) -> String {
    format!("{{cachecoord:acks:{writer}}}")
}

/// A's strict writes are acknowledged by B and C on A's channel; B's and C's channels carry no acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledgements_reach_their_writer_only() {
    let cluster = RedisCluster::start_async(&[]).await;
    let config = strict_toml(&cluster);
    let (a, b, c) = (
        ServerProcess::start(&config).await,
        ServerProcess::start(&config).await,
        ServerProcess::start(&config).await,
    );
    let mut on_a = Client::connect(a.uri()).await.unwrap();
    let mut on_b = Client::connect(b.uri()).await.unwrap();
    let mut on_c = Client::connect(c.uri()).await.unwrap();
    let key = format!("user:{}:k", unique("acks"));
    // Near hits on B and C: both are members, so A's writes wait for them.
    timed_set(&mut on_a, &key, "v0").await;
    until_near_hit_of(&mut on_b, &key, "v0").await;
    until_near_hit_of(&mut on_c, &key, "v0").await;
    let ids: Vec<String> = [&a, &b, &c].into_iter().map(member_id).collect();

    let subscriber = Builder::from_config(Config::from_url(&cluster.url()).unwrap())
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    let mut messages = subscriber.message_rx();
    for id in &ids {
        subscriber.ssubscribe(ack_channel(id)).await.unwrap();
    }

    for value in ["v1", "v2", "v3"] {
        timed_set(&mut on_a, &key, value).await;
    }
    until_near_hit_of(&mut on_b, &key, "v3").await;
    until_near_hit_of(&mut on_c, &key, "v3").await;
    // Sequencing only: the acknowledgements of v3 were sent before A answered; let them arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Per channel, the members whose acknowledgements it carried, with the writer each named.
    let mut acked: HashMap<String, HashSet<(String, String)>> = HashMap::new();
    while let Ok(message) = messages.try_recv() {
        let text = message.value.as_str().unwrap_or_default().to_string();
        let mut lines = text.split('\n');
        if lines.next().is_some_and(|tag| tag.starts_with("a@")) {
            let member = lines.next().unwrap_or_default().to_owned();
            let writer = lines.next().unwrap_or_default().to_owned();
            acked
                .entry(message.channel.to_string())
                .or_default()
                .insert((member, writer));
        }
    }
    let _ = subscriber.quit().await;
    let expected: HashSet<(String, String)> = [&ids[1], &ids[2]]
        .into_iter()
        .map(|member| (member.clone(), ids[0].clone()))
        .collect();
    assert_eq!(
        acked.remove(&ack_channel(&ids[0])).unwrap_or_default(),
        expected,
        "B and C acknowledge A's writes on A's channel"
    );
    assert!(
        acked.is_empty(),
        "no acknowledgement on another replica's channel: {acked:?}"
    );
}
