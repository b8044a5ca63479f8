//! RFC 4475 / RFC 5118 torture messages (tests/torture/*/*.dat): every
//! vector frames or fails the way a proxy must treat it, and the valid ones
//! give the right values for the fields sipshard reads.

use super::{parse, salvage, Framing, Limits, Method, ParseError, Parsed, SipMsg, SipUri, Status};

/// What the parser must make of a vector.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Frames and passes `check_request` / `check_response`.
    Valid,
    /// Frames but the request/response check refuses it with this error.
    Check(ParseError),
    /// Framing refuses it with this error.
    Frame(ParseError),
}
use Want::*;

macro_rules! vectors {
    ($($dir:literal / $name:literal => $want:expr,)*) => {
        const VECTORS: &[(&str, &str, &[u8], Want)] = &[$(
            ($dir, $name, include_bytes!(concat!("../../tests/torture/", $dir, "/", $name, ".dat")), $want),
        )*];
    };
}

vectors! {
    // RFC 4475 3.1.1: valid messages.
    "rfc4475"/"wsinv" => Valid,
    "rfc4475"/"intmeth" => Valid,
    "rfc4475"/"esc01" => Valid,
    "rfc4475"/"escnull" => Valid,
    "rfc4475"/"esc02" => Valid,
    "rfc4475"/"lwsdisp" => Valid,
    "rfc4475"/"longreq" => Valid,
    "rfc4475"/"dblreq" => Valid,
    "rfc4475"/"semiuri" => Valid,
    "rfc4475"/"transports" => Valid,
    "rfc4475"/"mpart01" => Valid,
    "rfc4475"/"unreason" => Valid,
    "rfc4475"/"noreason" => Valid,
    // 3.1.2: invalid messages.
    "rfc4475"/"badinv01" => Check(ParseError::BadVia),
    "rfc4475"/"clerr" => Frame(ParseError::TruncatedBody),
    "rfc4475"/"ncl" => Frame(ParseError::BadContentLength),
    "rfc4475"/"scalar02" => Check(ParseError::BadCSeq),
    "rfc4475"/"scalarlg" => Check(ParseError::BadCSeq),
    "rfc4475"/"quotbal" => Check(ParseError::BadTo),
    "rfc4475"/"ltgtruri" => Check(ParseError::BadRequestUri),
    "rfc4475"/"lwsruri" => Frame(ParseError::BadRequestUri),
    "rfc4475"/"lwsstart" => Check(ParseError::StartLineWhitespace),
    "rfc4475"/"trws" => Check(ParseError::StartLineWhitespace),
    // "could choose to be liberal": the URI headers of the Request-URI are
    // kept as Kamailio keeps them; Date is not read; the addr-spec and
    // display-name faults are read unambiguously.
    "rfc4475"/"escruri" => Valid,
    "rfc4475"/"baddate" => Valid,
    "rfc4475"/"regbadct" => Valid,
    "rfc4475"/"badaspec" => Valid,
    "rfc4475"/"baddn" => Valid,
    "rfc4475"/"badvers" => Frame(ParseError::UnsupportedVersion),
    "rfc4475"/"mismatch01" => Check(ParseError::CSeqMethodMismatch),
    "rfc4475"/"mismatch02" => Check(ParseError::CSeqMethodMismatch),
    "rfc4475"/"bigcode" => Frame(ParseError::BadStatusCode),
    // 3.2, 3.3, 3.4: the parser must not fail; the answer is above it.
    "rfc4475"/"badbranch" => Valid,
    "rfc4475"/"insuf" => Check(ParseError::MissingFrom),
    // Unknown Request-URI schemes frame and check; the shard answers them
    // 416 (check_ruri_scheme, `core.reject_unknown_ruri_scheme`).
    "rfc4475"/"unkscm" => Valid,
    "rfc4475"/"novelsc" => Valid,
    "rfc4475"/"unksm2" => Valid,
    "rfc4475"/"bext01" => Valid,
    "rfc4475"/"invut" => Valid,
    "rfc4475"/"regaut01" => Valid,
    "rfc4475"/"multi01" => Check(ParseError::DuplicateCSeq),
    "rfc4475"/"mcl01" => Frame(ParseError::BadContentLength),
    "rfc4475"/"bcast" => Valid,
    "rfc4475"/"zeromf" => Valid,
    "rfc4475"/"cparam01" => Valid,
    "rfc4475"/"cparam02" => Valid,
    "rfc4475"/"regescrt" => Valid,
    "rfc4475"/"sdp01" => Valid,
    "rfc4475"/"inv2543" => Valid,
    // RFC 5118.
    "rfc5118"/"ipv6-good" => Valid,
    "rfc5118"/"ipv6-bad" => Check(ParseError::BadRequestUri),
    "rfc5118"/"port-ambiguous" => Valid,
    "rfc5118"/"port-unambiguous" => Valid,
    "rfc5118"/"via-received-param-with-delim" => Valid,
    "rfc5118"/"via-received-param-no-delim" => Valid,
    "rfc5118"/"ipv6-in-sdp" => Valid,
    "rfc5118"/"mult-ip-in-header" => Valid,
    "rfc5118"/"mult-ip-in-sdp" => Valid,
    "rfc5118"/"ipv4-mapped-ipv6" => Valid,
    "rfc5118"/"ipv6-bug-abnf-3-colons" => Valid,
    "rfc5118"/"ipv6-correct-abnf-2-colons" => Valid,
}

