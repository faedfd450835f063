//! A store decorator that times every call and counts failures, for the `cachecoord_store_*` metrics and the
//! tracing spans of store calls. It wraps whichever backend is configured, so both are observed the same way.

use super::contract::{Filled, Heard, LeaseToken, NodeHealth, Notice, Store, StoreWrite};
use crate::keys::{Key, Pattern};
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Observes an inner store.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> MeteredStore {
        MeteredStore { inner }
    }
}

/// Runs one store call inside a `store` span, recording its duration and any failure under `op`.
async fn observe<T>(op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let span = tracing::info_span!("store", op, outcome = tracing::field::Empty);
    let result = call.instrument(span.clone()).await;
    metrics::histogram!("cachecoord_store_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "ok",
        Err(Error::BackendUnavailable { .. }) => "unavailable",
        Err(_) => "error",
    };
    span.record("outcome", outcome);
    if result.is_err() {
        metrics::counter!("cachecoord_store_errors_total", "op" => op, "kind" => outcome)
            .increment(1);
    }
    result
}

#[async_trait]
impl Store for MeteredStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        observe("get", self.inner.get_many(keys)).await
    }

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>> {
        observe("set", self.inner.set_many(writes)).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        observe("delete", self.inner.delete_many(keys)).await
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        observe("delete_matching", self.inner.delete_matching(pattern)).await
    }

    async fn try_lease(
        &self,
        key: &Key,
        token: LeaseToken,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        observe("lease", self.inner.try_lease(key, token, ttl)).await
    }

    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<Filled> {
        observe("fill", self.inner.fill(token, write)).await
    }

    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<bool> {
        observe("release", self.inner.release_lease(key, token)).await
    }

    async fn renew_lease(
        &self,
        key: &Key,
        token: LeaseToken,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        observe("renew", self.inner.renew_lease(key, token, ttl)).await
    }

    fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.lease_events()
    }

    async fn publish(&self, notice: &Notice) -> Result<()> {
        observe("publish", self.inner.publish(notice)).await
    }

    fn notices(&self) -> broadcast::Receiver<Heard> {
        self.inner.notices()
    }

    async fn ping(&self) -> Result<()> {
        observe("ping", self.inner.ping()).await
    }

    fn node_health(&self) -> Vec<NodeHealth> {
        self.inner.node_health()
    }
}
