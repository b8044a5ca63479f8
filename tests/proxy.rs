//! The stateful proxy end to end: real sipp callers and callees (the
//! scenarios in tests/sipp/) calling each other through the proxy, which
//! runs tests/lua/proxy.lua (no auth) or the default etc/sipshard.lua (auth).
//!
//! The proxy under test is sipshard (the default) or, with
//! `PROXY_UNDER_TEST=kamailio`, Kamailio 5.6 running the same Lua scripts
//! with tests/kamailio/kamailio.cfg: the reference the scenarios and scripts
//! were checked against.
//!
//!   cargo test --test proxy                              # sipshard
//!   PROXY_UNDER_TEST=kamailio cargo test --test proxy    # Kamailio 5.6
//!
//! Callees register with a REGISTER the test sends (Contact = the sipp
//! callee's address); every sipp runs with `-m N` and a global timeout, and
//! the tests assert its exit status, its call counts and, where it matters,
//! which messages it sent and received (`-trace_msg`).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn proxy_lua() -> String {
    format!("{ROOT}/tests/lua/proxy.lua")
}

fn default_lua() -> String {
    format!("{ROOT}/etc/sipshard.lua")
}

// ---------------------------------------------------------------- proxies

impl Kamailio {
    /// `lua`: script path; `db_url`: Some = load auth/auth_db (-A WITH_AUTH).
    fn start(lua: &str, db_url: Option<&str>) -> Kamailio {
        Self::start_cfg("kamailio.cfg", lua, db_url, &[])
    }

    /// tests/kamailio/`cfg_name` with its `@...@` placeholders filled in
    /// (`subs`: the cfg's own extra ones).
    fn start_cfg(
        cfg_name: &str,
        lua: &str,
        db_url: Option<&str>,
        subs: &[(&str, String)],
    ) -> Kamailio {
        let dir = TempDir::new("kam");
        let port = free_udp_port();
        let mut cfg = std::fs::read_to_string(format!("{ROOT}/tests/kamailio/{cfg_name}"))
            .unwrap()
            .replace("@DEBUG@", "2")
            .replace("@PORT@", &port.to_string())
            .replace("@MPATH@", &kamailio_mpath(&["tm.so", "app_lua.so"]))
            .replace("@LUA@", lua)
            .replace("@DB_URL@", db_url.unwrap_or(""));
        for (k, v) in subs {
            cfg = cfg.replace(k, v);
        }
        if let Some(p) = unfilled_placeholder(&cfg) {
            panic!("unfilled {p} in {cfg_name}");
        }
        let args: &[&str] = if db_url.is_some() && cfg_name == "kamailio.cfg" {
            &["-m", "64", "-A", "WITH_AUTH"]
        } else {
            &["-m", "64"]
        };
        Kamailio::run(dir, &cfg, port, args, &[], true)
    }
}

/// The first `@NAME@` (capitals and underscores) left in `text`.
fn unfilled_placeholder(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    (0..b.len()).filter(|&i| b[i] == b'@').find_map(|i| {
        let len = b[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_uppercase() || **c == b'_')
            .count();
        (len > 0 && b.get(i + 1 + len) == Some(&b'@')).then(|| &text[i..i + len + 2])
    })
}

/// The proxy under test: sipshard or Kamailio.
enum Proxy {
    Sipshard(Server),
    Kamailio(Kamailio),
}

impl Proxy {
    /// tests/lua/proxy.lua: registrar without auth + proxy.
    fn start() -> Proxy {
        Self::start_with(2, "")
    }

    /// `shards` shards; `core_toml` extra `[core]` lines (sipshard only).
    fn start_with(shards: u32, core_toml: &str) -> Proxy {
        if kamailio_selected() {
            return Proxy::Kamailio(Kamailio::start(&proxy_lua(), None));
        }
        let script = std::fs::read_to_string(proxy_lua()).unwrap();
        let cores = shards.to_string();
        Proxy::Sipshard(Server::start(ServerOpts {
            script: Some(&script),
            cores: &cores,
            core_toml,
            ..Default::default()
        }))
    }

    /// The default script etc/sipshard.lua with digest auth against `db`.
    fn start_default(db: &TestDb) -> Proxy {
        if kamailio_selected() {
            return Proxy::Kamailio(Kamailio::start(&default_lua(), Some(&db.url)));
        }
        let toml = format!("[db]\nurl = \"{}\"\n", db.url);
        Proxy::Sipshard(Server::start(ServerOpts {
            cores: "2",
            extra_toml: &toml,
            ..Default::default()
        }))
    }

