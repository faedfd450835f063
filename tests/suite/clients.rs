//! The client libraries, through their conformance runners (`clients/<lang>/conformance/run`): every language
//! passes every scenario of clients/conformance/scenarios.json on both stores (a table scenario × language/store
//! is printed), and each library (Python, Go, Node) makes one database call for a stampede over three replicas,
//! and for one on a single client whose waiting Gets fill the connection's streams, and retries exactly what the
//! API says is safe to retry.
//!
//! The table is also written to target/clients/conformance.txt. The runners build what they need on first use (a
//! venv, a Go binary, npm packages, javac) under target/clients/: scripts/test installs the toolchains. Python's venv is made by `$CC_TEST_PYTHON` (passed to the runner as `PYTHON`).

use crate::support::ports::free_port;
use crate::support::{Backend, TestServer, unique};
use cachecoord::auth::hash_token;
use cachecoord::config::Config;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::sync::{Mutex, MutexGuard};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const SCENARIOS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/clients/conformance/scenarios.json"
);
/// The languages with a runner; all but Java have a library (Java runs plain stubs).
const LANGUAGES: [&str; 4] = ["python", "go", "node", "java"];
/// The bearer token every runner is given (the tokens file holds its hash).
const TOKEN: &str = "conformance-caller-7f3a";
/// A guard against a runner that hangs (its first run builds, which may take minutes on two cores); never a
/// measure of speed.
const HANG_GUARD: Duration = Duration::from_secs(900);

/// `config` with auth on and one token allowed everything; the tokens file lives as long as the returned dir.
fn with_auth(mut config: Config) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let tokens = format!(
        "[[tokens]]\nname = \"conformance\"\nnamespace = \"conformance\"\nsha256 = {:?}\n\
         read = [\"*\"]\nwrite = [\"*\"]\ninvalidate = [\"*\"]\n",
        hash_token(TOKEN)
    );
    std::fs::write(&file, tokens).unwrap();
    config.auth.enabled = true;
    config.auth.tokens_file = Some(file);
    (config, dir)
}

/// The server the scenarios expect (clients/conformance/README.md): auth with the token, 1 KiB values (the
/// over-the-limit value stays small), and a 1 s lease wait so a leased Get that gets no lease is answered soon.
fn scenario_config(backend: Backend) -> (Config, tempfile::TempDir) {
    let (mut config, dir) = with_auth(backend.config());
    config.limits.max_value_bytes = 1024;
    config.read_through.lease_wait = Duration::from_secs(1);
    (config, dir)
}

/// A runner's command line: `clients/<language>/conformance/run <args>`.
fn runner(language: &str, args: &[&str]) -> Command {
    let mut command = Command::new(format!("{REPO}/clients/{language}/conformance/run"));
    command
        .args(args)
        .args(["--token", TOKEN])
        .kill_on_drop(true);
    if language == "python" {
        let python = std::env::var("CC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        command.env("PYTHON", python);
    }
    command
}

/// Held for the first run of each language's runner, so two tests never build the same runner at once; later runs
/// find it built and go through without waiting.
async fn first_run_lock(language: &str) -> Option<MutexGuard<'static, bool>> {
    static BUILT: LazyLock<HashMap<&str, Mutex<bool>>> = LazyLock::new(|| {
        LANGUAGES
            .map(|language| (language, Mutex::new(false)))
            .into()
    });
    let built = BUILT[language].lock().await;
    if *built { None } else { Some(built) }
}

/// Marks the language's runner built (it ran to the point where it must have built) and lets the next run in.
fn built(guard: Option<MutexGuard<'static, bool>>) {
    if let Some(mut guard) = guard {
        *guard = true;
    }
}

