//! The connection pool of one backend and every query sipshard runs.
//!
//! Owns: URL parsing, per-backend SQL text (placeholders `?` vs `$n`, time
//! conversion, identifier quoting) and the per-query timeout.
//! Must never: be called from a shard; it needs a tokio runtime context.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use super::{schema, AddressRow, Credentials, DbConfig, DbError, HtableRow, LocationRow};

/// The SQL flavour of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// The backend a URL names, by its scheme.
    pub fn of_url(url: &str) -> Result<Dialect, DbError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            _ => Err(DbError::BadUrl(format!(
                "`{}`: expected sqlite://, postgres:// or mysql://",
                redact(url)
            ))),
        }
    }

    /// Placeholder of the `n`th (1-based) bound value.
    pub(crate) fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite | Dialect::MySql => "?".to_owned(),
        }
    }

    /// Column name, quoted where the backend reserves it (MySQL: `partition`).
    pub(crate) fn ident(self, name: &str) -> String {
        match self {
            Dialect::MySql => format!("`{name}`"),
            Dialect::Sqlite | Dialect::Postgres => name.to_owned(),
        }
    }

    /// SQL turning bound Unix seconds into a UTC DATETIME / TIMESTAMP.
    fn time_param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => "datetime(?, 'unixepoch')".to_owned(),
            Dialect::Postgres => {
                format!("(to_timestamp(CAST(${n} AS DOUBLE PRECISION)) AT TIME ZONE 'UTC')")
            }
            // sqlx sets the session time_zone to +00:00.
            Dialect::MySql => "FROM_UNIXTIME(?)".to_owned(),
        }
    }

    /// SQL reading a UTC DATETIME / TIMESTAMP column as Unix seconds (i64).
    fn time_column(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST(strftime('%s', {column}) AS INTEGER)"),
            Dialect::Postgres => format!("CAST(EXTRACT(EPOCH FROM {column}) AS BIGINT)"),
            Dialect::MySql => format!("CAST(UNIX_TIMESTAMP(`{column}`) AS SIGNED)"),
        }
    }

    /// SQL reading a REAL / FLOAT column as f64.
    fn real_column(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST({column} AS REAL)"),
            Dialect::Postgres => format!("CAST({column} AS DOUBLE PRECISION)"),
            Dialect::MySql => format!("CAST(`{column}` AS DOUBLE)"),
        }
    }

    fn int64_column(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST({column} AS INTEGER)"),
            Dialect::Postgres => format!("CAST({column} AS BIGINT)"),
            Dialect::MySql => format!("CAST(`{column}` AS SIGNED)"),
        }
    }
}

/// The `location` columns sipshard reads and writes, in [`LocationRow`]
/// order (`id` is left to the database).
const LOCATION_COLUMNS: [&str; 22] = [
    "ruid",
    "username",
    "domain",
    "contact",
    "received",
    "path",
    "expires",
    "q",
    "callid",
    "cseq",
    "last_modified",
    "flags",
    "cflags",
    "user_agent",
    "socket",
    "methods",
    "instance",
    "reg_id",
    "server_id",
    "connection_id",
    "keepalive",
    "partition",
];

fn is_time_column(column: &str) -> bool {
    column == "expires" || column == "last_modified"
}

/// Every statement, rendered once per pool for its dialect.
#[derive(Debug)]
pub(crate) struct Queries {
    pub(crate) credentials: String,
    pub(crate) credentials_any_domain: String,
    location_upsert: String,
    location_select_all: String,
    /// Selects [`LOCATION_COLUMNS`] in order (times as Unix seconds, q as a double).
    pub(crate) location_select_aor: String,
    pub(crate) location_select_aor_nodomain: String,
    location_delete: String,
    location_delete_expired: String,
    location_attrs_delete: String,
    location_delete_aor: String,
    location_delete_aor_nodomain: String,
    location_attrs_delete_aor: String,
    location_attrs_delete_aor_nodomain: String,
    subscriber_insert: String,
    subscriber_update: String,
    subscriber_delete: String,
    subscriber_list: String,
    versions: String,
}

