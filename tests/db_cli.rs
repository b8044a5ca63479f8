//! `sipshard user ...` and `sipshard db ...` as an operator runs them: the
//! real binary against a SQLite file and a PostgreSQL database of the test's
//! own (dropped afterwards). An unreachable PostgreSQL fails the test.

use std::path::PathBuf;
use std::process::{Command, Output};

use sqlx::{Connection, Executor};

use sipshard::db::{DbConfig, DbPool};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn sipshard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(args)
        .output()
        .expect("run sipshard")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = sipshard(args);
    assert!(
        out.status.success(),
        "sipshard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn stderr_failed(args: &[&str]) -> String {
    let out = sipshard(args);
    assert_eq!(out.status.code(), Some(1), "sipshard {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8")
}

fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(work)
}

/// (ha1, ha1b) stored for a subscriber, read back through the library.
fn hashes(url: &str, username: &str, domain: &str) -> Option<(String, String)> {
    block_on(async {
        let pool = DbPool::connect(&DbConfig::with_url(url))
            .await
            .expect("connect");
        let found = pool.credentials(username, domain).await.expect("query");
        pool.close().await;
        found.map(|c| (c.ha1, c.ha1b))
    })
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[test]
fn sqlite_user_lifecycle() {
    let file =
        TempFile(std::env::temp_dir().join(format!("sipshard_cli_{}.db", std::process::id())));
    let url = format!("sqlite://{}", file.0.display());
    let db = ["--db", url.as_str()];
    let with_db = |args: &[&'static str]| -> Vec<&str> { args.iter().copied().chain(db).collect() };

    // The embedded default needs no `db init`; it is still idempotent.
    assert_eq!(stdout_ok(&with_db(&["user", "list"])), "");
    let init = stdout_ok(&with_db(&["db", "init"]));
    assert!(init.starts_with("schema ready (sqlite)\n"), "{init}");
    assert!(
        init.contains("location 9\n") && init.contains("subscriber 7\n"),
        "{init}"
    );

    assert_eq!(
        stdout_ok(&with_db(&["user", "add", "alice@example.com", "secret"])),
        "added alice@example.com\n"
    );
    assert_eq!(
        stdout_ok(&with_db(&["user", "add", "bob", "pw", "--domain", "d.org"])),
        "added bob@d.org\n"
    );
    let twice = stderr_failed(&with_db(&["user", "add", "alice@example.com", "x"]));
    assert!(twice.contains("already exists"), "{twice}");
    let no_domain = stderr_failed(&with_db(&["user", "add", "carol", "x"]));
    assert!(no_domain.contains("no default domain"), "{no_domain}");
    assert_eq!(
        stdout_ok(&with_db(&["user", "list"])),
        "bob@d.org\nalice@example.com\n"
    );
    // md5("alice:example.com:secret"), md5("alice@example.com:example.com:secret")
    assert_eq!(
        hashes(&url, "alice", "example.com"),
        Some((
            "b1726872c344b6dc8365b774f8fd6412".to_owned(),
            "c79656e4f06dbae9fdf6727654273c65".to_owned()
        ))
    );

    assert_eq!(
        stdout_ok(&with_db(&[
            "user",
            "passwd",
            "alice@example.com",
            "n3w-pass"
        ])),
        "password changed for alice@example.com\n"
    );
    assert_eq!(
        hashes(&url, "alice", "example.com").map(|h| h.0),
        Some("50c8d8d77df634f2a61de8dc8b500e35".to_owned()) // md5("alice:example.com:n3w-pass")
    );
    assert_eq!(
        stdout_ok(&with_db(&["user", "rm", "alice@example.com"])),
        "removed alice@example.com\n"
    );
    let gone = stderr_failed(&with_db(&["user", "rm", "alice@example.com"]));
    assert!(gone.contains("no such user"), "{gone}");
    assert_eq!(stdout_ok(&with_db(&["user", "list"])), "bob@d.org\n");
    assert_eq!(
        stdout_ok(&with_db(&["db", "version"])),
        "address 6\ndispatcher 4\nhtable 2\nlocation 9\nlocation_attrs 1\nsubscriber 7\nversion 1\n"
    );
}

/// A PostgreSQL database of its own, dropped when the guard goes.
struct PgDb {
    name: String,
    url: String,
}

impl PgDb {
    fn new() -> PgDb {
        let name = format!("sipshard_cli_{}", std::process::id());
        let base = POSTGRES_ADMIN_URL
            .rsplit_once('/')
            .map_or("", |(base, _)| base);
        let db = PgDb {
            url: format!("{base}/{name}"),
            name,
        };
        block_on(async {
            let mut admin = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {POSTGRES_ADMIN_URL}: {e}"));
            admin
                .execute(format!("CREATE DATABASE {}", db.name).as_str())
                .await
                .expect("create database");
        });
        db
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        block_on(async {
            if let Ok(mut admin) = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                let _ = admin.execute(drop.as_str()).await;
            }
        });
    }
}

#[test]
fn postgres_needs_db_init() {
    let pg = PgDb::new();
    let db = ["--db", pg.url.as_str()];
    let with_db = |args: &[&'static str]| -> Vec<&str> { args.iter().copied().chain(db).collect() };

    let missing = stderr_failed(&with_db(&["user", "list"]));
    assert!(missing.contains("sipshard db init"), "{missing}");
    assert!(stdout_ok(&with_db(&["db", "init"])).starts_with("schema ready (postgres)\n"));
    assert_eq!(
        stdout_ok(&with_db(&["user", "add", "alice@example.com", "secret"])),
        "added alice@example.com\n"
    );
    assert_eq!(
        hashes(&pg.url, "alice", "example.com").map(|h| h.1),
        Some("c79656e4f06dbae9fdf6727654273c65".to_owned())
    );
}
