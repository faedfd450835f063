//! A real LoaderService on loopback, backed by an in-memory "source of truth" the test controls: values, delay,
//! failure, and a record of every call.

use cachecoord::config::{Config, LoaderConfig, LoaderKind};
use cachecoord::proto::loader_service_server::{LoaderService, LoaderServiceServer};
use cachecoord::proto::{
    BatchLoadRequest, BatchLoadResponse, BatchLoadResult, LoadRequest, LoadResponse,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

/// A row of the source: its bytes and, when the test gave one, its version.
type Row = (Vec<u8>, Option<u64>);

/// The loader's state, shared with the test.
#[derive(Default)]
pub struct SourceOfTruth {
    values: Mutex<HashMap<String, Row>>,
    delay_ms: AtomicU64,
    failing: AtomicBool,
    /// Load calls, all keys.
    pub loads: AtomicUsize,
    /// BatchLoad calls, all keys.
    pub batch_loads: AtomicUsize,
    per_key: Mutex<HashMap<String, usize>>,
    batches: Mutex<Vec<Vec<String>>>,
    reads: Option<broadcast::Sender<String>>,
    traceparents: Mutex<Vec<String>>,
    /// Load and BatchLoad calls being answered now, and the most seen at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// While closed, every call waits at the gate (after it is counted in flight) until it opens.
    gate_closed: AtomicBool,
    gate_opened: tokio::sync::Notify,
    /// Keys whose next Load, once it has read its row, waits until the test lets it answer.
    held_after_read: Mutex<HashMap<String, tokio::sync::oneshot::Receiver<()>>>,
}

/// One call counted in flight until dropped.
struct InFlight<'a>(&'a SourceOfTruth);

impl<'a> InFlight<'a> {
    fn enter(source: &'a SourceOfTruth) -> InFlight<'a> {
        let now = source.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        source.most_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(source)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SourceOfTruth {
    /// Sets the source's value for `key`.
    pub fn put(&self, key: &str, value: &[u8]) {
        self.values
            .lock()
            .unwrap()
            .insert(key.into(), (value.to_vec(), None));
    }

    /// Sets the source's value for `key` and the row version loads report with it.
    pub fn put_versioned(&self, key: &str, value: &[u8], version: u64) {
        self.values
            .lock()
            .unwrap()
            .insert(key.into(), (value.to_vec(), Some(version)));
    }

    /// The source's current value for `key`.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.row(key).map(|(value, _)| value)
    }

    /// The source's current row for `key`: value and version.
    fn row(&self, key: &str) -> Option<Row> {
        self.values.lock().unwrap().get(key).cloned()
    }

    /// Every load waits this long after reading the source (the window in which a racing update lands).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Makes every load fail with UNAVAILABLE (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// How many times `key` was loaded (single or batch).
    pub fn loads_of(&self, key: &str) -> usize {
        self.per_key.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    /// Loads per key so far (single and batch), for before/after comparisons.
    pub fn load_counts(&self) -> HashMap<String, usize> {
        self.per_key.lock().unwrap().clone()
    }

    /// The keys of every BatchLoad call, in call order.
    pub fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().unwrap().clone()
    }

    /// The most Load and BatchLoad calls answered at once since the start or the last reset.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::Acquire)
    }

    /// Starts counting [`SourceOfTruth::most_in_flight`] afresh from the calls in flight now.
    pub fn reset_most_in_flight(&self) {
        self.most_in_flight
            .store(self.in_flight.load(Ordering::Acquire), Ordering::Release);
    }

    /// Holds every call from now on until [`SourceOfTruth::open_gate`]: a loader that answers nothing, without a
    /// timing assumption.
    pub fn close_gate(&self) {
        self.gate_closed.store(true, Ordering::Release);
    }

    /// Lets held and later calls through.
    pub fn open_gate(&self) {
        self.gate_closed.store(false, Ordering::Release);
        self.gate_opened.notify_waiters();
    }

    /// Load and BatchLoad calls being answered (or held at the gate) now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    async fn pass_gate(&self) {
        loop {
            let opened = self.gate_opened.notified();
            if !self.gate_closed.load(Ordering::Acquire) {
                return;
            }
            opened.await;
        }
    }

    /// The W3C `traceparent` headers of the Load calls received, in order.
    pub fn traceparents(&self) -> Vec<String> {
        self.traceparents.lock().unwrap().clone()
    }

    /// Announces, for every load, the key just read from the source (before the delay).
    pub fn subscribe_reads(&self) -> broadcast::Receiver<String> {
        self.reads.as_ref().expect("reads channel").subscribe()
    }

