//! Flood control on the real binary, over real UDP: the `[flood]`
//! per-source rate limit and the bans after failed authentications (both
//! applied before the route, on every shard, shown and lifted over
//! JSON-RPC), and that every kind of ban expires: `[flood]` bans, pike's
//! block and an `ipban` htable entry.

#![allow(dead_code)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const DOMAIN: &str = "example.com";

/// Every request answered 200 (the route never drops anything itself).
const ANSWER_ALL: &str = r#"
function ksr_request_route()
    KSR.sl.sl_send_reply(200, "OK")
end
"#;

fn client_at(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind a loopback alias");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn options(srv: &Server, sock: &UdpSocket) -> Option<u16> {
    let msg = request(sock, "OPTIONS", &format!("sip:ping@{}", srv.addr), "");
    exchange(sock, srv.addr, msg.as_bytes()).map(|r| status(&r))
}

fn counter(srv: &Server, name: &str) -> u64 {
    let v = rpc(srv.rpc_port, "stats.fetch", json!([name]));
    v.get(name).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// Sends `n` OPTIONS back to back from `sock`, then counts the answers by
/// status within a short quiet period.
fn burst(srv: &Server, sock: &UdpSocket, n: usize) -> (usize, usize) {
    for _ in 0..n {
        let msg = request(sock, "OPTIONS", &format!("sip:ping@{}", srv.addr), "");
        sock.send_to(msg.as_bytes(), srv.addr).unwrap();
    }
    let (mut ok, mut busy) = (0, 0);
    while let Some(r) = recv(sock) {
        match status(&r) {
            200 => ok += 1,
            503 => busy += 1,
            s => panic!("unexpected {s}: {r}"),
        }
    }
    (ok, busy)
}

/// Waits (up to `within`) until `f` holds.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn per_source_rate_drops_the_excess_of_one_source_only() {
    let srv = Server::start(ServerOpts {
        script: Some(ANSWER_ALL),
        cores: "2",
        extra_toml: "[flood]\nper_source_rate = 5\nper_source_burst = 10\n",
        ..ServerOpts::default()
    });
    let flood = client_at("127.0.0.2");
    let (ok, busy) = burst(&srv, &flood, 100);
    // the burst (10) plus what the rate refilled while the 100 were sent
    assert!((10..=20).contains(&ok), "answered {ok}\n{}", srv.log());
    assert_eq!(busy, 0, "dropped, not answered");
    let limited = counter(&srv, "flood.rate_limited");
    assert_eq!(limited as usize, 100 - ok, "every excess request counted");
    assert!(
        srv.log().contains("per_source_rate"),
        "logged: {}",
        srv.log()
    );
    let lines = srv.log().matches("per_source_rate").count();
    assert!(lines < 50, "log lines rate-limited: {lines}");
    // another source has its own bucket
    let other = client_at("127.0.0.3");
    assert_eq!(burst(&srv, &other, 8), (8, 0));
    // the flooding source gets its rate back after a pause
    assert!(eventually(Duration::from_secs(5), || options(&srv, &flood)
        == Some(200)));
    let (ok, _) = srv.stop();
    assert!(ok);
}

#[test]
fn per_source_rate_can_answer_503() {
    let srv = Server::start(ServerOpts {
        script: Some(ANSWER_ALL),
        cores: "2",
        extra_toml: "[flood]\nper_source_rate = 1\nper_source_burst = 3\nanswer_503 = true\n",
        ..ServerOpts::default()
    });
    let c = client_at("127.0.0.2");
    let (ok, busy) = burst(&srv, &c, 20);
    assert!((3..=5).contains(&ok), "answered 200: {ok}");
    assert_eq!(ok + busy, 20, "the excess is answered 503");
    assert_eq!(counter(&srv, "flood.rate_limited") as usize, busy);
}

