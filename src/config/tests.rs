//! The configuration's layers, renamed knobs, secrets and validation, checked against the example file.

use super::*;

fn load_file(path: &std::path::Path) -> Result<Config, ConfigError> {
    Config::load(&Cli {
        config: Some(path.into()),
        ..Cli::default()
    })
}

#[test]
fn example_file_is_exactly_the_defaults() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/cachecoord.example.toml"
    );
    let loaded = load_file(example.as_ref()).unwrap();
    assert_eq!(loaded, Config::default());
}

#[test]
fn example_file_lists_every_knob() {
    // Every key the defaults serialise must appear in the example, uncommented or commented out, so a new
    // knob cannot be added without documenting it there.
    let example = include_str!("../../config/cachecoord.example.toml");
    let defaults = toml::to_string(&Config::default()).unwrap();
    for line in defaults.lines() {
        let Some((knob, value)) = line.split_once(" = ") else {
            continue;
        };
        if value == "[]" && (knob == "loaders" || knob == "tables") {
            // Arrays of tables: shown as commented-out [[loaders]] / [[outbox.tables]] examples.
            continue;
        }
        let listed = example.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{knob} =")) || l.starts_with(&format!("{knob}="))
        });
        assert!(
            listed,
            "config/cachecoord.example.toml does not list {knob}"
        );
    }
    assert!(example.contains("# [[loaders]]") && example.contains("# [[outbox.tables]]"));
    for optional in [
        "redis_url",
        "redis_url_file",
        "redis_username",
        "redis_username_file",
        "redis_password",
        "redis_password_file",
        "redis_tls_ca_file",
        "tokens_file",
        "cert_file",
        "key_file",
        "client_ca_file",
        "health_listen_addr",
        "keys_dir",
        "active_key",
        "otlp_endpoint",
        "url",
        "url_file",
        "tls_ca_file",
    ] {
        assert!(
            example.contains(&format!("# {optional} =")),
            "config/cachecoord.example.toml does not show the optional {optional}"
        );
    }
}

#[test]
fn credentials_come_from_their_files_and_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let path = dir.path().join("files.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\nredis_url_file = {:?}\nredis_username_file = {:?}\nredis_password_file = {:?}\n\
             [postgres]\nurl_file = {:?}\n",
            secret("url", "redis://cc:in-url@127.0.0.1:7000\n"),
            secret("user", "true\n"),
            secret("password", "123456\n"),
            secret("pg", "host=db user=app password=' x '\n"),
        ),
    )
    .unwrap();
    let loaded = load_file(&path).unwrap();
    assert_eq!(
        loaded.store.redis_url.as_deref(),
        Some("redis://cc:in-url@127.0.0.1:7000")
    );
    assert_eq!(loaded.store.redis_username.as_deref(), Some("true"));
    assert_eq!(loaded.store.redis_password.as_deref(), Some("123456"));
    assert_eq!(
        loaded.postgres.url.as_deref(),
        Some("host=db user=app password=' x '")
    );
    let printed = toml::to_string(&loaded.redacted()).unwrap();
    for secret in ["123456", "in-url", "' x '"] {
        assert!(!printed.contains(secret), "{printed}");
    }
    assert!(
        printed.contains("redis://cc:<redacted>@127.0.0.1:7000"),
        "{printed}"
    );
}

#[test]
fn a_credential_set_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "x").unwrap();
    let path = dir.path().join("both.toml");
    std::fs::write(
        &path,
        format!("[store]\nredis_password = \"y\"\nredis_password_file = {secret:?}\n"),
    )
    .unwrap();
    let refused = load_file(&path).unwrap_err();
    assert!(refused.0.contains("both set"), "{refused}");
}

#[test]
fn flags_override_everything() {
    let cli = Cli {
        listen_addr: Some("127.0.0.1:6000".parse().unwrap()),
        redis_url: Some("redis-cluster://127.0.0.1:7000".into()),
        ..Cli::default()
    };
    let loaded = Config::load(&cli).unwrap();
    assert_eq!(loaded.listen_addr.port(), 6000);
    assert_eq!(
        loaded.store.redis_url.as_deref(),
        Some("redis-cluster://127.0.0.1:7000")
    );
}

#[test]
fn old_knob_names_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.toml");
    std::fs::write(
        &path,
        "[read_through]\nbreaker_failures = 7\nbreaker_cooldown_ms = 250\n\
         [invalidation]\nscan_count = 50\n",
    )
    .unwrap();
    let loaded = load_file(&path).unwrap();
    assert_eq!(loaded.store.node_breaker_failures, 7);
    assert_eq!(
        loaded.store.node_breaker_cooldown,
        Duration::from_millis(250)
    );
    assert_eq!(loaded.store.scan_count, 50);
    assert_eq!(loaded.renamed_knobs().len(), 3);
}

#[test]
fn durations_keep_their_units_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("units.toml");
    std::fs::write(
        &path,
        "[read_through]\nlease_ttl_ms = 2500\n[policy_defaults]\nttl_secs = 90\n\
         [[policies]]\nname = \"u\"\npattern = \"u:*\"\nttl_secs = 5\nnear_cache_ttl_secs = 2\n",
    )
    .unwrap();
    let loaded = load_file(&path).unwrap();
    assert_eq!(loaded.read_through.lease_ttl, Duration::from_millis(2500));
    assert_eq!(loaded.policy_defaults.ttl, Duration::from_secs(90));
    assert_eq!(loaded.policies[0].ttl, Duration::from_secs(5));
    assert_eq!(
        loaded.policies[0].near_cache_ttl,
        Some(Duration::from_secs(2))
    );
    let printed = toml::to_string(&loaded).unwrap();
    assert!(printed.contains("lease_ttl_ms = 2500"), "{printed}");
}

#[test]
fn rejects_bad_policies() {
    let mut config = Config::default();
    config.policies[0].pattern = "user:[x]".into();
    assert!(config.validate().is_err());
}