/// Runs a runner to completion; its stdout, or why it could not run (a missing runner is named).
async fn run_to_end(language: &str, args: &[&str]) -> Result<String, String> {
    let path = format!("{REPO}/clients/{language}/conformance/run");
    if !std::path::Path::new(&path).exists() {
        return Err(format!("the {language} runner is missing: {path}"));
    }
    let guard = first_run_lock(language).await;
    let output = tokio::time::timeout(HANG_GUARD, runner(language, args).output())
        .await
        .map_err(|_| format!("the {language} runner hung: {args:?}"))?
        .map_err(|e| format!("cannot run {path}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "the {language} runner failed ({}): {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        ));
    }
    built(guard);
    Ok(stdout)
}

/// One column of the table: a language on a store, with each scenario's outcome or why the runner did not run.
struct Column {
    title: String,
    outcomes: Result<HashMap<String, (bool, String)>, String>,
}

/// Runs the scenario file through `language` against `server`.
async fn scenarios_in(language: &str, store: &str, server: &TestServer) -> Column {
    let target = server.addr.to_string();
    let run_id = format!("{}-{language}-{store}", unique("cf"));
    let args = [
        "scenarios",
        "--target",
        &target,
        "--scenarios",
        SCENARIOS,
        "--run-id",
        &run_id,
    ];
    let outcomes = run_to_end(language, &args).await.and_then(|stdout| {
        stdout
            .lines()
            .filter(|line| line.trim_start().starts_with('{'))
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| format!("{language}: not a JSON line ({e}): {line}"))?;
                let name = value["scenario"].as_str().unwrap_or_default().to_owned();
                let pass = value["pass"].as_bool() == Some(true);
                let detail = value["detail"].as_str().unwrap_or_default().to_owned();
                Ok((name, (pass, detail)))
            })
            .collect()
    });
    Column {
        title: format!("{language}/{store}"),
        outcomes,
    }
}

/// The scenario names, in file order.
fn scenario_names() -> Vec<String> {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(SCENARIOS).unwrap()).unwrap();
    file["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every scenario passes in every language (Python, Go, Node through their libraries; Java through plain stubs),
/// on the embedded store and on the 3+3 Redis Cluster; the table of outcomes is printed.
#[tokio::test]
async fn every_language_passes_every_scenario_on_both_stores() {
    let (embedded_config, _embedded_tokens) = scenario_config(Backend::Embedded);
    let (cluster_config, _cluster_tokens) = scenario_config(Backend::Cluster);
    let embedded = TestServer::start_with(embedded_config).await;
    let cluster = TestServer::start_with(cluster_config).await;
    // Languages run side by side; each runs on one store, then the other, so its build happens once.
    let per_language = LANGUAGES.map(|language| {
        let (embedded, cluster) = (&embedded, &cluster);
        async move {
            let first = scenarios_in(language, "embedded", embedded).await;
            let second = scenarios_in(language, "cluster", cluster).await;
            [first, second]
        }
    });
    let columns: Vec<Column> = futures::future::join_all(per_language)
        .await
        .into_iter()
        .flatten()
        .collect();

    let names = scenario_names();
    let mut failures = Vec::new();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let mut table = format!("{:width$}", "scenario");
    for column in &columns {
        table += &format!(" | {:^15}", column.title);
    }
    table += "\n";
    for name in &names {
        table += &format!("{name:width$}");
        for column in &columns {
            let cell = match &column.outcomes {
                Err(_) => "no run",
                Ok(outcomes) => match outcomes.get(name) {
                    Some((true, _)) => "pass",
                    Some((false, detail)) => {
                        failures.push(format!("{name} in {}: {detail}", column.title));
                        "FAIL"
                    }
                    None => {
                        failures.push(format!("{name} in {}: no result line", column.title));
                        "FAIL"
                    }
                },
            };
            table += &format!(" | {cell:^15}");
        }
        table += "\n";
    }
    for column in &columns {
        if let Err(why) = &column.outcomes {
            failures.push(format!("{}: {why}", column.title));
        }
    }
    let table = format!("conformance ({} scenarios):\n{table}", names.len());
    println!("{table}");
    // Also a file, for a test command that does not show passing tests' output (scripts/test can print it).
    let report = format!("{REPO}/target/clients/conformance.txt");
    std::fs::create_dir_all(format!("{REPO}/target/clients")).unwrap();
    std::fs::write(&report, &table).unwrap();
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

/// The single JSON line a `stampede` or `retry` run prints last.
fn last_json_line(language: &str, stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("the {language} runner printed no JSON line:\n{stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{language}: bad JSON ({e}): {line}"))
}

/// 150 callers of `get_or_load` over three replicas on the cluster, all on one cold key at once: one load.
async fn stampede(language: &str) {
    let (config, _tokens) = with_auth(Backend::Cluster.config());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestServer::start_with(config.clone()).await);
    }
    let targets: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    let key = format!("product:{}", unique(&format!("stampede-{language}-")));
    let args = [
        "stampede",
        "--targets",
        &targets.join(","),
        "--key",
        &key,
        "--callers",
        "150",
    ];
    let stdout = run_to_end(language, &args)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let result = last_json_line(language, &stdout);
    println!("{language} stampede: {result}");
    assert_eq!(result["errors"], 0, "{language}: {result}");
    assert_eq!(result["values_ok"], true, "{language}: {result}");
    assert_eq!(result["loads"], 1, "{language}: {result}");
}

