//! The real cachecoord server, in-process on 127.0.0.1:0, on either store.

use super::cluster::RedisCluster;
use cachecoord::config::Config;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Which store the server under test uses.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The embedded in-process store.
    Embedded,
    /// The shared 3 + 3 Redis Cluster.
    Cluster,
}

impl Backend {
    /// A test configuration for this backend: ephemeral port, everything else default.
    pub fn config(self) -> Config {
        match self {
            Backend::Embedded => Config {
                listen_addr: "127.0.0.1:0".parse().unwrap(),
                ..Config::default()
            },
            Backend::Cluster => config_on(RedisCluster::shared()),
        }
    }
}

/// A test configuration on `cluster` (the shared one, or a test's own): ephemeral port, everything else default.
pub fn config_on(cluster: &RedisCluster) -> Config {
    let mut config = Backend::Embedded.config();
    config.store.redis_url = Some(cluster.url());
    config
}

/// A running server; it stops when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on `backend` with the default test configuration.
    pub async fn start(backend: Backend) -> TestServer {
        TestServer::start_with(backend.config()).await
    }

    /// Starts a server with `config` (its listen address is replaced by a free loopback port).
    pub async fn start_with(config: Config) -> TestServer {
        TestServer::start_on(config, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a server with `config` listening on `addr`: a stopped server's address, to restart it where its
    /// clients keep calling.
    pub async fn start_on(config: Config, addr: SocketAddr) -> TestServer {
        // RUST_LOG=cachecoord=debug shows the servers' logs in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = cachecoord::server::serve(config, listener, shutdown).await {
                panic!("server failed: {error}");
            }
        });
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The URI clients connect to.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected CacheService client.
    pub async fn client(&self) -> CacheServiceClient<Channel> {
        CacheServiceClient::connect(self.uri())
            .await
            .expect("connect to test server")
    }

    /// A raw channel, for the health and reflection clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.uri())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl TestServer {
    /// Stops the server and waits until it, and its background tasks, have finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
