//! Raw SQL for the routing script (KSR.sqlops): the named connections of
//! `[[sqlops]]`, each a sqlx pool on the control runtime, and the bounded
//! queue shards send their queries on.
//!
//! Owns: one pool per connection, turning any result row into
//! [`SqlValue`]s (integers and strings, as Kamailio's sqlops keeps them),
//! the row bound and the per-query timeout.
//! Must never: run on a shard or block one. [`SqlopsHandle::query`] only
//! `try_send`s; a full queue is [`DbError::QueueFull`] at once, a hung
//! database [`DbError::Timeout`] after the connection's `query_timeout_ms`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{DbError, DbReply, Dialect};
use crate::config::SqlopsDef;

/// One value of a result: Kamailio's sqlops keeps integers and strings
/// (other types read as their text).
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Str(Vec<u8>),
}

/// A query's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultSet {
    /// Column names (empty when no row came back).
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    /// Rows beyond the connection's `max_rows` were dropped.
    pub truncated: bool,
    /// Rows changed by an INSERT/UPDATE/DELETE (`$sqlrows(con)`).
    pub affected: u64,
}

enum RawPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

struct Con {
    pool: RawPool,
    timeout: Duration,
    max_rows: usize,
}

struct SqlReq {
    con: usize,
    sql: String,
    /// None: `sql_query_async`, nobody waits for the answer.
    reply: Option<oneshot::Sender<Result<ResultSet, DbError>>>,
}

/// The shards' side: connection names and the queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqlopsHandle {
    names: Arc<[String]>,
    timeouts: Arc<[Duration]>,
    tx: mpsc::Sender<SqlReq>,
}

impl SqlopsHandle {
    /// Builds every pool and starts the worker on `rt` (call from a thread
    /// that is not running `rt`). `connect_mode` 0 fails here when a
    /// database cannot be reached; 1 logs and goes on; 2 does not try.
    pub fn start(
        defs: &[SqlopsDef],
        queue_depth: usize,
        rt: &tokio::runtime::Handle,
    ) -> Result<SqlopsHandle, DbError> {
        super::refuse_inside_runtime()?;
        let mut cons = Vec::with_capacity(defs.len());
        let mut names = Vec::with_capacity(defs.len());
        let mut in_flight = 0usize;
        for def in defs {
            let (name, url) = def.name_url();
            let timeout = Duration::from_millis(def.query_timeout_ms.max(1));
            let pool = {
                let _guard = rt.enter();
                lazy_pool(&url, def.max_connections.max(1), timeout)?
            };
            let con = Con {
                pool,
                timeout,
                max_rows: def.max_rows.max(1),
            };
            if def.connect_mode < 2 {
                let probe = rt
                    .block_on(async { tokio::time::timeout(timeout, run(&con, "SELECT 1")).await });
                let failed = match probe {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("timed out".to_owned()),
                };
                if let Some(why) = failed {
                    if def.connect_mode == 0 {
                        return Err(DbError::BadConfig(format!(
                            "sqlops connection {name}: {why} (connect_mode = 1 or 2 starts anyway)"
                        )));
                    }
                    tracing::warn!(con = %name, "sqlops: cannot connect at start: {why}");
                }
            }
            in_flight += usize::try_from(def.max_connections.max(1)).unwrap_or(1);
            names.push(name);
            cons.push(con);
        }
        let timeouts: Vec<Duration> = cons.iter().map(|c| c.timeout).collect();
        let (tx, rx) = mpsc::channel(queue_depth.max(1));
        rt.spawn(serve(Arc::new(cons), rx, in_flight.max(1)));
        Ok(SqlopsHandle {
            names: names.into(),
            timeouts: timeouts.into(),
            tx,
        })
    }

    /// The index of connection `name`.
    pub fn con(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The connection's `query_timeout_ms`.
    pub fn timeout(&self, con: usize) -> Duration {
        self.timeouts
            .get(con)
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Runs `sql` on connection `con`; the answer comes through the reply.
    pub fn query(&self, con: usize, sql: String) -> Result<DbReply<ResultSet>, DbError> {
        let (reply, rx) = oneshot::channel();
        self.send(SqlReq {
            con,
            sql,
            reply: Some(reply),
        })?;
        Ok(DbReply { rx })
    }

    /// Runs `sql` on `con` without waiting (`sql_query_async`).
    pub fn query_detached(&self, con: usize, sql: String) -> Result<(), DbError> {
        self.send(SqlReq {
            con,
            sql,
            reply: None,
        })
    }

    fn send(&self, req: SqlReq) -> Result<(), DbError> {
        match self.tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(DbError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DbError::Closed),
        }
    }
}

fn lazy_pool(url: &str, max: u32, timeout: Duration) -> Result<RawPool, DbError> {
    let bad = |e: sqlx::Error| DbError::BadUrl(format!("{}: {e}", super::pool::redact_url(url)));
    Ok(match Dialect::of_url(url)? {
        Dialect::Sqlite => RawPool::Sqlite(
            SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(timeout)
                .connect_lazy_with(
                    SqliteConnectOptions::from_str(url)
                        .map_err(bad)?
                        .create_if_missing(true)
                        .busy_timeout(timeout),
                ),
        ),
        Dialect::Postgres => RawPool::Postgres(
            PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(timeout)
                .connect_lazy_with(
                    PgConnectOptions::from_str(url)
                        .map_err(bad)?
                        .options([("statement_timeout", timeout.as_millis().to_string())]),
                ),
        ),
        Dialect::MySql => {
            let url = match url.split_once("://") {
                Some((s, rest)) if s.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
                _ => url.to_owned(),
            };
            RawPool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(MySqlConnectOptions::from_str(&url).map_err(bad)?),
            )
        }
    })
}

