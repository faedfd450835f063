//! Who may touch what, over real tokens: the isolation matrix. Each refused call gets the right code and reason,
//! and touches nothing (no entry changed, no load started); tenants in different namespaces use the same key
//! names without seeing or invalidating each other's entries, through every RPC.

use crate::support::loader::TestLoader;
use crate::support::process::{ServerProcess, metric};
use crate::support::{Backend, Client, TestServer, assert_error, found_value, set_request, unique};
use cachecoord::auth::hash_token;
use cachecoord::proto::{
    BatchGetRequest, BatchSetRequest, GetRequest, InvalidatePatternRequest, InvalidateRequest,
    StatsRequest,
};
use tonic::{Code, Request};

/// Tokens of the matrix: (secret, name, namespace, read, write, invalidate).
const TOKENS: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("secret-a-rw", "a-rw", "team-a", "*", "*", "*"),
    ("secret-a-ro", "a-ro", "team-a", "*", "", ""),
    ("secret-b-rw", "b-rw", "team-b", "*", "*", "*"),
    (
        "secret-b-users",
        "b-users",
        "team-b",
        "user:*",
        "",
        "user:*",
    ),
];

/// A tokens file holding only the hashes of [`TOKENS`].
fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let scopes = |s: &str| {
        if s.is_empty() {
            "[]".to_owned()
        } else {
            format!("[{s:?}]")
        }
    };
    let mut text = String::new();
    for (secret, name, namespace, read, write, invalidate) in TOKENS {
        text += &format!(
            "[[tokens]]\nname = {name:?}\nnamespace = {namespace:?}\nsha256 = {:?}\nread = {}\nwrite = {}\ninvalidate = {}\n\n",
            hash_token(secret),
            scopes(read),
            scopes(write),
            scopes(invalidate),
        );
    }
    assert!(!text.contains("secret-"), "the file holds hashes only");
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `message` with `authorization: Bearer <token>` when a token is given.
fn as_caller<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn get(client: &mut Client, token: &str, key: &str) -> Option<Vec<u8>> {
    let request = GetRequest {
        key: key.into(),
        cache_only: true,
        lease: false,
    };
    let answer = client.get(as_caller(Some(token), request)).await.unwrap();
    found_value(answer.into_inner())
}

async fn set(client: &mut Client, token: &str, key: &str, value: &[u8]) {
    client
        .set(as_caller(Some(token), set_request(key, value)))
        .await
        .unwrap();
}

/// Every data RPC, as `token`, against `key` (and the pattern `{key}*`), in the order Get, BatchGet, Set,
/// BatchSet, Invalidate, InvalidatePattern; answers each outcome.
async fn every_rpc(
    client: &mut Client,
    token: Option<&str>,
    key: &str,
) -> Vec<Result<(), tonic::Status>> {
    let keys = vec![key.to_owned()];
    let pattern = format!("{key}*");
    let get = GetRequest {
        key: key.into(),
        cache_only: true,
        lease: false,
    };
    let batch_get = BatchGetRequest {
        keys: keys.clone(),
        cache_only: true,
        lease: false,
    };
    let batch_set = BatchSetRequest {
        entries: vec![set_request(key, b"intruder")],
    };
    vec![
        client.get(as_caller(token, get)).await.map(drop),
        client
            .batch_get(as_caller(token, batch_get))
            .await
            .map(drop),
        client
            .set(as_caller(token, set_request(key, b"intruder")))
            .await
            .map(drop),
        client
            .batch_set(as_caller(token, batch_set))
            .await
            .map(drop),
        client
            .invalidate(as_caller(token, InvalidateRequest { keys }))
            .await
            .map(drop),
        client
            .invalidate_pattern(as_caller(token, InvalidatePatternRequest { pattern }))
            .await
            .map(drop),
    ]
}

