//! The Postgres outbox: committed row changes invalidate the cache on their own.
//!
//! `migrate` installs `migrations/001_outbox.sql` (outbox table + trigger function) and one trigger per
//! configured table. `run` keeps a connection that LISTENs on `cachecoord_outbox`; every NOTIFY (and a safety poll)
//! drains the outbox: rows are locked with `FOR UPDATE SKIP LOCKED` (so with several replicas each row is applied
//! by one of them), mapped to keys and patterns, invalidated through the coordinator, and deleted in the same
//! transaction only once the invalidation succeeded. Rows that piled up while cachecoord was down or disconnected
//! are applied as soon as it (re)connects; a failed invalidation leaves them for the next drain.

use crate::cache::Coordinator;
use crate::config::{Config, OutboxTable};
use crate::{Error, Result, StartupError};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

/// The outbox schema, table and trigger function.
pub const MIGRATION: &str = include_str!("../migrations/001_outbox.sql");
const CHANNEL: &str = "cachecoord_outbox";

fn postgres_error(e: tokio_postgres::Error) -> Error {
    Error::BackendUnavailable {
        source: Box::new(e),
    }
}

/// TLS for the outbox's connections, as for the loader's.
fn connector(config: &Config) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    crate::tls::postgres_connector(config.postgres.tls_ca_file.as_deref()).map_err(|e| {
        Error::BackendUnavailable {
            source: format!("Postgres TLS: {e:#}").into(),
        }
    })
}

/// Applies the migration and (re)creates the capture trigger on every configured table.
pub async fn migrate(config: &Config) -> Result<(), StartupError> {
    let url = config
        .postgres
        .url
        .as_deref()
        .ok_or_else(|| StartupError::unusable("postgres.url", "it is not set"))?;
    let unreachable = |e| StartupError::Unreachable {
        what: "Postgres",
        source: postgres_error(e),
    };
    let connector = connector(config).map_err(|e| StartupError::unusable("Postgres TLS", e))?;
    let (client, connection) = tokio_postgres::connect(url, connector)
        .await
        .map_err(unreachable)?;
    tokio::spawn(connection);
    client.batch_execute(MIGRATION).await.map_err(unreachable)?;
    for table in &config.outbox.tables {
        // Identifiers are validated as plain names in Config::validate.
        let sql = format!(
            "CREATE OR REPLACE TRIGGER cachecoord_capture AFTER INSERT OR UPDATE OR DELETE ON {} \
             FOR EACH ROW EXECUTE FUNCTION cachecoord.capture('{}')",
            table.table, table.id_column
        );
        client.batch_execute(&sql).await.map_err(unreachable)?;
        tracing::info!(table = %table.table, "outbox trigger installed");
    }
    Ok(())
}

