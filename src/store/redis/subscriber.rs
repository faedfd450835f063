//! A subscriber connection of its own to one node, shared by the near-cache notices (`notices`: one per slot
//! range) and the lease events (`pubsub`: one to a primary): how it is built, and that dropping it stops its tasks
//! and closes the connection.

use super::errors::backend_error;
use crate::Result;
use fred::clients::SubscriberClient;
use fred::prelude::{Builder, ClientLike, Config as FredConfig, ReconnectPolicy};
use fred::types::config::Server;
use std::time::Duration;
use tokio::task::JoinHandle;

/// One subscriber connection, on `server`, and the tasks reading it; closed (and its tasks stopped) when dropped.
pub(super) struct SubscriberConnection {
    pub(super) server: Server,
    pub(super) client: SubscriberClient,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Drop for SubscriberConnection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.quit().await;
        });
    }
}

/// A subscriber client for `config` (one node), not yet connected: `(connect, command)` timeouts, reconnecting
/// with `reconnect`, buffering `buffer` messages (fred's default when `None`) before its reader lags.
pub(super) fn subscriber_client(
    config: FredConfig,
    (connect_timeout, command_timeout): (Duration, Duration),
    reconnect: ReconnectPolicy,
    buffer: Option<usize>,
) -> Result<SubscriberClient> {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|conn| {
            conn.connection_timeout = connect_timeout;
            conn.internal_command_timeout = command_timeout;
        })
        .set_policy(reconnect);
    if let Some(buffer) = buffer {
        builder.with_performance_config(|perf| perf.broadcast_channel_capacity = buffer);
    }
    builder.build_subscriber_client().map_err(backend_error)
}
