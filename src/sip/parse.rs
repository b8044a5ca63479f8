//! Message framing and the header index.
//!
//! One pass over the start line and the header section, httparse-style: no
//! allocation beyond the reused `Parsed::headers` vector, no copies, every byte
//! checked against a class table. Values are only located here; the typed
//! views in `hdr.rs` / `uri.rs` parse them on demand.

use super::lex::{self, TOKEN, URI_CHAR, VALUE};
use super::{HdrName, Method, ParseError, Span};

/// How the message was received: a datagram is complete as received (a missing
/// Content-Length means "the rest"); a stream may need more bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Datagram,
    Stream,
}

/// Result of a parse that may need more input (streams only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    Complete(T),
    Partial,
}

impl<T> Status<T> {
    pub fn is_complete(&self) -> bool {
        matches!(self, Status::Complete(_))
    }
}

/// Configured maxima: every table has one.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_headers: usize,
    pub max_msg_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 128,
            max_msg_len: 65535,
        }
    }
}

/// One header field line: classified name, name span and value span (value
/// trimmed of surrounding whitespace; folded continuation lines stay inside
/// the value span and are treated as whitespace by the typed parsers).
/// A comma-separated multi-value header line stays ONE entry here; the typed
/// iterators (Contact, Via, Route) split values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HdrName,
    pub name_span: Span,
    pub value: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
        version: Span,
    },
    Response {
        code: u16,
        reason: Span,
        version: Span,
    },
}

/// The reusable parse result: offsets into the caller's buffer.
///
/// After an `Err` or `Status::Partial` its contents are unspecified (but
/// always safe to read).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub start: StartLine,
    pub headers: Vec<Header>,
    /// Offset of the CRLF that ends the header section (insert point for new headers).
    pub headers_end: u32,
    pub body: Span,
    /// Total length of the message (start line through body) within the buffer.
    pub msg_len: u32,
    /// Offset of the start line (after skipped keep-alive CRLFs).
    msg_start: u32,
    /// The Content-Length value seen while framing, if any.
    content_length: Option<u32>,
}

impl Default for Parsed {
    fn default() -> Self {
        Parsed {
            start: StartLine::Response {
                code: 0,
                reason: Span::EMPTY,
                version: Span::EMPTY,
            },
            headers: Vec::with_capacity(32),
            headers_end: 0,
            body: Span::EMPTY,
            msg_len: 0,
            msg_start: 0,
            content_length: None,
        }
    }
}

impl Parsed {
    /// Index of the first header of kind `name`.
    pub fn first(&self, name: HdrName) -> Option<usize> {
        self.headers.iter().position(|h| h.name == name)
    }

    /// Offset of the start line in the buffer (leading CRLF keep-alives are
    /// skipped); the message is `buf[msg_start()..msg_start() + msg_len]`.
    pub fn msg_start(&self) -> usize {
        self.msg_start as usize
    }

    /// Offset one past the end of the message (`Complete(n)`'s `n`).
    pub fn msg_end(&self) -> usize {
        self.msg_start as usize + self.msg_len as usize
    }

    /// Content-Length as validated during framing (`None` when absent).
    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    fn reset(&mut self) {
        self.start = StartLine::Response {
            code: 0,
            reason: Span::EMPTY,
            version: Span::EMPTY,
        };
        self.headers.clear();
        self.headers_end = 0;
        self.body = Span::EMPTY;
        self.msg_len = 0;
        self.msg_start = 0;
        self.content_length = None;
    }
}

/// Internal: "ran out of bytes" vs a real error.
enum Stop {
    Incomplete,
    Err(ParseError),
}

impl From<ParseError> for Stop {
    fn from(e: ParseError) -> Stop {
        Stop::Err(e)
    }
}

type PResult<T> = Result<T, Stop>;

#[inline]
fn byte(b: &[u8], i: usize) -> PResult<u8> {
    b.get(i).copied().ok_or(Stop::Incomplete)
}

/// Consumes CRLF or a bare LF at `i`; `bad` otherwise.
#[inline]
fn eol(b: &[u8], i: usize, bad: ParseError) -> PResult<usize> {
    match byte(b, i)? {
        b'\n' => Ok(i + 1),
        b'\r' => match byte(b, i + 1)? {
            b'\n' => Ok(i + 2),
            _ => Err(Stop::Err(bad)),
        },
        _ => Err(Stop::Err(bad)),
    }
}

#[inline]
fn skip_sp(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// Matches `SIP/2.0` (case-insensitive, RFC 3261 §7.1) at `i`; a valid
/// prefix cut off by the end of input is `Incomplete`.
#[inline]
fn version(b: &[u8], i: usize) -> PResult<usize> {
    const V: &[u8; 7] = b"SIP/2.0";
    for (k, &want) in V.iter().enumerate() {
        let c = byte(b, i + k)?;
        if c.to_ascii_uppercase() != want {
            return Err(Stop::Err(ParseError::BadVersion));
        }
    }
    Ok(i + V.len())
}

/// Index of the first byte at or after `i` that cannot be part of a header
/// value (CR, LF, C0 controls except HT) or `b.len()`. Eight bytes at a time
/// while no byte below 0x20 is near.
#[inline]
fn scan_value(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    loop {
        match b.get(i..i + 8) {
            Some(chunk) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(chunk);
                let w = u64::from_le_bytes(a);
                // Bytes < 0x20 (Hacker's Delight "hasless"); false positives
                // only occur above a true hit, so the lowest flag is exact.
                let m = w.wrapping_sub(LO * 0x20) & !w & HI;
                if m == 0 {
                    i += 8;
                    continue;
                }
                i += (m.trailing_zeros() / 8) as usize;
            }
            None => {
                while matches!(b.get(i), Some(&c) if VALUE[c as usize]) {
                    i += 1;
                }
                if i >= b.len() {
                    return b.len();
                }
            }
        }
        // b[i] is a C0 control: HT continues the value, anything else ends it.
        if b.get(i) != Some(&b'\t') {
            return i;
        }
        i += 1;
    }
}

