//! SIP over TCP and TLS on the real binary: sipp over TCP (and over TLS
//! through stunnel, Debian's sipp has no TLS) registering with digest auth
//! and calling a UDP user through the proxy; framing (a message split over
//! many segments, several in one); hostile peers (silent, garbage, a
//! connection flood) closed or refused while others are served; TLS with a
//! Rust (rustls) client, TLS 1.1 and missing client certificates refused;
//! a request relayed from UDP to TCP with the TCP Via and the double
//! Record-Route; connections spread evenly over the shards.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use common::sipp::Sipp;
use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn stat(srv: &Server, name: &str) -> u64 {
    let v = rpc(srv.rpc_port, "stats.fetch", json!([name]));
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Waits until `stat(name) >= want`.
fn wait_stat(srv: &Server, name: &str, want: u64, within: Duration) -> u64 {
    let until = Instant::now() + within;
    loop {
        let v = stat(srv, name);
        if v >= want || Instant::now() > until {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The default script (auth against `db`) with TCP on the UDP port.
fn start(db: &TestDb, tcp_extra: &str, more: &str) -> Server {
    let toml = format!(
        "[db]\nurl = \"{}\"\n[tcp]\nenable = true\n{tcp_extra}\n{more}",
        db.url
    );
    Server::start(ServerOpts {
        cores: "2",
        extra_toml: &toml,
        ..Default::default()
    })
}

/// Reads one SIP message (headers + Content-Length body) from a stream.
fn read_msg(s: &mut impl Read, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        // skip keepalive CRLFs
        while pending.starts_with(b"\r\n") {
            pending.drain(..2);
        }
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let cl = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim().eq_ignore_ascii_case("content-length") || k.trim() == "l")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + cl {
                let msg: Vec<u8> = pending.drain(..end + 4 + cl).collect();
                return Some(String::from_utf8_lossy(&msg).into_owned());
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn options(local: SocketAddr, call_id: &str, proto: &str) -> String {
    format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{proto} {local};branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:ping@127.0.0.1>;tag={call_id}\r\n\
         To: <sip:127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn register(
    local: SocketAddr,
    proto: &str,
    user: &str,
    cseq: u32,
    call_id: &str,
    extra: &str,
) -> String {
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{proto} {local};branch=z9hG4bK-{call_id}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@127.0.0.1>;tag={call_id}\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{local};transport={}>\r\n\
         Expires: 600\r\n\
         {extra}Content-Length: 0\r\n\r\n",
        proto.to_ascii_lowercase()
    )
}

/// REGISTER with digest auth over one stream; returns the final reply.
fn register_over<S: Read + Write>(
    s: &mut S,
    local: SocketAddr,
    proto: &str,
    user: &str,
    password: &str,
) -> String {
    let mut pending = Vec::new();
    let cid = format!("reg-{user}-{}", local.port());
    s.write_all(register(local, proto, user, 1, &cid, "").as_bytes())
        .unwrap();
    let r = read_msg(s, &mut pending).expect("challenge");
    assert_eq!(status(&r), 401, "{r}");
    let ch = header(&r, "WWW-Authenticate").expect("WWW-Authenticate");
    let auth = digest_authorization(&ch, user, password, "REGISTER", "sip:127.0.0.1", 1);
    s.write_all(
        register(
            local,
            proto,
            user,
            2,
            &cid,
            &format!("Authorization: {auth}\r\n"),
        )
        .as_bytes(),
    )
    .unwrap();
    read_msg(s, &mut pending).expect("final reply")
}

// ------------------------------------------------------------------ TCP

/// sipp over TCP (`-t t1`): REGISTER with auth, then an authenticated call
/// to a UDP-registered callee through the proxy; the call completes (ACK
/// and BYE follow the double Record-Route back across the transports).
#[test]
fn sipp_over_tcp_registers_with_auth_and_calls_a_udp_user() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret"), ("bob@127.0.0.1", "pw-bob")]);
    let srv = start(&db, "", "");
    let dir = TempDir::new("tcp-sipp");
    std::fs::write(
        dir.path("users.csv"),
        "SEQUENTIAL\nalice;127.0.0.1;secret\n",
    )
    .unwrap();
    let csv = dir.path("users.csv").display().to_string();
    let reg = Sipp::spawn(
        &dir,
        "reg",
        free_tcp_port(),
        &[
            srv.addr.to_string(),
            "-sf".into(),
            format!("{ROOT}/bench/sipp/register-auth.xml"),
            "-inf".into(),
            csv,
            "-au".into(),
            "alice".into(),
            "-ap".into(),
            "secret".into(),
            "-t".into(),
            "t1".into(),
            "-m".into(),
            "1".into(),
        ],
    )
    .wait();
    assert_eq!(reg.code, Some(0), "{}\n{}", reg.report(), srv.log());
    assert_eq!(reg.successful(), 1, "{}", reg.report());
    assert!(stat(&srv, "tcp.accepted") >= 1);
    // The contact saved over TCP is reached over that connection.
    let ul = rpc(srv.rpc_port, "ul.lookup", json!(["location", "alice"]));
    assert!(
        ul.to_string().contains("transport=tcp"),
        "alice's binding keeps the TCP source: {ul}"
    );

    // bob on UDP, called by alice over TCP
    call_udp_bob(&srv, &dir, None, ";transport=tcp;r2=on;lr");
}

/// Registers bob over UDP (a sipp UAS as his contact), then alice (sipp
/// over TCP to the server, or to `via`: a TLS tunnel in front of it)
/// calls him with auth; the call completes, and the callee sees the stream
/// side of the double Record-Route (`rr_marker`).
fn call_udp_bob(srv: &Server, dir: &TempDir, via: Option<SocketAddr>, rr_marker: &str) {
    let port = free_udp_port();
    let uas = Sipp::uas(dir, "uas", "uas-call.xml", port, srv.addr, 1, &[]);
    let c = client();
    let r = register_with_auth(
        &c,
        srv.addr,
        "bob",
        "127.0.0.1",
        "pw-bob",
        "rega-bob-tcp",
        1,
        &format!("Contact: <sip:bob@127.0.0.1:{port}>\r\nExpires: 600\r\n"),
    );
    assert_eq!(status(&r), 200, "{r}");
    let uac = Sipp::spawn(
        dir,
        "uac",
        free_tcp_port(),
        &[
            srv.addr.to_string(),
            "-sf".into(),
            common::sipp::scenario("uac-call-auth.xml"),
            "-s".into(),
            "bob".into(),
            "-m".into(),
            "1".into(),
            "-d".into(),
            "300".into(),
            "-key".into(),
            "caller".into(),
            "alice".into(),
            "-au".into(),
            "alice".into(),
            "-ap".into(),
            "secret".into(),
            "-t".into(),
            "t1".into(),
        ]
        .into_iter()
        .chain(via.iter().flat_map(|a| ["-rsa".to_string(), a.to_string()]))
        .collect::<Vec<_>>(),
    )
    .wait();
    let uas = uas.wait_after(&uac);
    assert_eq!(uac.code, Some(0), "{}\n{}", uac.report(), srv.log());
    assert_eq!(uas.code, Some(0), "{}\n{}", uas.report(), srv.log());
    assert_eq!(uac.successful(), 1, "{}", uac.report());
    assert_eq!(uas.traced("received", "BYE "), 1, "{}", uas.report());
    assert!(
        uas.messages.contains(rr_marker),
        "the callee sees the stream side of the double Record-Route ({rr_marker}):\n{}",
        uas.messages
    );
}

/// One request written a byte at a time (TCP_NODELAY: many segments), then
/// three requests and a CRLFCRLF ping in one write: every request is
/// answered in order and the ping gets its CRLF pong.
#[test]
fn split_and_pipelined_messages_are_all_answered() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret")]);
    let srv = start(&db, "", "");
    let mut s = tcp_connect(srv.addr);
    let local = s.local_addr().unwrap();
    let one = options(local, "split-1", "TCP");
    for b in one.as_bytes() {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    let mut pending = Vec::new();
    let r = read_msg(&mut s, &mut pending).expect("reply to the split request");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(header(&r, "Call-ID").as_deref(), Some("split-1"));
    let mut batch = String::new();
    for i in 0..3 {
        batch.push_str(&options(local, &format!("pipe-{i}"), "TCP"));
        if i == 1 {
            batch.push_str("\r\n\r\n");
        }
    }
    s.write_all(batch.as_bytes()).unwrap();
    let mut raw = Vec::new();
    for i in 0..3 {
        let before = pending.len();
        let r = read_msg(&mut s, &mut pending).unwrap_or_else(|| panic!("reply {i}"));
        let _ = before;
        raw.push(r.clone());
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(header(&r, "Call-ID"), Some(format!("pipe-{i}")), "{r}");
    }
    // The pong: a ping alone gets exactly CRLF back.
    s.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 8];
    let n = s.read(&mut pong).unwrap();
    assert_eq!(&pong[..n], b"\r\n");
}

/// The kernel's SO_REUSEPORT hash would put eight connections 6/2 or worse
/// on two shards about a third of the time; the accepting shard hands each
/// new connection to the shard that owns the fewest. Eight connections,
/// each answered before the next opens, are read four by each shard
/// (`core.shards` gauge `tcp.connections`), and the request on each runs on
/// the shard that reads it: four per shard.
#[test]
fn connections_are_spread_evenly_over_the_shards() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret")]);
    let srv = start(&db, "", "");
    let requests = |shards: &serde_json::Value| -> Vec<u64> {
        let list = shards.as_array().expect("core.shards is a list");
        list.iter()
            .map(|s| s["rcv_requests"].as_u64().expect("rcv_requests"))
            .collect()
    };
    let before = requests(&rpc(srv.rpc_port, "core.shards", json!([])));
    assert_eq!(before.len(), 2);
    let mut conns = Vec::new();
    for i in 0..8 {
        let mut s = tcp_connect(srv.addr);
        let local = s.local_addr().unwrap();
        s.write_all(options(local, &format!("spread-{i}"), "TCP").as_bytes())
            .unwrap();
        let r = read_msg(&mut s, &mut Vec::new()).unwrap_or_else(|| {
            panic!(
                "no reply on connection {i}: {}",
                rpc(srv.rpc_port, "core.shards", json!([]))
            )
        });
        assert_eq!(status(&r), 200, "{r}");
        conns.push(s);
    }
    let shards = rpc(srv.rpc_port, "core.shards", json!([]));
    let owned: Vec<i64> = shards
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["gauges"]["tcp.connections"].as_i64().expect("gauge"))
        .collect();
    assert_eq!(owned, vec![4, 4], "{shards}");
    assert_eq!(stat(&srv, "tcp.connections"), 8);
    let ran: Vec<u64> = requests(&shards)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(ran, vec![4, 4], "{shards}");
    // Each connection still works after the hand-over.
    for (i, s) in conns.iter_mut().enumerate() {
        let local = s.local_addr().unwrap();
        s.write_all(options(local, &format!("again-{i}"), "TCP").as_bytes())
            .unwrap();
        let r = read_msg(s, &mut Vec::new()).expect("second reply");
        assert_eq!(header(&r, "Call-ID"), Some(format!("again-{i}")), "{r}");
    }
}

/// A peer that connects and says nothing is closed after the idle time; a
/// peer sending garbage is closed at once (counted); a third client is
/// served meanwhile.
#[test]
fn idle_and_garbage_connections_are_closed_others_served() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret")]);
    let srv = start(&db, "connection_lifetime_s = 2", "");
    let mut idle = tcp_connect(srv.addr);
    let mut bad = tcp_connect(srv.addr);
    bad.write_all(b"\x16\x03\x01\x00\xa5 this is not SIP at all\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let t0 = Instant::now();
    // garbage: closed (EOF or reset) quickly
    let r = bad.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(wait_stat(&srv, "tcp.bad_framing", 1, Duration::from_secs(2)) >= 1);
    // another client is served
    let mut good = tcp_connect(srv.addr);
    let local = good.local_addr().unwrap();
    let r = register_over(&mut good, local, "TCP", "alice", "secret");
    assert_eq!(status(&r), 200, "{r}");
    // idle: closed after ~2 s (the timer looks once a second)
    idle.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let r = idle.read(&mut buf);
    let waited = t0.elapsed();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    assert!(stat(&srv, "tcp.closed_idle") >= 1);
}

/// One source opening thousands of connections hits the per-source limit
/// and is refused (counted), while another client still registers; no
/// limit is passed and the server keeps running.
#[test]
fn connection_flood_is_refused_while_others_register() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret")]);
    let srv = start(&db, "max_connections_per_source = 50", "");
    // 127.0.0.2 floods (another source IP on loopback)
    let flood_src: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..2000 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&flood_src.into()).unwrap();
        if s.connect_timeout(&srv.addr.into(), Duration::from_secs(2))
            .is_ok()
        {
            held.push(s);
        }
    }
    let refused = wait_stat(&srv, "tcp.refused", 1900, Duration::from_secs(5));
    assert!(refused >= 1900, "refused {refused}");
    let open = stat(&srv, "tcp.connections");
    assert!(open <= 51, "{open} connections kept");
    let mut good = tcp_connect(srv.addr);
    let local = good.local_addr().unwrap();
    let r = register_over(&mut good, local, "TCP", "alice", "secret");
    assert_eq!(status(&r), 200, "{r}");
    drop(held);
}