    /// A basic-KEMI-style script (`lua`: tests/lua/basic.lua, or Kamailio's
    /// own example) with what it expects: digest auth against `db`'s
    /// subscriber table, usrloc, htable "ipban", pike (`pike_density`
    /// requests per 2 s), nathelper, permissions over `db`'s address table.
    fn start_basic(db: &TestDb, lua: &str, pike_density: u32) -> Proxy {
        Self::start_basic_with(db, lua, pike_density, "")
    }

    /// [`Proxy::start_basic`] with more sipshard TOML (ignored by Kamailio).
    fn start_basic_with(db: &TestDb, lua: &str, pike_density: u32, extra: &str) -> Proxy {
        if kamailio_selected() {
            return Proxy::Kamailio(Kamailio::start_cfg(
                "basic.cfg",
                lua,
                Some(&db.url),
                &[
                    ("@BAN_SECS@", "300".into()),
                    ("@PIKE_DENSITY@", pike_density.to_string()),
                ],
            ));
        }
        let script = std::fs::read_to_string(lua).unwrap();
        let toml = format!(
            "[db]\nurl = \"{}\"\n{}\n{extra}",
            db.url,
            BASIC_TOML.replace("@PIKE_DENSITY@", &pike_density.to_string())
        );
        Proxy::Sipshard(Server::start(ServerOpts {
            script: Some(&script),
            cores: "2",
            extra_toml: &toml,
            core_toml: BASIC_DEFINES,
            ..Default::default()
        }))
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

    /// The domain part callers and callees use: `127.0.0.1:PORT`.
    fn domain(&self) -> String {
        self.addr().to_string()
    }

    /// Binds `user` (AOR `user@127.0.0.1`) to the sipp at `port`, no auth.
    fn register(&self, user: &str, port: u16) {
        let c = client();
        let call_id = format!("reg-{user}-{port}-{}", std::process::id());
        let msg = register_msg(
            &c,
            user,
            &self.domain(),
            &call_id,
            1,
            &format!("Contact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: 600\r\n"),
        );
        let r = exchange(&c, self.addr(), msg.as_bytes())
            .unwrap_or_else(|| panic!("REGISTER {user} unanswered:\n{}", self.log()));
        assert_eq!(status(&r), 200, "REGISTER {user}: {r}\n{}", self.log());
    }

    /// As `register`, answering the digest challenge.
    fn register_auth(&self, user: &str, password: &str, port: u16) {
        let c = client();
        let r = register_with_auth(
            &c,
            self.addr(),
            user,
            &self.domain(),
            password,
            &format!("rega-{user}-{port}-{}", std::process::id()),
            1,
            &format!("Contact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: 600\r\n"),
        );
        assert_eq!(status(&r), 200, "REGISTER {user}: {r}\n{}", self.log());
    }

    /// Summed over shards (sipshard only; None for Kamailio).
    fn stat(&self, name: &str) -> Option<u64> {
        match self {
            Proxy::Sipshard(s) => {
                let v = rpc(s.rpc_port, "stats.fetch", json!([name]));
                Some(
                    v[name]
                        .as_u64()
                        .unwrap_or_else(|| panic!("no {name} in {v}")),
                )
            }
            Proxy::Kamailio(_) => None,
        }
    }
}

// ---------------------------------------------------------------- sipp

/// Asserts that every sipp exited 0 with `calls` successful calls and none
/// failed; prints all of them and the proxy's log otherwise.
fn assert_all_ok(proxy: &Proxy, runs: &[(&SippResult, u64)]) {
    let bad = runs
        .iter()
        .any(|(r, calls)| r.code != Some(0) || r.successful() != *calls || r.failed() != 0);
    if bad {
        let mut text = String::new();
        for (r, calls) in runs {
            text.push_str(&format!(
                "{}: exit {:?}, successful {:?} (want {calls}), failed {:?}\n",
                r.name,
                r.code,
                r.stats.get("SuccessfulCall(C)"),
                r.stats.get("FailedCall(C)")
            ));
        }
        for (r, _) in runs {
            text.push_str(&r.report());
            text.push('\n');
        }
        let log = proxy.log();
        let log = &log[log.len().saturating_sub(6000)..];
        panic!("{text}--- proxy log (tail):\n{log}");
    }
}

// ---------------------------------------------------------------- tests

/// INVITE, 100/180, 200, ACK, 0.5 s, BYE, 200 through a record-routing
/// proxy: ACK and BYE follow the route set and reach the callee through the
/// proxy (uas-call.xml checks the top Via of INVITE, ACK and BYE and the
/// Record-Route of the INVITE).
#[test]
fn call_with_record_route() {
    let proxy = Proxy::start();
    let dir = TempDir::new("call");
    let port = free_udp_port();
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, proxy.addr(), 3, &[]);
    proxy.register("bob", port);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call.xml",
        proxy.addr(),
        "bob",
        3,
        &["-d", "500", "-r", "5", "-l", "3"],
    );
    let uac = uac.wait();
    let uas = uas.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, 3), (&uas, 3)]);
    // the dialog went through the proxy: the callee got ACK and BYE
    assert_eq!(uas.traced("received", "ACK "), 3, "{}", uas.report());
    assert_eq!(uas.traced("received", "BYE "), 3, "{}", uas.report());
    assert!(uac.messages.contains("Record-Route:"), "{}", uac.report());
}