fn start_line(b: &[u8], pos: usize) -> PResult<(StartLine, usize)> {
    let tok_end = lex::scan_class(b, pos, &TOKEN);
    let c = byte(b, tok_end)?;
    if tok_end == pos {
        return Err(Stop::Err(ParseError::BadStartLine));
    }
    if c == b'/' {
        // A method token cannot contain '/': this is a status line.
        let i = version(b, pos)?;
        let version = Span::new(pos, i);
        if byte(b, i)? != b' ' {
            return Err(Stop::Err(ParseError::BadVersion));
        }
        let i = skip_sp(b, i + 1);
        let mut code: u16 = 0;
        for k in 0..3 {
            let d = byte(b, i + k)?;
            if !d.is_ascii_digit() {
                return Err(Stop::Err(ParseError::BadStatusCode));
            }
            code = code * 10 + u16::from(d - b'0');
        }
        if !(100..=699).contains(&code) {
            return Err(Stop::Err(ParseError::BadStatusCode));
        }
        let mut i = i + 3;
        let rs;
        match byte(b, i)? {
            b' ' | b'\t' => {
                i = skip_sp(b, i);
                rs = i;
                i = scan_value(b, i);
            }
            b'\r' | b'\n' => rs = i,
            _ => return Err(Stop::Err(ParseError::BadStatusCode)),
        }
        let mut re = i;
        while re > rs && matches!(b.get(re - 1), Some(b' ' | b'\t')) {
            re -= 1;
        }
        if i >= b.len() {
            return Err(Stop::Incomplete);
        }
        let next = eol(b, i, ParseError::BadStartLine)?;
        return Ok((
            StartLine::Response {
                code,
                reason: Span::new(rs, re),
                version,
            },
            next,
        ));
    }
    if c != b' ' {
        return Err(Stop::Err(ParseError::BadMethod));
    }
    let method_span = Span::new(pos, tok_end);
    let method = Method::from_bytes(b.get(pos..tok_end).unwrap_or(&[]));
    let us = skip_sp(b, tok_end);
    let ue = lex::scan_class(b, us, &URI_CHAR);
    let c = byte(b, ue)?;
    if ue == us || !matches!(c, b' ' | b'\t') {
        return Err(Stop::Err(ParseError::BadRequestUri));
    }
    let vs = skip_sp(b, ue);
    let ve = match version(b, vs) {
        Ok(ve) => ve,
        Err(Stop::Err(_)) => return Err(Stop::Err(request_version_error(b, vs))),
        Err(e) => return Err(e),
    };
    let i = skip_sp(b, ve);
    let next = eol(b, i, ParseError::BadVersion)?;
    Ok((
        StartLine::Request {
            method,
            method_span,
            uri: Span::new(us, ue),
            version: Span::new(vs, ve),
        },
        next,
    ))
}

/// Why the version of a request line did not match (cold path): `SIP/x.y`
/// other than 2.0 is an unsupported version (505); whitespace inside the
/// Request-URI shows as a line that still ends in `SIP/2.0`.
#[cold]
fn request_version_error(b: &[u8], vs: usize) -> ParseError {
    let rest = b.get(vs..).unwrap_or(&[]);
    let line = rest
        .get(..lex::find_any(rest, 0, [b'\r', b'\n']))
        .unwrap_or(rest);
    let is_version = |t: &[u8]| {
        t.len() > 4
            && t.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
            && t.get(4..).is_some_and(|v| {
                v.iter().all(|c| c.is_ascii_digit() || *c == b'.')
                    && v.iter().filter(|c| **c == b'.').count() == 1
            })
    };
    let mut last = line;
    while let Some(c) = last.last() {
        if matches!(c, b' ' | b'\t') {
            last = last.get(..last.len() - 1).unwrap_or(&[]);
        } else {
            break;
        }
    }
    let tok_start = last
        .iter()
        .rposition(|c| matches!(c, b' ' | b'\t'))
        .map_or(0, |p| p + 1);
    let tok = last.get(tok_start..).unwrap_or(&[]);
    if tok_start == 0 && is_version(tok) {
        ParseError::UnsupportedVersion
    } else if tok_start > 0 && tok.eq_ignore_ascii_case(b"SIP/2.0") {
        ParseError::BadRequestUri
    } else {
        ParseError::BadVersion
    }
}

