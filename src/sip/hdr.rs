//! Typed views of individual header values, parsed on demand from the value
//! spans the framing parser located. All views borrow the message buffer.

use super::lex::{self, ParamRanges, SplitRanges, HOST, IPV6, TOKEN};
use super::{HdrName, Header, Method, ParseError, SipUri};

pub(crate) fn classify_name(name: &[u8]) -> HdrName {
    // Dispatch on (length, first letter) so at most one full comparison runs.
    let Some(&first) = name.first() else {
        return HdrName::Other;
    };
    let f = first.to_ascii_lowercase();
    match (name.len(), f) {
        (1, _) => match f {
            b'v' => HdrName::Via,
            b'f' => HdrName::From,
            b't' => HdrName::To,
            b'i' => HdrName::CallId,
            b'm' => HdrName::Contact,
            b'l' => HdrName::ContentLength,
            b'k' => HdrName::Supported,
            b's' => HdrName::Subject,
            b'c' => HdrName::ContentType,
            b'e' => HdrName::ContentEncoding,
            b'o' => HdrName::Event,
            b'r' => HdrName::ReferTo,
            b'u' => HdrName::AllowEvents,
            _ => HdrName::Other,
        },
        (2, b't') => is(name, b"to", HdrName::To),
        (3, b'v') => is(name, b"via", HdrName::Via),
        (4, b'f') => is(name, b"from", HdrName::From),
        (4, b'c') => is(name, b"cseq", HdrName::CSeq),
        (4, b'p') => is(name, b"path", HdrName::Path),
        (5, b'r') => is(name, b"route", HdrName::Route),
        (5, b'a') => is(name, b"allow", HdrName::Allow),
        (5, b'e') => is(name, b"event", HdrName::Event),
        (6, b's') => is(name, b"server", HdrName::Server),
        (7, b'c') => match name.get(2).map(u8::to_ascii_lowercase) {
            Some(b'l') => is(name, b"call-id", HdrName::CallId),
            _ => is(name, b"contact", HdrName::Contact),
        },
        (7, b'e') => is(name, b"expires", HdrName::Expires),
        (7, b'r') => is(name, b"require", HdrName::Require),
        (7, b's') => is(name, b"subject", HdrName::Subject),
        (8, b'r') => is(name, b"refer-to", HdrName::ReferTo),
        (9, b's') => is(name, b"supported", HdrName::Supported),
        (10, b'u') => is(name, b"user-agent", HdrName::UserAgent),
        (11, b'm') => is(name, b"min-expires", HdrName::MinExpires),
        (11, b'u') => is(name, b"unsupported", HdrName::Unsupported),
        (12, b'm') => is(name, b"max-forwards", HdrName::MaxForwards),
        (12, b'c') => is(name, b"content-type", HdrName::ContentType),
        (12, b'r') => is(name, b"record-route", HdrName::RecordRoute),
        (12, b'a') => is(name, b"allow-events", HdrName::AllowEvents),
        (13, b'a') => is(name, b"authorization", HdrName::Authorization),
        (13, b'p') => is(name, b"proxy-require", HdrName::ProxyRequire),
        (14, b'c') => is(name, b"content-length", HdrName::ContentLength),
        (16, b'w') => is(name, b"www-authenticate", HdrName::WwwAuthenticate),
        (16, b'c') => is(name, b"content-encoding", HdrName::ContentEncoding),
        (18, b'p') => is(name, b"proxy-authenticate", HdrName::ProxyAuthenticate),
        (19, b'p') => is(name, b"proxy-authorization", HdrName::ProxyAuthorization),
        _ => HdrName::Other,
    }
}

