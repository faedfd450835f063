//! Encryption at rest: an `encrypt = true` entity is stored as AES-256-GCM ciphertext (read straight from the
//! Redis nodes: no plaintext), keys rotate (new writes use the new key id, entries under the old key still read),
//! and an entry whose key has been retired reads as a miss, never as garbage or an error. The envelope's header
//! is authenticated with the value: a stored ciphertext put back with a forged header reads as a miss.

use crate::support::cluster::{RedisCluster, redis_cli};
use crate::support::loader::TestLoader;
use crate::support::{Backend, TestServer, cached, found_value, get, set, unique};
use cachecoord::config::{Config, PolicyConfig};
use cachecoord::proto::Source;

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
    let (port, stored) = stored_at(key);
    redis_cli(port, &["--no-raw", "GET", &stored]).into_bytes()
}

/// Where `key`'s value lives in Redis (`{entity:id}rest`) and the primary that owns it.
fn stored_at(key: &str) -> (u16, String) {
    let cluster = RedisCluster::shared();
    let group_end = key.match_indices(':').nth(1).map_or(key.len(), |(i, _)| i);
    let stored = format!("{{{}}}{}", &key[..group_end], &key[group_end..]);
    let port = cluster
        .primaries()
        .into_iter()
        .find(|&port| cluster.keys_on_node(port, &stored).contains(&stored))
        .unwrap_or_else(|| panic!("{stored} is on no primary"));
    (port, stored)
}

/// The exact bytes Redis holds for `key` (its store record: epoch, record header, then the entry envelope),
/// carried out of Lua as hex so no byte is lost on the way.
fn stored_record(key: &str) -> Vec<u8> {
    let (port, stored) = stored_at(key);
    let script = "return (redis.call('GET', KEYS[1]):gsub('.', function(c) return string.format('%02x', c:byte()) end))";
    let hex = redis_cli(port, &["EVAL", script, "1", &stored]);
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Writes `record` over `key`'s value in Redis, keeping its TTL: what someone with write access to Redis can do.
fn put_record(key: &str, record: &[u8]) {
    let (port, stored) = stored_at(key);
    let hex: String = record.iter().map(|b| format!("{b:02x}")).collect();
    let script = "return redis.call('SET', KEYS[1], (ARGV[1]:gsub('..', function(h) return string.char(tonumber(h, 16)) end)), 'KEEPTTL')";
    let reply = redis_cli(port, &["EVAL", script, "1", &stored, &hex]);
    assert_eq!(reply.trim(), "OK", "SET of the forged record: {reply}");
}

/// Where the entry envelope starts in a store record: 8 bytes of group epoch, the record's format byte and its
/// 8-byte version (src/store/redis/record.rs).
const ENVELOPE_AT: usize = 17;

/// Byte ranges of the envelope header's fields, from the envelope's start (src/cache/entry.rs), and the forged
/// value written into each.
fn forgeries() -> Vec<(&'static str, std::ops::Range<usize>, Vec<u8>)> {
    // 2096-10-02: the kind of freshness a forger wants, decades away.
    let far_future_ms = 4_000_000_000_000u64;
    vec![
        ("fresh_until", 3..11, far_future_ms.to_be_bytes().to_vec()),
        ("version", 11..19, u64::MAX.to_be_bytes().to_vec()),
        ("load_ms", 19..23, u32::MAX.to_be_bytes().to_vec()),
    ]
}

/// An older ciphertext of an encrypted entity, put back into Redis with a forged header field (freshness
/// decades away, the highest version, another load time), reads as a miss; so does a plaintext "not found"
/// planted with decades of freshness. The same ciphertext put back untouched still opens: the control showing
/// the forgery, not the way it was written, is what the reader refuses.
#[tokio::test]
async fn a_ciphertext_replayed_with_a_forged_header_reads_as_a_miss() {
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("k1"), "11".repeat(32)).unwrap();
    let server = TestServer::start_with(encrypting(keys.path(), "k1")).await;
    let mut client = server.client().await;
    let key = format!("profile:{}", unique(""));
    set(&mut client, &key, b"old-secret").await;
    let old = stored_record(&key);
    set(&mut client, &key, b"current").await;

    put_record(&key, &old);
    assert_eq!(
        found_value(cached(&mut client, &key).await).as_deref(),
        Some(&b"old-secret"[..]),
        "control: the old record put back untouched opens"
    );

    let mut served = Vec::new();
    for (field, range, forged_value) in forgeries() {
        let mut forged = old.clone();
        forged[ENVELOPE_AT + range.start..ENVELOPE_AT + range.end].copy_from_slice(&forged_value);
        put_record(&key, &forged);
        let answer = cached(&mut client, &key).await;
        if answer.found {
            let secs = answer.ttl_remaining.map_or(0, |ttl| ttl.seconds);
            served.push(format!(
                "forged {field}: served, fresh for {secs} s ({} days) more",
                secs / 86_400
            ));
        }
    }

    // A plaintext "not found" (flags: negative) with the old record's epoch, fresh for decades.
    let mut planted = old[..ENVELOPE_AT + 3].to_vec();
    planted[ENVELOPE_AT + 2] = 1;
    planted.extend_from_slice(&forgeries()[0].2);
    planted.extend_from_slice(&[0; 12]);
    put_record(&key, &planted);
    let answer = cached(&mut client, &key).await;
    if answer.source() == Source::Negative {
        served.push("planted plaintext negative entry: served as NEGATIVE".into());
    }
    assert!(served.is_empty(), "forged envelopes served: {served:#?}");
}

/// A loader's "not found" for an encrypted entity is sealed like a value (so it cannot be planted in the clear)
/// and still reads back as NEGATIVE.
#[tokio::test]
async fn negative_entries_of_encrypted_entities_are_sealed() {
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("k1"), "11".repeat(32)).unwrap();
    let loader = TestLoader::start().await;
    let mut config = encrypting(keys.path(), "k1");
    loader.route(&mut config, "profile:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("profile:{}", unique(""));
    assert!(!get(&mut client, &key).await.found);
    assert_eq!(cached(&mut client, &key).await.source(), Source::Negative);
    let flags = stored_record(&key)[ENVELOPE_AT + 2];
    assert_eq!(flags, 0b11, "negative and sealed");
    assert_eq!(loader.source.loads_of(&key), 1);
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
