//! KSR.dispatcher end to end: the real binary running tests/lua/dispatcher.lua
//! in front of sipp callees (tests/sipp/uas-call.xml, `-aa` so they answer
//! the keepalive OPTIONS too), a sipp caller (tests/sipp/uac-call.xml), and
//! destination sets from a `dispatcher.list` file or the `dispatcher`
//! table of SQLite, PostgreSQL and MariaDB.
//!
//!   cargo test --test dispatcher
//!   PROXY_UNDER_TEST=kamailio cargo test --test dispatcher   # Kamailio 5.6
//!
//! With `PROXY_UNDER_TEST=kamailio` the sipp tests (splits, failover) run
//! against Kamailio 5.6 with perf/kamailio/dispatcher.cfg and the same
//! script and list; the tests of sipshard's control plane and database
//! loading are skipped then.
//!
//! Splits are counted by the callees (sipp's SuccessfulCall), state through
//! `dispatcher.list` (JSON-RPC and `sipshard ctl`).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn scenario(name: &str) -> String {
    format!("{ROOT}/tests/sipp/{name}")
}

fn script() -> String {
    std::fs::read_to_string(format!("{ROOT}/tests/lua/dispatcher.lua")).unwrap()
}

/// One sipp process (stopped on drop, by its own PID).
struct Sipp {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Sipp {
    /// A callee on 127.0.0.1:`port` running `scen` until stopped (or `-m`
    /// in `extra`), answering OPTIONS (`-aa`).
    fn uas(
        dir: &TempDir,
        name: &str,
        scen: &str,
        port: u16,
        proxy: SocketAddr,
        extra: &[&str],
    ) -> Sipp {
        let mut args = vec![
            "-sf".to_string(),
            scenario(scen),
            "-set".into(),
            "proxy".into(),
            proxy.to_string(),
            "-aa".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let s = Self::spawn(dir, name, port, &args);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "sipp {name} did not bind {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// A caller making `calls` calls to `user`@proxy.
    fn uac(
        dir: &TempDir,
        name: &str,
        proxy: SocketAddr,
        user: &str,
        calls: u32,
        extra: &[&str],
    ) -> Sipp {
        let mut args = vec![
            proxy.to_string(),
            "-sf".to_string(),
            scenario("uac-call.xml"),
            "-s".into(),
            user.into(),
            "-m".into(),
            calls.to_string(),
            // ACK then BYE 100 ms later: with no pause the two can cross
            // on the proxy's two shards and reach the callee in reverse.
            "-d".into(),
            "100".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(dir, name, free_udp_port(), &args)
    }

    fn spawn(dir: &TempDir, name: &str, port: u16, args: &[String]) -> Sipp {
        let d = dir.path(name);
        std::fs::create_dir_all(&d).unwrap();
        let out = std::fs::File::create(d.join("sipp.out")).unwrap();
        let child = Command::new("sipp")
            .args(args)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-nostdin", "-timeout", "110s", "-timeout_error"])
            .args(["-trace_err", "-error_file", "errors.log"])
            .args(["-trace_stat", "-stf", "stats.csv", "-fd", "1"])
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("sipp (sip-tester) is installed: scripts/deps.sh");
        Sipp {
            name: name.into(),
            dir: d,
            child: Some(child),
        }
    }

    /// Waits for the process to exit (at most `limit`); its exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it now (SIGKILL to its PID).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last row of its `-trace_stat` file.
    fn stats(&self) -> HashMap<String, String> {
        let csv = std::fs::read_to_string(self.dir.join("stats.csv")).unwrap_or_default();
        let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
        let (Some(head), Some(last)) = (lines.next(), lines.next_back()) else {
            return HashMap::new();
        };
        head.split(';')
            .zip(last.split(';'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn count(&self, col: &str) -> u64 {
        self.stats()
            .get(col)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn successful(&self) -> u64 {
        self.count("SuccessfulCall(C)")
    }

    fn report(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let tail = |s: String| s[s.len().saturating_sub(2000)..].to_string();
        format!(
            "--- sipp {}\n{}\nerrors:\n{}",
            self.name,
            tail(read("sipp.out")),
            tail(read("errors.log"))
        )
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (deadline) until `f` holds; panics with `what` otherwise.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kamailio 5.6 running perf/kamailio/dispatcher.cfg (debug=2 so the
/// script's KSR.info lines show), stopped on drop by its PID.
impl Kamailio {
    fn start(list: &str) -> Kamailio {
        let dir = TempDir::new("kam-ds");
        std::fs::write(dir.path("dispatcher.list"), list).unwrap();
        let mpath = kamailio_mpath(&["dispatcher.so", "app_lua.so"]);
        let port = free_udp_port();
        let cfg = std::fs::read_to_string(format!("{ROOT}/perf/kamailio/dispatcher.cfg"))
            .unwrap()
            .replace("debug=0", "debug=2")
            .replace("@PORT@", &port.to_string())
            .replace("@CHILDREN@", "2")
            .replace("@BUF_BYTES@", "4194304")
            .replace("@MPATH@", &mpath)
            .replace("@LIST@", &dir.path("dispatcher.list").display().to_string())
            .replace("@LUA@", &format!("{ROOT}/tests/lua/dispatcher.lua"));
        Kamailio::run(dir, &cfg, port, &["-m", "64"], &[], true)
    }
}

/// What `calls` needs of a proxy.
trait HasProxy {
    fn sip_addr(&self) -> SocketAddr;
    fn proxy_log(&self) -> String;
}

impl HasProxy for Server {
    fn sip_addr(&self) -> SocketAddr {
        self.addr
    }
    fn proxy_log(&self) -> String {
        self.log()
    }
}

impl HasProxy for Proxy {
    fn sip_addr(&self) -> SocketAddr {
        self.addr()
    }
    fn proxy_log(&self) -> String {
        self.log()
    }
}

/// The proxy under test for the sipp tests.
enum Proxy {
    Sipshard(Server),
    Kamailio(Kamailio),
}

impl Proxy {
    fn start(list: &str) -> Proxy {
        if kamailio_selected() {
            Proxy::Kamailio(Kamailio::start(list))
        } else {
            Proxy::Sipshard(proxy(list, ""))
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Proxy::Sipshard(s) => s.addr,
            Proxy::Kamailio(k) => k.addr,
        }
    }

    fn log(&self) -> String {
        match self {
            Proxy::Sipshard(s) => s.log(),
            Proxy::Kamailio(k) => k.log(),
        }
    }
}

/// The proxy with `list` as its dispatcher.list and `extra` in `[dispatcher]`.
fn proxy(list: &str, extra: &str) -> Server {
    let dir = TempDir::new("ds");
    std::fs::write(dir.path("dispatcher.list"), list).unwrap();
    let script = script();
    let toml = format!("[dispatcher]\nlist_file = \"@DIR@/dispatcher.list\"\nflags = 2\n{extra}\n");
    Server::start_in(
        dir,
        ServerOpts {
            script: Some(&script),
            extra_toml: &toml,
            ..ServerOpts::default()
        },
    )
}

/// FLAGS of each destination, by URI, from `dispatcher.list`.
fn flags(srv: &Server) -> HashMap<String, String> {
    let v = rpc(srv.rpc_port, "dispatcher.list", json!([]));
    let mut out = HashMap::new();
    for rec in v["RECORDS"].as_array().unwrap() {
        for t in rec["SET"]["TARGETS"].as_array().unwrap() {
            let d = &t["DEST"];
            out.insert(
                format!("{}|{}", rec["SET"]["ID"], d["URI"].as_str().unwrap()),
                d["FLAGS"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

/// Runs `calls` calls to `user`; asserts every one succeeded.
fn calls(dir: &TempDir, srv: &impl HasProxy, name: &str, user: &str, n: u32, uas: &[&Sipp]) {
    let mut uac = Sipp::uac(
        dir,
        name,
        srv.sip_addr(),
        user,
        n,
        &["-r", "200", "-l", "100"],
    );
    let code = uac.wait(Duration::from_secs(120));
    if code != Some(0) || uac.successful() != u64::from(n) {
        let mut text = format!("{name}: exit {code:?}, successful {}\n", uac.successful());
        text.push_str(&uac.report());
        for u in uas {
            text.push_str(&u.report());
        }
        let log = srv.proxy_log();
        panic!(
            "{text}\n--- proxy log (tail):\n{}",
            &log[log.len().saturating_sub(4000)..]
        );
    }
}

/// Round robin and a 25/75 weight over two callees, 2 000 calls each: each
/// callee's share within 5 points of the configured one.
#[test]
fn round_robin_and_weight_split_over_2000_calls() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let list = format!(
        "# set 1: round robin; set 2: weights\n\
         1 sip:127.0.0.1:{pa}\n1 sip:127.0.0.1:{pb}\n\
         2 sip:127.0.0.1:{pa} 0 0 weight=25\n2 sip:127.0.0.1:{pb} 0 0 weight=75\n"
    );
    let srv = Proxy::start(&list);
    let dir = TempDir::new("ds-split");
    let a = Sipp::uas(&dir, "uas-a", "uas-call.xml", pa, srv.addr(), &[]);
    let b = Sipp::uas(&dir, "uas-b", "uas-call.xml", pb, srv.addr(), &[]);
    // Every call the callees saw has ended (successfully or not: under a
    // crowded machine an ACK and its BYE may still cross on the proxy's two
    // shards, which the callee counts as a failed call). Returns the
    // successful ones per callee.
    let done = |s: &Sipp| s.successful() + s.count("FailedCall(C)");
    let settled = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while done(&a) + done(&b) < want {
            assert!(
                Instant::now() < deadline,
                "callees' calls {} + {} < {want}\n{}\n{}",
                done(&a),
                done(&b),
                a.report(),
                b.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let failed = done(&a) + done(&b) - a.successful() - b.successful();
        assert!(failed <= want / 100, "{failed} calls failed at the callees");
        (a.successful(), b.successful())
    };
    let share = |n: u64, total: u64| n as f64 / total as f64;

    calls(&dir, &srv, "uac-rr", "rr", 2000, &[&a, &b]);
    let (ra, rb) = settled(2000);
    let n = ra + rb;
    assert!(
        (share(ra, n) - 0.5).abs() <= 0.05 && (share(rb, n) - 0.5).abs() <= 0.05,
        "round robin split {ra}/{rb}"
    );

    let base = done(&a) + done(&b);
    calls(&dir, &srv, "uac-weight", "weight", 2000, &[&a, &b]);
    let (wa, wb) = settled(base + 2000);
    let (wa, wb) = (wa - ra, wb - rb);
    let n = wa + wb;
    assert!(
        (share(wa, n) - 0.25).abs() <= 0.05 && (share(wb, n) - 0.75).abs() <= 0.05,
        "weight split {wa}/{wb} (want 25/75)"
    );
    eprintln!("round robin {ra}/{rb}, weight 25/75: {wa}/{wb}");
}

/// The first destination answers 503, or nothing at all: the failure route
/// moves to the next one with ds_next_dst() and every call succeeds.
#[test]
fn failover_on_503_and_on_no_answer() {
    let (p503, pok) = (free_udp_port(), free_udp_port());
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    hole.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let phole = hole.local_addr().unwrap().port();
    let list = format!(
        "3 sip:127.0.0.1:{p503} 0 10\n3 sip:127.0.0.1:{pok} 0 5\n\
         4 sip:127.0.0.1:{phole} 0 10\n4 sip:127.0.0.1:{pok} 0 5\n"
    );
    let srv = Proxy::start(&list);
    let dir = TempDir::new("ds-failover");
    let mut busy = Sipp::uas(
        &dir,
        "uas-503",
        "uas-503.xml",
        p503,
        srv.addr(),
        &["-m", "5"],
    );
    let mut ok = Sipp::uas(
        &dir,
        "uas-ok",
        "uas-call.xml",
        pok,
        srv.addr(),
        &["-m", "8"],
    );

    calls(&dir, &srv, "uac-503", "failover", 5, &[&busy, &ok]);
    assert_eq!(
        busy.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        busy.report()
    );
    assert_eq!(busy.successful(), 5, "each call tried the 503 one first");

    // No answer: the silent destination's branch times out (1 s).
    let got = std::thread::spawn(move || {
        let mut n = 0;
        let mut buf = [0u8; 4096];
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && n < 3 {
            if let Ok(len) = hole.recv(&mut buf) {
                if buf[..len].starts_with(b"INVITE ") {
                    n += 1;
                }
            }
        }
        n
    });
    calls(&dir, &srv, "uac-silent", "silent", 3, &[&ok]);
    assert_eq!(ok.wait(Duration::from_secs(10)), Some(0), "{}", ok.report());
    assert_eq!(
        ok.successful(),
        8,
        "5 + 3 calls ended at the second destination"
    );
    assert!(
        got.join().unwrap() >= 3,
        "the silent destination was tried first"
    );
    assert!(
        srv.log().contains("dispatcher failover after 408"),
        "{}",
        srv.log()
    );
    assert!(srv.log().contains("dispatcher failover after 503"));
}

/// Keepalives: a callee that stops is marked inactive (`IP`) after its
/// probe times out, calls go to the other one, and it is active (`AP`)
/// again once it answers.
#[test]
fn probing_marks_a_stopped_destination_inactive_and_back() {
    if kamailio_selected() {
        return; // sipshard's control plane / database loading only
    }
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let list = format!("1 sip:127.0.0.1:{pa}\n1 sip:127.0.0.1:{pb}\n");
    let srv = proxy(
        &list,
        "ds_ping_interval = 1\nds_probing_mode = 1\nds_ping_fr_timer = 1\n\
         ds_probing_threshold = 1\nds_inactive_threshold = 1\nds_ping_latency_stats = 1\n",
    );
    let dir = TempDir::new("ds-probe");
    let mut a = Sipp::uas(&dir, "uas-a", "uas-call.xml", pa, srv.addr, &[]);
    let b = Sipp::uas(&dir, "uas-b", "uas-call.xml", pb, srv.addr, &[]);
    let (ka, kb) = (
        format!("1|sip:127.0.0.1:{pa}"),
        format!("1|sip:127.0.0.1:{pb}"),
    );
    let state = |k: &str| flags(&srv).get(k).cloned().unwrap_or_default();
    wait_for("both probed and active", Duration::from_secs(10), || {
        state(&ka) == "AP" && state(&kb) == "AP"
    });

    a.stop();
    wait_for("the stopped one inactive", Duration::from_secs(10), || {
        state(&ka) == "IP"
    });
    assert_eq!(state(&kb), "AP");
    let ctl = sipshard(&["ctl", "dispatcher.list", "--url", &srv.rpc_url()]);
    assert!(
        ctl.contains("IP") && ctl.contains(&format!("127.0.0.1:{pa}")),
        "{ctl}"
    );
    // Round robin skips the inactive one: all 10 calls reach b.
    let before = b.successful();
    calls(&dir, &srv, "uac-down", "rr", 10, &[&b]);
    wait_for("b's stats", Duration::from_secs(10), || {
        b.successful() == before + 10
    });

    let a2 = Sipp::uas(&dir, "uas-a2", "uas-call.xml", pa, srv.addr, &[]);
    wait_for("the restarted one active", Duration::from_secs(10), || {
        state(&ka) == "AP"
    });
    let before = b.successful();
    calls(&dir, &srv, "uac-up", "rr", 10, &[&a2, &b]);
    wait_for("both callees' stats", Duration::from_secs(10), || {
        a2.successful() + b.successful() == before + 10
    });
    assert!(
        a2.successful() >= 4,
        "a takes calls again: {}",
        a2.successful()
    );
    let v = rpc(srv.rpc_port, "dispatcher.list", json!([]));
    let lat = &v["RECORDS"][0]["SET"]["TARGETS"][1]["DEST"]["LATENCY"];
    assert!(lat["MAX"].as_u64().is_some(), "latency stats listed: {v}");
    let stats = rpc(srv.rpc_port, "stats.fetch", json!(["all"]));
    let text = stats.to_string();
    assert!(text.contains("dispatcher.probes_sent"), "{text}");
}

/// The control plane: `set_state` changes what the route selects,
/// `reload` re-reads the file and keeps the state of destinations still
/// listed, `ping_active` switches keepalives.
#[test]
fn set_state_reload_and_ping_active() {
    if kamailio_selected() {
        return; // sipshard's control plane / database loading only
    }
    let srv = proxy(
        "1 sip:127.0.0.1:5999\n1 sip:127.0.0.1:5998 8 0 duid=x\n",
        "",
    );
    let f = flags(&srv);
    assert_eq!(f["1|sip:127.0.0.1:5999"], "AX");
    assert_eq!(f["1|sip:127.0.0.1:5998"], "AP");
    assert_eq!(
        rpc(
            srv.rpc_port,
            "dispatcher.set_state",
            json!(["ip", 1, "sip:127.0.0.1:5999"])
        ),
        json!("Ok. Dispatcher state updated.")
    );
    assert_eq!(flags(&srv)["1|sip:127.0.0.1:5999"], "IP");
    std::fs::write(
        srv.dir.path("dispatcher.list"),
        "1 sip:127.0.0.1:5999\n2 sip:127.0.0.1:5997\n",
    )
    .unwrap();
    sipshard(&["ctl", "dispatcher.reload", "--url", &srv.rpc_url()]);
    let f = flags(&srv);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(
        f["1|sip:127.0.0.1:5999"], "IP",
        "state kept over the reload"
    );
    assert_eq!(f["2|sip:127.0.0.1:5997"], "AX");
    rpc(srv.rpc_port, "dispatcher.set_state", json!(["a", 1, "all"]));
    assert_eq!(flags(&srv)["1|sip:127.0.0.1:5999"], "AX");
    assert_eq!(
        rpc(srv.rpc_port, "dispatcher.ping_active", json!([0])),
        json!({"OldPingState": 1, "NewPingState": 0})
    );
}

fn sql_exec(url: &str, stmts: &[String]) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            for s in stmts {
                sqlx::query(s).execute(&mut c).await.unwrap();
            }
        } else if url.starts_with("mysql") {
            let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
            for s in stmts {
                sqlx::query(s).execute(&mut c).await.unwrap();
            }
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            for s in stmts {
                sqlx::query(s).execute(&mut c).await.unwrap();
            }
        }
    });
}

/// Sets from Kamailio's `dispatcher` table (created by `sipshard db init`)
/// on each backend, read at start and again on `dispatcher.reload`.
fn sets_from_database(db: TestDb) {
    if kamailio_selected() {
        return; // sipshard's control plane / database loading only
    }
    db.init(&[]);
    let row = |set: i64, uri: &str, flags: i64, prio: i64, attrs: &str| {
        format!(
            "INSERT INTO dispatcher (setid, destination, flags, priority, attrs, description) \
             VALUES ({set}, '{uri}', {flags}, {prio}, '{attrs}', 'test')"
        )
    };
    sql_exec(
        &db.url,
        &[
            row(1, "sip:127.0.0.1:5999", 0, 0, "weight=50"),
            row(1, "sip:127.0.0.1:5998", 8, 5, ""),
        ],
    );
    let script = script();
    let toml = format!(
        "[db]\nurl = \"{}\"\n[dispatcher]\ndb_url = \"db\"\n",
        db.url
    );
    let srv = Server::start(ServerOpts {
        script: Some(&script),
        extra_toml: &toml,
        ..ServerOpts::default()
    });
    let v = rpc(srv.rpc_port, "dispatcher.list", json!([]));
    let targets = &v["RECORDS"][0]["SET"]["TARGETS"];
    assert_eq!(
        targets[0]["DEST"]["URI"], "sip:127.0.0.1:5998",
        "priority 5 first: {v}"
    );
    assert_eq!(targets[0]["DEST"]["FLAGS"], "AP");
    assert_eq!(targets[1]["DEST"]["ATTRS"]["WEIGHT"], 50);
    sql_exec(&db.url, &[row(7, "sip:127.0.0.1:5997", 0, 0, "")]);
    rpc(srv.rpc_port, "dispatcher.reload", json!([]));
    assert_eq!(flags(&srv).len(), 3);
}

#[test]
fn sets_from_sqlite() {
    sets_from_database(TestDb::sqlite());
}

#[test]
fn sets_from_postgres() {
    sets_from_database(TestDb::postgres());
}

#[test]
fn sets_from_mariadb() {
    sets_from_database(TestDb::mariadb());
}