fn outcome(buf: &[u8], p: &mut Parsed) -> Want {
    match parse(buf, Framing::Datagram, &Limits::default(), p) {
        Err(e) => Frame(e),
        Ok(Status::Partial) => panic!("datagram cannot be partial"),
        Ok(Status::Complete(_)) => {
            let m = SipMsg::new(buf, p);
            let r = if m.is_request() {
                m.check_request()
            } else {
                m.check_response()
            };
            match r {
                Ok(()) => Valid,
                Err(e) => Check(e),
            }
        }
    }
}

fn vector(name: &str) -> &'static [u8] {
    VECTORS
        .iter()
        .find(|v| v.1 == name)
        .map(|v| v.2)
        .unwrap_or_else(|| panic!("no vector {name}"))
}

#[test]
fn every_vector_is_classified_and_present() {
    // 49 RFC 4475 messages + 12 RFC 5118 messages, each with an expectation.
    assert_eq!(VECTORS.iter().filter(|v| v.0 == "rfc4475").count(), 49);
    assert_eq!(VECTORS.iter().filter(|v| v.0 == "rfc5118").count(), 12);
    // (that no .dat file is left out: tests/torture.rs, which may read
    // directories; this module is sans-IO)
}

#[test]
fn outcomes() {
    let mut p = Parsed::default();
    let mut bad = Vec::new();
    for (dir, name, buf, want) in VECTORS {
        let got = outcome(buf, &mut p);
        if got != *want {
            bad.push(format!("{dir}/{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Framing errors of requests keep the headers a reply copies readable.
#[test]
fn refused_requests_can_be_answered() {
    let mut p = Parsed::default();
    for name in ["clerr", "ncl", "lwsruri", "badvers", "mcl01"] {
        let buf = vector(name);
        assert!(salvage(buf, &Limits::default(), &mut p), "{name}");
        let m = SipMsg::new(buf, &p);
        assert!(m.is_request(), "{name}");
        // badvers's Via is SIP/7.0 too: answered to its source address.
        assert_eq!(m.top_via().is_ok(), name != "badvers", "{name}");
        assert!(
            m.call_id().is_some_and(|c| c.starts_with(name.as_bytes())),
            "{name}"
        );
        assert!(m.cseq().is_ok(), "{name}");
        assert!(m.from().is_ok() && m.to().is_ok(), "{name}");
    }
    for name in ["bigcode", "scalarlg"] {
        assert!(!salvage(vector(name), &Limits::default(), &mut p), "{name}");
    }
    for name in ["unkscm", "novelsc"] {
        let (buf, p) = parsed(name);
        assert_eq!(
            SipMsg::new(buf, &p).check_ruri_scheme(),
            Err(ParseError::UnsupportedUriScheme),
            "{name}"
        );
    }
    assert_eq!(ParseError::UnsupportedVersion.status(), 505);
    assert_eq!(ParseError::UnsupportedUriScheme.status(), 416);
    assert_eq!(ParseError::StartLineWhitespace.status(), 400);
}

fn parsed(name: &str) -> (&'static [u8], Parsed) {
    let buf = vector(name);
    let mut p = Parsed::default();
    assert_eq!(outcome(buf, &mut p), Valid, "{name}");
    (buf, p)
}

#[test]
fn wsinv_fields() {
    let (buf, p) = parsed("wsinv");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.method(), Some(Method::Invite));
    let ruri = m.ruri_parsed().unwrap();
    assert_eq!(ruri.user, Some(&b"vivekg"[..]));
    assert_eq!(ruri.host, b"chair-dnrc.example.com");
    assert_eq!(ruri.params.raw, b";unknownparam");
    let via = m.top_via().unwrap();
    assert_eq!(via.host, b"192.0.2.2");
    assert_eq!(via.port, None);
    assert_eq!(via.branch(), Some(&b"390skdjuw"[..]));
    let vias: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[1].host, b"spindle.example.com");
    assert_eq!(vias[1].branch(), Some(&b"z9hG4bK9ikj8"[..]));
    assert_eq!(vias[2].host, b"192.168.255.111");
    assert_eq!(vias[2].branch(), Some(&b"z9hG4bK30239"[..]));
    let to = m.to().unwrap();
    assert_eq!(to.uri, b"sip:vivekg@chair-dnrc.example.com");
    assert_eq!(to.tag(), Some(&b"1918181833n"[..]));
    let from = m.from().unwrap();
    assert_eq!(from.uri, b"sip:jdrosen@example.com");
    assert_eq!(from.tag(), Some(&b"98asjd8"[..]));
    assert_eq!(m.call_id(), Some(&b"wsinv.ndaksdj@192.0.2.1"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.num, cseq.method_bytes), (9, &b"INVITE"[..]));
    assert_eq!(m.max_forwards(), Ok(Some(68)));
    assert_eq!(m.content_length(), Ok(Some(150)));
    assert_eq!(m.body().len(), 150);
    let c: Vec<_> = m.contacts().collect();
    assert_eq!(c.len(), 1);
    let c = c[0].as_ref().unwrap();
    assert_eq!(c.name_addr().unwrap().uri, b"sip:jdrosen@example.com");
    assert_eq!(c.q(), Some(330));
}

#[test]
fn intmeth_fields() {
    let (buf, p) = parsed("intmeth");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(
        m.method_bytes(),
        b"!interesting-Method0123456789_*+`.%indeed'~"
    );
    let ruri = m.ruri_parsed().unwrap();
    assert_eq!(ruri.host, b"example.com");
    assert_eq!(
        ruri.user,
        Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
    );
    assert_eq!(
        ruri.password,
        Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
    );
    assert_eq!(
        m.top_via().unwrap().branch(),
        Some(&b"z9hG4bK-.!%66*_+`'~"[..])
    );
    let to = m.to().unwrap();
    assert_eq!(to.display, Some(&b"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"[..]));
    assert_eq!(
        to.uri,
        b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com"
    );
    let from = m.from().unwrap();
    assert_eq!(from.uri, b"sip:mundane@example.com");
    assert_eq!(from.tag(), Some(&b"_token~1'+`*%!-."[..]));
    assert_eq!(
        m.call_id(),
        Some(&b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"[..])
    );
    let cseq = m.cseq().unwrap();
    assert_eq!(cseq.num, 139122385);
    assert_eq!(cseq.method_bytes, m.method_bytes());
    assert_eq!(m.max_forwards(), Ok(Some(255)));
}

#[test]
fn other_valid_fields() {
    let (buf, p) = parsed("esc01");
    let m = SipMsg::new(buf, &p);
    let ruri = m.ruri_parsed().unwrap();
    assert_eq!(ruri.user, Some(&b"sips%3Auser%40example.com"[..]));
    assert_eq!(ruri.host, b"example.net");
    assert_eq!(
        m.call_id(),
        Some(&b"esc01.239409asdfakjkn23onasd0-3234"[..])
    );
    assert_eq!(m.body().len(), 150);

    let (buf, p) = parsed("esc02");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(m.method_bytes(), b"RE%47IST%45R");
    assert_eq!(m.contacts().count(), 2);

    let (buf, p) = parsed("escnull");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.to().unwrap().uri, b"sip:null-%00-null@example.com");
    assert_eq!(m.contacts().count(), 2);

    let (buf, p) = parsed("lwsdisp");
    assert_eq!(
        SipMsg::new(buf, &p).from().unwrap().display,
        Some(&b"caller"[..])
    );

    let (buf, p) = parsed("longreq");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.vias().count(), 34);
    assert_eq!(m.top_via().unwrap().host, b"sip33.example.com");
    let to = m.to().unwrap().uri;
    assert!(to.starts_with(b"sip:user@example.com:6000;unknownparam1=verylong"));
    assert!(to.ends_with(b"ParameterNameWithNoValue"));
    assert_eq!(m.body().len(), 150);

    let (buf, p) = parsed("dblreq");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.method(), Some(Method::Register));
    assert!(m.body().is_empty());
    assert_eq!(
        p.msg_end(),
        buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
    );

    let (buf, p) = parsed("semiuri");
    let ruri = SipMsg::new(buf, &p).ruri_parsed().unwrap();
    assert_eq!(ruri.user, Some(&b"user;par=u%40example.net"[..]));
    assert_eq!(ruri.host, b"example.com");
    assert!(ruri.params.raw.is_empty());

    let (buf, p) = parsed("transports");
    let t: Vec<_> = SipMsg::new(buf, &p)
        .vias()
        .map(|v| v.unwrap().transport)
        .collect();
    assert_eq!(t, [&b"UDP"[..], b"SCTP", b"TLS", b"UNKNOWN", b"TCP"]);

    let (buf, p) = parsed("mpart01");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.body().len(), 553);
    assert!(buf.ends_with(m.body()));

    let (buf, p) = parsed("unreason");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.status(), Some(200));
    assert_eq!(
        m.reason(),
        Some("= 2**3 * 5**2 но сто девяносто девять - простое".as_bytes())
    );
    let (buf, p) = parsed("noreason");
    let m = SipMsg::new(buf, &p);
    assert_eq!((m.status(), m.reason()), (Some(100), Some(&b""[..])));

    let (buf, p) = parsed("zeromf");
    assert_eq!(SipMsg::new(buf, &p).max_forwards(), Ok(Some(0)));

    let (buf, p) = parsed("inv2543");
    let m = SipMsg::new(buf, &p);
    assert_eq!(m.top_via().unwrap().branch(), None);
    assert_eq!(m.from().unwrap().tag(), None);
    assert_eq!(m.max_forwards(), Ok(None));
    assert_eq!(m.body().len(), 105);
}

