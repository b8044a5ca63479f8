//! RFC 3261 §8.2.6 stateless reply builder.

use super::lex::{self, SplitRanges};
use super::write::{via_plan, write_via_planned};
use super::{HdrName, NameAddr, SipMsg};

/// What the caller adds to a reply beyond the copied headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplyOpts<'b> {
    /// To-tag to add when the request's To has none (ignored for 100).
    pub to_tag: Option<&'b [u8]>,
    /// RFC 3581: source address of the request, written to the top Via as
    /// `received=` (when it differs from the sent-by host) and `rport=` (when
    /// the Via asked for rport).
    pub src_ip: Option<&'b [u8]>,
    pub src_port: Option<u16>,
    /// Extra complete header lines, each ending in CRLF.
    pub extra_headers: &'b [u8],
    pub body: &'b [u8],
    /// Value for a `Server:` header, if any.
    pub server: Option<&'b [u8]>,
    /// Write `rport=src_port` even when the Via did not ask for it
    /// (Kamailio's `force_rport()`).
    pub force_rport: bool,
}

/// The RFC 3261 §21 (and common extension) reason phrase for `code`, or a
/// class default.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        429 => "Provide Referrer Identity",
        430 => "Flow Failed",
        439 => "First Hop Lacks Outbound Support",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Trying",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// Host comparison for `received`: case-insensitive, IPv6 brackets ignored.
fn same_host(via_host: &[u8], ip: &[u8]) -> bool {
    fn strip(h: &[u8]) -> &[u8] {
        match h {
            [b'[', inner @ .., b']'] => inner,
            _ => h,
        }
    }
    strip(via_host).eq_ignore_ascii_case(strip(ip))
}

/// Copies `v` replacing CR / LF (header injection) with spaces.
fn push_line_safe(out: &mut Vec<u8>, v: &[u8]) {
    if lex::find_any(v, 0, [b'\r', b'\n']) >= v.len() {
        out.extend_from_slice(v);
        return;
    }
    out.extend(
        v.iter()
            .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
    );
}

