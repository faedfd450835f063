//! Real redis-server processes: a 3 primary + 3 replica cluster shared by every test in a binary, clusters of a
//! test's own (stopped when dropped), and standalone servers for tests that need to kill one.

use super::on_process_exit;
use super::ports::{free_port, free_port_with_offset};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A Redis Cluster of six redis-server processes on loopback.
pub struct RedisCluster {
    /// Client ports of all six nodes.
    pub ports: Vec<u16>,
    dir: PathBuf,
    /// redis-server arguments of every node (for restarts).
    args: Vec<String>,
    /// How redis-cli reaches the nodes.
    access: Access,
}

/// What redis-cli needs to reach a node: the `requirepass` and, for a node that speaks only TLS, the CA file
/// (both read from the nodes' redis-server arguments).
#[derive(Clone, Default)]
struct Access {
    password: Option<String>,
    tls_ca: Option<String>,
}

impl Access {
    fn of(args: &[&str]) -> Access {
        let value_of = |name: &str| {
            let at = args.iter().position(|arg| *arg == name)?;
            Some(args[at + 1].to_owned())
        };
        Access {
            password: value_of("--requirepass"),
            tls_ca: value_of("--tls-ca-cert-file"),
        }
    }

    /// redis-cli's arguments (and environment) for this access.
    fn apply(&self, command: &mut Command) {
        command.envs(self.password.as_ref().map(|p| ("REDISCLI_AUTH", p)));
        if let Some(ca) = &self.tls_ca {
            command.args(["--tls", "--cacert", ca]);
        }
    }
}