/// The caller cancels a ringing call: CANCEL answered 200, the INVITE 487
/// and ACKed; the callee receives the CANCEL from the proxy and the ACK of
/// its 487 hop by hop (uas-ring.xml).
#[test]
fn cancel_of_a_ringing_call() {
    let proxy = Proxy::start();
    let dir = TempDir::new("cancel");
    let port = free_udp_port();
    let uas = Sipp::uas(&dir, "uas", "uas-ring.xml", port, proxy.addr(), 1, &[]);
    proxy.register("carl", port);
    let uac = Sipp::uac(&dir, "uac", "uac-cancel.xml", proxy.addr(), "carl", 1, &[]).wait();
    let uas = uas.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, 1), (&uas, 1)]);
    assert_eq!(uas.traced("received", "CANCEL "), 1, "{}", uas.report());
    assert!(uas.traced("received", "ACK ") >= 1, "{}", uas.report());
    assert!(
        uac.traced("received", "SIP/2.0 487") >= 1,
        "{}",
        uac.report()
    );
    assert!(
        uac.traced("received", "SIP/2.0 200") >= 1,
        "{}",
        uac.report()
    );
}

/// The callee is busy (486): the failure route retries the AOR's second
/// line ("<user>-2"), which answers; the call completes.
#[test]
fn busy_callee_then_second_contact() {
    let proxy = Proxy::start();
    let dir = TempDir::new("busy");
    let (p_busy, p_ok) = (free_udp_port(), free_udp_port());
    let busy = Sipp::uas(
        &dir,
        "uas-busy",
        "uas-busy.xml",
        p_busy,
        proxy.addr(),
        1,
        &[],
    );
    let ok = Sipp::uas(&dir, "uas-ok", "uas-call.xml", p_ok, proxy.addr(), 1, &[]);
    proxy.register("dan", p_busy);
    proxy.register("dan-2", p_ok);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call.xml",
        proxy.addr(),
        "dan",
        1,
        &["-d", "300"],
    )
    .wait();
    let busy = busy.wait_after(&uac);
    let ok = ok.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, 1), (&busy, 1), (&ok, 1)]);
    assert_eq!(busy.traced("sent", "SIP/2.0 486"), 1, "{}", busy.report());
    assert_eq!(ok.traced("received", "INVITE "), 1, "{}", ok.report());
    // the caller never saw the 486
    assert_eq!(uac.traced("received", "SIP/2.0 486"), 0, "{}", uac.report());
    // the failure route ran once, timed in its own histogram
    if let Proxy::Sipshard(s) = &proxy {
        let v = rpc(s.rpc_port, "kemi.route_latency", json!([]));
        let routes = v["routes"].as_array().expect("routes");
        let failure = routes
            .iter()
            .find(|r| r["route"] == "ksr_failure_manage")
            .unwrap_or_else(|| panic!("no ksr_failure_manage histogram in {v}"));
        assert_eq!(failure["merged"]["cnt"], 1, "{failure}");
    }
}

/// The callee rings and never answers: the proxy's fr_inv timer (2 s, set by
/// the script for "noanswer*" users) cancels the branch and the caller gets
/// 408; the callee receives the CANCEL.
#[test]
fn callee_never_answers() {
    let proxy = Proxy::start();
    let dir = TempDir::new("noanswer");
    let port = free_udp_port();
    let uas = Sipp::uas(&dir, "uas", "uas-ring.xml", port, proxy.addr(), 1, &[]);
    proxy.register("noanswer", port);
    let t0 = Instant::now();
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-noanswer.xml",
        proxy.addr(),
        "noanswer",
        1,
        &[],
    )
    .wait();
    let uas = uas.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, 1), (&uas, 1)]);
    assert_eq!(uac.traced("received", "SIP/2.0 408"), 1, "{}", uac.report());
    assert_eq!(uas.traced("received", "CANCEL "), 1, "{}", uas.report());
    // after the script's 2 s, well before tm's default 120 s
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "408 after {took:?}"
    );
}