/// Whether the control byte at `i` is escaped by a quoted-pair inside a
/// quoted string (RFC 3261 §25.1: quoted-pair = "\\" (%x00-09 / %x0B-0C /
/// %x0E-7F)). `vs` is where the value starts; `state` = (scan position,
/// inside quotes) carries the scan across calls for one value, so the work
/// stays linear in its length (a state from an earlier header, below `vs`,
/// starts over: nothing is reset on the hot path).
#[cold]
fn quoted_pair_at(b: &[u8], vs: usize, i: usize, state: &mut (usize, bool)) -> bool {
    if matches!(b.get(i), Some(b'\r' | b'\n') | None) {
        return false;
    }
    if state.0 < vs {
        *state = (vs, false);
    }
    let (mut j, mut in_q) = *state;
    let mut escaped = false;
    while j < i {
        match b.get(j) {
            Some(b'"') => in_q = !in_q,
            Some(b'\\') if in_q => {
                if j + 1 == i {
                    escaped = true;
                }
                j += 1;
            }
            _ => {}
        }
        j += 1;
    }
    *state = (j.max(i + 1), in_q);
    escaped
}

/// Header section: returns (headers_end, body_start, content_length).
///
/// `STRICT = false` (only for [`salvage`]) skips the Content-Length checks.
#[inline(always)]
fn header_lines<const STRICT: bool>(
    b: &[u8],
    mut i: usize,
    limits: &Limits,
    out: &mut Parsed,
) -> PResult<(usize, usize, Option<u32>)> {
    let mut cl: Option<u32> = None;
    // Quoted-pair scan state, see quoted_pair_at.
    let mut quotes = (0usize, false);
    loop {
        match byte(b, i)? {
            b'\r' => {
                return match byte(b, i + 1)? {
                    b'\n' => Ok((i, i + 2, cl)),
                    _ => Err(Stop::Err(ParseError::BadHeaderLine)),
                }
            }
            b'\n' => return Ok((i, i + 1, cl)),
            _ => {}
        }
        // Name.
        let ns = i;
        let ne = lex::scan_class(b, i, &TOKEN);
        let c = byte(b, ne)?;
        if ne == ns {
            return Err(Stop::Err(ParseError::BadHeaderName));
        }
        i = ne;
        if c != b':' {
            if !matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
                return Err(Stop::Err(ParseError::BadHeaderName));
            }
            i = skip_sp(b, i);
            if byte(b, i)? != b':' {
                return Err(Stop::Err(ParseError::BadHeaderLine));
            }
        }
        i += 1;
        // Value, including folded continuation lines.
        let vs = i;
        let ve = loop {
            i = scan_value(b, i);
            let line_end = i;
            i = match byte(b, i)? {
                b'\n' => i + 1,
                b'\r' => match byte(b, i + 1)? {
                    b'\n' => i + 2,
                    _ => return Err(Stop::Err(ParseError::BadHeaderLine)),
                },
                _ if quoted_pair_at(b, vs, i, &mut quotes) => {
                    i += 1;
                    continue;
                }
                _ => return Err(Stop::Err(ParseError::BadHeaderLine)),
            };
            // Need the next byte to know whether the value continues.
            if !matches!(byte(b, i)?, b' ' | b'\t') {
                break line_end;
            }
        };
        let (vs, ve) = lex::trim_range(b, vs, ve);
        if out.headers.len() >= limits.max_headers {
            return Err(Stop::Err(ParseError::TooManyHeaders));
        }
        let name = HdrName::from_bytes(b.get(ns..ne).unwrap_or(&[]));
        if STRICT && name == HdrName::ContentLength {
            let v =
                lex::parse_u32(b.get(vs..ve).unwrap_or(&[])).ok_or(ParseError::BadContentLength)?;
            if cl.is_some_and(|prev| prev != v) {
                return Err(Stop::Err(ParseError::BadContentLength));
            }
            cl = Some(v);
        }
        out.headers.push(Header {
            name,
            name_span: Span::new(ns, ne),
            value: Span::new(vs, ve),
        });
    }
}

/// Parses the start line and indexes the header fields of one message.
///
/// Checks framing only (start line, header syntax, Content-Length against the
/// bytes present). Mandatory-header and typed checks are in
/// [`super::SipMsg::check_request`]. `out` is cleared and reused.
///
/// Leading CRLFs (keep-alives) are skipped; input holding nothing else is
/// [`ParseError::Empty`]. `Complete(n)`: the message ends at `buf[n]`
/// (leading CRLFs included in `n`); for a datagram, bytes past the
/// Content-Length are ignored.
pub fn parse(
    buf: &[u8],
    framing: Framing,
    limits: &Limits,
    out: &mut Parsed,
) -> Result<Status<usize>, ParseError> {
    out.reset();
    let mut pos = 0;
    while matches!(buf.get(pos), Some(b'\r' | b'\n')) {
        pos += 1;
    }
    if pos >= buf.len() {
        return Err(ParseError::Empty);
    }
    if buf.len() > u32::MAX as usize {
        return Err(ParseError::TooLarge);
    }
    let msg_start = pos;
    out.msg_start = msg_start as u32;
    // Never look further than max_msg_len bytes past the start line.
    let window = buf
        .get(..msg_start.saturating_add(limits.max_msg_len).min(buf.len()))
        .unwrap_or(buf);
    let available = buf.len() - msg_start;
    let incomplete = |e: ParseError| -> Result<Status<usize>, ParseError> {
        if available >= limits.max_msg_len {
            Err(ParseError::TooLarge)
        } else if framing == Framing::Stream {
            Ok(Status::Partial)
        } else {
            Err(e)
        }
    };

    let (start, i) = match start_line(window, pos) {
        Ok(v) => v,
        Err(Stop::Incomplete) => return incomplete(ParseError::MissingEndOfHeaders),
        Err(Stop::Err(e)) => return Err(e),
    };
    out.start = start;
    let (headers_end, body_start, cl) = match header_lines::<true>(window, i, limits, out) {
        Ok(v) => v,
        Err(Stop::Incomplete) => return incomplete(ParseError::MissingEndOfHeaders),
        Err(Stop::Err(e)) => return Err(e),
    };
    out.headers_end = headers_end as u32;
    out.content_length = cl;

    let body_end = match cl {
        Some(n) => {
            let end = body_start as u64 + u64::from(n);
            if end - msg_start as u64 > limits.max_msg_len as u64 {
                return Err(ParseError::TooLarge);
            }
            if end > buf.len() as u64 {
                return match framing {
                    Framing::Stream => Ok(Status::Partial),
                    Framing::Datagram => Err(ParseError::TruncatedBody),
                };
            }
            end as usize
        }
        None => match framing {
            Framing::Stream => return Err(ParseError::BadContentLength),
            Framing::Datagram => {
                if buf.len() - msg_start > limits.max_msg_len {
                    return Err(ParseError::TooLarge);
                }
                buf.len()
            }
        },
    };
    out.body = Span::new(body_start, body_end);
    out.msg_len = (body_end - msg_start) as u32;
    Ok(Status::Complete(body_end))
}

