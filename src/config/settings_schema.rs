//! The Helm chart's schema for `config.settings` (any setting, merged over the rendered configuration) is derived
//! from this configuration tree, and a test holds it to it: every table and knob the binary reads, with its
//! type, and nothing else (`additionalProperties: false`), so `helm install` refuses a misspelt or mistyped setting
//! the binary would refuse. Rules between settings stay with `check-config` (the chart's hook runs it).

use super::Config;
use serde_json::{Value as Json, json};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The defaults with every optional setting set, so each appears when serialised. A new optional setting
/// belongs here too (`example_file_lists_every_knob` has the same list for the example file).
fn every_setting() -> Config {
    let mut config = Config::default();
    let (file, addr) = (
        Some(PathBuf::from("/f")),
        Some(SocketAddr::from(([127, 0, 0, 1], 1))),
    );
    let store = &mut config.store;
    store.redis_url = Some("redis://h:1".into());
    store.redis_url_file = file.clone();
    store.redis_username = Some("u".into());
    store.redis_username_file = file.clone();
    store.redis_password = Some("p".into());
    store.redis_password_file = file.clone();
    store.redis_tls_ca_file = file.clone();
    config.encryption.keys_dir = file.clone();
    config.encryption.active_key = Some("k".into());
    config.postgres.url = Some("host=h".into());
    config.postgres.url_file = file.clone();
    config.postgres.tls_ca_file = file.clone();
    config.auth.tokens_file = file.clone();
    config.tls.health_listen_addr = addr;
    config.tls.cert_file = file.clone();
    config.tls.key_file = file.clone();
    config.tls.client_ca_file = file;
    config.telemetry.metrics_addr = addr;
    config.telemetry.otlp_endpoint = Some("http://h:1".into());
    config
}

/// The JSON schema of a TOML value's type; tables list their keys and refuse others.
fn schema_of(value: &toml::Value) -> Json {
    match value {
        toml::Value::Integer(_) => json!({"type": "integer"}),
        toml::Value::Float(_) => json!({"type": "number"}),
        toml::Value::Boolean(_) => json!({"type": "boolean"}),
        toml::Value::String(_) | toml::Value::Datetime(_) => json!({"type": "string"}),
        toml::Value::Array(_) => json!({"type": "array"}),
        toml::Value::Table(table) => {
            let properties: serde_json::Map<String, Json> = table
                .iter()
                .map(|(key, value)| (key.clone(), schema_of(value)))
                .collect();
            json!({"type": "object", "additionalProperties": false, "properties": properties})
        }
    }
}

/// What `config.settings` in values.schema.json must be.
fn expected() -> Json {
    let mut schema = schema_of(&toml::Value::try_from(every_setting()).unwrap());
    // Old names of moved knobs: still read (`old_knob_names_still_work`), never written back.
    for (table, knob) in [
        ("read_through", "breaker_failures"),
        ("read_through", "breaker_cooldown_ms"),
        ("invalidation", "scan_count"),
    ] {
        schema["properties"][table]["properties"][knob] = json!({"type": "integer"});
    }
    schema["description"] = json!(
        "Any cachecoord setting, merged over the rendered configuration. Derived from the binary's configuration \
         (src/config/settings_schema.rs checks it)."
    );
    schema
}

#[test]
fn the_charts_settings_schema_is_the_configurations() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/cachecoord/values.schema.json"
    );
    let schema: Json = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let settings = &schema["properties"]["config"]["properties"]["settings"];
    let expected = expected();
    assert!(
        *settings == expected,
        "helm/cachecoord/values.schema.json: properties.config.properties.settings must be\n{}",
        serde_json::to_string_pretty(&expected).unwrap()
    );
}

#[test]
fn every_setting_the_schema_lists_loads() {
    // A value of each listed type, for every listed knob (the old names aside): the binary reads them all back.
    let text = toml::to_string(&every_setting()).unwrap();
    let parsed: Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, every_setting());
}
