//! Redis through fred: one server or a Redis Cluster, chosen by the URL scheme.
//!
//! On a cluster, multi-key commands must stay inside one hash slot (MGET across slots fails with CROSSSLOT), so
//! batches are grouped by slot and the per-slot commands are sent concurrently; fred pipelines them on each
//! primary's connection, so a batch costs about one round trip per primary. Pattern deletion SCANs every primary
//! (never KEYS) and UNLINKs page by page, so Redis stays responsive while a large pattern is deleted.

use super::{Store, StoreWrite};
use crate::config::Config;
use crate::keys::{Key, Pattern};
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, Error as FredError, ErrorKind, Expiration,
    KeysInterface, ReconnectPolicy,
};
use fred::types::scan::{ScanResult, Scanner};
use futures::{Stream, StreamExt, future};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

/// Pages of SCAN results, from one server or from every primary of a cluster.
type ScanPages = Pin<Box<dyn Stream<Item = Result<ScanResult, FredError>> + Send>>;

/// A Redis server or cluster.
pub struct RedisStore {
    client: fred::clients::Client,
    clustered: bool,
    scan_count: u32,
    command_timeout: Duration,
}

impl RedisStore {
    /// Connects to `url` and waits, up to the configured connect timeout, until Redis answers.
    pub async fn connect(url: &str, config: &Config) -> Result<RedisStore> {
        let fred_config = FredConfig::from_url(url).map_err(backend_error)?;
        let clustered = fred_config.server.is_clustered();
        let command_timeout = Duration::from_millis(config.store.redis_command_timeout_ms);
        let connect_timeout = Duration::from_millis(config.store.redis_connect_timeout_ms);
        let client = Builder::from_config(fred_config)
            .with_performance_config(|perf| perf.default_command_timeout = command_timeout)
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = command_timeout;
            })
            // Reconnect forever with capped backoff: Redis coming back must not need a cachecoord restart.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()
            .map_err(backend_error)?;
        tokio::time::timeout(connect_timeout, client.init())
            .await
            .map_err(|elapsed| Error::BackendUnavailable {
                source: format!("no connection to {url} after {elapsed}").into(),
            })?
            .map_err(backend_error)?;
        Ok(RedisStore {
            client,
            clustered,
            scan_count: config.invalidation.scan_count,
            command_timeout,
        })
    }

    /// Groups key indices by hash slot; on a standalone server everything is one group.
    fn by_slot<'k>(&self, keys: impl Iterator<Item = &'k str>) -> BTreeMap<u16, Vec<usize>> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (index, key) in keys.enumerate() {
            let slot = if self.clustered {
                fred::util::redis_keyslot(key.as_bytes())
            } else {
                0
            };
            groups.entry(slot).or_default().push(index);
        }
        groups
    }

    /// Unlinks `keys`, one UNLINK per hash slot, all slots concurrently.
    async fn unlink_keys(&self, keys: &[&str]) -> Result<u64> {
        let groups = self.by_slot(keys.iter().copied());
        let unlinks = groups.values().map(|indices| {
            let group: Vec<&str> = indices.iter().map(|&i| keys[i]).collect();
            self.client.unlink::<u64, _>(group)
        });
        let counts = future::try_join_all(unlinks).await.map_err(backend_error)?;
        Ok(counts.into_iter().sum())
    }

    fn scan(&self, pattern: &Pattern) -> ScanPages {
        let count = Some(self.scan_count);
        if self.clustered {
            Box::pin(
                self.client
                    .scan_cluster(pattern.as_str().to_owned(), count, None),
            )
        } else {
            Box::pin(self.client.scan(pattern.as_str().to_owned(), count, None))
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        let groups = self.by_slot(keys.iter().map(Key::as_str));
        let reads = groups.into_values().map(|indices| async move {
            let group: Vec<&str> = indices.iter().map(|&i| keys[i].as_str()).collect();
            // A one-key MGET still answers an array, so one code path serves every group size.
            let values: Vec<Option<Bytes>> = self.client.mget(group).await?;
            Ok::<_, FredError>((indices, values))
        });
        let mut answers = vec![None; keys.len()];
        for (indices, values) in future::try_join_all(reads).await.map_err(backend_error)? {
            for (index, value) in indices.into_iter().zip(values) {
                answers[index] = value;
            }
        }
        Ok(answers)
    }

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<()> {
        let sets = writes.iter().map(|write| {
            let ttl_ms = i64::try_from(write.ttl.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            self.client.set::<(), _, _>(
                write.key.as_str(),
                write.value.clone(),
                Some(Expiration::PX(ttl_ms)),
                None,
                false,
            )
        });
        future::try_join_all(sets).await.map_err(backend_error)?;
        Ok(())
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let keys: Vec<&str> = keys.iter().map(Key::as_str).collect();
        self.unlink_keys(&keys).await
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        let mut pages = self.scan(pattern);
        let mut deleted = 0;
        // fred's SCAN stream does not apply the command timeout and stalls while Redis is down: bound each page.
        let stalled = || Error::BackendUnavailable {
            source: format!("SCAN got no page within {:?}", self.command_timeout).into(),
        };
        while let Some(page) = tokio::time::timeout(self.command_timeout, pages.next())
            .await
            .map_err(|_| stalled())?
        {
            let mut page = page.map_err(backend_error)?;
            if let Some(found) = page.take_results() {
                let keys: Vec<&str> = found.iter().filter_map(|key| key.as_str()).collect();
                if !keys.is_empty() {
                    deleted += self.unlink_keys(&keys).await?;
                }
            }
            page.next();
        }
        Ok(deleted)
    }

    async fn ping(&self) -> Result<()> {
        self.client.ping::<()>(None).await.map_err(backend_error)
    }
}

/// Connection, timeout and cluster-topology errors mean "try again later" (UNAVAILABLE); anything else is a
/// backend failure cachecoord cannot explain.
fn backend_error(error: FredError) -> Error {
    let transient = matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Cluster
            | ErrorKind::Routing
            | ErrorKind::Backpressure
    ) || ["CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN"]
        .iter()
        .any(|code| error.details().starts_with(code));
    let source = Box::new(error);
    if transient {
        Error::BackendUnavailable { source }
    } else {
        Error::Backend { source }
    }
}
