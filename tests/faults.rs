//! Faults: a database that hangs, drops or slows mid-run (a TCP relay the
//! test controls sits between sipshard and the machine's PostgreSQL or
//! MariaDB; the database service itself is never touched), `kill -9` and
//! SIGTERM with a persistent location table. Plus security basics: nonce
//! replay across shards, the control interface's token, and what the log
//! never shows.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const DOMAIN: &str = "example.com";

// ---------------------------------------------------------------- relay

const PASS: u8 = 0;
const PAUSE: u8 = 1;
const CUT: u8 = 2;
const SLOW: u8 = 3;

/// A TCP relay between sipshard and a database: passes bytes both ways, or
/// holds them (pause: the database hangs), or closes every connection and
/// refuses new ones (cut: the database is gone), or delays each chunk
/// (slow).
struct Relay {
    port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped on cut: copy loops of older connections close.
    generation: Arc<AtomicU64>,
    slow_ms: Arc<AtomicU64>,
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
            generation: Arc::new(AtomicU64::new(0)),
            slow_ms: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, generation, slow, stop, conns) = (
            relay.mode.clone(),
            relay.generation.clone(),
            relay.slow_ms.clone(),
            relay.stop.clone(),
            relay.conns.clone(),
        );
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
                if mode.load(Ordering::SeqCst) == CUT {
                    drop(client); // refused: the database is gone
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let gen = generation.load(Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let (mode, generation, slow) = (mode.clone(), generation.clone(), slow.clone());
                    std::thread::spawn(move || copy(from, to, mode, generation, gen, slow));
                }
                let mut c = conns.lock().unwrap();
                c.push(client);
                c.push(server);
            }
        });
        relay
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode == CUT {
            self.generation.fetch_add(1, Ordering::SeqCst);
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn slow(&self, ms: u64) {
        self.slow_ms.store(ms, Ordering::SeqCst);
        self.set(SLOW);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.set(CUT);
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: Arc<AtomicU8>,
    generation: Arc<AtomicU64>,
    gen: u64,
    slow: Arc<AtomicU64>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if generation.load(Ordering::SeqCst) != gen {
            break;
        }
        match mode.load(Ordering::SeqCst) {
            PAUSE => {
                // Hold everything: the peer's bytes wait in the kernel.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            CUT => break,
            _ => {}
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if mode.load(Ordering::SeqCst) == SLOW {
                    std::thread::sleep(Duration::from_millis(slow.load(Ordering::SeqCst)));
                }
                // A pause that began during the read holds these bytes too.
                while mode.load(Ordering::SeqCst) == PAUSE
                    && generation.load(Ordering::SeqCst) == gen
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if generation.load(Ordering::SeqCst) != gen || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------- helpers

/// The URL of `db` reached through `relay`.
fn via_relay(db: &TestDb, relay: &Relay) -> String {
    let at = db.url.find('@').unwrap();
    let slash = db.url.rfind('/').unwrap();
    format!(
        "{}@127.0.0.1:{}{}",
        &db.url[..at],
        relay.port,
        &db.url[slash..]
    )
}

fn upstream_of(db: &TestDb) -> SocketAddr {
    if db.url.starts_with("postgres") {
        "127.0.0.1:5432".parse().unwrap()
    } else {
        "127.0.0.1:3306".parse().unwrap()
    }
}

/// REGISTER first, location lookups answered 302 with the contact.
const REGISTRAR_SCRIPT: &str = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        KSR.registrar.save("location", 0)
        return KSR.x.exit()
    end
    local rc = KSR.registrar.lookup("location")
    if rc < 0 then
        KSR.sl.sl_send_reply(404, "Not Found")
        return KSR.x.exit()
    end
    KSR.hdr.append_to_reply("Contact: <" .. (KSR.pv.get("$ru") or "") .. ">\r\n")
    KSR.sl.sl_send_reply(302, "Moved Temporarily")
end
"#;

fn start(script: &str, db_url: &str, extra: &str) -> Server {
    let toml = format!("[db]\nurl = \"{db_url}\"\n{extra}");
    Server::start(ServerOpts {
        script: Some(script),
        cores: "2",
        extra_toml: &toml,
        ..Default::default()
    })
}

/// Rows in the `location` table, read straight from the database.
fn location_rows(url: &str) -> Vec<(String, String)> {
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sql = "SELECT username, contact FROM location";
        let rows: Vec<(String, String)> = if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        } else {
            let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
            sqlx::query(sql)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        };
        rows
    })
}

/// Waits until the location table holds `n` rows; their count at the end.
fn wait_rows(url: &str, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let have = location_rows(url).len();
        if have >= n || Instant::now() > deadline {
            return have;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A REGISTER without credentials (the registrar script saves at once).
fn plain_register(sock: &UdpSocket, user: &str, n: u32) -> String {
    register_msg(
        sock,
        user,
        DOMAIN,
        &format!("reg-{user}-{n}"),
        n,
        &format!(
            "Contact: <sip:{user}@10.1.0.{}:5060>\r\nExpires: 600\r\n",
            n % 250
        ),
    )
}

/// Sends REGISTERs for `users` at once, then collects the replies: the
/// users answered 200.
fn register_all(srv: &Server, users: &[String]) -> Vec<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(3000)))
        .unwrap();
    for (i, u) in users.iter().enumerate() {
        sock.send_to(plain_register(&sock, u, i as u32 + 1).as_bytes(), srv.addr)
            .unwrap();
    }
    let mut ok = Vec::new();
    for _ in users {
        let Some(r) = recv(&sock) else { break };
        if status(&r) == 200 {
            let to = header(&r, "To").unwrap_or_default();
            if let Some(u) = users.iter().find(|u| to.contains(&format!("sip:{u}@"))) {
                ok.push(u.clone());
            }
        }
    }
    ok
}