#[test]
fn rfc5118_fields() {
    let host = |name: &str| {
        let (buf, p) = parsed(name);
        let u = SipMsg::new(buf, &p).ruri_parsed().unwrap();
        (u.host.to_vec(), u.port)
    };
    assert_eq!(host("ipv6-good"), (b"[2001:db8::10]".to_vec(), None));
    assert_eq!(
        host("port-ambiguous"),
        (b"[2001:db8::10:5070]".to_vec(), None)
    );
    assert_eq!(
        host("port-unambiguous"),
        (b"[2001:db8::10]".to_vec(), Some(5070))
    );
    assert_eq!(
        host("ipv6-bug-abnf-3-colons"),
        (b"[2001:db8:::192.0.2.1]".to_vec(), None)
    );

    let (buf, p) = parsed("mult-ip-in-header");
    let vias: Vec<_> = SipMsg::new(buf, &p).vias().map(|v| v.unwrap()).collect();
    assert_eq!(
        (vias[0].host, vias[0].port),
        (&b"[2001:db8::9:1]"[..], Some(6050))
    );
    assert_eq!(vias[1].host, b"192.0.2.1");
    assert_eq!(vias[2].host, b"[2001:db8::9:255]");

    let (buf, p) = parsed("via-received-param-with-delim");
    let v = SipMsg::new(buf, &p).top_via().unwrap();
    assert_eq!(
        v.params.get(b"received"),
        Some(Some(&b"[2001:db8::9:255]"[..]))
    );
    assert_eq!(v.branch(), Some(&b"z9hG4bKas3-111"[..]));
    let (buf, p) = parsed("via-received-param-no-delim");
    let v = SipMsg::new(buf, &p).top_via().unwrap();
    assert_eq!(
        v.params.get(b"received"),
        Some(Some(&b"2001:db8::9:255"[..]))
    );

    let (buf, p) = parsed("ipv4-mapped-ipv6");
    let m = SipMsg::new(buf, &p);
    let v = m.top_via().unwrap();
    assert_eq!((v.host, v.port), (&b"[::ffff:192.0.2.10]"[..], Some(19823)));
    let c = m.contacts().next().unwrap().unwrap();
    let uri = SipUri::parse(c.name_addr().unwrap().uri).unwrap();
    assert_eq!(uri.host, b"[::ffff:192.0.2.2]");
    assert_eq!(m.body().len(), 245);
}
