//! REGISTER with digest auth against a real database, and user location
//! sharded across cores: the real binary, real UDP, real SQLite, PostgreSQL
//! and MariaDB.

mod common;

use std::time::Duration;

use common::*;

const DOMAIN: &str = "example.com";

fn contacts_of(reply: &str) -> Vec<String> {
    headers(reply, "Contact")
}

/// The default script, except that requests for local users are redirected
/// (302) to their contact instead of relayed: these tests check lookups, and
/// their contacts (10.0.0.x) are not to be called.
fn registrar_script() -> String {
    format!(
        "{}\n{}",
        include_str!("../etc/sipshard.lua"),
        r#"
-- Redirect (302) a request for a local user to the registered contact.
function ksr_route_location()
    local rc = KSR.registrar.lookup("location")
    if rc < 0 then
        if rc == -2 then
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
        else
            KSR.sl.sl_send_reply(404, "Not Found")
        end
        return KSR.x.exit()
    end
    KSR.hdr.append_to_reply("Contact: <" .. (KSR.pv.get("$ru") or "") .. ">\r\n")
    KSR.sl.sl_send_reply(302, "Moved Temporarily")
    return KSR.x.exit()
end
"#
    )
}

fn start(db: &TestDb, extra: &str) -> Server {
    let toml = format!("[db]\nurl = \"{}\"\n{extra}", db.url);
    let script = registrar_script();
    Server::start(ServerOpts {
        script: Some(&script),
        cores: "2",
        extra_toml: &toml,
        ..Default::default()
    })
}

