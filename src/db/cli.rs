//! `sipshard user ...` and `sipshard db ...`: subscriber and schema
//! administration, the way `kamctl add|rm|passwd` and `kamdbctl create` do it.
//!
//! Owns: the clap subcommands, argument checks, the digest hashes stored in
//! `subscriber` (ha1, ha1b with realm = domain, as kamctl does by default) and
//! the text printed back.
//! Must never: run inside a tokio runtime (each call builds and blocks on its
//! own current-thread runtime), nor print passwords or hashes.

use md5::{Digest, Md5};

use super::schema::check_versions;
use super::{init_schema, refuse_inside_runtime, Credentials, DbConfig, DbError, DbPool, Dialect};

/// Longest username, domain or password the `subscriber` columns hold.
const FIELD_CHARS_MAX: usize = 64;

/// CLI query timeout: longer than the proxy's, a person is waiting, not a
/// SIP transaction.
const CLI_QUERY_TIMEOUT_MS: u64 = 10_000;

/// `sipshard user <cmd>`. A `user` is `name@domain`, or `name` alone when a
/// default domain is given to [`run_user`].
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum UserCmd {
    /// Add a subscriber (like `kamctl add`).
    Add {
        /// name@domain
        user: String,
        password: String,
    },
    /// Remove a subscriber (like `kamctl rm`).
    Rm {
        /// name@domain
        user: String,
    },
    /// List subscribers, one name@domain per line.
    List,
    /// Add many subscribers from a file: one `name@domain;password` or
    /// `name;domain;password` (a sipp injection CSV) per line; a first line
    /// `SEQUENTIAL`/`RANDOM`/`USER` and `#` comments are skipped.
    Import {
        /// The file to read.
        file: std::path::PathBuf,
    },
    /// Change a subscriber's password (like `kamctl passwd`).
    Passwd {
        /// name@domain
        user: String,
        password: String,
    },
}

/// `sipshard db <cmd>`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum DbCmd {
    /// Create the missing tables, indexes and version rows (idempotent; safe
    /// on a database Kamailio created).
    Init,
    /// Print the `version` table.
    Version,
}

/// Runs one `user` subcommand against `db_url` and returns what to print.
/// `default_domain` completes a `user` given without `@domain` (kamctl's
/// `SIP_DOMAIN`); with `None` such a user is refused.
/// The schema must exist (`sipshard db init`), except on SQLite where it is
/// created on first use.
pub fn run_user(
    db_url: &str,
    default_domain: Option<&str>,
    cmd: UserCmd,
) -> Result<String, DbError> {
    // Check the arguments before touching the database.
    let target = match &cmd {
        UserCmd::Add { user, password } | UserCmd::Passwd { user, password } => {
            check_field("password", password)?;
            Some(split_user(user, default_domain)?)
        }
        UserCmd::Rm { user } => Some(split_user(user, default_domain)?),
        UserCmd::List | UserCmd::Import { .. } => None,
    };
    block_on(db_url, |pool| async move {
        let pool = pool?;
        let result = match check_versions(&pool).await {
            Ok(()) => user_on(&pool, cmd, target).await,
            Err(e) => Err(e),
        };
        pool.close().await;
        result
    })
}

/// Runs one `db` subcommand against `db_url` and returns what to print.
pub fn run_db(db_url: &str, cmd: DbCmd) -> Result<String, DbError> {
    block_on(db_url, |pool| async move {
        let pool = pool?;
        let result = db_on(&pool, cmd).await;
        pool.close().await;
        result
    })
}

/// HA1 of RFC 2617 digest: lowercase hex MD5 of `username:realm:password`.
pub fn ha1(username: &str, realm: &str, password: &str) -> String {
    md5_hex(&[username, ":", realm, ":", password])
}

/// Kamailio's ha1b: the HA1 for clients that send `user@domain` as the
/// digest username: MD5 of `username@domain:realm:password`.
pub fn ha1b(username: &str, domain: &str, realm: &str, password: &str) -> String {
    md5_hex(&[username, "@", domain, ":", realm, ":", password])
}