/// A MESSAGE to `user`: 302 with the contact when the binding is known.
fn lookup(srv: &Server, user: &str) -> Option<String> {
    let s = client();
    let r = exchange(
        &s,
        srv.addr,
        request(&s, "MESSAGE", &format!("sip:{user}@{DOMAIN}"), "").as_bytes(),
    )?;
    (status(&r) == 302).then(|| header(&r, "Contact").unwrap_or_default())
}

fn counter(srv: &Server, name: &str) -> u64 {
    let v = rpc(srv.rpc_port, "stats.fetch", serde_json::json!([name]));
    v.get(name).and_then(|x| x.as_u64()).unwrap_or(0)
}

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

// ------------------------------------------------- database faults: auth

/// Credentials: a hung database answers 500 within `db_timeout_ms`, a user
/// whose credentials are cached keeps registering, and the database comes
/// back on its own.
fn auth_survives_hang(db: TestDb) {
    db.init(&[
        ("alice@example.com", "secret-a"),
        ("bob@example.com", "secret-b"),
    ]);
    let relay = Relay::start(upstream_of(&db));
    let url = via_relay(&db, &relay);
    let srv = start(
        include_str!("../etc/sipshard.lua"),
        &url,
        "[auth]\nsecret = \"k\"\ndb_timeout_ms = 500\n",
    );
    let c = client();
    let contact = "Contact: <sip:alice@10.0.0.1>\r\n";
    let r = register_with_auth(&c, srv.addr, "alice", DOMAIN, "secret-a", "a-1", 1, contact);
    assert_eq!(status(&r), 200, "{r}");

    relay.set(PAUSE);
    // bob is not cached: the lookup hangs, the answer is a 500 in time
    let started = Instant::now();
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "secret-b",
        "b-1",
        1,
        "Contact: <sip:bob@10.0.0.2>\r\n",
    );
    let took = started.elapsed();
    assert_eq!(status(&r), 500, "{r}");
    assert!(
        took < Duration::from_millis(1_500),
        "500 after {took:?} (db_timeout_ms = 500)"
    );
    // alice is cached: still 200 while the database hangs
    let r = register_with_auth(&c, srv.addr, "alice", DOMAIN, "secret-a", "a-2", 1, contact);
    assert_eq!(status(&r), 200, "cached credentials: {r}");

    relay.set(CUT);
    let started = Instant::now();
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "secret-b",
        "b-2",
        1,
        "Contact: <sip:bob@10.0.0.2>\r\n",
    );
    assert_eq!(status(&r), 500, "{r}");
    assert!(started.elapsed() < Duration::from_millis(1_500));

    // a slow database (every chunk 1.5 s late, past db_timeout_ms): bob's
    // lookup is answered 500 in time, alice's cached credentials still work
    relay.slow(1_500);
    let started = Instant::now();
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "secret-b",
        "b-slow",
        1,
        "Contact: <sip:bob@10.0.0.2>\r\n",
    );
    let took = started.elapsed();
    assert_eq!(status(&r), 500, "slow database: {r}");
    assert!(
        took < Duration::from_millis(1_500),
        "500 after {took:?} with a slow database (db_timeout_ms = 500)"
    );
    let r = register_with_auth(&c, srv.addr, "alice", DOMAIN, "secret-a", "a-3", 1, contact);
    assert_eq!(status(&r), 200, "cached credentials, slow database: {r}");

    relay.set(PASS);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 3;
    loop {
        let r = register_with_auth(
            &c,
            srv.addr,
            "bob",
            DOMAIN,
            "secret-b",
            &format!("b-{n}"),
            1,
            "Contact: <sip:bob@10.0.0.2>\r\n",
        );
        if status(&r) == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob never authenticated after the database returned: {r}\n{}",
            srv.log()
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(counter(&srv, "auth.db_timeouts") >= 3);
    assert!(
        srv.log().contains("credentials not read"),
        "failure logged: {}",
        srv.log()
    );
}

