//! The native route (`sipshard run --route native`, src/kemi/native.rs)
//! against the default Lua script (etc/sipshard.lua) on the real binary: one
//! list of scenarios, run once per route, each recording what a client
//! observes; the two records must be equal (and each scenario asserts what
//! the default script is documented to do, so two equally broken routes
//! fail too).
//!
//!   cargo test --test native_route

mod common;

use std::net::UdpSocket;
use std::process::Command;

use serde_json::{json, Value};

use common::*;

/// A server on the default script or the native route, digest auth against
/// `db` (users alice and bob).
fn start(db: &TestDb, route: &str) -> Server {
    let toml = format!("[db]\nurl = \"{}\"\n", db.url);
    Server::start(ServerOpts {
        cores: "2",
        extra_toml: &toml,
        args: vec!["--route".into(), route.into()],
        ..Default::default()
    })
}

/// Status and reason of the first reply to `msg`.
fn answer(srv: &Server, c: &UdpSocket, msg: &str) -> String {
    let r = exchange(c, srv.addr, msg.as_bytes())
        .unwrap_or_else(|| panic!("no reply to:\n{msg}\n--- log:\n{}", srv.log()));
    format!("{} {}", status(&r), reason(&r))
}

/// The scenarios: (name, what was observed). Each asserts its own
/// expectation as well.
fn scenarios(srv: &Server, route: &str) -> Vec<(&'static str, String)> {
    let mut seen = Vec::new();
    let c = client();
    let me = format!("sip:{}", srv.addr);

    // OPTIONS to this server: the keepalive answer
    let r = answer(srv, &c, &request(&c, "OPTIONS", &me, ""));
    assert_eq!(r, "200 Keepalive", "{route}");
    seen.push(("options keepalive", r));

    // Max-Forwards: 0 is refused before anything else
    let msg = request(&c, "OPTIONS", &me, "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    let r = answer(srv, &c, &msg);
    assert_eq!(r, "483 Too Many Hops", "{route}");
    seen.push(("max-forwards 0", r));

    // REGISTER: 401 with a digest challenge, then 200 with the contact
    let domain = srv.addr.to_string();
    let contact_port = free_udp_port();
    let call_id = format!("native-reg-{route}-{}", std::process::id());
    let contact = format!("Contact: <sip:alice@127.0.0.1:{contact_port}>\r\nExpires: 600\r\n");
    let first = exchange(
        &c,
        srv.addr,
        register_msg(&c, "alice", &domain, &call_id, 1, &contact).as_bytes(),
    )
    .expect("challenge");
    let www = header(&first, "WWW-Authenticate").unwrap_or_default();
    assert!(
        www.starts_with("Digest ") && www.contains("qop=\"auth\""),
        "{first}"
    );
    seen.push(("register challenge", format!("{} qop=auth", status(&first))));
    let r = register_with_auth(
        &c, srv.addr, "alice", &domain, "secret", &call_id, 3, &contact,
    );
    assert_eq!(status(&r), 200, "{route}: {r}\n{}", srv.log());
    seen.push(("register with credentials", format!("{}", status(&r))));
    let dump = rpc(srv.rpc_port, "ul.dump", json!([]));
    let uri = format!("sip:alice@127.0.0.1:{contact_port}");
    let alice: Vec<&Value> = dump["aors"]
        .as_array()
        .map(|a| a.iter().filter(|a| a["aor"] == "alice").collect())
        .unwrap_or_default();
    assert_eq!(alice.len(), 1, "{route}: {dump}");
    assert!(alice[0].to_string().contains(&uri), "{route}: {dump}");
    let contacts = format!(
        "alice: {} contact(s), {uri}",
        alice[0].to_string().matches("sip:alice@").count()
    );
    seen.push((
        "ul.dump",
        contacts.replace(&contact_port.to_string(), "PORT"),
    ));

    // a wrong password: challenged again, nothing saved
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        &domain,
        "wrong",
        "native-bad",
        1,
        &contact,
    );
    assert_eq!(status(&r), 401, "{route}: {r}");
    seen.push(("register wrong password", format!("{}", status(&r))));

    // a request for a user with no contact: 404 (stateful)
    let r = answer(
        srv,
        &c,
        &request(&c, "MESSAGE", &format!("sip:nobody@{domain}"), ""),
    );
    assert_eq!(r, "404 Not Found", "{route}");
    seen.push(("unknown user", r));

    // no user part: 484
    let r = answer(srv, &c, &request(&c, "MESSAGE", &me, ""));
    assert_eq!(r, "484 Address Incomplete", "{route}");
    seen.push(("no user in the R-URI", r));

    // a foreign caller to a foreign domain: not an open relay
    let r = answer(srv, &c, &request(&c, "MESSAGE", "sip:bob@example.org", ""));
    assert_eq!(r, "403 Not relaying", "{route}");
    seen.push(("open relay refused", r));

    // in-dialog request that no Route leads anywhere
    let msg = request(&c, "BYE", &format!("sip:bob@{domain}"), "").replace(
        &format!("To: <sip:bob@{domain}>"),
        &format!("To: <sip:bob@{domain}>;tag=x1"),
    );
    let r = answer(srv, &c, &msg);
    assert_eq!(r, "404 Not here", "{route}");
    seen.push(("in-dialog without route", r));

    // a call through the proxy: bob registers (auth) the sipp callee,
    // alice calls with Proxy-Authorization (407 first)
    let dir = TempDir::new("native-call");
    let uas_port = free_udp_port();
    let uas = Sipp::uas(&dir, "uas", "uas-call.xml", uas_port, srv.addr, 1, &[]);
    let bob_contact = format!("Contact: <sip:bob@127.0.0.1:{uas_port}>\r\nExpires: 600\r\n");
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        &domain,
        "pw-bob",
        "native-bob",
        1,
        &bob_contact,
    );
    assert_eq!(status(&r), 200, "{route}: {r}");
    let uac = Sipp::uac(
        &dir,
        "uac",
        "uac-call-auth.xml",
        srv.addr,
        "bob",
        1,
        &[
            "-d", "200", "-key", "caller", "alice", "-au", "alice", "-ap", "secret",
        ],
    )
    .wait();
    let uas = uas.wait_after(&uac);
    let ok = uac.code == Some(0) && uas.code == Some(0) && uac.successful() == 1;
    assert!(
        ok,
        "{route}:\n{}\n{}\n{}",
        uac.report(),
        uas.report(),
        srv.log()
    );
    assert_eq!(uac.traced("received", "SIP/2.0 407"), 1, "{}", uac.report());
    assert_eq!(uas.traced("received", "ACK "), 1, "{}", uas.report());
    assert_eq!(uas.traced("received", "BYE "), 1, "{}", uas.report());
    assert!(uac.messages.contains("Record-Route:"), "{}", uac.report());
    seen.push(("call through the proxy", "407, 200, ACK, BYE".into()));

    // every request went through the timed request route
    let lat = rpc(srv.rpc_port, "kemi.route_latency", json!([]));
    let n = request_route_count(&lat);
    assert!(n >= 12, "{route}: {lat}");
    seen
}