impl Queries {
    pub(crate) fn new(d: Dialect) -> Queries {
        let p = |n| d.param(n);
        let columns: Vec<String> = LOCATION_COLUMNS.iter().map(|c| d.ident(c)).collect();
        let values: Vec<String> = LOCATION_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if is_time_column(c) {
                    d.time_param(i + 1)
                } else {
                    d.param(i + 1)
                }
            })
            .collect();
        let update: Vec<String> = columns
            .iter()
            .skip(1) // ruid is the key
            .map(|c| match d {
                Dialect::MySql => format!("{c} = VALUES({c})"),
                Dialect::Sqlite | Dialect::Postgres => format!("{c} = excluded.{c}"),
            })
            .collect();
        let conflict = match d {
            Dialect::MySql => "ON DUPLICATE KEY UPDATE",
            Dialect::Sqlite | Dialect::Postgres => "ON CONFLICT (ruid) DO UPDATE SET",
        };
        let location_upsert = format!(
            "INSERT INTO location ({}) VALUES ({}) {conflict} {}",
            columns.join(", "),
            values.join(", "),
            update.join(", ")
        );
        let selected: Vec<String> = LOCATION_COLUMNS
            .iter()
            .map(|c| match *c {
                "expires" | "last_modified" => d.time_column(c),
                "q" => d.real_column(c),
                _ => d.ident(c),
            })
            .collect();
        let location_select_all = format!(
            "SELECT {} FROM location ORDER BY id LIMIT {}",
            selected.join(", "),
            p(1)
        );
        let by_aor = format!("username = {} AND domain = {}", p(1), p(2));
        let by_aor_nodomain = format!("username = {} AND (domain IS NULL OR domain = '')", p(1));
        let location_select_aor = format!(
            "SELECT {} FROM location WHERE {by_aor} ORDER BY id",
            selected.join(", ")
        );
        let location_select_aor_nodomain = format!(
            "SELECT {} FROM location WHERE {by_aor_nodomain} ORDER BY id",
            selected.join(", ")
        );
        Queries {
            location_select_aor,
            location_select_aor_nodomain,
            credentials: format!(
                "SELECT username, domain, password, ha1, ha1b FROM subscriber \
                 WHERE username = {} AND domain = {}",
                p(1),
                p(2)
            ),
            credentials_any_domain: format!(
                "SELECT username, domain, password, ha1, ha1b FROM subscriber \
                 WHERE username = {} ORDER BY id LIMIT 1",
                p(1)
            ),
            location_upsert,
            location_select_all,
            location_delete: format!("DELETE FROM location WHERE ruid = {}", p(1)),
            location_delete_expired: format!(
                "DELETE FROM location WHERE ruid = {} AND expires <= {}",
                p(1),
                d.time_param(2)
            ),
            location_attrs_delete: format!("DELETE FROM location_attrs WHERE ruid = {}", p(1)),
            location_delete_aor: format!("DELETE FROM location WHERE {by_aor}"),
            location_delete_aor_nodomain: format!("DELETE FROM location WHERE {by_aor_nodomain}"),
            location_attrs_delete_aor: format!("DELETE FROM location_attrs WHERE {by_aor}"),
            location_attrs_delete_aor_nodomain: format!(
                "DELETE FROM location_attrs WHERE {by_aor_nodomain}"
            ),
            subscriber_insert: format!(
                "INSERT INTO subscriber (username, domain, password, ha1, ha1b) \
                 VALUES ({}, {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            ),
            subscriber_update: format!(
                "UPDATE subscriber SET password = {}, ha1 = {}, ha1b = {} \
                 WHERE username = {} AND domain = {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            ),
            subscriber_delete: format!(
                "DELETE FROM subscriber WHERE username = {} AND domain = {}",
                p(1),
                p(2)
            ),
            subscriber_list: "SELECT username, domain FROM subscriber ORDER BY domain, username"
                .to_owned(),
            versions: format!(
                "SELECT table_name, {} FROM version ORDER BY table_name",
                d.int64_column("table_version")
            ),
        }
    }
}

#[derive(Debug)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// Runs `$body` with `$pool` bound to the concrete sqlx pool, so one piece of
/// query code serves all three backends.
macro_rules! with_pool {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
            Backend::MySql($pool) => $body,
        }
    };
}

