//! Script limits on the real binary: a runaway route (`while true do end`)
//! is stopped at `lua_max_instructions` and answered 500 while the other
//! shard keeps answering; a memory hog gets a Lua error (500) at
//! `lua_max_memory_bytes`; both shards go on serving afterwards.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SCRIPT: &str = r#"
function ksr_request_route()
    local user = KSR.pv.get("$rU")
    if user == "loop" then
        while true do end
    elseif user == "hog" then
        local t = {}
        for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end
    end
    KSR.sl.sl_send_reply(200, "OK")
end
"#;

fn counter(srv: &Server, name: &str) -> u64 {
    let v = rpc(srv.rpc_port, "stats.fetch", json!([name]));
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

fn start() -> Server {
    Server::start(ServerOpts {
        script: Some(SCRIPT),
        cores: "2",
        extra_toml: "[shard]\nlua_max_instructions = 1000000000\n\
                     lua_max_memory_bytes = 67108864\n",
        ..ServerOpts::default()
    })
}

#[test]
fn runaway_route_is_answered_500_and_the_other_shard_keeps_serving() {
    let srv = start();
    let looper = client();
    looper
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Clients on both shards (the kernel hashes by source address).
    let others: Vec<UdpSocket> = (0..16)
        .map(|_| {
            let s = client();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            s
        })
        .collect();
    for s in &others {
        let m = request(s, "OPTIONS", &format!("sip:ok@{}", srv.addr), "");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let r = exchange(s, srv.addr, m.as_bytes()).expect("answered before");
        assert_eq!(status(&r), 200, "{r}");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    }
    let t0 = Instant::now();
    let m = request(&looper, "OPTIONS", &format!("sip:loop@{}", srv.addr), "");
    looper.send_to(m.as_bytes(), srv.addr).unwrap();
    looper.set_nonblocking(true).unwrap();
    // While one shard loops, the others' requests go on being answered.
    let mut answered_during = 0u32;
    let mut sent_during = 0u32;
    let mut per_client = vec![(0u32, 0u32); others.len()];
    let mut buf = vec![0u8; 65536];
    let looped_reply = loop {
        if let Ok((n, _)) = looper.recv_from(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "runaway never stopped"
        );
        for (i, s) in others.iter().enumerate() {
            let m = request(s, "OPTIONS", &format!("sip:ok@{}", srv.addr), "");
            s.send_to(m.as_bytes(), srv.addr).unwrap();
            sent_during += 1;
            per_client[i].0 += 1;
            if recv(s).is_some_and(|r| status(&r) == 200) {
                answered_during += 1;
                per_client[i].1 += 1;
            }
        }
    };
    let loop_time = t0.elapsed();
    assert_eq!(status(&looped_reply), 500, "{looped_reply}");
    // Datagrams reach either shard's socket; those on the free shard are
    // answered at once, those queued behind the loop once it is stopped.
    let clients_served = per_client.iter().filter(|(_, a)| *a > 0).count();
    eprintln!(
        "runaway stopped after {loop_time:?}; meanwhile {answered_during} of \
         {sent_during} other requests answered within 20 ms ({clients_served} \
         of 16 clients served)"
    );
    assert!(answered_during * 4 > sent_during, "{per_client:?}");
    assert!(
        answered_during > 0,
        "no request answered while one shard looped"
    );
    // Everyone is answered afterwards, the looping shard included.
    for s in &others {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        while recv_quick(s) {}
        let m = request(s, "OPTIONS", &format!("sip:ok@{}", srv.addr), "");
        let r = exchange(s, srv.addr, m.as_bytes()).expect("answered after");
        assert_eq!(status(&r), 200, "{r}");
    }
    assert_eq!(counter(&srv, "core.lua_instruction_limit"), 1);
    let log = srv.log();
    assert!(
        log.contains("route.lua:5: route stopped: more than lua_max_instructions"),
        "{log}"
    );
}

fn recv_quick(s: &UdpSocket) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let got = recv(s).is_some();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    got
}

#[test]
fn memory_hog_gets_500_and_the_shard_goes_on() {
    let srv = start();
    let c = client();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let m = request(&c, "OPTIONS", &format!("sip:hog@{}", srv.addr), "");
    let r = exchange(&c, srv.addr, m.as_bytes()).expect("hog answered");
    assert_eq!(status(&r), 500, "{r}");
    for _ in 0..5 {
        let m = request(&c, "OPTIONS", &format!("sip:ok@{}", srv.addr), "");
        let r = exchange(&c, srv.addr, m.as_bytes()).expect("answered after");
        assert_eq!(status(&r), 200, "{r}");
    }
    let log = srv.log();
    assert!(log.contains("not enough memory"), "{log}");
}

