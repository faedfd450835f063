//! Encryption at rest: an `encrypt = true` entity is stored as AES-256-GCM ciphertext (read straight from the
//! Redis nodes: no plaintext), keys rotate (new writes use the new key id, entries under the old key still read),
//! and an entry whose key has been retired reads as a miss, never as garbage or an error.

use crate::support::cluster::{RedisCluster, redis_cli};
use crate::support::{Backend, TestServer, cached, found_value, set, unique};
use cachecoord::config::{Config, PolicyConfig};

/// A config with `profile:*` encrypted under the keys in `dir`, `active` being the one new entries use.
fn encrypting(dir: &std::path::Path, active: &str) -> Config {
    let mut config = Backend::Cluster.config();
    config.policies.insert(
        0,
        PolicyConfig {
            encrypt: true,
            ..PolicyConfig::new("profile", "profile:*", std::time::Duration::from_secs(3600))
        },
    );
    config.encryption.keys_dir = Some(dir.to_owned());
    config.encryption.active_key = Some(active.into());
    config
}

/// What Redis holds for the value of `key` (stored as `{entity:id}rest`), read from whichever primary owns it
/// and printed by redis-cli with escapes (`--no-raw`): plaintext would still show as itself.
fn raw_value(key: &str) -> Vec<u8> {
    let cluster = RedisCluster::shared();
    let group_end = key.match_indices(':').nth(1).map_or(key.len(), |(i, _)| i);
    let stored = format!("{{{}}}{}", &key[..group_end], &key[group_end..]);
    for port in cluster.primaries() {
        if cluster.keys_on_node(port, &stored).contains(&stored) {
            return redis_cli(port, &["--no-raw", "GET", &stored]).into_bytes();
        }
    }
    panic!("{stored} is on no primary");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Encrypted entries are ciphertext in Redis, still read after a key rotation, and read as misses once their
/// key is retired.
#[tokio::test]
async fn encrypted_entities_are_ciphertext_in_redis_and_survive_key_rotation() {
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("k1"), "11".repeat(32)).unwrap();
    let id = unique("");
    let (secret_profile, plain_user) = (format!("profile:{id}"), format!("user:{id}"));
    let marker = format!("plaintext-marker-{id}");

    let server = TestServer::start_with(encrypting(keys.path(), "k1")).await;
    let mut client = server.client().await;
    set(&mut client, &secret_profile, marker.as_bytes()).await;
    set(&mut client, &plain_user, marker.as_bytes()).await;
    assert_eq!(
        found_value(cached(&mut client, &secret_profile).await).as_deref(),
        Some(marker.as_bytes())
    );
    let raw = raw_value(&secret_profile);
    assert!(
        !contains(&raw, marker.as_bytes()),
        "ciphertext only: {}",
        String::from_utf8_lossy(&raw)
    );
    assert!(contains(&raw, b"k1"), "the key id is in the envelope");
    assert!(
        contains(&raw_value(&plain_user), marker.as_bytes()),
        "control: a plain entity's value is visible, so the check above would have seen plaintext"
    );
    server.stop().await;

    // Rotate: k2 becomes active, k1 stays for the entries it sealed.
    std::fs::write(keys.path().join("k2"), "22".repeat(32)).unwrap();
    let server = TestServer::start_with(encrypting(keys.path(), "k2")).await;
    let mut client = server.client().await;
    assert_eq!(
        found_value(cached(&mut client, &secret_profile).await).as_deref(),
        Some(marker.as_bytes()),
        "old entry still reads"
    );
    let newer = format!("profile:{id}:new");
    set(&mut client, &newer, marker.as_bytes()).await;
    let raw = raw_value(&newer);
    assert!(contains(&raw, b"k2") && !contains(&raw, marker.as_bytes()));
    server.stop().await;

    // Retire k1: its entries read as misses (to be reloaded), the k2 entry still reads.
    std::fs::remove_file(keys.path().join("k1")).unwrap();
    let server = TestServer::start_with(encrypting(keys.path(), "k2")).await;
    let mut client = server.client().await;
    assert_eq!(
        found_value(cached(&mut client, &secret_profile).await),
        None
    );
    assert_eq!(
        found_value(cached(&mut client, &newer).await).as_deref(),
        Some(marker.as_bytes())
    );
}
