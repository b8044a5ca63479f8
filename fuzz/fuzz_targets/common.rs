//! Shared driver: parse `data` and run every typed accessor on whatever
//! frames. Any panic is a bug (the SIP core must never panic on input).

use sipshard::sip::{
    build_reply, parse, Contact, Edits, Framing, HdrName, Limits, Parsed, ReplyOpts, SipMsg, Status,
};

/// Every accessor of a parsed message; returns whether the sanity check passed.
pub fn exercise(buf: &[u8], p: &Parsed) -> bool {
    let m = SipMsg::new(buf, p);
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
        m.max_forwards(),
        m.expires(),
        m.content_length(),
        m.ruri_parsed(),
    );
    let _ = m.header_by_name(b"X-Fuzz");
    let _ = m.headers(HdrName::Supported).count();
    if let Ok(v) = m.top_via() {
        let _ = (v.branch(), v.received(), v.rport());
    }
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.received(), v.rport(), v.params.iter().count());
    }
    for na in [m.from(), m.to()].into_iter().flatten() {
        let _ = (na.tag(), na.uri_parsed().map(|u| u.params.iter().count()));
    }
    for c in m.contacts().flatten() {
        let _ = (c.expires(), c.q());
        if let Contact::Addr(na) = c {
            let _ = na.uri_parsed();
        }
    }
    for name in [HdrName::Route, HdrName::RecordRoute, HdrName::Path] {
        for na in m.name_addrs(name).flatten() {
            let _ = na.uri_parsed();
        }
    }
    let ok = if m.is_request() {
        m.check_request()
    } else {
        m.check_response()
    };
    ok.is_ok()
}

/// Span edits on anything that frames; the output of a sane message must
/// frame again.
pub fn edit(buf: &[u8], p: &Parsed, sane: bool) {
    let mut e = Edits::default();
    let mut out = Vec::new();
    e.set_ruri(b"sip:fuzz@example.com");
    e.prepend_via(b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKfuzz");
    e.set_top_via_received(Some(b"198.51.100.1"), Some(5060));
    e.remove_header(p.headers.len() / 2);
    e.replace_header_value(0, b"x");
    e.append_header(b"X-Fuzz: 1");
    e.insert_header_first(b"X-First: 1");
    e.assemble(buf, p, &mut out);
    e.clear();
    e.remove_top_via();
    e.remove_headers(p, buf, HdrName::Other, b"x-fuzz");
    e.set_body(b"body");
    e.assemble(buf, p, &mut out);
    if sane {
        let mut q = Parsed::default();
        let r = parse(&out, Framing::Datagram, &Limits::default(), &mut q);
        assert!(
            matches!(r, Ok(Status::Complete(_))),
            "edited sane message does not frame: {r:?}"
        );
    }
}

pub fn run(data: &[u8], want_request: bool) {
    let limits = Limits {
        max_headers: 64,
        max_msg_len: 16 * 1024,
    };
    let mut p = Parsed::default();
    for framing in [Framing::Datagram, Framing::Stream] {
        let Ok(Status::Complete(n)) = parse(data, framing, &limits, &mut p) else {
            continue;
        };
        assert!(n <= data.len());
        let m = SipMsg::new(data, &p);
        if m.is_request() != want_request {
            continue;
        }
        let sane = exercise(data, &p);
        edit(data, &p, sane);
        if m.is_request() {
            let mut out = Vec::new();
            let opts = ReplyOpts {
                force_rport: false,
                to_tag: Some(b"fuzztag"),
                src_ip: Some(b"203.0.113.7"),
                src_port: Some(40000),
                extra_headers: b"WWW-Authenticate: Digest realm=\"x\", nonce=\"y\"\r\n",
                body: b"",
                server: Some(b"sipshard-fuzz"),
            };
            build_reply(&m, 401, b"Unauthorized", &opts, &mut out);
            // A reply to a sane request must itself frame and be a sane response.
            if sane {
                let mut q = Parsed::default();
                let r = parse(&out, Framing::Stream, &Limits::default(), &mut q);
                assert!(
                    matches!(r, Ok(Status::Complete(_))),
                    "reply does not frame: {r:?}"
                );
                assert_eq!(SipMsg::new(&out, &q).check_response(), Ok(()));
            }
        }
    }
}
