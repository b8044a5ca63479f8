//! End-to-end: the real binary on loopback, real UDP datagrams.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const SHARD_SCRIPT: &str = r#"
function ksr_request_route()
    local u = KSR.pv.get("$rU")
    if u == "boom" then
        local t = nil
        return t.field -- runtime error: index a nil value
    end
    if u == "drop" then
        KSR.x.drop()
    end
    if u == "pv" then
        local parts = {
            KSR.pv.get("$rm"), KSR.pv.get("$rU"), KSR.pv.get("$rd"), tostring(KSR.pv.get("$rp")),
            KSR.pv.get("$fU"), KSR.pv.get("$fd"), KSR.pv.get("$ft"), KSR.pv.get("$tU"),
            tostring(KSR.pv.get("$cs")), KSR.pv.get("$ua"), KSR.pv.get("$si"),
            tostring(KSR.pv.get("$sp") > 0), tostring(KSR.pv.is_null("$tt")),
            KSR.kx.get_method(), KSR.kx.get_ruser(), KSR.kx.get_fhost(), KSR.kx.gete_ua(),
            tostring(KSR.is_OPTIONS()), tostring(KSR.is_method_in("RO")), tostring(KSR.is_method_in("IB")),
            tostring(KSR.is_myself_ruri()), tostring(KSR.is_myself("sip:x@10.9.9.9")),
            KSR.pv.gete("$du"), KSR.pv.getw("$du"),
        }
        KSR.sl.sl_send_reply(200, table.concat(parts, "|"))
        return KSR.x.exit()
    end
    if u == "var" then
        KSR.pv.seti("$var(n)", (KSR.pv.get("$var(n)") or 0) + 1)
        KSR.pv.sets("$ru", "sip:rewritten@example.com:5070")
        KSR.hdr.append_to_reply("X-Count: " .. KSR.pv.get("$var(n)") .. "\r\n")
        KSR.sl.sl_send_reply(200, KSR.pv.get("$ru") .. " " .. KSR.pv.get("$rU") .. " " .. KSR.pv.get("$rd") .. " " .. KSR.pv.get("$rp"))
        return KSR.x.exit()
    end
    KSR.sl.sl_send_reply(200, "shard-" .. KSR.pv.get("$shard"))
    KSR.x.exit()
    KSR.sl.sl_send_reply(500, "not reached")
end
"#;

#[test]
fn default_script_answers_options_with_200() {
    let srv = Server::start(ServerOpts {
        cores: "1",
        ..Default::default()
    });
    let c = client();
    let ruri = format!("sip:{}", srv.addr);
    let r = exchange(&c, srv.addr, request(&c, "OPTIONS", &ruri, "").as_bytes()).expect("reply");
    assert_eq!(status(&r), 200, "{r}");
    // RFC 3261 §8.2.6: To-tag added, Via/From/Call-ID/CSeq copied.
    assert!(header(&r, "To").unwrap().contains("tag="), "{r}");
    assert!(
        header(&r, "Via")
            .unwrap()
            .contains(&format!("rport={}", c.local_addr().unwrap().port())),
        "{r}"
    );
    assert!(header(&r, "CSeq").unwrap().ends_with("OPTIONS"), "{r}");
    // A request for someone elsewhere is refused by the default script.
    let r = exchange(
        &c,
        srv.addr,
        request(&c, "MESSAGE", "sip:bob@elsewhere.example", "").as_bytes(),
    )
    .expect("reply");
    assert_eq!(status(&r), 403, "{r}");
    let (ok, out) = srv.stop();
    assert!(ok, "clean exit on SIGTERM");
    assert!(out.contains("request_route"), "summary printed: {out}");
}