/// Decodes one `location` row selected by `Queries::location_select_all`.
macro_rules! location_from_row {
    ($row:expr) => {{
        let row = &$row;
        let q: f64 = row.try_get(7)?;
        LocationRow {
            ruid: row.try_get(0)?,
            username: row.try_get(1)?,
            domain: row.try_get(2)?,
            contact: row.try_get(3)?,
            received: row.try_get(4)?,
            path: row.try_get(5)?,
            expires_unix_s: row.try_get(6)?,
            // q is stored as REAL / FLOAT(10,2): f32 precision at most.
            q: q as f32,
            callid: row.try_get(8)?,
            cseq: row.try_get(9)?,
            last_modified_unix_s: row.try_get(10)?,
            flags: row.try_get(11)?,
            cflags: row.try_get(12)?,
            user_agent: row.try_get(13)?,
            socket: row.try_get(14)?,
            methods: row.try_get(15)?,
            instance: row.try_get(16)?,
            reg_id: row.try_get(17)?,
            server_id: row.try_get(18)?,
            connection_id: row.try_get(19)?,
            keepalive: row.try_get(20)?,
            partition: row.try_get(21)?,
        }
    }};
}

/// Binds every [`LocationRow`] field in `LOCATION_COLUMNS` order.
macro_rules! bind_location {
    ($query:expr, $r:expr) => {{
        let r = $r;
        $query
            .bind(r.ruid.as_str())
            .bind(r.username.as_str())
            .bind(r.domain.as_deref())
            .bind(r.contact.as_str())
            .bind(r.received.as_deref())
            .bind(r.path.as_deref())
            .bind(r.expires_unix_s)
            .bind(f64::from(r.q))
            .bind(r.callid.as_str())
            .bind(r.cseq)
            .bind(r.last_modified_unix_s)
            .bind(r.flags)
            .bind(r.cflags)
            .bind(r.user_agent.as_str())
            .bind(r.socket.as_deref())
            .bind(r.methods)
            .bind(r.instance.as_deref())
            .bind(r.reg_id)
            .bind(r.server_id)
            .bind(r.connection_id)
            .bind(r.keepalive)
            .bind(r.partition)
    }};
}

/// Latest Unix second every backend can store in `expires` (MariaDB's
/// FROM_UNIXTIME stops at 2038-01-19).
const TIME_UNIX_S_MAX: i64 = i32::MAX as i64;

/// Rows per multi-row INSERT of `subscriber_import` (5 parameters each:
/// well under SQLite's 32766 and PostgreSQL's 65535 bind parameters).
pub const IMPORT_ROWS_PER_STATEMENT: usize = 500;

/// A connection pool to one database, plus the statements for its dialect.
/// Every method is bounded by `query_timeout_ms`. Cheap to share behind an
/// `Arc`; needs a tokio runtime context.
#[derive(Debug)]
pub struct DbPool {
    backend: Backend,
    dialect: Dialect,
    sql: Queries,
    query_timeout: Duration,
    location_rows_max: usize,
}

impl DbPool {
    /// Connects (one connection at once, to fail early on a bad URL or a
    /// dead server). SQLite files are created when missing. Does not touch
    /// the schema: see [`DbPool::open`].
    pub async fn connect(cfg: &DbConfig) -> Result<DbPool, DbError> {
        cfg.validate()?;
        let timeout = cfg.query_timeout();
        let backend = match Dialect::of_url(&cfg.url)? {
            Dialect::Sqlite => {
                let options = sqlite_options(cfg)?;
                let connect = sqlite_pool(cfg).connect_with(options);
                Backend::Sqlite(bounded_connect(timeout, connect).await?)
            }
            Dialect::Postgres => {
                let options = postgres_options(cfg)?;
                let connect = postgres_pool(cfg).connect_with(options);
                Backend::Postgres(bounded_connect(timeout, connect).await?)
            }
            Dialect::MySql => {
                let options = mysql_options(cfg)?;
                let connect = mysql_pool(cfg).connect_with(options);
                Backend::MySql(bounded_connect(timeout, connect).await?)
            }
        };
        Ok(Self::with_backend(backend, cfg))
    }

