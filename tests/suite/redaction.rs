//! Sensitive entities leak nowhere: with a `sensitive = true` policy, the warnings of a failed load, a lease wait
//! that timed out, a failed fill and a failed background refresh (and the spans around them) name the entity
//! and a keyed hash, never the key; a loader's error reaches the caller as a generic LOADER_FAILED message and
//! reaches the operator's log with the key taken out.
//!
//! In-process, over the coordinator: a store that can refuse fills and a loader that fails the way a database
//! does (its address and user in the message, the key echoed) make every path happen on demand, and a tracing
//! subscriber scoped to the test's thread (the runtime is single-threaded, so spawned loads and refreshes run on
//! it too) captures everything logged.

use crate::support::assert_error;
use async_trait::async_trait;
use bytes::Bytes;
use cachecoord::cache::{Coordinator, ReadOptions};
use cachecoord::config::{Config, PolicyConfig};
use cachecoord::keys::{Key, Pattern};
use cachecoord::loader::{Loaded, Loader, Loaders};
use cachecoord::store::{
    Filled, Heard, LeaseToken, Members, MemoryStore, Notice, Store, StoreWrite,
};
use cachecoord::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tonic::Code;

/// What an upstream database says when it fails: internal address and user, which no caller may see.
const UPSTREAM: &str = "pg: password authentication failed for user billing_rw at 10.1.2.3:5432";

/// Keys of the sensitive entity: none of these words may appear in any log line.
const LEAKS: [&str; 2] = ["mrn-", "hiv-status"];

/// A loader that answers after a few milliseconds (so loads have a duration XFetch can use), or fails like a
/// database that refuses its credentials, echoing the key.
#[derive(Default)]
struct Source {
    failing: AtomicBool,
}

#[async_trait]
impl Loader for Source {
    async fn load(&self, key: &Key) -> Result<Loaded> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.failing.load(Ordering::Relaxed) {
            return Err(Error::LoaderFailed {
                key: key.to_string(),
                source: format!("{UPSTREAM} (query for {})", key.local()).into(),
            });
        }
        Ok(Loaded::value(Bytes::from_static(b"positive")))
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Loaded>> {
        let mut loaded = Vec::new();
        for key in keys {
            loaded.push(self.load(key).await?);
        }
        Ok(loaded)
    }
}

/// The embedded store, refusing fills on demand.
struct Flaky {
    inner: MemoryStore,
    refuse_fills: AtomicBool,
}

