//! SQLite credential and AoR (usrloc db_mode 3) reads on one dedicated
//! synchronous thread.
//!
//! Through sqlx, one `subscriber` read crossed three threads and back: the
//! shard queued it for the control runtime, whose task acquired a pooled
//! connection (a ping round trip to that connection's sqlx worker thread)
//! and sent the query to the worker, waking on its answers before answering
//! the shard: ≈ 6 voluntary context switches and ≈ 130 µs of server CPU per
//! credential-cache miss (`perf/authmiss.sh`; docs/ARCHITECTURE.md). Here the
//! shard queues the request on a bounded channel; this thread, blocked on it,
//! runs a cached prepared statement on its own read-only connection and
//! answers the shard's oneshot: one wake-up of this thread per batch of
//! queued requests, one doorbell of the shard (only when it is parked);
//! ≈ 1.4 switches and ≈ 50 µs per miss.
//!
//! Owns: the read-only connection (opened on first use, reopened after an
//! error), the request's deadline (`query_timeout_ms`: a request queued
//! longer is answered `Timeout` without running; a locked database makes
//! SQLite's busy handler give up at the same time).
//! Must never: write, or be used for an in-memory database (another
//! connection would see another database).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::pool::Queries;
use super::{Credentials, DbConfig, DbError, LocationRow, Reply};

/// What to read: a `subscriber` row, or an AoR's `location` rows (usrloc
/// db_mode 3).
enum Read {
    Credentials(Reply<Option<Credentials>>),
    Location(Reply<Vec<LocationRow>>),
}

struct ReadReq {
    username: String,
    domain: String,
    queued: Instant,
    read: Read,
}

impl Read {
    fn is_closed(&self) -> bool {
        match self {
            Read::Credentials(r) => r.is_closed(),
            Read::Location(r) => r.is_closed(),
        }
    }

    fn fail(self, e: DbError) {
        // A caller that went away no longer wants the answer.
        match self {
            Read::Credentials(r) => drop(r.send(Err(e))),
            Read::Location(r) => drop(r.send(Err(e))),
        }
    }
}

/// The sender side; cheap to clone. Dropping every clone ends the thread.
#[derive(Clone, Debug)]
pub(crate) struct Reader {
    tx: SyncSender<ReadReq>,
}

impl std::fmt::Debug for ReadReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadReq").finish_non_exhaustive()
    }
}

impl Reader {
    /// A reader for the database file of the SQLite URL `cfg.url`, or
    /// `None` for an in-memory database. The file is opened on the first
    /// request, so a database created later (lazy pools) is found.
    pub(crate) fn start(cfg: &DbConfig) -> Result<Option<Reader>, DbError> {
        let Some(path) = file_of(&cfg.url)? else {
            return Ok(None);
        };
        let (tx, rx) = sync_channel(cfg.queue_depth.max(1));
        let timeout = cfg.query_timeout();
        let sql = Queries::new(super::Dialect::Sqlite);
        std::thread::Builder::new()
            .name("db-reader".to_owned())
            .spawn(move || serve(path, timeout, sql, rx))
            .map_err(DbError::Runtime)?;
        Ok(Some(Reader { tx }))
    }

    /// Queues a credentials read; `QueueFull` when `queue_depth` requests
    /// are waiting already.
    pub(crate) fn credentials(
        &self,
        username: &str,
        domain: &str,
        reply: Reply<Option<Credentials>>,
    ) -> Result<(), DbError> {
        self.send(username, domain, Read::Credentials(reply))
    }

    /// Queues a read of one AoR's `location` rows (as
    /// `DbPool::location_load_aor`).
    pub(crate) fn location_load_aor(
        &self,
        username: &str,
        domain: &str,
        reply: Reply<Vec<LocationRow>>,
    ) -> Result<(), DbError> {
        self.send(username, domain, Read::Location(reply))
    }

    fn send(&self, username: &str, domain: &str, read: Read) -> Result<(), DbError> {
        let req = ReadReq {
            username: username.to_owned(),
            domain: domain.to_owned(),
            queued: Instant::now(),
            read,
        };
        match self.tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(DbError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(DbError::Closed),
        }
    }
}

/// The database file a SQLite URL names; `None` for an in-memory one.
fn file_of(url: &str) -> Result<Option<PathBuf>, DbError> {
    use std::str::FromStr;
    let lower = url.to_ascii_lowercase();
    if lower.contains(":memory:") || lower.contains("mode=memory") {
        return Ok(None);
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| DbError::BadUrl(format!("{}: {e}", super::pool::redact_url(url))))?;
    Ok(Some(options.get_filename().to_path_buf()))
}

