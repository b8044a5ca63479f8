//! HTTP/1.1 on a byte stream, sans-IO: request framing (RFC 9112) with the
//! maintained `httparse` crate, the first-bytes test that tells an HTTP
//! request from SIP on a shared port, response writing, and the WebSocket
//! protocol (RFC 6455, [`ws`]).
//!
//! Owns: turning received bytes into whole requests (head through
//! `httparse`, body by `Content-Length`, limits on head bytes, header count
//! and body bytes, pipelining, keep-alive and `Connection: close`) and
//! responses into bytes. Used by the control plane's server
//! (`rpc::http`) and by the script's HTTP route (`kemi::xhttp`, Kamailio's
//! xhttp module) on the SIP stream ports.
//!
//! Never: sockets, clocks, threads, mlua. Bytes in, values or bytes out;
//! malformed input is a [`HeadError`] naming the fault and its status code,
//! never a panic.
//!
//! ```text
//! request-line = method SP request-target SP HTTP-version CRLF
//! header-field = field-name ":" OWS field-value OWS
//! ```

#![forbid(unsafe_code)]

pub mod ws;

/// Bounds on one request (every buffer has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header fields, blank line included.
    pub head_bytes_max: usize,
    /// Header fields per request.
    pub headers_max: usize,
    /// Body bytes (`Content-Length`).
    pub body_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes_max: 16 * 1024,
            headers_max: 64,
            body_bytes_max: 1024 * 1024,
        }
    }
}

/// Why a request was refused, each with its status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    #[error("malformed request line")]
    BadRequestLine,
    #[error("malformed header field")]
    BadHeader,
    #[error("request head is not UTF-8")]
    NotUtf8,
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    TransferEncoding,
    #[error("HTTP version not supported")]
    Version,
    #[error("request-target must be origin-form (start with '/')")]
    Target,
    #[error("request body too large")]
    BodyTooLarge,
}

impl HeadError {
    /// The status code to answer before closing the connection.
    pub fn status(self) -> u16 {
        match self {
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::TransferEncoding => 501,
            HeadError::Version => 505,
            HeadError::BodyTooLarge => 413,
            _ => 400,
        }
    }

    /// A short name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HeadError::BadRequestLine => "bad_request_line",
            HeadError::BadHeader => "bad_header",
            HeadError::NotUtf8 => "not_utf8",
            HeadError::BadContentLength => "bad_content_length",
            HeadError::HeadTooLarge => "head_too_large",
            HeadError::TooManyHeaders => "too_many_headers",
            HeadError::TransferEncoding => "transfer_encoding",
            HeadError::Version => "version",
            HeadError::Target => "target",
            HeadError::BodyTooLarge => "body_too_large",
        }
    }
}

/// A parsed request head: what the framing needs, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request-target as sent (`/path?query`).
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    pub content_length: usize,
    /// The connection stays open after the response (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The `Authorization` header value, when one was sent (never logged).
    pub authorization: Option<String>,
    /// `Upgrade: websocket` was asked for (RFC 6455 §4.1).
    pub upgrade_websocket: bool,
    /// Bytes of the head from the start of the buffer: leading empty lines,
    /// request line, header fields and the blank line.
    pub head_len: usize,
}

impl RequestHead {
    /// The target without its query string or fragment.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("/")
    }

    /// Head plus body: where the next pipelined request starts.
    pub fn total_len(&self) -> usize {
        self.head_len + self.content_length
    }
}

/// Parses the head at the start of `buf`. `Ok(None)`: more bytes are needed
/// (and the head so far is within [`Limits::head_bytes_max`]). Leading empty
/// lines are skipped (RFC 9112 §2.2). The body is not looked at: a request
/// is whole once `buf.len() >= head.total_len()`.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    debug_assert!(limits.headers_max > 0);
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.head_bytes_max {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(map_error(e, buf)),
    };
    if head_len > limits.head_bytes_max {
        return Err(HeadError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::BadRequestLine);
    };
    let version_minor = match version {
        0 | 1 => version,
        _ => return Err(HeadError::Version),
    };
    let mut content_length: Option<usize> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut connection_upgrade = false;
    let mut upgrade_ws = false;
    let mut expect_continue = false;
    let mut authorization = None;
    for h in req.headers.iter() {
        let name = h.name;
        let value = trim(h.value);
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(value).map_err(|_| HeadError::BadContentLength)?;
            if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::BadContentLength);
            }
            let n: usize = text.parse().map_err(|_| HeadError::BadContentLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws |= value
                .split(|&b| b == b',')
                .map(trim)
                .any(|t| t.eq_ignore_ascii_case(b"websocket"));
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("authorization") {
            let text = std::str::from_utf8(value).map_err(|_| HeadError::NotUtf8)?;
            authorization = Some(text.to_string());
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.body_bytes_max {
        return Err(HeadError::BodyTooLarge);
    }
    let keep_alive = if version_minor == 1 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };
    Ok(Some(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        version_minor,
        content_length,
        keep_alive,
        expect_continue,
        authorization,
        upgrade_websocket: upgrade_ws && connection_upgrade,
        head_len,
    }))
}