/// `kind` if `name` equals the lower-case literal ignoring ASCII case.
/// Const-generic so each comparison is a fixed-length, unrolled loop.
#[inline(always)]
fn is<const N: usize>(name: &[u8], lit: &[u8; N], kind: HdrName) -> HdrName {
    let Ok(a) = <&[u8; N]>::try_from(name) else {
        return HdrName::Other;
    };
    let mut diff = 0u8;
    for k in 0..N {
        diff |= a[k].to_ascii_lowercase() ^ lit[k];
    }
    if diff == 0 {
        kind
    } else {
        HdrName::Other
    }
}

pub(crate) fn canonical_name(name: HdrName) -> &'static str {
    match name {
        HdrName::Via => "Via",
        HdrName::From => "From",
        HdrName::To => "To",
        HdrName::CallId => "Call-ID",
        HdrName::CSeq => "CSeq",
        HdrName::Contact => "Contact",
        HdrName::MaxForwards => "Max-Forwards",
        HdrName::Expires => "Expires",
        HdrName::MinExpires => "Min-Expires",
        HdrName::ContentLength => "Content-Length",
        HdrName::ContentType => "Content-Type",
        HdrName::Route => "Route",
        HdrName::RecordRoute => "Record-Route",
        HdrName::Path => "Path",
        HdrName::Authorization => "Authorization",
        HdrName::ProxyAuthorization => "Proxy-Authorization",
        HdrName::WwwAuthenticate => "WWW-Authenticate",
        HdrName::ProxyAuthenticate => "Proxy-Authenticate",
        HdrName::UserAgent => "User-Agent",
        HdrName::Server => "Server",
        HdrName::Supported => "Supported",
        HdrName::Require => "Require",
        HdrName::ProxyRequire => "Proxy-Require",
        HdrName::Unsupported => "Unsupported",
        HdrName::Allow => "Allow",
        HdrName::Event => "Event",
        HdrName::Subject => "Subject",
        HdrName::ContentEncoding => "Content-Encoding",
        HdrName::ReferTo => "Refer-To",
        HdrName::AllowEvents => "Allow-Events",
        HdrName::Other => "",
    }
}

/// `;name=value;flag` parameter list (raw, starting at the first `;` or empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params<'a> {
    pub raw: &'a [u8],
}

impl<'a> Params<'a> {
    /// `None`: absent; `Some(None)`: flag without value; `Some(Some(v))`: value
    /// (quotes kept). Names compare case-insensitively.
    pub fn get(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        let raw = self.raw;
        ParamRanges::new(raw)
            .find(|p| lex::sub(raw, p.name).eq_ignore_ascii_case(name))
            .map(|p| p.value.map(|v| lex::sub(raw, v)))
    }

    /// `(name, value)` pairs in order; empty parameters (`;;`) are skipped.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let raw = self.raw;
        ParamRanges::new(raw)
            .map(move |p| (lex::sub(raw, p.name), p.value.map(|v| lex::sub(raw, v))))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Parses `host [ ":" port ]` at `b[i..]` (LWS allowed around the colon, as
/// in a Via sent-by). Returns (host range, port, next index).
pub(crate) fn host_port(
    b: &[u8],
    i: usize,
    lws: bool,
) -> Option<((usize, usize), Option<u16>, usize)> {
    let hs = i;
    let he = if b.get(i) == Some(&b'[') {
        let e = lex::scan_class(b, i + 1, &IPV6);
        if b.get(e) != Some(&b']') || e == i + 1 {
            return None;
        }
        e + 1
    } else {
        lex::scan_class(b, i, &HOST)
    };
    if he == hs {
        return None;
    }
    let j = if lws { lex::skip_lws(b, he) } else { he };
    if b.get(j) != Some(&b':') {
        return Some(((hs, he), None, he));
    }
    let ps = if lws { lex::skip_lws(b, j + 1) } else { j + 1 };
    let pe = lex::scan_class(b, ps, &DIGIT);
    let port = lex::parse_port(b.get(ps..pe)?)?;
    Some(((hs, he), Some(port), pe))
}

static DIGIT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = b'0';
    while i <= b'9' {
        t[i as usize] = true;
        i += 1;
    }
    t
};

/// `Via: SIP/2.0/UDP host:port;branch=..;received=..;rport`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole value of this one via (for copying).
    pub raw: &'a [u8],
    pub transport: &'a [u8],
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub params: Params<'a>,
}