    /// Builds the pool without connecting: the first query connects, and a
    /// database that is down only fails (or times out) queries. Must be called
    /// inside a tokio runtime context (the pool spawns its reaper there).
    pub fn connect_lazy(cfg: &DbConfig) -> Result<DbPool, DbError> {
        cfg.validate()?;
        let backend = match Dialect::of_url(&cfg.url)? {
            Dialect::Sqlite => {
                Backend::Sqlite(sqlite_pool(cfg).connect_lazy_with(sqlite_options(cfg)?))
            }
            Dialect::Postgres => {
                Backend::Postgres(postgres_pool(cfg).connect_lazy_with(postgres_options(cfg)?))
            }
            Dialect::MySql => {
                Backend::MySql(mysql_pool(cfg).connect_lazy_with(mysql_options(cfg)?))
            }
        };
        Ok(Self::with_backend(backend, cfg))
    }

    /// [`DbPool::connect`], then for SQLite [`init_schema`](super::init_schema)
    /// (the embedded default needs no setup step), then a check that the
    /// `version` rows are the ones sipshard speaks.
    pub async fn open(cfg: &DbConfig) -> Result<DbPool, DbError> {
        let pool = Self::connect(cfg).await?;
        if pool.dialect == Dialect::Sqlite {
            schema::init_schema(&pool).await?;
        }
        schema::check_versions(&pool).await?;
        Ok(pool)
    }

    fn with_backend(backend: Backend, cfg: &DbConfig) -> DbPool {
        let dialect = match backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
            Backend::MySql(_) => Dialect::MySql,
        };
        DbPool {
            backend,
            dialect,
            sql: Queries::new(dialect),
            query_timeout: cfg.query_timeout(),
            location_rows_max: cfg.location_rows_max,
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes every connection; later queries fail with `Closed`.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        tokio::time::timeout(self.query_timeout, work)
            .await
            .unwrap_or(Err(DbError::Timeout))
    }

    /// Runs DDL statements one by one (some drivers refuse several at once).
    pub(crate) async fn execute_all(&self, statements: &[String]) -> Result<(), DbError> {
        self.bounded(async {
            with_pool!(self, pool => {
                for statement in statements {
                    sqlx::query(statement).execute(pool).await?;
                }
            });
            Ok(())
        })
        .await
    }

