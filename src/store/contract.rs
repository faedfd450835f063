//! What every store promises the coordinator: the `Store` trait and the values that cross it. Its own file so
//! the backends depend on it without depending on the module that picks between them.

use crate::Result;
use crate::keys::{Key, Pattern};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// One write: the value and how long the store keeps it.
#[derive(Clone, Debug)]
pub struct StoreWrite {
    /// Key to write.
    pub key: Key,
    /// Bytes to store (an encoded entry).
    pub value: Bytes,
    /// Physical time to live: the store forgets the entry after it.
    pub ttl: Duration,
    /// When set, the write is refused if the stored entry carries a higher version. The store keeps the version
    /// of every write beside its bytes (0 when none), so it never reads the bytes to compare.
    pub version: Option<u64>,
}

/// How a fill ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// Written; the lease is released.
    Written,
    /// The lease was voided (a Set or an invalidation came after the load started) or ran out: nothing written.
    Voided,
    /// A versioned fill below the key's version floor (the loader read an older row than one already written):
    /// nothing written, and the lease is released.
    Older,
}

/// A random token naming one holder of one lease.
pub type LeaseToken = u64;

/// What one replica tells every replica's near-cache (its own included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// These keys changed or were deleted.
    Keys(Vec<String>),
    /// Every key matching this pattern was deleted.
    Pattern(String),
    /// A replica's liveness probe of its own subscription: (replica id, sequence number).
    Heartbeat(u64, u64),
    /// A strict write's keys: applied as `Keys`, then acknowledged to the writer by every member.
    StrictKeys(Stamp, Vec<String>),
    /// A strict write's pattern: applied as `Pattern`, then acknowledged to the writer by every member.
    StrictPattern(Stamp, String),
    /// A near-cache member confirms it applied these strict notices of one writer.
    Acks(Acks),
}

/// Names one strict notice: the writing replica and the notice's sequence number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The writer's replica id.
    pub writer: u64,
    /// The writer's sequence number for this notice.
    pub seq: u64,
}

/// The near-cache membership as a strict writer must see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Members {
    /// Members whose lease runs: each acknowledges a notice, or is revoked.
    pub live: Vec<u64>,
    /// Members a writer revoked while their lease still ran, with what it still runs: they may serve until then,
    /// so a writer waits for their acknowledgement or that long.
    pub revoked: Vec<(u64, Duration)>,
}

/// What a member applied, batched per writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acks {
    /// The acknowledging member's replica id.
    pub member: u64,
    /// The writer the acknowledged notices came from.
    pub writer: u64,
    /// The sequence numbers applied.
    pub seqs: Vec<u64>,
}

/// What a replica hears on the notice channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A notice from some replica.
    Notice(Notice),
    /// The subscription was lost: notices may have been missed until it is back.
    Lost,
    /// How long the notice about to be heard took from its sender (when the wire says), for the near-cache's
    /// notice-delay figures.
    Delay(Duration),
}

/// One Redis node as its last `INFO` described it, for operators (Stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// `host:port`, as cachecoord reaches it.
    pub node: String,
    /// `primary` or `replica`.
    pub role: String,
    /// `used_memory`.
    pub used_memory_bytes: u64,
    /// `maxmemory`; 0 when unset (no limit).
    pub maxmemory_bytes: u64,
    /// `maxmemory_policy`, e.g. `allkeys-lru`.
    pub maxmemory_policy: String,
    /// `evicted_keys` since the node started.
    pub evicted_keys: u64,
    /// For a replica, the bytes its primary sent that it has not acknowledged (None for a primary, or when its
    /// primary was not read).
    pub replication_lag_bytes: Option<u64>,
    /// Commands this replica saw refused with OOM (a full node under `noeviction`), since start-up.
    pub oom_refusals: u64,
    /// Commands this replica saw refused with BUSY (a long script), since start-up.
    pub busy_refusals: u64,
}

impl NodeHealth {
    /// Whether the node makes room when full: maxmemory set and a policy other than `noeviction`.
    pub fn evicts(&self) -> bool {
        self.maxmemory_bytes > 0 && self.maxmemory_policy != "noeviction"
    }
}

/// The operations the coordinator needs from a backend.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads `keys`; one answer per key, in order, `None` for a missing or expired key.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>>;

    /// Writes every entry and voids its lease; answers, per write, whether it was applied (a versioned write
    /// older than the stored entry is not). Not atomic across keys: on error some entries may have been written.
    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>>;

    /// Deletes `keys` (distinct) and voids their leases; answers how many keys existed.
    async fn delete_many(&self, keys: &[Key]) -> Result<u64>;

    /// Voids the leases of, then deletes, every key matching `pattern`, without blocking the backend; answers how
    /// many keys were deleted.
    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64>;

    /// Takes `key`'s lease for `ttl` unless someone holds it; answers whether this caller now holds it.
    async fn try_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool>;

    /// Writes `write` only while `token` still holds its key's lease, releases the lease and announces the fill;
    /// writes nothing when the lease was voided or expired, or when a versioned `write` is below the key's
    /// version floor (the lease is then released).
    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<Filled>;

    /// Gives up `key`'s lease if `token` still holds it (a failed load), and announces it so waiters retry;
    /// answers whether it did.
    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<bool>;

    /// Extends `key`'s lease to `ttl` from now if `token` still holds it; answers whether it did.
    async fn renew_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool>;

    /// Keys whose lease was just filled or released, on any replica. Lossy under overload: waiters also poll.
    fn lease_events(&self) -> broadcast::Receiver<Arc<str>>;

    /// Sends `notice` to every replica's near-cache (acknowledgements: to their writer's).
    async fn publish(&self, notice: &Notice) -> Result<()>;

    /// Notices from every replica, and word when the subscription is lost.
    fn notices(&self) -> broadcast::Receiver<Heard>;

    /// From now on also hears, in `notices`, the acknowledgements addressed to strict writer `writer` (this
    /// replica): a store that sends each acknowledgement to its writer only must be told who listens for which.
    /// A store that delivers every notice to every replica needs nothing.
    fn hear_acks(&self, writer: u64) {
        let _ = writer;
    }

    /// Joins (`join`) or renews the near-cache membership of replica `member`, for `lease` from when the store
    /// applies it. A renewal answers false when the member is gone (its lease lapsed, or a writer revoked it): it
    /// must flush what it holds and join again. Answers only once the change would survive a failover of the
    /// store (on Redis, once the members set's replicas hold it), so the member may count on it.
    async fn renew_membership(&self, member: u64, lease: Duration, join: bool) -> Result<bool>;

    /// Removes `member` from the near-cache membership (a replica leaving).
    async fn leave_membership(&self, member: u64) -> Result<()>;

    /// The near-cache members whose lease has not lapsed, and those revoked while it ran, until it lapses.
    async fn members(&self) -> Result<Members>;

    /// Removes `member` so it can no longer renew, listing it in [`Members::revoked`] until its lease ends;
    /// answers how long its lease still ran when it was removed (zero when it had lapsed or left). Answers only once the removal would survive a failover of the store.
    async fn revoke_member(&self, member: u64) -> Result<Duration>;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<()>;

    /// The backend's nodes as last polled, sorted by node (none for the embedded store).
    fn node_health(&self) -> Vec<NodeHealth> {
        Vec::new()
    }
}