/// A source that fails authentication `auth_failures_max` times is banned
/// on every shard (its requests dropped before the route, counted, shown by
/// `flood.list`), other sources are not, the ban can be lifted over RPC and
/// expires by itself after `ban_time_s`.
#[test]
fn failed_authentications_ban_the_source_until_the_ban_expires() {
    let db = TestDb::sqlite();
    db.init(&[("alice@example.com", "secret-a")]);
    let toml = format!(
        "[db]\nurl = \"{}\"\n[auth]\nsecret = \"k\"\n\
         [flood]\nauth_failures_max = 3\nauth_failures_window_s = 60\nban_time_s = 2\n",
        db.url
    );
    let srv = Server::start(ServerOpts {
        script: Some(include_str!("../etc/sipshard.lua")),
        cores: "2",
        extra_toml: &toml,
        ..ServerOpts::default()
    });
    let contact = "Contact: <sip:alice@10.0.0.1>\r\n";
    let attacker = client_at("127.0.0.2");
    let ban = |n: u32| {
        for i in 0..3 {
            let r = register_with_auth(
                &attacker,
                srv.addr,
                "alice",
                DOMAIN,
                "guess",
                &format!("bf-{n}-{i}"),
                1,
                contact,
            );
            assert_eq!(status(&r), 401, "wrong password challenged again: {r}");
        }
    };
    ban(1);
    // banned: dropped before the route, whichever shard reads it
    for i in 0..6 {
        let msg = register_msg(
            &attacker,
            "alice",
            DOMAIN,
            &format!("after-{i}"),
            1,
            contact,
        );
        assert_eq!(exchange(&attacker, srv.addr, msg.as_bytes()), None);
    }
    assert!(counter(&srv, "flood.banned_drops") >= 6);
    assert_eq!(counter(&srv, "flood.bans"), 1);
    assert!(srv.log().contains("source banned"), "{}", srv.log());
    let list = rpc(srv.rpc_port, "flood.list", json!([]));
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ip_addr"] == "127.0.0.2")
        .unwrap_or_else(|| panic!("banned source listed: {list}"));
    assert_eq!(entry["banned"], json!(true));
    assert!(entry["expires"].as_u64().unwrap() > 0);
    // the legitimate user from another source is not affected
    let alice = client_at("127.0.0.3");
    let r = register_with_auth(
        &alice, srv.addr, "alice", DOMAIN, "secret-a", "ok-1", 1, contact,
    );
    assert_eq!(status(&r), 200, "{r}");

    // lifted over the control plane
    let r = rpc(srv.rpc_port, "flood.unban", json!(["127.0.0.2"]));
    assert_eq!(r, json!("Ok. Source unbanned."));
    assert!(
        options(&srv, &attacker).is_some(),
        "answered again after flood.unban"
    );
    assert!(rpc(srv.rpc_port, "flood.list", json!([]))
        .as_array()
        .unwrap()
        .is_empty());

    // banned again, and the ban (2 s) expires by itself
    ban(2);
    let banned_at = Instant::now();
    assert_eq!(options(&srv, &attacker), None);
    assert!(
        eventually(Duration::from_secs(6), || options(&srv, &attacker)
            .is_some()),
        "the ban expired"
    );
    assert!(banned_at.elapsed() >= Duration::from_millis(1_500));
    assert!(rpc(srv.rpc_port, "flood.list", json!(["BANNED"]))
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(counter(&srv, "flood.bans"), 2);
    let (ok, _) = srv.stop();
    assert!(ok);
}

/// Kamailio's reference flood defence (pike + an `ipban` htable with
/// autoexpire): both the pike block and the htable ban end on their own.
const PIKE_IPBAN: &str = r#"
function ksr_request_route()
    local srcip = KSR.kx.get_srcip()
    if KSR.htable.sht_match_name("ipban", "eq", srcip) > 0 then
        KSR.x.exit()
    end
    if KSR.pike.pike_check_req() < 0 then
        KSR.htable.sht_seti("ipban", srcip, 1)
        KSR.x.exit()
    end
    KSR.sl.sl_send_reply(200, "OK")
end
"#;

#[test]
fn pike_blocks_and_ipban_entries_expire() {
    let srv = Server::start(ServerOpts {
        script: Some(PIKE_IPBAN),
        cores: "2",
        extra_toml: "[[htable]]\nname = \"ipban\"\nautoexpire = 2\n\n\
                     [pike]\nreqs_density_per_unit = 5\nsampling_time_unit = 1\n",
        ..ServerOpts::default()
    });
    let c = client_at("127.0.0.2");
    let (ok, _) = burst(&srv, &c, 20);
    assert!(ok < 20, "pike blocked some: {ok}");
    assert_eq!(options(&srv, &c), None, "banned in ipban");
    let got = rpc(srv.rpc_port, "htable.get", json!(["ipban", "127.0.0.2"]));
    assert_eq!(got["item"]["value"], json!(1), "{got}");
    let banned_at = Instant::now();
    // quiet: the htable entry expires (autoexpire 2 s) and pike's unit
    // (1 s) has passed without a flood
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(
        eventually(Duration::from_secs(5), || options(&srv, &c) == Some(200)),
        "ban over after {:?}\n{}",
        banned_at.elapsed(),
        srv.log()
    );
    let dump = rpc(srv.rpc_port, "htable.dump", json!(["ipban"]));
    assert!(dump.as_array().unwrap().is_empty(), "{dump}");
}