/// Splits `name@domain`; a bare `name` takes `default_domain`.
pub fn split_user(user: &str, default_domain: Option<&str>) -> Result<(String, String), DbError> {
    let (name, domain) = match (user.split_once('@'), default_domain) {
        (Some((name, domain)), _) => (name, domain),
        (None, Some(domain)) => (user, domain),
        (None, None) => {
            return Err(DbError::BadUser(format!(
                "`{user}` has no @domain and no default domain is set"
            )))
        }
    };
    check_field("username", name)?;
    check_field("domain", domain)?;
    if domain.contains('@') {
        return Err(DbError::BadUser(format!("`{user}`: more than one @")));
    }
    Ok((name.to_owned(), domain.to_owned()))
}

fn check_field(what: &str, value: &str) -> Result<(), DbError> {
    if value.is_empty() {
        return Err(DbError::BadUser(format!("empty {what}")));
    }
    if value.chars().count() > FIELD_CHARS_MAX {
        return Err(DbError::BadUser(format!(
            "{what} longer than {FIELD_CHARS_MAX} characters"
        )));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DbError::BadUser(format!(
            "{what} contains whitespace or control characters"
        )));
    }
    Ok(())
}

fn credentials(username: String, domain: String, password: String) -> Credentials {
    // Realm = domain, kamctl's default.
    Credentials {
        ha1: ha1(&username, &domain, &password),
        ha1b: ha1b(&username, &domain, &domain, &password),
        username,
        domain,
        password,
    }
}

async fn user_on(
    pool: &DbPool,
    cmd: UserCmd,
    target: Option<(String, String)>,
) -> Result<String, DbError> {
    let aor = |(name, domain): &(String, String)| format!("{name}@{domain}");
    match (cmd, target) {
        (UserCmd::Add { password, .. }, Some((name, domain))) => {
            let line = aor(&(name.clone(), domain.clone()));
            pool.subscriber_insert(&credentials(name, domain, password))
                .await?;
            Ok(format!("added {line}\n"))
        }
        (UserCmd::Passwd { password, .. }, Some((name, domain))) => {
            let line = aor(&(name.clone(), domain.clone()));
            if !pool
                .subscriber_update(&credentials(name, domain, password))
                .await?
            {
                return Err(DbError::NoSuchUser(line));
            }
            Ok(format!("password changed for {line}\n"))
        }
        (UserCmd::Rm { .. }, Some(target)) => {
            let line = aor(&target);
            if !pool.subscriber_delete(&target.0, &target.1).await? {
                return Err(DbError::NoSuchUser(line));
            }
            Ok(format!("removed {line}\n"))
        }
        (UserCmd::Import { file }, _) => {
            let f = std::fs::File::open(&file)
                .map_err(|e| DbError::BadUser(format!("{}: {e}", file.display())))?;
            let lines = std::io::BufRead::lines(std::io::BufReader::new(f));
            // Users repeated inside the file are refused before the database
            // sees them (its own error would not always name the user).
            let mut seen = std::collections::HashSet::new();
            let rows = lines.enumerate().filter_map(move |(i, line)| {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => return Some(Err(DbError::BadUser(format!("line {}: {e}", i + 1)))),
                };
                import_line(i, line.trim()).map(|row| {
                    row.and_then(|c| {
                        if seen.insert((c.username.clone(), c.domain.clone())) {
                            Ok(c)
                        } else {
                            Err(DbError::BadUser(format!(
                                "line {}: {}@{} appears twice in the file",
                                i + 1,
                                c.username,
                                c.domain
                            )))
                        }
                    })
                })
            });
            let added = pool.subscriber_import(rows).await?;
            Ok(format!("added {added} subscribers\n"))
        }
        (UserCmd::List, _) => Ok(pool
            .subscriber_list()
            .await?
            .iter()
            .map(|user| aor(user) + "\n")
            .collect()),
        // run_user pairs every command but List with its target.
        (_, None) => Err(DbError::BadUser("missing user".to_owned())),
    }
}

/// One line of an import file: `None` for blank lines, comments and a sipp
/// CSV's first line.
fn import_line(i: usize, line: &str) -> Option<Result<Credentials, DbError>> {
    if line.is_empty()
        || line.starts_with('#')
        || (i == 0 && matches!(line, "SEQUENTIAL" | "RANDOM" | "USER" | "RANDOM_ONCE"))
    {
        return None;
    }
    let fields: Vec<&str> = line.split(';').map(str::trim).collect();
    let (user, password) = match fields.as_slice() {
        [u, p] => ((*u).to_string(), *p),
        [u, d, p, ..] => (format!("{u}@{d}"), *p),
        _ => return Some(Err(DbError::BadUser(format!("line {}: `{line}`", i + 1)))),
    };
    Some(check_field("password", password).and_then(|()| {
        let (name, domain) = split_user(&user, None)?;
        Ok(credentials(name, domain, password.to_owned()))
    }))
}

