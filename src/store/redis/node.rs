//! One Redis node: its own clients (commands, invalidation fences, `ASKING`), its circuit breaker, and the OOM and
//! BUSY answers it gave.

use super::errors::{Refusal, backend_error};
use super::fence::Fence;
use crate::breaker::Breaker;
use crate::{Error, Result};
use fred::clients::Client;
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, Error as FredError, ErrorKind, ReconnectPolicy,
};
use fred::types::Value;
use fred::types::config::Server;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Timing and breaker settings shared by every node's client.
#[derive(Clone, Debug)]
pub(super) struct NodeSettings {
    /// Per-command timeout.
    pub(super) command_timeout: Duration,
    /// Timeout of the first connection at start-up.
    pub(super) connect_timeout: Duration,
    /// Regular slot-map refresh.
    pub(super) refresh_every: Duration,
    /// Consecutive failures that open a node's breaker, and how long it stays open before one probe.
    pub(super) breaker_failures: u32,
    pub(super) breaker_cooldown: Duration,
}

/// One Redis node: its clients and its breaker.
pub(super) struct Node {
    pub(super) server: Server,
    /// The node's own client; reads, writes, leases and fills run on it.
    pub(super) client: Client,
    /// A second connection for invalidation fences: `WAIT` blocks its connection until replicas acknowledge.
    pub(super) invalidator: Client,
    /// Shares one fence among the invalidations running at once on this node.
    pub(super) fence: Fence,
    /// A third connection, opened at the first `ASK` redirection to this node (`redirect`) and held for
    /// `ASKING` and the asked command together, so no other command takes the `ASKING` flag in between.
    asking: tokio::sync::Mutex<Option<Client>>,
    pub(super) breaker: Breaker,
    /// OOM and BUSY answers seen from this node since start-up (for Stats; the metric counts them too).
    oom_refusals: AtomicU64,
    busy_refusals: AtomicU64,
}

impl Node {
    /// A node at `server`, its clients (`config` names only it) connecting and reconnecting in the background.
    pub(super) fn connect(
        server: &Server,
        mut config: FredConfig,
        settings: &NodeSettings,
    ) -> Result<Node> {
        // A node that is down when first seen is retried in the background instead of failing the caller.
        config.fail_fast = false;
        let connect = || {
            let client = Builder::from_config(config.clone())
                .with_performance_config(|perf| {
                    perf.default_command_timeout = settings.command_timeout;
                })
                .with_connection_config(|conn| {
                    conn.connection_timeout = settings.connect_timeout.min(Duration::from_secs(1));
                    conn.internal_command_timeout = settings.command_timeout;
                })
                // Forever, and quickly: a node back from a restart or a pause should take traffic at once.
                .set_policy(ReconnectPolicy::new_exponential(0, 20, 500, 2))
                .build()
                .map_err(backend_error)?;
            client.connect();
            Ok::<_, Error>(client)
        };
        Ok(Node {
            server: server.clone(),
            client: connect()?,
            invalidator: connect()?,
            fence: Fence::new(),
            asking: tokio::sync::Mutex::new(None),
            breaker: Breaker::new(
                format!("redis {}:{}", server.host, server.port),
                settings.breaker_failures,
                settings.breaker_cooldown,
            ),
            oom_refusals: AtomicU64::new(0),
            busy_refusals: AtomicU64::new(0),
        })
    }

    /// `host:port`, for errors and logs.
    pub(super) fn name(&self) -> String {
        format!("{}:{}", self.server.host, self.server.port)
    }

    /// (OOM, BUSY) answers seen from this node since start-up.
    pub(super) fn refusals(&self) -> (u64, u64) {
        (
            self.oom_refusals.load(Ordering::Relaxed),
            self.busy_refusals.load(Ordering::Relaxed),
        )
    }

    /// Sends `ASKING`, then `command`, on this node's asking connection (opened on first use).
    pub(super) async fn asking<T, F, Fut>(&self, command: &F) -> Result<T, FredError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, FredError>>,
    {
        let mut asking = self.asking.lock().await;
        let client = match asking.as_ref() {
            Some(client) => client.clone(),
            None => {
                let client = self.client.clone_new();
                client.connect();
                tokio::time::timeout(Duration::from_secs(1), client.wait_for_connect())
                    .await
                    .map_err(|_| {
                        FredError::new(ErrorKind::Timeout, "connecting for ASK timed out")
                    })??;
                *asking = Some(client.clone());
                client
            }
        };
        client
            .custom::<Value, Value>(fred::cmd!("ASKING"), vec![])
            .await?;
        command(client).await
    }

    /// Every client of this node (the asking one only if it is not in use).
    pub(super) fn clients(&self) -> Vec<Client> {
        let mut clients = vec![self.client.clone(), self.invalidator.clone()];
        if let Ok(asking) = self.asking.try_lock() {
            clients.extend(asking.clone());
        }
        clients
    }

    /// Counts an OOM or BUSY answer of this node.
    pub(super) fn count_refusal(&self, refusal: Refusal) {
        let count = match refusal {
            Refusal::Oom => &self.oom_refusals,
            Refusal::Busy => &self.busy_refusals,
        };
        count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cachecoord_redis_refusals_total", "node" => self.name(), "reason" => refusal.label())
            .increment(1);
    }
}