/// 40 callers of `get_or_load` sharing ONE client, on one cold key, against a server that allows 8 concurrent
/// streams per connection: the waiting leased Gets hold every stream, so the holder's fill must not queue behind
/// them (the libraries send it on a connection of its own). Queued, it would reach the server only after the
/// waiters' lease wait ran out, and each of them would load: one load, not 40. `extra` goes to the runner.
async fn stampede_on_one_client(language: &str, extra: &[&str]) {
    let (mut config, _tokens) = with_auth(Backend::Cluster.config());
    config.limits.max_concurrent_streams = 8;
    config.read_through.lease_wait = Duration::from_secs(2);
    let server = TestServer::start_with(config).await;
    let target = server.addr.to_string();
    let key = format!("product:{}", unique(&format!("one-client-{language}-")));
    let mut args = vec![
        "stampede",
        "--targets",
        &target,
        "--key",
        &key,
        "--callers",
        "40",
        "--clients",
        "1",
    ];
    args.extend(extra);
    let stdout = run_to_end(language, &args)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let result = last_json_line(language, &stdout);
    println!("{language} {extra:?} stampede on one client: {result}");
    assert_eq!(result["errors"], 0, "{language}: {result}");
    assert_eq!(result["values_ok"], true, "{language}: {result}");
    assert_eq!(result["loads"], 1, "{language}: {result}");
}

/// A `retry` runner in its protocol with the test: its stdout lines, its stdin, and its stderr collected for
/// failure messages.
struct RetryRun {
    language: &'static str,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    logs: tokio::task::JoinHandle<String>,
}

impl RetryRun {
    /// The next stdout line; a runner that ends or hangs first fails the test with its stderr.
    async fn next_line(&mut self, awaited: &str) -> String {
        match tokio::time::timeout(HANG_GUARD, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            outcome => {
                let _ = self.child.start_kill();
                let logs = (&mut self.logs).await.unwrap_or_default();
                panic!(
                    "the {} retry runner {} before {awaited}; stderr:\n{logs}",
                    self.language,
                    if outcome.is_err() { "hung" } else { "ended" }
                )
            }
        }
    }

    /// Reads lines until one is `word` (protocol lines; anything else is skipped).
    async fn await_word(&mut self, word: &str) {
        while self.next_line(word).await.trim() != word {}
    }

    async fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }
}