/// After [`parse`] refused a datagram request: indexes its start line and
/// header fields leniently (the Request-URI and version are not checked,
/// Content-Length is ignored, the body is the rest of the datagram) so that
/// an error reply can copy Via, From, To, Call-ID and CSeq. False when the
/// message does not start with a request line or its header section
/// cannot be delimited; `out` then holds nothing usable. Cold path: only
/// ever run on bad input.
#[cold]
pub fn salvage(buf: &[u8], limits: &Limits, out: &mut Parsed) -> bool {
    out.reset();
    let mut pos = 0;
    while matches!(buf.get(pos), Some(b'\r' | b'\n')) {
        pos += 1;
    }
    let window = buf
        .get(..pos.saturating_add(limits.max_msg_len).min(buf.len()))
        .unwrap_or(buf);
    let tok_end = lex::scan_class(window, pos, &TOKEN);
    if tok_end == pos || window.get(tok_end) != Some(&b' ') {
        return false;
    }
    let Some(lf) = window
        .get(tok_end..)
        .and_then(|r| r.iter().position(|&c| c == b'\n'))
        .map(|p| p + tok_end)
    else {
        return false;
    };
    let mut le = lf;
    if le > tok_end && window.get(le - 1) == Some(&b'\r') {
        le -= 1;
    }
    out.msg_start = pos as u32;
    out.start = StartLine::Request {
        method: Method::from_bytes(window.get(pos..tok_end).unwrap_or(&[])),
        method_span: Span::new(pos, tok_end),
        uri: Span::new((tok_end + 1).min(le), le),
        version: Span::new(le, le),
    };
    match header_lines::<false>(window, lf + 1, limits, out) {
        Ok((headers_end, body_start, _)) => {
            out.headers_end = headers_end as u32;
            out.body = Span::new(body_start, window.len());
            out.msg_len = (window.len() - pos) as u32;
            true
        }
        Err(_) => {
            out.reset();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::{parse_err, parse_ok, s, INVITE, OK200, REGISTER};
    use super::super::SipMsg;
    use super::*;

    /// `req!(name, bytes, |msg, parsed, n| { ... })`: datagram that must parse
    /// completely; `req!(name, bytes, Err(e))` / `req!(name, stream bytes, ...)`.
    macro_rules! req {
        ($name:ident, $buf:expr, |$m:ident, $p:ident, $n:ident| $body:block) => {
            #[test]
            fn $name() {
                let buf: &[u8] = $buf;
                let mut $p = Parsed::default();
                let st = parse(buf, Framing::Datagram, &Limits::default(), &mut $p);
                let $n = match st {
                    Ok(Status::Complete(n)) => n,
                    other => panic!("{:?} for {:?}", other, s(buf)),
                };
                let $m = SipMsg::new(buf, &$p);
                let _ = (&$m, $n);
                $body
            }
        };
        ($name:ident, $buf:expr, $want:expr) => {
            #[test]
            fn $name() {
                let buf: &[u8] = $buf;
                assert_eq!(parse_err(buf, Framing::Datagram), $want, "{:?}", s(buf));
            }
        };
        ($name:ident, stream $buf:expr, $want:expr) => {
            #[test]
            fn $name() {
                let buf: &[u8] = $buf;
                assert_eq!(parse_err(buf, Framing::Stream), $want, "{:?}", s(buf));
            }
        };
    }

    req!(register_sample, REGISTER, |m, p, n| {
        assert_eq!(n, REGISTER.len());
        assert_eq!(m.method(), Some(Method::Register));
        assert_eq!(m.ruri(), Some(&b"sips:ss2.biloxi.example.com"[..]));
        assert_eq!(p.headers.len(), 10);
        assert_eq!(p.headers[0].name, HdrName::Via);
        assert_eq!(p.headers[7].name, HdrName::Authorization);
        assert_eq!(p.headers[9].name, HdrName::ContentLength);
        assert_eq!(p.content_length(), Some(0));
        assert_eq!(p.headers_end as usize, REGISTER.len() - 2);
        assert_eq!(p.body, Span::new(REGISTER.len(), REGISTER.len()));
        assert_eq!(p.msg_len as usize, REGISTER.len());
        let StartLine::Request {
            version,
            method_span,
            ..
        } = p.start
        else {
            panic!()
        };
        assert_eq!(version.get(REGISTER), b"SIP/2.0");
        assert_eq!(method_span.get(REGISTER), b"REGISTER");
    });

    req!(invite_with_body, INVITE, |m, _p, n| {
        assert_eq!(n, INVITE.len());
        assert!(m.body().starts_with(b"v=0\r\n"));
        assert!(m.body().ends_with(b"PCMU/8000\r\n"));
        assert_eq!(m.body().len(), 149);
    });

    req!(response_sample, OK200, |m, p, _n| {
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.reason(), Some(&b"OK"[..]));
        assert!(!m.is_request());
        assert_eq!(p.first(HdrName::CSeq), Some(5));
        assert_eq!(m.method_bytes(), b"INVITE");
    });

    req!(
        response_reason_spaces,
        b"SIP/2.0  180 Ringing  now \r\nl:0\r\n\r\n",
        |m, _p, _n| {
            assert_eq!(m.status(), Some(180));
            assert_eq!(m.reason(), Some(&b"Ringing  now"[..]));
        }
    );

    req!(
        response_empty_reason,
        b"sip/2.0 100\r\n\r\n",
        |m, _p, _n| {
            assert_eq!(m.status(), Some(100));
            assert_eq!(m.reason(), Some(&b""[..]));
        }
    );

    req!(
        response_utf8_reason,
        "SIP/2.0 603 Déclin\r\n\r\n".as_bytes(),
        |m, _p, _n| {
            assert_eq!(m.reason(), Some("Déclin".as_bytes()));
        }
    );

    req!(compact_forms, b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\ni: cid\r\nm: <sip:e@f>\r\nl: 0\r\nk: path\r\ns: hi\r\nc: text/plain\r\ne: gzip\r\no: presence\r\nr: <sip:x@y>\r\nu: dialog\r\nx: other\r\n\r\n", |m, p, _n| {
        let names: Vec<HdrName> = p.headers.iter().map(|h| h.name).collect();
        assert_eq!(names, [HdrName::Via, HdrName::From, HdrName::To, HdrName::CallId, HdrName::Contact,
            HdrName::ContentLength, HdrName::Supported, HdrName::Subject, HdrName::ContentType,
            HdrName::ContentEncoding, HdrName::Event, HdrName::ReferTo, HdrName::AllowEvents, HdrName::Other]);
        assert_eq!(m.call_id(), Some(&b"cid"[..]));
        assert_eq!(m.header_by_name(b"Call-ID"), Some(&b"cid"[..]));
        assert_eq!(m.header_by_name(b"X"), Some(&b"other"[..]));
        assert_eq!(m.header_by_name(b"Event"), Some(&b"presence"[..]));
        assert_eq!(m.check_request(), Err(ParseError::MissingCSeq));
    });

    req!(folding, b"MESSAGE sip:a@b SIP/2.0\r\nSubject: I know you're there,\r\n      pick up the phone\r\n   and talk to me!\r\nVia: SIP/2.0/UDP\r\n\thost.example;\r\n branch=z9hG4bK1\r\nX-Empty:\r\n  \r\nX-Next: 1\r\n\r\n", |m, p, _n| {
        assert_eq!(p.headers.len(), 4);
        assert_eq!(m.header(HdrName::Subject), Some(&b"I know you're there,\r\n      pick up the phone\r\n   and talk to me!"[..]));
        let v = m.top_via().unwrap();
        assert_eq!(v.host, b"host.example");
        assert_eq!(v.branch(), Some(&b"z9hG4bK1"[..]));
        assert_eq!(m.header_by_name(b"x-empty"), Some(&b""[..]));
        assert_eq!(m.header_by_name(b"x-next"), Some(&b"1"[..]));
    });

    req!(
        fold_before_value,
        b"OPTIONS sip:a@b SIP/2.0\r\nSubject:\r\n hello\r\n\r\n",
        |m, _p, _n| {
            assert_eq!(m.header(HdrName::Subject), Some(&b"hello"[..]));
        }
    );

    req!(bare_lf, b"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\nFrom: <sip:a@b>;tag=1\nTo: <sip:a@b>\nCall-ID: c\nCSeq: 1 OPTIONS\nSubject: a\n b\nContent-Length: 4\n\nbody", |m, p, n| {
        assert_eq!(n, m.buf.len());
        assert_eq!(m.body(), b"body");
        assert_eq!(m.header(HdrName::Subject), Some(&b"a\n b"[..]));
        assert_eq!(m.check_request(), Ok(()));
        assert_eq!(p.headers_end as usize, m.buf.len() - 5);
    });

    req!(
        mixed_line_endings,
        b"OPTIONS sip:a@b SIP/2.0\r\nX-A: 1\nX-B: 2\r\n\n",
        |m, p, _n| {
            assert_eq!(p.headers.len(), 2);
            assert_eq!(m.header_by_name(b"x-b"), Some(&b"2"[..]));
        }
    );

    req!(
        space_before_colon_and_trim,
        b"OPTIONS sip:a@b SIP/2.0\r\nVia \t: \t SIP/2.0/UDP h \t\r\n\r\n",
        |m, _p, _n| {
            assert_eq!(m.header(HdrName::Via), Some(&b"SIP/2.0/UDP h"[..]));
        }
    );

    req!(
        leading_keepalives,
        b"\r\n\r\n\nOPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n",
        |m, p, n| {
            assert_eq!(p.msg_start(), 5);
            assert_eq!(n, m.buf.len());
            assert_eq!(p.msg_len as usize, m.buf.len() - 5);
            assert_eq!(p.msg_end(), n);
            assert_eq!(m.method(), Some(Method::Options));
        }
    );

    req!(
        body_without_content_length_is_rest,
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\nhello\r\n",
        |m, p, n| {
            assert_eq!(m.body(), b"hello\r\n");
            assert_eq!(n, m.buf.len());
            assert_eq!(p.content_length(), None);
        }
    );

    req!(
        extra_datagram_bytes_ignored,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nhello",
        |m, _p, n| {
            assert_eq!(m.body(), b"he");
            assert_eq!(n, m.buf.len() - 3);
        }
    );

    req!(
        duplicate_equal_content_length,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 2\r\nl: 002\r\n\r\nhi",
        |m, _p, _n| {
            assert_eq!(m.content_length(), Ok(Some(2)));
        }
    );

    req!(
        other_method_and_odd_uri,
        b"FOO.BAR tel:+1-555;phone-context=x SIP/2.0\r\n\r\n",
        |m, _p, _n| {
            assert_eq!(m.method(), Some(Method::Other));
            assert_eq!(m.method_bytes(), b"FOO.BAR");
            assert_eq!(m.ruri(), Some(&b"tel:+1-555;phone-context=x"[..]));
        }
    );

    req!(
        utf8_values,
        "OPTIONS sip:a@b SIP/2.0\r\nFrom: \"Zoë\" <sip:z@b>\r\n\r\n".as_bytes(),
        |m, _p, _n| {
            assert_eq!(m.from().unwrap().display, Some("Zoë".as_bytes()));
        }
    );

    req!(empty_input, b"", Err(ParseError::Empty));
    req!(only_crlf, b"\r\n\r\n", Err(ParseError::Empty));
    req!(only_crlf_stream, stream b"\r\n", Err(ParseError::Empty));
    req!(
        truncated_start_line,
        b"INVITE sip:bob@biloxi.example.com SIP/2.",
        Err(ParseError::MissingEndOfHeaders)
    );
    req!(
        truncated_headers,
        b"INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n",
        Err(ParseError::MissingEndOfHeaders)
    );
    req!(
        truncated_mid_header,
        b"INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/U",
        Err(ParseError::MissingEndOfHeaders)
    );
    req!(
        truncated_body,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nhello",
        Err(ParseError::TruncatedBody)
    );
    req!(
        bad_content_length,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 1x\r\n\r\nh",
        Err(ParseError::BadContentLength)
    );
    req!(
        negative_content_length,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
        Err(ParseError::BadContentLength)
    );
    req!(
        empty_content_length,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length:\r\n\r\n",
        Err(ParseError::BadContentLength)
    );
    req!(
        huge_content_length,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 99999999999\r\n\r\n",
        Err(ParseError::BadContentLength)
    );
    req!(
        content_length_over_limit,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 4000000000\r\n\r\n",
        Err(ParseError::TooLarge)
    );
    req!(
        conflicting_content_length,
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nhi",
        Err(ParseError::BadContentLength)
    );
    req!(
        header_without_colon,
        b"OPTIONS sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        header_name_only,
        b"OPTIONS sip:a@b SIP/2.0\r\nVia\r\n\r\n",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        bad_header_name,
        b"OPTIONS sip:a@b SIP/2.0\r\nV(a): x\r\n\r\n",
        Err(ParseError::BadHeaderName)
    );
    req!(
        empty_header_name,
        b"OPTIONS sip:a@b SIP/2.0\r\n: x\r\n\r\n",
        Err(ParseError::BadHeaderName)
    );
    req!(
        first_header_folded,
        b"OPTIONS sip:a@b SIP/2.0\r\n Via: x\r\n\r\n",
        Err(ParseError::BadHeaderName)
    );
    req!(
        nul_in_value,
        b"OPTIONS sip:a@b SIP/2.0\r\nX: a\0b\r\n\r\n",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        quoted_pair_of_controls,
        b"OPTIONS sip:a@b SIP/2.0\r\nTo: \"a\\\x00b\\\x07c\\\x7f\" <sip:a@b>\r\nX: \"\\\\\" q\r\n\r\n",
        |m, _p, _n| {
            assert_eq!(m.to().unwrap().display, Some(&b"a\\\x00b\\\x07c\\\x7f"[..]));
            assert_eq!(m.header_by_name(b"x"), Some(&b"\"\\\\\" q"[..]));
        }
    );
    req!(
        quoted_pairs_in_two_headers,
        b"OPTIONS sip:a@b SIP/2.0\r\nX: \"\\\x01\"\r\nY: \" \\\x02\" z \"\\\x03\"\r\n\r\n",
        |m, p, _n| {
            assert_eq!(p.headers.len(), 2);
            assert_eq!(
                m.header_by_name(b"y"),
                Some(&b"\" \\\x02\" z \"\\\x03\""[..])
            );
        }
    );
    req!(
        control_escaped_outside_quotes,
        b"OPTIONS sip:a@b SIP/2.0\r\nX: a\\\x00b\r\n\r\n",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        escaped_backslash_then_control,
        b"OPTIONS sip:a@b SIP/2.0\r\nX: \"a\\\\\x00\"\r\n\r\n",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        quoted_pair_cannot_escape_lf,
        b"OPTIONS sip:a@b SIP/2.0\r\nX: \"a\\\rb\"\r\n\r\n",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        bare_cr_in_value,
        b"OPTIONS sip:a@b SIP/2.0\r\nX: a\rb\r\n\r\n",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        bare_cr_end_of_headers,
        b"OPTIONS sip:a@b SIP/2.0\r\nX: a\r\n\rb",
        Err(ParseError::BadHeaderLine)
    );
    req!(
        binary_garbage,
        b"\x00\xff\xfe\x01\x02garbage",
        Err(ParseError::BadStartLine)
    );
    req!(
        high_bytes_start,
        b"\xc3\xa9INVITE sip:a SIP/2.0\r\n\r\n",
        Err(ParseError::BadStartLine)
    );
    req!(no_uri, b"INVITE\r\n\r\n", Err(ParseError::BadMethod));
    req!(
        missing_uri,
        b"INVITE  SIP/2.0\r\n\r\n",
        Err(ParseError::BadRequestUri)
    );
    req!(
        uri_then_eol,
        b"INVITE sip:a@b\r\n\r\n",
        Err(ParseError::BadRequestUri)
    );
    req!(
        uri_control_char,
        b"INVITE sip:a\x01b SIP/2.0\r\n\r\n",
        Err(ParseError::BadRequestUri)
    );
    req!(
        bad_version,
        b"INVITE sip:a@b SIP/3.0\r\n\r\n",
        Err(ParseError::UnsupportedVersion)
    );
    req!(
        garbage_version,
        b"INVITE sip:a@b SIP/x\r\n\r\n",
        Err(ParseError::BadVersion)
    );
    req!(
        space_in_request_uri,
        b"INVITE sip:a@b; lr SIP/2.0\r\n\r\n",
        Err(ParseError::BadRequestUri)
    );
    req!(
        http_request,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Err(ParseError::BadVersion)
    );
    req!(
        trailing_junk_after_version,
        b"INVITE sip:a@b SIP/2.0 x\r\n\r\n",
        Err(ParseError::BadVersion)
    );
    req!(
        bad_method_char,
        b"INV(TE sip:a SIP/2.0\r\n\r\n",
        Err(ParseError::BadMethod)
    );
    req!(
        http_response,
        b"HTTP/1.1 200 OK\r\n\r\n",
        Err(ParseError::BadVersion)
    );
    req!(
        short_status,
        b"SIP/2.0 20 OK\r\n\r\n",
        Err(ParseError::BadStatusCode)
    );
    req!(
        status_out_of_range,
        b"SIP/2.0 999 Huh\r\n\r\n",
        Err(ParseError::BadStatusCode)
    );
    req!(
        status_four_digits,
        b"SIP/2.0 2000 OK\r\n\r\n",
        Err(ParseError::BadStatusCode)
    );
    req!(
        status_no_space,
        b"SIP/2.0200 OK\r\n\r\n",
        Err(ParseError::BadVersion)
    );

    req!(stream_needs_content_length, stream b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n", Err(ParseError::BadContentLength));
    req!(stream_partial_body, stream b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nhello", Ok(Status::Partial));
    req!(stream_partial_keepalive_prefix, stream b"\r\n\r\nINV", Ok(Status::Partial));
    req!(stream_garbage_is_error, stream b"INV\x00", Err(ParseError::BadMethod));

    #[test]
    fn stream_every_prefix_is_partial() {
        for msg in [REGISTER, INVITE, OK200] {
            for cut in 1..msg.len() {
                let st = parse_err(&msg[..cut], Framing::Stream);
                assert_eq!(
                    st,
                    Ok(Status::Partial),
                    "cut at {cut}: {:?}",
                    s(&msg[..cut])
                );
            }
            assert_eq!(
                parse_err(msg, Framing::Stream),
                Ok(Status::Complete(msg.len()))
            );
        }
    }

    #[test]
    fn datagram_every_prefix_is_an_error() {
        for msg in [REGISTER, INVITE, OK200] {
            for cut in 0..msg.len() {
                let st = parse_err(&msg[..cut], Framing::Datagram);
                assert!(st.is_err(), "cut at {cut}: {st:?}");
            }
        }
    }

    #[test]
    fn stream_pipelined_messages() {
        let mut two = REGISTER.to_vec();
        two.extend_from_slice(b"\r\n\r\n");
        two.extend_from_slice(INVITE);
        let mut p = Parsed::default();
        let n = match parse(&two, Framing::Stream, &Limits::default(), &mut p) {
            Ok(Status::Complete(n)) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(n, REGISTER.len());
        let rest = &two[n..];
        match parse(rest, Framing::Stream, &Limits::default(), &mut p) {
            Ok(Status::Complete(m)) => assert_eq!(m, rest.len()),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.msg_start(), 4);
        assert_eq!(SipMsg::new(rest, &p).method(), Some(Method::Invite));
    }

    #[test]
    fn limits() {
        let mut p = Parsed::default();
        let mut many = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for i in 0..1000 {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&many, Framing::Datagram, &Limits::default(), &mut p),
            Err(ParseError::TooManyHeaders)
        );
        let big = Limits {
            max_headers: 1000,
            max_msg_len: 1 << 20,
        };
        assert_eq!(
            parse(&many, Framing::Datagram, &big, &mut p),
            Ok(Status::Complete(many.len()))
        );
        assert_eq!(p.headers.len(), 1000);
        let exact = Limits {
            max_headers: 1000,
            max_msg_len: many.len(),
        };
        assert!(parse(&many, Framing::Datagram, &exact, &mut p).is_ok());
        let tight = Limits {
            max_headers: 10,
            max_msg_len: 65535,
        };
        assert!(parse(REGISTER, Framing::Datagram, &tight, &mut p).is_ok());
        let tight = Limits {
            max_headers: 9,
            max_msg_len: 65535,
        };
        assert_eq!(
            parse(REGISTER, Framing::Datagram, &tight, &mut p),
            Err(ParseError::TooManyHeaders)
        );

        for framing in [Framing::Datagram, Framing::Stream] {
            let small = Limits {
                max_headers: 128,
                max_msg_len: 100,
            };
            assert_eq!(
                parse(REGISTER, framing, &small, &mut p),
                Err(ParseError::TooLarge),
                "{framing:?}"
            );
            assert_eq!(
                parse(
                    INVITE,
                    framing,
                    &Limits {
                        max_headers: 128,
                        max_msg_len: INVITE.len() - 1
                    },
                    &mut p
                ),
                Err(ParseError::TooLarge)
            );
            assert!(parse(
                INVITE,
                framing,
                &Limits {
                    max_headers: 128,
                    max_msg_len: INVITE.len()
                },
                &mut p
            )
            .is_ok());
            // An endless header section hits the limit, not Partial forever.
            let endless = vec![b'X'; 200];
            let mut msg = b"OPTIONS sip:a SIP/2.0\r\nX: ".to_vec();
            msg.extend_from_slice(&endless);
            assert_eq!(
                parse(&msg, framing, &small, &mut p),
                Err(ParseError::TooLarge)
            );
        }
    }

    #[test]
    fn parsed_is_reused_and_never_shrinks() {
        let mut p = Parsed::default();
        let big = Limits {
            max_headers: 500,
            max_msg_len: 1 << 20,
        };
        let mut many = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        parse(&many, Framing::Datagram, &big, &mut p).unwrap();
        let cap = p.headers.capacity();
        assert!(cap >= 300);
        parse(OK200, Framing::Datagram, &big, &mut p).unwrap();
        assert_eq!(p.headers.len(), 8);
        assert_eq!(p.headers.capacity(), cap);
        assert!(matches!(p.start, StartLine::Response { code: 200, .. }));
        let _ = parse(b"garbage\x00", Framing::Datagram, &big, &mut p);
        assert!(p.headers.is_empty());
        assert_eq!(p.headers.capacity(), cap);
        let p = parse_ok(REGISTER);
        assert_eq!(p.headers.len(), 10);
    }

    #[test]
    fn scan_value_matches_naive() {
        let mut rng = super::super::testdata::Rng(99);
        let alphabet = [
            b'a', b' ', b'\t', b'\r', b'\n', 0, 0x1f, 0x20, 0x7f, 0x80, 0xff, 0xc3,
        ];
        for _ in 0..5000 {
            let len = rng.below(40);
            let v: Vec<u8> = (0..len).map(|_| *rng.pick(&alphabet)).collect();
            for start in 0..=len {
                let naive = v[start..]
                    .iter()
                    .position(|&c| !VALUE[c as usize])
                    .map_or(len, |p| p + start);
                assert_eq!(scan_value(&v, start), naive, "{v:?} from {start}");
            }
        }
    }

    #[test]
    fn salvage_indexes_refused_requests() {
        let mut p = Parsed::default();
        let l = Limits::default();
        let msg = b"\r\nINVITE sip:a@b SIP/9.9\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 1\r\nl: 2\r\nCall-ID: c\r\n\r\nbody";
        assert_eq!(
            parse(msg, Framing::Datagram, &l, &mut p),
            Err(ParseError::UnsupportedVersion)
        );
        assert!(salvage(msg, &l, &mut p));
        let m = SipMsg::new(msg, &p);
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.call_id(), Some(&b"c"[..]));
        assert_eq!(m.top_via().unwrap().host, b"h");
        assert_eq!(m.body(), b"body");
        assert_eq!(p.msg_start(), 2);
        for bad in [
            &b"SIP/2.0 200 OK\r\n\r\n"[..],
            b"INVITE",
            b"INVITE sip:a SIP/2.0",
            b"INVITE sip:a SIP/2.0\r\nX: \x00\r\n\r\n",
            b"\x00\x01",
            b"",
        ] {
            assert!(!salvage(bad, &l, &mut p), "{}", s(bad));
            assert!(p.headers.is_empty());
        }
    }

    #[test]
    fn status_helpers() {
        assert!(Status::Complete(1).is_complete());
        assert!(!Status::<usize>::Partial.is_complete());
    }
}