    /// Rows of the `version` table: (table_name, table_version).
    pub async fn versions(&self) -> Result<Vec<(String, i64)>, DbError> {
        let sql = self.sql.versions.as_str();
        self.bounded(async {
            let rows = with_pool!(self, pool => {
                sqlx::query(sql)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            Ok(rows)
        })
        .await
    }

    /// The `subscriber` row of `username@domain`, or `None`. An empty
    /// `domain` matches on the username alone (the oldest such row), like
    /// Kamailio's auth_db with `use_domain = 0`.
    pub async fn credentials(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<Option<Credentials>, DbError> {
        let sql = if domain.is_empty() {
            self.sql.credentials_any_domain.as_str()
        } else {
            self.sql.credentials.as_str()
        };
        self.bounded(async {
            let found = with_pool!(self, pool => {
                let query = sqlx::query(sql).bind(username);
                let query = if domain.is_empty() { query } else { query.bind(domain) };
                match query.fetch_optional(pool).await? {
                    Some(row) => Some(Credentials {
                        username: row.try_get(0)?,
                        domain: row.try_get(1)?,
                        password: row.try_get(2)?,
                        ha1: row.try_get(3)?,
                        ha1b: row.try_get(4)?,
                    }),
                    None => None,
                }
            });
            Ok(found)
        })
        .await
    }

    /// Inserts or replaces contacts by `ruid`, in one transaction.
    pub async fn location_upsert(&self, rows: &[LocationRow]) -> Result<(), DbError> {
        for row in rows {
            check_location_row(row)?;
        }
        let sql = self.sql.location_upsert.as_str();
        self.bounded(async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                for row in rows {
                    bind_location!(sqlx::query(sql), row).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Deletes contacts and their attributes by `ruid`, in one transaction.
    pub async fn location_delete(&self, ruids: &[String]) -> Result<(), DbError> {
        let (contacts, attrs) = (&self.sql.location_delete, &self.sql.location_attrs_delete);
        self.bounded(async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                for ruid in ruids {
                    sqlx::query(contacts).bind(ruid.as_str()).execute(&mut *tx).await?;
                    sqlx::query(attrs).bind(ruid.as_str()).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Deletes contacts by `ruid` only while their row has expired by
    /// `now_unix_s` (usrloc db_mode 3 expiry: another server sharing the
    /// table may have refreshed the binding since this one read it), and
    /// the attributes of those deleted, in one transaction.
    pub async fn location_delete_expired(
        &self,
        ruids: &[String],
        now_unix_s: i64,
    ) -> Result<(), DbError> {
        let (contacts, attrs) = (
            &self.sql.location_delete_expired,
            &self.sql.location_attrs_delete,
        );
        self.bounded(async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                for ruid in ruids {
                    let gone = sqlx::query(contacts)
                        .bind(ruid.as_str())
                        .bind(now_unix_s)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if gone > 0 {
                        sqlx::query(attrs).bind(ruid.as_str()).execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Deletes every contact of an AoR and their attributes. An empty `domain`
    /// matches rows stored without one (NULL or '').
    pub async fn location_delete_aor(&self, username: &str, domain: &str) -> Result<(), DbError> {
        let (contacts, attrs) = if domain.is_empty() {
            (
                &self.sql.location_delete_aor_nodomain,
                &self.sql.location_attrs_delete_aor_nodomain,
            )
        } else {
            (
                &self.sql.location_delete_aor,
                &self.sql.location_attrs_delete_aor,
            )
        };
        self.bounded(async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                for sql in [contacts, attrs] {
                    let query = sqlx::query(sql).bind(username);
                    let query = if domain.is_empty() { query } else { query.bind(domain) };
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// The `location` rows of one AoR (usrloc `db_mode` 3 reads). An empty
    /// `domain` matches rows stored without one.
    pub async fn location_load_aor(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<Vec<LocationRow>, DbError> {
        let sql = if domain.is_empty() {
            self.sql.location_select_aor_nodomain.as_str()
        } else {
            self.sql.location_select_aor.as_str()
        };
        self.bounded(async {
            let rows = with_pool!(self, pool => {
                let query = sqlx::query(sql).bind(username);
                let query = if domain.is_empty() { query } else { query.bind(domain) };
                let found = query.fetch_all(pool).await?;
                let mut rows = Vec::with_capacity(found.len());
                for row in &found {
                    rows.push(location_from_row!(row));
                }
                rows
            });
            Ok(rows)
        })
        .await
    }

    /// Every `location` row, at most `location_rows_max`.
    pub async fn location_load_all(&self) -> Result<Vec<LocationRow>, DbError> {
        let sql = self.sql.location_select_all.as_str();
        let max = self.location_rows_max;
        let limit = i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .bounded(async {
                let rows = with_pool!(self, pool => {
                    let found = sqlx::query(sql).bind(limit).fetch_all(pool).await?;
                    let mut rows = Vec::with_capacity(found.len());
                    for row in &found {
                        rows.push(location_from_row!(row));
                    }
                    rows
                });
                Ok(rows)
            })
            .await?;
        if rows.len() > max {
            return Err(DbError::TooManyRows {
                table: "location",
                max,
            });
        }
        Ok(rows)
    }

    /// `SELECT cols FROM table ORDER BY id LIMIT ?` for a whole-table load
    /// of at most `max` rows (one more is fetched to tell "too many"); a
    /// column named `#name` is read as a 64-bit integer.
    fn load_sql(&self, table: &str, cols: [&str; 5], max: usize) -> Result<(String, i64), DbError> {
        if !crate::config::is_sql_ident(table) {
            return Err(DbError::BadConfig(format!("bad table name {table:?}")));
        }
        let d = self.dialect;
        let cols: Vec<String> = cols
            .iter()
            .map(|c| match c.strip_prefix('#') {
                Some(c) => d.int64_column(c),
                None => d.ident(c),
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY id LIMIT {}",
            cols.join(", "),
            d.ident(table),
            d.param(1)
        );
        Ok((
            sql,
            i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX),
        ))
    }

    /// Every row of an htable `dbtable` in Kamailio's layout (`key_name,
    /// key_type, value_type, key_value, expires`), at most `max`.
    pub async fn htable_load(&self, table: &str, max: usize) -> Result<Vec<HtableRow>, DbError> {
        let (sql, limit) = self.load_sql(
            table,
            [
                "key_name",
                "#key_type",
                "#value_type",
                "key_value",
                "#expires",
            ],
            max,
        )?;
        let rows = self
            .bounded(async {
                let rows = with_pool!(self, pool => {
                    sqlx::query(&sql)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                        .iter()
                        .map(|row| {
                            Ok(HtableRow {
                                key_name: row.try_get(0)?,
                                key_type: row.try_get(1)?,
                                value_type: row.try_get(2)?,
                                key_value: row.try_get(3)?,
                                expires: row.try_get(4)?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()?
                });
                Ok(rows)
            })
            .await?;
        at_most(rows, "htable", max)
    }

    /// Every row of the permissions address table (`grp, ip_addr, mask,
    /// port, tag`), at most `max`.
    pub async fn address_load(&self, table: &str, max: usize) -> Result<Vec<AddressRow>, DbError> {
        let (sql, limit) =
            self.load_sql(table, ["#grp", "ip_addr", "#mask", "#port", "tag"], max)?;
        let rows = self
            .bounded(async {
                let rows = with_pool!(self, pool => {
                    sqlx::query(&sql)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                        .iter()
                        .map(|row| {
                            Ok(AddressRow {
                                grp: row.try_get(0)?,
                                ip_addr: row.try_get(1)?,
                                mask: row.try_get(2)?,
                                port: row.try_get(3)?,
                                tag: row.try_get(4)?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()?
                });
                Ok(rows)
            })
            .await?;
        at_most(rows, "address", max)
    }

    /// Every row of a dispatcher table: `cols` names the set id,
    /// destination, flags, priority and attrs columns; at most `max`.
    pub async fn dispatcher_load(
        &self,
        table: &str,
        cols: [&str; 5],
        max: usize,
    ) -> Result<Vec<crate::dispatcher::DsRow>, DbError> {
        if cols.iter().any(|c| !crate::config::is_sql_ident(c)) {
            return Err(DbError::BadConfig(format!("bad column names {cols:?}")));
        }
        let [setid, destination, flags, priority, attrs] = cols;
        let (setid, flags, priority) = (
            format!("#{setid}"),
            format!("#{flags}"),
            format!("#{priority}"),
        );
        let (sql, limit) =
            self.load_sql(table, [&setid, destination, &flags, &priority, attrs], max)?;
        let rows = self
            .bounded(async {
                let rows = with_pool!(self, pool => {
                    sqlx::query(&sql)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                        .iter()
                        .map(|row| {
                            Ok(crate::dispatcher::DsRow {
                                setid: row.try_get(0)?,
                                destination: row.try_get(1)?,
                                flags: row.try_get(2)?,
                                priority: row.try_get(3)?,
                                attrs: row
                                    .try_get::<Option<String>, _>(4)?
                                    .unwrap_or_default(),
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()?
                });
                Ok(rows)
            })
            .await?;
        at_most(rows, "dispatcher", max)
    }

    /// Inserts a `subscriber` row; `UserExists` when username+domain is taken.
    pub async fn subscriber_insert(&self, credentials: &Credentials) -> Result<(), DbError> {
        let sql = self.sql.subscriber_insert.as_str();
        let c = credentials;
        let inserted = self
            .bounded(async {
                with_pool!(self, pool => {
                    sqlx::query(sql)
                        .bind(c.username.as_str())
                        .bind(c.domain.as_str())
                        .bind(c.password.as_str())
                        .bind(c.ha1.as_str())
                        .bind(c.ha1b.as_str())
                        .execute(pool)
                        .await?;
                });
                Ok(())
            })
            .await;
        match inserted {
            Err(DbError::Sql(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                Err(DbError::UserExists(format!("{}@{}", c.username, c.domain)))
            }
            other => other,
        }
    }

    /// Inserts many `subscriber` rows in one transaction, [`IMPORT_ROWS_PER_STATEMENT`]
    /// rows per multi-row INSERT (`sipshard user import`). All or nothing: a
    /// row that exists already fails the whole import (the database's error
    /// names it where the driver does). Each statement is bounded by
    /// `query_timeout_ms`, not the whole import. Returns the rows inserted.
    pub async fn subscriber_import(
        &self,
        rows: impl Iterator<Item = Result<Credentials, DbError>>,
    ) -> Result<usize, DbError> {
        let mut rows = rows.peekable();
        let full = self.subscriber_insert_rows(IMPORT_ROWS_PER_STATEMENT);
        let mut chunk: Vec<Credentials> = Vec::with_capacity(IMPORT_ROWS_PER_STATEMENT);
        let mut added = 0usize;
        let timeout = self.query_timeout;
        let result: Result<usize, DbError> = async {
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                loop {
                    chunk.clear();
                    while chunk.len() < IMPORT_ROWS_PER_STATEMENT {
                        match rows.next() {
                            Some(row) => chunk.push(row?),
                            None => break,
                        }
                    }
                    if chunk.is_empty() {
                        break;
                    }
                    let partial;
                    let sql = if chunk.len() == IMPORT_ROWS_PER_STATEMENT {
                        full.as_str()
                    } else {
                        partial = self.subscriber_insert_rows(chunk.len());
                        partial.as_str()
                    };
                    let mut query = sqlx::query(sql);
                    for c in &chunk {
                        query = query
                            .bind(c.username.as_str())
                            .bind(c.domain.as_str())
                            .bind(c.password.as_str())
                            .bind(c.ha1.as_str())
                            .bind(c.ha1b.as_str());
                    }
                    tokio::time::timeout(timeout, query.execute(&mut *tx))
                        .await
                        .map_err(|_| DbError::Timeout)??;
                    added += chunk.len();
                    if rows.peek().is_none() {
                        break;
                    }
                }
                tokio::time::timeout(timeout, tx.commit())
                    .await
                    .map_err(|_| DbError::Timeout)??;
            });
            Ok(added)
        }
        .await;
        match result {
            Err(DbError::Sql(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                Err(DbError::ImportDuplicate(e.message().to_owned()))
            }
            other => other,
        }
    }

    /// `INSERT INTO subscriber ... VALUES (...), (...)` for `n` rows.
    fn subscriber_insert_rows(&self, n: usize) -> String {
        let d = self.dialect;
        let mut sql =
            String::from("INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ");
        for r in 0..n {
            if r > 0 {
                sql.push_str(", ");
            }
            let b = r * 5;
            sql.push_str(&format!(
                "({}, {}, {}, {}, {})",
                d.param(b + 1),
                d.param(b + 2),
                d.param(b + 3),
                d.param(b + 4),
                d.param(b + 5)
            ));
        }
        sql
    }

    /// Replaces password, ha1 and ha1b of an existing `subscriber` row.
    /// Returns whether the row existed.
    pub async fn subscriber_update(&self, credentials: &Credentials) -> Result<bool, DbError> {
        let sql = self.sql.subscriber_update.as_str();
        let c = credentials;
        self.bounded(async {
            let affected = with_pool!(self, pool => {
                sqlx::query(sql)
                    .bind(c.password.as_str())
                    .bind(c.ha1.as_str())
                    .bind(c.ha1b.as_str())
                    .bind(c.username.as_str())
                    .bind(c.domain.as_str())
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
            Ok(affected > 0)
        })
        .await
    }

    /// Deletes a `subscriber` row. Returns whether it existed.
    pub async fn subscriber_delete(&self, username: &str, domain: &str) -> Result<bool, DbError> {
        let sql = self.sql.subscriber_delete.as_str();
        self.bounded(async {
            let affected = with_pool!(self, pool => {
                sqlx::query(sql).bind(username).bind(domain).execute(pool).await?.rows_affected()
            });
            Ok(affected > 0)
        })
        .await
    }

    /// Every subscriber as (username, domain), sorted by domain then user.
    pub async fn subscriber_list(&self) -> Result<Vec<(String, String)>, DbError> {
        let sql = self.sql.subscriber_list.as_str();
        self.bounded(async {
            let rows = with_pool!(self, pool => {
                sqlx::query(sql)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            Ok(rows)
        })
        .await
    }
}

/// Refuses values some backend cannot store, before any row of the batch is
/// written.
fn check_location_row(row: &LocationRow) -> Result<(), DbError> {
    let bad = |why| {
        Err(DbError::BadRow {
            ruid: row.ruid.clone(),
            why,
        })
    };
    if row.ruid.is_empty() {
        return bad("empty ruid");
    }
    for time_unix_s in [row.expires_unix_s, row.last_modified_unix_s] {
        if !(0..=TIME_UNIX_S_MAX).contains(&time_unix_s) {
            return bad("time outside 1970-01-01 .. 2038-01-19");
        }
    }
    if !row.q.is_finite() {
        return bad("q is not a finite number");
    }
    Ok(())
}

async fn bounded_connect<P>(
    timeout: Duration,
    connect: impl Future<Output = Result<P, sqlx::Error>>,
) -> Result<P, DbError> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(pool) => Ok(pool?),
        Err(_) => Err(DbError::Timeout),
    }
}

fn bad_url(url: &str, error: sqlx::Error) -> DbError {
    DbError::BadUrl(format!("`{}`: {error}", redact(url)))
}

/// The URL without its password, for error messages.
pub(crate) fn redact_url(url: &str) -> String {
    redact(url)
}

fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

fn sqlite_options(cfg: &DbConfig) -> Result<SqliteConnectOptions, DbError> {
    Ok(SqliteConnectOptions::from_str(&cfg.url)
        .map_err(|e| bad_url(&cfg.url, e))?
        .create_if_missing(true)
        .busy_timeout(cfg.query_timeout()))
}

fn postgres_options(cfg: &DbConfig) -> Result<PgConnectOptions, DbError> {
    // The server also gives up on a statement past the timeout, so a query
    // the client abandoned does not keep a backend busy.
    Ok(PgConnectOptions::from_str(&cfg.url)
        .map_err(|e| bad_url(&cfg.url, e))?
        .options([("statement_timeout", cfg.query_timeout_ms.to_string())]))
}

fn mysql_options(cfg: &DbConfig) -> Result<MySqlConnectOptions, DbError> {
    let url = match cfg.url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
        _ => cfg.url.clone(),
    };
    MySqlConnectOptions::from_str(&url).map_err(|e| bad_url(&cfg.url, e))
}

fn sqlite_pool(cfg: &DbConfig) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.query_timeout())
}

fn postgres_pool(cfg: &DbConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.query_timeout())
}

fn mysql_pool(cfg: &DbConfig) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.query_timeout())
}

/// `rows`, or `TooManyRows` when a whole-table load found more than `max`.
fn at_most<T>(rows: Vec<T>, table: &'static str, max: usize) -> Result<Vec<T>, DbError> {
    if rows.len() > max {
        return Err(DbError::TooManyRows { table, max });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_from_url() {
        assert_eq!(Dialect::of_url("sqlite://x.db").ok(), Some(Dialect::Sqlite));
        assert_eq!(
            Dialect::of_url("sqlite::memory:").ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            Dialect::of_url("postgres://u@h/d").ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::of_url("postgresql://u@h/d").ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("mysql://u@h/d").ok(), Some(Dialect::MySql));
        assert_eq!(
            Dialect::of_url("MariaDB://u@h/d").ok(),
            Some(Dialect::MySql)
        );
        assert!(matches!(
            Dialect::of_url("oracle://u@h/d"),
            Err(DbError::BadUrl(_))
        ));
        assert!(matches!(Dialect::of_url(""), Err(DbError::BadUrl(_))));
    }

    #[test]
    fn redact_hides_password() {
        assert_eq!(redact("mysql://root:secret@h/db"), "mysql://root:***@h/db");
        assert_eq!(redact("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn placeholders_per_dialect() {
        let pg = Queries::new(Dialect::Postgres);
        assert!(
            pg.location_upsert.contains("$22)"),
            "{}",
            pg.location_upsert
        );
        assert!(pg.location_upsert.contains("ON CONFLICT (ruid)"));
        assert!(!pg.location_upsert.contains('?'));
        let my = Queries::new(Dialect::MySql);
        assert_eq!(my.location_upsert.matches('?').count(), 22);
        assert!(my
            .location_upsert
            .contains("`partition` = VALUES(`partition`)"));
        let lite = Queries::new(Dialect::Sqlite);
        assert_eq!(lite.location_upsert.matches('?').count(), 22);
        assert!(lite.credentials.ends_with("username = ? AND domain = ?"));
    }

    #[test]
    fn location_row_limits() {
        let mut row = super::super::tests::sample_row("r1", 0);
        assert!(check_location_row(&row).is_ok());
        row.expires_unix_s = -1;
        assert!(matches!(
            check_location_row(&row),
            Err(DbError::BadRow { .. })
        ));
        row.expires_unix_s = TIME_UNIX_S_MAX + 1;
        assert!(check_location_row(&row).is_err());
        row.expires_unix_s = 0;
        row.q = f32::NAN;
        assert!(check_location_row(&row).is_err());
        row.q = 1.0;
        row.ruid.clear();
        assert!(check_location_row(&row).is_err());
    }
}