#[test]
fn requests_on_every_shard_are_answered() {
    let srv = Server::start(ServerOpts {
        script: Some(SHARD_SCRIPT),
        cores: "2",
        ..Default::default()
    });
    let mut shards = BTreeSet::new();
    let ruri = format!("sip:who@{}", srv.addr);
    let mut answered = 0;
    for _ in 0..48 {
        let c = client();
        let r = exchange(&c, srv.addr, request(&c, "OPTIONS", &ruri, "").as_bytes())
            .expect("every request answered");
        assert_eq!(status(&r), 200, "{r}");
        shards.insert(reason(&r));
        answered += 1;
    }
    assert_eq!(answered, 48);
    assert_eq!(
        shards,
        BTreeSet::from(["shard-0".to_string(), "shard-1".to_string()]),
        "both shards served"
    );
    let (ok, out) = srv.stop();
    assert!(ok);
    // The shutdown table counts every request, per shard and merged.
    let merged = out.split("-- all shards").nth(1).expect("merged table");
    let line = merged
        .lines()
        .find(|l| l.starts_with("request_route"))
        .expect("request_route row");
    let cnt: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(cnt, 48, "{out}");
}

#[test]
fn script_error_answers_500_and_shard_keeps_serving() {
    let srv = Server::start(ServerOpts {
        script: Some(SHARD_SCRIPT),
        cores: "1",
        ..Default::default()
    });
    let c = client();
    let r = exchange(
        &c,
        srv.addr,
        request(&c, "OPTIONS", &format!("sip:boom@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 500, "{r}");
    let r = exchange(
        &c,
        srv.addr,
        request(&c, "OPTIONS", &format!("sip:ok@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let log = srv.log();
    assert!(log.contains("script error"), "{log}");
    assert!(
        log.contains("stack traceback") && log.contains("route.lua:"),
        "traceback logged: {log}"
    );
}

#[test]
fn script_error_can_drop_instead() {
    let srv = Server::start(ServerOpts {
        script: Some(SHARD_SCRIPT),
        cores: "1",
        core_toml: "on_script_error = \"drop\"",
        ..Default::default()
    });
    let c = client();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(exchange(
        &c,
        srv.addr,
        request(&c, "OPTIONS", &format!("sip:boom@{}", srv.addr), "").as_bytes()
    )
    .is_none());
    // KSR.x.drop(): no reply either
    assert!(exchange(
        &c,
        srv.addr,
        request(&c, "OPTIONS", &format!("sip:drop@{}", srv.addr), "").as_bytes()
    )
    .is_none());
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let r = exchange(
        &c,
        srv.addr,
        request(&c, "OPTIONS", &format!("sip:ok@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 200, "{r}");
}

#[test]
fn pseudo_variables_and_kx_getters() {
    let srv = Server::start(ServerOpts {
        script: Some(SHARD_SCRIPT),
        cores: "1",
        ..Default::default()
    });
    let c = client();
    let ruri = format!("sip:pv@{}", srv.addr);
    let r = exchange(&c, srv.addr, request(&c, "OPTIONS", &ruri, "").as_bytes()).unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let port = srv.addr.port();
    let want = format!(
        "OPTIONS|pv|127.0.0.1|{port}|tester|client.example|ft{}|pv|{}|sipshard-tests|127.0.0.1|true|true|OPTIONS|pv|client.example|sipshard-tests|true|true|false|true|false||<null>",
        // From-tag and CSeq share the harness sequence number
        header(&r, "CSeq").unwrap().split_whitespace().next().unwrap(),
        header(&r, "CSeq").unwrap().split_whitespace().next().unwrap(),
    );
    assert_eq!(reason(&r), want);

    // $var persists per shard; $ru rewrite visible to $rU/$rd/$rp; reply headers
    let ruri = format!("sip:var@{}", srv.addr);
    let r1 = exchange(&c, srv.addr, request(&c, "OPTIONS", &ruri, "").as_bytes()).unwrap();
    let r2 = exchange(&c, srv.addr, request(&c, "OPTIONS", &ruri, "").as_bytes()).unwrap();
    assert_eq!(
        reason(&r1),
        "sip:rewritten@example.com:5070 rewritten example.com 5070"
    );
    assert_eq!(header(&r1, "X-Count").as_deref(), Some("1"));
    assert_eq!(header(&r2, "X-Count").as_deref(), Some("2"));
}

#[test]
fn malformed_datagrams_never_stop_a_shard() {
    let srv = Server::start(ServerOpts {
        script: Some(SHARD_SCRIPT),
        cores: "2",
        ..Default::default()
    });
    let mut junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"OPTIONS".to_vec(),
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4".to_vec(),
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: abc\r\n\r\n".to_vec(),
        b"SIP/2.0 200\r\n\r\n".to_vec(),
        b"SIP/2.0 999999 OK\r\nVia: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"OPTIONS sip:a@b SIP/2.0\r\nNoColonHere\r\n\r\n".to_vec(),
        (0..=255u8).collect(),
        vec![0u8; 1500],
        vec![0xffu8; 65_000],
        std::iter::repeat_n(b"X-H: v\r\n".as_slice(), 5000)
            .flatten()
            .copied()
            .collect(),
    ];
    let mut big = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 65_000));
    junk.push(big);
    // Requests missing each mandatory header.
    for missing in ["Via", "From", "To", "Call-ID", "CSeq"] {
        let c = client();
        let req = request(&c, "OPTIONS", "sip:x@127.0.0.1", "");
        let filtered: String = req
            .split("\r\n")
            .filter(|l| !l.starts_with(&format!("{missing}:")))
            .collect::<Vec<_>>()
            .join("\r\n");
        junk.push(filtered.into_bytes());
    }
    // 64 KiB of random bytes
    let mut x: u64 = 0x1234_5678_9abc_def0;
    junk.push(
        (0..65_507)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
    );
    let socks: Vec<_> = (0..16).map(|_| client()).collect();
    for s in &socks {
        for j in &junk {
            let _ = s.send_to(j, srv.addr);
        }
    }
    // A request with a bad Max-Forwards but usable headers gets 400.
    let c = client();
    let bad = request(&c, "OPTIONS", &format!("sip:x@{}", srv.addr), "")
        .replace("Max-Forwards: 70", "Max-Forwards: lots");
    let r =
        exchange(&c, srv.addr, bad.as_bytes()).expect("400 for a malformed but answerable request");
    assert_eq!(status(&r), 400, "{r}");
    // Every socket (landing on both shards) is still answered.
    let mut shards = BTreeSet::new();
    for s in &socks {
        // discard anything the junk provoked
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        while recv(s).is_some() {}
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let r = exchange(
            s,
            srv.addr,
            request(s, "OPTIONS", &format!("sip:ok@{}", srv.addr), "").as_bytes(),
        )
        .expect("still serving");
        assert_eq!(status(&r), 200, "{r}");
        shards.insert(reason(&r));
    }
    assert_eq!(shards.len(), 2, "{shards:?}");
    let log = srv.log();
    assert!(log.contains("malformed SIP message dropped"), "{log}");
    let (ok, _) = srv.stop();
    assert!(ok);
}

#[test]
fn bad_config_is_refused_with_file_line_and_key() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path("bad.toml");
    std::fs::write(
        &cfg,
        "[core]\nlisten = \"127.0.0.1:5099\"\nlisen_typo = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 3") && err.contains("lisen_typo"),
        "{err}"
    );

    let script = dir.path("broken.lua");
    std::fs::write(&script, "function ksr_request_route()\n  if then\nend\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--listen", "127.0.0.1:0", "--script"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.lua:2"), "{err}");

    std::fs::write(&script, "function other() end\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--script"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ksr_request_route"));
}

#[test]
fn sipsak_gets_the_default_scripts_reply() {
    let srv = Server::start(ServerOpts {
        cores: "2",
        low_port: true,
        ..Default::default()
    });
    let out = std::process::Command::new("sipsak")
        .args([
            "-vv",
            "-s",
            &format!("sip:alice@127.0.0.1:{}", srv.addr.port()),
        ])
        .output()
        .expect("sipsak is installed by scripts/test.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sipsak failed: {text}");
    assert!(text.contains("200 Keepalive"), "{text}");
}