/// The retry rule: a Get retried across a server stop and restart succeeds; a Set without a version is tried once;
/// a versioned Set is retried; INVALID_ARGUMENT is never retried (the contract's `retry` protocol).
async fn retry(language: &'static str) {
    let path = format!("{REPO}/clients/{language}/conformance/run");
    assert!(
        std::path::Path::new(&path).exists(),
        "the {language} runner is missing: {path}"
    );
    let (mut config, _tokens) = with_auth(Backend::Embedded.config());
    // Nothing is in flight when the test stops the server; a short grace keeps a lingering connection from
    // holding the stop up.
    config.shutdown.grace_period = Duration::from_millis(200);
    let server = TestServer::start_with(config.clone()).await;
    let addr = server.addr;
    let dead = format!("127.0.0.1:{}", free_port());
    let key = format!("product:{}", unique(&format!("retry-{language}-")));
    let target = addr.to_string();
    let guard = first_run_lock(language).await;
    let mut child = runner(
        language,
        &["retry", "--target", &target, "--dead", &dead, "--key", &key],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut run = RetryRun {
        language,
        stdin: child.stdin.take().unwrap(),
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        child,
        logs,
    };

    run.await_word("ready").await;
    built(guard);
    server.stop().await;
    run.send("go\n").await;
    run.await_word("calling").await;
    // Sequencing only: the Get meets a stopped server for a while, then the server is back on the same port.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _restarted = TestServer::start_on(config, addr).await;
    let line = run.next_line("its JSON line").await;
    let status = tokio::time::timeout(HANG_GUARD, run.child.wait())
        .await
        .expect("the retry runner did not exit")
        .unwrap();
    let logs = run.logs.await.unwrap();
    let result: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{language}: bad JSON ({e}): {line}\nstderr:\n{logs}"));
    println!("{language} retry: {result}");
    assert!(
        status.success(),
        "{language} retry runner: {status}\n{logs}"
    );
    let context = format!("{language}: {result}\nstderr:\n{logs}");
    assert_eq!(result["get_ok"], true, "{context}");
    assert!(result["get_attempts"].as_u64() >= Some(2), "{context}");
    assert_eq!(result["plain_set_attempts"], 1, "{context}");
    assert_eq!(result["plain_set_code"], "UNAVAILABLE", "{context}");
    assert!(
        result["versioned_set_attempts"].as_u64() >= Some(2),
        "{context}"
    );
    assert_eq!(result["invalid_attempts"], 1, "{context}");
    assert_eq!(result["invalid_reason"], "INVALID_KEY", "{context}");
}

mod stampede {
    /// Python's `get_or_load`: 150 callers over three replicas, one cold key, one database call.
    #[tokio::test]
    async fn python() {
        super::stampede("python").await
    }
    /// Go's `GetOrLoad`: 150 goroutines over three replicas, one cold key, one database call.
    #[tokio::test]
    async fn go() {
        super::stampede("go").await
    }
    /// Node's `getOrLoad`: 150 promises over three replicas, one cold key, one database call.
    #[tokio::test]
    async fn node() {
        super::stampede("node").await
    }
}

mod stampede_on_one_client {
    /// Python's `get_or_load`: 40 threads on one Client, 8 streams per connection, one database call.
    #[tokio::test]
    async fn python() {
        super::stampede_on_one_client("python", &[]).await
    }
    /// Python's asyncio `get_or_load` (cachecoord.aio): 40 tasks on one Client, 8 streams, one database call.
    #[tokio::test]
    async fn python_asyncio() {
        super::stampede_on_one_client("python", &["--asyncio"]).await
    }
    /// Go's `GetOrLoad`: 40 goroutines on one Client, 8 streams per connection, one database call.
    #[tokio::test]
    async fn go() {
        super::stampede_on_one_client("go", &[]).await
    }
    /// Node's `getOrLoad`: 40 promises on one Client, 8 streams per connection, one database call.
    #[tokio::test]
    async fn node() {
        super::stampede_on_one_client("node", &[]).await
    }
}

mod retry {
    /// Python retries a Get across a restart and a versioned Set, never a plain Set or INVALID_ARGUMENT.
    #[tokio::test]
    async fn python() {
        super::retry("python").await
    }
    /// Go retries a Get across a restart and a versioned Set, never a plain Set or INVALID_ARGUMENT.
    #[tokio::test]
    async fn go() {
        super::retry("go").await
    }
    /// Node retries a Get across a restart and a versioned Set, never a plain Set or INVALID_ARGUMENT.
    #[tokio::test]
    async fn node() {
        super::retry("node").await
    }
}