async fn db_on(pool: &DbPool, cmd: DbCmd) -> Result<String, DbError> {
    if cmd == DbCmd::Init {
        init_schema(pool).await?;
    }
    let mut out = String::new();
    if cmd == DbCmd::Init {
        out.push_str(&format!(
            "schema ready ({})\n",
            dialect_name(pool.dialect())
        ));
    }
    for (table, version) in pool.versions().await? {
        out.push_str(&format!("{table} {version}\n"));
    }
    Ok(out)
}

fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "sqlite",
        Dialect::Postgres => "postgres",
        Dialect::MySql => "mysql",
    }
}

/// Builds a current-thread runtime, connects (`db init` must work on an empty
/// database, so only SQLite gets its schema here) and runs `work`.
fn block_on<F, Fut>(db_url: &str, work: F) -> Result<String, DbError>
where
    F: FnOnce(Result<DbPool, DbError>) -> Fut,
    Fut: std::future::Future<Output = Result<String, DbError>>,
{
    refuse_inside_runtime()?;
    let cfg = DbConfig {
        max_connections: 1,
        query_timeout_ms: CLI_QUERY_TIMEOUT_MS,
        ..DbConfig::with_url(db_url)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DbError::Runtime)?;
    runtime.block_on(async {
        let pool = DbPool::connect(&cfg).await;
        let pool = match pool {
            Ok(pool) if pool.dialect() == Dialect::Sqlite => {
                init_schema(&pool).await.map(|()| pool)
            }
            other => other,
        };
        work(pool).await
    })
}

fn md5_hex(parts: &[&str]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(part.as_bytes());
    }
    let mut out = String::with_capacity(32);
    for byte in md5.finalize() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_vectors() {
        // RFC 1321 appendix A.5.
        assert_eq!(md5_hex(&[""]), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(&["a"]), "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(
            md5_hex(&["message ", "digest"]),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
        // RFC 2617 section 3.5: HA1 of Mufasa:testrealm@host.com:Circle Of Life.
        assert_eq!(
            ha1("Mufasa", "testrealm@host.com", "Circle Of Life"),
            "939e7578ed9e3c518a452acee763bce9"
        );
    }

    #[test]
    fn split_user_cases() {
        assert_eq!(
            split_user("alice@example.com", None).ok(),
            Some(("alice".to_owned(), "example.com".to_owned()))
        );
        assert_eq!(
            split_user("alice", Some("d.org")).ok(),
            Some(("alice".to_owned(), "d.org".to_owned()))
        );
        assert_eq!(
            split_user("alice@x.net", Some("d.org")).ok(),
            Some(("alice".to_owned(), "x.net".to_owned()))
        );
        for bad in ["alice", "@x", "alice@", "a@b@c", "al ice@x", "\u{7f}@x"] {
            assert!(
                matches!(split_user(bad, None), Err(DbError::BadUser(_))),
                "{bad}"
            );
        }
        let long = format!("{}@x", "a".repeat(FIELD_CHARS_MAX + 1));
        assert!(split_user(&long, None).is_err());
    }

    #[test]
    fn bad_arguments_fail_before_connecting() {
        // An unreachable URL would time out; a bad argument must not get there.
        let url = "postgres://nobody@127.0.0.1:1/none";
        let cmd = UserCmd::Add {
            user: "alice@x".to_owned(),
            password: String::new(),
        };
        assert!(matches!(run_user(url, None, cmd), Err(DbError::BadUser(_))));
        let cmd = UserCmd::Rm {
            user: "alice".to_owned(),
        };
        assert!(matches!(run_user(url, None, cmd), Err(DbError::BadUser(_))));
    }

    #[test]
    fn bad_url_is_reported() {
        assert!(matches!(
            run_db("oracle://x", DbCmd::Version),
            Err(DbError::BadUrl(_))
        ));
    }
}
