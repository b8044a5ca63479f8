//! Borrowed view pairing a buffer with its [`Parsed`] index.

use super::hdr::ValueIter;
use super::{
    lex, CSeq, ContactIter, HdrName, Method, NameAddr, ParseError, Parsed, SipUri, StartLine, Via,
};

/// `buf` must be the buffer `parsed` was produced from (spans are offsets
/// into it). A mismatched pair never panics; it just reads as empty values.
#[derive(Clone, Copy)]
pub struct SipMsg<'a> {
    pub buf: &'a [u8],
    pub parsed: &'a Parsed,
}

impl std::fmt::Debug for SipMsg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipMsg")
            .field("start", &self.parsed.start)
            .field("headers", &self.parsed.headers.len())
            .field("body_len", &self.parsed.body.len())
            .finish()
    }
}

impl<'a> SipMsg<'a> {
    pub fn new(buf: &'a [u8], parsed: &'a Parsed) -> Self {
        SipMsg { buf, parsed }
    }
    pub fn is_request(&self) -> bool {
        matches!(self.parsed.start, StartLine::Request { .. })
    }
    /// Request method (None for a response).
    pub fn method(&self) -> Option<Method> {
        match self.parsed.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    /// Request method token bytes, or the CSeq method for a response.
    pub fn method_bytes(&self) -> &'a [u8] {
        match self.parsed.start {
            StartLine::Request { method_span, .. } => method_span.get(self.buf),
            StartLine::Response { .. } => self.cseq().map(|c| c.method_bytes).unwrap_or(&[]),
        }
    }
    /// Raw Request-URI bytes.
    pub fn ruri(&self) -> Option<&'a [u8]> {
        match self.parsed.start {
            StartLine::Request { uri, .. } => Some(uri.get(self.buf)),
            StartLine::Response { .. } => None,
        }
    }
    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.parsed.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }
    pub fn reason(&self) -> Option<&'a [u8]> {
        match self.parsed.start {
            StartLine::Response { reason, .. } => Some(reason.get(self.buf)),
            StartLine::Request { .. } => None,
        }
    }
    /// First header value of this kind.
    pub fn header(&self, name: HdrName) -> Option<&'a [u8]> {
        let buf = self.buf;
        self.parsed
            .headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.get(buf))
    }
    /// Every header line of this kind, in order.
    pub fn headers(&self, name: HdrName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (buf, parsed) = (self.buf, self.parsed);
        parsed
            .headers
            .iter()
            .filter(move |h| h.name == name)
            .map(move |h| h.value.get(buf))
    }
    /// First header with this name (any name; case-insensitive; compact forms match).
    pub fn header_by_name(&self, name: &[u8]) -> Option<&'a [u8]> {
        let kind = HdrName::from_bytes(name);
        if kind != HdrName::Other {
            return self.header(kind);
        }
        let buf = self.buf;
        self.parsed
            .headers
            .iter()
            .find(|h| h.name == HdrName::Other && h.name_span.get(buf).eq_ignore_ascii_case(name))
            .map(|h| h.value.get(buf))
    }
    pub fn call_id(&self) -> Option<&'a [u8]> {
        self.header(HdrName::CallId)
    }
    pub fn cseq(&self) -> Result<CSeq<'a>, ParseError> {
        CSeq::parse(self.header(HdrName::CSeq).ok_or(ParseError::MissingCSeq)?)
    }
    pub fn top_via(&self) -> Result<Via<'a>, ParseError> {
        let v = self
            .values(HdrName::Via)
            .next()
            .ok_or(ParseError::MissingVia)?;
        Via::parse(v)
    }
    /// All Via values in order, splitting comma-separated lines.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'a>, ParseError>> + 'a {
        self.values(HdrName::Via).map(Via::parse)
    }
    pub fn from(&self) -> Result<NameAddr<'a>, ParseError> {
        let v = self.header(HdrName::From).ok_or(ParseError::MissingFrom)?;
        NameAddr::parse(v).map_err(|_| ParseError::BadFrom)
    }
    pub fn to(&self) -> Result<NameAddr<'a>, ParseError> {
        let v = self.header(HdrName::To).ok_or(ParseError::MissingTo)?;
        NameAddr::parse(v).map_err(|_| ParseError::BadTo)
    }
    /// Contact values across all Contact lines (splitting commas), incl. `*`.
    pub fn contacts(&self) -> ContactIter<'a> {
        ContactIter::new(self.values(HdrName::Contact))
    }
    /// Route / Record-Route / Path values across lines, each a name-addr.
    pub fn name_addrs(
        &self,
        name: HdrName,
    ) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + 'a {
        self.values(name).map(NameAddr::parse)
    }
    pub fn max_forwards(&self) -> Result<Option<u32>, ParseError> {
        match self.header(HdrName::MaxForwards) {
            None => Ok(None),
            Some(v) => lex::parse_u32(v)
                .map(Some)
                .ok_or(ParseError::BadMaxForwards),
        }
    }
    /// Expires header in seconds (values above 2**32-1 saturate).
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        match self.header(HdrName::Expires) {
            None => Ok(None),
            Some(v) => lex::parse_u32_saturating(v)
                .map(Some)
                .ok_or(ParseError::BadExpires),
        }
    }
    pub fn content_length(&self) -> Result<Option<u32>, ParseError> {
        let mut out = None;
        for v in self.headers(HdrName::ContentLength) {
            let n = lex::parse_u32(v).ok_or(ParseError::BadContentLength)?;
            if out.is_some_and(|p| p != n) {
                return Err(ParseError::BadContentLength);
            }
            out = Some(n);
        }
        Ok(out)
    }
    pub fn user_agent(&self) -> Option<&'a [u8]> {
        self.header(HdrName::UserAgent)
    }
    pub fn body(&self) -> &'a [u8] {
        self.parsed.body.get(self.buf)
    }
    /// Parsed Request-URI.
    pub fn ruri_parsed(&self) -> Result<SipUri<'a>, ParseError> {
        SipUri::parse(self.ruri().ok_or(ParseError::BadRequestUri)?)
    }
    /// RFC 3261 §8.2 / §16.3 sanity for a request: Via, From, To, Call-ID and
    /// CSeq present and parseable, CSeq method equals the request method
    /// (except ACK/CANCEL rules as the RFC says), Max-Forwards numeric if present,
    /// Content-Length consistent. Errors name the first fault found.
    ///
    /// On the ACK/CANCEL rules: their CSeq *number* equals the INVITE's, but
    /// the CSeq *method* is still ACK / CANCEL (§9.1, §17.1.1.3), so the
    /// method comparison is exact (case-sensitive) for every request.
    pub fn check_request(&self) -> Result<(), ParseError> {
        let StartLine::Request {
            method_span,
            uri,
            version,
            ..
        } = self.parsed.start
        else {
            return Err(ParseError::BadStartLine);
        };
        // Request-Line = Method SP Request-URI SP SIP-Version CRLF (§7.1, §25.1).
        if u64::from(uri.start) != u64::from(method_span.end) + 1
            || u64::from(version.start) != u64::from(uri.end) + 1
            || !matches!(self.buf.get(version.end as usize), Some(b'\r' | b'\n'))
        {
            return Err(ParseError::StartLineWhitespace);
        }
        // Any scheme parses here (a proxy may route it, the script decides,
        // see check_ruri_scheme); sip, sips and tel must be well formed.
        if SipUri::parse(uri.get(self.buf)).is_err() {
            return Err(ParseError::BadRequestUri);
        }
        self.check_single()?;
        self.check_common()?;
        let cseq = self.cseq()?;
        if cseq.method_bytes != method_span.get(self.buf) {
            return Err(ParseError::CSeqMethodMismatch);
        }
        self.max_forwards()?;
        self.check_length()
    }
    /// Same for a response: Via, From, To, Call-ID, CSeq present and parseable.
    pub fn check_response(&self) -> Result<(), ParseError> {
        let StartLine::Response { .. } = self.parsed.start else {
            return Err(ParseError::BadStartLine);
        };
        self.check_common()?;
        self.cseq()?;
        self.check_length()
    }

    /// The Request-URI scheme is one a proxy understands (sip, sips, tel);
    /// `UnsupportedUriScheme` (416, RFC 3261 §16.3) otherwise.
    pub fn check_ruri_scheme(&self) -> Result<(), ParseError> {
        match self.ruri_parsed() {
            Ok(u) if u.scheme == super::Scheme::Other => Err(ParseError::UnsupportedUriScheme),
            Ok(_) => Ok(()),
            Err(_) => Err(ParseError::BadRequestUri),
        }
    }

    /// From, To, Call-ID, CSeq and Max-Forwards appear at most once (§7.3.1:
    /// only comma-list headers may repeat).
    fn check_single(&self) -> Result<(), ParseError> {
        let mut seen = [false; 5];
        for h in &self.parsed.headers {
            let (k, e) = match h.name {
                HdrName::From => (0, ParseError::DuplicateFrom),
                HdrName::To => (1, ParseError::DuplicateTo),
                HdrName::CallId => (2, ParseError::DuplicateCallId),
                HdrName::CSeq => (3, ParseError::DuplicateCSeq),
                HdrName::MaxForwards => (4, ParseError::DuplicateMaxForwards),
                _ => continue,
            };
            if std::mem::replace(&mut seen[k], true) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn check_common(&self) -> Result<(), ParseError> {
        let mut any = false;
        for v in self.vias() {
            v?;
            any = true;
        }
        if !any {
            return Err(ParseError::MissingVia);
        }
        self.from()?;
        self.to()?;
        match self.call_id() {
            None | Some(b"") => Err(ParseError::MissingCallId),
            Some(_) => Ok(()),
        }
    }

    fn check_length(&self) -> Result<(), ParseError> {
        match self.content_length()? {
            Some(n) if n as usize != self.body().len() => Err(ParseError::BadContentLength),
            _ => Ok(()),
        }
    }

    /// Values of every header of this kind, split at top-level commas.
    fn values(&self, name: HdrName) -> ValueIter<'a> {
        let parsed: &'a Parsed = self.parsed;
        ValueIter::new(self.buf, &parsed.headers, name)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{exercise, parse_ok, s, Rng, INVITE, OK200, REGISTER};
    use super::super::{Contact, Framing, Scheme};
    use super::*;

    /// `msg!(name, bytes, |m| { ... })`: typed access on a datagram that frames.
    macro_rules! msg {
        ($name:ident, $buf:expr, |$m:ident| $body:block) => {
            #[test]
            fn $name() {
                let buf: &[u8] = $buf;
                let p = parse_ok(buf);
                let $m = SipMsg::new(buf, &p);
                $body
            }
        };
    }

    /// A request with the five mandatory headers plus `extra` header lines.
    fn req_with(skip: &str, extra: &str) -> Vec<u8> {
        let mut v = b"INVITE sip:bob@b SIP/2.0\r\n".to_vec();
        for (name, line) in [
            ("via", "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"),
            ("from", "From: <sip:a@b>;tag=1\r\n"),
            ("to", "To: <sip:bob@b>\r\n"),
            ("call-id", "Call-ID: c1\r\n"),
            ("cseq", "CSeq: 1 INVITE\r\n"),
        ] {
            if name != skip {
                v.extend_from_slice(line.as_bytes());
            }
        }
        v.extend_from_slice(extra.as_bytes());
        v.extend_from_slice(b"\r\n");
        v
    }

    msg!(registrar_view, REGISTER, |m| {
        assert_eq!(m.check_request(), Ok(()));
        assert_eq!(m.method(), Some(Method::Register));
        assert_eq!(m.method_bytes(), b"REGISTER");
        let c = m.cseq().unwrap();
        assert_eq!((c.num, c.method), (2, Method::Register));
        let v = m.top_via().unwrap();
        assert_eq!(
            (v.transport, v.host, v.port),
            (&b"TLS"[..], &b"client.biloxi.example.com"[..], Some(5061))
        );
        assert_eq!(v.rport(), Some(None));
        let f = m.from().unwrap();
        assert_eq!(f.tag(), Some(&b"ja743ks76zlflH"[..]));
        assert_eq!(f.display, Some(&b"Bob"[..]));
        let t = m.to().unwrap();
        assert_eq!(t.tag(), None);
        let tu = t.uri_parsed().unwrap();
        assert_eq!(
            (tu.scheme, tu.user, tu.host),
            (Scheme::Sips, Some(&b"bob"[..]), &b"biloxi.example.com"[..])
        );
        assert_eq!(
            m.call_id(),
            Some(&b"1j9FpLxk3uxtm8tn@biloxi.example.com"[..])
        );
        let cs: Vec<_> = m.contacts().collect::<Result<_, _>>().unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!((cs[0].expires(), cs[0].q()), (Some(3600), Some(700)));
        assert_eq!(
            cs[0].name_addr().unwrap().uri,
            b"sips:bob@client.biloxi.example.com"
        );
        assert_eq!(m.expires(), Ok(None));
        assert_eq!(m.max_forwards(), Ok(Some(70)));
        assert_eq!(m.content_length(), Ok(Some(0)));
        assert_eq!(m.user_agent(), Some(&b"sipshard-test/1.0"[..]));
        assert!(m
            .header(HdrName::Authorization)
            .unwrap()
            .starts_with(b"Digest username=\"bob\""));
        assert_eq!(m.ruri_parsed().unwrap().host, b"ss2.biloxi.example.com");
        assert_eq!(m.status(), None);
        assert_eq!(m.reason(), None);
        assert_eq!(m.body(), b"");
        assert_eq!(m.headers(HdrName::Via).count(), 1);
        assert!(format!("{m:?}").contains("SipMsg"));
    });

    msg!(invite_view, INVITE, |m| {
        assert_eq!(m.check_request(), Ok(()));
        assert_eq!(
            m.header(HdrName::ContentType),
            Some(&b"application/sdp"[..])
        );
        assert_eq!(m.content_length(), Ok(Some(149)));
    });

    msg!(response_view, OK200, |m| {
        assert_eq!(m.check_response(), Ok(()));
        assert_eq!(m.check_request(), Err(ParseError::BadStartLine));
        assert_eq!(m.method(), None);
        assert_eq!(m.ruri(), None);
        assert_eq!(m.ruri_parsed(), Err(ParseError::BadRequestUri));
        let vias: Vec<_> = m.vias().map(|v| v.unwrap().received().unwrap()).collect();
        assert_eq!(vias, [&b"192.0.2.3"[..], b"192.0.2.2"]);
        assert_eq!(m.to().unwrap().tag(), Some(&b"a6c85cf"[..]));
    });

    msg!(vias_across_lines_and_commas, b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b:5070 ;branch=\"z,9\"\r\nMax-Forwards: 7\r\nv: SIP/2.0/TLS [2001:db8::9]:5061;received=2001:db8::1;rport=7\r\n\r\n", |m| {
        let vias: Vec<_> = m.vias().collect::<Result<_, _>>().unwrap();
        assert_eq!(vias.len(), 3);
        assert_eq!((vias[0].transport, vias[0].host, vias[0].branch()), (&b"UDP"[..], &b"a"[..], Some(&b"z9hG4bK1"[..])));
        assert_eq!((vias[1].transport, vias[1].port, vias[1].branch()), (&b"TCP"[..], Some(5070), Some(&b"\"z,9\""[..])));
        assert_eq!(vias[1].raw, b"SIP/2.0/TCP b:5070 ;branch=\"z,9\"");
        assert_eq!((vias[2].host, vias[2].received(), vias[2].rport()), (&b"[2001:db8::9]"[..], Some(&b"2001:db8::1"[..]), Some(Some(7))));
        assert_eq!(m.top_via().unwrap().host, b"a");
        assert_eq!(m.headers(HdrName::Via).count(), 2);
    });

    msg!(contacts_across_lines, b"REGISTER sip:r SIP/2.0\r\nContact: \"A, B\" <sip:a@h;transport=tcp>;q=0.7;expires=30, <sip:b@h>;expires=60\r\nm: sip:c@h;expires=10;q=1\r\nContact: <sip:d@h>;expires=99999999999;q=2\r\nExpires: 120\r\n\r\n", |m| {
        let cs: Vec<_> = m.contacts().collect::<Result<_, _>>().unwrap();
        assert_eq!(cs.len(), 4);
        let uris: Vec<_> = cs.iter().map(|c| c.name_addr().unwrap().uri).collect();
        assert_eq!(uris, [&b"sip:a@h;transport=tcp"[..], b"sip:b@h", b"sip:c@h", b"sip:d@h"]);
        let exp: Vec<_> = cs.iter().map(Contact::expires).collect();
        assert_eq!(exp, [Some(30), Some(60), Some(10), Some(u32::MAX)]);
        let q: Vec<_> = cs.iter().map(Contact::q).collect();
        assert_eq!(q, [Some(700), None, Some(1000), None]);
        assert_eq!(cs[0].name_addr().unwrap().display, Some(&b"A, B"[..]));
        assert_eq!(m.expires(), Ok(Some(120)));
    });

    msg!(
        contact_star,
        b"REGISTER sip:r SIP/2.0\r\nContact: *\r\nExpires: 0\r\n\r\n",
        |m| {
            let cs: Vec<_> = m.contacts().collect();
            assert_eq!(cs, [Ok(Contact::Star)]);
            assert_eq!((cs[0].unwrap().expires(), cs[0].unwrap().q()), (None, None));
            assert_eq!(m.expires(), Ok(Some(0)));
        }
    );

    msg!(
        bad_contacts,
        b"REGISTER sip:r SIP/2.0\r\nContact: <sip:a@h>, garbage, <sip:b@h\r\nContact:\r\n\r\n",
        |m| {
            let cs: Vec<_> = m.contacts().collect();
            assert_eq!(cs.len(), 4);
            assert!(cs[0].is_ok());
            assert_eq!(cs[1], Err(ParseError::BadContact));
            assert_eq!(cs[2], Err(ParseError::BadContact));
            assert_eq!(cs[3], Err(ParseError::BadContact));
        }
    );

    msg!(no_contacts, b"REGISTER sip:r SIP/2.0\r\n\r\n", |m| {
        assert_eq!(m.contacts().count(), 0);
        assert_eq!(m.vias().count(), 0);
        assert_eq!(m.top_via(), Err(ParseError::MissingVia));
        assert_eq!(m.from(), Err(ParseError::MissingFrom));
        assert_eq!(m.to(), Err(ParseError::MissingTo));
        assert_eq!(m.cseq(), Err(ParseError::MissingCSeq));
        assert_eq!(m.call_id(), None);
        assert_eq!(m.max_forwards(), Ok(None));
        assert_eq!(m.content_length(), Ok(None));
        assert_eq!(m.header_by_name(b"X-None"), None);
    });

    msg!(routes, b"INVITE sip:a@b SIP/2.0\r\nRoute: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\nRecord-Route: <sip:[2001:db8::1]:5060;lr;transport=tcp>\r\nRoute: \"Edge\" <sips:p3.example.com;lr>;x=1\r\nPath: <sip:pcscf.example.com;lr>\r\n\r\n", |m| {
        let r: Vec<_> = m.name_addrs(HdrName::Route).collect::<Result<_, _>>().unwrap();
        assert_eq!(r.iter().map(|n| n.uri).collect::<Vec<_>>(), [&b"sip:p1.example.com;lr"[..], b"sip:p2.example.com;lr", b"sips:p3.example.com;lr"]);
        assert_eq!(r[2].params.get(b"x"), Some(Some(&b"1"[..])));
        let u = r[0].uri_parsed().unwrap();
        assert_eq!(u.params.get(b"lr"), Some(None));
        let rr: Vec<_> = m.name_addrs(HdrName::RecordRoute).collect::<Result<_, _>>().unwrap();
        let u = rr[0].uri_parsed().unwrap();
        assert_eq!((u.host, u.port, u.transport()), (&b"[2001:db8::1]"[..], Some(5060), Some(&b"tcp"[..])));
        assert_eq!(m.name_addrs(HdrName::Path).count(), 1);
    });

    msg!(header_lookup, b"OPTIONS sip:a@b SIP/2.0\r\nX-Foo: 1\r\nx-foo: 2\r\nf: <sip:a@b>\r\nSupported: path\r\nk: outbound\r\n\r\n", |m| {
        assert_eq!(m.header_by_name(b"X-FOO"), Some(&b"1"[..]));
        assert_eq!(m.header_by_name(b"from"), Some(&b"<sip:a@b>"[..]));
        assert_eq!(m.header_by_name(b"F"), Some(&b"<sip:a@b>"[..]));
        let sup: Vec<_> = m.headers(HdrName::Supported).collect();
        assert_eq!(sup, [&b"path"[..], b"outbound"]);
    });

    #[test]
    fn check_request_faults() {
        let table: &[(&str, &str, Result<(), ParseError>)] = &[
            ("", "", Ok(())),
            ("via", "", Err(ParseError::MissingVia)),
            ("from", "", Err(ParseError::MissingFrom)),
            ("to", "", Err(ParseError::MissingTo)),
            ("call-id", "", Err(ParseError::MissingCallId)),
            ("cseq", "", Err(ParseError::MissingCSeq)),
            (
                "cseq",
                "CSeq: 1 invite\r\n",
                Err(ParseError::CSeqMethodMismatch),
            ),
            (
                "cseq",
                "CSeq: 1 BYE\r\n",
                Err(ParseError::CSeqMethodMismatch),
            ),
            ("cseq", "CSeq: x INVITE\r\n", Err(ParseError::BadCSeq)),
            (
                "cseq",
                "CSeq: 2147483648 INVITE\r\n",
                Err(ParseError::BadCSeq),
            ),
            ("via", "Via: SIP/2.0/UDP\r\n", Err(ParseError::BadVia)),
            ("", "Via: SIP/2.0/UDP ok, bad\r\n", Err(ParseError::BadVia)),
            ("via", "Via:\r\n", Err(ParseError::BadVia)),
            ("from", "From: nobody\r\n", Err(ParseError::BadFrom)),
            ("to", "To: <sip:x\r\n", Err(ParseError::BadTo)),
            ("call-id", "Call-ID:\r\n", Err(ParseError::MissingCallId)),
            ("", "Max-Forwards: 70\r\n", Ok(())),
            (
                "",
                "Max-Forwards: seventy\r\n",
                Err(ParseError::BadMaxForwards),
            ),
            ("", "Max-Forwards: -1\r\n", Err(ParseError::BadMaxForwards)),
            ("", "Content-Length: 0\r\n", Ok(())),
            ("", "Expires: soon\r\n", Ok(())),
        ];
        for (skip, extra, want) in table {
            let buf = req_with(skip, extra);
            let p = parse_ok(&buf);
            assert_eq!(SipMsg::new(&buf, &p).check_request(), *want, "{}", s(&buf));
        }
        // Body shorter than Content-Length would be TruncatedBody at framing;
        // a body without Content-Length is fine.
        let mut buf = req_with("", "");
        buf.extend_from_slice(b"body");
        let p = parse_ok(&buf);
        assert_eq!(SipMsg::new(&buf, &p).check_request(), Ok(()));
        let buf = req_with("", "Expires: soon\r\n");
        let p = parse_ok(&buf);
        assert_eq!(SipMsg::new(&buf, &p).expires(), Err(ParseError::BadExpires));
    }

    #[test]
    fn check_request_line_and_single_headers() {
        let base = req_with("", "");
        let swap = |from: &str, to: &str| String::from_utf8_lossy(&base).replacen(from, to, 1);
        for (buf, want) in [
            (swap("INVITE sip", "INVITE  sip"), Err(ParseError::StartLineWhitespace)),
            (swap("b SIP/2.0", "b  SIP/2.0"), Err(ParseError::StartLineWhitespace)),
            (swap("SIP/2.0\r\n", "SIP/2.0 \r\n"), Err(ParseError::StartLineWhitespace)),
            (swap("SIP/2.0\r\n", "SIP/2.0\t\r\n"), Err(ParseError::StartLineWhitespace)),
            (swap("sip:bob@b ", "<sip:bob@b> "), Err(ParseError::BadRequestUri)),
            (swap("sip:bob@b ", "sip:2001:db8::10 "), Err(ParseError::BadRequestUri)),
            // Headers in a Request-URI (RFC 4475 §3.1.2.11): accepted, as Kamailio does.
            (swap("sip:bob@b ", "sip:bob@b?Route=x "), Ok(())),
            (swap("sip:bob@b ", "mailto:bob@b "), Ok(())),
            (swap("sip:bob@b ", "tel:+15551234 "), Ok(())),
            (swap("sip:bob@b ", "sips:[2001:db8::1]:5061 "), Ok(())),
            (swap("Call-ID: c1\r\n", "Call-ID: c1\r\ni: c2\r\n"), Err(ParseError::DuplicateCallId)),
            (swap("CSeq: 1 INVITE\r\n", "CSeq: 1 INVITE\r\nCSeq: 1 INVITE\r\n"), Err(ParseError::DuplicateCSeq)),
            (swap("To: <sip:bob@b>\r\n", "To: <sip:bob@b>\r\nt: <sip:x@b>\r\n"), Err(ParseError::DuplicateTo)),
            (swap("From: <sip:a@b>;tag=1\r\n", "From: <sip:a@b>;tag=1\r\nf: <sip:a@b>;tag=2\r\n"), Err(ParseError::DuplicateFrom)),
            (swap("Call-ID: c1\r\n", "Call-ID: c1\r\nMax-Forwards: 70\r\nMax-Forwards: 69\r\n"), Err(ParseError::DuplicateMaxForwards)),
            // Comma-list headers may repeat.
            (swap("Call-ID: c1\r\n", "Call-ID: c1\r\nVia: SIP/2.0/UDP h2\r\nContact: <sip:a@b>\r\nContact: <sip:c@d>\r\n"), Ok(())),
        ] {
            let p = parse_ok(buf.as_bytes());
            assert_eq!(SipMsg::new(buf.as_bytes(), &p).check_request(), want, "{buf}");
        }
        for (ruri, want) in [
            ("sip:a@b", Ok(())),
            ("SIPS:a@b", Ok(())),
            ("tel:+1555", Ok(())),
            ("mailto:a@b", Err(ParseError::UnsupportedUriScheme)),
            ("im:a@b", Err(ParseError::UnsupportedUriScheme)),
            ("sip:@b", Err(ParseError::BadRequestUri)),
        ] {
            let buf = format!("OPTIONS {ruri} SIP/2.0\r\n\r\n");
            let p = parse_ok(buf.as_bytes());
            assert_eq!(
                SipMsg::new(buf.as_bytes(), &p).check_ruri_scheme(),
                want,
                "{ruri}"
            );
        }
    }

    #[test]
    fn ack_and_cancel_use_their_own_cseq_method() {
        for (method, cseq, want) in [
            ("ACK", "1 ACK", Ok(())),
            ("CANCEL", "1 CANCEL", Ok(())),
            ("ACK", "1 INVITE", Err(ParseError::CSeqMethodMismatch)),
            ("CANCEL", "1 INVITE", Err(ParseError::CSeqMethodMismatch)),
            ("FOO", "1 FOO", Ok(())),
        ] {
            let buf = format!("{method} sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: x\r\nCSeq: {cseq}\r\n\r\n");
            let p = parse_ok(buf.as_bytes());
            assert_eq!(
                SipMsg::new(buf.as_bytes(), &p).check_request(),
                want,
                "{buf}"
            );
        }
    }

    #[test]
    fn check_response_faults() {
        for (buf, want) in [
            (OK200.to_vec(), Ok(())),
            (b"SIP/2.0 200 OK\r\nFrom: <sip:a@b>\r\n\r\n".to_vec(), Err(ParseError::MissingVia)),
            (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>\r\nTo: <sip:a@b>\r\nCall-ID: c\r\n\r\n".to_vec(), Err(ParseError::MissingCSeq)),
            (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n".to_vec(), Ok(())),
            (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1\r\n\r\n".to_vec(), Err(ParseError::BadCSeq)),
        ] {
            let p = parse_ok(&buf);
            let m = SipMsg::new(&buf, &p);
            assert_eq!(m.check_response(), want, "{}", s(&buf));
        }
        let p = parse_ok(REGISTER);
        assert_eq!(
            SipMsg::new(REGISTER, &p).check_response(),
            Err(ParseError::BadStartLine)
        );
    }

    #[test]
    fn mismatched_buffer_never_panics() {
        let p = parse_ok(INVITE);
        let m = SipMsg::new(b"short", &p);
        let _ = (
            m.cseq(),
            m.top_via(),
            m.from(),
            m.body(),
            m.ruri(),
            m.check_request(),
            m.contacts().count(),
        );
    }

    /// Random byte mutations of valid messages: every accessor, check, reply
    /// and edit path runs on whatever still frames, and nothing panics.
    #[test]
    fn mutated_messages_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let seeds: [&[u8]; 3] = [REGISTER, INVITE, OK200];
        let interesting = b" \t\r\n:;,<>\"\\@[]=/0123456789*\x00\xff";
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            let seed: &[u8] = seeds[rng.below(seeds.len())];
            buf.extend_from_slice(seed);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(buf.len());
                match rng.below(5) {
                    0 => buf[at] = *rng.pick(interesting),
                    1 => buf[at] = rng.next() as u8,
                    2 => {
                        let c = *rng.pick(interesting);
                        buf.insert(at, c);
                    }
                    3 => {
                        buf.remove(at);
                    }
                    _ => buf.truncate(at),
                }
                if buf.is_empty() {
                    break;
                }
            }
            exercise(&buf, Framing::Datagram);
            exercise(&buf, Framing::Stream);
        }
        for seed in seeds {
            exercise(seed, Framing::Datagram);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(42);
        let alphabet = b"SIP/2.0 INVITE sip:a@b;<>\",\r\n\r\nVia: v: Content-Length: l: 9\x00\xc3";
        for _ in 0..20_000 {
            let n = rng.below(200);
            let buf: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.chance(4) {
                        rng.next() as u8
                    } else {
                        *rng.pick(alphabet)
                    }
                })
                .collect();
            exercise(&buf, Framing::Datagram);
            exercise(&buf, Framing::Stream);
        }
    }
}
