//! `sipshard bench` scenarios against the real server: registrations with
//! digest auth for users imported with `sipshard user import`, checked
//! through `ul.dump`; and the same through a relay that drops datagrams,
//! where retransmissions and failures must show.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const USERS: usize = 50;

/// A server with a SQLite subscriber table holding `USERS` users written by
/// `sipshard bench users` and loaded with `sipshard user import`.
fn registrar(dir: &TempDir) -> (TestDb, Server) {
    registrar_with(dir, "")
}

/// [`registrar`] with extra `[auth]` keys.
fn registrar_with(dir: &TempDir, auth_toml: &str) -> (TestDb, Server) {
    let db = TestDb::sqlite();
    sipshard(&["db", "init", "--db", &db.url]);
    let file = dir.path("users.csv");
    let out = sipshard(&[
        "bench",
        "users",
        "--users",
        "u%d@example.com:pw%d",
        "--user-count",
        &USERS.to_string(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains(&format!("wrote {USERS} users")), "{out}");
    let out = sipshard(&["user", "import", file.to_str().unwrap(), "--db", &db.url]);
    assert_eq!(out, format!("added {USERS} subscribers\n"));
    let toml = format!(
        "[db]\nurl = \"{}\"\n[auth]\nsecret = \"k\"\n{auth_toml}",
        db.url
    );
    let srv = Server::start(ServerOpts {
        extra_toml: &toml,
        ..Default::default()
    });
    (db, srv)
}

fn bench_json(args: &[&str]) -> Value {
    let out = sipshard(args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad json {e}: {out}"))
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {v}"))
}

/// Every authentication a credential-cache miss (`cache_max_entries = 0`),
/// many at once over distinct users: each read goes to the database (SQLite:
/// the `db-reader` thread) and every registration still succeeds.
#[test]
fn concurrent_cache_misses_all_authenticate() {
    let dir = TempDir::new("bench-miss");
    let (_db, srv) = registrar_with(&dir, "cache_max_entries = 0\n");
    let target = srv.addr.to_string();
    let r = bench_json(&[
        "bench",
        "register",
        "--target",
        &target,
        "--users",
        "u%d@example.com:pw%d",
        "--user-count",
        &USERS.to_string(),
        "--spread-users",
        "--count",
        "400",
        "--rate",
        "2000",
        "--sockets",
        "8",
        "--json",
    ]);
    assert_eq!(n(&r, "ok"), 400, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    let stats = rpc(
        srv.rpc_port,
        "stats.fetch",
        json!([
            "db.queries",
            "db.queue_full",
            "db.errors",
            "auth.cache_entries"
        ]),
    );
    // One database read per authenticated REGISTER (retransmissions aside).
    let queries = stats["db.queries"].as_u64().unwrap_or(0);
    assert!(queries >= 400, "{stats}");
    assert_eq!(stats["db.queue_full"].as_u64().unwrap_or(0), 0, "{stats}");
    assert_eq!(stats["db.errors"].as_u64().unwrap_or(0), 0, "{stats}");
    assert_eq!(
        stats["auth.cache_entries"].as_u64().unwrap_or(0),
        0,
        "{stats}"
    );
}

#[test]
fn register_run_authenticates_and_saves_every_user() {
    let dir = TempDir::new("bench-reg");
    let (_db, srv) = registrar(&dir);
    let users = dir.path("users.csv");
    let hlog = dir.path("run.hlog");
    let target = srv.addr.to_string();
    let r = bench_json(&[
        "bench",
        "register",
        "--target",
        &target,
        "--users-file",
        users.to_str().unwrap(),
        "--rate",
        "200",
        "--duration",
        "2",
        "--sockets",
        "4",
        "--json",
        "--hlog",
        hlog.to_str().unwrap(),
    ]);
    assert_eq!(n(&r, "registrations"), 400, "{r}");
    assert_eq!(n(&r, "ok"), 400, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    // Two REGISTERs per registration, each answered (401, then 200).
    assert!(n(&r, "requests_sent") >= 800, "{r}");
    assert_eq!(r["latency_us"]["raw"]["count"].as_u64(), Some(400), "{r}");
    assert!(
        r["latency_us"]["corrected"]["count"].as_u64().unwrap_or(0) >= 400,
        "{r}"
    );
    // Every user is saved (the default script keys AORs by user name).
    let dump = rpc(srv.rpc_port, "ul.dump", json!([]));
    let mut aors: Vec<String> = dump["aors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["aor"].as_str().map(str::to_owned))
        .collect();
    aors.sort();
    let mut want: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    want.sort();
    assert_eq!(aors, want);
    // The interval log decodes and holds all 400 samples under `register`.
    let log = std::fs::read_to_string(&hlog).unwrap();
    assert!(log.contains("Tag=register,"), "{log}");
    let intervals = sipshard::stats::hlog::read_log(log.as_bytes()).expect("hlog parses");
    let logged: u64 = intervals
        .iter()
        .filter(|i| i.tag.as_deref() == Some("register"))
        .map(|i| i.hist.len())
        .sum();
    assert_eq!(logged, 400);

    // A wrong password is counted as an authentication failure, not success.
    let bad = bench_json(&[
        "bench",
        "register",
        "--target",
        &target,
        "--users",
        "u%d@example.com:wrong%d",
        "--user-count",
        "5",
        "--count",
        "5",
        "--rate",
        "100",
        "--json",
    ]);
    assert_eq!(n(&bad, "ok"), 0, "{bad}");
    assert_eq!(n(&bad, "failed"), 5, "{bad}");
    assert_eq!(n(&bad, "failed_auth"), 5, "{bad}");
}

/// A UDP relay between one client side and the server that drops every
/// `drop_every`-th datagram in each direction.
struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn start(server: SocketAddr, drop_every: u64) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        front
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped2 = dropped.clone();
        let thread = std::thread::spawn(move || {
            // One back socket per client address, so the server sees distinct
            // sources and replies find their way back.
            let mut backs: Vec<(SocketAddr, UdpSocket)> = Vec::new();
            let mut buf = vec![0u8; 65536];
            let mut seen = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((len, from)) = front.recv_from(&mut buf) {
                    seen += 1;
                    if seen % drop_every == 0 {
                        dropped2.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let idx = match backs.iter().position(|(a, _)| *a == from) {
                            Some(i) => i,
                            None => {
                                let b = UdpSocket::bind("127.0.0.1:0").unwrap();
                                b.connect(server).unwrap();
                                b.set_nonblocking(true).unwrap();
                                backs.push((from, b));
                                backs.len() - 1
                            }
                        };
                        let _ = backs[idx].1.send(&buf[..len]);
                    }
                }
                for (client, b) in &backs {
                    while let Ok(len) = b.recv(&mut buf) {
                        seen += 1;
                        if seen % drop_every == 0 {
                            dropped2.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let _ = front.send_to(&buf[..len], client);
                        }
                    }
                }
            }
        });
        LossyRelay {
            addr,
            stop,
            dropped,
            thread: Some(thread),
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn register_through_lossy_relay_retransmits_and_counts_failures() {
    let dir = TempDir::new("bench-loss");
    let (_db, srv) = registrar(&dir);
    let relay = LossyRelay::start(srv.addr, 7);
    let relay_addr = relay.addr.to_string();
    // Short timers so the run is quick: T1 = 50 ms, timeout 64*T1 = 3.2 s.
    let r = bench_json(&[
        "bench",
        "register",
        "--target",
        &relay_addr,
        "--users-file",
        dir.path("users.csv").to_str().unwrap(),
        "--rate",
        "100",
        "--count",
        "200",
        "--t1-ms",
        "50",
        "--t2-ms",
        "400",
        "--json",
    ]);
    // One datagram in 7 is lost: Timer E must have resent some REGISTERs,
    // and still every registration completes (retransmissions recover).
    assert!(n(&r, "retransmissions") > 0, "{r}");
    assert_eq!(n(&r, "ok") + n(&r, "failed"), 200, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    assert_eq!(n(&r, "ok"), 200, "{r}");

    // Without retransmissions, every lost request or reply ends its
    // registration (nothing else is sent for it) in a timeout: the failures
    // are exactly the datagrams the relay dropped.
    let before = relay.dropped.load(Ordering::Relaxed);
    let r = bench_json(&[
        "bench",
        "register",
        "--target",
        &relay_addr,
        "--users-file",
        dir.path("users.csv").to_str().unwrap(),
        "--rate",
        "100",
        "--count",
        "100",
        "--timeout-ms",
        "500",
        "--no-retransmit",
        "--json",
    ]);
    assert_eq!(n(&r, "retransmissions"), 0, "{r}");
    let dropped = relay.dropped.load(Ordering::Relaxed) - before;
    assert!(dropped > 0);
    assert_eq!(n(&r, "failed_timeout"), dropped, "{r}");
    assert_eq!(n(&r, "failed"), n(&r, "failed_timeout"), "{r}");
    assert_eq!(n(&r, "ok") + n(&r, "failed"), 100, "{r}");
    drop(relay);
}

/// A child process stopped (by its own pid) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sipshard bench uas` and registers it (digest auth) as
/// `uas@example.com` on `srv`; the UAS stops when the value is dropped.
fn registered_uas(db: &TestDb, srv: &Server) -> Child {
    sipshard(&["user", "add", "uas@example.com", "uaspw", "--db", &db.url]);
    let uas_port = free_udp_port();
    let uas = Child(
        std::process::Command::new(bin())
            .args(["bench", "uas", "--listen", &format!("127.0.0.1:{uas_port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Register the UAS's contact (a plain REGISTER with digest auth).
    let c = client();
    let r = register_with_auth(
        &c,
        srv.addr,
        "uas",
        "example.com",
        "uaspw",
        "bench-call-reg",
        1,
        &format!("Contact: <sip:uas@127.0.0.1:{uas_port}>\r\nExpires: 3600\r\n"),
    );
    assert_eq!(status(&r), 200, "{r}");
    uas
}

#[test]
fn call_run_through_the_proxy_to_bench_uas_completes() {
    let dir = TempDir::new("bench-call");
    let (db, srv) = registrar(&dir);
    let _uas = registered_uas(&db, &srv);
    let r = bench_json(&[
        "bench",
        "call",
        "--target",
        &srv.addr.to_string(),
        "--ruri",
        &format!("sip:uas@{}", srv.addr),
        "--rate",
        "50",
        "--count",
        "50",
        "--pause-ms",
        "20",
        "--sockets",
        "2",
        "--json",
    ]);
    assert_eq!(n(&r, "calls"), 50, "{r}");
    assert_eq!(n(&r, "setup_ok"), 50, "{r}");
    assert_eq!(n(&r, "ok"), 50, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    assert_eq!(r["latency_us"]["raw"]["count"].as_u64(), Some(50), "{r}");

    // A user with no contact: every call fails at setup (404), counted.
    let r = bench_json(&[
        "bench",
        "call",
        "--target",
        &srv.addr.to_string(),
        "--ruri",
        &format!("sip:u1@{}", srv.addr),
        "--rate",
        "50",
        "--count",
        "10",
        "--json",
    ]);
    assert_eq!(n(&r, "ok"), 0, "{r}");
    assert_eq!(n(&r, "failed_setup_status"), 10, "{r}");
    assert_eq!(n(&r, "failed"), 10, "{r}");
}

#[test]
fn mixed_run_drives_each_scenario_at_its_share() {
    let dir = TempDir::new("bench-mixed");
    let (db, srv) = registrar(&dir);
    let _uas = registered_uas(&db, &srv);
    let target = srv.addr.to_string();
    let r = bench_json(&[
        "bench",
        "mixed",
        "--target",
        &target,
        "--mix",
        "options=2,register=1,call=1",
        "--rate",
        "80",
        "--duration",
        "2",
        "--users-file",
        dir.path("users.csv").to_str().unwrap(),
        "--ruri",
        &format!("sip:uas@{}", srv.addr),
        "--pause-ms",
        "20",
        "--sockets",
        "2",
        "--json",
    ]);
    // 80/s split 2:1:1 for 2 s: 80 OPTIONS, 40 registrations, 40 calls.
    let shares: Vec<(String, u64)> = r["mix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["scenario"].as_str().unwrap().to_owned(), n(m, "rate")))
        .collect();
    assert_eq!(
        shares,
        vec![
            ("options".to_owned(), 40),
            ("register".to_owned(), 20),
            ("call".to_owned(), 20)
        ],
        "{r}"
    );
    let o = &r["options"];
    assert_eq!(n(o, "sent"), 80, "{r}");
    assert_eq!(n(o, "answered"), 80, "{r}");
    assert_eq!(n(o, "non_2xx"), 0, "{r}");
    let g = &r["register"];
    assert_eq!(n(g, "registrations"), 40, "{r}");
    assert_eq!(n(g, "ok"), 40, "{r}");
    let c = &r["call"];
    assert_eq!(n(c, "calls"), 40, "{r}");
    assert_eq!(n(c, "ok"), 40, "{r}");
    assert_eq!(n(&r, "started"), 160, "{r}");
    assert_eq!(n(&r, "ok"), 160, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    // The registrations were saved: 40 starts over the 50 users, in order.
    let dump = rpc(srv.rpc_port, "ul.dump", json!([]));
    let aors = dump["aors"].as_array().cloned().unwrap_or_default();
    let users: Vec<&str> = aors
        .iter()
        .filter_map(|a| a["aor"].as_str())
        .filter(|a| *a != "uas")
        .collect();
    assert_eq!(users.len(), 40, "{dump}");

    // A mix naming an unknown scenario is refused before any traffic.
    let out = std::process::Command::new(bin())
        .args([
            "bench",
            "mixed",
            "--target",
            &target,
            "--mix",
            "options=1,flood=2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown scenario `flood`"), "{err}");
}

#[test]
fn spread_users_registers_far_apart_users() {
    let dir = TempDir::new("bench-spread");
    let (_db, srv) = registrar(&dir);
    // 10 registrations over the 50 users: in order they would be u0..u9;
    // spread, they are 10 distinct users reaching past the first half.
    let r = bench_json(&[
        "bench",
        "register",
        "--target",
        &srv.addr.to_string(),
        "--users-file",
        dir.path("users.csv").to_str().unwrap(),
        "--spread-users",
        "--rate",
        "100",
        "--count",
        "10",
        "--json",
    ]);
    assert_eq!(n(&r, "ok"), 10, "{r}");
    let dump = rpc(srv.rpc_port, "ul.dump", json!([]));
    let mut nums: Vec<u32> = dump["aors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["aor"].as_str()?.strip_prefix('u')?.parse().ok())
        .collect();
    nums.sort();
    assert_eq!(nums.len(), 10, "{dump}");
    assert!(*nums.last().unwrap() >= 25, "{nums:?}");
    assert_ne!(nums, (0..10).collect::<Vec<u32>>());
}
