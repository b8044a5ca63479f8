//! KSR.ipops DNS functions on the real binary (tests/lua/ipops_dns.lua):
//! addresses from the system resolver (`localhost` from /etc/hosts), SRV and
//! NAPTR records from a small DNS server on 127.0.0.1 that this test runs,
//! and a lookup to a name server that never answers: the route gets -4 after
//! `dns_timeout_ms` while the shard keeps answering other requests.

mod common;

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const TIMEOUT_MS: u64 = 800;

fn script() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/lua/ipops_dns.lua"
    ))
    .unwrap()
}

fn final_reply(sock: &UdpSocket) -> Option<String> {
    loop {
        let r = recv(sock)?;
        if status(&r) >= 200 {
            return Some(r);
        }
    }
}

fn ask(srv: &Server, user: &str, extra: &str) -> String {
    let uac = client();
    uac.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = request(&uac, "OPTIONS", &format!("sip:{user}@{}", srv.addr), extra);
    uac.send_to(msg.as_bytes(), srv.addr).unwrap();
    final_reply(&uac).unwrap_or_else(|| panic!("no reply to {user}:\n{}", srv.log()))
}

fn h(msg: &str, name: &str) -> String {
    header(msg, name).unwrap_or_else(|| panic!("no {name} in:\n{msg}"))
}