/// The whole registrar flow against one backend.
fn registrar_flow(db: TestDb) {
    db.init(&[
        ("alice@example.com", "secret"),
        ("bob@example.com", "pw-bob"),
    ]);
    let srv = start(
        &db,
        // 423 below min_expires (min_expires_mode 1; Kamailio's default 0
        // stretches the expires instead, see kamailio_registrar_defaults)
        "[auth]\nsecret = \"k\"\n[registrar]\nmin_expires_s = 60\nmin_expires_mode = 1\nmax_contacts = 5\n",
    );
    let c = client();

    // challenge then success; the 200 lists the binding with its expires
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "reg-a1",
        1,
        "Contact: <sip:alice@10.0.0.1:5060>\r\nExpires: 300\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let cs = contacts_of(&r);
    assert_eq!(cs.len(), 1, "{r}");
    assert!(
        cs[0].starts_with("<sip:alice@10.0.0.1:5060>;expires="),
        "{r}"
    );

    // wrong password: challenged again
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "wrong",
        "reg-b1",
        1,
        "Contact: <sip:bob@10.0.0.2>\r\n",
    );
    assert_eq!(status(&r), 401, "{r}");
    // unknown user
    let r = register_with_auth(
        &c,
        srv.addr,
        "nobody",
        DOMAIN,
        "x",
        "reg-n1",
        1,
        "Contact: <sip:nobody@10.0.0.3>\r\n",
    );
    assert_eq!(status(&r), 401, "{r}");

    // multiple contacts with q values
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "pw-bob",
        "reg-b2",
        1,
        "Contact: <sip:bob@10.0.0.2:5060>;q=0.5, <sip:bob@10.0.0.3:5060>;q=0.9\r\nExpires: 600\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(contacts_of(&r).len(), 2, "{r}");

    // 423 Interval Too Brief
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "reg-a2",
        1,
        "Contact: <sip:alice@10.0.0.9>\r\nExpires: 10\r\n",
    );
    assert_eq!(status(&r), 423, "{r}");
    assert_eq!(header(&r, "Min-Expires").as_deref(), Some("60"), "{r}");

    // a lookup for alice from many source ports lands on both shards; every
    // shard finds the binding in the shared table and redirects to it
    for _ in 0..16 {
        let s = client();
        let r = exchange(
            &s,
            srv.addr,
            request(&s, "MESSAGE", &format!("sip:alice@{}", srv.addr), "").as_bytes(),
        )
        .unwrap();
        assert_eq!(status(&r), 302, "{r}");
        assert_eq!(
            header(&r, "Contact").as_deref(),
            Some("<sip:alice@10.0.0.1:5060>"),
            "{r}"
        );
    }
    let shards = rpc(srv.rpc_port, "core.shards", serde_json::json!([]));
    let per: Vec<u64> = shards
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["rcv_requests"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        per.len() == 2 && per.iter().all(|&n| n > 0),
        "both shards ran requests: {per:?}"
    );
    // an unregistered user
    let s = client();
    let r = exchange(
        &s,
        srv.addr,
        request(&s, "MESSAGE", &format!("sip:carol@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 404, "{r}");

    // Expires: 0 removes one binding; Contact: * removes all
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "pw-bob",
        "reg-b2",
        10,
        "Contact: <sip:bob@10.0.0.2:5060>\r\nExpires: 0\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(contacts_of(&r), vec![contacts_of(&r)[0].clone()]);
    assert!(
        contacts_of(&r)[0].starts_with("<sip:bob@10.0.0.3:5060>"),
        "{r}"
    );
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "pw-bob",
        "reg-b2",
        20,
        "Contact: *\r\nExpires: 0\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(contacts_of(&r).is_empty(), "{r}");
    let r = exchange(
        &s,
        srv.addr,
        request(&s, "MESSAGE", &format!("sip:bob@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 404, "{r}");

    // ul.lookup through the control interface sees alice on her owner shard
    let v = rpc(
        srv.rpc_port,
        "ul.lookup",
        serde_json::json!(["location", "alice"]),
    );
    assert!(v.to_string().contains("sip:alice@10.0.0.1:5060"), "{v}");
    let (ok, _) = srv.stop();
    assert!(ok);
}

#[test]
fn registrar_sqlite() {
    registrar_flow(TestDb::sqlite());
}

#[test]
fn registrar_postgres() {
    registrar_flow(TestDb::postgres());
}

#[test]
fn registrar_mariadb() {
    registrar_flow(TestDb::mariadb());
}

fn stale_tampered_and_replayed_nonces(db: TestDb) {
    db.init(&[("alice@example.com", "secret")]);
    // nonce_count on (Kamailio's default is off, see nonce_count_off_by_default)
    let srv = start(&db, "[auth]\nnonce_expire_s = 3\nnonce_count = 1\n");
    let c = client();
    let contact = "Contact: <sip:alice@10.0.0.1>\r\n";
    let r = exchange(
        &c,
        srv.addr,
        register_msg(&c, "alice", DOMAIN, "n-1", 1, contact).as_bytes(),
    )
    .unwrap();
    let ch = header(&r, "WWW-Authenticate").unwrap();
    assert!(!ch.contains("stale"), "{ch}");

    // tampered: flip one character of the nonce
    let mut p = parse_challenge(&ch);
    let nonce = p["nonce"].clone();
    let flipped: String = nonce
        .chars()
        .enumerate()
        .map(|(i, ch)| {
            if i == 5 {
                if ch == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                ch
            }
        })
        .collect();
    p.insert("nonce".into(), flipped);
    let tampered_ch = format!(
        "Digest realm=\"{}\", nonce=\"{}\", qop=\"auth\", algorithm=MD5",
        p["realm"], p["nonce"]
    );
    let auth = digest_authorization(
        &tampered_ch,
        "alice",
        "secret",
        "REGISTER",
        "sip:example.com",
        1,
    );
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "alice",
            DOMAIN,
            "n-1",
            2,
            &format!("Authorization: {auth}\r\n{contact}"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 401, "tampered nonce refused: {r}");
    assert!(
        !header(&r, "WWW-Authenticate")
            .unwrap()
            .contains("stale=true"),
        "{r}"
    );

    // the genuine nonce works once; replaying nc=1 with another request is refused
    let auth = digest_authorization(&ch, "alice", "secret", "REGISTER", "sip:example.com", 1);
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "alice",
            DOMAIN,
            "n-1",
            3,
            &format!("Authorization: {auth}\r\n{contact}"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "alice",
            DOMAIN,
            "n-2",
            1,
            &format!("Authorization: {auth}\r\n{contact}"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 401, "replayed nonce count refused: {r}");

    // stale: wait out the nonce lifetime
    std::thread::sleep(Duration::from_millis(4500));
    let auth = digest_authorization(&ch, "alice", "secret", "REGISTER", "sip:example.com", 2);
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "alice",
            DOMAIN,
            "n-1",
            5,
            &format!("Authorization: {auth}\r\n{contact}"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 401, "{r}");
    assert!(
        header(&r, "WWW-Authenticate")
            .unwrap()
            .contains("stale=true"),
        "stale nonce re-challenged with stale=true: {r}"
    );
}

fn sha256_digest(db: TestDb) {
    db.init(&[("alice@example.com", "secret")]);
    let srv = start(&db, "[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n");
    let c = client();
    let contact = "Contact: <sip:alice@10.0.0.1>\r\n";
    let r = exchange(
        &c,
        srv.addr,
        register_msg(&c, "alice", DOMAIN, "s-1", 1, contact).as_bytes(),
    )
    .unwrap();
    let chs = headers(&r, "WWW-Authenticate");
    assert_eq!(chs.len(), 2, "{r}");
    assert!(
        chs[0].contains("algorithm=SHA-256") && chs[1].contains("algorithm=MD5"),
        "{r}"
    );
    let auth = digest_authorization(&chs[0], "alice", "secret", "REGISTER", "sip:example.com", 1);
    assert!(auth.contains("algorithm=SHA-256"));
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "alice",
            DOMAIN,
            "s-1",
            2,
            &format!("Authorization: {auth}\r\n{contact}"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let bad = digest_authorization(&chs[0], "alice", "nope", "REGISTER", "sip:example.com", 1);
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "alice",
            DOMAIN,
            "s-2",
            1,
            &format!("Authorization: {bad}\r\n{contact}"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 401, "{r}");
}

#[test]
fn new_users_are_seen_without_restart() {
    let db = TestDb::sqlite();
    db.init(&[]);
    let srv = start(&db, "[auth]\ncache_negative_ttl_s = 1\n");
    let c = client();
    let r = register_with_auth(
        &c,
        srv.addr,
        "dave",
        DOMAIN,
        "pw",
        "u-1",
        1,
        "Contact: <sip:dave@10.0.0.4>\r\n",
    );
    assert_eq!(status(&r), 401, "{r}");
    sipshard(&["user", "add", "dave@example.com", "pw", "--db", &db.url]);
    std::thread::sleep(Duration::from_millis(1500));
    let r = register_with_auth(
        &c,
        srv.addr,
        "dave",
        DOMAIN,
        "pw",
        "u-2",
        1,
        "Contact: <sip:dave@10.0.0.4>\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
}

fn restart_keeps_registrations(db: TestDb) {
    restart_keeps_registrations_mode(db, 2);
}

/// db_mode 2 (write-back, flushed on SIGTERM) or 3 (database only: written
/// through, and every lookup reads the database).
fn restart_keeps_registrations_mode(db: TestDb, mode: u8) {
    db.init(&[("alice@example.com", "secret")]);
    let cfg =
        format!("[auth]\nsecret = \"k\"\n[registrar]\ndb_mode = {mode}\ntimer_interval_s = 3600\n");
    let cfg = cfg.as_str();
    let srv = start(&db, cfg);
    let c = client();
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "rs-1",
        1,
        "Contact: <sip:alice@10.0.0.1:5077>\r\nExpires: 600\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    // write-back happens on SIGTERM (the timer interval is an hour)
    let (ok, _) = srv.stop();
    assert!(ok);
    let srv = start(&db, cfg);
    let s = client();
    let r = exchange(
        &s,
        srv.addr,
        request(&s, "MESSAGE", &format!("sip:alice@{}", srv.addr), "").as_bytes(),
    )
    .unwrap();
    assert_eq!(
        status(&r),
        302,
        "binding restored after restart: {r}\n{}",
        srv.log()
    );
    assert_eq!(
        header(&r, "Contact").as_deref(),
        Some("<sip:alice@10.0.0.1:5077>")
    );
}

#[test]
fn restart_keeps_registrations_sqlite() {
    restart_keeps_registrations(TestDb::sqlite());
}

#[test]
fn restart_keeps_registrations_postgres() {
    restart_keeps_registrations(TestDb::postgres());
}

#[test]
fn restart_keeps_registrations_mariadb() {
    restart_keeps_registrations(TestDb::mariadb());
}

#[test]
fn nonces_sqlite() {
    stale_tampered_and_replayed_nonces(TestDb::sqlite());
}

#[test]
fn nonces_postgres() {
    stale_tampered_and_replayed_nonces(TestDb::postgres());
}

#[test]
fn nonces_mariadb() {
    stale_tampered_and_replayed_nonces(TestDb::mariadb());
}

#[test]
fn sha256_sqlite() {
    sha256_digest(TestDb::sqlite());
}

#[test]
fn sha256_postgres() {
    sha256_digest(TestDb::postgres());
}

#[test]
fn sha256_mariadb() {
    sha256_digest(TestDb::mariadb());
}

#[test]
fn db_only_mode_sqlite() {
    restart_keeps_registrations_mode(TestDb::sqlite(), 3);
}

#[test]
fn db_only_mode_postgres() {
    restart_keeps_registrations_mode(TestDb::postgres(), 3);
}

#[test]
fn write_through_mode_sqlite() {
    restart_keeps_registrations_mode(TestDb::sqlite(), 1);
}

#[test]
fn www_authorize_sets_auth_user() {
    let db = TestDb::sqlite();
    db.init(&[("alice@example.com", "secret")]);
    let script = r#"
function ksr_request_route()
    local rc = KSR.auth_db.www_authorize("example.com", "subscriber")
    if rc < 0 then
        KSR.auth.www_challenge("example.com", 1)
        return
    end
    KSR.sl.sl_send_reply(200, "ok " .. KSR.pv.get("$au") .. " " .. KSR.pv.get("$ar"))
end
"#;
    let toml = format!("[db]\nurl = \"{}\"\n", db.url);
    let srv = Server::start(ServerOpts {
        script: Some(script),
        cores: "1",
        extra_toml: &toml,
        ..Default::default()
    });
    let c = client();
    // first: the subscriber comes from the database (route suspends), then from the cache
    for i in 0..2 {
        let r = register_with_auth(
            &c,
            srv.addr,
            "alice",
            DOMAIN,
            "secret",
            &format!("w-{i}"),
            1,
            "",
        );
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(reason(&r), "ok alice example.com");
    }
    let r = register_with_auth(&c, srv.addr, "alice", DOMAIN, "nope", "w-9", 1, "");
    assert_eq!(status(&r), 401, "{r}");
}

/// `expires=N` of the first Contact of a reply.
fn contact_expires(reply: &str) -> Option<u32> {
    let c = contacts_of(reply).into_iter().next()?;
    let v = c.split(";expires=").nth(1)?;
    v.split(|ch: char| !ch.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn ul_contacts(srv: &Server, aor: &str) -> serde_json::Value {
    let v = rpc(
        srv.rpc_port,
        "ul.lookup",
        serde_json::json!(["location", aor]),
    );
    v["contacts"].clone()
}

/// With no registrar settings, Kamailio's defaults: a too-short expires is
/// stretched to min_expires (min_expires_mode 0), no max_expires, no
/// max_contacts (only the per-AOR cap), Path ignored (use_path 0).
#[test]
fn kamailio_registrar_defaults() {
    let db = TestDb::sqlite();
    db.init(&[("alice@example.com", "secret")]);
    let srv = start(&db, "[auth]\nsecret = \"k\"\n");
    let c = client();
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "kd-1",
        1,
        "Contact: <sip:alice@10.0.0.1:5060>\r\nExpires: 10\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let e = contact_expires(&r).expect("expires in the 200");
    assert!((59..=60).contains(&e), "stretched to min_expires: {r}");

    // no max_expires: a day and more is kept
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "kd-2",
        1,
        "Contact: <sip:alice@10.0.0.2:5060>\r\nExpires: 200000\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        r.contains("<sip:alice@10.0.0.2:5060>;expires=200000")
            || r.contains("<sip:alice@10.0.0.2:5060>;expires=199999"),
        "{r}"
    );

    // Path without Supported: path is ignored: 200, nothing stored or echoed
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "kd-3",
        1,
        "Path: <sip:edge.example.net;lr>\r\nContact: <sip:alice@10.0.0.3:5060>\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(header(&r, "Path"), None, "{r}");
    let cs = ul_contacts(&srv, "alice");
    let stored = cs
        .as_array()
        .expect("contacts")
        .iter()
        .find(|c| c["contact"] == "sip:alice@10.0.0.3:5060")
        .expect("binding stored")
        .clone();
    assert!(stored["path"].is_null(), "{stored}");

    // no max_contacts: 12 more contacts in one REGISTER are all accepted
    let many: Vec<String> = (10..22)
        .map(|i| format!("<sip:alice@10.0.1.{i}:5060>"))
        .collect();
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "kd-4",
        1,
        &format!("Contact: {}\r\n", many.join(", ")),
    );
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(contacts_of(&r).len(), 15, "{r}");
}

/// The stricter behaviours, configured: 423 (min_expires_mode 1), 503
/// beyond max_contacts, Path stored and echoed with use_path (path_mode 2:
/// 420 without Supported: path), and the per-AOR cap.
#[test]
fn registrar_limits_when_configured() {
    let db = TestDb::sqlite();
    db.init(&[("alice@example.com", "secret"), ("bob@example.com", "pw")]);
    let srv = start(
        &db,
        "[auth]\nsecret = \"k\"\n[registrar]\nmin_expires = 60\nmin_expires_mode = 1\n\
         max_contacts = 2\nuse_path = 1\nretry_after = 30\n",
    );
    let c = client();
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "rl-1",
        1,
        "Contact: <sip:alice@10.0.0.1>\r\nExpires: 10\r\n",
    );
    assert_eq!(status(&r), 423, "{r}");
    assert_eq!(reason(&r), "Interval Too Brief", "{r}");
    assert_eq!(header(&r, "Min-Expires").as_deref(), Some("60"), "{r}");

    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "rl-2",
        1,
        "Contact: <sip:alice@10.0.0.1>, <sip:alice@10.0.0.2>\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let r = register_with_auth(
        &c,
        srv.addr,
        "alice",
        DOMAIN,
        "secret",
        "rl-3",
        1,
        "Contact: <sip:alice@10.0.0.3>\r\n",
    );
    assert_eq!(status(&r), 503, "{r}");
    assert_eq!(reason(&r), "Service Unavailable", "{r}");
    assert_eq!(
        header(&r, "P-Registrar-Error").as_deref(),
        Some("Too many registered contacts"),
        "{r}"
    );
    assert_eq!(header(&r, "Retry-After").as_deref(), Some("30"), "{r}");
    assert_eq!(ul_contacts(&srv, "alice").as_array().map(Vec::len), Some(2));

    // use_path with path_mode 2: Path needs Supported: path
    let path = "Path: <sip:edge.example.net;lr>\r\n";
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "pw",
        "rl-4",
        1,
        &format!("{path}Contact: <sip:bob@10.0.0.5>\r\n"),
    );
    assert_eq!(status(&r), 420, "{r}");
    assert_eq!(header(&r, "Unsupported").as_deref(), Some("path"), "{r}");
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "pw",
        "rl-5",
        1,
        &format!("{path}Supported: path\r\nContact: <sip:bob@10.0.0.5>\r\n"),
    );
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(
        header(&r, "Path").as_deref(),
        Some("<sip:edge.example.net;lr>"),
        "{r}"
    );
    let cs = ul_contacts(&srv, "bob");
    assert_eq!(cs[0]["path"], "<sip:edge.example.net;lr>", "{cs}");
    let (ok, _) = srv.stop();
    assert!(ok);

    // max_contacts 0 (unlimited) still meets the per-AOR cap
    let srv = start(
        &db,
        "[auth]\nsecret = \"k\"\n[registrar]\ncontacts_per_aor_cap = 3\n",
    );
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        DOMAIN,
        "pw",
        "rl-6",
        1,
        "Contact: <sip:bob@10.0.0.6>, <sip:bob@10.0.0.7>, <sip:bob@10.0.0.8>, <sip:bob@10.0.0.9>\r\n",
    );
    assert_eq!(status(&r), 503, "{r}");
    assert_eq!(
        header(&r, "P-Registrar-Error").as_deref(),
        Some("Too many registered contacts"),
        "{r}"
    );
}

/// Answers the challenge `ch` with nc=1 twice, from two requests (another
/// CSeq, so not a retransmission): the second status.
fn reuse_nonce(srv: &Server, c: &std::net::UdpSocket, call_id: &str) -> (u16, u16) {
    let contact = "Contact: <sip:alice@10.0.0.1>\r\n";
    let r = exchange(
        c,
        srv.addr,
        register_msg(c, "alice", DOMAIN, call_id, 1, contact).as_bytes(),
    )
    .unwrap();
    let ch = header(&r, "WWW-Authenticate").expect("challenge");
    assert!(ch.contains("qop=\"auth\""), "{ch}");
    let auth = digest_authorization(&ch, "alice", "secret", "REGISTER", "sip:example.com", 1);
    let mut got = Vec::new();
    for cseq in [2, 3] {
        let r = exchange(
            c,
            srv.addr,
            register_msg(
                c,
                "alice",
                DOMAIN,
                call_id,
                cseq,
                &format!("Authorization: {auth}\r\n{contact}"),
            )
            .as_bytes(),
        )
        .unwrap();
        got.push(status(&r));
    }
    (got[0], got[1])
}

/// auth `nonce_count` is off by default (Kamailio): a nonce is reusable with
/// the same nc until it expires; on, the reuse is refused and re-challenged.
#[test]
fn nonce_count_off_by_default() {
    let db = TestDb::sqlite();
    db.init(&[("alice@example.com", "secret")]);
    let srv = start(&db, "[auth]\nsecret = \"k\"\n");
    let c = client();
    assert_eq!(reuse_nonce(&srv, &c, "nc-1"), (200, 200));
    let (ok, _) = srv.stop();
    assert!(ok);
    let srv = start(&db, "[auth]\nsecret = \"k\"\nnonce_count = true\n");
    assert_eq!(reuse_nonce(&srv, &c, "nc-2"), (200, 401));
}
