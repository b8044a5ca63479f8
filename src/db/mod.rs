//! Database access: subscriber credentials and persisted location contacts,
//! kept in Kamailio's own table layout (`version`, `subscriber`, `location`,
//! `location_attrs`; `htable` and `address` read at start by KSR.htable and
//! KSR.permissions) on SQLite, PostgreSQL or MySQL/MariaDB.
//!
//! Owns: the sqlx pools, the schema (`init_schema`), the request queue between
//! shards and the database, and the `kamctl`-like CLI (`cli`).
//!
//! Must never: run on a shard's executor or block one. Shards run their own
//! loops (`exec`); the database runs on a tokio runtime owned by the control plane.
//! A shard calls a [`DbHandle`] method, which only `try_send`s onto a bounded
//! queue and returns a [`DbReply`] (a tokio oneshot receiver, which any
//! executor can await). With a SQLite file, credential and db_mode 3
//! AoR reads go to the `reader` thread instead (its own bounded queue, same
//! depth, same errors). A full queue answers [`DbError::QueueFull`] at once; a
//! slow or dead database answers [`DbError::Timeout`] after
//! `query_timeout_ms`, never later.
//!
//! Time columns (`expires`, `last_modified`) are written and read as UTC.
//! Kamailio writes its host's local time there, so the two agree on hosts whose
//! time zone is UTC (the usual server setting); elsewhere contact expiry shifts
//! by the zone offset. `expires` = 0 means "never expires", as in Kamailio.

#![forbid(unsafe_code)]

pub mod cli;
pub mod dns;
mod pool;
mod reader;
pub mod redis;
mod schema;
pub mod sqlops;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

pub use pool::{DbPool, Dialect};
pub use schema::{init_schema, SCHEMA_VERSIONS};

/// Most rows one `location_upsert` / `location_delete` call may carry; larger
/// batches are refused with [`DbError::BatchTooLarge`] (split them).
pub const BATCH_ROWS_MAX: usize = 1_000;

pub use crate::config::DbConfig;

impl DbConfig {
    /// Same configuration, another URL.
    pub fn with_url(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }

    fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }

    fn validate(&self) -> Result<(), DbError> {
        let bad = |what: &str| Err(DbError::BadConfig(what.to_owned()));
        if self.max_connections == 0 {
            return bad("db.max_connections must be at least 1");
        }
        if self.queue_depth == 0 {
            return bad("db.queue_depth must be at least 1");
        }
        if self.query_timeout_ms == 0 {
            return bad("db.query_timeout_ms must be at least 1");
        }
        if self.location_rows_max == 0 {
            return bad("db.location_rows_max must be at least 1");
        }
        Ok(())
    }
}

/// One `subscriber` row, as auth_db reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub domain: String,
    /// Plain-text password; empty when only the hashes are stored.
    pub password: String,
    /// MD5("username:realm:password"), lowercase hex.
    pub ha1: String,
    /// MD5("username@domain:realm:password"), lowercase hex.
    pub ha1b: String,
}

/// One `location` row (one contact of an AoR), column for column.
#[derive(Clone, Debug, PartialEq)]
pub struct LocationRow {
    /// Unique record id; the key for upsert and delete.
    pub ruid: String,
    pub username: String,
    /// `None` when usrloc runs without domains (`use_domain = 0`).
    pub domain: Option<String>,
    pub contact: String,
    pub received: Option<String>,
    pub path: Option<String>,
    /// Absolute expiry, Unix seconds (0 = never), stored as a UTC DATETIME.
    pub expires_unix_s: i64,
    pub q: f32,
    pub callid: String,
    pub cseq: i32,
    pub last_modified_unix_s: i64,
    pub flags: i32,
    pub cflags: i32,
    pub user_agent: String,
    pub socket: Option<String>,
    pub methods: Option<i32>,
    pub instance: Option<String>,
    pub reg_id: i32,
    pub server_id: i32,
    pub connection_id: i32,
    pub keepalive: i32,
    pub partition: i32,
}

/// One row of a Kamailio `htable` table (htable module `dbtable`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HtableRow {
    pub key_name: String,
    /// 0 simple key, 1 array key (`name[n]` plus `name::size`).
    pub key_type: i64,
    /// 0 string, 1 integer.
    pub value_type: i64,
    pub key_value: String,
    /// Absolute expiry, Unix seconds; 0 = none.
    pub expires: i64,
}