/// Via parameters holding an unterminated quoted string, or `<` / `>`
/// outside a quoted string.
fn bad_via_params(b: &[u8]) -> bool {
    let mut i = 0;
    loop {
        i = lex::find_any(b, i, [b'"', b'<', b'>']);
        match b.get(i) {
            None => return false,
            Some(b'"') => match lex::skip_quoted(b, i) {
                Some(j) => i = j,
                None => return true,
            },
            Some(_) => return true,
        }
    }
}

/// Via parse that also reports where (in `value`) the parameter list starts
/// and the trimmed value ends, for in-place editing.
pub(crate) fn parse_via(value: &[u8]) -> Result<(Via<'_>, usize, usize), ParseError> {
    const E: ParseError = ParseError::BadVia;
    let (s, end) = lex::trim_range(value, 0, value.len());
    let v = value.get(..end).ok_or(E)?;
    // sent-protocol: SIP / 2.0 / transport, LWS allowed around the slashes.
    let te = lex::scan_class(v, s, &TOKEN);
    if !v.get(s..te).ok_or(E)?.eq_ignore_ascii_case(b"SIP") {
        return Err(E);
    }
    let i = lex::skip_lws(v, te);
    if v.get(i) != Some(&b'/') {
        return Err(E);
    }
    let vs = lex::skip_lws(v, i + 1);
    let ve = lex::scan_class(v, vs, &TOKEN);
    if v.get(vs..ve) != Some(b"2.0") {
        return Err(E);
    }
    let i = lex::skip_lws(v, ve);
    if v.get(i) != Some(&b'/') {
        return Err(E);
    }
    let ts = lex::skip_lws(v, i + 1);
    let te = lex::scan_class(v, ts, &TOKEN);
    if te == ts || !v.get(te).is_some_and(|&c| lex::is_lws(c)) {
        return Err(E);
    }
    let i = lex::skip_lws(v, te);
    let (host, port, i) = host_port(v, i, true).ok_or(E)?;
    let ps = lex::skip_lws(v, i);
    if ps < end && v.get(ps) != Some(&b';') {
        return Err(E);
    }
    // An unterminated quoted string would swallow every parameter after
    // it, including a `received` / `rport` a proxy appends; a `<` would
    // hide the commas after it from the value splitter, until an edit
    // removes it (both found by the `writer` fuzz target). Neither is Via
    // syntax outside a quoted string.
    if bad_via_params(v.get(ps..end).unwrap_or(&[])) {
        return Err(E);
    }
    let via = Via {
        raw: v.get(s..end).ok_or(E)?,
        transport: v.get(ts..te).ok_or(E)?,
        host: lex::sub(v, host),
        port,
        params: Params {
            raw: v.get(ps..end).unwrap_or(&[]),
        },
    };
    Ok((via, ps, end))
}

impl<'a> Via<'a> {
    pub fn parse(value: &'a [u8]) -> Result<Via<'a>, ParseError> {
        parse_via(value).map(|(v, _, _)| v)
    }
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params.get(b"branch").flatten()
    }
    pub fn received(&self) -> Option<&'a [u8]> {
        self.params.get(b"received").flatten()
    }
    /// `None`: no rport param; `Some(None)`: `;rport` flag; `Some(Some(p))`.
    /// A value that is not a valid port reads as the flag.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get(b"rport")
            .map(|v| v.and_then(lex::parse_port))
    }
    /// The `maddr` parameter, if any.
    pub fn maddr(&self) -> Option<&'a [u8]> {
        self.params.get(b"maddr").flatten()
    }
}