/// httparse's error, named as this module names faults. A version token
/// that is not `HTTP/1.x` is 505 when it still looks like HTTP.
fn map_error(e: httparse::Error, buf: &[u8]) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => {
            if request_line_version(buf).is_some_and(|v| v.starts_with(b"HTTP/")) {
                HeadError::Version
            } else {
                HeadError::BadRequestLine
            }
        }
        _ if request_line_ok(buf) => HeadError::BadHeader,
        _ if std::str::from_utf8(first_line(buf)).is_err() => HeadError::NotUtf8,
        _ => HeadError::BadRequestLine,
    }
}

/// The request line alone parses (the fault is in a header field).
fn request_line_ok(buf: &[u8]) -> bool {
    let mut line = first_line(buf).to_vec();
    line.extend_from_slice(b"\r\n\r\n");
    matches!(
        httparse::Request::new(&mut []).parse(&line),
        Ok(httparse::Status::Complete(_))
    )
}

/// The request line (leading empty lines skipped, line end excluded).
fn first_line(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = buf.get(start..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    rest.get(..end).unwrap_or_default()
}

/// The third token of the request line.
fn request_line_version(buf: &[u8]) -> Option<&[u8]> {
    let line = first_line(buf);
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    parts.nth(2)
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(s, |p| p + 1);
    v.get(s..e).unwrap_or_default()
}

/// A parsed response head (clients: `sipshard ctl`, tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// `1` for HTTP/1.1.
    pub version_minor: u8,
    pub content_length: Option<usize>,
    /// Header fields, names as sent, values trimmed.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
}

impl ResponseHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Parses a response head at the start of `buf`; `Ok(None)`: more bytes
/// are needed.
pub fn parse_response_head(buf: &[u8], limits: &Limits) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.head_bytes_max => {
            return Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(httparse::Error::Status | httparse::Error::Token) => {
            return Err(HeadError::BadRequestLine)
        }
        Err(_) => return Err(HeadError::BadHeader),
    };
    let (Some(status), Some(version_minor)) = (resp.code, resp.version) else {
        return Err(HeadError::BadRequestLine);
    };
    let mut content_length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(trim(h.value))
                .ok()
                .filter(|t| !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<usize>().ok())
                .ok_or(HeadError::BadContentLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::BadContentLength);
            }
            content_length = Some(n);
        }
    }
    Ok(Some(ResponseHead {
        status,
        version_minor,
        content_length,
        headers: resp
            .headers
            .iter()
            .map(|h| (h.name.to_string(), trim(h.value).to_vec()))
            .collect(),
        head_len,
    }))
}

/// What the first bytes of a stream connection carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstLine {
    /// A SIP request (`... SIP/2.0`), a SIP response (`SIP/2.0 ...`) or a
    /// CRLF keep-alive (RFC 5626 §4.4.1).
    Sip,
    /// An HTTP/1.x request line (`... HTTP/1.1`, `... HTTP/1.0`).
    Http,
    /// Neither; the connection should be closed.
    Other,
    /// The first line is not complete yet.
    NeedMore,
}

/// Longest first line [`classify`] waits for.
pub const CLASSIFY_LINE_MAX: usize = 8 * 1024;

/// Classifies a stream by its first line: a SIP request line ends in
/// `SIP/2.0`, an HTTP one in `HTTP/1.x` (RFC 3261 §7.1, RFC 9112 §3).
pub fn classify(buf: &[u8]) -> FirstLine {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = buf.get(start..).unwrap_or_default();
    if rest.is_empty() {
        // only CRLFs so far: a SIP keep-alive (or nothing)
        return if start > 0 {
            FirstLine::Sip
        } else {
            FirstLine::NeedMore
        };
    }
    let prefix = rest.get(..rest.len().min(8)).unwrap_or_default();
    if b"SIP/2.0 "
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    {
        return if prefix.len() == 8 {
            FirstLine::Sip
        } else {
            FirstLine::NeedMore
        };
    }
    let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
        return if rest.len() > CLASSIFY_LINE_MAX {
            FirstLine::Other
        } else {
            FirstLine::NeedMore
        };
    };
    let mut line = rest.get(..eol).unwrap_or_default();
    line = trim(line.strip_suffix(b"\r").unwrap_or(line));
    let last = line
        .rsplit(|&b| b == b' ' || b == b'\t')
        .next()
        .unwrap_or_default();
    if last.eq_ignore_ascii_case(b"SIP/2.0") {
        FirstLine::Sip
    } else if last == b"HTTP/1.1" || last == b"HTTP/1.0" {
        FirstLine::Http
    } else {
        FirstLine::Other
    }
}