fn push_header(out: &mut Vec<u8>, name: HdrName, value: &[u8]) {
    out.extend_from_slice(name.canonical().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Builds a reply to `req` into `out` (cleared first): status line, all Via
/// headers in order, From, To (+tag), Call-ID, CSeq, extra headers,
/// Content-Length, body.
///
/// `code` is clamped to 100..=699; an empty `reason` uses [`reason_phrase`].
/// The top Via gets `received=src_ip` when `src_ip` differs from its sent-by
/// host (or it already carried a `received`), and `rport=src_port` when it
/// carried an `rport` parameter. Headers missing from `req` are skipped, so
/// this never fails; run `check_request` first to reject such requests.
pub fn build_reply(
    req: &SipMsg<'_>,
    code: u16,
    reason: &[u8],
    opts: &ReplyOpts<'_>,
    out: &mut Vec<u8>,
) {
    out.clear();
    let code = code.clamp(100, 699);
    out.extend_from_slice(b"SIP/2.0 ");
    lex::push_u32(out, u32::from(code));
    out.push(b' ');
    if reason.is_empty() {
        out.extend_from_slice(reason_phrase(code).as_bytes());
    } else {
        push_line_safe(out, reason);
    }
    out.extend_from_slice(b"\r\n");

    let buf = req.buf;
    let mut first = true;
    // One pass: Vias are written as met; the first From / To / Call-ID / CSeq
    // are remembered for afterwards.
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for h in &req.parsed.headers {
        let slot = match h.name {
            HdrName::Via => None,
            HdrName::From => Some(&mut from),
            HdrName::To => Some(&mut to),
            HdrName::CallId => Some(&mut call_id),
            HdrName::CSeq => Some(&mut cseq),
            _ => continue,
        };
        let val = h.value.get(buf);
        if let Some(slot) = slot {
            if slot.is_none() {
                *slot = Some(val);
            }
            continue;
        }
        if !first {
            push_header(out, HdrName::Via, val);
            continue;
        }
        first = false;
        let top = SplitRanges::new(val).next().unwrap_or((0, 0));
        let item = lex::sub(val, top);
        out.extend_from_slice(b"Via: ");
        match via_plan(item) {
            Some(plan) => {
                let received = opts
                    .src_ip
                    .filter(|ip| plan.received_at.is_some() || !same_host(plan.via.host, ip));
                let rport = if opts.force_rport {
                    opts.src_port
                } else {
                    plan.rport_at.and(opts.src_port)
                };
                if received.is_none() && rport.is_none() {
                    out.extend_from_slice(val);
                } else {
                    out.extend_from_slice(val.get(..top.0).unwrap_or(&[]));
                    write_via_planned(out, item, &plan, received, rport);
                    out.extend_from_slice(val.get(top.1..).unwrap_or(&[]));
                }
            }
            None => out.extend_from_slice(val),
        }
        out.extend_from_slice(b"\r\n");
    }

    if let Some(v) = from {
        push_header(out, HdrName::From, v);
    }
    if let Some(v) = to {
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(v);
        let has_tag = NameAddr::parse(v)
            .map(|t| t.tag().is_some())
            .unwrap_or(true);
        if let (Some(tag), false, true) = (opts.to_tag, has_tag, code != 100) {
            out.extend_from_slice(b";tag=");
            push_line_safe(out, tag);
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = call_id {
        push_header(out, HdrName::CallId, v);
    }
    if let Some(v) = cseq {
        push_header(out, HdrName::CSeq, v);
    }
    if !opts.extra_headers.is_empty() {
        out.extend_from_slice(opts.extra_headers);
        if !opts.extra_headers.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(server) = opts.server {
        out.extend_from_slice(b"Server: ");
        push_line_safe(out, server);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    lex::push_u32(out, opts.body.len() as u32);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(opts.body);
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{parse_ok, s, INVITE, REGISTER};
    use super::super::{parse, Framing, Limits, Parsed, Status};
    use super::*;

    fn reply(req: &[u8], code: u16, reason: &[u8], opts: &ReplyOpts<'_>) -> Vec<u8> {
        let p = parse_ok(req);
        let mut out = vec![0xAA; 3];
        build_reply(&SipMsg::new(req, &p), code, reason, opts, &mut out);
        out
    }

    /// Builds, re-parses as a stream (Content-Length must be right) and hands
    /// the reply to `check`.
    fn reply_check(
        req: &[u8],
        code: u16,
        reason: &[u8],
        opts: &ReplyOpts<'_>,
        check: impl FnOnce(SipMsg<'_>),
    ) {
        let out = reply(req, code, reason, opts);
        let mut p = Parsed::default();
        assert_eq!(
            parse(&out, Framing::Stream, &Limits::default(), &mut p),
            Ok(Status::Complete(out.len())),
            "{}",
            s(&out)
        );
        let m = SipMsg::new(&out, &p);
        assert_eq!(m.check_response(), Ok(()), "{}", s(&out));
        check(m);
    }

    #[test]
    fn ok_to_register() {
        let opts = ReplyOpts {
            force_rport: false,
            to_tag: Some(b"srv1"),
            src_ip: Some(b"198.51.100.7"),
            src_port: Some(49152),
            extra_headers: b"Contact: <sips:bob@client.biloxi.example.com>;expires=3600\r\nDate: Sat, 13 Nov 2010 23:29:00 GMT\r\n",
            body: b"",
            server: Some(b"sipshard"),
        };
        let out = reply(REGISTER, 200, b"OK", &opts);
        assert_eq!(s(&out), "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TLS client.biloxi.example.com:5061;branch=z9hG4bKnashd92;rport=49152;received=198.51.100.7\r\n\
From: Bob <sips:bob@biloxi.example.com>;tag=ja743ks76zlflH\r\n\
To: Bob <sips:bob@biloxi.example.com>;tag=srv1\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@biloxi.example.com\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sips:bob@client.biloxi.example.com>;expires=3600\r\n\
Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n\
Server: sipshard\r\n\
Content-Length: 0\r\n\r\n");
        reply_check(REGISTER, 200, b"OK", &opts, |m| {
            assert_eq!(m.status(), Some(200));
            assert_eq!(m.to().unwrap().tag(), Some(&b"srv1"[..]));
            assert_eq!(m.contacts().next().unwrap().unwrap().expires(), Some(3600));
            assert_eq!(m.header(HdrName::Server), Some(&b"sipshard"[..]));
        });
    }

    #[test]
    fn unauthorized_with_challenge_and_body() {
        let opts = ReplyOpts {
            force_rport: false,
            to_tag: Some(b"t401"),
            extra_headers: b"WWW-Authenticate: Digest realm=\"atlanta.example.com\", qop=\"auth\", nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", opaque=\"\", stale=FALSE, algorithm=MD5",
            body: b"denied",
            ..Default::default()
        };
        reply_check(REGISTER, 401, b"", &opts, |m| {
            assert_eq!(
                (m.status(), m.reason()),
                (Some(401), Some(&b"Unauthorized"[..]))
            );
            assert!(m
                .header(HdrName::WwwAuthenticate)
                .unwrap()
                .starts_with(b"Digest realm="));
            assert_eq!(m.body(), b"denied");
            assert_eq!(m.content_length(), Ok(Some(6)));
            // No src given: the Via is copied verbatim.
            assert_eq!(
                m.top_via().unwrap().raw,
                b"SIP/2.0/TLS client.biloxi.example.com:5061;branch=z9hG4bKnashd92;rport"
            );
        });
    }

    #[test]
    fn via_received_rules() {
        // (top via, src_ip, src_port, expected top via in the reply)
        let table: &[(&str, &[u8], u16, &str)] = &[
            // Same host, no rport: untouched.
            (
                "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
                b"192.0.2.1",
                5060,
                "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
            ),
            // Different host: received added.
            (
                "SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1",
                b"192.0.2.1",
                5060,
                "SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1;received=192.0.2.1",
            ),
            // rport flag, same host: rport filled only.
            (
                "SIP/2.0/UDP 192.0.2.1;rport;branch=z9hG4bK1",
                b"192.0.2.1",
                6000,
                "SIP/2.0/UDP 192.0.2.1;rport=6000;branch=z9hG4bK1",
            ),
            // rport flag behind NAT: both.
            (
                "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport",
                b"203.0.113.9",
                40001,
                "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport=40001;received=203.0.113.9",
            ),
            // IPv6: brackets ignored when comparing.
            (
                "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1",
                b"[2001:db8::1]",
                5060,
                "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1",
            ),
            (
                "SIP/2.0/UDP [2001:DB8::1];branch=z9hG4bK1",
                b"2001:db8::1",
                5060,
                "SIP/2.0/UDP [2001:DB8::1];branch=z9hG4bK1",
            ),
            // An existing received is replaced.
            (
                "SIP/2.0/UDP h;received=1.2.3.4;branch=z9hG4bK1",
                b"5.6.7.8",
                1,
                "SIP/2.0/UDP h;received=5.6.7.8;branch=z9hG4bK1",
            ),
        ];
        for &(via, ip, port, want) in table {
            let req = format!("OPTIONS sip:a@b SIP/2.0\r\nVia: {via}, SIP/2.0/UDP second\r\nv: SIP/2.0/TCP third;branch=z9hG4bK3\r\nFrom: <sip:a@b>;tag=f\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
            let opts = ReplyOpts {
                force_rport: false,
                src_ip: Some(ip),
                src_port: Some(port),
                ..Default::default()
            };
            reply_check(req.as_bytes(), 200, b"OK", &opts, |m| {
                let vias: Vec<_> = m.vias().collect::<Result<_, _>>().unwrap();
                assert_eq!(s(vias[0].raw), want, "{via}");
                assert_eq!(
                    (vias[1].host, vias[2].host, vias[2].transport),
                    (&b"second"[..], &b"third"[..], &b"TCP"[..])
                );
                // Via lines keep their grouping; names become canonical.
                assert_eq!(m.headers(HdrName::Via).count(), 2);
                assert!(
                    m.parsed.headers.iter().all(|h| h.name_span.len() > 1),
                    "{}",
                    s(m.buf)
                );
            });
        }
    }

    #[test]
    fn to_tag_rules() {
        let opts = ReplyOpts {
            force_rport: false,
            to_tag: Some(b"new"),
            ..Default::default()
        };
        // 100 Trying never gets a tag.
        reply_check(INVITE, 100, b"Trying", &opts, |m| {
            assert_eq!(m.to().unwrap().tag(), None)
        });
        reply_check(INVITE, 180, b"Ringing", &opts, |m| {
            assert_eq!(m.to().unwrap().tag(), Some(&b"new"[..]))
        });
        // An existing tag is kept.
        let tagged = b"BYE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h\r\nf: <sip:a@b>;tag=1\r\nt: sip:c@d;tag=old\r\ni: c\r\nCSeq: 2 BYE\r\n\r\n";
        reply_check(tagged, 200, b"OK", &opts, |m| {
            assert_eq!(m.to().unwrap().tag(), Some(&b"old"[..]));
            // Compact request headers come back in long form.
            let names: Vec<_> = m
                .parsed
                .headers
                .iter()
                .map(|h| s(h.name_span.get(m.buf)).to_string())
                .collect();
            assert_eq!(
                names,
                ["Via", "From", "To", "Call-ID", "CSeq", "Content-Length"]
            );
        });
        // Bare addr-spec To: the tag becomes a header parameter.
        let bare = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: sip:a@b;tag=1\r\nTo: sip:c@d\r\nCall-ID: c\r\nCSeq: 2 OPTIONS\r\n\r\n";
        reply_check(bare, 404, b"Not Found", &opts, |m| {
            let to = m.to().unwrap();
            assert_eq!((to.uri, to.tag()), (&b"sip:c@d"[..], Some(&b"new"[..])));
        });
        // No tag supplied: none invented.
        reply_check(INVITE, 486, b"Busy Here", &ReplyOpts::default(), |m| {
            assert_eq!(m.to().unwrap().tag(), None)
        });
    }

    #[test]
    fn odd_inputs_stay_well_formed() {
        // CR/LF in caller-supplied reason and server cannot inject headers;
        // the code is clamped; extra headers without CRLF get one.
        let opts = ReplyOpts {
            force_rport: false,
            server: Some(b"x\r\nEvil: 1"),
            extra_headers: b"X-A: 1",
            ..Default::default()
        };
        let out = reply(INVITE, 1000, b"Bad\r\nEvil: 1", &opts);
        let p = parse_ok(&out);
        let m = SipMsg::new(&out, &p);
        assert_eq!(m.status(), Some(699));
        assert_eq!(m.header_by_name(b"Evil"), None);
        assert_eq!(m.header_by_name(b"X-A"), Some(&b"1"[..]));
        // A request missing headers still yields a parseable reply.
        let bare = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n";
        let out = reply(bare, 500, b"", &ReplyOpts::default());
        assert_eq!(
            s(&out),
            "SIP/2.0 500 Server Internal Error\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = parse_ok(&out);
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(401), "Unauthorized");
        assert_eq!(reason_phrase(423), "Interval Too Brief");
        assert_eq!(reason_phrase(299), "OK");
        assert_eq!(reason_phrase(499), "Client Error");
        assert_eq!(reason_phrase(699), "Global Failure");
    }

    #[test]
    fn out_is_reused() {
        let p = parse_ok(REGISTER);
        let m = SipMsg::new(REGISTER, &p);
        let mut out = Vec::new();
        let opts = ReplyOpts {
            force_rport: false,
            to_tag: Some(b"t"),
            src_ip: Some(b"1.2.3.4"),
            src_port: Some(5),
            ..Default::default()
        };
        build_reply(&m, 200, b"OK", &opts, &mut out);
        let (cap, ptr) = (out.capacity(), out.as_ptr());
        for _ in 0..5 {
            build_reply(&m, 200, b"OK", &opts, &mut out);
            assert_eq!((out.capacity(), out.as_ptr()), (cap, ptr));
        }
    }
}
