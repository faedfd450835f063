//! Strict near-cache mode seen from outside: the configuration the strict tests share, a replica's member id from
//! its log, membership leases and the store's clock read from Redis, and writes/reads that time themselves.

use super::calls::{Client, cached, set_request};
use super::cluster::{RedisCluster, redis_cli};
use super::process::ServerProcess;
use cachecoord::proto::Source;
use std::time::{Duration, Instant};

/// The members set (see `store/redis/layout.rs`).
pub const MEMBERS: &str = "{cachecoord:near}#members";

/// A replica's configuration on `cluster` with `user:*` in strict near-cache mode and 2 s member leases.
pub fn strict_toml(cluster: &RedisCluster) -> String {
    format!(
        "log_level = \"info\"\n[store]\nredis_url = \"{}\"\n\
         [near_cache]\nmax_bytes = 16777216\nmember_lease_ms = 2000\n\
         [[policies]]\nname = \"user\"\npattern = \"user:*\"\nttl_secs = 3600\n\
         near_cache_ttl_secs = 60\nnear_cache = \"strict\"\n",
        cluster.url()
    )
}

/// The member id `process` logged when it joined.
pub fn member_id(process: &ServerProcess) -> String {
    let line = process
        .log_lines("near-cache member joined")
        .pop()
        .expect("the replica joined the near-cache membership");
    // The log may be coloured: drop the escape sequences first.
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            let _ = chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    let line = plain;
    let at = line
        .find("member=")
        .map(|i| i + 7)
        .or_else(|| line.find("\"member\":").map(|i| i + 9));
    let digits: String = line[at.unwrap_or_else(|| panic!("the join names its member: {line}"))..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(!digits.is_empty(), "{line}");
    digits
}

/// When `member`'s lease ends, in the store's milliseconds (None when it is not a member).
pub fn lease_end_ms(cluster: &RedisCluster, member: &str) -> Option<u64> {
    let port = cluster.primaries()[0].to_string();
    let out = std::process::Command::new("redis-cli")
        .args([
            "-c",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "ZSCORE",
            MEMBERS,
            member,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .ok()
        .map(|ms| ms as u64)
}

/// The store's clock, in milliseconds.
pub fn store_now_ms(cluster: &RedisCluster) -> u64 {
    let time = redis_cli(cluster.primaries()[0], &["TIME"]);
    let mut parts = time.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    let (secs, micros) = (parts.next().unwrap(), parts.next().unwrap());
    secs * 1000 + micros / 1000
}

/// Writes `value` on `client` and answers how long the acknowledgement took.
pub async fn timed_set(client: &mut Client, key: &str, value: &str) -> Duration {
    let started = Instant::now();
    client
        .set(set_request(key, value.as_bytes()))
        .await
        .expect("a strict write completes even with a member down");
    started.elapsed()
}

/// Reads `key` on `client` until it is a near-cache hit, asserting every answer is `value`.
pub async fn until_near_hit_of(client: &mut Client, key: &str, value: &str) -> Duration {
    let started = Instant::now();
    loop {
        let answer = cached(client, key).await;
        assert_eq!(
            answer.value,
            value.as_bytes(),
            "{key}: an older value than the acknowledged {value:?} was served"
        );
        if answer.source() == Source::NearHit {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{key} never became a near hit"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
