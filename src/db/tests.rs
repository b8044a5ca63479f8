//! Tests against real servers: SQLite in a temp file, PostgreSQL and MariaDB
//! on this machine. Each test makes its own database (`sipshard_t_<pid>_<n>`)
//! and drops it afterwards, on failure too (the guard's `Drop`). A server
//! that cannot be reached fails the test; nothing is skipped.
//!
//! Admin URLs (database `postgres` / `test` is replaced by the test's own):
//! `SIPSHARD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! `SIPSHARD_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use sqlx::{Connection, Executor, Row};

use super::cli::{run_db, run_user, DbCmd, UserCmd};
use super::*;

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const MYSQL_ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/test";

// ----------------------------------------------------------------- fixtures

/// A tokio runtime on its own thread, as the control plane runs it.
struct ControlRt {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ControlRt {
    fn new() -> ControlRt {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("control runtime");
            handle_tx.send(rt.handle().clone()).expect("handle");
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        ControlRt {
            handle: handle_rx.recv().expect("control runtime started"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ControlRt {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn admin<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("admin runtime")
        .block_on(work)
}

fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "sipshard_t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `scheme://userinfo@host:port/<db>`: the admin URL with another database.
fn with_database(admin_url: &str, database: &str) -> String {
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url, |(base, _)| base);
    format!("{base}/{database}")
}

/// One test database; dropped (files removed) when the guard goes.
struct TestDb {
    dialect: Dialect,
    url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    fn new(dialect: Dialect) -> TestDb {
        let name = unique_name();
        let admin_url = match dialect {
            Dialect::Postgres => std::env::var("SIPSHARD_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| POSTGRES_ADMIN_URL.to_owned()),
            Dialect::MySql => std::env::var("SIPSHARD_TEST_MYSQL_URL")
                .unwrap_or_else(|_| MYSQL_ADMIN_URL.to_owned()),
            _ => String::new(),
        };
        let url = match dialect {
            Dialect::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                format!("sqlite://{}", path.display())
            }
            _ => with_database(&admin_url, &name),
        };
        let db = TestDb {
            dialect,
            url,
            name,
            admin_url,
        };
        let create = format!("CREATE DATABASE {}", db.name);
        admin(async {
            match dialect {
                Dialect::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&db.admin_url)
                        .await
                        .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", db.admin_url));
                    c.execute(create.as_str()).await.expect("create database");
                }
                Dialect::MySql => {
                    let mut c = sqlx::MySqlConnection::connect(&db.admin_url)
                        .await
                        .unwrap_or_else(|e| panic!("MariaDB at {}: {e}", db.admin_url));
                    c.execute(create.as_str()).await.expect("create database");
                }
                _ => {}
            }
        });
        db
    }

    fn cfg(&self) -> DbConfig {
        DbConfig {
            query_timeout_ms: 5_000,
            ..DbConfig::with_url(&self.url)
        }
    }

    /// A connection of the test's own, for catalog queries.
    fn index_names(&self, table: &str) -> Vec<String> {
        admin(async {
            let mut names: Vec<String> = match self.dialect {
                Dialect::Sqlite => {
                    let mut c = sqlx::SqliteConnection::connect(&self.url)
                        .await
                        .expect("sqlite");
                    sqlx::query(
                        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                    )
                    .bind(table)
                    .fetch_all(&mut c)
                    .await
                    .expect("sqlite_master")
                    .iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect()
                }
                Dialect::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&self.url)
                        .await
                        .expect("postgres");
                    sqlx::query(
                        "SELECT CAST(indexname AS TEXT) FROM pg_indexes WHERE tablename = $1",
                    )
                    .bind(table)
                    .fetch_all(&mut c)
                    .await
                    .expect("pg_indexes")
                    .iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect()
                }
                _ => {
                    let mut c = sqlx::MySqlConnection::connect(&self.url)
                        .await
                        .expect("mysql");
                    sqlx::query(
                        "SELECT DISTINCT CAST(index_name AS CHAR) FROM information_schema.statistics \
                         WHERE table_schema = DATABASE() AND table_name = ?",
                    )
                    .bind(table)
                    .fetch_all(&mut c)
                    .await
                    .expect("information_schema")
                    .iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect()
                }
            };
            names.sort();
            names
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop_db = match self.dialect {
            Dialect::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        admin(async {
            match self.dialect {
                Dialect::Postgres => {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&self.admin_url).await {
                        let _ = c.execute(drop_db.as_str()).await;
                    }
                }
                Dialect::MySql => {
                    if let Ok(mut c) = sqlx::MySqlConnection::connect(&self.admin_url).await {
                        let _ = c.execute(drop_db.as_str()).await;
                    }
                }
                _ => {
                    let path = std::env::temp_dir().join(format!("{}.db", self.name));
                    for suffix in ["", "-wal", "-shm", "-journal"] {
                        let mut file = path.clone().into_os_string();
                        file.push(suffix);
                        let _ = std::fs::remove_file(file);
                    }
                }
            }
        });
    }
}

/// A location row with every column set to a distinct, non-default value.
pub(crate) fn sample_row(ruid: &str, n: i32) -> LocationRow {
    LocationRow {
        ruid: ruid.to_owned(),
        username: "alice".to_owned(),
        domain: Some("example.com".to_owned()),
        contact: format!("sip:alice@192.0.2.{n}:5060;transport=udp;ob"),
        received: Some(format!("sip:198.51.100.{n}:40000")),
        path: Some("<sip:edge.example.com;lr>".to_owned()),
        expires_unix_s: 1_900_000_000 + i64::from(n),
        q: 0.5,
        callid: format!("call-{n}@host"),
        cseq: 4242 + n,
        last_modified_unix_s: 1_700_000_000 + i64::from(n),
        flags: 3,
        cflags: 64,
        user_agent: "sipshard-test/1.0".to_owned(),
        socket: Some("udp:127.0.0.1:5060".to_owned()),
        methods: Some(8191),
        instance: Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>".to_owned()),
        reg_id: 1,
        server_id: 7,
        connection_id: 11 + n,
        keepalive: 1,
        partition: 2,
    }
}

/// A location row with the nullable columns NULL and the least values.
fn sparse_row(ruid: &str) -> LocationRow {
    LocationRow {
        ruid: ruid.to_owned(),
        username: "bob".to_owned(),
        domain: None,
        contact: "sip:bob@192.0.2.99".to_owned(),
        received: None,
        path: None,
        expires_unix_s: 0,
        q: 1.0,
        callid: "c".to_owned(),
        cseq: -1,
        last_modified_unix_s: 0,
        flags: 0,
        cflags: 0,
        user_agent: String::new(),
        socket: None,
        methods: None,
        instance: None,
        reg_id: 0,
        server_id: 0,
        connection_id: 0,
        keepalive: 0,
        partition: 0,
    }
}

fn load_sorted(db: &DbHandle) -> Vec<LocationRow> {
    let mut rows = block_on(db.location_load_all().expect("queued")).expect("load");
    rows.sort_by(|a, b| a.ruid.cmp(&b.ruid));
    rows
}

// ----------------------------------------------------- per-backend scenarios

fn schema_init_is_idempotent(dialect: Dialect) {
    let db = TestDb::new(dialect);
    let expected: Vec<(String, i64)> = {
        let mut v: Vec<_> = SCHEMA_VERSIONS
            .iter()
            .map(|(t, v)| ((*t).to_owned(), *v))
            .collect();
        v.sort();
        v
    };
    for _ in 0..2 {
        let out = run_db(&db.url, DbCmd::Init).expect("db init");
        assert!(out.starts_with("schema ready"), "{out}");
        assert!(
            out.contains("location 9\n") && out.contains("subscriber 7\n"),
            "{out}"
        );
        let versions = admin(async {
            let pool = DbPool::connect(&db.cfg()).await.expect("connect");
            let versions = pool.versions().await.expect("versions");
            pool.close().await;
            versions
        });
        assert_eq!(versions, expected);
    }
    assert_eq!(
        run_db(&db.url, DbCmd::Version).expect("db version"),
        "address 6\ndispatcher 4\nhtable 2\nlocation 9\nlocation_attrs 1\nsubscriber 7\nversion 1\n"
    );
    // (table, unique constraints, plain indexes), names without the table
    // prefix that PostgreSQL and SQLite add.
    let expected: [(&str, &[&str], &[&str]); 3] = [
        (
            "location",
            &["ruid_idx"],
            &["account_contact_idx", "connection_idx", "expires_idx"],
        ),
        ("subscriber", &["account_idx"], &["username_idx"]),
        (
            "location_attrs",
            &[],
            &["account_record_idx", "last_modified_idx"],
        ),
    ];
    for (table, unique, plain) in expected {
        let mut names: Vec<String> = match dialect {
            Dialect::MySql => vec!["PRIMARY".to_owned()],
            Dialect::Postgres => vec![format!("{table}_pkey")],
            _ => vec![],
        };
        for (i, name) in unique.iter().enumerate() {
            names.push(match dialect {
                Dialect::MySql => (*name).to_owned(),
                Dialect::Postgres => format!("{table}_{name}"),
                // SQLite names the index of a UNIQUE constraint itself.
                _ => format!("sqlite_autoindex_{table}_{}", i + 1),
            });
        }
        for name in plain {
            names.push(match dialect {
                Dialect::MySql => (*name).to_owned(),
                _ => format!("{table}_{name}"),
            });
        }
        names.sort();
        assert_eq!(db.index_names(table), names, "{table}");
    }
}

fn users_via_cli(dialect: Dialect) {
    let db = TestDb::new(dialect);
    run_db(&db.url, DbCmd::Init).expect("db init");
    let url = db.url.as_str();
    let add = |user: &str, password: &str| {
        run_user(
            url,
            Some("d.org"),
            UserCmd::Add {
                user: user.to_owned(),
                password: password.to_owned(),
            },
        )
    };
    assert_eq!(
        add("alice@example.com", "secret").expect("add"),
        "added alice@example.com\n"
    );
    assert_eq!(
        add("bob", "pw").expect("add default domain"),
        "added bob@d.org\n"
    );
    assert!(matches!(
        add("alice@example.com", "again"),
        Err(DbError::UserExists(_))
    ));
    assert_eq!(
        run_user(url, None, UserCmd::List).expect("list"),
        "bob@d.org\nalice@example.com\n"
    );

    let rt = ControlRt::new();
    let handle = DbHandle::start(&db.cfg(), &rt.handle).expect("start");
    let alice =
        block_on(handle.credentials("alice", "example.com").expect("queued")).expect("query");
    assert_eq!(
        alice,
        Some(Credentials {
            username: "alice".to_owned(),
            domain: "example.com".to_owned(),
            password: "secret".to_owned(),
            // md5("alice:example.com:secret"), md5("alice@example.com:example.com:secret")
            ha1: "b1726872c344b6dc8365b774f8fd6412".to_owned(),
            ha1b: "c79656e4f06dbae9fdf6727654273c65".to_owned(),
        })
    );
    let bob = block_on(handle.credentials("bob", "d.org").expect("queued")).expect("query");
    assert_eq!(
        bob.map(|c| c.ha1),
        Some("c7caff910d4c8cf86680c5c536b4f6d9".to_owned()) // md5("bob:d.org:pw")
    );
    // No domain: the username alone decides (auth_db use_domain = 0).
    let any = block_on(handle.credentials("alice", "").expect("queued")).expect("query");
    assert_eq!(any.map(|c| c.domain), Some("example.com".to_owned()));
    for (user, domain) in [
        ("carol", "example.com"),
        ("alice", "d.org"),
        ("", ""),
        ("carol", ""),
    ] {
        let miss = block_on(handle.credentials(user, domain).expect("queued")).expect("query");
        assert_eq!(miss, None, "{user}@{domain}");
    }

    let passwd = run_user(
        url,
        None,
        UserCmd::Passwd {
            user: "alice@example.com".to_owned(),
            password: "n3w-pass".to_owned(),
        },
    );
    assert_eq!(
        passwd.expect("passwd"),
        "password changed for alice@example.com\n"
    );
    let alice = block_on(handle.credentials("alice", "example.com").expect("queued"))
        .expect("query")
        .expect("alice");
    assert_eq!(alice.password, "n3w-pass");
    assert_eq!(alice.ha1, "50c8d8d77df634f2a61de8dc8b500e35");
    assert_eq!(alice.ha1b, "3721f65dfdadd346b10d629c37fff71f");
    // Same password again: still found (MySQL counts matched, not changed, rows).
    let same = run_user(
        url,
        None,
        UserCmd::Passwd {
            user: "alice@example.com".to_owned(),
            password: "n3w-pass".to_owned(),
        },
    );
    assert!(same.is_ok(), "{same:?}");
    let nobody = run_user(
        url,
        None,
        UserCmd::Passwd {
            user: "nobody@example.com".to_owned(),
            password: "x".to_owned(),
        },
    );
    assert!(matches!(nobody, Err(DbError::NoSuchUser(_))), "{nobody:?}");

    let rm = |user: &str| {
        run_user(
            url,
            None,
            UserCmd::Rm {
                user: user.to_owned(),
            },
        )
    };
    assert_eq!(
        rm("alice@example.com").expect("rm"),
        "removed alice@example.com\n"
    );
    assert!(matches!(
        rm("alice@example.com"),
        Err(DbError::NoSuchUser(_))
    ));
    assert_eq!(
        run_user(url, None, UserCmd::List).expect("list"),
        "bob@d.org\n"
    );
    let gone =
        block_on(handle.credentials("alice", "example.com").expect("queued")).expect("query");
    assert_eq!(gone, None);
}

fn location_round_trip(dialect: Dialect) {
    let db = TestDb::new(dialect);
    run_db(&db.url, DbCmd::Init).expect("db init");
    let rt = ControlRt::new();
    let handle = DbHandle::start(&db.cfg(), &rt.handle).expect("start");
    assert_eq!(load_sorted(&handle), vec![]);

    let rows = vec![
        sample_row("ruid-1", 1),
        sample_row("ruid-2", 2),
        sparse_row("ruid-3"),
    ];
    block_on(handle.location_upsert(rows.clone()).expect("queued")).expect("upsert");
    assert_eq!(load_sorted(&handle), rows);
    // One AoR (db_mode 3 reads; SQLite: the reader thread), with and
    // without a domain.
    let alice = block_on(
        handle
            .location_load_aor("alice", "example.com")
            .expect("queued"),
    );
    assert_eq!(alice.expect("load aor"), rows[..2].to_vec());
    let bob = block_on(handle.location_load_aor("bob", "").expect("queued"));
    assert_eq!(bob.expect("load aor"), rows[2..].to_vec());
    let none = block_on(handle.location_load_aor("alice", "").expect("queued"));
    assert_eq!(none.expect("load aor"), vec![]);

    // Upsert by ruid replaces every column.
    let mut changed = sample_row("ruid-2", 2);
    changed.contact = "sip:alice@203.0.113.5".to_owned();
    changed.expires_unix_s = 2_000_000_000;
    changed.q = 0.1;
    changed.cseq = 99;
    changed.methods = None;
    changed.received = None;
    changed.partition = 5;
    block_on(
        handle
            .location_upsert(vec![changed.clone()])
            .expect("queued"),
    )
    .expect("upsert");
    let loaded = load_sorted(&handle);
    assert_eq!(
        loaded,
        vec![rows[0].clone(), changed.clone(), rows[2].clone()]
    );

    // Invalid rows are refused whole; nothing of the batch is written.
    let mut bad = sample_row("ruid-9", 9);
    bad.expires_unix_s = -5;
    let refused = block_on(
        handle
            .location_upsert(vec![sample_row("ruid-8", 8), bad])
            .expect("queued"),
    );
    assert!(
        matches!(refused, Err(DbError::BadRow { .. })),
        "{refused:?}"
    );
    assert_eq!(load_sorted(&handle).len(), 3);

    // usrloc db_mode 3 expiry: only a row still expired goes
    let exp = rows[0].expires_unix_s;
    block_on(
        handle
            .location_delete_expired(vec!["ruid-1".to_owned()], exp - 1)
            .expect("queued"),
    )
    .expect("delete expired");
    assert_eq!(load_sorted(&handle).len(), 3, "a refreshed row stays");
    block_on(
        handle
            .location_delete_expired(vec!["ruid-1".to_owned(), "unknown".to_owned()], exp)
            .expect("queued"),
    )
    .expect("delete expired");
    assert_eq!(load_sorted(&handle), vec![changed.clone(), rows[2].clone()]);

    block_on(
        handle
            .location_delete(vec!["ruid-1".to_owned(), "unknown".to_owned()])
            .expect("queued"),
    )
    .expect("delete");
    assert_eq!(load_sorted(&handle), vec![changed.clone(), rows[2].clone()]);

    // An empty domain deletes the rows stored without one.
    block_on(handle.location_delete_aor("bob", "").expect("queued")).expect("delete aor");
    assert_eq!(load_sorted(&handle), vec![changed]);
    block_on(
        handle
            .location_delete_aor("alice", "other.org")
            .expect("queued"),
    )
    .expect("delete aor");
    assert_eq!(load_sorted(&handle).len(), 1);
    block_on(
        handle
            .location_delete_aor("alice", "example.com")
            .expect("queued"),
    )
    .expect("delete aor");
    assert_eq!(load_sorted(&handle), vec![]);

    let too_many = handle.location_upsert(vec![sparse_row("x"); BATCH_ROWS_MAX + 1]);
    assert!(matches!(too_many, Err(DbError::BatchTooLarge { .. })));
}

fn load_all_is_bounded(dialect: Dialect) {
    let db = TestDb::new(dialect);
    run_db(&db.url, DbCmd::Init).expect("db init");
    let rt = ControlRt::new();
    let cfg = DbConfig {
        location_rows_max: 2,
        ..db.cfg()
    };
    let handle = DbHandle::start(&cfg, &rt.handle).expect("start");
    let rows = vec![sparse_row("a"), sparse_row("b")];
    block_on(handle.location_upsert(rows).expect("queued")).expect("upsert");
    assert_eq!(load_sorted(&handle).len(), 2);
    block_on(
        handle
            .location_upsert(vec![sparse_row("c")])
            .expect("queued"),
    )
    .expect("upsert");
    let over = block_on(handle.location_load_all().expect("queued"));
    assert!(
        matches!(over, Err(DbError::TooManyRows { max: 2, .. })),
        "{over:?}"
    );
}

fn start_checks_schema(dialect: Dialect) {
    let db = TestDb::new(dialect);
    let rt = ControlRt::new();
    if dialect == Dialect::Sqlite {
        // The embedded default prepares its own schema.
        let handle = DbHandle::start(&db.cfg(), &rt.handle).expect("start on empty sqlite");
        let rows = block_on(handle.location_load_all().expect("queued")).expect("load");
        assert!(rows.is_empty());
    } else {
        let empty = DbHandle::start(&db.cfg(), &rt.handle);
        assert!(matches!(empty, Err(DbError::NoSchema(_))), "{empty:?}");
        let list = run_user(&db.url, None, UserCmd::List);
        assert!(matches!(list, Err(DbError::NoSchema(_))), "{list:?}");
        run_db(&db.url, DbCmd::Init).expect("db init");
    }
    // A location table of another version is refused, as Kamailio does.
    admin(async {
        let pool = DbPool::connect(&db.cfg()).await.expect("connect");
        pool.execute_all(&[
            "UPDATE version SET table_version = 8 WHERE table_name = 'location'".to_owned(),
        ])
        .await
        .expect("update");
        pool.close().await;
    });
    let old = DbHandle::start(&db.cfg(), &rt.handle);
    assert!(
        matches!(
            old,
            Err(DbError::SchemaVersion {
                table: "location",
                found: Some(8),
                expected: 9
            })
        ),
        "{old:?}"
    );
}

macro_rules! backend_tests {
    ($module:ident, $dialect:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn schema_init_is_idempotent() {
                super::schema_init_is_idempotent($dialect);
            }

            #[test]
            fn users_via_cli() {
                super::users_via_cli($dialect);
            }

            #[test]
            fn location_round_trip() {
                super::location_round_trip($dialect);
            }

            #[test]
            fn load_all_is_bounded() {
                super::load_all_is_bounded($dialect);
            }

            #[test]
            fn start_checks_schema() {
                super::start_checks_schema($dialect);
            }
        }
    };
}

backend_tests!(sqlite, Dialect::Sqlite);
backend_tests!(postgres, Dialect::Postgres);
backend_tests!(mysql, Dialect::MySql);

// ------------------------------------------------------ failures and limits

#[test]
fn config_defaults_and_validation() {
    let cfg: DbConfig = toml::from_str("").expect("empty section");
    assert_eq!(cfg, DbConfig::default());
    assert_eq!(cfg.url, "sqlite://sipshard.db");
    let cfg: DbConfig =
        toml::from_str("url = \"mysql://root@h/k\"\nqueue_depth = 8").expect("parse");
    assert_eq!((cfg.url.as_str(), cfg.queue_depth), ("mysql://root@h/k", 8));
    assert!(toml::from_str::<DbConfig>("urll = \"x\"").is_err());
    let zero = DbConfig {
        max_connections: 0,
        ..DbConfig::default()
    };
    let rt = ControlRt::new();
    assert!(matches!(
        DbHandle::start(&zero, &rt.handle),
        Err(DbError::BadConfig(_))
    ));
}

#[test]
fn blocking_entry_points_refuse_a_runtime() {
    let db = TestDb::new(Dialect::Sqlite);
    let rt = ControlRt::new();
    let _inside = rt.handle.enter();
    let start = DbHandle::start(&db.cfg(), &rt.handle);
    assert!(matches!(start, Err(DbError::InsideRuntime)), "{start:?}");
    let init = run_db(&db.url, DbCmd::Init);
    assert!(matches!(init, Err(DbError::InsideRuntime)), "{init:?}");
}

/// A server that accepts TCP connections and never says a word.
#[test]
fn dead_server_times_out_and_queue_fills() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let cfg = DbConfig {
        url: format!("postgres://postgres@127.0.0.1:{port}/none"),
        max_connections: 1,
        queue_depth: 1,
        query_timeout_ms: 300,
        location_rows_max: 10,
        ..DbConfig::default()
    };
    let rt = ControlRt::new();