/// From / To / Contact / Route value: `"Display" <uri>;params` or `uri;params`.
///
/// `display` is the display name without surrounding quotes (escapes kept as
/// sent) or the unquoted token sequence; `None` when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub raw: &'a [u8],
    pub display: Option<&'a [u8]>,
    pub uri: &'a [u8],
    pub params: Params<'a>,
}

static NOT_IN_URI: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i <= b' ' as usize || i == b'<' as usize || i == b'"' as usize;
        i += 1;
    }
    t
};

/// `scheme ":" ...` with a valid scheme (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )).
pub(crate) fn has_scheme(uri: &[u8]) -> bool {
    let Some(colon) = lex::find(uri, b':') else {
        return false;
    };
    let scheme = uri.get(..colon).unwrap_or(&[]);
    match scheme.split_first() {
        Some((f, rest)) => {
            f.is_ascii_alphabetic()
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

/// First `<` outside quoted strings: a bare addr-spec may carry a quoted
/// header parameter such as `;+sip.instance="<urn:uuid:...>"`.
fn find_laquot(v: &[u8]) -> Option<usize> {
    let mut j = 0;
    loop {
        j = lex::find_any(v, j, [b'<', b'"']);
        match v.get(j)? {
            b'<' => return Some(j),
            _ => j = lex::skip_quoted(v, j)?,
        }
    }
}

impl<'a> NameAddr<'a> {
    pub fn parse(value: &'a [u8]) -> Result<NameAddr<'a>, ParseError> {
        const E: ParseError = ParseError::BadNameAddr;
        let v = lex::trim_lws(value);
        if v.is_empty() {
            return Err(E);
        }
        let (display, uri, after) = if v.first() == Some(&b'"') {
            let q = lex::skip_quoted(v, 0).ok_or(E)?;
            let lt = lex::skip_lws(v, q);
            if v.get(lt) != Some(&b'<') {
                return Err(E);
            }
            let gt = lt + 1 + lex::find(v.get(lt + 1..).unwrap_or(&[]), b'>').ok_or(E)?;
            (
                Some(v.get(1..q - 1).unwrap_or(&[])),
                lex::trim_lws(v.get(lt + 1..gt).unwrap_or(&[])),
                gt + 1,
            )
        } else if let Some(lt) = find_laquot(v) {
            // Unquoted display name: lenient, anything before '<' (trimmed).
            let gt = lt + 1 + lex::find(v.get(lt + 1..).unwrap_or(&[]), b'>').ok_or(E)?;
            let d = lex::trim_lws(v.get(..lt).unwrap_or(&[]));
            if d.iter().any(|&c| c == b'>' || c < 0x09) {
                return Err(E);
            }
            let display = if d.is_empty() { None } else { Some(d) };
            (
                display,
                lex::trim_lws(v.get(lt + 1..gt).unwrap_or(&[])),
                gt + 1,
            )
        } else {
            // addr-spec: parameters after the URI belong to the header.
            let e = v
                .iter()
                .position(|&c| c == b';' || lex::is_lws(c))
                .unwrap_or(v.len());
            (None, v.get(..e).unwrap_or(&[]), e)
        };
        if !has_scheme(uri) || uri.iter().any(|&c| NOT_IN_URI[c as usize]) {
            return Err(E);
        }
        let ps = lex::skip_lws(v, after);
        if ps < v.len() && v.get(ps) != Some(&b';') {
            return Err(E);
        }
        Ok(NameAddr {
            raw: v,
            display,
            uri,
            params: Params {
                raw: v.get(ps..).unwrap_or(&[]),
            },
        })
    }
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.get(b"tag").flatten()
    }
    pub fn uri_parsed(&self) -> Result<SipUri<'a>, ParseError> {
        SipUri::parse(self.uri)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub num: u32,
    pub method: Method,
    pub method_bytes: &'a [u8],
}

impl<'a> CSeq<'a> {
    /// `1*DIGIT LWS Method`; the number must be below 2**31 (RFC 3261 §8.1.1.5).
    pub fn parse(value: &'a [u8]) -> Result<CSeq<'a>, ParseError> {
        const E: ParseError = ParseError::BadCSeq;
        let v = lex::trim_lws(value);
        let de = lex::scan_class(v, 0, &DIGIT);
        if de == 0 || de > 10 {
            return Err(E);
        }
        let num = lex::parse_u32(v.get(..de).ok_or(E)?).ok_or(E)?;
        if num > 0x7fff_ffff {
            return Err(E);
        }
        let ms = lex::skip_lws(v, de);
        if ms == de {
            return Err(E);
        }
        let me = lex::scan_class(v, ms, &TOKEN);
        if me == ms || me != v.len() {
            return Err(E);
        }
        let method_bytes = v.get(ms..me).ok_or(E)?;
        Ok(CSeq {
            num,
            method: Method::from_bytes(method_bytes),
            method_bytes,
        })
    }
}

/// One Contact value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact<'a> {
    Star,
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    /// `expires` param, if present and numeric (values above 2**32-1 saturate).
    pub fn expires(&self) -> Option<u32> {
        match self {
            Contact::Star => None,
            Contact::Addr(na) => na
                .params
                .get(b"expires")
                .flatten()
                .and_then(lex::parse_u32_saturating),
        }
    }
    /// `q` param in thousandths (q=0.5 -> 500), if present and valid.
    pub fn q(&self) -> Option<u16> {
        match self {
            Contact::Star => None,
            Contact::Addr(na) => na.params.get(b"q").flatten().and_then(parse_qvalue),
        }
    }
    pub fn name_addr(&self) -> Option<&NameAddr<'a>> {
        match self {
            Contact::Star => None,
            Contact::Addr(na) => Some(na),
        }
    }
}

/// RFC 3261 qvalue: `"0" [ "." 0*3DIGIT ] / "1" [ "." 0*3("0") ]`.
pub(crate) fn parse_qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match lex::find(v, b'.') {
        Some(d) => (v.get(..d)?, v.get(d + 1..)?),
        None => (v, &[][..]),
    };
    let whole: u16 = match int {
        b"0" => 0,
        b"1" => 1000,
        _ => return None,
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f: u16 = 0;
    for k in 0..3 {
        f = f * 10 + frac.get(k).map_or(0, |&c| u16::from(c - b'0'));
    }
    if whole == 1000 && f != 0 {
        return None;
    }
    Some(whole + f)
}

/// Values of every header line of one kind, split at top-level commas.
#[derive(Clone, Debug)]
pub(crate) struct ValueIter<'a> {
    buf: &'a [u8],
    headers: std::slice::Iter<'a, Header>,
    name: HdrName,
    cur: &'a [u8],
    split: Option<SplitRanges<'a>>,
}

impl<'a> ValueIter<'a> {
    pub(crate) fn new(buf: &'a [u8], headers: &'a [Header], name: HdrName) -> Self {
        ValueIter {
            buf,
            headers: headers.iter(),
            name,
            cur: &[],
            split: None,
        }
    }
}

impl<'a> Iterator for ValueIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some(split) = &mut self.split {
                if let Some(r) = split.next() {
                    return Some(lex::sub(self.cur, r));
                }
                self.split = None;
            }
            let name = self.name;
            let h = self.headers.find(|h| h.name == name)?;
            self.cur = h.value.get(self.buf);
            self.split = Some(SplitRanges::new(self.cur));
        }
    }
}

