//! Sample messages and helpers shared by the in-file tests.

use super::{parse, Framing, Limits, ParseError, Parsed, SipMsg, Status};

pub(crate) const REGISTER: &[u8] = b"REGISTER sips:ss2.biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS client.biloxi.example.com:5061;branch=z9hG4bKnashd92;rport\r\n\
Max-Forwards: 70\r\n\
From: Bob <sips:bob@biloxi.example.com>;tag=ja743ks76zlflH\r\n\
To: Bob <sips:bob@biloxi.example.com>\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@biloxi.example.com\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sips:bob@client.biloxi.example.com>;expires=3600;q=0.7\r\n\
Authorization: Digest username=\"bob\", realm=\"atlanta.example.com\", nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", opaque=\"\", uri=\"sips:ss2.biloxi.example.com\", response=\"dfe56131d1958046689d83306477ecc\"\r\n\
User-Agent: sipshard-test/1.0\r\n\
Content-Length: 0\r\n\
\r\n";

pub(crate) const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 149\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

pub(crate) const OK200: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP server10.biloxi.example.com;branch=z9hG4bKnashds8;received=192.0.2.3\r\n\
Via: SIP/2.0/UDP bigbox3.site3.atlanta.example.com;branch=z9hG4bK77ef4c2312983.1;received=192.0.2.2\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Content-Length: 0\r\n\
\r\n";

/// Parses a datagram with default limits, panicking with context on failure.
pub(crate) fn parse_ok(buf: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    match parse(buf, Framing::Datagram, &Limits::default(), &mut p) {
        Ok(Status::Complete(_)) => p,
        other => panic!("parse failed: {other:?}\n{}", String::from_utf8_lossy(buf)),
    }
}

pub(crate) fn parse_err(buf: &[u8], framing: Framing) -> Result<Status<usize>, ParseError> {
    let mut p = Parsed::default();
    parse(buf, framing, &Limits::default(), &mut p)
}

pub(crate) fn s(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("<non-utf8>")
}

/// Tiny deterministic PRNG (xorshift64*) for the randomized tests.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub(crate) fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub(crate) fn pick<'t, T>(&mut self, xs: &'t [T]) -> &'t T {
        &xs[self.below(xs.len())]
    }
}

/// Runs every accessor on whatever parses, as the fuzz targets do: must never panic.
pub(crate) fn exercise(buf: &[u8], framing: Framing) {
    use super::{build_reply, Edits, HdrName, ReplyOpts};
    let mut p = Parsed::default();
    let limits = Limits {
        max_headers: 64,
        max_msg_len: 8192,
    };
    let Ok(Status::Complete(n)) = parse(buf, framing, &limits, &mut p) else {
        return;
    };
    assert!(n <= buf.len());
    assert!(p.body.end as usize <= buf.len() && p.body.start <= p.body.end);
    let m = SipMsg::new(buf, &p);
    let _ = (
        m.method(),
        m.method_bytes(),
        m.ruri(),
        m.status(),
        m.reason(),
        m.call_id(),
        m.user_agent(),
        m.body(),
    );
    let _ = (
        m.cseq(),
        m.top_via(),
        m.from(),
        m.to(),
        m.max_forwards(),
        m.expires(),
        m.content_length(),
    );
    let _ = m.header_by_name(b"X-Foo");
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.received(), v.rport(), v.params.iter().count());
    }
    for c in m.contacts().flatten() {
        let _ = (c.expires(), c.q());
        if let super::Contact::Addr(na) = c {
            let _ = (na.uri_parsed(), na.tag());
        }
    }
    for name in [HdrName::Route, HdrName::RecordRoute, HdrName::Path] {
        for na in m.name_addrs(name).flatten() {
            let _ = na.uri_parsed();
        }
    }
    let _ = m.from().map(|f| f.uri_parsed());
    let _ = m.ruri_parsed();
    let ok = if m.is_request() {
        m.check_request()
    } else {
        m.check_response()
    };
    let mut out = Vec::new();
    if m.is_request() {
        let opts = ReplyOpts {
            force_rport: false,
            to_tag: Some(b"tt"),
            src_ip: Some(b"198.51.100.7"),
            src_port: Some(5062),
            extra_headers: b"X-A: 1\r\n",
            body: b"",
            server: Some(b"s"),
        };
        build_reply(&m, 200, b"OK", &opts, &mut out);
        if ok.is_ok() {
            let rp = parse_ok(&out);
            assert_eq!(
                SipMsg::new(&out, &rp).check_response(),
                Ok(()),
                "{}",
                s(&out)
            );
        }
    }
    let mut e = Edits::default();
    e.set_ruri(b"sip:x@y");
    e.prepend_via(b"SIP/2.0/UDP proxy;branch=z9hG4bKp");
    e.set_top_via_received(Some(b"10.0.0.1"), Some(1));
    e.remove_header(1);
    e.replace_header_value(2, b"v");
    e.append_header(b"X-B: 2");
    e.insert_header_first(b"X-C: 3");
    e.set_body(b"xyz");
    e.assemble(buf, &p, &mut out);
    e.clear();
    e.remove_top_via();
    e.remove_headers(&p, buf, HdrName::Other, b"x-foo");
    e.assemble(buf, &p, &mut out);
}
