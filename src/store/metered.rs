//! A store decorator that times every call and counts failures, for the `cachecoord_store_*` metrics and the
//! tracing spans of store calls. It wraps whichever backend is configured, so both are observed the same way.

use super::contract::{Filled, Heard, LeaseToken, Members, NodeHealth, Notice, Store, StoreWrite};
use crate::keys::{Key, Pattern};
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use metrics::Histogram;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Observes an inner store.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    /// `cachecoord_store_duration_seconds{op}` per operation: found in the metrics registry at
    /// an operation's first call and kept (indexed by [`Op`]), so a call does not look its series up again.
    durations: [OnceLock<Histogram>; Op::COUNT],
}

/// The operations timed, each labelled `op` with its name.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
    Delete,
    DeleteMatching,
    Lease,
    Fill,
    Release,
    Renew,
    Publish,
    Ping,
    Membership,
}

impl Op {
    const COUNT: usize = 11;

    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::DeleteMatching => "delete_matching",
            Op::Lease => "lease",
            Op::Fill => "fill",
            Op::Release => "release",
            Op::Renew => "renew",
            Op::Publish => "publish",
            Op::Ping => "ping",
            Op::Membership => "membership",
        }
    }
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> MeteredStore {
        MeteredStore {
            inner,
            durations: Default::default(),
        }
    }

    /// Runs one store call inside a `store` span, recording its duration and any failure under `op`.
    async fn observe<T>(&self, op: Op, call: impl Future<Output = Result<T>>) -> Result<T> {
        let name = op.name();
        let started = Instant::now();
        let span = tracing::info_span!("store", op = name, outcome = tracing::field::Empty);
        let result = call.instrument(span.clone()).await;
        self.durations[op as usize]
            .get_or_init(|| metrics::histogram!("cachecoord_store_duration_seconds", "op" => name))
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::BackendUnavailable { .. }) => "unavailable",
            Err(_) => "error",
        };
        span.record("outcome", outcome);
        if result.is_err() {
            metrics::counter!("cachecoord_store_errors_total", "op" => name, "kind" => outcome)
                .increment(1);
        }
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        self.observe(Op::Get, self.inner.get_many(keys)).await
    }

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>> {
        self.observe(Op::Set, self.inner.set_many(writes)).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        self.observe(Op::Delete, self.inner.delete_many(keys)).await
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        self.observe(Op::DeleteMatching, self.inner.delete_matching(pattern))
            .await
    }

    async fn try_lease(
        &self,
        key: &Key,
        token: LeaseToken,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        self.observe(Op::Lease, self.inner.try_lease(key, token, ttl))
            .await
    }

    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<Filled> {
        self.observe(Op::Fill, self.inner.fill(token, write)).await
    }

    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<bool> {
        self.observe(Op::Release, self.inner.release_lease(key, token))
            .await
    }

    async fn renew_lease(
        &self,
        key: &Key,
        token: LeaseToken,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        self.observe(Op::Renew, self.inner.renew_lease(key, token, ttl))
            .await
    }

    fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.lease_events()
    }

    async fn publish(&self, notice: &Notice) -> Result<()> {
        self.observe(Op::Publish, self.inner.publish(notice)).await
    }

    fn notices(&self) -> broadcast::Receiver<Heard> {
        self.inner.notices()
    }

    fn hear_acks(&self, writer: u64) {
        self.inner.hear_acks(writer);
    }

    async fn renew_membership(
        &self,
        member: u64,
        lease: std::time::Duration,
        join: bool,
    ) -> Result<bool> {
        let renewed = self.inner.renew_membership(member, lease, join);
        self.observe(Op::Membership, renewed).await
    }

    async fn leave_membership(&self, member: u64) -> Result<()> {
        self.observe(Op::Membership, self.inner.leave_membership(member))
            .await
    }

    async fn members(&self) -> Result<Members> {
        self.observe(Op::Membership, self.inner.members()).await
    }

    async fn revoke_member(&self, member: u64) -> Result<std::time::Duration> {
        self.observe(Op::Membership, self.inner.revoke_member(member))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.observe(Op::Ping, self.inner.ping()).await
    }

    fn node_health(&self) -> Vec<NodeHealth> {
        self.inner.node_health()
    }
}
