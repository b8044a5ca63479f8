//! `sipshard user import` of 100,000 users, on each backend: checked by
//! count and by real digest authentications (REGISTER through the running
//! binary with the default script) for a sample of them; an import that
//! repeats a user adds nothing.

mod common;

use std::io::Write;

use common::*;

const DOMAIN: &str = "example.com";
const USERS: usize = 100_000;

fn write_users(path: &std::path::Path, from: usize, to: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    // A sipp injection file: the first line and `name;domain;password`.
    writeln!(f, "SEQUENTIAL").unwrap();
    for i in from..to {
        if i % 2 == 0 {
            writeln!(f, "u{i};{DOMAIN};pw{i}").unwrap();
        } else {
            writeln!(f, "u{i}@{DOMAIN};pw{i}").unwrap();
        }
    }
}

fn user_count(url: &str) -> usize {
    sipshard(&["user", "list", "--db", url]).lines().count()
}

fn import(db: TestDb) {
    sipshard(&["db", "init", "--db", &db.url]);
    let dir = TempDir::new("import");
    let file = dir.path("users.csv");
    write_users(&file, 0, USERS);
    let out = sipshard(&["user", "import", file.to_str().unwrap(), "--db", &db.url]);
    assert_eq!(out, format!("added {USERS} subscribers\n"));
    assert_eq!(user_count(&db.url), USERS);

    // Repeating one user (the last line) refuses the whole file.
    let again = dir.path("again.csv");
    write_users(&again, USERS - 1, USERS + 10);
    let out = std::process::Command::new(bin())
        .args(["user", "import", again.to_str().unwrap(), "--db", &db.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing added"), "{err}");
    assert_eq!(user_count(&db.url), USERS);

    // A user twice in one file is refused before the database sees it.
    let twice = dir.path("twice.csv");
    std::fs::write(
        &twice,
        "x1@example.com;a\nx2@example.com;b\nx1@example.com;c\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["user", "import", twice.to_str().unwrap(), "--db", &db.url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("appears twice"),
        "{err}"
    );
    assert_eq!(user_count(&db.url), USERS);

    // A sample authenticates through the real server; a wrong password
    // does not.
    let toml = format!("[db]\nurl = \"{}\"\n[auth]\nsecret = \"k\"\n", db.url);
    let srv = Server::start(ServerOpts {
        extra_toml: &toml,
        ..Default::default()
    });
    let c = client();
    for (n, i) in [0, 1, 4_999, 50_000, 77_777, USERS - 1]
        .into_iter()
        .enumerate()
    {
        let user = format!("u{i}");
        let r = register_with_auth(
            &c,
            srv.addr,
            &user,
            DOMAIN,
            &format!("pw{i}"),
            &format!("imp-{n}"),
            1,
            &format!("Contact: <sip:{user}@10.0.0.1>\r\n"),
        );
        assert_eq!(status(&r), 200, "{user}: {r}");
    }
    let r = register_with_auth(
        &c,
        srv.addr,
        "u12",
        DOMAIN,
        "pw13",
        "imp-bad",
        1,
        "Contact: <sip:u12@10.0.0.1>\r\n",
    );
    assert_ne!(status(&r), 200, "{r}");
}

#[test]
fn import_100k_sqlite() {
    import(TestDb::sqlite());
}

#[test]
fn import_100k_postgres() {
    import(TestDb::postgres());
}

#[test]
fn import_100k_mariadb() {
    import(TestDb::mariadb());
}
