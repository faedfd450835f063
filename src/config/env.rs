//! The `CACHECOORD_*` environment variables: one layer of the configuration, above the file and below the flags.
//! Nested fields are joined with `__` (`CACHECOORD_STORE__REDIS_URL`); `CACHECOORD_CONFIG` names the file and is
//! read by the flags (`cli`), not here.

use crate::error::ConfigError;
use figment::providers::Env;
use figment::value::Value;
use serde::Serialize;

/// The `CACHECOORD_*` variables as (figment path, text) pairs, `("store.redis_url", "redis://…")`, without
/// Kubernetes' service links: for a Service named `cachecoord` (or `cachecoord-*`) Kubernetes injects
/// `CACHECOORD_SERVICE_HOST`, `CACHECOORD_PORT`, … and those must not stop start-up. Only a name that matches no
/// top-level field of `defaults` (the configuration tree) *and* has a service link's shape is skipped; every other
/// unknown name is still refused at start-up, so a misspelt setting (`CACHECOORD_STORE_REDIS_URL` with one
/// underscore) can never be silently ignored. Values stay text exactly as given (a password `123456`, `true` or
/// with leading spaces stays that string); numbers and booleans are read from text by the lossy extraction.
pub(super) fn variables(defaults: &impl Serialize) -> Result<Vec<(String, String)>, ConfigError> {
    let known = match Value::serialize(defaults) {
        Ok(Value::Dict(_, dict)) => dict.into_keys().collect::<Vec<String>>(),
        _ => return ConfigError::fail("the configuration's own defaults do not serialize"),
    };
    let variables = Env::prefixed("CACHECOORD_")
        .ignore(&["config"])
        .split("__")
        .filter(move |key| {
            let section = key.as_str().split('.').next().unwrap_or_default();
            known.iter().any(|k| k.eq_ignore_ascii_case(section))
                || !is_service_link(&section.to_ascii_lowercase())
        });
    Ok(variables
        .iter()
        .map(|(key, text)| (key.as_str().to_owned(), text))
        .collect())
}

/// Whether `name` (after the `CACHECOORD_` prefix, lower case) has the shape of a variable Kubernetes injects for
/// a Service: `[NAME_]SERVICE_HOST`, `[NAME_]SERVICE_PORT[_PORTNAME]`, `[NAME_]PORT`, or
/// `[NAME_]PORT_<number>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`.
fn is_service_link(name: &str) -> bool {
    let parts: Vec<&str> = name.split('_').collect();
    if parts
        .windows(2)
        .any(|pair| pair[0] == "service" && matches!(pair[1], "host" | "port"))
    {
        return true;
    }
    let Some(at) = parts.iter().rposition(|part| *part == "port") else {
        return false;
    };
    match &parts[at + 1..] {
        [] => true,
        [number, protocol, rest @ ..] => {
            number.chars().all(|c| c.is_ascii_digit())
                && matches!(*protocol, "tcp" | "udp" | "sctp")
                && matches!(rest, [] | ["proto" | "port" | "addr"])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_links_are_recognised_and_settings_are_not() {
        for link in [
            "service_host",
            "service_port",
            "service_port_grpc",
            "port",
            "port_50051_tcp",
            "port_50051_tcp_proto",
            "port_50051_tcp_addr",
            "redis_service_host",
            "redis_port_6379_tcp_port",
        ] {
            assert!(is_service_link(link), "{link}");
        }
        for setting in [
            "store_redis_url",
            "stor",
            "listen_addr",
            "port_x",
            "auth_enabled",
        ] {
            assert!(!is_service_link(setting), "{setting}");
        }
    }
}
