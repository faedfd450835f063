//! Test bed shared by the black-box tests: a real Redis Cluster (3 primaries + 3 replicas), a private Postgres and
//! the real cachecoord server on free loopback ports, reached through the generated tonic client.
//!
//! Servers started here live as long as the test process (a test's own cluster stops when it is dropped): a small
//! watchdog shell process stops them (and removes their directories) once the test binary exits, however it exits.

#![allow(dead_code, unreachable_pub)]

/// Defines each named `async fn scenario(backend: Backend)` of the calling file as two tests, `embedded::<name>`
/// and `cluster::<name>`: the same behaviour checked on both stores.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Backend::Embedded).await })*
        }
        mod cluster {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Backend::Cluster).await })*
        }
    };
}

pub mod calls;
pub mod cluster;
pub mod dns;
pub mod drill;
pub mod loader;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod raw_http2;
pub mod reshard;
pub mod server;
pub mod strict;

#[allow(unused_imports)]
pub use calls::{Client, batch_get, cached, found_value, get, set, set_request};
#[allow(unused_imports)]
pub use server::{Backend, TestServer, config_on};

use std::sync::atomic::{AtomicU64, Ordering};
use tonic::Code;
use tonic_types::StatusExt;

/// A name no other test in this run (or an earlier run) uses, for keys that must not collide: `t<pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}t{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Asserts `status` has `code` and an ErrorInfo with `reason` in the cachecoord.v1 domain.
pub fn assert_error(status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    assert_eq!(info.domain, "cachecoord.v1");
    assert!(!status.message().is_empty());
}

/// Runs a shell watchdog that waits for this test process to exit, then runs `cleanup`.
#[allow(
    clippy::zombie_processes,
    reason = "the watchdog must outlive this process; init reaps it"
)]
pub(crate) fn on_process_exit(cleanup: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {cleanup}",
        pid = std::process::id()
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn watchdog");
}
