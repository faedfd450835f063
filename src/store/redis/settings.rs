//! Everything the Redis store takes from the configuration, read in one place: the rest of the store sees only
//! these settings, never the configuration tree.

use super::errors::backend_error;
use super::invalidation::InvalidationSettings;
use super::node::NodeSettings;
use crate::config::StoreConfig;
use crate::{Error, Result};
use fred::prelude::Config as FredConfig;

/// How to reach one Redis deployment and how to treat it.
pub(super) struct RedisSettings {
    /// Where the nodes are and how to authenticate; each node's client is built from it.
    pub(super) fred: FredConfig,
    pub(super) nodes: NodeSettings,
    pub(super) invalidation: InvalidationSettings,
    /// How long a key's version floor outlives its last versioned write.
    pub(super) version_retention: std::time::Duration,
    /// How often every node's `INFO` is read (`health`).
    pub(super) health_every: std::time::Duration,
}

impl RedisSettings {
    /// The settings for `url` under the `[store]` section.
    pub(super) fn new(url: &str, store: &StoreConfig) -> Result<RedisSettings> {
        let mut fred = FredConfig::from_url(url).map_err(backend_error)?;
        apply_credentials(&mut fred, store)?;
        Ok(RedisSettings {
            fred,
            nodes: NodeSettings {
                command_timeout: store.redis_command_timeout,
                connect_timeout: store.redis_connect_timeout,
                refresh_every: store.redis_topology_refresh,
                breaker_failures: store.node_breaker_failures,
                breaker_cooldown: store.node_breaker_cooldown,
            },
            invalidation: InvalidationSettings {
                scan_count: store.scan_count,
                page_timeout: store.redis_command_timeout,
                replica_acks: store.invalidation_replica_acks,
                replica_ack_timeout: store.replica_ack_timeout,
                command_timeout: store.redis_command_timeout,
            },
            version_retention: store.version_retention,
            health_every: store.redis_health_interval,
        })
    }
}

/// The ACL user, password and TLS trust configured apart from the URL (so the password can come from a Secret).
fn apply_credentials(fred: &mut FredConfig, store: &StoreConfig) -> Result<()> {
    if let Some(username) = &store.redis_username {
        fred.username = Some(username.clone());
    }
    if let Some(password) = &store.redis_password {
        fred.password = Some(password.clone());
    }
    if fred.tls.is_some() || store.redis_tls_ca_file.is_some() {
        let tls = crate::tls::client_config(store.redis_tls_ca_file.as_deref()).map_err(|e| {
            Error::Backend {
                source: format!("Redis TLS: {e:#}").into(),
            }
        })?;
        fred.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    Ok(())
}