/// One complete request taken off a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub head: RequestHead,
    /// Head and body bytes as received (leading empty lines included).
    pub bytes: Vec<u8>,
}

impl Request {
    pub fn body(&self) -> &[u8] {
        self.bytes.get(self.head.head_len..).unwrap_or_default()
    }
}

/// The HTTP side of one stream connection: buffers bytes, hands out whole
/// requests in order (pipelining), and refuses anything over a limit. Once
/// [`Framer::poll_request`] returned an error or a request that closes the
/// connection, the framer hands out nothing more.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    limits: Limits,
    done: bool,
    /// The head of the request whose body is still arriving (parsed once).
    pending: Option<RequestHead>,
    /// Bytes of `buf` a partial head was already parsed over: a head can
    /// only complete at a new line feed, so a peer dripping bytes does not
    /// make every read parse the whole head again.
    scanned: usize,
}

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer {
            buf: Vec::new(),
            limits,
            done: false,
            pending: None,
            scanned: 0,
        }
    }

    /// Appends received bytes. Bytes beyond a limit are refused by the next
    /// [`Framer::poll_request`], so a caller may push what it read.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes left after the last request (a connection upgraded
    /// to WebSocket: the first frames may follow the handshake at once).
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.done = true;
        self.pending = None;
        std::mem::take(&mut self.buf)
    }

    /// The next whole request, `Ok(None)` until one is buffered. An error is
    /// final: answer [`error_response`] and close.
    pub fn poll_request(&mut self) -> Result<Option<Request>, HeadError> {
        if self.done || self.buf.is_empty() {
            return Ok(None);
        }
        let head = match self.pending.take() {
            Some(h) => h,
            None => {
                let fresh = self.buf.get(self.scanned..).unwrap_or_default();
                if self.scanned > 0 && !fresh.contains(&b'\n') {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.limits.head_bytes_max {
                        return self.fail(HeadError::HeadTooLarge);
                    }
                    return Ok(None);
                }
                match parse_head(&self.buf, &self.limits) {
                    Ok(Some(h)) => h,
                    Ok(None) => {
                        self.scanned = self.buf.len();
                        return Ok(None);
                    }
                    Err(e) => return self.fail(e),
                }
            }
        };
        let total = head.total_len();
        if self.buf.len() < total {
            self.pending = Some(head);
            return Ok(None);
        }
        let rest = self.buf.split_off(total);
        let bytes = std::mem::replace(&mut self.buf, rest);
        self.scanned = 0;
        if !head.keep_alive {
            self.done = true;
        }
        Ok(Some(Request { head, bytes }))
    }

    fn fail(&mut self, e: HeadError) -> Result<Option<Request>, HeadError> {
        self.done = true;
        self.buf = Vec::new();
        Err(e)
    }

    /// The head of the request being received, if complete: a server that
    /// honours `Expect: 100-continue` looks here before the body arrives.
    pub fn pending_head(&self) -> Option<&RequestHead> {
        if self.done {
            return None;
        }
        self.pending.as_ref()
    }
}

