//! Every Lua example of the talk this project follows
//! (../shared/seed/000_*.txt) run on the real binary: tests/lua/
//! seed_examples.lua holds them as shown on the slides (typos and Python
//! syntax turned into the Lua they stand for, each marked in a comment),
//! and each test here drives one over UDP and checks its effect on the
//! wire or over the control plane.
//!
//!   cargo test --test seed_examples

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use serde_json::json;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn server() -> Server {
    let script = std::fs::read_to_string(format!("{ROOT}/tests/lua/seed_examples.lua")).unwrap();
    Server::start(ServerOpts {
        script: Some(&script),
        cores: "2",
        // items expire only in tables with autoexpire (as in Kamailio)
        extra_toml: "[[htable]]\nname = \"t\"\nautoexpire = 600\n\n[[htable]]\nname = \"ipban\"\n",
        ..Default::default()
    })
}

/// Sends `method` to `user`@server and returns the reply.
fn ask(srv: &Server, method: &str, user: &str, ua: &str) -> String {
    let c = client();
    let ruri = format!("sip:{user}@{}", srv.addr);
    let msg = request(&c, method, &ruri, "").replace("User-Agent: sipshard-tests", ua);
    exchange(&c, srv.addr, msg.as_bytes())
        .unwrap_or_else(|| panic!("{method} {user} unanswered\n{}", srv.log()))
}

fn hdr(reply: &str, name: &str) -> String {
    header(reply, name).unwrap_or_else(|| panic!("no {name} in {reply}"))
}

/// ksr_route_sipout: a request for a foreign domain is relayed with
/// `P-Hint: outbound`; one for us returns to the caller's route (200 Local).
#[test]
fn route_sipout_hints_and_relays_foreign_requests() {
    let srv = server();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let c = client();
    let ruri = format!("sip:sipout@{}", sink.local_addr().unwrap());
    c.send_to(request(&c, "MESSAGE", &ruri, "").as_bytes(), srv.addr)
        .unwrap();
    let relayed = recv(&sink).unwrap_or_else(|| panic!("not relayed\n{}", srv.log()));
    assert!(
        relayed.starts_with(&format!("MESSAGE {ruri} SIP/2.0")),
        "{relayed}"
    );
    assert_eq!(hdr(&relayed, "P-Hint"), "outbound", "{relayed}");
    let local = ask(&srv, "MESSAGE", "sipout", "User-Agent: t");
    assert_eq!(status(&local), 200, "{local}");
    assert_eq!(reason(&local), "Local");
    // the slide's `KSR.hdr.append_hf` (for a foreign R-URI) is not a KSR
    // function, in Kamailio 5.6 as here: the route stops with an error
    let c = client();
    let ruri = format!("sip:sipout-as-printed@{}", sink.local_addr().unwrap());
    let r = exchange(&c, srv.addr, request(&c, "MESSAGE", &ruri, "").as_bytes()).unwrap();
    assert_eq!(status(&r), 500, "{r}");
    let err = hdr(&r, "X-Error");
    assert!(
        err.contains("KSR.hdr.append_hf") && err.contains("not exported"),
        "{err}"
    );
}

/// The scanner check answers 200 and stops for "sipcli". As on the slide,
/// "friendly-scanner" is a Lua *pattern* in which `-` is a quantifier: it
/// matches "friendlyscanner" but not "friendly-scanner" (the same in
/// Kamailio, whose Lua is the same language), so that UA goes on to the
/// rest of the route (404 here).
#[test]
fn friendly_scanner_check_runs_as_written() {
    let srv = server();
    for (ua, code) in [
        ("User-Agent: sipcli/v1.8", 200),
        ("User-Agent: friendlyscanner", 200),
        ("User-Agent: friendly-scanner", 404),
        ("User-Agent: Linphone/5", 404),
    ] {
        let r = ask(&srv, "OPTIONS", "nobody", ua);
        assert_eq!(status(&r), code, "{ua}: {r}");
    }
}