/// A non-INVITE answered after 2.5 s: the caller retransmits (T1 = 500 ms),
/// the proxy absorbs the retransmissions, the callee sees the request once.
/// (The callee sends 100 Trying at once, so the proxy's own retransmission
/// timer slows down to T2 = 4 s, as Kamailio does.)
#[test]
fn slow_non_invite_retransmissions_are_absorbed() {
    let proxy = Proxy::start();
    let dir = TempDir::new("slow");
    let port = free_udp_port();
    let uas = Sipp::uas(
        &dir,
        "uas",
        "uas-slow-message.xml",
        port,
        proxy.addr(),
        1,
        &[],
    );
    proxy.register("dave", port);
    let uac = Sipp::uac(&dir, "uac", "uac-message.xml", proxy.addr(), "dave", 1, &[]).wait();
    let uas = uas.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, 1), (&uas, 1)]);
    let sent = uac.traced("sent", "MESSAGE ");
    assert!(
        sent >= 3,
        "the caller retransmitted (sent {sent}):\n{}",
        uac.report()
    );
    assert_eq!(
        uas.traced("received", "MESSAGE "),
        1,
        "the callee saw the MESSAGE once:\n{}",
        uas.report()
    );
}

/// Parallel forking: one AOR, two contacts. One answers after 0.5 s of
/// ringing, the other rings and receives a CANCEL.
#[test]
fn parallel_forking_cancels_the_other_branch() {
    let proxy = Proxy::start();
    let dir = TempDir::new("fork");
    let (p_ans, p_ring) = (free_udp_port(), free_udp_port());
    let ans = Sipp::uas(
        &dir,
        "uas-answer",
        "uas-call.xml",
        p_ans,
        proxy.addr(),
        1,
        &["-d", "500"],
    );
    let ring = Sipp::uas(
        &dir,
        "uas-ring",
        "uas-ring.xml",
        p_ring,
        proxy.addr(),
        1,
        &[],
    );
    proxy.register("erin", p_ans);
    proxy.register("erin", p_ring);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call.xml",
        proxy.addr(),
        "erin",
        1,
        &["-d", "300"],
    )
    .wait();
    let ans = ans.wait_after(&uac);
    let ring = ring.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, 1), (&ans, 1), (&ring, 1)]);
    assert_eq!(ring.traced("received", "INVITE "), 1, "{}", ring.report());
    assert_eq!(ring.traced("received", "CANCEL "), 1, "{}", ring.report());
    assert_eq!(ans.traced("received", "BYE "), 1, "{}", ans.report());
}

/// The default script: a local user's INVITE is challenged (407,
/// Proxy-Authenticate), answered with Proxy-Authorization (sipp
/// `[authentication]`), then relayed to the registered (authenticated) callee.
#[test]
fn authenticated_call_through_the_default_script() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret"), ("bob@127.0.0.1", "pw-bob")]);
    let proxy = Proxy::start_default(&db);
    let dir = TempDir::new("auth");
    let port = free_udp_port();
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, proxy.addr(), 1, &[]);
    proxy.register_auth("bob", "pw-bob", port);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call-auth.xml",
        proxy.addr(),
        "bob",
        1,
        &[
            "-d", "300", "-key", "caller", "alice", "-au", "alice", "-ap", "secret",
        ],
    )
    .wait();
    let uas = uas.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, 1), (&uas, 1)]);
    assert_eq!(uac.traced("received", "SIP/2.0 407"), 1, "{}", uac.report());
    assert_eq!(uas.traced("received", "INVITE "), 1, "{}", uas.report());
    // a wrong password gets no call through
    let dir2 = TempDir::new("auth-bad");
    let bad = Sipp::uac(
        &dir2,
        "uac-bad",
        "uac-call-auth.xml",
        proxy.addr(),
        "bob",
        1,
        &[
            "-key",
            "caller",
            "alice",
            "-au",
            "alice",
            "-ap",
            "wrong",
            "-recv_timeout",
            "3s",
        ],
    )
    .wait();
    assert_ne!(bad.code, Some(0), "{}", bad.report());
    assert_eq!(bad.traced("received", "SIP/2.0 200"), 0, "{}", bad.report());
    assert!(
        bad.traced("received", "SIP/2.0 407") >= 2,
        "{}",
        bad.report()
    );
}