/// A request from a UDP client relayed to a contact registered with
/// `;transport=tcp`: it leaves over TCP with a `SIP/2.0/TCP` Via and two
/// Record-Routes (TCP side on top, both `r2=on`); the reply the TCP callee
/// sends on that connection reaches the UDP caller.
#[test]
fn udp_request_relayed_over_tcp_has_tcp_via_and_double_record_route() {
    let srv = Server::start(ServerOpts {
        cores: "2",
        script: Some(&std::fs::read_to_string(format!("{ROOT}/tests/lua/proxy.lua")).unwrap()),
        extra_toml: "[tcp]\nenable = true\n",
        ..Default::default()
    });
    let callee = TcpListener::bind("127.0.0.1:0").unwrap();
    let cport = callee.local_addr().unwrap().port();
    let c = client();
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "carol",
            "127.0.0.1",
            "reg-carol",
            1,
            &format!("Contact: <sip:carol@127.0.0.1:{cport};transport=tcp>\r\nExpires: 600\r\n"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let local = c.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:carol@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-inv1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:dave@127.0.0.1>;tag=d1\r\n\
         To: <sip:carol@127.0.0.1>\r\n\
         Call-ID: relay-tcp-1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:dave@{local}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    c.send_to(invite.as_bytes(), srv.addr).unwrap();
    callee.set_nonblocking(false).unwrap();
    let (mut conn, _) = callee.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut pending = Vec::new();
    let got = read_msg(&mut conn, &mut pending).expect("INVITE over TCP");
    assert!(got.starts_with("INVITE sip:carol@127.0.0.1:"), "{got}");
    let vias = headers(&got, "Via");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/TCP {};branch=z9hG4bK", srv.addr)),
        "{got}"
    );
    let rr = headers(&got, "Record-Route");
    assert_eq!(rr.len(), 2, "{got}");
    assert!(
        rr[0].starts_with(&format!("<sip:{};transport=tcp;r2=on;lr", srv.addr)),
        "{got}"
    );
    assert!(
        rr[1].starts_with(&format!("<sip:{};r2=on;lr", srv.addr)),
        "{got}"
    );
    // the callee answers on its connection
    let to_tag = "c1";
    let mut reply = String::from("SIP/2.0 486 Busy Here\r\n");
    for v in &vias {
        reply.push_str(&format!("Via: {v}\r\n"));
    }
    reply.push_str(&format!(
        "From: <sip:dave@127.0.0.1>;tag=d1\r\nTo: <sip:carol@127.0.0.1>;tag={to_tag}\r\n\
         Call-ID: relay-tcp-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ));
    conn.write_all(reply.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got486 = false;
    while Instant::now() < deadline && !got486 {
        if let Some(r) = recv(&c) {
            got486 = status(&r) == 486;
        }
    }
    assert!(got486, "the 486 reached the UDP caller\n{}", srv.log());
    // the proxy ACKs the 486 hop by hop, on the same connection
    let ack = read_msg(&mut conn, &mut pending).expect("ACK over TCP");
    assert!(ack.starts_with("ACK "), "{ack}");
}

// ------------------------------------------------------------------ TLS

struct Certs {
    dir: TempDir,
}

impl Certs {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate.
    fn make() -> Certs {
        let dir = TempDir::new("certs");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir.0)
                .stdin(Stdio::null())
                .output()
                .expect("openssl is installed (scripts/deps.sh)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sipshard test CA",
        ]);
        run(&a);
        for (name, cn, eku) in [
            ("server", "127.0.0.1", "serverAuth"),
            ("client", "alice", "clientAuth"),
        ] {
            let mut a = vec!["req"];
            a.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subj = format!("/CN={cn}");
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run(&a);
            let ext = format!("{name}.ext");
            std::fs::write(
                dir.path(&ext),
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={eku}\nsubjectAltName=IP:127.0.0.1\n"
                ),
            )
            .unwrap();
            let pem = format!("{name}.pem");
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Certs { dir }
    }

    fn tls_toml(&self, port: u16, require_cert: bool) -> String {
        format!(
            "[tls]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_list = \"{}\"\nrequire_certificate = {require_cert}\n",
            self.path("server.pem").display(),
            self.path("server.key").display(),
            self.path("ca.pem").display(),
        )
    }
}

fn pem_certs(p: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(p)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// A rustls client trusting the test CA, optionally with the client
/// certificate.
fn tls_client(certs: &Certs, with_cert: bool) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&certs.path("ca.pem")) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = if with_cert {
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(certs.path("client.key")).unwrap();
        b.with_client_auth_cert(pem_certs(&certs.path("client.pem")), key)
            .unwrap()
    } else {
        b.with_no_client_auth()
    };
    Arc::new(cfg)
}