fn stat(srv: &Server, name: &str) -> i64 {
    let v = rpc(srv.rpc_port, "stats.fetch", serde_json::json!([name]));
    v[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
}

/// A sipshard whose `[ipops]` resolver asks 127.0.0.1:`dns_port`.
fn server(dir: TempDir, dns_port: u16) -> Server {
    let conf = dir.path("resolv.conf");
    std::fs::write(&conf, "nameserver 127.0.0.1\n").unwrap();
    let extra = format!(
        "[ipops]\ndns_timeout_ms = {TIMEOUT_MS}\nresolv_conf = \"{}\"\ndns_port = {dns_port}\n",
        conf.display()
    );
    let script = script();
    Server::start_in(
        dir,
        ServerOpts {
            script: Some(&script),
            cores: "1",
            extra_toml: &extra,
            ..Default::default()
        },
    )
}

// ------------------------------------------------------- a tiny DNS server

const SRV: u16 = 33;
const NAPTR: u16 = 35;

fn name_wire(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn char_string(s: &str) -> Vec<u8> {
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// The answer records (type, rdata) for a question, None for NXDOMAIN,
/// or no reply at all for names under `hang.`.
fn records(qname: &str, qtype: u16) -> Option<Vec<(u16, Vec<u8>)>> {
    let srv = |prio: u16, weight: u16, port: u16, target: &str| {
        let mut r = Vec::new();
        for v in [prio, weight, port] {
            r.extend_from_slice(&v.to_be_bytes());
        }
        r.extend(name_wire(target));
        (SRV, r)
    };
    let naptr = |order: u16, pref: u16, flags: &str, services: &str, regex: &str, repl: &str| {
        let mut r = Vec::new();
        r.extend_from_slice(&order.to_be_bytes());
        r.extend_from_slice(&pref.to_be_bytes());
        r.extend(char_string(flags));
        r.extend(char_string(services));
        r.extend(char_string(regex));
        r.extend(name_wire(repl));
        (NAPTR, r)
    };
    match (qname, qtype) {
        ("_sip._udp.test.example", SRV) => Some(vec![
            srv(20, 5, 5070, "c.test.example"),
            srv(10, 10, 5060, "a.test.example"),
            srv(10, 60, 5062, "b.test.example"),
        ]),
        ("test.example", NAPTR) => Some(vec![
            naptr(100, 20, "s", "SIP+D2T", "", "_sip._tcp.test.example"),
            naptr(50, 10, "s", "SIP+D2U", "", "_sip._udp.test.example"),
        ]),
        ("test.example", _) => Some(Vec::new()),
        _ => None,
    }
}

/// Answers from [`records`] until dropped.
struct FakeDns {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeDns {
    fn start() -> FakeDns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        FakeDns {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let qname = labels.join(".");
    if qname.starts_with("hang.") {
        return None;
    }
    let recs = records(&qname, qtype);
    let mut out = Vec::new();
    out.extend_from_slice(&q[0..2]);
    out.extend_from_slice(if recs.is_some() {
        &[0x81, 0x80]
    } else {
        &[0x81, 0x83]
    });
    out.extend_from_slice(&1u16.to_be_bytes());
    let recs = recs.unwrap_or_default();
    out.extend_from_slice(&(recs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for (rtype, rdata) in recs {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend(rdata);
    }
    Some(out)
}

// ------------------------------------------------------------------ tests

#[test]
fn addresses_from_the_system_resolver() {
    let dns = FakeDns::start();
    let srv = server(TempDir::new("dns-addr"), dns.port);
    let r = ask(&srv, "addr", "X-Host: localhost\r\nX-Ip: 127.0.0.1\r\n");
    assert_eq!(status(&r), 200, "{r}\n{}", srv.log());
    assert_eq!(h(&r, "X-Rc"), "1", "{r}");
    let count: usize = h(&r, "X-Count").parse().unwrap();
    assert!(count >= 1, "{r}");
    let addrs = h(&r, "X-Addrs");
    assert_eq!(addrs.split(',').count(), count, "{r}");
    assert!(addrs.split(',').any(|a| a == "127.0.0.1/4"), "{r}");
    assert_eq!(h(&r, "X-V4"), "1");
    // ::1 exactly when the system resolver gives it.
    let sys_v6 = ("localhost", 0u16)
        .to_socket_addrs()
        .unwrap()
        .any(|a| a.ip() == IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    assert_eq!(addrs.split(',').any(|a| a == "::1/6"), sys_v6, "{r}");
    assert_eq!(h(&r, "X-V6"), if sys_v6 { "1" } else { "0" }, "{r}");
    assert_eq!(
        h(&r, "X-Last"),
        addrs.rsplit(',').next().unwrap().split('/').next().unwrap()
    );
    assert_eq!(h(&r, "X-Past"), "nil", "{r}");
    assert_eq!(h(&r, "X-Sys"), "1", "{r}");
    // dns_int_match_ip: the hickory resolver reads /etc/hosts first.
    assert_eq!(h(&r, "X-Int"), "1", "{r}");

    let r = ask(&srv, "addr", "X-Host: localhost\r\nX-Ip: 192.0.2.1\r\n");
    assert_eq!(h(&r, "X-Sys"), "-1", "{r}");
    assert_eq!(h(&r, "X-Int"), "-1", "{r}");
    let r = ask(&srv, "addr", "X-Host: localhost\r\nX-Ip: not-an-ip\r\n");
    assert_eq!(h(&r, "X-Sys"), "-3", "{r}");
    assert_eq!(h(&r, "X-Int"), "-3", "{r}");
    let r = ask(&srv, "addr", "X-Host: 127.0.0.1\r\nX-Ip: 127.0.0.1\r\n");
    assert_eq!(h(&r, "X-Rc"), "1", "an IP resolves to itself: {r}");
    assert_eq!(h(&r, "X-Addrs"), "127.0.0.1/4", "{r}");
    // dns_int_match_ip asks the name server for names not in /etc/hosts:
    // a name without addresses is a failed lookup (-4), as in Kamailio.
    // The system resolver cannot resolve it either (no DNS here): -4, the
    // container emptied.
    let r = ask(&srv, "addr", "X-Host: test.example\r\nX-Ip: 127.0.0.1\r\n");
    assert_eq!(h(&r, "X-Rc"), "-4", "{r}");
    assert_eq!(h(&r, "X-Count"), "0", "{r}");
    assert_eq!(h(&r, "X-Sys"), "-4", "{r}");
    assert_eq!(h(&r, "X-Int"), "-4", "{r}");
    // A host name over 255 bytes: -2, the container left as it was.
    let r = ask(&srv, "addr", "X-Host: localhost\r\n");
    assert_eq!(h(&r, "X-Rc"), "1", "{r}");
    let long = "a".repeat(256);
    let r = ask(&srv, "addr", &format!("X-Host: {long}\r\n"));
    assert_eq!(h(&r, "X-Rc"), "-2", "{r}");
    assert_eq!(h(&r, "X-Count"), count.to_string(), "{r}");
    // ptr_query: the system resolver's name for 127.0.0.1, when it has one.
    let want = dns_lookup::getnameinfo(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        libc::NI_NAMEREQD,
    )
    .ok()
    .map(|(n, _)| n);
    let r = ask(&srv, "ptr", "X-Ip: 127.0.0.1\r\n");
    match &want {
        Some(name) => {
            assert_eq!(h(&r, "X-Rc"), "1", "{r}");
            assert_eq!(h(&r, "X-count"), "1", "{r}");
            assert_eq!(&h(&r, "X-hostname"), name, "{r}");
        }
        None => assert_eq!(h(&r, "X-Rc"), "-6", "{r}"),
    }
    assert_eq!(h(&r, "X-addr"), "127.0.0.1", "{r}");
    assert_eq!(h(&r, "X-type"), "4", "{r}");
    assert_eq!(h(&r, "X-ipv4"), "1", "{r}");
    assert_eq!(h(&r, "X-ipv6"), "0", "{r}");
    let r = ask(&srv, "ptr", "X-Ip: localhost\r\n");
    assert_eq!(h(&r, "X-Rc"), "-4", "not an IP: {r}");
    assert_eq!(h(&r, "X-count"), "nil", "{r}");
    let r = ask(&srv, "ttl", "");
    assert_eq!(h(&r, "X-Rc"), "1", "{r}");
    assert!(stat(&srv, "ipops.dns_lookups") >= 11);
}

#[test]
fn srv_and_naptr_records() {
    let dns = FakeDns::start();
    let srv = server(TempDir::new("dns-srv"), dns.port);
    let r = ask(&srv, "srv", "X-Name: _sip._udp.test.example\r\n");
    assert_eq!(h(&r, "X-Rc"), "1", "{r}\n{}", srv.log());
    assert_eq!(h(&r, "X-Count"), "3");
    assert_eq!(
        h(&r, "X-Records"),
        "10/60/5062/b.test.example,10/10/5060/a.test.example,20/5/5070/c.test.example"
    );
    let r = ask(&srv, "naptr", "X-Name: test.example\r\n");
    assert_eq!(h(&r, "X-Rc"), "1", "{r}");
    assert_eq!(h(&r, "X-Count"), "2");
    assert_eq!(
        h(&r, "X-Records"),
        "50/10/s/SIP+D2U//_sip._udp.test.example,100/20/s/SIP+D2T//_sip._tcp.test.example"
    );
    // A name without records: success with count 0, as Kamailio.
    let r = ask(&srv, "srv", "X-Name: _sip._udp.nowhere.example\r\n");
    assert_eq!(h(&r, "X-Rc"), "1", "{r}");
    assert_eq!(h(&r, "X-Count"), "0");
    let r = ask(&srv, "naptr", "X-Name: nowhere.example\r\n");
    assert_eq!(h(&r, "X-Rc"), "1", "{r}");
    assert_eq!(h(&r, "X-Count"), "0");
    let r = ask(&srv, "srv", "X-Name: \r\n");
    assert_eq!(h(&r, "X-Rc"), "-2", "{r}");
    // A name the server never answers: -4 after the timeout, count 0.
    let r = ask(&srv, "naptr", "X-Name: hang.test.example\r\n");
    assert_eq!(h(&r, "X-Rc"), "-4", "{r}");
    assert_eq!(h(&r, "X-Count"), "0");
    assert!(stat(&srv, "ipops.dns_timeouts") >= 1);
}

#[test]
fn unanswered_lookup_does_not_stop_the_shard() {
    // A name server that takes every query and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let srv = server(TempDir::new("dns-dead"), port);
    for (user, name) in [("srv", "_sip._udp.example.com"), ("naptr", "example.com")] {
        let uac = client();
        uac.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = request(
            &uac,
            "OPTIONS",
            &format!("sip:{user}@{}", srv.addr),
            &format!("X-Name: {name}\r\n"),
        );
        let t0 = Instant::now();
        uac.send_to(msg.as_bytes(), srv.addr).unwrap();
        // The lookup has reached the silent server: the route is waiting.
        let mut buf = [0u8; 1500];
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        silent
            .recv_from(&mut buf)
            .expect("the query reaches the name server");
        // The only shard answers another request meanwhile.
        let ping = client();
        let pong = exchange(
            &ping,
            srv.addr,
            request(&ping, "OPTIONS", &format!("sip:ping@{}", srv.addr), "").as_bytes(),
        )
        .expect("OPTIONS answered while a route waits for DNS");
        assert_eq!(status(&pong), 200, "{pong}");
        assert!(header(&pong, "X-Rc").is_none(), "{pong}");
        assert!(
            t0.elapsed() < Duration::from_millis(TIMEOUT_MS),
            "the ping waited for the lookup"
        );
        let r = final_reply(&uac).unwrap_or_else(|| panic!("no reply:\n{}", srv.log()));
        let waited = t0.elapsed();
        assert_eq!(h(&r, "X-Rc"), "-4", "{r}");
        assert_eq!(h(&r, "X-Count"), "0", "{r}");
        assert!(waited >= Duration::from_millis(TIMEOUT_MS), "{waited:?}");
    }
    assert_eq!(stat(&srv, "ipops.dns_timeouts"), 2);
    drop(silent);
}