/// Takes a request only when a slot is free, so a hung database backs the
/// queue up (callers get `QueueFull`) instead of piling up tasks; each query
/// is cut at its connection's timeout, which frees its slot.
async fn serve(cons: Arc<Vec<Con>>, mut rx: mpsc::Receiver<SqlReq>, in_flight_max: usize) {
    let slots = Arc::new(Semaphore::new(in_flight_max));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(req) = rx.recv().await else {
            break;
        };
        let cons = cons.clone();
        tokio::spawn(async move {
            let answer = match cons.get(req.con) {
                None => Err(DbError::BadConfig("no such sqlops connection".into())),
                Some(_) if req.reply.as_ref().is_some_and(|r| r.is_closed()) => {
                    Err(DbError::Timeout)
                }
                Some(con) => match tokio::time::timeout(con.timeout, run(con, &req.sql)).await {
                    Ok(r) => r,
                    Err(_) => Err(DbError::Timeout),
                },
            };
            if let Err(e) = &answer {
                if req.reply.is_none() {
                    tracing::warn!("sqlops: sql_query_async failed: {e}");
                }
            }
            if let Some(reply) = req.reply {
                let _ = reply.send(answer);
            }
            drop(slot);
        });
    }
}

/// Reads rows until `max_rows` (one more marks the result truncated).
macro_rules! fetch_rows {
    ($pool:expr, $sql:expr, $max:expr, $value:path) => {{
        let mut out = ResultSet::default();
        #[allow(deprecated)] // fetch_many: the one call giving rows and affected counts
        let mut stream = sqlx::raw_sql($sql).fetch_many($pool);
        while let Some(item) = stream.next().await {
            match item? {
                sqlx::Either::Left(done) => out.affected += done.rows_affected(),
                sqlx::Either::Right(row) => {
                    if out.rows.len() >= $max {
                        out.truncated = true;
                        break;
                    }
                    if out.columns.is_empty() {
                        out.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                    }
                    out.rows
                        .push((0..row.columns().len()).map(|i| $value(&row, i)).collect());
                }
            }
        }
        Ok(out)
    }};
}

async fn run(con: &Con, sql: &str) -> Result<ResultSet, DbError> {
    match &con.pool {
        RawPool::Sqlite(p) => fetch_rows!(p, sql, con.max_rows, sqlite_value),
        RawPool::Postgres(p) => fetch_rows!(p, sql, con.max_rows, pg_value),
        RawPool::MySql(p) => fetch_rows!(p, sql, con.max_rows, mysql_value),
    }
}

/// The first of the listed Rust types the column decodes as.
macro_rules! first_decoding {
    ($row:expr, $i:expr; $($t:ty => $conv:expr),+ $(,)?) => {{
        $(
            if let Ok(v) = $row.try_get::<Option<$t>, _>($i) {
                return match v {
                    None => SqlValue::Null,
                    Some(v) => $conv(v),
                };
            }
        )+
        SqlValue::Null
    }};
}

fn text(s: String) -> SqlValue {
    SqlValue::Str(s.into_bytes())
}

fn float(f: f64) -> SqlValue {
    SqlValue::Str(f.to_string().into_bytes())
}

fn sqlite_value(row: &SqliteRow, i: usize) -> SqlValue {
    first_decoding!(row, i;
        i64 => SqlValue::Int,
        f64 => float,
        String => text,
        Vec<u8> => SqlValue::Str,
    )
}

fn pg_value(row: &PgRow, i: usize) -> SqlValue {
    first_decoding!(row, i;
        i64 => SqlValue::Int,
        i32 => |v: i32| SqlValue::Int(v.into()),
        i16 => |v: i16| SqlValue::Int(v.into()),
        String => text,
        bool => |b: bool| SqlValue::Int(b.into()),
        f64 => float,
        f32 => |v: f32| float(v.into()),
        Vec<u8> => SqlValue::Str,
    )
}

fn mysql_value(row: &MySqlRow, i: usize) -> SqlValue {
    first_decoding!(row, i;
        i64 => SqlValue::Int,
        u64 => |v: u64| i64::try_from(v).map_or_else(|_| text(v.to_string()), SqlValue::Int),
        String => text,
        f64 => float,
        f32 => |v: f32| float(v.into()),
        Vec<u8> => SqlValue::Str,
    )
}