/// One row of Kamailio's permissions `address` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRow {
    pub grp: i64,
    pub ip_addr: String,
    pub mask: i64,
    pub port: i64,
    pub tag: Option<String>,
}

#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum DbError {
    #[error("database request queue is full")]
    QueueFull,
    #[error("database did not answer in time")]
    Timeout,
    #[error("database worker is gone")]
    Closed,
    #[error("sql: {0}")]
    Sql(#[source] sqlx::Error),
    /// An error of the SQLite credential reader (`reader`).
    #[error("sqlite: {0}")]
    SqliteRead(String),
    #[error("bad database url: {0}")]
    BadUrl(String),
    #[error("bad database configuration: {0}")]
    BadConfig(String),
    #[error("database schema missing ({0}); run `sipshard db init`")]
    NoSchema(String),
    #[error("table `{table}` has version {found:?}, sipshard needs {expected}")]
    SchemaVersion {
        table: &'static str,
        found: Option<i64>,
        expected: i64,
    },
    #[error("batch of {rows} rows exceeds the maximum of {max}")]
    BatchTooLarge { rows: usize, max: usize },
    #[error("more than {max} rows in `{table}`")]
    TooManyRows { table: &'static str, max: usize },
    #[error("bad location row `{ruid}`: {why}")]
    BadRow { ruid: String, why: &'static str },
    #[error("bad user: {0}")]
    BadUser(String),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("import refused, nothing added: a user exists already ({0})")]
    ImportDuplicate(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("called from inside a tokio runtime; call from a plain thread")]
    InsideRuntime,
    #[error("redis: {0}")]
    Redis(String),
    #[error("cannot start a runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => DbError::Timeout,
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => DbError::Closed,
            other => DbError::Sql(other),
        }
    }
}

/// The answer to one [`DbHandle`] request. Executor-agnostic: a shard task (`exec`),
/// a tokio task or `futures_lite::future::block_on` can await it.
#[must_use = "the request is sent; await the reply or drop it to discard"]
pub struct DbReply<T> {
    rx: oneshot::Receiver<Result<T, DbError>>,
}

impl<T> Future for DbReply<T> {
    type Output = Result<T, DbError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().rx)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(DbError::Closed)))
    }
}

type Reply<T> = oneshot::Sender<Result<T, DbError>>;

/// A request on the queue between shards and the database worker.
enum DbReq {
    Credentials {
        username: String,
        domain: String,
        reply: Reply<Option<Credentials>>,
    },
    LocationUpsert {
        rows: Vec<LocationRow>,
        reply: Reply<()>,
    },
    LocationDelete {
        ruids: Vec<String>,
        reply: Reply<()>,
    },
    LocationDeleteExpired {
        ruids: Vec<String>,
        now_unix_s: i64,
        reply: Reply<()>,
    },
    LocationDeleteAor {
        username: String,
        domain: String,
        reply: Reply<()>,
    },
    LocationLoadAor {
        username: String,
        domain: String,
        reply: Reply<Vec<LocationRow>>,
    },
    LocationLoadAll {
        reply: Reply<Vec<LocationRow>>,
    },
    HtableLoad {
        table: String,
        max: usize,
        reply: Reply<Vec<HtableRow>>,
    },
    DispatcherLoad {
        table: String,
        cols: [String; 5],
        max: usize,
        reply: Reply<Vec<crate::dispatcher::DsRow>>,
    },
    AddressLoad {
        table: String,
        max: usize,
        reply: Reply<Vec<AddressRow>>,
    },
}

/// Cheap, cloneable sender side of the database queue. Every method returns at
/// once: `Err(QueueFull)` when the queue is full, `Err(Closed)` when the
/// worker is gone, otherwise a [`DbReply`] to await.
#[derive(Clone, Debug)]
pub struct DbHandle {
    tx: mpsc::Sender<DbReq>,
    /// SQLite files: credential reads bypass sqlx (see `reader`).
    reader: Option<reader::Reader>,
}

impl DbHandle {
    /// Connects, prepares the schema (SQLite: created when absent; all
    /// backends: `version` rows checked) and starts the worker on `rt`.
    /// Call from a thread that is not running `rt` (it uses `rt.block_on`);
    /// with a current-thread runtime, another thread must be driving it.
    /// Called from inside any tokio runtime it returns `InsideRuntime`.
    pub fn start(cfg: &DbConfig, rt: &tokio::runtime::Handle) -> Result<DbHandle, DbError> {
        refuse_inside_runtime()?;
        let pool = rt.block_on(DbPool::open(cfg))?;
        Ok(Self::from_pool(pool, cfg, rt))
    }