fn tls_stream(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = tcp_connect(addr);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// REGISTER with digest auth over TLS from a Rust (rustls) client; an
/// OPTIONS on the same connection is answered too.
#[test]
fn tls_client_registers_with_auth() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret")]);
    let certs = Certs::make();
    let tls_port = free_tcp_port();
    let srv = start(&db, "", &certs.tls_toml(tls_port, false));
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let mut s = tls_stream(tls_client(&certs, false), addr);
    let local = s.sock.local_addr().unwrap();
    let r = register_over(&mut s, local, "TLS", "alice", "secret");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    let ul = rpc(srv.rpc_port, "ul.lookup", json!(["location", "alice"]));
    assert!(ul.to_string().contains("transport=tls"), "{ul}");
    assert!(stat(&srv, "tcp.accepted") >= 1);
}

/// A TLS 1.1 client is refused (the server speaks 1.2 and 1.3 only); the
/// same client offering TLS 1.2 completes its handshake.
#[test]
fn tls_1_1_is_refused() {
    let db = TestDb::sqlite();
    db.init(&[]);
    let certs = Certs::make();
    let tls_port = free_tcp_port();
    let srv = start(&db, "", &certs.tls_toml(tls_port, false));
    let s_client = |version: &str| -> String {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{tls_port}"),
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ok = s_client("-tls1_2");
    assert!(
        ok.contains("TLSv1.2") && !ok.contains("Cipher is (NONE)"),
        "{ok}"
    );
    let before = stat(&srv, "tls.failed");
    let old = s_client("-tls1_1");
    assert!(
        old.contains("Cipher is (NONE)") && old.contains("alert"),
        "the handshake failed with an alert from the server: {old}"
    );
    assert!(
        wait_stat(&srv, "tls.failed", before + 1, Duration::from_secs(3)) > before,
        "the server refused the TLS 1.1 handshake itself: {old}"
    );
}

/// With `require_certificate`, a client without a certificate is refused;
/// one with a certificate of the CA registers.
#[test]
fn tls_client_without_certificate_is_refused_when_required() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret")]);
    let certs = Certs::make();
    let tls_port = free_tcp_port();
    let srv = start(&db, "", &certs.tls_toml(tls_port, true));
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let mut anon = tls_stream(tls_client(&certs, false), addr);
    let local = anon.sock.local_addr().unwrap();
    let w = anon.write_all(register(local, "TLS", "alice", 1, "anon", "").as_bytes());
    let mut pending = Vec::new();
    let got = if w.is_ok() {
        read_msg(&mut anon, &mut pending)
    } else {
        None
    };
    assert!(
        got.is_none(),
        "no answer without a client certificate: {got:?}"
    );
    assert!(wait_stat(&srv, "tls.failed", 1, Duration::from_secs(3)) >= 1);
    let mut s = tls_stream(tls_client(&certs, true), addr);
    let local = s.sock.local_addr().unwrap();
    let r = register_over(&mut s, local, "TLS", "alice", "secret");
    assert_eq!(status(&r), 200, "{r}");
}