    let started = Instant::now();
    let eager = DbHandle::start(&cfg, &rt.handle);
    assert!(matches!(eager, Err(DbError::Timeout)), "{eager:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let pool = {
        let _in_runtime = rt.handle.enter();
        DbPool::connect_lazy(&cfg).expect("lazy pool")
    };
    let handle = DbHandle::from_pool(pool, &cfg, &rt.handle);
    let started = Instant::now();
    let mut replies = Vec::new();
    let mut full = 0;
    for _ in 0..6 {
        match handle.credentials("alice", "example.com") {
            Ok(reply) => replies.push(reply),
            Err(DbError::QueueFull) => full += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // One request in flight, one queued: the rest are refused at once.
    assert!(full >= 4, "full = {full}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for reply in replies {
        let answer = block_on(reply);
        assert!(matches!(answer, Err(DbError::Timeout)), "{answer:?}");
    }
    // At most two timeouts back to back, plus slack for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

#[test]
fn dropped_worker_answers_closed() {
    let db = TestDb::new(Dialect::Sqlite);
    let rt = ControlRt::new();
    let handle = DbHandle::start(&db.cfg(), &rt.handle).expect("start");
    drop(rt); // the control runtime stops, the worker with it
              // (SQLite credential and AoR reads have their own thread, which lives
              // as long as the handle: see `sqlite_reader_*`.)
    match handle.location_load_all() {
        Err(DbError::Closed) => {}
        Ok(reply) => assert!(matches!(block_on(reply), Err(DbError::Closed))),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

/// SQLite credential reads (the `reader` thread): a burst of first-time
/// reads over distinct users all get their own row; a database locked by a
/// writer answers `Timeout` within `query_timeout_ms` and a full queue
/// `QueueFull` at once; reads work again once the lock is gone.
#[test]
fn sqlite_reader_burst_lock_and_queue() {
    let db = TestDb::new(Dialect::Sqlite);
    run_db(&db.url, DbCmd::Init).expect("db init");
    const USERS: usize = 64;
    for i in 0..USERS {
        run_user(
            &db.url,
            None,
            UserCmd::Add {
                user: format!("u{i}@example.com"),
                password: format!("pw{i}"),
            },
        )
        .expect("add");
    }
    let cfg = DbConfig {
        queue_depth: USERS,
        query_timeout_ms: 400,
        ..db.cfg()
    };
    let rt = ControlRt::new();
    let handle = DbHandle::start(&cfg, &rt.handle).expect("start");
    let replies: Vec<_> = (0..USERS)
        .map(|i| {
            let domain = if i % 2 == 0 { "example.com" } else { "" };
            handle
                .credentials(&format!("u{i}"), domain)
                .expect("queued")
        })
        .collect();
    for (i, reply) in replies.into_iter().enumerate() {
        let row = block_on(reply).expect("query").expect("found");
        assert_eq!(
            (row.username, row.domain),
            (format!("u{i}"), "example.com".to_owned())
        );
        assert_eq!(row.password, format!("pw{i}"));
    }

    // A writer holding an exclusive lock (rollback journal: readers wait).
    let path = db.url.trim_start_matches("sqlite://");
    let writer = rusqlite::Connection::open(path).expect("open");
    writer.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let started = Instant::now();
    let locked = handle.credentials("u1", "example.com").expect("queued");
    // The reader is stuck on the lock: the queue fills, then refuses.
    let mut queued = Vec::new();
    let mut full = 0;
    for i in 0..USERS + 2 {
        match handle.credentials(&format!("u{i}"), "example.com") {
            Ok(reply) => queued.push(reply),
            Err(DbError::QueueFull) => full += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(full >= 1, "queue never full");
    assert!(matches!(block_on(locked), Err(DbError::Timeout)));
    for reply in queued {
        assert!(matches!(block_on(reply), Err(DbError::Timeout)));
    }
    // One busy wait, the rest answered without running; slack for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    writer.execute_batch("ROLLBACK").expect("unlock");
    let row = block_on(handle.credentials("u5", "example.com").expect("queued"))
        .expect("query after the lock")
        .expect("found");
    assert_eq!(row.password, "pw5");
}

/// A TCP forwarder to PostgreSQL that can cut every connection and refuse
/// new ones, to play a database outage.
struct Forwarder {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(target: String) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (up2, stop2, open2) = (up.clone(), stop.clone(), open.clone());
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut open = open2.lock().expect("lock");
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        open.push(clone);
                    }
                }
                pump(&client, &server);
                pump(&server, &client);
            }
        });
        Forwarder {
            port,
            up,
            stop,
            open,
            thread: Some(thread),
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pump(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake accept()
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn reconnects_after_outage() {
    let db = TestDb::new(Dialect::Postgres);
    run_db(&db.url, DbCmd::Init).expect("db init");
    let target = db
        .admin_url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host_port, _)| host_port.to_owned())
        .expect("host:port in admin url");
    let forwarder = Forwarder::start(target);
    let cfg = DbConfig {
        query_timeout_ms: 1_000,
        max_connections: 2,
        ..DbConfig::with_url(&db.url.replace(
            &db.url[db.url.find('@').expect("@")..db.url.rfind('/').expect("/")],
            &format!("@127.0.0.1:{}", forwarder.port),
        ))
    };
    let rt = ControlRt::new();
    let handle = DbHandle::start(&cfg, &rt.handle).expect("start through forwarder");
    let ask = || block_on(handle.credentials("alice", "example.com").expect("queued"));
    assert_eq!(ask().expect("before outage"), None);

    forwarder.cut();
    let started = Instant::now();
    let during = ask();
    assert!(during.is_err(), "{during:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    forwarder.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ask() {
            Ok(None) => break,
            other if Instant::now() > deadline => panic!("no reconnect: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
