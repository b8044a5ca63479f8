//! KSR.sqlops, KSR.ndb_redis, KSR.jsonrpcs and KSR.sipjson through the real
//! binary running tests/lua/sqlops_redis.lua: calls steered to one of two
//! UASes by a routing table in SQLite, PostgreSQL and MariaDB and by a Redis
//! key (checked on the wire at the UAS), `$dbr` / `$redis` / `$jsonrpl`
//! values reported by the script in headers of a 200 to OPTIONS, and a
//! database or Redis that hangs (a TCP relay that stops forwarding) failing
//! the route after the configured timeout while the shard keeps answering.
//!
//! Each test makes its own table (in its own database for PostgreSQL and
//! MariaDB) or Redis key prefix and removes it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn script() -> String {
    std::fs::read_to_string(format!("{ROOT}/tests/lua/sqlops_redis.lua")).unwrap()
}

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Two UASes, each a UDP socket the test reads.
struct Uas {
    a: UdpSocket,
    b: UdpSocket,
}

impl Uas {
    fn new() -> Uas {
        Uas {
            a: client(),
            b: client(),
        }
    }
    fn addr(s: &UdpSocket) -> String {
        s.local_addr().unwrap().to_string()
    }
}

/// A reply to `req` with the request's Via, From, To (tagged), Call-ID, CSeq.
fn reply_to(req: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in req.split("\r\n") {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out.push_str(&format!("{line}\r\n")),
            "to" => out.push_str(&format!("{line};tag=uas1\r\n")),
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// The first final reply on `sock` (provisional ones skipped).
fn final_reply(sock: &UdpSocket) -> Option<String> {
    loop {
        let r = recv(sock)?;
        if status(&r) >= 200 {
            return Some(r);
        }
    }
}

/// No datagram on `sock` within a short wait.
fn quiet(sock: &UdpSocket) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let got = recv(sock);
    sock.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    got.is_none()
}

/// An INVITE for `user` with `X-Lookup: how` reaches `expect` (and not
/// `other`); the UAS answers 200, which reaches the caller.
fn call_reaches(srv: &Server, how: &str, user: &str, expect: &UdpSocket, other: &UdpSocket) {
    let uac = client();
    let ruri = format!("sip:{user}@{}", srv.addr);
    let msg = request(&uac, "INVITE", &ruri, &format!("X-Lookup: {how}\r\n"));
    uac.send_to(msg.as_bytes(), srv.addr).unwrap();
    let got = recv(expect).unwrap_or_else(|| {
        panic!(
            "the INVITE for {user} ({how}) did not reach its UAS:\n{}",
            srv.log()
        )
    });
    assert!(got.starts_with(&format!("INVITE {ruri} SIP/2.0")), "{got}");
    assert!(quiet(other), "the other UAS got a message too");
    expect
        .send_to(reply_to(&got, 200, "OK").as_bytes(), srv.addr)
        .unwrap();
    let back = final_reply(&uac).expect("the 200 reaches the caller");
    assert_eq!(status(&back), 200, "{back}");
}

/// The final reply to an OPTIONS or INVITE sent to `user`.
fn ask(srv: &Server, method: &str, user: &str, extra: &str) -> String {
    let uac = client();
    let msg = request(&uac, method, &format!("sip:{user}@{}", srv.addr), extra);
    uac.send_to(msg.as_bytes(), srv.addr).unwrap();
    final_reply(&uac).unwrap_or_else(|| panic!("no reply to {method} {user}:\n{}", srv.log()))
}

fn h(msg: &str, name: &str) -> String {
    header(msg, name).unwrap_or_else(|| panic!("no {name} in:\n{msg}"))
}

fn stat(srv: &Server, name: &str) -> i64 {
    let v = rpc(srv.rpc_port, "stats.fetch", serde_json::json!([name]));
    v[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
}

// ------------------------------------------------------------------ SQL

/// Runs `statements` on `url` (the test's own database).
fn sql_exec(url: &str, statements: &[String]) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        macro_rules! run {
            ($conn:ty, $url:expr) => {{
                let mut c = <$conn>::connect($url)
                    .await
                    .unwrap_or_else(|e| panic!("{url}: {e}"));
                for s in statements {
                    sqlx::query(s)
                        .execute(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("{s}: {e}"));
                }
            }};
        }
        if url.starts_with("postgres") {
            run!(sqlx::PgConnection, url)
        } else if url.starts_with("mysql") {
            run!(sqlx::MySqlConnection, url)
        } else {
            let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
            let mut c = sqlx::SqliteConnection::connect_with(&opts.create_if_missing(true))
                .await
                .unwrap();
            for s in statements {
                sqlx::query(s).execute(&mut c).await.unwrap();
            }
        }
    });
}