/// sipp over TLS: Debian's sipp has no TLS, so stunnel (client mode) takes
/// sipp's TCP connection and speaks TLS to sipshard; REGISTER with auth
/// completes, and alice then calls bob, registered over UDP, through the
/// proxy (TLS in, UDP out, double Record-Route).
#[test]
fn sipp_through_stunnel_registers_over_tls_and_calls_a_udp_user() {
    if Command::new("stunnel4").arg("-version").output().is_err() {
        panic!("stunnel4 is not installed (scripts/deps.sh)");
    }
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret"), ("bob@127.0.0.1", "pw-bob")]);
    let certs = Certs::make();
    let tls_port = free_tcp_port();
    let srv = start(&db, "", &certs.tls_toml(tls_port, false));
    let dir = TempDir::new("stunnel");
    let front = free_tcp_port();
    let conf = dir.path("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[sip]\nclient = yes\naccept = 127.0.0.1:{front}\nconnect = 127.0.0.1:{tls_port}\nCAfile = {}\nverifyChain = yes\ncheckIP = 127.0.0.1\n",
            certs.path("ca.pem").display()
        ),
    )
    .unwrap();
    let mut tunnel = Command::new("stunnel4")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", front)).is_err() {
        assert!(Instant::now() < until, "stunnel did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(
        dir.path("users.csv"),
        "SEQUENTIAL\nalice;127.0.0.1;secret\n",
    )
    .unwrap();
    let reg = Sipp::spawn(
        &dir,
        "reg",
        free_tcp_port(),
        &[
            format!("127.0.0.1:{front}"),
            "-sf".into(),
            format!("{ROOT}/bench/sipp/register-auth.xml"),
            "-inf".into(),
            dir.path("users.csv").display().to_string(),
            "-au".into(),
            "alice".into(),
            "-ap".into(),
            "secret".into(),
            "-t".into(),
            "t1".into(),
            "-m".into(),
            "3".into(),
        ],
    )
    .wait();
    assert_eq!(reg.code, Some(0), "{}\n{}", reg.report(), srv.log());
    assert_eq!(reg.successful(), 3, "{}", reg.report());
    let ul = rpc(srv.rpc_port, "ul.lookup", json!(["location", "alice"]));
    assert!(ul.to_string().contains("transport=tls"), "{ul}");
    // alice, over TLS (through the tunnel), calls bob on UDP
    let front_addr: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    call_udp_bob(&srv, &dir, Some(front_addr), ";transport=tls;r2=on;lr");
    let _ = tunnel.kill();
    let _ = tunnel.wait();
}