impl RedisCluster {
    /// The cluster every test of this binary shares, started on first use.
    pub fn shared() -> &'static RedisCluster {
        static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
        CLUSTER.get_or_init(RedisCluster::start)
    }

    /// A cluster of this test's own, for tests that kill and restart it; stopped when dropped.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(&[])
    }

    /// [`RedisCluster::start_with`] on a blocking thread, for async tests (starting takes seconds).
    pub async fn start_async(extra: &[&str]) -> RedisCluster {
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            RedisCluster::start_with(&extra)
        })
        .await
        .unwrap()
    }

    /// A cluster of this test's own whose nodes get `extra` redis-server arguments (e.g. a maxmemory).
    pub fn start_with(extra: &[&str]) -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("cachecoord-cluster-")
            .tempdir()
            .unwrap()
            .keep();
        let args: Vec<&str> = CLUSTER_ARGS.iter().chain(extra).copied().collect();
        let access = Access::of(&args);
        let (mut ports, mut pidfiles) = (Vec::new(), Vec::new());
        while ports.len() < 6 {
            let port = free_port_with_offset(10_000);
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let pidfile = start_redis(&node_dir, port, &args);
            // A port (or its bus port) can be taken between picking and binding: pick another.
            if answers_ping(port, &access, Duration::from_secs(5)) {
                ports.push(port);
                pidfiles.push(pidfile);
            } else {
                eprintln!("redis-server did not come up on {port}; trying another port");
            }
        }
        // The watchdog stops the nodes if this process dies before the cluster is dropped (the shared one never is).
        on_process_exit(&stop_script(&pidfiles, &dir));
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = Command::new("redis-cli");
        access.apply(&mut create);
        let output = create
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let cluster = RedisCluster {
            ports,
            dir,
            args,
            access,
        };
        cluster.wait_until_healthy();
        cluster
    }

    /// A cluster of this test's own whose nodes require `password` (`requirepass`, and `masterauth` so replicas
    /// sync); cachecoord must be given it.
    pub async fn start_with_password(password: &str) -> RedisCluster {
        RedisCluster::start_async(&["--requirepass", password, "--masterauth", password]).await
    }

    /// A cluster of this test's own whose nodes speak only TLS, to clients, to each other (the cluster bus) and to
    /// their replicas, with `pki`'s `node` certificate (the bus authenticates both ends, so it is a client and a
    /// server certificate) and no client certificates asked of clients; cachecoord reaches it at
    /// [`RedisCluster::url`] (`rediss-cluster://`) given `pki`'s CA.
    pub async fn start_tls(pki: &super::pki::Pki) -> RedisCluster {
        let files =
            ["node.pem", "node.key", "ca.pem"].map(|file| pki.path(file).display().to_string());
        let [cert, key, ca] = files.each_ref().map(String::as_str);
        RedisCluster::start_async(&[
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ])
        .await
    }

    /// Starts one more redis-server with this cluster's arguments, not yet part of the cluster (see
    /// `support::reshard`, which joins it); it is stopped with the others. Answers its port.
    pub fn start_node(&mut self) -> u16 {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        loop {
            let port = free_port_with_offset(10_000);
            let node_dir = self.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let pidfile = start_redis(&node_dir, port, &args);
            if answers_ping(port, &self.access, Duration::from_secs(5)) {
                on_process_exit(&stop_script(&[pidfile], &node_dir));
                self.ports.push(port);
                return port;
            }
            eprintln!("redis-server did not come up on {port}; trying another port");
        }
    }

    /// redis-cli against the node on `port`, authenticated when the cluster has a password.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli_as(port, &self.access, args)
    }

    /// The URL cachecoord and fred take: every node is a seed.
    pub fn url(&self) -> String {
        let (first, rest) = self.ports.split_first().unwrap();
        let seeds: Vec<String> = rest.iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
        let scheme = if self.access.tls_ca.is_some() {
            "rediss-cluster"
        } else {
            "redis-cluster"
        };
        format!("{scheme}://127.0.0.1:{first}?{}", seeds.join("&"))
    }

    /// Client ports of the nodes currently acting as primaries.
    pub fn primaries(&self) -> Vec<u16> {
        self.nodes_with_role("master")
    }

    /// Client ports of the nodes currently acting as replicas.
    pub fn replicas(&self) -> Vec<u16> {
        self.nodes_with_role("slave")
    }

    fn nodes_with_role(&self, role: &str) -> Vec<u16> {
        // Any node that answers (the first may be the one a test killed).
        let nodes = self
            .ports
            .iter()
            .map(|port| self.cli(*port, &["cluster", "nodes"]))
            .find(|text| !text.trim().is_empty())
            .unwrap_or_default();
        let mut ports: Vec<u16> = nodes
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .nth(2)
                    .is_some_and(|flags| flags.split(',').any(|f| f == role))
            })
            .filter_map(|line| {
                let addr = line.split_whitespace().nth(1)?;
                addr.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Value keys (not bookkeeping) matching the Redis glob `pattern` held by the node on `port`, read straight
    /// from that node. Values of key `user:1:posts` are stored at `{user:1}:posts`.
    pub fn keys_on_node(&self, port: u16, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(port, &["--scan", "--pattern", pattern])
            .lines()
            .filter(|key| !key.contains("}#"))
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }

    /// Waits until every node reports cluster_state:ok and all three replicas are attached.
    fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all_ok = self.ports.iter().all(|port| {
                self.cli(*port, &["cluster", "info"])
                    .contains("cluster_state:ok")
            });
            // Replicas in sync too: until then a primary's WAIT (every invalidation's fence) times out.
            let replicated = || {
                self.primaries().iter().all(|port| {
                    self.cli(*port, &["INFO", "replication"])
                        .lines()
                        .any(|line| line.starts_with("slave0:") && line.contains("state=online"))
                })
            };
            if all_ok && self.primaries().len() == 3 && self.replicas().len() == 3 && replicated() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not become healthy in {:?}",
                self.dir
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Extra redis-server arguments of a cluster node.
const CLUSTER_ARGS: &[&str] = &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"];

impl RedisCluster {
    /// Kills every node with SIGKILL and waits until none accepts connections.
    pub fn kill_all(&self) {
        for port in &self.ports {
            kill_node(&self.dir.join(port.to_string()).join("redis.pid"), *port);
        }
    }

    /// Restarts every node on its old port and directory (its nodes.conf keeps the topology; the data is gone,
    /// as persistence is off) and waits until the cluster is healthy again.
    pub fn restart_all(&self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        for port in &self.ports {
            start_redis(&self.dir.join(port.to_string()), *port, &args);
        }
        for port in &self.ports {
            wait_for_ping(*port, &self.access);
        }
        self.wait_until_healthy();
    }
}

/// Kills the redis-server whose pid is in `pidfile` and waits until `port` refuses connections.
fn kill_node(pidfile: &Path, port: u16) {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    let status = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "redis on {port} did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One standalone redis-server, stopped (and its directory removed) by [`StandaloneRedis::kill`] or on drop.
pub struct StandaloneRedis {
    /// Client port.
    pub port: u16,
    dir: tempfile::TempDir,
    pidfile: PathBuf,
}

impl StandaloneRedis {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> StandaloneRedis {
        let dir = tempfile::Builder::new()
            .prefix("cachecoord-redis-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let pidfile = start_redis(dir.path(), port, &[]);
        on_process_exit(&stop_script(std::slice::from_ref(&pidfile), dir.path()));
        wait_for_ping(port, &Access::default());
        StandaloneRedis { port, dir, pidfile }
    }

    /// Starts a server that speaks only TLS (certificates from `pki`) and admits only the ACL user `user` with
    /// `password` (the default user is off), and waits until it accepts connections.
    pub fn start_secured(pki: &super::pki::Pki, user: &str, password: &str) -> StandaloneRedis {
        let dir = tempfile::Builder::new()
            .prefix("cachecoord-redis-tls-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let (cert, key, ca) = (
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        );
        let password = format!(">{password}");
        let extra = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert.to_string_lossy(),
            "--tls-key-file",
            &key.to_string_lossy(),
            "--tls-ca-cert-file",
            &ca.to_string_lossy(),
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            user,
            "on",
            &password,
            "~*",
            "&*",
            "+@all",
        ];
        let pidfile = start_redis(dir.path(), port, &extra);
        on_process_exit(&stop_script(std::slice::from_ref(&pidfile), dir.path()));
        // Accepting connections is enough: the server under test proves TLS and the ACL user work.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "TLS redis on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        StandaloneRedis { port, dir, pidfile }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL and waits until its port refuses connections.
    pub fn kill(&self) {
        kill_node(&self.pidfile, self.port);
    }
}

impl Drop for StandaloneRedis {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Starts a daemonized redis-server on loopback; answers its pidfile.
/// With a TLS certificate among `extra`, the node speaks only TLS: `port` is its TLS port, the plaintext one is off.
fn start_redis(dir: &Path, port: u16, extra: &[&str]) -> PathBuf {
    let pidfile = dir.join("redis.pid");
    let port = port.to_string();
    // Only a TLS node names its TLS port: the Redis 7.2 of third_party/redis is built without TLS.
    let ports: &[&str] = if extra.contains(&"--tls-cert-file") {
        &["--port", "0", "--tls-port", &port]
    } else {
        &["--port", &port]
    };
    let status = Command::new(redis_server())
        .args(ports)
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-config-file", &dir.join("nodes.conf").to_string_lossy()])
        .args(["--appendonly", "no", "--save", ""])
        .args(["--dir", &dir.to_string_lossy()])
        .args(["--daemonize", "yes", "--pidfile", &pidfile.to_string_lossy()])
        .args(["--logfile", &dir.join("redis.log").to_string_lossy()])
        .args(extra)
        .status()
        .expect("redis-server must be installed: scripts/test installs it (apt-get install redis-server)");
    assert!(
        status.success(),
        "redis-server on port {port} failed to start"
    );
    pidfile
}

/// The redis-server binary: `CC_TEST_REDIS_SERVER` when set (scripts/test points it at Redis 7.2), else the
/// Debian package's.
pub fn redis_server() -> String {
    if let Ok(path) = std::env::var("CC_TEST_REDIS_SERVER") {
        return path;
    }
    if Path::new("/usr/bin/redis-server").exists() {
        "/usr/bin/redis-server".into()
    } else {
        "redis-server".into()
    }
}

/// A shell script that kills the redis-servers of `pidfiles` and removes `dir`. A pidfile outlives a node killed
/// with SIGKILL, and process ids wrap around quickly here (pid_max 32768, thousands of redis-cli calls a run): a
/// pid is killed only while it is still a redis-server, never whatever process took its number since.
fn stop_script(pidfiles: &[PathBuf], dir: &Path) -> String {
    let kills: Vec<String> = pidfiles
        .iter()
        .map(|p| {
            format!(
                "p=$(cat {} 2>/dev/null) && grep -qx redis-server /proc/$p/comm 2>/dev/null && kill -9 $p;",
                p.display()
            )
        })
        .collect();
    format!("{} rm -rf {}", kills.join(" "), dir.display())
}

fn wait_for_ping(port: u16, access: &Access) {
    assert!(
        answers_ping(port, access, Duration::from_secs(10)),
        "redis on {port} never answered PING"
    );
}

fn answers_ping(port: u16, access: &Access, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while redis_cli_as(port, access, &["ping"]).trim() != "PONG" {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Runs redis-cli against one node and answers its stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_as(port, &Access::default(), args)
}

/// [`redis_cli`] with `access` (a password passed through the environment, so redis-cli does not warn).
fn redis_cli_as(port: u16, access: &Access, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    access.apply(&mut command);
    let output = command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Drop for RedisCluster {
    /// Stops a test's own cluster as soon as its test ends, rather than when the whole test binary exits.
    fn drop(&mut self) {
        let pidfiles: Vec<PathBuf> = self
            .ports
            .iter()
            .map(|port| self.dir.join(port.to_string()).join("redis.pid"))
            .collect();
        let _ = Command::new("sh")
            .args(["-c", &stop_script(&pidfiles, &self.dir)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl RedisCluster {
    fn pid(&self, port: u16) -> String {
        let pidfile = self.dir.join(port.to_string()).join("redis.pid");
        std::fs::read_to_string(pidfile).unwrap().trim().to_owned()
    }

    fn signal(&self, port: u16, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid(port)])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} of the node on {port}");
    }

    /// `kill -9` of the node on `port`, waiting until its port refuses connections.
    pub fn kill_node(&self, port: u16) {
        kill_node(&self.dir.join(port.to_string()).join("redis.pid"), port);
    }

    /// Starts the node on `port` again (it rejoins the cluster from its nodes.conf, as a replica if it was failed
    /// over) and waits until it answers PING.
    pub fn restart_node(&self, port: u16) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        start_redis(&self.dir.join(port.to_string()), port, &args);
        wait_for_ping(port, &self.access);
    }

    /// SIGSTOP: the node keeps its connections but answers nothing.
    pub fn pause(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// SIGCONT after [`RedisCluster::pause`].
    pub fn resume(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    /// (first slot, last slot, primary port) as `CLUSTER NODES` on a live node reports them now.
    pub fn slot_owners(&self) -> Vec<(u16, u16, u16)> {
        let nodes = self
            .ports
            .iter()
            .map(|port| self.cli(*port, &["cluster", "nodes"]))
            .find(|text| !text.trim().is_empty())
            .expect("some node answers");
        let mut owners = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let Some(port) = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            for range in &fields[8..] {
                let mut bounds = range.split('-').filter_map(|b| b.parse::<u16>().ok());
                if let Some(first) = bounds.next() {
                    owners.push((first, bounds.next().unwrap_or(first), port));
                }
            }
        }
        owners
    }

    /// Waits until every slot has a live primary other than `dead` and the live nodes report cluster_state:ok.
    pub fn wait_for_failover(&self, dead: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let owners = self.slot_owners();
            let covered: u32 = owners
                .iter()
                .map(|(a, b, _)| u32::from(*b) - u32::from(*a) + 1)
                .sum();
            let live_ok = self.ports.iter().filter(|port| **port != dead).all(|port| {
                self.cli(*port, &["cluster", "info"])
                    .contains("cluster_state:ok")
            });
            if covered == 16384 && owners.iter().all(|(_, _, port)| *port != dead) && live_ok {
                return;
            }
            assert!(Instant::now() < deadline, "no failover away from {dead}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the cluster is back to three primaries with a replica each, all healthy.
    pub fn wait_until_whole(&self) {
        self.wait_until_healthy();
    }
}

impl RedisCluster {
    /// Client port of the replica of the primary on `primary` (its first, if it has several).
    /// The primary serving `redis_key`'s hash slot now (the key as Redis names it, e.g. `{user:1}`).
    pub fn primary_of(&self, redis_key: &str) -> u16 {
        // Any node that answers (the first may be the one a test killed).
        let slot: u16 = self
            .ports
            .iter()
            .find_map(|port| {
                self.cli(*port, &["CLUSTER", "KEYSLOT", redis_key])
                    .trim()
                    .parse()
                    .ok()
            })
            .expect("some node answers");
        self.slot_owners()
            .into_iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, port)| port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    pub fn replica_of(&self, primary: u16) -> u16 {
        let nodes = self.cli(primary, &["cluster", "nodes"]);
        let port_of =
            |fields: &[&str]| -> Option<u16> { fields[1].split(['@', ':']).nth(1)?.parse().ok() };
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|fields| fields.len() >= 4)
            .collect();
        let id = lines
            .iter()
            .find(|fields| port_of(fields) == Some(primary))
            .map(|fields| fields[0])
            .unwrap_or_else(|| panic!("{primary} is not in CLUSTER NODES"));
        lines
            .iter()
            .find(|fields| fields[2].contains("slave") && fields[3] == id)
            .and_then(|fields| port_of(fields))
            .unwrap_or_else(|| panic!("the primary on {primary} has no replica"))
    }

    /// Whether some other node flags the node on `port` as failed (`fail`, not just `fail?`).
    pub fn flagged_failed(&self, port: u16) -> bool {
        self.ports.iter().filter(|p| **p != port).any(|other| {
            self.cli(*other, &["cluster", "nodes"]).lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 2
                    && fields[1].split(['@', ':']).nth(1) == Some(port.to_string().as_str())
                    && fields[2].split(',').any(|flag| flag == "fail")
            })
        })
    }
}

/// A numeric field of `INFO <section>` on the node on `port` (e.g. `master_repl_offset`).
pub fn info_field(port: u16, section: &str, field: &str) -> Option<i64> {
    redis_cli(port, &["info", section])
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
}