#[test]
fn auth_survives_db_hang_postgres() {
    auth_survives_hang(TestDb::postgres());
}

#[test]
fn auth_survives_db_hang_mariadb() {
    auth_survives_hang(TestDb::mariadb());
}

// ---------------------------------------------- database faults: usrloc

/// usrloc with the database hung (pause) or gone (cut): REGISTERs are
/// answered and looked up from memory, and every write reaches the
/// database once it returns.
fn usrloc_survives(db: TestDb, db_mode: u8, fault: u8) {
    db.init(&[]);
    let relay = Relay::start(upstream_of(&db));
    let url = via_relay(&db, &relay);
    let srv = start(
        REGISTRAR_SCRIPT,
        &url,
        &format!(
            "query_timeout_ms = 500\nretry_interval_ms = 300\n\
             [auth]\ndb_timeout_ms = 400\n\
             [registrar]\ndb_mode = {db_mode}\ntimer_interval_s = 1\n"
        ),
    );
    let before = users("pre", 5);
    assert_eq!(register_all(&srv, &before).len(), before.len());
    assert_eq!(wait_rows(&db.url, 5, Duration::from_secs(5)), 5);

    relay.set(fault);
    let during = users("down", 30);
    let started = Instant::now();
    let acked = register_all(&srv, &during);
    assert_eq!(
        acked.len(),
        during.len(),
        "every REGISTER answered 200 from memory\n{}",
        srv.log()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    for u in during.iter().take(5) {
        assert!(lookup(&srv, u).is_some(), "{u} found in memory");
    }
    // give the write-back timer and a retry or two time to fail
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(location_rows(&db.url).len(), 5, "nothing written yet");

    relay.set(PASS);
    let have = wait_rows(&db.url, 35, Duration::from_secs(15));
    assert_eq!(have, 35, "registrations lost: {}\n{}", 35 - have, srv.log());
    assert!(counter(&srv, "db.write_retries") > 0);
    assert_eq!(counter(&srv, "db.writes_dropped"), 0);
    assert!(
        srv.log().contains("will retry"),
        "failure logged: {}",
        srv.log()
    );
    let warnings = srv.log().matches("will retry").count();
    assert!(warnings < 20, "rate-limited: {warnings} lines");
    // and the database keeps what memory has: a restart restores it
    let (ok, _) = srv.stop();
    assert!(ok);
    let srv = start(
        REGISTRAR_SCRIPT,
        &db.url,
        &format!("[registrar]\ndb_mode = {db_mode}\n"),
    );
    for u in during.iter().step_by(7) {
        assert!(lookup(&srv, u).is_some(), "{u} restored");
    }
}

#[test]
fn usrloc_write_through_survives_hang_postgres() {
    usrloc_survives(TestDb::postgres(), 1, PAUSE);
}

#[test]
fn usrloc_write_back_survives_cut_postgres() {
    usrloc_survives(TestDb::postgres(), 2, CUT);
}

#[test]
fn usrloc_write_through_survives_cut_mariadb() {
    usrloc_survives(TestDb::mariadb(), 1, CUT);
}

#[test]
fn usrloc_write_back_survives_hang_mariadb() {
    usrloc_survives(TestDb::mariadb(), 2, PAUSE);
}

/// usrloc db_mode 3 (database only): lookups and saves read the database
/// first, so with the database hung or gone they fail the way Kamailio's do
/// (save answers 500, lookup returns -3 and the script answers 500) instead
/// of answering from memory; nothing is acknowledged that is not in the
/// database, and everything works again once it returns.
const DB_ONLY_SCRIPT: &str = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        KSR.registrar.save("location", 0)
        return KSR.x.exit()
    end
    local rc = KSR.registrar.lookup("location")
    if rc == -3 then
        KSR.sl.sl_send_reply(500, "Lookup Failed")
        return KSR.x.exit()
    elseif rc < 0 then
        KSR.sl.sl_send_reply(404, "Not Found")
        return KSR.x.exit()
    end
    KSR.hdr.append_to_reply("Contact: <" .. (KSR.pv.get("$ru") or "") .. ">\r\n")
    KSR.sl.sl_send_reply(302, "Moved Temporarily")
end
"#;

/// A MESSAGE to `user`: the reply's status.
fn lookup_status(srv: &Server, user: &str) -> Option<u16> {
    let s = client();
    let r = exchange(
        &s,
        srv.addr,
        request(&s, "MESSAGE", &format!("sip:{user}@{DOMAIN}"), "").as_bytes(),
    )?;
    Some(status(&r))
}

fn db_only_survives(db: TestDb, fault: u8) {
    db.init(&[]);
    let relay = Relay::start(upstream_of(&db));
    let url = via_relay(&db, &relay);
    let srv = start(
        DB_ONLY_SCRIPT,
        &url,
        "query_timeout_ms = 500
retry_interval_ms = 300
         [auth]
db_timeout_ms = 400
         [registrar]
db_mode = 3
timer_interval_s = 1
",
    );
    let before = users("pre", 5);
    assert_eq!(register_all(&srv, &before).len(), before.len());
    assert_eq!(wait_rows(&db.url, 5, Duration::from_secs(5)), 5);
    assert_eq!(lookup_status(&srv, "pre0"), Some(302));

    relay.set(fault);
    let during = users("down", 10);
    let started = Instant::now();
    let acked = register_all(&srv, &during);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Kamailio db_mode 3: the save fails (500), nothing is acknowledged
    assert!(
        acked.is_empty(),
        "acknowledged without the database: {acked:?}"
    );
    let started = Instant::now();
    assert_eq!(lookup_status(&srv, "pre1"), Some(500), "{}", srv.log());
    assert!(started.elapsed() < Duration::from_millis(1_500));

    relay.set(PASS);
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if lookup_status(&srv, "pre1") == Some(302) {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        back,
        "lookups work again once the database returns\n{}",
        srv.log()
    );
    let after = users("post", 5);
    let acked_after = register_all(&srv, &after);
    assert_eq!(acked_after.len(), after.len(), "{}", srv.log());
    // every acknowledged registration is in the database: none lost
    let rows = location_rows(&db.url);
    for u in before.iter().chain(&acked).chain(&acked_after) {
        assert!(rows.iter().any(|(user, _)| user == u), "{u} lost: {rows:?}");
    }
    for u in &during {
        assert!(
            !rows.iter().any(|(user, _)| user == u),
            "{u} refused yet stored"
        );
    }
}

#[test]
fn usrloc_db_only_hang_postgres() {
    db_only_survives(TestDb::postgres(), PAUSE);
}

#[test]
fn usrloc_db_only_cut_mariadb() {
    db_only_survives(TestDb::mariadb(), CUT);
}

/// Routes waiting for a hung database are bounded by `[shard]
/// max_inflight`: the excess is answered 503 at once and counted
/// (`core.inflight_limit`); the waiting ones get their 500 in time.
#[test]
fn suspended_auth_routes_are_bounded_by_max_inflight() {
    let db = TestDb::postgres();
    db.init(&[]);
    let relay = Relay::start(upstream_of(&db));
    let url = via_relay(&db, &relay);
    let srv = start(
        include_str!("../etc/sipshard.lua"),
        &url,
        "[auth]\nsecret = \"k\"\ndb_timeout_ms = 1000\n[shard]\nmax_inflight = 2\n",
    );
    let c = client();
    let r = exchange(
        &c,
        srv.addr,
        register_msg(&c, "u0", DOMAIN, "inflight-0", 1, "").as_bytes(),
    )
    .expect("challenge");
    assert_eq!(status(&r), 401, "{r}");
    let challenge = header(&r, "WWW-Authenticate").unwrap();
    relay.set(PAUSE);
    const N: usize = 10;
    for i in 1..=N {
        let user = format!("u{i}");
        let auth = digest_authorization(&challenge, &user, "pw", "REGISTER", "sip:example.com", 1);
        let m = register_msg(
            &c,
            &user,
            DOMAIN,
            &format!("inflight-{i}"),
            2,
            &format!("Authorization: {auth}\r\n"),
        );
        c.send_to(m.as_bytes(), srv.addr).unwrap();
    }
    let (mut busy, mut failed) = (0, 0);
    for _ in 0..N {
        let Some(r) = recv(&c) else { break };
        match status(&r) {
            503 => busy += 1,
            500 => failed += 1,
            s => panic!("unexpected {s}: {r}"),
        }
    }
    // two shards, two suspended routes each at most
    assert!(failed <= 4, "{failed} waited");
    assert_eq!(busy + failed, N, "every REGISTER answered");
    assert!(busy >= N - 4);
    assert_eq!(counter(&srv, "core.inflight_limit") as usize, busy);
    assert!(srv.log().contains("max_inflight"), "{}", srv.log());
    relay.set(PASS);
}

/// A slow database (every chunk delayed) still gets every write.
#[test]
fn usrloc_write_through_slow_database_postgres() {
    let db = TestDb::postgres();
    db.init(&[]);
    let relay = Relay::start(upstream_of(&db));
    let url = via_relay(&db, &relay);
    let srv = start(
        REGISTRAR_SCRIPT,
        &url,
        "retry_interval_ms = 300\n[registrar]\ndb_mode = 1\n",
    );
    assert_eq!(register_all(&srv, &users("warm", 1)).len(), 1);
    relay.slow(100);
    let slow = users("slow", 20);
    assert_eq!(register_all(&srv, &slow).len(), 20);
    relay.set(PASS);
    assert_eq!(wait_rows(&db.url, 21, Duration::from_secs(10)), 21);
}

// ---------------------------------------------- crash and shutdown

/// `kill -9` in db_mode 1: every REGISTER answered 200 before the kill is
/// in the database, and found after a restart.
fn kill9_loses_nothing(db: TestDb) {
    db.init(&[]);
    let mut srv = start(
        REGISTRAR_SCRIPT,
        &db.url,
        "[registrar]\ndb_mode = 1\ntimer_interval_s = 3600\n",
    );
    // a burst of REGISTERs; the server is killed while answering them
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    let all = users("k", 300);
    for (i, u) in all.iter().enumerate() {
        sock.send_to(plain_register(&sock, u, i as u32 + 1).as_bytes(), srv.addr)
            .unwrap();
    }
    let sent = all.len();
    let mut acked: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let take = |r: &str, acked: &mut Vec<String>| {
        if status(r) == 200 {
            let to = header(r, "To").unwrap_or_default();
            if let Some(u) = to.strip_prefix("<sip:").and_then(|x| x.split('@').next()) {
                acked.push(u.to_string());
            }
        }
    };
    while acked.len() < 100 {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            panic!("replies stopped at {}\n{}", acked.len(), srv.log());
        };
        take(&String::from_utf8_lossy(&buf[..n]), &mut acked);
    }
    let child = srv.child.as_mut().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = true;
    // replies sent before the kill still wait in our socket
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        take(&String::from_utf8_lossy(&buf[..n]), &mut acked);
    }
    assert!(killed);
    assert!(acked.len() > 50, "only {} acknowledged", acked.len());
    let rows = location_rows(&db.url);
    let lost: Vec<&String> = acked
        .iter()
        .filter(|u| !rows.iter().any(|(user, _)| user == *u))
        .collect();
    eprintln!(
        "kill -9: {} sent, {} acknowledged, {} rows, lost {}",
        sent,
        acked.len(),
        rows.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let srv = start(REGISTRAR_SCRIPT, &db.url, "[registrar]\ndb_mode = 1\n");
    for u in acked.iter().step_by(25) {
        assert!(lookup(&srv, u).is_some(), "{u} restored after kill -9");
    }
}