/// `$sht(t=>x)` + `$shtex(t=>x)` and `KSR.htable.sht_setxs` leave the same
/// entry: value "kamailio", expiring in 300 s.
#[test]
fn sht_pseudo_variables_equal_sht_setxs() {
    let srv = server();
    let r = ask(&srv, "OPTIONS", "htable", "User-Agent: t");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(hdr(&r, "X-X"), "kamailio");
    assert_eq!(hdr(&r, "X-Y"), "kamailio");
    for h in ["X-X-Expires", "X-Y-Expires"] {
        let s: i64 = hdr(&r, h).parse().unwrap();
        assert!((298..=300).contains(&s), "{h}: {s}");
    }
    let dump = rpc(srv.rpc_port, "htable.dump", json!(["t"]));
    let names: Vec<&str> = dump
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x", "y"], "{dump}");
}

/// `KSR.pv.seti("$sht(ipban=>$si)", 1)`: the inner `$si` is expanded, so
/// the entry is the source IP (not the text "$si"), the same entry the
/// concatenated form writes.
#[test]
fn sht_key_with_si_is_the_source_ip() {
    let srv = server();
    let r = ask(&srv, "OPTIONS", "ipban", "User-Agent: t");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(hdr(&r, "X-Ban"), "1");
    let dump = rpc(srv.rpc_port, "htable.dump", json!(["ipban"]));
    assert_eq!(dump, json!([{"name": "127.0.0.1", "value": 1}]), "{dump}");
    rpc(srv.rpc_port, "htable.delete", json!(["ipban", "127.0.0.1"]));
    let r = ask(&srv, "OPTIONS", "ipban-concat", "User-Agent: t");
    assert_eq!(hdr(&r, "X-Ban"), "1", "{r}");
    let dump = rpc(srv.rpc_port, "htable.dump", json!(["ipban"]));
    assert_eq!(dump, json!([{"name": "127.0.0.1", "value": 1}]), "{dump}");
}

/// The is_myself_* variants agree with `is_myself($ru)` and the addresses.
#[test]
fn is_myself_variants() {
    let srv = server();
    let r = ask(&srv, "OPTIONS", "myself", "User-Agent: t");
    assert_eq!(status(&r), 200, "{r}");
    // R-URI and To are the server's address; From is client.example; the
    // source is 127.0.0.1, one of the server's addresses
    assert_eq!(hdr(&r, "X-Ruri"), "yes");
    assert_eq!(hdr(&r, "X-Is-Myself-Ru"), "yes");
    assert_eq!(hdr(&r, "X-Turi"), "yes");
    assert_eq!(hdr(&r, "X-Furi"), "no");
    assert_eq!(hdr(&r, "X-Srcip"), "yes");
}

/// `$rm == "CANCEL"` and `is_CANCEL()`; `string.find("INVITE,BYE,...",
/// $rm)` and `is_method_in("IBSU")`: each pair agrees.
#[test]
fn method_checks_are_equivalent() {
    let srv = server();
    for (m, cancel, ibsu) in [
        ("CANCEL", "yes yes", "no no"),
        ("BYE", "no no", "yes yes"),
        ("SUBSCRIBE", "no no", "yes yes"),
        ("UPDATE", "no no", "yes yes"),
        ("OPTIONS", "no no", "no no"),
        ("MESSAGE", "no no", "no no"),
    ] {
        let r = ask(&srv, m, "methods", "User-Agent: t");
        assert_eq!(status(&r), 200, "{m}: {r}\n{}", srv.log());
        assert_eq!(hdr(&r, "X-Cancel"), cancel, "{m}");
        assert_eq!(hdr(&r, "X-IBSU"), ibsu, "{m}");
    }
}

/// ksr_is_src_trusted with KSR.kx.get_srcip and KSR.ipops.ip_is_in_subnet:
/// 127.0.0.1 is in ALLOWADDR, so ksr_route_auth lets the request through.
#[test]
fn src_trusted_by_subnet_list() {
    let srv = server();
    let r = ask(&srv, "OPTIONS", "trusted", "User-Agent: t");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(hdr(&r, "X-Trusted"), "yes");
}

/// cjson + `KSR.sipjson.sj_serialize("0B", "$var(json)")`: the JSON
/// document of the request, decoded in Lua.
#[test]
fn sipjson_serialize_with_cjson() {
    let srv = server();
    let r = ask(&srv, "INVITE", "json", "User-Agent: t");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(hdr(&r, "X-Json-Rm"), "INVITE");
    assert_eq!(hdr(&r, "X-Json-Ru"), format!("sip:json@{}", srv.addr));
}