    async fn read(&self, key: &str) -> Result<Option<Row>, Status> {
        let value = self.read_now(key)?;
        let held = self.held_after_read.lock().unwrap().remove(key);
        if let Some(answer) = held {
            let _ = answer.await;
        }
        self.wait_delay().await;
        Ok(value)
    }

    /// Holds the next Load of `key` after it has read its row (and announced the read), until the returned sender
    /// is used or dropped: the test decides what happens between a load's read and its answer.
    pub fn hold_next_read(&self, key: &str) -> tokio::sync::oneshot::Sender<()> {
        let (answer, held) = tokio::sync::oneshot::channel();
        self.held_after_read
            .lock()
            .unwrap()
            .insert(key.to_owned(), held);
        answer
    }

    /// Reads `key`'s row from the source, counting and announcing the read, without the delay.
    fn read_now(&self, key: &str) -> Result<Option<Row>, Status> {
        *self.per_key.lock().unwrap().entry(key.into()).or_default() += 1;
        if self.failing.load(Ordering::Relaxed) {
            return Err(Status::unavailable("source of truth is down (test)"));
        }
        let value = self.row(key);
        if let Some(reads) = &self.reads {
            let _ = reads.send(key.to_owned());
        }
        Ok(value)
    }

    /// The configured latency of one call (a batch is one query: it waits once).
    async fn wait_delay(&self) {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
}

#[derive(Clone)]
struct Service(Arc<SourceOfTruth>);

#[tonic::async_trait]
impl LoaderService for Service {
    async fn load(&self, request: Request<LoadRequest>) -> Result<Response<LoadResponse>, Status> {
        self.0.loads.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight::enter(&self.0);
        self.0.pass_gate().await;
        if let Some(traceparent) = request.metadata().get("traceparent") {
            let traceparent = traceparent.to_str().unwrap_or_default().to_owned();
            self.0.traceparents.lock().unwrap().push(traceparent);
        }
        let request = request.into_inner();
        let row = self.0.read(&request.key).await?;
        let found = row.is_some();
        let (value, version) = row.unwrap_or_default();
        Ok(Response::new(LoadResponse {
            found,
            value: value.into(),
            ttl: None,
            version,
        }))
    }

    async fn batch_load(
        &self,
        request: Request<BatchLoadRequest>,
    ) -> Result<Response<BatchLoadResponse>, Status> {
        self.0.batch_loads.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight::enter(&self.0);
        self.0.pass_gate().await;
        let keys: Vec<String> = request
            .into_inner()
            .requests
            .into_iter()
            .map(|r| r.key)
            .collect();
        self.0.batches.lock().unwrap().push(keys.clone());
        let mut results = Vec::new();
        for key in keys {
            let row = self.0.read_now(&key)?;
            let found = row.is_some();
            let (value, version) = row.unwrap_or_default();
            results.push(BatchLoadResult {
                key,
                found,
                value: value.into(),
                ttl: None,
                version,
            });
        }
        self.0.wait_delay().await;
        Ok(Response::new(BatchLoadResponse { results }))
    }
}

/// A running test loader.
pub struct TestLoader {
    /// What it serves, and what it recorded.
    pub source: Arc<SourceOfTruth>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TestLoader {
    /// Starts a LoaderService on 127.0.0.1:0 in the current runtime.
    pub async fn start() -> TestLoader {
        let source = Arc::new(SourceOfTruth {
            reads: Some(broadcast::channel(65_536).0),
            ..SourceOfTruth::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = LoaderServiceServer::new(Service(source.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        TestLoader { source, addr }
    }

    /// Routes keys matching `pattern` in `config` to this loader.
    pub fn route(&self, config: &mut Config, pattern: &str) {
        config
            .loaders
            .push(grpc_loader(pattern, &format!("http://{}", self.addr)));
    }

    /// The same route as a `[[loaders]]` table, for configuration files of server processes.
    pub fn route_toml(&self, pattern: &str) -> String {
        format!(
            "[[loaders]]\npattern = \"{pattern}\"\nkind = \"grpc\"\nendpoint = \"http://{}\"\n",
            self.addr
        )
    }
}

/// A gRPC loader route.
pub fn grpc_loader(pattern: &str, endpoint: &str) -> LoaderConfig {
    LoaderConfig {
        endpoint: Some(endpoint.into()),
        timeout: Duration::from_secs(5),
        ..LoaderConfig::new(pattern, LoaderKind::Grpc)
    }
}