#[test]
fn kill9_write_through_loses_nothing_postgres() {
    kill9_loses_nothing(TestDb::postgres());
}

#[test]
fn kill9_write_through_loses_nothing_mariadb() {
    kill9_loses_nothing(TestDb::mariadb());
}

/// SIGTERM in db_mode 2 (timer an hour away): everything is flushed.
fn sigterm_flushes(db: TestDb) {
    db.init(&[]);
    let srv = start(
        REGISTRAR_SCRIPT,
        &db.url,
        "[registrar]\ndb_mode = 2\ntimer_interval_s = 3600\n",
    );
    let all = users("t", 100);
    let mut acked = Vec::new();
    for chunk in all.chunks(25) {
        acked.extend(register_all(&srv, chunk));
    }
    assert_eq!(acked.len(), 100);
    assert_eq!(location_rows(&db.url).len(), 0, "write-back: nothing yet");
    let (ok, _) = srv.stop();
    assert!(ok);
    let rows = location_rows(&db.url);
    assert_eq!(rows.len(), 100, "registrations lost: {}", 100 - rows.len());
}

#[test]
fn sigterm_write_back_flushes_postgres() {
    sigterm_flushes(TestDb::postgres());
}

#[test]
fn sigterm_write_back_flushes_mariadb() {
    sigterm_flushes(TestDb::mariadb());
}