/// The reason phrase of a status code this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a response: status line, the given header fields, `Content-Length`
/// (for every status but 1xx, 204 and 101) and the body. Control characters
/// in the reason phrase and header values (a script's text) become spaces,
/// so no caller can split the response. `connection`: `Some(true)` writes
/// `Connection: keep-alive`, `Some(false)` `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    version_minor: u8,
    status: u16,
    reason_phrase: &[u8],
    headers: &[(&str, &[u8])],
    body: &[u8],
    connection: Option<bool>,
) {
    debug_assert!((100..=999).contains(&status));
    out.extend_from_slice(if version_minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    push_clean(out, reason_phrase);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        push_clean(out, value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ka) = connection {
        out.extend_from_slice(if ka {
            b"Connection: keep-alive\r\n"
        } else {
            b"Connection: close\r\n"
        });
    }
    if status >= 200 && status != 204 {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

fn push_clean(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().map(|&b| {
        if b < 0x20 && b != b'\t' || b == 0x7f {
            b' '
        } else {
            b
        }
    }));
}

/// The response to a refused request (the connection closes after it).
pub fn error_response(e: HeadError, server: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let mut text = e.to_string().into_bytes();
    text.push(b'\n');
    let mut headers: Vec<(&str, &[u8])> = vec![("Content-Type", b"text/plain; charset=utf-8")];
    if !server.is_empty() {
        headers.push(("Server", server));
    }
    let status = e.status();
    write_response(
        &mut out,
        1,
        status,
        reason(status).as_bytes(),
        &headers,
        &text,
        Some(false),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! head {
        ($name:ident, $raw:expr, $expect:expr) => {
            #[test]
            fn $name() {
                let raw: &[u8] = $raw;
                assert_eq!(
                    parse_head(raw, &Limits::default()).map(|h| {
                        let h = h.expect("complete head");
                        (
                            h.method.clone(),
                            h.path().to_string(),
                            h.content_length,
                            h.keep_alive,
                        )
                    }),
                    $expect
                );
            }
        };
    }

    fn ok(
        m: &str,
        p: &str,
        cl: usize,
        ka: bool,
    ) -> Result<(String, String, usize, bool), HeadError> {
        Ok((m.into(), p.into(), cl, ka))
    }

    head!(
        post_rpc,
        b"POST /RPC HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
        ok("POST", "/RPC", 12, true)
    );
    head!(
        get_query,
        b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
        ok("GET", "/metrics", 0, true)
    );
    head!(
        close,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        ok("GET", "/", 0, false)
    );
    head!(http10, b"GET / HTTP/1.0\r\n\r\n", ok("GET", "/", 0, false));
    head!(
        http10_ka,
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        ok("GET", "/", 0, true)
    );
    head!(
        bare_lf,
        b"GET / HTTP/1.1\nHost: a\n\n",
        ok("GET", "/", 0, true)
    );
    head!(
        leading_empty_lines,
        b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
        ok("GET", "/x", 0, true)
    );
    head!(
        same_cl_twice,
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n",
        ok("POST", "/", 2, true)
    );
    head!(
        conflicting_cl,
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        Err(HeadError::BadContentLength)
    );
    head!(
        negative_cl,
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        Err(HeadError::BadContentLength)
    );
    head!(
        huge_cl,
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        Err(HeadError::BadContentLength)
    );
    head!(
        body_over_limit,
        b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
        Err(HeadError::BodyTooLarge)
    );
    head!(
        chunked,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        Err(HeadError::TransferEncoding)
    );
    head!(
        space_before_colon,
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        Err(HeadError::BadHeader)
    );
    head!(
        folded,
        b"GET / HTTP/1.1\r\nX: a\r\n  b\r\n\r\n",
        Err(HeadError::BadHeader)
    );
    head!(
        no_colon,
        b"GET / HTTP/1.1\r\nJunk\r\n\r\n",
        Err(HeadError::BadHeader)
    );
    head!(two_words, b"GET /\r\n\r\n", Err(HeadError::BadRequestLine));
    head!(http2, b"GET / HTTP/2.0\r\n\r\n", Err(HeadError::Version));
    head!(
        garbage_version,
        b"GET / FTP/1.0\r\n\r\n",
        Err(HeadError::BadRequestLine)
    );
    head!(
        bad_method,
        b"G(T / HTTP/1.1\r\n\r\n",
        Err(HeadError::BadRequestLine)
    );
    head!(
        not_utf8,
        b"GET /\xff HTTP/1.1\r\n\r\n",
        Err(HeadError::NotUtf8)
    );
    head!(
        utf8_target,
        b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
        ok("GET", "/\u{e9}", 0, true)
    );
    head!(
        sip_request,
        b"OPTIONS sip:a@b SIP/2.0\r\n\r\n",
        Err(HeadError::BadRequestLine)
    );

    #[test]
    fn partial_heads_wait() {
        let full = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(
                parse_head(&full[..cut], &Limits::default()),
                Ok(None),
                "{cut}"
            );
        }
        let h = parse_head(full, &Limits::default()).unwrap().unwrap();
        assert_eq!(h.head_len, full.len());
    }

    #[test]
    fn limits() {
        let small = Limits {
            head_bytes_max: 64,
            headers_max: 2,
            body_bytes_max: 10,
        };
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..3 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&raw, &small), Err(HeadError::TooManyHeaders));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100));
        assert_eq!(
            parse_head(long.as_bytes(), &small),
            Err(HeadError::HeadTooLarge)
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(
            parse_head(long.as_bytes(), &small),
            Err(HeadError::HeadTooLarge)
        );
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &small),
            Err(HeadError::BodyTooLarge)
        );
    }

    #[test]
    fn websocket_upgrade_needs_both_headers() {
        let up = |extra: &str| {
            parse_head(
                format!("GET /ws HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes(),
                &Limits::default(),
            )
            .unwrap()
            .unwrap()
            .upgrade_websocket
        };
        assert!(up(
            "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        ));
        assert!(up("upgrade: WebSocket\r\nconnection: upgrade\r\n"));
        assert!(!up("Upgrade: websocket\r\n"));
        assert!(!up("Connection: upgrade\r\n"));
        assert!(!up("Upgrade: h2c\r\nConnection: upgrade\r\n"));
    }

    #[test]
    fn framer_pipelines_and_splits() {
        let one = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let two = b"GET /b HTTP/1.1\r\n\r\n";
        let three = b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut all = one.to_vec();
        all.extend_from_slice(two);
        all.extend_from_slice(three);
        all.extend_from_slice(b"GET /after-close HTTP/1.1\r\n\r\n");
        // every split point, one byte at a time and all at once
        for step in [1, 7, all.len()] {
            let mut f = Framer::new(Limits::default());
            let mut got = Vec::new();
            for chunk in all.chunks(step) {
                f.handle_bytes(chunk);
                while let Some(r) = f.poll_request().unwrap() {
                    got.push((r.head.target.clone(), r.body().to_vec(), r.head.keep_alive));
                }
            }
            assert_eq!(
                got,
                vec![
                    ("/a".to_string(), b"abc".to_vec(), true),
                    ("/b".to_string(), vec![], true),
                    ("/c".to_string(), vec![], false),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn framer_error_is_final() {
        let mut f = Framer::new(Limits::default());
        f.handle_bytes(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(f.poll_request(), Err(HeadError::TransferEncoding));
        f.handle_bytes(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(f.poll_request(), Ok(None));
        let r = error_response(HeadError::TransferEncoding, b"sipshard");
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"), "{text}");
    }

    #[test]
    fn framer_take_rest_after_upgrade() {
        let mut f = Framer::new(Limits::default());
        f.handle_bytes(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x80",
        );
        let r = f.poll_request().unwrap().unwrap();
        assert!(r.head.upgrade_websocket);
        assert_eq!(f.take_rest(), b"\x81\x80");
        f.handle_bytes(b"more");
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn response_heads() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc \r\n\r\n\x81\x00";
        let h = parse_response_head(raw, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.version_minor, h.content_length),
            (101, 1, None)
        );
        assert_eq!(h.header("sec-websocket-accept"), Some(&b"abc"[..]));
        assert_eq!(h.head_len, raw.len() - 2);
        assert_eq!(
            parse_response_head(
                b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n",
                &Limits::default()
            ),
            Ok(None)
        );
        let h = parse_response_head(
            b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
            &Limits::default(),
        );
        assert_eq!(h.unwrap().unwrap().content_length, Some(5));
        assert!(parse_response_head(b"SIP/2.0 200 OK\r\n\r\n", &Limits::default()).is_err());
    }

    #[test]
    fn classify_first_bytes() {
        use FirstLine::*;
        for (bytes, want) in [
            (&b"OPTIONS sip:a@b SIP/2.0\r\n"[..], Sip),
            (b"INVITE sip:a@b sip/2.0\r\nVia: x", Sip),
            (b"SIP/2.0 200 OK\r\n", Sip),
            (b"SIP/2", NeedMore),
            (b"\r\n\r\n", Sip),
            (b"GET /e-1-2 HTTP/1.1\r\n", Http),
            (b"\r\nGET / HTTP/1.0\n", Http),
            (b"GET / HTTP/1.1", NeedMore),
            (b"GET / HTTP/2.0\r\n", Other),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", Other),
            (b"", NeedMore),
        ] {
            assert_eq!(
                classify(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(classify(&vec![b'a'; CLASSIFY_LINE_MAX + 1]), Other);
    }

    #[test]
    fn responses_cannot_be_split() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            0,
            200,
            b"OK\r\nX-Evil: 1",
            &[
                ("Content-Type", b"text/plain\r\nSet-Cookie: a=b"),
                ("Bad Name", b"x"),
            ],
            b"body",
            None,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.0 200 OK  X-Evil: 1\r\nContent-Type: text/plain  Set-Cookie: a=b\r\nContent-Length: 4\r\n\r\nbody"
        );
    }
}
