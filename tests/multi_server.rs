//! Two sipshard servers sharing one PostgreSQL (issue 11, "past one
//! machine"): usrloc `db_mode` 3 and the shared `subscriber` table, the
//! bundled default script on both, each with its own UDP and RPC port.
//! A registration saved through one server is found through the other
//! (`ul.lookup` and the script's `lookup("location")`, which relays a
//! MESSAGE to the registered contact), a nonce issued by one server is
//! accepted by the other (same `[auth] secret`), and an unregister through
//! one, or `ul.rm` on one, is seen by the other.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use serde_json::json;

const DOMAIN: &str = "127.0.0.1";

fn start_node(db: &TestDb) -> Server {
    start_node_with(db, "timer_interval_s = 3600\n")
}

fn start_node_with(db: &TestDb, registrar: &str) -> Server {
    let toml = format!(
        "[db]\nurl = \"{}\"\n\
         [auth]\nsecret = \"shared-cluster-secret\"\n\
         [registrar]\ndb_mode = 3\n{registrar}",
        db.url
    );
    Server::start(ServerOpts {
        cores: "2",
        extra_toml: &toml,
        ..Default::default()
    })
}

/// The whole JSON-RPC answer (`result` or `error`), unlike `common::rpc`.
fn rpc_raw(port: u16, method: &str, params: serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("rpc connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /RPC HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("bad rpc body {e}: {resp}"))
}

/// The contacts `ul.lookup` lists for `aor` on one server (empty on 404).
fn ul_contacts(srv: &Server, aor: &str) -> Vec<String> {
    let v = rpc_raw(srv.rpc_port, "ul.lookup", json!(["location", aor]));
    if let Some(err) = v.get("error") {
        assert_eq!(err["code"], 404, "ul.lookup {aor}: {v}");
        return Vec::new();
    }
    v["result"]["contacts"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["contact"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A MESSAGE to `user` through `srv` from a foreign caller: the request
/// relayed to `contact_sock` (None when it does not arrive) and the final
/// reply the caller gets.
fn message_via(srv: &Server, user: &str, contact_sock: &UdpSocket) -> (Option<String>, u16) {
    let caller = client();
    let req = request(&caller, "MESSAGE", &format!("sip:{user}@{DOMAIN}"), "");
    caller.send_to(req.as_bytes(), srv.addr).unwrap();
    let mut relayed = None;
    let mut buf = vec![0u8; 65536];
    if let Ok((n, from)) = contact_sock.recv_from(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("MESSAGE ") {
            // answer it as the registered UA would
            let mut ok = String::from("SIP/2.0 200 OK\r\n");
            for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
                for v in headers(&text, name) {
                    ok.push_str(&format!("{name}: {v}\r\n"));
                }
            }
            ok.push_str("Content-Length: 0\r\n\r\n");
            contact_sock.send_to(ok.as_bytes(), from).unwrap();
            relayed = Some(text);
        }
    }
    // skip provisional replies
    let mut code = 0;
    for _ in 0..5 {
        match recv(&caller) {
            Some(r) => {
                code = status(&r);
                if code >= 200 {
                    break;
                }
            }
            None => break,
        }
    }
    (relayed, code)
}

#[test]
fn two_servers_share_one_postgres() {
    let db = TestDb::postgres();
    db.init(&[("alice@127.0.0.1", "alice-pw"), ("bob@127.0.0.1", "bob-pw")]);
    let a = start_node(&db);
    let b = start_node(&db);
    assert_ne!(a.addr, b.addr);

    // the UA's contact: a socket the test reads
    let ua = UdpSocket::bind("127.0.0.1:0").unwrap();
    ua.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    let contact = format!("sip:alice@{}", ua.local_addr().unwrap());

    // nothing registered yet: neither server finds alice
    assert!(ul_contacts(&a, "alice").is_empty());
    assert!(ul_contacts(&b, "alice").is_empty());

    // register with digest auth through A
    let c = client();
    let r = register_with_auth(
        &c,
        a.addr,
        "alice",
        DOMAIN,
        "alice-pw",
        "ms-1",
        1,
        &format!("Contact: <{contact}>\r\nExpires: 600\r\n"),
    );
    assert_eq!(status(&r), 200, "register via A: {r}\n{}", a.log());

    // B's control plane finds it (db_mode 3 reads the database)
    assert_eq!(
        ul_contacts(&b, "alice"),
        vec![contact.clone()],
        "ul.lookup on B\n{}",
        b.log()
    );
    // B's default script: lookup("location") relays a MESSAGE to the contact
    let (relayed, code) = message_via(&b, "alice", &ua);
    let relayed = relayed.unwrap_or_else(|| panic!("MESSAGE via B not relayed\n{}", b.log()));
    assert!(
        relayed.starts_with(&format!("MESSAGE {contact} ")),
        "{relayed}"
    );
    assert_eq!(code, 200, "caller gets the UA's 200 through B");

    // a nonce issued by A is accepted by B (shared [auth] secret): the
    // challenge comes from A, the authorized REGISTER goes to B
    let bob_ua = UdpSocket::bind("127.0.0.1:0").unwrap();
    bob_ua
        .set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    let bob_contact = format!("sip:bob@{}", bob_ua.local_addr().unwrap());
    let extra = format!("Contact: <{bob_contact}>\r\nExpires: 600\r\n");
    let ch = exchange(
        &c,
        a.addr,
        register_msg(&c, "bob", DOMAIN, "ms-2", 1, &extra).as_bytes(),
    )
    .expect("challenge from A");
    assert_eq!(status(&ch), 401, "{ch}");
    let www = header(&ch, "WWW-Authenticate").expect("WWW-Authenticate");
    let auth = digest_authorization(&www, "bob", "bob-pw", "REGISTER", "sip:127.0.0.1", 1);
    let r = exchange(
        &c,
        b.addr,
        register_msg(
            &c,
            "bob",
            DOMAIN,
            "ms-2",
            2,
            &format!("Authorization: {auth}\r\n{extra}"),
        )
        .as_bytes(),
    )
    .expect("reply from B");
    assert_eq!(status(&r), 200, "A's nonce on B: {r}\n{}", b.log());
    // ... and the registration saved by B is found through A
    assert_eq!(ul_contacts(&a, "bob"), vec![bob_contact.clone()]);
    let (relayed, _) = message_via(&a, "bob", &bob_ua);
    assert!(relayed.is_some(), "MESSAGE via A to bob\n{}", a.log());

    // unregister alice through B (same Call-ID, Expires: 0)
    let r = register_with_auth(
        &c,
        b.addr,
        "alice",
        DOMAIN,
        "alice-pw",
        "ms-1",
        10,
        &format!("Contact: <{contact}>\r\nExpires: 0\r\n"),
    );
    assert_eq!(status(&r), 200, "unregister via B: {r}");
    // A's memory still held the binding from its own save; it must not
    // answer from it
    assert!(
        ul_contacts(&a, "alice").is_empty(),
        "A still lists alice after B removed her"
    );
    let (relayed, code) = message_via(&a, "alice", &ua);
    assert!(
        relayed.is_none(),
        "relayed to a removed contact: {relayed:?}"
    );
    assert_eq!(code, 404, "A's lookup after the unregister via B");
    // bob is untouched
    assert_eq!(ul_contacts(&b, "bob"), vec![bob_contact]);

    // `ul.rm` on A (which never saved bob itself) deletes his rows, so B
    // no longer finds him either
    let v = rpc_raw(a.rpc_port, "ul.rm", json!(["location", "bob"]));
    assert_eq!(v["result"]["removed"], 1, "{v}");
    assert!(ul_contacts(&b, "bob").is_empty(), "B still lists bob");
    let (relayed, code) = message_via(&b, "bob", &bob_ua);
    assert!(
        relayed.is_none(),
        "relayed to a removed contact: {relayed:?}"
    );
    assert_eq!(code, 404);
}

/// The ruid `ul.lookup` on `srv` lists first for `aor`.
fn ul_ruid(srv: &Server, aor: &str) -> String {
    let v = rpc(srv.rpc_port, "ul.lookup", json!(["location", aor]));
    v["contacts"][0]["ruid"].as_str().unwrap_or("").to_string()
}

/// usrloc timer on a server whose memory holds an older copy of a binding
/// that the other server has since refreshed in the database: the copy
/// expires there, but the row (refreshed, not expired) stays.
#[test]
fn expiry_on_one_server_keeps_the_others_refresh() {
    let db = TestDb::postgres();
    db.init(&[("carol@127.0.0.1", "carol-pw")]);
    let cfg = "timer_interval_s = 1\nmin_expires = 0\n";
    let a = start_node_with(&db, cfg);
    let b = start_node_with(&db, cfg);
    let c = client();
    let contact = "Contact: <sip:carol@127.0.0.1:5999>\r\n";
    // A saves a binding that expires in 2 s (A's memory keeps its copy)
    let r = register_with_auth(
        &c,
        a.addr,
        "carol",
        DOMAIN,
        "carol-pw",
        "ex-1",
        1,
        &format!("{contact}Expires: 2\r\n"),
    );
    assert_eq!(status(&r), 200, "{r}");
    let ruid = ul_ruid(&b, "carol");
    assert!(!ruid.is_empty());
    // B refreshes the same binding for 10 minutes: same ruid, new expires
    let r = register_with_auth(
        &c,
        b.addr,
        "carol",
        DOMAIN,
        "carol-pw",
        "ex-1",
        10,
        &format!("{contact}Expires: 600\r\n"),
    );
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(ul_ruid(&b, "carol"), ruid, "an update keeps the ruid");
    // wait for A's timer to expire its own (older) copy; nothing on A
    // reads the AOR meanwhile
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = rpc(
            a.rpc_port,
            "stats.fetch",
            json!(["usrloc.expired_contacts"]),
        );
        if st["usrloc.expired_contacts"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A's timer did not expire its copy: {st}\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A queued its delete in the same timer tick that counted the expiry;
    // the row must not disappear: watched for 2 s (an unconditional delete
    // lands within milliseconds, the way it did before the fix)
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert_eq!(
            ul_contacts(&b, "carol"),
            vec!["sip:carol@127.0.0.1:5999".to_string()],
            "B's refresh survived A's expiry\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        ul_contacts(&a, "carol"),
        vec!["sip:carol@127.0.0.1:5999".to_string()]
    );
}

/// usrloc db_mode 3, one node: REGISTERs of one AOR and one contact that
/// arrive together (each with its own Call-ID, from 12 sockets) are saved
/// one at a time, so the database ends with one row for the contact. Before
/// the per-AOR gate, each save read the AOR before the others wrote and
/// inserted its own row.
#[test]
fn concurrent_saves_of_one_aor_leave_one_row() {
    let db = TestDb::postgres();
    db.init(&[("dave@127.0.0.1", "dave-pw")]);
    let a = start_node(&db);
    let n = 12;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let contact = "Contact: <sip:dave@127.0.0.1:5998>\r\nExpires: 600\r\n";
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let to = a.addr;
            std::thread::spawn(move || {
                let c = client();
                let call_id = format!("conc-{i}");
                let r = exchange(
                    &c,
                    to,
                    register_msg(&c, "dave", DOMAIN, &call_id, 1, contact).as_bytes(),
                )
                .expect("challenge");
                assert_eq!(status(&r), 401, "{r}");
                let ch = header(&r, "WWW-Authenticate").expect("WWW-Authenticate");
                let auth =
                    digest_authorization(&ch, "dave", "dave-pw", "REGISTER", "sip:127.0.0.1", 1);
                let msg = register_msg(
                    &c,
                    "dave",
                    DOMAIN,
                    &call_id,
                    2,
                    &format!("Authorization: {auth}\r\n{contact}"),
                );
                barrier.wait();
                let r = exchange(&c, to, msg.as_bytes()).expect("final reply");
                status(&r)
            })
        })
        .collect();
    let codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}\n{}", a.log());
    let rows = {
        use sqlx::Connection;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM location WHERE username = 'dave'")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            n
        })
    };
    assert_eq!(
        rows,
        1,
        "location rows for one contact of dave\n{}",
        a.log()
    );
    assert_eq!(
        ul_contacts(&a, "dave"),
        vec!["sip:dave@127.0.0.1:5998".to_string()]
    );
}