/// Listens and drains until `stop` turns true, reconnecting with backoff.
pub async fn run(config: Config, coordinator: Arc<Coordinator>, mut stop: watch::Receiver<bool>) {
    let url = config.postgres.url.clone().unwrap_or_default();
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        let session = listen_and_drain(&url, &config, &coordinator, &mut stop);
        match session.await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, ?backoff, "outbox listener disconnected; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One connection's life: LISTEN, drain what is waiting, then drain on every wake-up. Returns Ok on stop.
async fn listen_and_drain(
    url: &str,
    config: &Config,
    coordinator: &Coordinator,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let (mut client, mut connection) = tokio_postgres::connect(url, connector(config)?)
        .await
        .map_err(postgres_error)?;
    let (wake, mut woken) = mpsc::channel::<()>(1);
    let (closed_tx, mut closed) = mpsc::channel::<tokio_postgres::Error>(1);
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = wake.try_send(());
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = closed_tx.send(error).await;
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(postgres_error)?;
    tracing::info!("outbox listener connected");
    let poll = config.outbox.poll_interval;
    loop {
        drain(&mut client, config, coordinator).await?;
        tokio::select! {
            _ = woken.recv() => {}
            _ = tokio::time::sleep(poll) => {}
            Some(error) = closed.recv() => return Err(postgres_error(error)),
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// Applies outbox rows until none are left. A failed invalidation rolls back, leaving the rows for later.
async fn drain(
    client: &mut tokio_postgres::Client,
    config: &Config,
    coordinator: &Coordinator,
) -> Result<()> {
    loop {
        let transaction = client.transaction().await.map_err(postgres_error)?;
        let rows = transaction
            .query(
                "SELECT id, table_name, row_id FROM cachecoord.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&config.outbox.batch_size],
            )
            .await
            .map_err(postgres_error)?;
        if rows.is_empty() {
            return transaction.commit().await.map_err(postgres_error);
        }
        let mut keys = BTreeSet::new();
        let mut patterns = BTreeSet::new();
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.get::<_, i64>(0));
            let (table, row_id): (String, String) = (row.get(1), row.get(2));
            if let Some(mapping) = config.outbox.tables.iter().find(|t| t.table == table) {
                expand(mapping, &row_id, &mut keys, &mut patterns);
            }
        }
        if let Err(error) = apply(coordinator, keys, patterns, config).await {
            tracing::warn!(%error, rows = ids.len(), "outbox invalidation failed; rows stay for a retry");
            transaction.rollback().await.map_err(postgres_error)?;
            return Err(error);
        }
        transaction
            .execute("DELETE FROM cachecoord.outbox WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(postgres_error)?;
        transaction.commit().await.map_err(postgres_error)?;
        tracing::debug!(rows = ids.len(), "outbox rows applied");
    }
}

/// The keys and patterns one changed row maps to.
fn expand(
    mapping: &OutboxTable,
    row_id: &str,
    keys: &mut BTreeSet<String>,
    patterns: &mut BTreeSet<String>,
) {
    keys.extend(mapping.keys.iter().map(|k| k.replace("{id}", row_id)));
    patterns.extend(mapping.patterns.iter().map(|p| p.replace("{id}", row_id)));
}

async fn apply(
    coordinator: &Coordinator,
    keys: BTreeSet<String>,
    patterns: BTreeSet<String>,
    config: &Config,
) -> Result<()> {
    let limits = &config.limits;
    // Each key and pattern in the default namespace and in every namespace the outbox serves.
    let in_namespaces = |items: BTreeSet<String>| -> Vec<String> {
        let mut all: Vec<String> = items.iter().cloned().collect();
        for namespace in &config.outbox.namespaces {
            all.extend(items.iter().map(|item| format!("{namespace}|{item}")));
        }
        all
    };
    // A row id that cannot form a valid key (say, it holds a space) names nothing that can be cached: skip it.
    let valid = |raw: &String| crate::keys::Key::parse(raw, limits.max_key_bytes).is_ok();
    let keys: Vec<String> = in_namespaces(keys).into_iter().filter(valid).collect();
    let patterns = in_namespaces(patterns);
    for chunk in keys.chunks(limits.max_batch_keys) {
        coordinator.invalidate(chunk).await?;
    }
    for pattern in patterns {
        match coordinator.invalidate_pattern(&pattern).await {
            Err(Error::InvalidPattern { .. } | Error::PatternTooBroad { .. }) => {
                tracing::warn!(%pattern, "outbox pattern skipped: not a valid pattern for this row id");
            }
            result => {
                result?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_expands_to_its_keys_and_patterns() {
        let mapping = OutboxTable {
            table: "users".into(),
            id_column: "id".into(),
            keys: vec!["user:{id}".into()],
            patterns: vec!["user:{id}:*".into(), "posts:page:*".into()],
        };
        let (mut keys, mut patterns) = (BTreeSet::new(), BTreeSet::new());
        expand(&mapping, "7", &mut keys, &mut patterns);
        expand(&mapping, "8", &mut keys, &mut patterns);
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["user:7", "user:8"]);
        assert_eq!(
            patterns.into_iter().collect::<Vec<_>>(),
            ["posts:page:*", "user:7:*", "user:8:*"]
        );
    }
}