/// Two shards, `udp_socket = "spread"`: every datagram goes to a random
/// shard, so replies and in-dialog requests often arrive on a shard that
/// does not own the transaction; they are handed over and every call
/// completes.
#[test]
fn replies_on_another_shard_still_complete_the_call() {
    const CALLS: u32 = 20;
    let proxy = Proxy::start_with(2, "udp_socket = \"spread\"");
    let dir = TempDir::new("spread");
    let port = free_udp_port();
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, proxy.addr(), CALLS, &[]);
    proxy.register("frank", port);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call.xml",
        proxy.addr(),
        "frank",
        CALLS,
        &["-d", "200", "-r", "10", "-l", "20"],
    )
    .wait();
    let uas = uas.wait_after(&uac);
    assert_all_ok(&proxy, &[(&uac, CALLS as u64), (&uas, CALLS as u64)]);
    // The transaction store is shared: a reply read by the shard that did
    // not create its transaction completes it there, without a hand-over.
    match proxy.stat("tm.foreign_replies") {
        Some(n) => assert!(
            n > 0,
            "no reply was read by a shard other than its transaction's creator"
        ),
        None => eprintln!("(Kamailio: no shard statistics; calls checked only)"),
    }
}

// ---------------------------------------------------------------- basic script

/// `#!define`s of tests/kamailio/basic.cfg, as `[core] defines`.
const BASIC_DEFINES: &str =
    r#"defines = ["WITH_AUTH", "WITH_NAT", "WITH_IPAUTH", "WITH_ANTIFLOOD"]"#;

/// sipshard's equivalent of tests/kamailio/basic.cfg (what Kamailio's basic
/// KEMI example expects around it). `@PIKE_DENSITY@` is filled in.
const BASIC_TOML: &str = r#"

[[htable]]
name = "ipban"
size = 8
autoexpire = 300

[pike]
sampling_time_unit = 2
reqs_density_per_unit = @PIKE_DENSITY@
remove_latency = 4

[permissions]
enable = true
"#;

fn basic_lua() -> String {
    format!("{ROOT}/tests/lua/basic.lua")
}

/// Kamailio's own basic KEMI Lua example as Debian's kamailio package
/// installs it (never copied into this repository), or the copy
/// `KAMAILIO_BASIC_LUA` names (e.g. the kamailio repository's current one).
fn kamailio_basic_lua() -> String {
    std::env::var("KAMAILIO_BASIC_LUA").unwrap_or_else(|_| {
        "/usr/share/doc/kamailio/examples/kemi/kamailio-basic-kemi-lua.lua".into()
    })
}

fn basic_db() -> TestDb {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret"), ("bob@127.0.0.1", "pw-bob")]);
    db
}

/// An OPTIONS from `src` (an address of 127.0.0.0/8) to `ruri`, with extra
/// header lines (each ending in CRLF; a Max-Forwards line replaces the
/// default one); the status line of the answer, or None.
fn options_from(
    proxy: &Proxy,
    src: &str,
    ruri: &str,
    extra: &str,
    timeout: Duration,
) -> Option<String> {
    let c = UdpSocket::bind((src, 0)).unwrap();
    c.set_read_timeout(Some(timeout)).unwrap();
    let local = c.local_addr().unwrap();
    let mf = if extra.contains("Max-Forwards:") {
        ""
    } else {
        "Max-Forwards: 70\r\n"
    };
    let n = std::process::id() as u64 * 1_000_003 + rand_u32() as u64;
    let msg = format!(
        "OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{n}\r\n\
         From: <sip:probe@{src}>;tag={n}\r\nTo: <{ruri}>\r\nCall-ID: {n}@{src}\r\n\
         CSeq: 1 OPTIONS\r\n{mf}{extra}Content-Length: 0\r\n\r\n"
    );
    c.send_to(msg.as_bytes(), proxy.addr()).unwrap();
    recv(&c).map(|r| r.lines().next().unwrap_or("").to_string())
}

fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(std::process::id())
}