/// Less time than this left: answered `Timeout` without a query.
const MIN_WAIT: Duration = Duration::from_millis(1);

fn open(path: &PathBuf) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).map_err(sqlite_error)
}

fn serve(path: PathBuf, timeout: Duration, sql: Queries, rx: Receiver<ReadReq>) {
    let mut conn: Option<Connection> = None;
    while let Ok(req) = rx.recv() {
        // The caller gave up (its own timeout): nothing to answer.
        if req.read.is_closed() {
            continue;
        }
        // Answered by `queued + timeout` at the latest: a request that
        // waited behind a locked database waits only for what is left.
        let left = timeout.saturating_sub(req.queued.elapsed());
        if left < MIN_WAIT {
            req.read.fail(DbError::Timeout);
            continue;
        }
        if conn.is_none() {
            match open(&path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    req.read.fail(e);
                    continue;
                }
            }
        }
        let Some(c) = &conn else { continue };
        if let Err(e) = c.busy_timeout(left) {
            conn = None;
            req.read.fail(sqlite_error(e));
            continue;
        }
        let (user, domain) = (req.username.as_str(), req.domain.as_str());
        // Anything but "locked" may be a broken connection: reopen next time.
        let broken = |e: &DbError| !matches!(e, DbError::Timeout);
        let failed = match req.read {
            Read::Credentials(reply) => {
                let answer = credentials(c, &sql, user, domain);
                let failed = answer.as_ref().err().is_some_and(broken);
                let _ = reply.send(answer);
                failed
            }
            Read::Location(reply) => {
                let answer = location(c, &sql, user, domain);
                let failed = answer.as_ref().err().is_some_and(broken);
                let _ = reply.send(answer);
                failed
            }
        };
        if failed {
            conn = None;
        }
    }
}

fn credentials(
    conn: &Connection,
    sql: &Queries,
    username: &str,
    domain: &str,
) -> Result<Option<Credentials>, DbError> {
    let row = |r: &rusqlite::Row<'_>| {
        Ok(Credentials {
            username: r.get(0)?,
            domain: r.get(1)?,
            password: r.get(2)?,
            ha1: r.get(3)?,
            ha1b: r.get(4)?,
        })
    };
    let found = if domain.is_empty() {
        let mut stmt = conn
            .prepare_cached(&sql.credentials_any_domain)
            .map_err(sqlite_error)?;
        stmt.query_row([username], row).optional()
    } else {
        let mut stmt = conn
            .prepare_cached(&sql.credentials)
            .map_err(sqlite_error)?;
        stmt.query_row([username, domain], row).optional()
    };
    found.map_err(sqlite_error)
}

/// One AoR's rows, decoded as `location_from_row!` in `pool` does.
fn location(
    conn: &Connection,
    sql: &Queries,
    username: &str,
    domain: &str,
) -> Result<Vec<LocationRow>, DbError> {
    let row = |r: &rusqlite::Row<'_>| {
        let q: f64 = r.get(7)?;
        Ok(LocationRow {
            ruid: r.get(0)?,
            username: r.get(1)?,
            domain: r.get(2)?,
            contact: r.get(3)?,
            received: r.get(4)?,
            path: r.get(5)?,
            expires_unix_s: r.get(6)?,
            // q is stored as REAL: f32 precision at most.
            q: q as f32,
            callid: r.get(8)?,
            cseq: r.get(9)?,
            last_modified_unix_s: r.get(10)?,
            flags: r.get(11)?,
            cflags: r.get(12)?,
            user_agent: r.get(13)?,
            socket: r.get(14)?,
            methods: r.get(15)?,
            instance: r.get(16)?,
            reg_id: r.get(17)?,
            server_id: r.get(18)?,
            connection_id: r.get(19)?,
            keepalive: r.get(20)?,
            partition: r.get(21)?,
        })
    };
    let rows = if domain.is_empty() {
        let mut stmt = conn
            .prepare_cached(&sql.location_select_aor_nodomain)
            .map_err(sqlite_error)?;
        let rows = stmt.query_map([username], row).map_err(sqlite_error)?;
        rows.collect::<Result<Vec<_>, _>>()
    } else {
        let mut stmt = conn
            .prepare_cached(&sql.location_select_aor)
            .map_err(sqlite_error)?;
        let rows = stmt
            .query_map([username, domain], row)
            .map_err(sqlite_error)?;
        rows.collect::<Result<Vec<_>, _>>()
    };
    rows.map_err(sqlite_error)
}

/// A locked database past the busy timeout is a timeout, as with sqlx.
fn sqlite_error(e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            DbError::Timeout
        }
        _ => DbError::SqliteRead(e.to_string()),
    }
}