// ---------------------------------------------------------------- security

/// REGISTER with `auth` from a fresh socket (so `spread` picks any shard),
/// with its own Call-ID: not a retransmission.
fn send_auth(srv: &Server, auth: &str, tag: &str) -> String {
    let s = client();
    let m = register_msg(
        &s,
        "alice",
        DOMAIN,
        &format!("replay-{tag}"),
        7,
        &format!("Authorization: {auth}\r\nContact: <sip:alice@10.0.0.1>\r\n"),
    );
    exchange(&s, srv.addr, m.as_bytes()).expect("reply")
}

/// nonce_count = 1 on two shards fed at random (`spread`): one nonce with
/// one nc is accepted once, whichever shard gets it; a higher nc once more;
/// nothing after expiry.
#[test]
fn nonce_replay_refused_on_every_shard() {
    let db = TestDb::postgres();
    db.init(&[("alice@example.com", "pw-alice")]);
    let toml = format!(
        "[db]\nurl = \"{}\"\n[auth]\nsecret = \"k\"\nnonce_count = 1\nnonce_expire = 2\n",
        db.url
    );
    let srv = Server::start(ServerOpts {
        cores: "2",
        core_toml: "udp_socket = \"spread\"",
        extra_toml: &toml,
        ..Default::default()
    });
    let c = client();
    let r = exchange(
        &c,
        srv.addr,
        register_msg(&c, "alice", DOMAIN, "replay-0", 1, "").as_bytes(),
    )
    .unwrap();
    let ch = header(&r, "WWW-Authenticate").expect("challenge");
    let nc1 = digest_authorization(&ch, "alice", "pw-alice", "REGISTER", "sip:example.com", 1);

    // 12 copies at once from 12 sockets: they land on both shards
    let socks: Vec<UdpSocket> = (0..12).map(|_| client()).collect();
    for (i, s) in socks.iter().enumerate() {
        let m = register_msg(
            s,
            "alice",
            DOMAIN,
            &format!("replay-a{i}"),
            7,
            &format!("Authorization: {nc1}\r\nContact: <sip:alice@10.0.0.1>\r\n"),
        );
        s.send_to(m.as_bytes(), srv.addr).unwrap();
    }
    let codes: Vec<u16> = socks
        .iter()
        .map(|s| recv(s).map(|r| status(&r)).unwrap_or(0))
        .collect();
    assert_eq!(
        codes.iter().filter(|&&c| c == 200).count(),
        1,
        "one nonce, one nc: accepted once: {codes:?}"
    );
    assert_eq!(codes.iter().filter(|&&c| c == 401).count(), 11, "{codes:?}");
    // both shards ran routes (dispatch is local: each checks what it got)
    let per_shard = rpc(srv.rpc_port, "core.shards", serde_json::json!([]));
    let received: Vec<u64> = per_shard
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rcv_requests"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(received.len(), 2, "{per_shard}");
    assert!(received.iter().all(|&n| n > 0), "{per_shard}");

    // nc = 2: accepted once more, then refused everywhere
    let nc2 = digest_authorization(&ch, "alice", "pw-alice", "REGISTER", "sip:example.com", 2);
    assert_eq!(status(&send_auth(&srv, &nc2, "b0")), 200);
    for i in 1..6 {
        assert_eq!(status(&send_auth(&srv, &nc2, &format!("b{i}"))), 401);
        assert_eq!(status(&send_auth(&srv, &nc1, &format!("c{i}"))), 401);
    }
    // after nonce_expire: stale, whatever the nc
    std::thread::sleep(Duration::from_millis(3_100));
    let nc3 = digest_authorization(&ch, "alice", "pw-alice", "REGISTER", "sip:example.com", 3);
    let r = send_auth(&srv, &nc3, "d0");
    assert_eq!(status(&r), 401, "{r}");
    assert!(
        header(&r, "WWW-Authenticate")
            .unwrap()
            .contains("stale=true"),
        "{r}"
    );
}