/// REGISTER with digest auth by sipp (bench/sipp/register-auth.xml, as in
/// Kamailio's KEMI performance test), then an authenticated call from alice
/// to bob through the script: INVITE challenged with 407, relayed with
/// Record-Route; ACK and the in-dialog BYE reach the callee through the
/// proxy by the recorded route.
fn register_and_call_through(proxy: &Proxy, tag: &str) {
    let dir = TempDir::new(tag);
    // bob's phone: a sipp UAS on its own port
    let port = free_udp_port();
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", port, proxy.addr(), 1, &[]);
    // alice registers three times with sipp (REGISTER, 401, REGISTER+auth, 200)
    let csv = dir.path("alice.csv");
    std::fs::write(&csv, "SEQUENTIAL\nalice;127.0.0.1;secret\n").unwrap();
    let reg = Sipp::uac(
        &dir,
        "reg",
        &format!("{ROOT}/bench/sipp/register-auth.xml"),
        proxy.addr(),
        "alice",
        3,
        &[
            "-inf",
            csv.to_str().unwrap(),
            "-au",
            "alice",
            "-ap",
            "secret",
        ],
    )
    .wait();
    assert_all_ok(proxy, &[(&reg, 3)]);
    assert_eq!(reg.traced("received", "SIP/2.0 401"), 3, "{}", reg.report());
    // bob registers his phone
    proxy.register_auth("bob", "pw-bob", port);
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call-auth.xml",
        proxy.addr(),
        "bob",
        1,
        &[
            "-d", "300", "-key", "caller", "alice", "-au", "alice", "-ap", "secret",
        ],
    )
    .wait();
    let uas = uas.wait_after(&uac);
    assert_all_ok(proxy, &[(&uac, 1), (&uas, 1)]);
    assert_eq!(uac.traced("received", "SIP/2.0 407"), 1, "{}", uac.report());
    assert!(uac.messages.contains("Record-Route:"), "{}", uac.report());
    assert_eq!(uas.traced("received", "INVITE "), 1, "{}", uas.report());
    assert_eq!(uas.traced("received", "ACK "), 1, "{}", uas.report());
    assert_eq!(uas.traced("received", "BYE "), 1, "{}", uas.report());
}

/// tests/lua/basic.lua (every KSR function Kamailio's basic example calls):
/// sipp REGISTER with auth, and a call between two registered users.
#[test]
fn basic_script_register_and_call() {
    let db = basic_db();
    let proxy = Proxy::start_basic(&db, &basic_lua(), 1000);
    register_and_call_through(&proxy, "basic-call");
}

/// tests/lua/basic.lua's initial checks: keepalive OPTIONS 200, a scanner's
/// User-Agent answered 200 and forgotten, Max-Forwards 0 answered 483, a
/// request for an unknown local user 404 (after auth).
#[test]
fn basic_script_initial_checks() {
    let db = basic_db();
    let proxy = Proxy::start_basic(&db, &basic_lua(), 1000);
    let me = proxy.domain();
    let t = Duration::from_secs(2);
    let ask = |ruri: &str, extra: &str| {
        options_from(&proxy, "127.0.0.1", ruri, extra, t)
            .unwrap_or_else(|| panic!("no answer to OPTIONS {ruri} {extra:?}:\n{}", proxy.log()))
    };
    assert_eq!(ask(&format!("sip:{me}"), ""), "SIP/2.0 200 Keepalive");
    assert_eq!(
        ask(&format!("sip:100@{me}"), "User-Agent: friendly-scanner\r\n"),
        "SIP/2.0 200 OK"
    );
    assert_eq!(
        ask(&format!("sip:100@{me}"), "Max-Forwards: 0\r\n"),
        "SIP/2.0 483 Too Many Hops"
    );
    // from a local user (From host is ours): challenged first
    assert_eq!(
        ask(&format!("sip:100@{me}"), ""),
        "SIP/2.0 407 Proxy Authentication Required"
    );
}

/// tests/lua/basic.lua's flood control: a source sending faster than pike's
/// density is answered until pike trips, then banned in the `ipban` htable
/// and ignored; another source is still answered. (127.0.0.2 and .3 are
/// other sources on loopback; the server listens on 127.0.0.1, which the
/// script exempts as myself.)
#[test]
fn basic_script_pike_blocks_a_flooding_source() {
    let db = basic_db();
    let proxy = Proxy::start_basic(&db, &basic_lua(), 10);
    let ruri = format!("sip:{}", proxy.domain());
    let quick = Duration::from_millis(400);
    let answers: Vec<Option<String>> = (0..30)
        .map(|_| options_from(&proxy, "127.0.0.2", &ruri, "", quick))
        .collect();
    let answered = answers.iter().take_while(|a| a.is_some()).count();
    assert!(
        (5..30).contains(&answered),
        "pike should let some through, then block: {answers:?}\n{}",
        proxy.log()
    );
    assert!(
        answers[answered..].iter().all(Option::is_none),
        "once blocked, never answered again: {answers:?}"
    );
    assert_eq!(
        options_from(&proxy, "127.0.0.3", &ruri, "", Duration::from_secs(2)).as_deref(),
        Some("SIP/2.0 200 Keepalive"),
        "another source is still served"
    );
    if let Proxy::Sipshard(s) = &proxy {
        let v = rpc(s.rpc_port, "htable.get", json!(["ipban", "127.0.0.2"]));
        assert_eq!(v["item"]["value"], 1, "ipban holds the flooder: {v}");
    }
}