/// A REGISTER with 5000 Contacts is answered 503 at once (refused at the
/// first Contact beyond `contacts_per_aor_cap`, not copied), and the
/// edits of a script beyond 1024 per message are refused.
#[test]
fn thousands_of_contacts_and_too_many_edits() {
    let script = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        KSR.registrar.save("location", 0)
        return
    end
    local n = 0
    for i = 1, 1100 do
        if KSR.hdr.append("X-N: " .. i .. "\r\n") == 1 then n = n + 1 end
    end
    KSR.sl.sl_send_reply(200, "appended " .. n)
end
"#;
    let srv = Server::start(ServerOpts {
        script: Some(script),
        cores: "1",
        ..ServerOpts::default()
    });
    let c = client();
    let list: Vec<String> = (0..5000).map(|i| format!("sip:{i}@a")).collect();
    let contact = format!("Contact: {}\r\n", list.join(","));
    let m = request(&c, "REGISTER", &format!("sip:bob@{}", srv.addr), &contact);
    assert!(m.len() > 50_000 && m.len() < 65_000, "{}", m.len());
    let t0 = Instant::now();
    let r = exchange(&c, srv.addr, m.as_bytes()).expect("REGISTER answered");
    eprintln!("REGISTER with 5000 Contacts answered in {:?}", t0.elapsed());
    assert_eq!(status(&r), 503, "{r}");
    assert_eq!(counter(&srv, "registrar.too_many_contacts"), 1);
    let m = request(&c, "OPTIONS", &format!("sip:ok@{}", srv.addr), "");
    let r = exchange(&c, srv.addr, m.as_bytes()).expect("OPTIONS answered");
    assert_eq!(reason(&r), "appended 1024", "{r}");
    assert_eq!(counter(&srv, "core.edit_limit"), 1100 - 1024);
}

/// Each bound is a config key: set low, it is applied on the real binary and
/// counted when hit (`[shard] max_edits`, `pv_max_value_bytes`,
/// `pv_max_bytes_per_msg`, `pv_max_vars`, `[registrar]
/// contacts_per_aor_cap`).
#[test]
fn configured_limits_are_applied_and_counted() {
    let script = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        KSR.registrar.save("location", 0)
        return
    end
    local user = KSR.pv.get("$rU")
    if user == "edits" then
        local n = 0
        for i = 1, 20 do
            if KSR.hdr.append("X-N: " .. i .. "\r\n") == 1 then n = n + 1 end
        end
        KSR.sl.sl_send_reply(200, "appended " .. n)
    elseif user == "values" then
        local small = KSR.pv.sets("$var(v)", string.rep("x", 100))
        local big = KSR.pv.sets("$var(v)", string.rep("x", 101))
        local a1 = KSR.pv.sets("$avp(a)", string.rep("y", 90))
        local a2 = KSR.pv.sets("$avp(a)", string.rep("y", 90))
        local a3 = KSR.pv.sets("$avp(a)", string.rep("y", 90))
        KSR.sl.sl_send_reply(200, table.concat({tostring(small), tostring(big),
            tostring(a1), tostring(a2), tostring(a3)}, " "))
    elseif user == "vars" then
        for i = 1, 10 do KSR.pv.sets("$var(n" .. i .. ")", "x") end
        KSR.sl.sl_send_reply(200, "all set")
    else
        KSR.sl.sl_send_reply(200, "OK")
    end
end
"#;
    let srv = Server::start(ServerOpts {
        script: Some(script),
        cores: "1",
        extra_toml: "[shard]\nmax_edits = 5\nmax_edit_bytes = 100000\n\
                     pv_max_value_bytes = 100\npv_max_bytes_per_msg = 200\npv_max_vars = 4\n\
                     [registrar]\ncontacts_per_aor_cap = 3\n",
        ..ServerOpts::default()
    });
    let c = client();
    let ask = |user: &str, extra: &str, method: &str| {
        let m = request(&c, method, &format!("sip:{user}@{}", srv.addr), extra);
        exchange(&c, srv.addr, m.as_bytes()).expect("answered")
    };
    let r = ask("edits", "", "OPTIONS");
    assert_eq!(reason(&r), "appended 5", "{r}");
    assert_eq!(counter(&srv, "core.edit_limit"), 15);
    // $var value: 100 bytes set, 101 refused; $avp: the third value of 90
    // bytes goes over the message's 200 bytes (names count too)
    let r = ask("values", "", "OPTIONS");
    assert_eq!(reason(&r), "true false true true false", "{r}");
    assert_eq!(counter(&srv, "core.pv_limit"), 2);
    // the 5th $var name is a script error: 500
    let r = ask("vars", "", "OPTIONS");
    assert_eq!(status(&r), 500, "{r}");
    assert!(
        srv.log_shows("pv_max_vars", Duration::from_secs(5)),
        "{}",
        srv.log()
    );
    assert_eq!(counter(&srv, "core.pv_limit"), 3);
    let contacts = "Contact: <sip:1@a>, <sip:2@a>, <sip:3@a>, <sip:4@a>\r\n";
    let r = ask("bob", contacts, "REGISTER");
    assert_eq!(status(&r), 503, "{r}");
    assert_eq!(counter(&srv, "registrar.too_many_contacts"), 1);
    let r = ask("bob", "Contact: <sip:1@a>, <sip:2@a>\r\n", "REGISTER");
    assert_eq!(status(&r), 200, "{r}");
}