    /// Starts the worker on `rt` for an already built pool (for instance
    /// [`DbPool::connect_lazy`], which lets the proxy start while the
    /// database is down). Uses `queue_depth` and `max_connections` of `cfg`.
    pub fn from_pool(pool: DbPool, cfg: &DbConfig, rt: &tokio::runtime::Handle) -> DbHandle {
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
        let in_flight_max = usize::try_from(cfg.max_connections.max(1)).unwrap_or(1);
        // A reader that cannot start (no thread) leaves reads on the pool.
        let reader = match pool.dialect() {
            Dialect::Sqlite => reader::Reader::start(cfg).unwrap_or_else(|e| {
                tracing::warn!(
                    "sqlite credential reader not started, reads go through the pool: {e}"
                );
                None
            }),
            Dialect::Postgres | Dialect::MySql => None,
        };
        rt.spawn(serve(Arc::new(pool), rx, in_flight_max));
        DbHandle { tx, reader }
    }

    /// The `subscriber` row of `username@domain`, or `None`. An empty
    /// `domain` matches on the username alone (auth_db `use_domain = 0`).
    pub fn credentials(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<DbReply<Option<Credentials>>, DbError> {
        if let Some(reader) = &self.reader {
            let (reply, rx) = oneshot::channel();
            reader.credentials(username, domain, reply)?;
            return Ok(DbReply { rx });
        }
        self.send(|reply| DbReq::Credentials {
            username: username.to_owned(),
            domain: domain.to_owned(),
            reply,
        })
    }

    /// Inserts or replaces (by `ruid`) up to [`BATCH_ROWS_MAX`] contacts, in
    /// one transaction.
    pub fn location_upsert(&self, rows: Vec<LocationRow>) -> Result<DbReply<()>, DbError> {
        check_batch(rows.len())?;
        self.send(|reply| DbReq::LocationUpsert { rows, reply })
    }

    /// Deletes contacts (and their `location_attrs`) by `ruid`; unknown ids
    /// are ignored.
    pub fn location_delete(&self, ruids: Vec<String>) -> Result<DbReply<()>, DbError> {
        check_batch(ruids.len())?;
        self.send(|reply| DbReq::LocationDelete { ruids, reply })
    }

    /// Deletes contacts by ruid only where their row's `expires` is not
    /// after `now_unix_s` (usrloc db_mode 3 expiry, shared table).
    pub fn location_delete_expired(
        &self,
        ruids: Vec<String>,
        now_unix_s: i64,
    ) -> Result<DbReply<()>, DbError> {
        check_batch(ruids.len())?;
        self.send(|reply| DbReq::LocationDeleteExpired {
            ruids,
            now_unix_s,
            reply,
        })
    }

    /// Deletes every contact (and its `location_attrs`) of one AoR. An empty
    /// `domain` matches rows stored without a domain (NULL or '').
    pub fn location_delete_aor(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<DbReply<()>, DbError> {
        self.send(|reply| DbReq::LocationDeleteAor {
            username: username.to_owned(),
            domain: domain.to_owned(),
            reply,
        })
    }

    /// Reads one AoR's rows (usrloc `db_mode` 3). Empty `domain`: rows
    /// stored without a domain.
    pub fn location_load_aor(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<DbReply<Vec<LocationRow>>, DbError> {
        if let Some(reader) = &self.reader {
            let (reply, rx) = oneshot::channel();
            reader.location_load_aor(username, domain, reply)?;
            return Ok(DbReply { rx });
        }
        self.send(|reply| DbReq::LocationLoadAor {
            username: username.to_owned(),
            domain: domain.to_owned(),
            reply,
        })
    }

    /// Every `location` row (at most `location_rows_max`), for loading
    /// usrloc at start.
    pub fn location_load_all(&self) -> Result<DbReply<Vec<LocationRow>>, DbError> {
        self.send(|reply| DbReq::LocationLoadAll { reply })
    }

    /// Every row of an htable `dbtable` (at most `max`; more is
    /// `TooManyRows`). `table` must be a plain identifier.
    pub fn htable_load(&self, table: &str, max: usize) -> Result<DbReply<Vec<HtableRow>>, DbError> {
        self.send(|reply| DbReq::HtableLoad {
            table: table.to_owned(),
            max,
            reply,
        })
    }

    /// Every row of the permissions address table (at most `max`).
    pub fn address_load(
        &self,
        table: &str,
        max: usize,
    ) -> Result<DbReply<Vec<AddressRow>>, DbError> {
        self.send(|reply| DbReq::AddressLoad {
            table: table.to_owned(),
            max,
            reply,
        })
    }

    /// Every row of a dispatcher table (at most `max`); `cols` as
    /// [`DbPool::dispatcher_load`].
    pub fn dispatcher_load(
        &self,
        table: &str,
        cols: [&str; 5],
        max: usize,
    ) -> Result<DbReply<Vec<crate::dispatcher::DsRow>>, DbError> {
        self.send(|reply| DbReq::DispatcherLoad {
            table: table.to_owned(),
            cols: cols.map(str::to_owned),
            max,
            reply,
        })
    }

    fn send<T>(&self, build: impl FnOnce(Reply<T>) -> DbReq) -> Result<DbReply<T>, DbError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(build(reply)) {
            Ok(()) => Ok(DbReply { rx }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(DbError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DbError::Closed),
        }
    }
}

/// `block_on` panics inside a runtime; say so as an error instead.
pub(crate) fn refuse_inside_runtime() -> Result<(), DbError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(DbError::InsideRuntime),
        Err(_) => Ok(()),
    }
}

fn check_batch(rows: usize) -> Result<(), DbError> {
    if rows > BATCH_ROWS_MAX {
        return Err(DbError::BatchTooLarge {
            rows,
            max: BATCH_ROWS_MAX,
        });
    }
    Ok(())
}

/// The worker: takes a request only when one of `in_flight_max` slots is free,
/// so a stuck database backs requests up into the bounded queue (and callers
/// get `QueueFull`) instead of piling up tasks. Ends when every handle is gone.
async fn serve(pool: Arc<DbPool>, mut rx: mpsc::Receiver<DbReq>, in_flight_max: usize) {
    let slots = Arc::new(Semaphore::new(in_flight_max));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(req) = rx.recv().await else {
            break;
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            answer(&pool, req).await;
            drop(slot);
        });
    }
    // Wait for the requests in flight, then close the connections.
    let _all = slots
        .acquire_many(u32::try_from(in_flight_max).unwrap_or(u32::MAX))
        .await;
    pool.close().await;
}