/// Kamailio's own basic KEMI Lua example, unmodified, as Debian installs it
/// (or `KAMAILIO_BASIC_LUA`): `sipshard check-script` finds nothing
/// missing, and sipp REGISTER with auth and a call through it succeed.
#[test]
fn kamailio_basic_example_runs_unchanged() {
    let lua = kamailio_basic_lua();
    assert!(
        Path::new(&lua).exists(),
        "{lua} missing: apt-get install -y kamailio"
    );
    if !kamailio_selected() {
        let out = Command::new(bin())
            .args(["check-script", &lua])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "check-script:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let db = basic_db();
    let proxy = Proxy::start_basic(&db, &lua, 1000);
    register_and_call_through(&proxy, "kam-basic");
}

// ---------------------------------------------------------------- flood

/// Resident memory of the proxy process, kB (sipshard only).
fn rss_kb(proxy: &Proxy) -> Option<u64> {
    let Proxy::Sipshard(s) = proxy else {
        return None;
    };
    let pid = s.child.as_ref()?.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Sends `make(i)` from `src` to `to` at about `rate` datagrams/s until
/// `stop`; returns how many were sent.
fn flooder(
    src: &'static str,
    to: SocketAddr,
    rate: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    make: fn(u64, SocketAddr) -> Vec<u8>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let sock = UdpSocket::bind((src, 0)).unwrap();
        let local = sock.local_addr().unwrap();
        let per_tick = (rate / 100).max(1) as u64;
        let mut n = 0u64;
        let t0 = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..per_tick {
                let _ = sock.send_to(&make(n, local), to);
                n += 1;
            }
            // paced: tick k starts at k × 10 ms
            let due = Duration::from_millis(10 * (n / per_tick));
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        n
    })
}

fn malformed(n: u64, local: SocketAddr) -> Vec<u8> {
    match n % 5 {
        0 => format!("INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local}\r\n\r\n")
            .into_bytes(),
        1 => vec![0xff; 64 + (n % 300) as usize],
        2 => b"OPTIONS  sip:a@b SIP/7.0\r\n\r\n".to_vec(),
        3 => format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKm{n}\r\n\
             From: <sip:a@127.0.0.1>;tag={n}\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: m{n}\r\n\
             CSeq: x REGISTER\r\nContent-Length: 99999\r\n\r\n"
        )
        .into_bytes(),
        _ => {
            let mut v = b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nX-Big: ".to_vec();
            v.extend(std::iter::repeat_n(b'a', 4000));
            v.extend_from_slice(b"\r\n\r\n");
            v
        }
    }
}