fn request_route_count(lat: &Value) -> u64 {
    lat["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == "request_route"))
        .and_then(|r| r["merged"]["cnt"].as_u64())
        .unwrap_or_else(|| panic!("no request_route in {lat}"))
}

fn users() -> TestDb {
    let db = TestDb::sqlite();
    let host = "127.0.0.1";
    db.init(&[
        (&format!("alice@{host}"), "secret"),
        (&format!("bob@{host}"), "pw-bob"),
    ]);
    db
}

/// The same scenarios through the Lua script and the native route observe
/// the same answers.
#[test]
fn native_route_behaves_like_the_default_script() {
    let mut runs = Vec::new();
    for route in ["lua", "native"] {
        let db = users();
        let srv = start(&db, route);
        let seen = scenarios(&srv, route);
        let (clean, log) = srv.stop();
        assert!(clean, "{route}: unclean stop:\n{log}");
        assert!(!log.contains("script error:"), "{route}:\n{log}");
        runs.push(seen);
    }
    assert_eq!(runs[0], runs[1], "Lua (left) and native (right) differ");
}

/// Reload with the native route: nothing to reload, a success that says so;
/// `kemi.status` names the route.
#[test]
fn reload_with_the_native_route_is_a_no_op() {
    let db = users();
    let srv = start(&db, "native");
    let r = rpc(srv.rpc_port, "kemi.reload", json!([]));
    assert_eq!(r["reloaded"], false, "{r}");
    assert_eq!(r["route"], "native", "{r}");
    let st = rpc(srv.rpc_port, "kemi.status", json!([]));
    assert_eq!(st["route"], "native", "{st}");
    assert_eq!(st["reloads"], 0, "{st}");
    // and it still answers
    let c = client();
    let me = format!("sip:{}", srv.addr);
    assert_eq!(
        answer(&srv, &c, &request(&c, "OPTIONS", &me, "")),
        "200 Keepalive"
    );
}

/// `sipshard check --route native` loads no Lua: a broken script in the
/// config does not matter to it (it does to the Lua route).
#[test]
fn check_with_the_native_route_skips_the_script() {
    let dir = TempDir::new("native-check");
    let script = dir.path("broken.lua");
    std::fs::write(&script, "function ksr_request_route(\n").unwrap();
    let cfg = dir.path("sipshard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[core]\nlisten = \"127.0.0.1:{}\"\ncores = 1\nscript = \"{}\"\n",
            free_udp_port(),
            script.display()
        ),
    )
    .unwrap();
    let run = |route: &str| {
        Command::new(bin())
            .args(["check", "--config"])
            .arg(&cfg)
            .args(["--route", route])
            .output()
            .unwrap()
    };
    let native = run("native");
    let text = String::from_utf8_lossy(&native.stdout);
    assert!(
        native.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&native.stderr)
    );
    assert!(text.contains("<native route>"), "{text}");
    let lua = run("lua");
    assert!(
        !lua.status.success(),
        "{}",
        String::from_utf8_lossy(&lua.stdout)
    );
    assert!(String::from_utf8_lossy(&lua.stderr).contains("broken.lua"));
}