/// Iterator over Contact values across all Contact header lines.
#[derive(Clone, Debug)]
pub struct ContactIter<'a> {
    inner: ValueIter<'a>,
}

impl<'a> ContactIter<'a> {
    pub(crate) fn new(inner: ValueIter<'a>) -> Self {
        ContactIter { inner }
    }
}

impl<'a> Iterator for ContactIter<'a> {
    type Item = Result<Contact<'a>, ParseError>;
    fn next(&mut self) -> Option<Self::Item> {
        let v = self.inner.next()?;
        if v == b"*" {
            return Some(Ok(Contact::Star));
        }
        Some(
            NameAddr::parse(v)
                .map(Contact::Addr)
                .map_err(|_| ParseError::BadContact),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn via_with_unterminated_quote_in_params_is_bad() {
        // writer fuzz crash: `;received=` appended to such a Via was not
        // seen on re-parse (it sat inside the open quoted string)
        assert_eq!(
            Via::parse(b"SIP/2.0/UDP 127.0.0.1:5070;br\"\"\"anch=z9hG4bK-1;rport").err(),
            Some(ParseError::BadVia)
        );
        assert_eq!(
            Via::parse(b"SIP/2.0/UDP 1.2.3.4;x=\"a\\\"").err(),
            Some(ParseError::BadVia)
        );
        let v = Via::parse(b"SIP/2.0/UDP 1.2.3.4;x=\"a;<b\\\"c\";branch=z9hG4bK1").unwrap();
        assert_eq!(v.branch(), Some(&b"z9hG4bK1"[..]));
        // writer fuzz crash: the `<` hid the comma from the value splitter;
        // replacing `received` removed it and made a second Via item
        assert_eq!(
            Via::parse(b"SIP/2.0/UDP 127.0.0.1;received=ranch=z`<hG4bK-x;rport=5070;d=127.0").err(),
            Some(ParseError::BadVia)
        );
    }

    use super::*;

    macro_rules! via {
        ($v:expr => Err) => {
            assert_eq!(
                Via::parse($v.as_bytes()),
                Err(ParseError::BadVia),
                "{:?}",
                $v
            )
        };
        ($v:expr => $tr:expr, $host:expr, $port:expr, $params:expr) => {{
            let v = Via::parse($v.as_bytes()).unwrap_or_else(|e| panic!("{:?}: {e}", $v));
            assert_eq!(v.transport, $tr.as_bytes(), "{:?}", $v);
            assert_eq!(v.host, $host.as_bytes(), "{:?}", $v);
            assert_eq!(v.port, $port, "{:?}", $v);
            assert_eq!(v.params.raw, $params.as_bytes(), "{:?}", $v);
            v
        }};
    }

    #[test]
    fn classify_names() {
        let table: &[(&str, HdrName)] = &[
            ("Via", HdrName::Via),
            ("v", HdrName::Via),
            ("V", HdrName::Via),
            ("VIA", HdrName::Via),
            ("f", HdrName::From),
            ("from", HdrName::From),
            ("t", HdrName::To),
            ("TO", HdrName::To),
            ("i", HdrName::CallId),
            ("Call-Id", HdrName::CallId),
            ("m", HdrName::Contact),
            ("l", HdrName::ContentLength),
            ("content-LENGTH", HdrName::ContentLength),
            ("k", HdrName::Supported),
            ("s", HdrName::Subject),
            ("c", HdrName::ContentType),
            ("e", HdrName::ContentEncoding),
            ("o", HdrName::Event),
            ("r", HdrName::ReferTo),
            ("u", HdrName::AllowEvents),
            ("x", HdrName::Other),
            ("CSeq", HdrName::CSeq),
            ("Max-Forwards", HdrName::MaxForwards),
            ("Record-Route", HdrName::RecordRoute),
            ("WWW-Authenticate", HdrName::WwwAuthenticate),
            ("Proxy-Authorization", HdrName::ProxyAuthorization),
            ("Proxy-Authenticate", HdrName::ProxyAuthenticate),
            ("User-Agent", HdrName::UserAgent),
            ("Min-Expires", HdrName::MinExpires),
            ("X-Foo", HdrName::Other),
            ("", HdrName::Other),
            ("Vias", HdrName::Other),
            ("Path", HdrName::Path),
            ("Route", HdrName::Route),
        ];
        for &(n, k) in table {
            assert_eq!(HdrName::from_bytes(n.as_bytes()), k, "{n}");
            if k != HdrName::Other && n.len() > 1 {
                assert!(k.canonical().eq_ignore_ascii_case(n), "{n}");
            }
        }
        assert_eq!(HdrName::CallId.canonical(), "Call-ID");
        assert_eq!(HdrName::Other.canonical(), "");
    }

    #[test]
    fn vias() {
        let v = via!("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport" => "UDP", "192.0.2.1", Some(5060), ";branch=z9hG4bK776asdhds;rport");
        assert_eq!(v.branch(), Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), None);
        let v = via!("sip / 2.0 / tcp\r\n  host.example.com ; received=10.0.0.1 ; rport=1234" => "tcp", "host.example.com", None, "; received=10.0.0.1 ; rport=1234");
        assert_eq!(v.received(), Some(&b"10.0.0.1"[..]));
        assert_eq!(v.rport(), Some(Some(1234)));
        let v = via!("SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKx" => "TLS", "[2001:db8::1]", Some(5061), ";branch=z9hG4bKx");
        assert_eq!(v.rport(), None);
        via!("SIP/2.0/WSS h_1.invalid : 443" => "WSS", "h_1.invalid", Some(443), "");
        via!("  SIP/2.0/UDP a  " => "UDP", "a", None, "");
        let v = via!("SIP/2.0/UDP a;rport=99999" => "UDP", "a", None, ";rport=99999");
        assert_eq!(v.rport(), Some(None));
        via!("SIP/2.0/UDP" => Err);
        via!("SIP/2.0/UDP " => Err);
        via!("SIP/2.0/UDPhost" => Err);
        via!("SIP/3.0/UDP h" => Err);
        via!("HTTP/2.0/UDP h" => Err);
        via!("SIP/2.0/UDP h:99999" => Err);
        via!("SIP/2.0/UDP h:" => Err);
        via!("SIP/2.0/UDP [::1" => Err);
        via!("SIP/2.0/UDP []" => Err);
        via!("SIP/2.0/UDP a, SIP/2.0/UDP b" => Err);
        via!("SIP/2.0/UDP a b" => Err);
        via!("" => Err);
    }

    macro_rules! na {
        ($v:expr => Err) => {
            assert_eq!(
                NameAddr::parse($v.as_bytes()),
                Err(ParseError::BadNameAddr),
                "{:?}",
                $v
            )
        };
        ($v:expr => $display:expr, $uri:expr, $params:expr) => {{
            let n = NameAddr::parse($v.as_bytes()).unwrap_or_else(|e| panic!("{:?}: {e}", $v));
            assert_eq!(n.display, $display.map(|d: &str| d.as_bytes()), "{:?}", $v);
            assert_eq!(n.uri, $uri.as_bytes(), "{:?}", $v);
            assert_eq!(n.params.raw, $params.as_bytes(), "{:?}", $v);
            n
        }};
    }

    #[test]
    fn name_addrs() {
        let n = na!("\"Alice \\\"A\\\" Smith\" <sip:alice@atlanta.com>;tag=1928301774" => Some("Alice \\\"A\\\" Smith"), "sip:alice@atlanta.com", ";tag=1928301774");
        assert_eq!(n.tag(), Some(&b"1928301774"[..]));
        na!("Bob <sips:bob@biloxi.com> ;tag=a6c85cf" => Some("Bob"), "sips:bob@biloxi.com", ";tag=a6c85cf");
        na!("Bob  Jr\r\n <sip:bob@b;transport=tcp>" => Some("Bob  Jr"), "sip:bob@b;transport=tcp", "");
        na!("<sip:b@c>" => None::<&str>, "sip:b@c", "");
        na!("< sip:b@c >" => None::<&str>, "sip:b@c", "");
        let n = na!("sip:+12125551212@server.phone2net.com;tag=887s" => None::<&str>, "sip:+12125551212@server.phone2net.com", ";tag=887s");
        assert_eq!(n.tag(), Some(&b"887s"[..]));
        assert_eq!(n.uri_parsed().unwrap().user, Some(&b"+12125551212"[..]));
        na!("tel:+1-201-555-0123" => None::<&str>, "tel:+1-201-555-0123", "");
        let n = na!("<sip:a@b>;expires=60;q=0.5;+sip.instance=\"<urn:uuid:1>\"" => None::<&str>, "sip:a@b", ";expires=60;q=0.5;+sip.instance=\"<urn:uuid:1>\"");
        assert_eq!(
            n.params.get(b"+sip.instance"),
            Some(Some(&b"\"<urn:uuid:1>\""[..]))
        );
        assert_eq!(n.tag(), None);
        na!("" => Err);
        na!("Alice" => Err);
        na!("\"Alice\"" => Err);
        na!("\"Alice <sip:a@b>" => Err);
        na!("<sip:a@b" => Err);
        na!("<>" => Err);
        na!("<sip:a@b> junk" => Err);
        na!("<1sip:a@b>" => Err);
        na!("sip:a@b junk" => Err);
        na!("\"x\" junk <sip:a@b>" => Err);
        // Quoted '<' in a header param of a bare addr-spec.
        let n = na!("sip:a@192.0.2.1:5060;+sip.instance=\"<urn:uuid:f81d4fae>\";reg-id=1" => None::<&str>, "sip:a@192.0.2.1:5060", ";+sip.instance=\"<urn:uuid:f81d4fae>\";reg-id=1");
        assert_eq!(n.params.get(b"reg-id"), Some(Some(&b"1"[..])));
        // Lenient unquoted display names.
        na!("Bob \"Jr\" <sip:b@c>" => Some("Bob \"Jr\""), "sip:b@c", "");
        na!("bob@example.com <sip:b@c>" => Some("bob@example.com"), "sip:b@c", "");
        na!("Bob \"Jr <sip:b@c>" => Err);
    }

    #[test]
    fn cseq() {
        let c = CSeq::parse(b"4711 INVITE").unwrap();
        assert_eq!(
            (c.num, c.method, c.method_bytes),
            (4711, Method::Invite, &b"INVITE"[..])
        );
        let c = CSeq::parse(b" 2147483647\t\r\n FOO ").unwrap();
        assert_eq!(
            (c.num, c.method, c.method_bytes),
            (2147483647, Method::Other, &b"FOO"[..])
        );
        for bad in [
            "2147483648 INVITE",
            "INVITE",
            "1",
            "1INVITE",
            "-1 INVITE",
            "1 INVITE x",
            "",
            "99999999999 ACK",
            "1 INV@ITE",
        ] {
            assert_eq!(
                CSeq::parse(bad.as_bytes()),
                Err(ParseError::BadCSeq),
                "{bad}"
            );
        }
    }

    #[test]
    fn qvalues() {
        for (q, want) in [
            ("0", Some(0)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("1.000", Some(1000)),
            ("1.", Some(1000)),
            ("0.", Some(0)),
            ("1.001", None),
            ("0.1234", None),
            ("2", None),
            (".5", None),
            ("", None),
            ("0.x", None),
            ("00.5", None),
        ] {
            assert_eq!(parse_qvalue(q.as_bytes()), want, "{q}");
        }
    }

    #[test]
    fn params_get() {
        let p = Params {
            raw: b";Transport=TCP;lr;maddr=239.255.255.1;ttl=15",
        };
        assert_eq!(p.get(b"transport"), Some(Some(&b"TCP"[..])));
        assert_eq!(p.get(b"LR"), Some(None));
        assert_eq!(p.get(b"user"), None);
        assert_eq!(p.iter().count(), 4);
        assert!(Params::default().is_empty());
    }
}