/// `[rpc] token`: the real binary refuses requests without it, and
/// `sipshard ctl --token` gets through.
#[test]
fn rpc_token_on_the_real_binary() {
    let srv = Server::start(ServerOpts {
        extra_toml: "[rpc]\nlisten = \"127.0.0.1:@RPC_PORT@\"\ntoken = \"tok-3f9a\"\n",
        ..Default::default()
    });
    let url = srv.rpc_url();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["ctl", "core.uptime", "--url", &url])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no token: refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["ctl", "core.uptime", "--url", &url, "--token", "tok-3f9a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["ctl", "core.uptime", "--url", &url])
        .env("SIPSHARD_RPC_TOKEN", "tok-3f9a")
        .output()
        .unwrap();
    assert!(out.status.success());
    // /metrics too
    let mut s = TcpStream::connect(("127.0.0.1", srv.rpc_port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(!srv.log().contains("tok-3f9a"), "token logged");
}

/// At debug level, after failed and successful authentications, no log
/// line holds a password, an HA1 or a digest response.
#[test]
fn no_secret_in_debug_logs() {
    let db = TestDb::postgres();
    db.init(&[("alice@example.com", "Pw-Alice-77")]);
    let toml = format!("[db]\nurl = \"{}\"\n[auth]\nsecret = \"k\"\n", db.url);
    let srv = Server::start(ServerOpts {
        cores: "2",
        core_toml: "log_level = \"debug\"",
        extra_toml: &toml,
        ..Default::default()
    });
    let c = client();
    let mut responses = Vec::new();
    for (i, pw) in ["Wrong-Guess-1", "Wrong-Guess-2", "Pw-Alice-77"]
        .iter()
        .enumerate()
    {
        let r = exchange(
            &c,
            srv.addr,
            register_msg(&c, "alice", DOMAIN, &format!("log-{i}"), 1, "").as_bytes(),
        )
        .unwrap();
        let ch = header(&r, "WWW-Authenticate").unwrap();
        let auth = digest_authorization(&ch, "alice", pw, "REGISTER", "sip:example.com", 1);
        let p = parse_challenge(&auth);
        responses.push(p["response"].clone());
        let r = exchange(
            &c,
            srv.addr,
            register_msg(
                &c,
                "alice",
                DOMAIN,
                &format!("log-{i}"),
                2,
                &format!("Authorization: {auth}\r\nContact: <sip:alice@10.0.0.1>\r\n"),
            )
            .as_bytes(),
        )
        .unwrap();
        let want = if i == 2 { 200 } else { 401 };
        assert_eq!(status(&r), want, "{r}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = srv.log();
    assert!(log.contains("DEBUG"), "debug level is on: {log}");
    let ha1 = hex_hash("MD5", "alice:example.com:Pw-Alice-77");
    for secret in ["Pw-Alice-77", "Wrong-Guess-1", "Wrong-Guess-2", &ha1]
        .into_iter()
        .chain(responses.iter().map(String::as_str))
    {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
    }
    for line in log.lines() {
        assert!(
            !line.contains("Digest username=") && !line.contains("response=\""),
            "an Authorization header in the log: {line}"
        );
    }
}

/// SIGTERM in db_mode 2 while the database is gone: shutdown keeps retrying
/// (10 s at most), and a database back within that gets every binding.
#[test]
fn sigterm_write_back_waits_for_the_database_postgres() {
    let db = TestDb::postgres();
    db.init(&[]);
    let relay = Relay::start(upstream_of(&db));
    let url = via_relay(&db, &relay);
    let mut srv = start(
        REGISTRAR_SCRIPT,
        &url,
        "query_timeout_ms = 500\nretry_interval_ms = 200\n\
         [registrar]\ndb_mode = 2\ntimer_interval_s = 3600\n",
    );
    relay.set(CUT);
    let all = users("w", 20);
    assert_eq!(register_all(&srv, &all).len(), 20);
    let child = srv.child.as_mut().unwrap();
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(child.try_wait().unwrap().is_none(), "still trying to write");
    relay.set(PASS);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit:\n{}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{}", srv.log());
    let rows = location_rows(&db.url).len();
    assert_eq!(rows, 20, "registrations lost: {}\n{}", 20 - rows, srv.log());
}
