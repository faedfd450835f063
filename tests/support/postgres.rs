//! A private PostgreSQL server on a free loopback port, shared by every test in a binary.

use super::on_process_exit;
use super::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A throwaway Postgres cluster (trust auth, fsync off) owned by this test process.
pub struct Postgres {
    /// Port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl Postgres {
    /// The server every test of this binary shares, started on first use.
    pub fn shared() -> &'static Postgres {
        static POSTGRES: OnceLock<Postgres> = OnceLock::new();
        POSTGRES.get_or_init(Postgres::start)
    }

    fn start() -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("cachecoord-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let data = dir.join("data");
        let port = free_port();
        as_postgres_user(&dir);
        run(
            &bin.join("initdb"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        // log_statement=all lets tests count the queries a loader ran.
        let options = format!(
            "-p {port} -h 127.0.0.1 -k {} -c fsync=off -c log_statement=all",
            dir.display()
        );
        let pg_ctl = bin.join("pg_ctl");
        on_process_exit(&format!(
            "{} {} -D {} stop -m immediate; rm -rf {}",
            runuser_prefix(),
            pg_ctl.display(),
            data.display(),
            dir.display()
        ));
        run(
            &pg_ctl,
            &[
                "-D",
                &data.to_string_lossy(),
                "-w",
                "-l",
                &dir.join("pg.log").to_string_lossy(),
                "-o",
                &options,
                "start",
            ],
        );
        Postgres { port, dir }
    }

    /// Statements logged so far that contain `marker` and were executed (not just parsed).
    pub fn executions_of(&self, marker: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.join("pg.log")).unwrap_or_default();
        log.lines()
            .filter(|line| {
                line.contains(marker) && (line.contains("execute") || line.contains("statement:"))
            })
            .count()
    }

    /// A connected tokio-postgres client (its connection runs on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.connection_string(), tokio_postgres::NoTls)
                .await
                .expect("connect to the private Postgres");
        tokio::spawn(connection);
        client
    }

    /// A new, empty database `name`: its connection string and a connected client.
    pub async fn database(&self, name: &str) -> (String, tokio_postgres::Client) {
        self.client()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = self
            .connection_string()
            .replace("dbname=postgres", &format!("dbname={name}"));
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to the new database");
        tokio::spawn(connection);
        (url, client)
    }

    /// A tokio-postgres connection string for the `postgres` database.
    pub fn connection_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

/// The newest PostgreSQL installed under /usr/lib/postgresql.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries must be installed under /usr/lib/postgresql (scripts/test installs them)")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

/// initdb refuses to run as root: when we are root, hand the directory to the postgres user and run as it.
fn as_postgres_user(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown {dir:?} to postgres failed");
    }
}

fn run(program: &Path, args: &[&str]) {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command.args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn runuser_prefix() -> &'static str {
    if is_root() {
        "runuser -u postgres --"
    } else {
        ""
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