/// `KSR.set_forward_no_connect()`: a relay to a TCP contact with no
/// connection fails at once (the contact never sees a connect); without it
/// the connection is opened and the request goes.
#[test]
fn forward_no_connect_opens_no_connection() {
    let script = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        KSR.registrar.save("location", 0)
        return KSR.x.exit()
    end
    if KSR.registrar.lookup("location") < 0 then
        KSR.sl.sl_send_reply(404, "Not Found")
        return KSR.x.exit()
    end
    if KSR.hdr.is_present("X-No-Connect") > 0 then
        KSR.set_forward_no_connect()
    end
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_send_reply(503, "No Connection")
    end
end
"#;
    let srv = Server::start(ServerOpts {
        cores: "2",
        script: Some(script),
        extra_toml: "[tcp]\nenable = true\n",
        ..Default::default()
    });
    let callee = TcpListener::bind("127.0.0.1:0").unwrap();
    callee.set_nonblocking(true).unwrap();
    let cport = callee.local_addr().unwrap().port();
    let c = client();
    let r = exchange(
        &c,
        srv.addr,
        register_msg(
            &c,
            "erin",
            "127.0.0.1",
            "reg-erin",
            1,
            &format!("Contact: <sip:erin@127.0.0.1:{cport};transport=tcp>\r\nExpires: 600\r\n"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&r), 200, "{r}");
    let local = c.local_addr().unwrap();
    let msg = |n: u32, extra: &str| {
        format!(
            "MESSAGE sip:erin@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-nc{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:dave@127.0.0.1>;tag=nc{n}\r\n\
             To: <sip:erin@127.0.0.1>\r\n\
             Call-ID: no-connect-{n}\r\n\
             CSeq: 1 MESSAGE\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        )
    };
    let r = exchange(&c, srv.addr, msg(1, "X-No-Connect: 1\r\n").as_bytes()).unwrap();
    assert_eq!(status(&r), 503, "{r}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        callee.accept().is_err(),
        "no connection was opened with set_forward_no_connect"
    );
    c.send_to(msg(2, "").as_bytes(), srv.addr).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        match callee.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no connection from the proxy: {e}\n{}", srv.log()),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut pending = Vec::new();
    let got = read_msg(&mut conn, &mut pending).expect("MESSAGE over TCP");
    assert!(got.starts_with("MESSAGE sip:erin@127.0.0.1:"), "{got}");
    assert!(got.contains("Call-ID: no-connect-2"), "{got}");
    assert_eq!(stat(&srv, "tcp.connected"), 1);
}

/// The certificate is read again with the script reload (`kemi.reload`):
/// a client trusting only a new CA fails before and registers after the
/// files are replaced and the script reloaded.
#[test]
fn tls_certificate_is_reloaded_with_the_script() {
    let db = TestDb::sqlite();
    db.init(&[("alice@127.0.0.1", "secret")]);
    let old = Certs::make();
    let new = Certs::make();
    let tls_port = free_tcp_port();
    let srv = start(&db, "", &old.tls_toml(tls_port, false));
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let try_register = |certs: &Certs| -> Option<String> {
        let mut s = tls_stream(tls_client(certs, false), addr);
        let local = s.sock.local_addr().unwrap();
        s.write_all(register(local, "TLS", "alice", 1, "reload", "").as_bytes())
            .ok()?;
        let mut pending = Vec::new();
        read_msg(&mut s, &mut pending)
    };
    assert!(
        try_register(&new).is_none(),
        "the new CA is not trusted yet"
    );
    assert_eq!(try_register(&old).map(|r| status(&r)), Some(401));
    for f in ["server.pem", "server.key"] {
        std::fs::copy(new.path(f), old.path(f)).unwrap();
    }
    // rpc() fails the test on a JSON-RPC error (a refused reload).
    rpc(srv.rpc_port, "kemi.reload", json!([]));
    assert_eq!(
        try_register(&new).map(|r| status(&r)),
        Some(401),
        "{}",
        srv.log()
    );
}

/// `$conid`, `$pr`, `KSR.tcpops.tcp_conid_state()` and
/// `tcp_close_connection()` from the script.
#[test]
fn tcpops_sees_and_closes_the_connection() {
    let script = r#"
function ksr_request_route()
    local id = KSR.kx.get_conid()
    KSR.hdr.append_to_reply("X-Conn: " .. tostring(KSR.pv.get("$pr")) .. " " .. id .. " "
        .. KSR.tcpops.tcp_conid_state(id) .. " " .. KSR.tcpops.tcp_conid_alive(id + 1000) .. "\r\n")
    KSR.sl.sl_send_reply(200, "OK")
    if KSR.is_method("MESSAGE") then
        KSR.tcpops.tcp_close_connection()
    end
end
"#;
    let srv = Server::start(ServerOpts {
        cores: "2",
        script: Some(script),
        extra_toml: "[tcp]\nenable = true\n",
        ..Default::default()
    });
    let mut s = tcp_connect(srv.addr);
    let local = s.local_addr().unwrap();
    s.write_all(options(local, "conid-1", "TCP").as_bytes())
        .unwrap();
    let mut pending = Vec::new();
    let r = read_msg(&mut s, &mut pending).expect("reply");
    let x = header(&r, "X-Conn").expect("X-Conn");
    let parts: Vec<&str> = x.split(' ').collect();
    assert_eq!(parts[0], "tcp", "{r}");
    assert!(parts[1].parse::<i64>().unwrap() > 0, "{r}");
    assert_eq!(parts[2], "1", "the connection is up: {r}");
    assert_eq!(parts[3], "-1", "an unknown id is not alive: {r}");
    let msg = options(local, "conid-2", "TCP").replace("OPTIONS", "MESSAGE");
    s.write_all(msg.as_bytes()).unwrap();
    let r = read_msg(&mut s, &mut pending).expect("reply before the close");
    assert_eq!(status(&r), 200, "{r}");
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let eof = s.read(&mut buf);
    assert!(matches!(eof, Ok(0)), "closed by the script: {eof:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // UDP: no connection
    let c = client();
    let r = exchange(
        &c,
        srv.addr,
        options(c.local_addr().unwrap(), "conid-3", "UDP").as_bytes(),
    )
    .unwrap();
    assert_eq!(header(&r, "X-Conn").as_deref(), Some("udp -1 -1 -1"), "{r}");
}

/// `[tcp] accept_aliases` (Kamailio `tcp_accept_aliases`): after a request
/// with `;alias` in its Via, a request to the Via's `ip:port` goes over the
/// client's connection (nothing listens on that port; no new connection).
#[test]
fn via_alias_makes_the_connection_reachable_at_the_advertised_port() {
    let script = r#"
function ksr_request_route()
    if KSR.is_OPTIONS() then
        KSR.sl.sl_send_reply(200, "OK")
        return KSR.x.exit()
    end
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_send_reply(503, "Unreachable")
    end
end
"#;
    let srv = Server::start(ServerOpts {
        cores: "2",
        script: Some(script),
        extra_toml: "[tcp]\nenable = true\naccept_aliases = true\n",
        ..Default::default()
    });
    let mut s = tcp_connect(srv.addr);
    let local = s.local_addr().unwrap();
    // an advertised port nobody listens on
    let adv = free_tcp_port();
    let ping = options(local, "alias-1", "TCP").replace(
        &format!("SIP/2.0/TCP {local};branch=z9hG4bK-alias-1"),
        &format!("SIP/2.0/TCP 127.0.0.1:{adv};branch=z9hG4bK-alias-1;alias"),
    );
    s.write_all(ping.as_bytes()).unwrap();
    let mut pending = Vec::new();
    let r = read_msg(&mut s, &mut pending).expect("reply");
    assert_eq!(status(&r), 200, "{r}");
    let c = client();
    let ul = c.local_addr().unwrap();
    let m = format!(
        "MESSAGE sip:frank@127.0.0.1:{adv};transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/UDP {ul};branch=z9hG4bK-alias-m;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:dave@127.0.0.1>;tag=am\r\n\
         To: <sip:frank@127.0.0.1>\r\n\
         Call-ID: alias-m\r\n\
         CSeq: 1 MESSAGE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    c.send_to(m.as_bytes(), srv.addr).unwrap();
    let got = read_msg(&mut s, &mut pending).expect("MESSAGE over the aliased connection");
    assert!(got.starts_with("MESSAGE sip:frank@127.0.0.1:"), "{got}");
    assert_eq!(stat(&srv, "tcp.connected"), 0, "no new connection");
}