fn routing_table(url: &str, table: &str, uas: &Uas) {
    sql_exec(
        url,
        &[
            format!(
                "CREATE TABLE {table} (prefix VARCHAR(64) PRIMARY KEY, dst VARCHAR(128) NOT NULL, \
                 weight INTEGER NOT NULL, note VARCHAR(64))"
            ),
            format!(
                "INSERT INTO {table} (prefix, dst, weight, note) VALUES ('alice', '{}', 10, NULL)",
                Uas::addr(&uas.a)
            ),
            format!(
                "INSERT INTO {table} (prefix, dst, weight, note) VALUES ('bob', '{}', 20, 'second')",
                Uas::addr(&uas.b)
            ),
        ],
    );
}

fn sql_server(url: &str, table: &str, extra: &str, cores: &str) -> Server {
    let script = script();
    Server::start(ServerOpts {
        script: Some(&script),
        cores,
        core_toml: &format!("defines = [\"RT_TABLE={table}\", \"RKEY=unused:\"]\n"),
        extra_toml: &format!(
            "[[sqlops]]\nname = \"rt\"\nurl = \"{url}\"\nquery_timeout_ms = 1000\n{extra}"
        ),
        ..Default::default()
    })
}

fn sql_steering(url: &str) {
    let uas = Uas::new();
    let table = unique("rt");
    routing_table(url, &table, &uas);
    let srv = sql_server(url, &table, "", "2");

    call_reaches(&srv, "sql", "alice", &uas.a, &uas.b);
    call_reaches(&srv, "sql", "bob", &uas.b, &uas.a);
    let none = ask(&srv, "INVITE", "nobody", "X-Lookup: sql\r\n");
    assert_eq!(status(&none), 404, "{none}");
    assert_eq!(h(&none, "X-Sql-Rc"), "2");

    let r = ask(&srv, "OPTIONS", "sqlinfo", "");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(h(&r, "X-Rc"), "1");
    assert_eq!(h(&r, "X-Rows"), "2");
    assert_eq!(h(&r, "X-Cols"), "4");
    assert_eq!(h(&r, "X-Colname"), "dst");
    assert_eq!(h(&r, "X-Cell"), Uas::addr(&uas.b));
    assert_eq!(h(&r, "X-Weight-Type"), "number");
    assert_eq!(h(&r, "X-Weight-Sum"), "30");
    assert_eq!(h(&r, "X-Null"), "1,0");
    assert_eq!(h(&r, "X-Num"), "2x4");
    assert_eq!(h(&r, "X-Get"), "nil,,0");
    assert_eq!(h(&r, "X-Freed-Rows"), "0");
    assert_eq!(h(&r, "X-None"), "2");
    assert_eq!(h(&r, "X-Bad"), "-1");
    assert_eq!(h(&r, "X-Nocon"), "-1");
    assert_eq!(h(&r, "X-Xq"), "1");
    assert_eq!(h(&r, "X-Xavp"), "alice,bob");
    assert_eq!(h(&r, "X-Pvq"), "1");
    assert_eq!(h(&r, "X-Pv"), format!("{}/20", Uas::addr(&uas.b)));
    assert_eq!(h(&r, "X-Upd"), "2");
    assert_eq!(h(&r, "X-Sqlrows"), "2");

    // counted and timed: 3 lookups + 6 queries of sqlinfo (the one naming
    // no connection is an error, not a query)
    assert_eq!(stat(&srv, "sqlops.queries"), 9);
    assert_eq!(stat(&srv, "sqlops.errors"), 2);
    let lat = rpc(srv.rpc_port, "kemi.route_latency", serde_json::json!([]));
    assert!(lat.to_string().contains("sqlops_wait"), "{lat}");
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}

#[test]
fn sql_lookup_steers_calls_sqlite() {
    let dir = TempDir::new("sqlops");
    let url = format!("sqlite://{}", dir.path("routes.db").display());
    sql_steering(&url);
}

#[test]
fn sql_lookup_steers_calls_postgres() {
    let db = TestDb::postgres();
    sql_steering(&db.url);
}

#[test]
fn sql_lookup_steers_calls_mariadb() {
    let db = TestDb::mariadb();
    sql_steering(&db.url);
}

