//! The shard engine on the real binary: one peer's traffic runs on every
//! shard, state shared by the shards catches a nonce replayed towards another
//! shard, `dispatch = "callid"` runs a request on its Call-ID's shard, and a
//! panicking KSR callback never leaves a dead shard.

mod common;

use serde_json::{json, Value};

use common::*;

const DOMAIN: &str = "example.com";

fn shards(srv: &Server) -> Vec<Value> {
    rpc(srv.rpc_port, "core.shards", json!([]))
        .as_array()
        .expect("an array of shards")
        .clone()
}

fn per_shard(srv: &Server, field: &str) -> Vec<u64> {
    shards(srv)
        .iter()
        .map(|s| s[field].as_u64().unwrap_or_else(|| panic!("{field}: {s}")))
        .collect()
}

fn registrar(db: &TestDb) -> Server {
    let toml = format!(
        // nonce_count on (Kamailio's default is off): the replay test needs it
        "[db]\nurl = \"{}\"\n[auth]\nsecret = \"k\"\nnonce_count = 1\n[registrar]\nmin_expires_s = 60\n",
        db.url
    );
    Server::start(ServerOpts {
        cores: "2",
        extra_toml: &toml,
        ..Default::default()
    })
}

#[test]
fn one_source_registers_on_every_shard() {
    let db = TestDb::sqlite();
    let users: Vec<(String, String)> = (0..8)
        .map(|i| (format!("u{i}@{DOMAIN}"), format!("pw{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    db.init(&refs);
    let srv = registrar(&db);
    // One socket: one source address and port for every request.
    let c = client();
    const N: u32 = 100;
    for i in 0..N {
        let u = i % 8;
        let r = register_with_auth(
            &c,
            srv.addr,
            &format!("u{u}"),
            DOMAIN,
            &format!("pw{u}"),
            &format!("one-src-{i}"),
            1,
            &format!("Contact: <sip:u{u}@10.0.0.1:5060>\r\nExpires: 300\r\n"),
        );
        assert_eq!(status(&r), 200, "registration {i} failed: {r}");
    }
    let per = per_shard(&srv, "rcv_requests");
    let total: u64 = per.iter().sum();
    assert_eq!(
        total,
        2 * N as u64,
        "challenge + authorized per registration: {per:?}"
    );
    // A random shard per datagram: each expects half; 30 % is > 5 sigma away.
    for (shard, n) in per.iter().enumerate() {
        assert!(
            *n * 100 >= total * 30,
            "shard {shard} ran {n} of {total} requests from one source: {per:?}"
        );
    }
    // Every binding is in the one shared table, whichever shard saved it.
    let dump = rpc(srv.rpc_port, "ul.dump", json!([]));
    let aors = dump["aors"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(aors, 8, "{dump}");
}

#[test]
fn nonce_replayed_towards_the_other_shard_is_refused() {
    let db = TestDb::sqlite();
    db.init(&[("alice@example.com", "secret")]);
    let srv = registrar(&db);
    let c = client();
    let contact = "Contact: <sip:alice@10.0.0.1:5060>\r\nExpires: 300\r\n";
    let r = exchange(
        &c,
        srv.addr,
        register_msg(&c, "alice", DOMAIN, "rp-0", 1, contact).as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 401, "{r}");
    let ch = header(&r, "WWW-Authenticate").unwrap();
    assert!(ch.contains("qop="), "nonce counts need qop: {ch}");
    let auth = digest_authorization(&ch, "alice", "secret", "REGISTER", "sip:example.com", 1);
    let authorized = |call_id: &str| {
        register_msg(
            &c,
            "alice",
            DOMAIN,
            call_id,
            2,
            &format!("Authorization: {auth}\r\n{contact}"),
        )
    };
    // Which shard accepts the genuine answer?
    let before = per_shard(&srv, "rcv_requests");
    let r = exchange(&c, srv.addr, authorized("rp-1").as_bytes()).unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let after = per_shard(&srv, "rcv_requests");
    let first = (0..2)
        .find(|&s| after[s] > before[s])
        .expect("one shard ran it");
    // Replay the same nonce and nc until a replay has run on the other shard.
    let mut on_other = 0;
    for i in 0..64 {
        let before = per_shard(&srv, "rcv_requests");
        let r = exchange(&c, srv.addr, authorized(&format!("rp-r{i}")).as_bytes()).unwrap();
        assert_ne!(status(&r), 200, "replay {i} accepted: {r}");
        assert_eq!(status(&r), 401, "{r}");
        let after = per_shard(&srv, "rcv_requests");
        if after[1 - first] > before[1 - first] {
            on_other += 1;
            if on_other == 3 {
                break;
            }
        }
    }
    assert_eq!(
        on_other, 3,
        "replays reached the other shard (spread picks a shard per datagram)"
    );
    let stats = rpc(srv.rpc_port, "stats.fetch", json!(["auth"]));
    assert_eq!(stats["auth.successes"], 1, "{stats}");
}

const SHARD_SCRIPT: &str = r#"
function ksr_request_route()
    KSR.hdr.append_to_reply("X-Shard: " .. KSR.pv.get("$shard") .. "\r\n")
    KSR.sl.sl_send_reply(200, "OK")
end
"#;

/// With `dispatch = "callid"` a request runs on the shard of its Call-ID,
/// whichever shard read it: handed over through the owner's inbox.
#[test]
fn callid_dispatch_runs_a_request_on_its_call_id_shard() {
    let srv = Server::start(ServerOpts {
        cores: "2",
        script: Some(SHARD_SCRIPT),
        extra_toml: "[shard]\ndispatch = \"callid\"\n",
        ..Default::default()
    });
    let c = client();
    let local = c.local_addr().unwrap();
    const N: usize = 60;
    for n in 0..N {
        let call_id = format!("cid-{n}@test");
        let req = format!(
            "MESSAGE sip:bob@{addr} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-cid{n};rport\r\n\
             From: <sip:a@{DOMAIN}>;tag=f{n}\r\n\
             To: <sip:bob@{DOMAIN}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 MESSAGE\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n",
            addr = srv.addr
        );
        c.send_to(req.as_bytes(), srv.addr).unwrap();
        let reply = recv(&c).expect("a reply");
        let shard: usize = reply
            .lines()
            .find_map(|l| l.strip_prefix("X-Shard: "))
            .expect("X-Shard header")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            shard,
            sipshard::partition::index(call_id.as_bytes(), 2),
            "{call_id} ran on its Call-ID's shard"
        );
    }
    // Read at random, so both shards handed some over to the other.
    let sent = per_shard(&srv, "dispatch_sent");
    let recv = per_shard(&srv, "dispatch_recv");
    assert!(sent.iter().all(|&n| n > 0), "{sent:?}");
    assert_eq!(sent[0], recv[1], "{sent:?} {recv:?}");
    assert_eq!(sent[1], recv[0], "{sent:?} {recv:?}");
}

const PANIC_SCRIPT: &str = r#"
function ksr_request_route()
    if KSR.pv.get("$rU") == "boom" then
        KSR.sipshard_test.panic("test callback")
    end
    KSR.sl.sl_send_reply(200, "shard-" .. KSR.pv.get("$shard"))
end
"#;

#[test]
fn a_panicking_callback_never_leaves_a_dead_shard() {
    let mut srv = Server::start(ServerOpts {
        cores: "2",
        script: Some(PANIC_SCRIPT),
        core_toml: "test_hooks = true",
        ..Default::default()
    });
    let c = client();
    const BOOMS: u64 = 12;
    for _ in 0..BOOMS {
        let r = exchange(
            &c,
            srv.addr,
            request(&c, "OPTIONS", &format!("sip:boom@{}", srv.addr), "").as_bytes(),
        )
        .expect("a request whose callback panicked is still answered");
        assert_eq!(status(&r), 500, "{r}");
    }
    // Both shards go on serving (spread sends each datagram to a random one).
    let mut answered_by = [0u32; 2];
    for _ in 0..40 {
        let r = exchange(
            &c,
            srv.addr,
            request(&c, "OPTIONS", &format!("sip:ok@{}", srv.addr), "").as_bytes(),
        )
        .expect("answered after the panics");
        assert_eq!(status(&r), 200, "{r}");
        let shard: usize = reason(&r)
            .strip_prefix("shard-")
            .and_then(|s| s.parse().ok())
            .expect("reply names its shard");
        answered_by[shard] += 1;
    }
    assert!(answered_by.iter().all(|&n| n > 0), "{answered_by:?}");
    let panics = per_shard(&srv, "panics");
    assert_eq!(panics.iter().sum::<u64>(), BOOMS, "{panics:?}");
    assert!(
        srv.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the server is still running"
    );
    let log = srv.stderr.lock().unwrap().clone();
    assert!(log.contains("panic in a route, caught"), "{log}");
    assert!(log.contains("test callback"), "{log}");
}

#[test]
fn every_socket_mode_serves_answers_control_and_stops() {
    for mode in ["spread", "reuseport", "shared"] {
        let core = format!("udp_socket = \"{mode}\"");
        let mut srv = Server::start(ServerOpts {
            cores: "2",
            core_toml: &core,
            ..Default::default()
        });
        let mut answered = 0;
        for _ in 0..20 {
            let c = client();
            let r = exchange(
                &c,
                srv.addr,
                request(&c, "OPTIONS", &format!("sip:{}", srv.addr), "").as_bytes(),
            )
            .unwrap_or_else(|| panic!("{mode}: OPTIONS unanswered"));
            assert_eq!(status(&r), 200, "{mode}: {r}");
            answered += 1;
        }
        // Control commands wake idle shards (doorbell), in every mode.
        let per = per_shard(&srv, "rcv_requests");
        assert_eq!(per.iter().sum::<u64>(), answered, "{mode}: {per:?}");
        let tuning = &shards(&srv)[0]["tuning"];
        assert_eq!(tuning["udp_socket"], mode, "{tuning}");
        // SIGINT stops it promptly with status 0.
        let child = srv.child.as_mut().unwrap();
        let pid = child.id().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "{mode}: did not stop");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "{mode}: {status}");
    }
}

/// `core.pin = true` pins shard i to the i-th CPU of `cores`; the default
/// leaves placement to the scheduler.
#[test]
fn shards_are_pinned_only_when_asked() {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let affinity = |srv: &mut Server| -> Vec<(String, String)> {
        let pid = srv.child.as_mut().unwrap().id();
        let mut out = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            let name = field("Name:");
            if name.starts_with("shard-") {
                out.push((name, field("Cpus_allowed_list:")));
            }
        }
        out.sort();
        out
    };
    let mut pinned = Server::start(ServerOpts {
        cores: "1",
        core_toml: "pin = true",
        ..Default::default()
    });
    assert_eq!(affinity(&mut pinned), vec![("shard-0".into(), "0".into())]);
    let mut free = Server::start(ServerOpts {
        cores: "1",
        ..Default::default()
    });
    let all = if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(affinity(&mut free), vec![("shard-0".into(), all)]);
}
