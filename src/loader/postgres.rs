//! The built-in Postgres loader: one parameterised query per entity (and optionally one batch query), run on a
//! pooled tokio-postgres connection.
//!
//! The id is bound with the type Postgres infers for `$1`: integer columns get the id parsed as an integer (an id
//! that is not a number cannot exist there, so it is a "not found", not an error), anything else gets text.

use super::{Loaded, Loader, bounded, key_parts};
use crate::config::{LoaderConfig, PostgresConfig};
use crate::keys::Key;
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

/// Queries for one route, on a shared pool.
pub struct PostgresLoader {
    pool: Pool,
    query: String,
    batch_query: Option<String>,
    permits: Semaphore,
    timeout: Duration,
}

type Param = Box<dyn ToSql + Sync + Send>;

impl PostgresLoader {
    /// A loader for `route`; connections are opened on first use.
    pub fn new(route: &LoaderConfig, postgres: &PostgresConfig) -> Result<PostgresLoader> {
        let url = postgres.url.clone().unwrap_or_default();
        let pg_config: tokio_postgres::Config =
            url.parse().map_err(|e| config_error(&route.pattern, e))?;
        let tls = crate::tls::postgres_connector(postgres.tls_ca_file.as_deref()).map_err(|e| {
            Error::LoaderFailed {
                key: route.pattern.clone(),
                source: format!("Postgres TLS: {e:#}").into(),
            }
        })?;
        let manager = Manager::from_config(
            pg_config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(postgres.pool_size)
            .build()
            .map_err(|e| config_error(&route.pattern, e))?;
        Ok(PostgresLoader {
            pool,
            query: route.query.clone().unwrap_or_default(),
            batch_query: route.batch_query.clone(),
            permits: Semaphore::new(route.max_concurrency),
            timeout: route.timeout,
        })
    }

    async fn run(
        &self,
        key: &Key,
        sql: &str,
        bind: impl FnOnce(&Type) -> Option<Param>,
    ) -> Result<Vec<Row>> {
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| Error::LoaderFailed {
            key: key.to_string(),
            source: e,
        };
        let client = self.pool.get().await.map_err(|e| fail(e.into()))?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| fail(e.into()))?;
        let param_type = statement.params().first().cloned().unwrap_or(Type::TEXT);
        let Some(param) = bind(&param_type) else {
            return Ok(Vec::new());
        };
        client
            .query(&statement, &[param.as_ref() as &(dyn ToSql + Sync)])
            .await
            .map_err(|e| fail(e.into()))
    }
}

fn config_error(pattern: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::LoaderFailed {
        key: pattern.to_owned(),
        source: Box::new(e),
    }
}

/// The id as the query's `$1` wants it; `None` when it cannot be of that type.
fn bind_id(id: &str, param_type: &Type) -> Option<Param> {
    Some(match *param_type {
        Type::INT2 => Box::new(id.parse::<i16>().ok()?),
        Type::INT4 => Box::new(id.parse::<i32>().ok()?),
        Type::INT8 => Box::new(id.parse::<i64>().ok()?),
        _ => Box::new(id.to_owned()),
    })
}

/// The ids as the batch query's array `$1` wants them; ids that cannot be of that type are left out.
fn bind_ids(ids: &[&str], param_type: &Type) -> Param {
    fn parsed<T: std::str::FromStr>(ids: &[&str]) -> Vec<T> {
        ids.iter().filter_map(|id| id.parse().ok()).collect()
    }
    match *param_type {
        Type::INT2_ARRAY => Box::new(parsed::<i16>(ids)),
        Type::INT4_ARRAY => Box::new(parsed::<i32>(ids)),
        Type::INT8_ARRAY => Box::new(parsed::<i64>(ids)),
        _ => Box::new(ids.iter().map(|id| id.to_string()).collect::<Vec<String>>()),
    }
}

/// Reads a text or bytea column as bytes.
fn column_bytes(row: &Row, index: usize, key: &Key) -> Result<Bytes> {
    let column_type = row.columns().get(index).map(|c| c.type_().clone());
    let bytes = match column_type {
        Some(Type::BYTEA) => row.try_get::<_, Vec<u8>>(index).map(Bytes::from),
        _ => row.try_get::<_, String>(index).map(Bytes::from),
    };
    bytes.map_err(|e| Error::LoaderFailed {
        key: key.to_string(),
        source: format!(
            "column {index} must be text or bytea (cast it, e.g. row_to_json(t)::text): {e}"
        )
        .into(),
    })
}

#[async_trait]
impl Loader for PostgresLoader {
    async fn load(&self, key: &Key) -> Result<Loaded> {
        bounded(key, &self.permits, self.timeout, async {
            let (_, id, _) = key_parts(key);
            let rows = self.run(key, &self.query, |t| bind_id(id, t)).await?;
            let value = rows
                .first()
                .map(|row| column_bytes(row, 0, key))
                .transpose()?;
            Ok(Loaded {
                value,
                ttl: None,
                version: None,
            })
        })
        .await
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Loaded>> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        let Some(batch_query) = &self.batch_query else {
            return futures::future::try_join_all(keys.iter().map(|key| self.load(key))).await;
        };
        bounded(first, &self.permits, self.timeout, async {
            let ids: Vec<&str> = keys.iter().map(|key| key_parts(key).1).collect();
            let rows = self
                .run(first, batch_query, |t| Some(bind_ids(&ids, t)))
                .await?;
            let mut by_id: HashMap<String, Bytes> = HashMap::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get(0).map_err(|e| Error::LoaderFailed {
                    key: first.to_string(),
                    source: format!("batch_query column 0 must be the id as text (id::text): {e}")
                        .into(),
                })?;
                by_id.insert(id, column_bytes(row, 1, first)?);
            }
            Ok(ids
                .iter()
                .map(|id| Loaded {
                    value: by_id.get(*id).cloned(),
                    ttl: None,
                    version: None,
                })
                .collect())
        })
        .await
    }
}