/// A sipp callee on `port` (`uas-call.xml`: checks the proxy's Via and
/// Record-Route) for `calls` calls.
fn sipp_uas(dir: &TempDir, port: u16, proxy: SocketAddr, calls: u32) -> Reaped {
    let child = Command::new("sipp")
        .args(["-sf", &format!("{ROOT}/tests/sipp/uas-call.xml")])
        .args([
            "-set",
            "proxy",
            &proxy.to_string(),
            "-m",
            &calls.to_string(),
        ])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-nostdin", "-timeout", "40s", "-timeout_error"])
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed: scripts/deps.sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "sipp did not bind {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Reaped(child)
}

/// A child process killed (by its id) if the test ends before it does.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A sipp caller making `calls` whole calls (INVITE, 200, ACK, BYE) to
/// `user`; its exit code (0: every call succeeded).
fn sipp_uac(dir: &TempDir, proxy: SocketAddr, user: &str, calls: u32) -> Option<i32> {
    Command::new("sipp")
        .arg(proxy.to_string())
        .args(["-sf", &format!("{ROOT}/tests/sipp/uac-call.xml")])
        .args(["-s", user, "-m", &calls.to_string(), "-d", "50"])
        .args(["-i", "127.0.0.1", "-p", &free_udp_port().to_string()])
        .args(["-nostdin", "-timeout", "30s", "-timeout_error"])
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp is installed")
        .code()
}

/// Waits for a sipp process to end within `limit`; its exit code.
fn wait_exit(child: &mut Reaped, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            return st.code();
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sql_lookup_steers_sipp_calls() {
    let dir = TempDir::new("sqlops-sipp");
    let url = format!("sqlite://{}", dir.path("routes.db").display());
    let (port_a, port_b) = (free_udp_port(), free_udp_port());
    let table = unique("rt");
    sql_exec(
        &url,
        &[
            format!(
                "CREATE TABLE {table} (prefix VARCHAR(64) PRIMARY KEY, dst VARCHAR(128), \
                 weight INTEGER, note VARCHAR(64))"
            ),
            format!("INSERT INTO {table} VALUES ('alice', '127.0.0.1:{port_a}', 1, NULL)"),
            format!("INSERT INTO {table} VALUES ('bob', '127.0.0.1:{port_b}', 1, NULL)"),
        ],
    );
    let srv = sql_server(&url, &table, "", "2");
    let mut uas_a = sipp_uas(&dir, port_a, srv.addr, 3);
    let mut uas_b = sipp_uas(&dir, port_b, srv.addr, 2);
    assert_eq!(
        sipp_uac(&dir, srv.addr, "alice", 3),
        Some(0),
        "{}",
        srv.log()
    );
    assert_eq!(
        wait_exit(&mut uas_a, Duration::from_secs(10)),
        Some(0),
        "alice's 3 calls reach UAS A"
    );
    assert!(
        uas_b.0.try_wait().unwrap().is_none(),
        "UAS B must not have had alice's calls"
    );
    assert_eq!(sipp_uac(&dir, srv.addr, "bob", 2), Some(0), "{}", srv.log());
    assert_eq!(
        wait_exit(&mut uas_b, Duration::from_secs(10)),
        Some(0),
        "bob's 2 calls reach UAS B"
    );
    // one lookup per INVITE; ACK and BYE follow the recorded route
    assert_eq!(stat(&srv, "sqlops.queries"), 5);
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}

#[test]
fn sql_results_are_bounded() {
    let dir = TempDir::new("sqlops");
    let url = format!("sqlite://{}", dir.path("routes.db").display());
    let uas = Uas::new();
    let table = unique("rt");
    routing_table(&url, &table, &uas);
    // one row kept per result, two result names per shard
    let srv = sql_server(
        &url,
        &table,
        "max_rows = 1\n[db]\nsqlops_results_maxsize = 1\n",
        "1",
    );
    let r = ask(&srv, "OPTIONS", "sqlinfo", "");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(h(&r, "X-Rows"), "1", "max_rows keeps one row");
    // the result "ra" is the only one allowed: sql_xquery/pvquery use none,
    // so only the routing lookup's "route" result is refused
    let refused = ask(&srv, "INVITE", "alice", "X-Lookup: sql\r\n");
    assert_eq!(status(&refused), 503, "{refused}");
    assert_eq!(h(&refused, "X-Sql-Rc"), "-1");
    assert!(stat(&srv, "sqlops.rows_truncated") >= 1);
    assert_eq!(stat(&srv, "sqlops.results_full"), 1);
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}

// ---------------------------------------------------------------- Redis

/// The test's own keys, deleted when dropped.
struct RedisKeys {
    prefix: String,
    con: redis::Connection,
}

impl RedisKeys {
    fn new() -> RedisKeys {
        let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
        let con = client.get_connection().expect("Redis on 127.0.0.1:6379");
        RedisKeys {
            prefix: format!("{}:", unique("sipshard_test")),
            con,
        }
    }
    fn set(&mut self, key: &str, value: &str) {
        redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .query::<()>(&mut self.con)
            .unwrap();
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut self.con)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(keys).query::<i64>(&mut self.con);
        }
    }
}