fn scanner(n: u64, local: SocketAddr) -> Vec<u8> {
    format!(
        "OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKs{n}\r\n\
         From: \"sipvicious\" <sip:100@1.1.1.1>;tag=s{n}\r\nTo: <sip:100@1.1.1.1>\r\n\
         Call-ID: s{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
         User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A REGISTER for a user the subscriber table does not have, with made-up
/// credentials (each one a database miss, then a negative-cache hit).
fn unknown_register(n: u64, local: SocketAddr) -> Vec<u8> {
    let user = format!("ghost{}", n % 500);
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKu{n}\r\n\
         From: <sip:{user}@127.0.0.1>;tag=u{n}\r\nTo: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: u{n}\r\nCSeq: 2 REGISTER\r\nMax-Forwards: 70\r\n\
         Contact: <sip:{user}@{local}>\r\nAuthorization: Digest username=\"{user}\", \
         realm=\"127.0.0.1\", nonce=\"abc{n}\", uri=\"sip:127.0.0.1\", \
         response=\"00000000000000000000000000000000\"\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Hostile traffic while legitimate users register: malformed datagrams
/// and a scanner (banned by pike + ipban after their first requests),
/// REGISTERs for unknown users with bogus credentials from other sources,
/// all at a few thousand datagrams/s, while sipp registers a real user with
/// digest auth at 1 000 REG/s. The legitimate registrations see 0 failures
/// and the server's memory stays bounded.
#[test]
fn legitimate_registrations_survive_a_flood() {
    flood_run(None);
}

/// The same flood with pike out of the way (density never reached) and
/// sipshard's `[flood]` doing the work before the route: every source is
/// rate-limited at 2 500 requests/s (the legitimate one sends 2 000: REGISTER
/// and its authenticated retry), and the unknown-user sources are banned
/// after 20 failed authentications.
#[test]
fn legitimate_registrations_survive_a_flood_with_flood_control() {
    if kamailio_selected() {
        return; // [flood] is sipshard's
    }
    flood_run(Some(
        "[flood]\nper_source_rate = 2500\nper_source_burst = 2500\n\
         auth_failures_max = 20\nauth_failures_window_s = 60\nban_time_s = 300\n",
    ));
}

/// The flood runs load both cores on their own: never two at once (the
/// tests of one binary run in parallel).
static FLOOD_ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn flood_run(flood_toml: Option<&str>) {
    let _alone = FLOOD_ALONE.lock().unwrap_or_else(|e| e.into_inner());
    const REGS: u32 = 5000;
    const RSS_BOUND_KB: u64 = 256 * 1024;
    let db = basic_db();
    let proxy = match flood_toml {
        None => Proxy::start_basic(&db, &basic_lua(), 30),
        Some(t) => Proxy::start_basic_with(&db, &basic_lua(), 1_000_000, t),
    };
    let rss0 = rss_kb(&proxy);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let to = proxy.addr();
    let floods = [
        flooder("127.0.0.2", to, 3000, stop.clone(), malformed),
        flooder("127.0.0.3", to, 3000, stop.clone(), scanner),
        flooder("127.0.0.4", to, 1500, stop.clone(), unknown_register),
        flooder("127.0.0.5", to, 1500, stop.clone(), unknown_register),
    ];
    let dir = TempDir::new("flood");
    let csv = dir.path("alice.csv");
    std::fs::write(&csv, "SEQUENTIAL\nalice;127.0.0.1;secret\n").unwrap();
    let reg = Sipp::uac(
        &dir,
        "reg",
        &format!("{ROOT}/bench/sipp/register-auth.xml"),
        proxy.addr(),
        "alice",
        REGS,
        &[
            "-inf",
            csv.to_str().unwrap(),
            "-au",
            "alice",
            "-ap",
            "secret",
            "-r",
            "1000",
            "-l",
            "2000",
        ],
    )
    .wait();
    let rss_peak = rss_kb(&proxy);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: Vec<u64> = floods.into_iter().map(|h| h.join().unwrap()).collect();
    if let (Proxy::Sipshard(s), Some(_)) = (&proxy, flood_toml) {
        let list = rpc(s.rpc_port, "flood.list", json!(["ALL"]));
        eprintln!("[flood] sources with drops or failures: {list}");
    }
    assert_all_ok(&proxy, &[(&reg, REGS as u64)]);
    eprintln!(
        "flood: sent malformed {} scanner {} unknown-user REGISTER {}; \
         server RSS {rss0:?} kB before, {rss_peak:?} kB at the end",
        sent[0],
        sent[1],
        sent[2] + sent[3]
    );
    assert!(sent.iter().all(|n| *n > 1000), "the flood ran: {sent:?}");
    if let (Some(a), Some(b)) = (rss0, rss_peak) {
        assert!(
            b < RSS_BOUND_KB,
            "server RSS {b} kB (from {a} kB) above the {RSS_BOUND_KB} kB bound"
        );
    }
    let Proxy::Sipshard(s) = &proxy else {
        return;
    };
    let stat = |name: &str| {
        rpc(s.rpc_port, "stats.fetch", json!([name]))[name]
            .as_u64()
            .unwrap_or(0)
    };
    if flood_toml.is_none() {
        // the scanner and the malformed source ended up banned
        let v = rpc(s.rpc_port, "htable.get", json!(["ipban", "127.0.0.3"]));
        assert_eq!(v["item"]["value"], 1, "scanner banned: {v}");
        return;
    }
    let (limited, bans, dropped) = (
        stat("flood.rate_limited"),
        stat("flood.bans"),
        stat("flood.banned_drops"),
    );
    eprintln!("[flood]: rate_limited {limited}, bans {bans}, banned_drops {dropped}");
    assert!(limited > 0, "the 3 000/s sources were rate-limited");
    assert_eq!(bans, 2, "both unknown-user sources banned");
    let list = rpc(s.rpc_port, "flood.list", json!([]));
    let mut banned: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["ip_addr"].as_str())
        .collect();
    banned.sort();
    assert_eq!(banned, ["127.0.0.4", "127.0.0.5"], "{list}");
    assert!(dropped > 1000, "their REGISTERs dropped before the route");
}