async fn matrix(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let loader = TestLoader::start().await;
    let mut config = backend.config();
    config.auth.enabled = true;
    config.auth.tokens_file = Some(tokens_file(dir.path()));
    loader.route(&mut config, "loaded:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    // Two tenants write the same key names.
    let id = unique("");
    let (user, posts) = (format!("user:{id}"), format!("posts:{id}"));
    let loaded = format!("loaded:{id}");
    loader.source.put(&loaded, b"from the loader");
    set(&mut client, "secret-a-rw", &user, b"A").await;
    set(&mut client, "secret-b-rw", &user, b"B").await;
    set(&mut client, "secret-b-rw", &posts, b"B posts").await;
    let untouched = |client: &mut Client| {
        let (mut client, user, posts) = (client.clone(), user.clone(), posts.clone());
        async move {
            assert_eq!(
                get(&mut client, "secret-a-rw", &user).await.as_deref(),
                Some(&b"A"[..])
            );
            assert_eq!(
                get(&mut client, "secret-b-rw", &user).await.as_deref(),
                Some(&b"B"[..])
            );
            assert_eq!(
                get(&mut client, "secret-b-rw", &posts).await.as_deref(),
                Some(&b"B posts"[..])
            );
            assert_eq!(get(&mut client, "secret-a-rw", &posts).await, None);
        }
    };
    untouched(&mut client).await;

    // No token, an unknown token, a malformed header: UNAUTHENTICATED on every RPC, Stats included.
    for token in [None, Some("not-a-real-token")] {
        for outcome in every_rpc(&mut client, token, &user).await {
            assert_error(
                &outcome.unwrap_err(),
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            );
        }
        let status = client
            .stats(as_caller(token, StatsRequest {}))
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHENTICATED");
    }
    let mut basic = Request::new(GetRequest {
        key: user.clone(),
        cache_only: true,
        lease: false,
    });
    basic
        .metadata_mut()
        .insert("authorization", "Basic c2VjcmV0LWEtcnc=".parse().unwrap());
    assert_error(
        &client.get(basic).await.unwrap_err(),
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    untouched(&mut client).await;

    // A read-only token reads its namespace but may not write or invalidate.
    assert_eq!(
        get(&mut client, "secret-a-ro", &user).await.as_deref(),
        Some(&b"A"[..])
    );
    let ro = Some("secret-a-ro");
    let outcomes = every_rpc(&mut client, ro, &user).await;
    assert!(
        outcomes[..2].iter().all(Result::is_ok),
        "reads are in scope"
    );
    for outcome in &outcomes[2..] {
        assert_error(
            outcome.as_ref().unwrap_err(),
            Code::PermissionDenied,
            "OUT_OF_SCOPE",
        );
    }
    untouched(&mut client).await;

    // Namespace A reading, invalidating and pattern-invalidating B's key names touches only A's entries.
    assert_eq!(
        get(&mut client, "secret-a-rw", &posts).await,
        None,
        "B's posts are invisible to A"
    );
    let batch = client
        .batch_get(as_caller(
            Some("secret-a-rw"),
            BatchGetRequest {
                keys: vec![user.clone(), posts.clone()],
                cache_only: true,
                lease: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let found: Vec<_> = batch
        .results
        .iter()
        .map(|r| (r.key.as_str(), r.found, r.value.to_vec()))
        .collect();
    assert_eq!(
        found,
        vec![
            (user.as_str(), true, b"A".to_vec()),
            (posts.as_str(), false, vec![])
        ]
    );
    let deleted = client
        .invalidate(as_caller(
            Some("secret-a-rw"),
            InvalidateRequest {
                keys: vec![posts.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 0, "A has no {posts}");
    let deleted = client
        .invalidate_pattern(as_caller(
            Some("secret-a-rw"),
            InvalidatePatternRequest {
                pattern: "posts:*".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 0, "A's pattern reaches no B entry");
    assert_eq!(
        get(&mut client, "secret-b-rw", &posts).await.as_deref(),
        Some(&b"B posts"[..])
    );
    client
        .invalidate(as_caller(
            Some("secret-a-rw"),
            InvalidateRequest {
                keys: vec![user.clone()],
            },
        ))
        .await
        .unwrap();
    assert_eq!(get(&mut client, "secret-a-rw", &user).await, None);
    assert_eq!(
        get(&mut client, "secret-b-rw", &user).await.as_deref(),
        Some(&b"B"[..]),
        "B's twin survives"
    );
    set(&mut client, "secret-a-rw", &user, b"A").await;

    // A '|' cannot forge another namespace's key.
    let forged = format!("team-b|{user}");
    let status = client
        .get(as_caller(
            Some("secret-a-rw"),
            GetRequest {
                key: forged,
                cache_only: true,
                lease: false,
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_KEY");

    // A prefix-scoped token: an out-of-scope BatchGet is refused whole (no load starts, even for its in-scope
    // keys); patterns that could reach beyond user:* are refused; in-scope calls work.
    let scoped = Some("secret-b-users");
    let status = client
        .batch_get(as_caller(
            scoped,
            BatchGetRequest {
                keys: vec![format!("user:{loaded}"), loaded.clone()],
                cache_only: false,
                lease: false,
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OUT_OF_SCOPE");
    assert_eq!(
        loader.source.loads_of(&loaded),
        0,
        "a refused BatchGet loads nothing"
    );
    for pattern in ["user*", "*", "posts:*", "us?r:1"] {
        let status = client
            .invalidate_pattern(as_caller(
                scoped,
                InvalidatePatternRequest {
                    pattern: pattern.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_error(&status, Code::PermissionDenied, "OUT_OF_SCOPE");
    }
    let status = client
        .invalidate(as_caller(
            scoped,
            InvalidateRequest {
                keys: vec![user.clone(), posts.clone()],
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OUT_OF_SCOPE");
    untouched(&mut client).await;
    assert_eq!(
        get(&mut client, "secret-b-users", &user).await.as_deref(),
        Some(&b"B"[..])
    );
    let deleted = client
        .invalidate_pattern(as_caller(
            scoped,
            InvalidatePatternRequest {
                pattern: format!("{user}*"),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 1);
    assert_eq!(
        get(&mut client, "secret-a-rw", &user).await.as_deref(),
        Some(&b"A"[..]),
        "A's twin survives"
    );

    // Loads run per namespace: each tenant's first read loads its own entry.
    for token in ["secret-a-rw", "secret-b-rw"] {
        let answer = client
            .get(as_caller(
                Some(token),
                GetRequest {
                    key: loaded.clone(),
                    cache_only: false,
                    lease: false,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&answer.value[..], b"from the loader");
    }
    assert_eq!(loader.source.loads_of(&loaded), 2);
}

/// The tokens file is re-read when it changes: a revoked token stops working without a restart.
#[tokio::test]
async fn revoked_tokens_stop_working_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = tokens_file(dir.path());
    let mut config = Backend::Embedded.config();
    config.auth.enabled = true;
    config.auth.tokens_file = Some(file.clone());
    config.auth.reload_interval = std::time::Duration::from_millis(50);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique(""));
    set(&mut client, "secret-a-rw", &key, b"x").await;

    let kept: String = std::fs::read_to_string(&file)
        .unwrap()
        .split("\n\n")
        .filter(|table| !table.contains("\"a-rw\""))
        .collect::<Vec<_>>()
        .join("\n\n");
    // Modification times can be coarse: make sure this write is seen as a change.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&file, kept).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let request = as_caller(
            Some("secret-a-rw"),
            GetRequest {
                key: key.clone(),
                cache_only: true,
                lease: false,
            },
        );
        match client.get(request).await {
            Err(status) => {
                assert_error(&status, Code::Unauthenticated, "UNAUTHENTICATED");
                break;
            }
            Ok(_) => assert!(std::time::Instant::now() < deadline, "token still accepted"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&mut client, "secret-a-ro", &key).await.as_deref(),
        Some(&b"x"[..])
    );
}

on_both_stores!(matrix);

/// A cachecoord process with auth on, re-reading its tokens file every 50 ms: the reload metrics are on its
/// /metrics, so what a refused reload signals can be checked from outside.
struct Reloading {
    server: ServerProcess,
    client: Client,
    file: std::path::PathBuf,
    /// The file as written at start-up.
    good: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Reloading {
    async fn start() -> Reloading {
        let dir = tempfile::tempdir().unwrap();
        let file = tokens_file(dir.path());
        let config = format!(
            "[auth]\nenabled = true\ntokens_file = {:?}\nreload_interval_ms = 50\n",
            file.display().to_string()
        );
        let server = ServerProcess::start(&config).await;
        let client =
            cachecoord::proto::cache_service_client::CacheServiceClient::connect(server.uri())
                .await
                .unwrap();
        Reloading {
            good: std::fs::read_to_string(&file).unwrap(),
            server,
            client,
            file,
            key: format!("user:{}", unique("")),
            _dir: dir,
        }
    }

    /// Replaces the tokens file the way docs/security.md asks: a temporary file renamed over it, so the server
    /// never reads a half-written file (and each change here is exactly one change there).
    fn replace(&self, text: &str) {
        let temporary = self.file.with_extension("tmp");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &self.file).unwrap();
    }

    /// The tokens file as written at start-up, without the table of token `name`.
    fn without(&self, name: &str) -> String {
        self.good
            .split("\n\n")
            .filter(|table| !table.contains(&format!("name = {name:?}")))
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// Whether `token` is accepted now (a cache-only Get of a key every token may read).
    async fn accepts(&mut self, token: &str) -> bool {
        let request = GetRequest {
            key: self.key.clone(),
            cache_only: true,
            lease: false,
        };
        match self.client.get(as_caller(Some(token), request)).await {
            Ok(_) => true,
            Err(status) => {
                assert_error(&status, Code::Unauthenticated, "UNAUTHENTICATED");
                false
            }
        }
    }

    /// Asserts that every token of the matrix is still accepted.
    async fn all_accepted(&mut self) {
        for (secret, ..) in TOKENS {
            assert!(self.accepts(secret).await, "{secret} no longer accepted");
        }
    }

    /// `cachecoord_auth_reload_failures_total{reason}` (0 before the first).
    async fn failures(&self, reason: &str) -> f64 {
        let text = self.server.scrape().await;
        metric(
            &text,
            "cachecoord_auth_reload_failures_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    }

    /// `cachecoord_auth_last_reload_success`: 1 when the file on disk is the set in force.
    async fn last_reload_success(&self) -> Option<f64> {
        metric(
            &self.server.scrape().await,
            "cachecoord_auth_last_reload_success",
            &[],
        )
    }

    /// Waits (bounded) until `count` reloads were refused for `reason`.
    async fn refused(&self, reason: &str, count: f64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.failures(reason).await < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no refused reload ({reason}) signalled on /metrics"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(self.last_reload_success().await, Some(0.0));
    }

    /// Waits (bounded) until `token` stops being accepted.
    async fn revoked(&mut self, token: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.accepts(token).await {
            assert!(
                std::time::Instant::now() < deadline,
                "{token} still accepted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A file that does not parse (here: a revocation with a syntax error) is refused: the revoked token keeps
/// working until the file is fixed, the refusal is counted and logged; the fixed file then takes effect.
#[tokio::test]
async fn a_tokens_file_that_does_not_parse_keeps_the_last_good_set() {
    let mut reloading = Reloading::start().await;
    let revoked = reloading.without("a-rw");
    reloading.replace(&format!("{revoked}\n[[tokens]\nname = "));
    reloading.refused("invalid", 1.0).await;
    reloading.all_accepted().await;
    assert!(
        !reloading.server.log_lines("tokens file refused").is_empty(),
        "no log line says so"
    );

    reloading.replace(&revoked);
    reloading.revoked("secret-a-rw").await;
    assert!(reloading.accepts("secret-a-ro").await);
    assert_eq!(reloading.last_reload_success().await, Some(1.0));
}

/// An empty file, and one with no tokens (only comments), lock nobody out: both are refused and counted.
#[tokio::test]
async fn an_empty_tokens_file_keeps_the_last_good_set() {
    let mut reloading = Reloading::start().await;
    reloading.replace("");
    reloading.refused("empty", 1.0).await;
    reloading.all_accepted().await;
    reloading.replace("# every token moved to the other cluster\n");
    reloading.refused("empty", 2.0).await;
    reloading.all_accepted().await;
}

/// A file cut short in the middle of a token's table is refused, not read as fewer (or narrower) tokens.
#[tokio::test]
async fn a_truncated_tokens_file_keeps_the_last_good_set() {
    let mut reloading = Reloading::start().await;
    let good = reloading.good.clone();
    // Inside the third token's sha256: the first two tables are complete, the rest is lost.
    let third = good.match_indices("sha256").nth(2).unwrap().0;
    reloading.replace(&good[..third + 20]);
    reloading.refused("invalid", 1.0).await;
    reloading.all_accepted().await;
}

/// A deleted file keeps the last good set (signalled as unreadable); a new file then takes effect.
#[tokio::test]
async fn a_deleted_tokens_file_keeps_the_last_good_set() {
    let mut reloading = Reloading::start().await;
    let revoked = reloading.without("b-rw");
    std::fs::remove_file(&reloading.file).unwrap();
    reloading.refused("unreadable", 1.0).await;
    reloading.all_accepted().await;

    reloading.replace(&revoked);
    reloading.revoked("secret-b-rw").await;
    assert!(reloading.accepts("secret-b-users").await);
}

/// Changes are found by content, not by modification time: a file replaced with the same mtime is reloaded.
#[tokio::test]
async fn a_replaced_tokens_file_with_the_same_mtime_is_reloaded() {
    let mut reloading = Reloading::start().await;
    let revoked = reloading.without("a-ro");
    let mtime = std::fs::metadata(&reloading.file)
        .unwrap()
        .modified()
        .unwrap();
    reloading.replace(&revoked);
    std::fs::File::options()
        .write(true)
        .open(&reloading.file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    reloading.revoked("secret-a-ro").await;
    assert!(reloading.accepts("secret-a-rw").await);
}