fn redis_server(prefix: &str, server: &str, extra: &str, cores: &str) -> Server {
    let script = script();
    Server::start(ServerOpts {
        script: Some(&script),
        cores,
        core_toml: &format!("defines = [\"RT_TABLE=unused\", \"RKEY={prefix}\"]\n"),
        extra_toml: &format!("[[redis]]\nserver = \"{server}\"\n{extra}"),
        ..Default::default()
    })
}

#[test]
fn redis_lookup_steers_calls() {
    let uas = Uas::new();
    let mut keys = RedisKeys::new();
    keys.set("alice", &Uas::addr(&uas.a));
    keys.set("bob", &Uas::addr(&uas.b));
    // Kamailio's attribute form of the server
    let srv = redis_server(
        &keys.prefix,
        "name=r1;addr=127.0.0.1;port=6379;db=0",
        "",
        "2",
    );
    call_reaches(&srv, "redis", "alice", &uas.a, &uas.b);
    call_reaches(&srv, "redis", "bob", &uas.b, &uas.a);
    let none = ask(&srv, "INVITE", "nobody", "X-Lookup: redis\r\n");
    assert_eq!(status(&none), 404, "{none}");
    assert_eq!(h(&none, "X-Redis-Rc"), "1");

    let r = ask(&srv, "OPTIONS", "redisinfo", "");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(h(&r, "X-Set"), "1");
    assert_eq!(h(&r, "X-Set-Type"), "5");
    assert_eq!(h(&r, "X-Set-Info"), "OK");
    assert_eq!(h(&r, "X-Spaced"), "two words");
    assert_eq!(h(&r, "X-Incr"), "2/3");
    assert_eq!(h(&r, "X-List"), "2/2/ab/1");
    assert_eq!(h(&r, "X-Err"), "-1");
    assert_eq!(h(&r, "X-Err-Type"), "6");
    assert!(
        h(&r, "X-Err-Info").contains("not an integer"),
        "{}",
        h(&r, "X-Err-Info")
    );
    assert_eq!(h(&r, "X-Nil"), "4/nil");
    assert_eq!(h(&r, "X-Free"), "1/nil");
    assert_eq!(h(&r, "X-Nosrv"), "-1");
    // the keys the script wrote are under the test's prefix
    let written: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}info*", keys.prefix))
        .query(&mut keys.con)
        .unwrap();
    assert_eq!(written.len(), 4, "{written:?}");
    assert_eq!(stat(&srv, "ndb_redis.commands"), 3 + 9);
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}

// ------------------------------------------------------ jsonrpcs, sipjson

#[test]
fn jsonrpcs_exec_and_sipjson() {
    let script = script();
    let srv = Server::start(ServerOpts {
        script: Some(&script),
        cores: "2",
        ..Default::default()
    });
    let r = ask(&srv, "OPTIONS", "rpc", "");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(h(&r, "X-Exec"), "1");
    assert_eq!(h(&r, "X-Code"), "200");
    assert_eq!(h(&r, "X-Text"), "OK");
    assert!(h(&r, "X-Version").starts_with("sipshard "), "{r}");
    assert_eq!(h(&r, "X-Id"), "7");
    assert_eq!(h(&r, "X-Stats"), "1");
    assert_eq!(h(&r, "X-Stats-Has"), "yes");
    assert_eq!(h(&r, "X-Missing"), "-32601");
    assert_eq!(h(&r, "X-Badjson"), "-1");

    let uac = client();
    let ruri = format!("sip:json@{}", srv.addr);
    let body = "hello body";
    let msg = request(&uac, "OPTIONS", &ruri, "Content-Type: text/plain\r\n")
        .replace("Content-Length: 0\r\n\r\n", "")
        + &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    let r = exchange(&uac, srv.addr, msg.as_bytes()).expect("reply");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    let cseq = header(&msg, "CSeq").unwrap();
    let cseq_num = cseq.split_whitespace().next().unwrap();
    let call_id = header(&msg, "Call-ID").unwrap();
    assert_eq!(
        h(&r, "X-J"),
        format!(
            "2|OPTIONS|udp|json|127.0.0.1|tester|{call_id}|json|{cseq_num}|{body}|sipshard-tests|number|0"
        )
    );
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}