#[async_trait]
impl Store for Flaky {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        self.inner.get_many(keys).await
    }
    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>> {
        self.inner.set_many(writes).await
    }
    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        self.inner.delete_many(keys).await
    }
    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        self.inner.delete_matching(pattern).await
    }
    async fn try_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        self.inner.try_lease(key, token, ttl).await
    }
    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<Filled> {
        if self.refuse_fills.load(Ordering::Relaxed) {
            return Err(Error::BackendUnavailable {
                source: "node 10.1.2.9:6379 is loading its dataset".into(),
            });
        }
        self.inner.fill(token, write).await
    }
    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<bool> {
        self.inner.release_lease(key, token).await
    }
    async fn renew_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        self.inner.renew_lease(key, token, ttl).await
    }
    fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.lease_events()
    }
    async fn publish(&self, notice: &Notice) -> Result<()> {
        self.inner.publish(notice).await
    }
    fn notices(&self) -> broadcast::Receiver<Heard> {
        self.inner.notices()
    }
    async fn renew_membership(&self, member: u64, lease: Duration, join: bool) -> Result<bool> {
        self.inner.renew_membership(member, lease, join).await
    }
    async fn leave_membership(&self, member: u64) -> Result<()> {
        self.inner.leave_membership(member).await
    }
    async fn members(&self) -> Result<Members> {
        self.inner.members().await
    }
    async fn revoke_member(&self, member: u64) -> Result<Duration> {
        self.inner.revoke_member(member).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

/// Everything logged while the guard of [`capture`] lives.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until `needle` was logged: background work logs after the call answered.
    async fn wait_for(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.text().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "never logged {needle:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Captures every event and span of this thread, debug included, as the text log prints them.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    // While only one dispatcher is registered, tracing-core judges a callsite first hit on another thread by
    // that thread's subscriber (none: "never") and caches the verdict, so a concurrent test could mute this one.
    // A second, idle dispatcher makes it ask every registered one.
    static IDLE: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    IDLE.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// A coordinator with a sensitive `patient` entity (XFetch so eager that every hit refreshes) over `store`.
fn coordinator(store: Arc<dyn Store>, source: Arc<Source>) -> Coordinator {
    let mut config = Config::default();
    let mut patient = PolicyConfig::new("patient", "patient:*", Duration::from_secs(3600));
    patient.sensitive = true;
    patient.xfetch_beta = Some(1e12);
    config.policies = vec![patient];
    config.read_through.lease_wait = Duration::from_millis(100);
    config.read_through.lease_poll = Duration::from_millis(10);
    let route = Pattern::parse("patient:*", 512, true).unwrap();
    let loaders = Loaders::from_routes(vec![(route, source as Arc<dyn Loader>)]);
    Coordinator::new(store, loaders, &config).unwrap()
}

const READ: ReadOptions = ReadOptions {
    cache_only: false,
    lease: false,
    wait_until: None,
};

/// The loader-failure, lease-timeout, failed-fill and failed-refresh paths of a sensitive entity log the entity
/// and the upstream detail, never the key.
#[tokio::test]
async fn sensitive_keys_reach_no_log_line() {
    let (captured, _guard) = capture();
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(1 << 20),
        refuse_fills: AtomicBool::new(false),
    });
    let source = Arc::new(Source::default());
    let cache = coordinator(store.clone(), source.clone());

    // The loader fails.
    source.failing.store(true, Ordering::Relaxed);
    cache
        .get("team-a|patient:mrn-4711:hiv-status", READ)
        .await
        .unwrap_err();
    captured.wait_for("loader failed").await;
    source.failing.store(false, Ordering::Relaxed);

    // Another replica holds the lease and never fills: the wait times out.
    let held = Key::parse("team-a|patient:mrn-4712:hiv-status", 512).unwrap();
    assert!(
        store
            .try_lease(&held, 7, Duration::from_secs(60))
            .await
            .unwrap()
    );
    cache.get(held.as_str(), READ).await.unwrap();
    captured.wait_for("lease wait timed out").await;

    // The store refuses the fill.
    store.refuse_fills.store(true, Ordering::Relaxed);
    cache
        .get("team-a|patient:mrn-4713:hiv-status", READ)
        .await
        .unwrap();
    captured.wait_for("the fill failed").await;
    store.refuse_fills.store(false, Ordering::Relaxed);

    // A hit refreshes early (XFetch) and the refresh fails.
    let refreshed = "team-a|patient:mrn-4714:hiv-status";
    cache.get(refreshed, READ).await.unwrap();
    source.failing.store(true, Ordering::Relaxed);
    cache.get(refreshed, READ).await.unwrap();
    captured.wait_for("background refresh failed").await;

    let text = captured.text();
    for leak in LEAKS {
        assert!(!text.contains(leak), "{leak:?} logged:\n{text}");
    }
    assert!(
        text.contains("password authentication failed"),
        "operators keep the upstream detail:\n{text}"
    );
    assert!(
        text.contains("patient#"),
        "log lines name the entity:\n{text}"
    );
}

/// A loader failure reaches the caller as UNAVAILABLE / LOADER_FAILED with a generic message: no upstream text,
/// no internal address.
#[tokio::test]
async fn callers_get_no_upstream_text() {
    let store = Arc::new(MemoryStore::new(1 << 20));
    let source = Arc::new(Source::default());
    source.failing.store(true, Ordering::Relaxed);
    let cache = coordinator(store, source);
    let error = cache
        .get("team-a|patient:mrn-4711:hiv-status", READ)
        .await
        .unwrap_err();
    let status = cachecoord::api::to_status(&error);
    assert_error(&status, Code::Unavailable, "LOADER_FAILED");
    for upstream in ["pg:", "10.1.2.3", "billing_rw", "password"] {
        assert!(
            !status.message().contains(upstream),
            "the caller was told {:?}",
            status.message()
        );
    }
}
