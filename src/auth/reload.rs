//! The tokens in force, and their reloads. The file is re-read every interval and compared by content (a
//! SHA-256 of its bytes), not by modification time: a file replaced within the filesystem's time resolution, or
//! with its old mtime kept, is still seen.
//!
//! A reload never widens access, and never narrows it silently. A file that cannot be read (deleted, unmounted),
//! does not parse, fails a check or holds no token is refused: the last good tokens stay in force, the refusal is
//! logged at ERROR and counted in `cachecoord_auth_reload_failures_total{reason}`, and
//! `cachecoord_auth_last_reload_success` drops to 0 until a good file is read. A good file that removes or
//! changes tokens is logged at WARN with their names, and `cachecoord_auth_tokens` shows how many are in force.

use super::caller::Caller;
use super::tokens_file::{Refusal, TokenTable, parse};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// The tokens in force and the file they come from.
pub(super) struct LiveTokens {
    table: RwLock<Arc<TokenTable>>,
    file: PathBuf,
    /// The SHA-256 of the file contents in force.
    loaded: [u8; 32],
}

/// What the last look at the file found, so one change is judged (and logged, and counted) once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Unreadable,
    Contents([u8; 32]),
}

impl LiveTokens {
    /// The tokens in `file`; a file a reload would refuse is refused at start-up too.
    pub(super) fn open(file: &Path) -> Result<LiveTokens, Refusal> {
        let bytes = std::fs::read(file).map_err(|e| Refusal::unreadable(&e))?;
        let table = parse(&bytes)?;
        report_in_force(&table);
        metrics::gauge!("cachecoord_auth_last_reload_success").set(1.0);
        Ok(LiveTokens {
            table: RwLock::new(Arc::new(table)),
            file: file.to_owned(),
            loaded: Sha256::digest(&bytes).into(),
        })
    }

    /// The caller whose token hashes to `digest`.
    pub(super) fn caller(&self, digest: &[u8; 32]) -> Option<Arc<Caller>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        table.get(digest).cloned()
    }

    /// Re-reads the file every `every` until `stop`, taking each good change and refusing each bad one.
    pub(super) async fn watch(&self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut in_force = self.loaded;
        let mut seen = Seen::Contents(in_force);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(every) => {}
            }
            let read = std::fs::read(&self.file);
            let now = match &read {
                Ok(bytes) => Seen::Contents(Sha256::digest(bytes).into()),
                Err(_) => Seen::Unreadable,
            };
            if now == seen {
                continue;
            }
            seen = now;
            let outcome = match read {
                Err(error) => Err(Refusal::unreadable(&error)),
                // Back to the contents in force (a file restored after a refusal): nothing to load.
                Ok(_) if now == Seen::Contents(in_force) => {
                    metrics::gauge!("cachecoord_auth_last_reload_success").set(1.0);
                    tracing::info!(file = %self.file.display(), "tokens file matches the tokens in force again");
                    continue;
                }
                Ok(bytes) => parse(&bytes),
            };
            match outcome {
                Ok(table) => {
                    if let Seen::Contents(digest) = now {
                        in_force = digest;
                    }
                    self.take(table);
                }
                Err(refusal) => self.refuse(&refusal),
            }
        }
    }

    fn take(&self, table: TokenTable) {
        let mut current = self.table.write().unwrap_or_else(|e| e.into_inner());
        let names = |table: &TokenTable, keep: &dyn Fn(&[u8; 32], &Caller) -> bool| {
            let mut names: Vec<String> = table
                .iter()
                .filter(|&(digest, caller)| keep(digest, caller))
                .map(|(_, caller)| caller.name.clone())
                .collect();
            names.sort();
            names
        };
        let revoked = names(&current, &|digest, _| !table.contains_key(digest));
        let changed = names(&current, &|digest, caller| {
            table.get(digest).is_some_and(|new| **new != *caller)
        });
        let added = names(&table, &|digest, _| !current.contains_key(digest));
        if !revoked.is_empty() || !changed.is_empty() {
            tracing::warn!(?revoked, ?changed, ?added, tokens = table.len(), file = %self.file.display(), "tokens reloaded: access narrowed");
        } else {
            tracing::info!(?added, tokens = table.len(), file = %self.file.display(), "tokens reloaded");
        }
        report_in_force(&table);
        metrics::gauge!("cachecoord_auth_last_reload_success").set(1.0);
        *current = Arc::new(table);
    }

    fn refuse(&self, refusal: &Refusal) {
        metrics::counter!("cachecoord_auth_reload_failures_total", "reason" => refusal.reason)
            .increment(1);
        metrics::gauge!("cachecoord_auth_last_reload_success").set(0.0);
        tracing::error!(
            reason = refusal.reason,
            error = %refusal,
            file = %self.file.display(),
            "tokens file refused; the last good tokens stay in force"
        );
    }
}

fn report_in_force(table: &TokenTable) {
    metrics::gauge!("cachecoord_auth_tokens").set(table.len() as f64);
}