// ---------------------------------------------------------------- faults

const PASS: u8 = 0;
const PAUSE: u8 = 1;

/// A TCP relay that passes bytes both ways, or holds them (the server
/// hangs). Connections end when the relay is dropped.
struct Relay {
    port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            port,
            mode: Arc::new(AtomicU8::new(PASS)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, stop, conns) = (relay.mode.clone(), relay.stop.clone(), relay.conns.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let (mode, stop) = (mode.clone(), stop.clone());
                    std::thread::spawn(move || copy(from, to, mode, stop));
                }
                let mut c = conns.lock().unwrap();
                c.push(client);
                c.push(server);
            }
        });
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, mode: Arc<AtomicU8>, stop: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if mode.load(Ordering::SeqCst) == PAUSE {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Bytes read just as the pause began are held too.
                while mode.load(Ordering::SeqCst) == PAUSE && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

/// With the relay paused, the lookup INVITE is answered 503 after about
/// `timeout_ms`, while an OPTIONS sent after it on the same (single) shard
/// is answered at once: the waiting route never holds the shard.
fn hang_fails_after_timeout(srv: &Server, how: &str, relay: &Relay, timeout_ms: u64) {
    relay.mode.store(PAUSE, Ordering::SeqCst);
    let uac = client();
    uac.set_read_timeout(Some(Duration::from_millis(5000)))
        .unwrap();
    let msg = request(
        &uac,
        "INVITE",
        &format!("sip:alice@{}", srv.addr),
        &format!("X-Lookup: {how}\r\n"),
    );
    let t0 = Instant::now();
    uac.send_to(msg.as_bytes(), srv.addr).unwrap();
    // the shard answers other requests meanwhile
    let ping = client();
    let keepalive = exchange(
        &ping,
        srv.addr,
        request(&ping, "OPTIONS", &format!("sip:ping@{}", srv.addr), "").as_bytes(),
    )
    .expect("OPTIONS answered while a route waits");
    assert_eq!(status(&keepalive), 200, "{keepalive}");
    assert!(
        t0.elapsed() < Duration::from_millis(timeout_ms),
        "the keepalive waited for the hung lookup"
    );
    let failed = final_reply(&uac)
        .unwrap_or_else(|| panic!("the hung lookup ends in a reply:\n{}", srv.log()));
    let waited = t0.elapsed();
    assert_eq!(status(&failed), 503, "{failed}");
    assert!(
        waited >= Duration::from_millis(timeout_ms - 50),
        "failed before the timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(timeout_ms + 2000),
        "failed long after the timeout: {waited:?}"
    );
    relay.mode.store(PASS, Ordering::SeqCst);
}

#[test]
fn hanging_sql_fails_the_route_after_the_timeout() {
    let db = TestDb::postgres();
    let uas = Uas::new();
    let table = unique("rt");
    routing_table(&db.url, &table, &uas);
    let relay = Relay::start("127.0.0.1:5432".parse().unwrap());
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port));
    let script = script();
    let srv = Server::start(ServerOpts {
        script: Some(&script),
        cores: "1",
        core_toml: &format!("defines = [\"RT_TABLE={table}\"]\n"),
        extra_toml: &format!(
            "[[sqlops]]\nname = \"rt\"\nurl = \"{url}\"\nquery_timeout_ms = 700\n"
        ),
        ..Default::default()
    });
    call_reaches(&srv, "sql", "alice", &uas.a, &uas.b);
    hang_fails_after_timeout(&srv, "sql", &relay, 700);
    assert!(stat(&srv, "sqlops.timeouts") >= 1);
    drop(relay);
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}

#[test]
fn hanging_redis_fails_the_route_after_the_timeout() {
    let uas = Uas::new();
    let mut keys = RedisKeys::new();
    keys.set("alice", &Uas::addr(&uas.a));
    let relay = Relay::start("127.0.0.1:6379".parse().unwrap());
    let srv = redis_server(
        &keys.prefix,
        &format!("127.0.0.1:{}", relay.port),
        "name = \"r1\"\ncmd_timeout_ms = 600\n",
        "1",
    );
    call_reaches(&srv, "redis", "alice", &uas.a, &uas.b);
    hang_fails_after_timeout(&srv, "redis", &relay, 600);
    assert!(stat(&srv, "ndb_redis.timeouts") >= 1);
    drop(relay);
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
}
