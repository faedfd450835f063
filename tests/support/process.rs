//! The real `cachecoord` binary as a child process, for tests of what only a process has: signals, exit codes,
//! the metrics port.

use super::ports::free_port;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A running `cachecoord` process; killed on drop if still running.
pub struct ServerProcess {
    /// The child process.
    pub child: Child,
    /// The loopback address it listens on (127.0.0.1 unless started with [`ServerProcess::start_on`]).
    pub host: Ipv4Addr,
    /// gRPC port on `host`.
    pub port: u16,
    /// Metrics port on `host`.
    pub metrics_port: u16,
    /// Where health is asked, in plaintext: the gRPC port, or the configured `tls.health_listen_addr` port.
    health_port: u16,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `cachecoord` with `config_toml` as its configuration file, and waits until health says SERVING.
    pub async fn start(config_toml: &str) -> ServerProcess {
        ServerProcess::start_with_env(config_toml, &[]).await
    }

    /// [`ServerProcess::start`] with extra environment variables.
    pub async fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        ServerProcess::spawn(config_toml, env, Ipv4Addr::LOCALHOST, port, port).await
    }

    /// [`ServerProcess::start`] for a configuration with TLS on the gRPC port: health is asked in plaintext on
    /// `health_port`, which the configuration must name as `tls.health_listen_addr` on 127.0.0.1.
    pub async fn start_with_health_port(config_toml: &str, health_port: u16) -> ServerProcess {
        let port = free_port();
        ServerProcess::spawn(config_toml, &[], Ipv4Addr::LOCALHOST, port, health_port).await
    }

    /// [`ServerProcess::start`] listening on `addr`, a loopback address of any 127.0.0.x (several servers can
    /// then share one port, each on its own address, as pods behind one DNS name do).
    pub async fn start_on(config_toml: &str, addr: SocketAddr) -> ServerProcess {
        let SocketAddr::V4(addr) = addr else {
            panic!("{addr} is not an IPv4 loopback address");
        };
        ServerProcess::spawn(config_toml, &[], *addr.ip(), addr.port(), addr.port()).await
    }

    async fn spawn(
        config_toml: &str,
        env: &[(&str, &str)],
        host: Ipv4Addr,
        port: u16,
        health_port: u16,
    ) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cachecoord.toml");
        std::fs::write(&file, config_toml).unwrap();
        let metrics_port = free_port();
        let log = std::fs::File::create(dir.path().join("cachecoord.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cachecoord"))
            .arg("--config")
            .arg(&file)
            .args(["--listen-addr", &format!("{host}:{port}")])
            .args(["--metrics-addr", &format!("{host}:{metrics_port}")])
            .envs(env.iter().copied())
            .stdout(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cachecoord");
        let process = ServerProcess {
            child,
            host,
            port,
            metrics_port,
            health_port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while process.health().await != Some(ServingStatus::Serving) {
            assert!(Instant::now() < deadline, "cachecoord never became SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// Its log lines containing `needle` (the process logs to a file in its directory).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self._dir.path().join("cachecoord.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// `http://<host>:<port>`.
    pub fn uri(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// The overall health status on a fresh connection; `None` when it cannot be asked.
    pub async fn health(&self) -> Option<ServingStatus> {
        let uri = format!("http://{}:{}", self.host, self.health_port);
        let channel = tonic::transport::Channel::from_shared(uri)
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: String::new(),
        };
        Some(client.check(request).await.ok()?.into_inner().status())
    }

    /// The text of `/metrics`.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect((self.host, self.metrics_port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("process still running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid} failed");
    }
}

/// Runs `cachecoord --config <config_file> migrate` and asserts it succeeded.
pub async fn migrate(config_file: &std::path::Path) {
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_cachecoord"))
        .arg("--config")
        .arg(config_file)
        .arg("migrate")
        .status()
        .await
        .unwrap();
    assert!(status.success(), "cachecoord migrate failed");
}

/// The value of the metric line with `name` and every label in `labels`, from a Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}
