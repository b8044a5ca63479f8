//! SIP core micro-benchmarks: framing, registrar-style typed access, reply
//! building and proxy-style edits.
//!
//! `cargo bench --bench parse` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick run). Throughput is reported over the input message size.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sipshard::sip::{
    build_reply, parse, Contact, Edits, Framing, HdrName, Limits, Parsed, ReplyOpts, SipMsg, Status,
};

#[path = "samples.rs"]
mod samples;
use samples::REGISTER;

/// An INVITE with an SDP offer (~900 bytes).
const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.101:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, REFER, NOTIFY\r\n\
Supported: replaces, timer, 100rel\r\n\
User-Agent: sipshard-bench/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 311\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0 8 9 18 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

const WWW_AUTH: &[u8] = b"WWW-Authenticate: Digest realm=\"registrar.example.com\", nonce=\"Y2FmZWJhYmUxMjM0NTY3OA\", qop=\"auth\", algorithm=MD5\r\n";

fn parse_ok(buf: &[u8], p: &mut Parsed) {
    match parse(buf, Framing::Datagram, &Limits::default(), p) {
        Ok(Status::Complete(_)) => {}
        other => panic!("bench message does not parse: {other:?}"),
    }
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse");
    for (name, msg) in [("register", REGISTER), ("invite_sdp", INVITE)] {
        let mut p = Parsed::default();
        parse_ok(msg, &mut p);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = parse(black_box(msg), Framing::Datagram, &limits, &mut p);
                black_box(r.ok());
            })
        });
    }
    g.finish();
}

/// What a registrar touches per REGISTER: framing, sanity checks, the
/// Call-ID / CSeq / tags / AoR, every Contact with its expires and q, the
/// Expires header and the credentials header.
fn bench_registrar(c: &mut Criterion) {
    let limits = Limits::default();
    let mut p = Parsed::default();
    parse_ok(REGISTER, &mut p);
    let mut g = c.benchmark_group("registrar");
    g.throughput(Throughput::Bytes(REGISTER.len() as u64));
    g.bench_function("parse_typed_register", |b| {
        b.iter(|| {
            let buf = black_box(REGISTER);
            if parse(buf, Framing::Datagram, &limits, &mut p).is_err() {
                return;
            }
            let m = SipMsg::new(buf, &p);
            let mut acc = 0u64;
            acc += u64::from(m.check_request().is_ok());
            let via = m.top_via().ok();
            acc += via.and_then(|v| v.branch()).map_or(0, |b| b.len() as u64);
            acc += u64::from(via.and_then(|v| v.rport()).is_some());
            acc += m.call_id().map_or(0, |c| c.len() as u64);
            acc += m.cseq().map_or(0, |c| u64::from(c.num));
            acc += m
                .from()
                .ok()
                .and_then(|f| f.tag())
                .map_or(0, |t| t.len() as u64);
            let to = m.to().ok();
            acc += to.and_then(|t| t.uri_parsed().ok()).map_or(0, |u| {
                u.host.len() as u64 + u.user.map_or(0, |u| u.len() as u64)
            });
            for ct in m.contacts().flatten() {
                acc += u64::from(ct.expires().unwrap_or(0)) + u64::from(ct.q().unwrap_or(1000));
                if let Contact::Addr(na) = ct {
                    acc += na.uri_parsed().map_or(0, |u| u.host.len() as u64);
                }
            }
            acc += u64::from(m.expires().ok().flatten().unwrap_or(0));
            acc += m
                .header(HdrName::Authorization)
                .map_or(0, |a| a.len() as u64);
            acc += m.user_agent().map_or(0, |u| u.len() as u64);
            black_box(acc);
        })
    });
    g.finish();
}

fn bench_reply(c: &mut Criterion) {
    let mut p = Parsed::default();
    parse_ok(REGISTER, &mut p);
    let m = SipMsg::new(REGISTER, &p);
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("reply");

    let contact = b"Contact: <sip:alice@192.0.2.44:5060;rinstance=6f8d2a1b3c4e5f60;transport=UDP>;expires=3600\r\n";
    let ok = ReplyOpts {
        force_rport: false,
        to_tag: Some(b"ss1c4d2e3f4a5b6c7d"),
        src_ip: Some(b"198.51.100.20"),
        src_port: Some(50123),
        extra_headers: contact,
        body: b"",
        server: Some(b"sipshard"),
    };
    build_reply(&m, 200, b"OK", &ok, &mut out);
    g.throughput(Throughput::Bytes(out.len() as u64));
    g.bench_function("register_200", |b| {
        b.iter(|| {
            build_reply(black_box(&m), 200, b"OK", &ok, &mut out);
            black_box(out.len());
        })
    });

    let unauth = ReplyOpts {
        force_rport: false,
        extra_headers: WWW_AUTH,
        ..ok
    };
    build_reply(&m, 401, b"Unauthorized", &unauth, &mut out);
    g.throughput(Throughput::Bytes(out.len() as u64));
    g.bench_function("register_401_www_authenticate", |b| {
        b.iter(|| {
            build_reply(black_box(&m), 401, b"Unauthorized", &unauth, &mut out);
            black_box(out.len());
        })
    });
    g.finish();
}

/// Stateless proxy forwarding of the INVITE: new R-URI, received/rport on
/// the top Via, our own Via on top, Max-Forwards decremented, a Record-Route.
fn bench_edits(c: &mut Criterion) {
    let mut p = Parsed::default();
    parse_ok(INVITE, &mut p);
    let mf = p.first(HdrName::MaxForwards).unwrap_or(0);
    let mut e = Edits::default();
    let mut out = Vec::with_capacity(2048);
    let mut g = c.benchmark_group("edits");
    g.throughput(Throughput::Bytes(INVITE.len() as u64));
    g.bench_function("forward_invite", |b| {
        b.iter(|| {
            e.clear();
            e.set_ruri(b"sip:bob@192.0.2.4:5062;transport=udp");
            e.set_top_via_received(Some(b"198.51.100.20"), Some(50123));
            e.prepend_via(b"SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKsipshard0a1b2c3d");
            e.replace_header_value(mf, b"69");
            e.insert_header_first(b"Record-Route: <sip:203.0.113.1;lr>");
            e.assemble(black_box(INVITE), &p, &mut out);
            black_box(out.len());
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_registrar,
    bench_reply,
    bench_edits
);
criterion_main!(benches);
