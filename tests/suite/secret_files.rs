//! Credentials from mounted Secrets and from the environment are text, taken verbatim: a password that looks
//! like a number or a boolean is that string.

use crate::support::calls::{self, Client};
use crate::support::cluster::RedisCluster;
use crate::support::process::ServerProcess;

/// A 3 + 3 Redis Cluster whose nodes require the password `123456`: cachecoord, given it in a file the way the
/// chart mounts a Secret (with a trailing newline, as `echo` writes it), serves Set and Get through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_redis_password_read_from_a_file_serves() {
    let cluster = RedisCluster::start_with_password("123456").await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "123456\n").unwrap();
    let config = format!(
        "[store]\nredis_url = {:?}\nredis_password_file = {:?}\n",
        cluster.url(),
        password.display().to_string()
    );
    let server = ServerProcess::start(&config).await;
    let mut client = Client::connect(server.uri()).await.unwrap();
    calls::set(&mut client, "user:authed1", b"v1").await;
    let answer = calls::cached(&mut client, "user:authed1").await;
    assert_eq!(calls::found_value(answer).as_deref(), Some(&b"v1"[..]));
}

/// From the environment a credential stays text as well: `123456`, `true` and leading spaces survive, and
/// `check-config` prints the password as `<redacted>`, never its value.
#[test]
fn credentials_from_the_environment_stay_text() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cachecoord"))
        .arg("check-config")
        .env("CACHECOORD_STORE__REDIS_PASSWORD", "123456")
        .env("CACHECOORD_STORE__REDIS_USERNAME", "  007")
        .env("CACHECOORD_POSTGRES__URL", "true")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "refused: {stderr}");
    assert!(printed.contains("redis_username = \"  007\""), "{printed}");
    assert!(printed.contains("url = \"true\""), "{printed}");
    assert!(
        printed.contains("redis_password = \"<redacted>\""),
        "{printed}"
    );
    assert!(!printed.contains("123456"), "{printed}");
}