async fn answer(pool: &DbPool, req: DbReq) {
    // A caller that dropped its DbReply no longer wants the answer; skip the
    // query. Sending to a dropped reply is harmless, so the result is ignored.
    match req {
        DbReq::Credentials {
            username,
            domain,
            reply,
        } => {
            if !reply.is_closed() {
                let _ = reply.send(pool.credentials(&username, &domain).await);
            }
        }
        DbReq::LocationUpsert { rows, reply } => {
            let _ = reply.send(pool.location_upsert(&rows).await);
        }
        DbReq::LocationDelete { ruids, reply } => {
            let _ = reply.send(pool.location_delete(&ruids).await);
        }
        DbReq::LocationDeleteExpired {
            ruids,
            now_unix_s,
            reply,
        } => {
            let _ = reply.send(pool.location_delete_expired(&ruids, now_unix_s).await);
        }
        DbReq::LocationDeleteAor {
            username,
            domain,
            reply,
        } => {
            let _ = reply.send(pool.location_delete_aor(&username, &domain).await);
        }
        DbReq::LocationLoadAor {
            username,
            domain,
            reply,
        } => {
            let _ = reply.send(pool.location_load_aor(&username, &domain).await);
        }
        DbReq::HtableLoad { table, max, reply } => {
            if !reply.is_closed() {
                let _ = reply.send(pool.htable_load(&table, max).await);
            }
        }
        DbReq::AddressLoad { table, max, reply } => {
            if !reply.is_closed() {
                let _ = reply.send(pool.address_load(&table, max).await);
            }
        }
        DbReq::DispatcherLoad {
            table,
            cols,
            max,
            reply,
        } => {
            if !reply.is_closed() {
                let cols = [
                    cols[0].as_str(),
                    cols[1].as_str(),
                    cols[2].as_str(),
                    cols[3].as_str(),
                    cols[4].as_str(),
                ];
                let _ = reply.send(pool.dispatcher_load(&table, cols, max).await);
            }
        }
        DbReq::LocationLoadAll { reply } => {
            if !reply.is_closed() {
                let _ = reply.send(pool.location_load_all().await);
            }
        }
    }
}

#[cfg(test)]
mod tests;
