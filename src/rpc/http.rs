//! A deliberately small HTTP/1.1 server for the control plane (RFC 9112).
//!
//! Supports what JSON-RPC clients and Prometheus scrapers send:
//! `Content-Length` bodies, keep-alive (HTTP/1.1 default, `Connection:
//! keep-alive` for 1.0), `Expect: 100-continue`, pipelined requests. It
//! refuses `Transfer-Encoding` (501), absolute-form targets (400), folded
//! headers (400) and anything over a limit. Every wait has a timeout and every
//! buffer a size cap, so a slow or hostile peer costs at most one connection
//! slot for a bounded time. Nothing here panics on input.
//!
//! ```text
//! request-line = method SP request-target SP HTTP-version CRLF
//! header-field = field-name ":" OWS field-value OWS
//! ```

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::rpc::jsonrpc::Registry;
use crate::rpc::RpcContext;
use crate::stats::prom;

/// Request line plus headers.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
pub const HEADERS_MAX: usize = 64;
/// Request body (one JSON-RPC call or batch).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Requests served on one connection before it is closed.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 1000;
/// Time to receive a whole request once its first byte arrived.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an idle keep-alive connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to write one response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request head was refused, each with its status code.
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
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::TransferEncoding => 501,
            HeadError::Version => 505,
            _ => 400,
        }
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    pub content_length: usize,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The `Authorization` header value, when one was sent (never logged).
    pub authorization: Option<String>,
}

/// Where the head ends: `(head_len_without_terminator, total_len)`, or `None`
/// when more bytes are needed. Accepts CRLFCRLF and (leniently) LFLF.
pub fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i] != b'\n' {
            continue;
        }
        if buf.get(i + 1) == Some(&b'\n') {
            return Some((i, i + 2));
        }
        if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
            return Some((i, i + 3));
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head (everything before the blank line).
pub fn parse_head(head: &[u8]) -> Result<RequestHead, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::NotUtf8)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::BadRequestLine)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::BadRequestLine);
    };
    if !is_token(method) {
        return Err(HeadError::BadRequestLine);
    }
    let version_minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::BadRequestLine),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::Target);
    }
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();

    let mut content_length: Option<usize> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    let mut authorization = None;
    let mut count = 0;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        count += 1;
        if count > HEADERS_MAX {
            return Err(HeadError::TooManyHeaders);
        }
        if line.starts_with([' ', '\t']) {
            return Err(HeadError::BadHeader); // obsolete line folding
        }
        let (name, value) = line.split_once(':').ok_or(HeadError::BadHeader)?;
        if !is_token(name) {
            return Err(HeadError::BadHeader); // includes whitespace before ':'
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::BadContentLength);
            }
            let n: usize = value.parse().map_err(|_| HeadError::BadContentLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                connection_close |= token.eq_ignore_ascii_case("close");
                connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        }
    }
    let keep_alive = if version_minor == 1 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };
    Ok(RequestHead {
        method: method.to_string(),
        path,
        version_minor,
        content_length: content_length.unwrap_or(0),
        keep_alive,
        expect_continue,
        authorization,
    })
}

/// A response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub allow: Option<&'static str>,
}

impl Response {
    fn json(value: &serde_json::Value) -> Response {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response {
            status: 200,
            content_type: "application/json",
            body,
            allow: None,
        }
    }

    fn text(status: u16, text: &str) -> Response {
        let mut body = text.as_bytes().to_vec();
        body.push(b'\n');
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            allow: None,
        }
    }

    fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: sipshard\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        if !self.body.is_empty() || self.status != 204 {
            out.push_str(&format!("Content-Type: {}\r\n", self.content_type));
        }
        if let Some(allow) = self.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        if self.status == 401 {
            out.push_str("WWW-Authenticate: Bearer realm=\"sipshard\"\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Shared by every connection.
struct Server {
    registry: Arc<Registry>,
    ctx: Arc<RpcContext>,
    /// `[rpc] token`: required as `Authorization: Bearer <token>`.
    token: Option<Arc<str>>,
}

/// Whether `authorization` is `Bearer <token>`, compared in constant time
/// for tokens of the same length.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Accepts connections until the runtime stops. At most `max_connections`
/// are served at once; more get a 503 and are closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ctx: Arc<RpcContext>,
    max_connections: usize,
    token: Option<Arc<str>>,
) {
    debug_assert!(max_connections > 0);
    let server = Arc::new(Server {
        registry,
        ctx,
        token,
    });
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "rpc accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "rpc connection limit reached");
            // Best effort and never blocking the accept loop.
            let _ = stream.try_write(&Response::text(503, "too many connections").to_bytes(false));
            continue;
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            if let Err(e) = server.connection(stream).await {
                tracing::debug!(%peer, error = %e, "rpc connection ended");
            }
        });
    }
}

impl Server {
    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        for served in 1..=REQUESTS_PER_CONNECTION_MAX {
            // Wait for the first byte of the next request (idle), then for
            // the whole head (request timeout).
            if buf.is_empty() {
                match timeout(IDLE_TIMEOUT, read_some(&mut stream, &mut buf)).await {
                    Ok(Ok(0)) | Err(_) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                }
            }
            let head = match timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut buf)).await {
                Err(_) => {
                    return self
                        .finish(&mut stream, Response::text(408, "request timeout"))
                        .await
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(None)) => return Ok(()), // peer closed mid-head
                Ok(Ok(Some(Err(e)))) => {
                    return self
                        .finish(&mut stream, Response::text(e.status(), &e.to_string()))
                        .await
                }
                Ok(Ok(Some(Ok(x)))) => x,
            };
            let (req, head_len) = head;
            if req.content_length > BODY_BYTES_MAX {
                return self
                    .finish(&mut stream, Response::text(413, "request body too large"))
                    .await;
            }
            if req.expect_continue
                && req.content_length > 0
                && buf.len() < head_len + req.content_length
            {
                timeout(
                    WRITE_TIMEOUT,
                    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"),
                )
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??;
            }
            let total = head_len + req.content_length;
            match timeout(REQUEST_TIMEOUT, read_until(&mut stream, &mut buf, total)).await {
                Err(_) => {
                    return self
                        .finish(&mut stream, Response::text(408, "request timeout"))
                        .await
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(false)) => return Ok(()), // peer closed mid-body
                Ok(Ok(true)) => {}
            }
            let body: Vec<u8> = buf.drain(..total).skip(head_len).collect();

            let response = self.route(&req, &body).await;
            let keep_alive = req.keep_alive && served < REQUESTS_PER_CONNECTION_MAX;
            write_response(&mut stream, &response, keep_alive).await?;
            if !keep_alive {
                break;
            }
        }
        Ok(())
    }

    /// Writes a final response and closes.
    async fn finish(&self, stream: &mut TcpStream, response: Response) -> std::io::Result<()> {
        write_response(stream, &response, false).await
    }

    async fn route(&self, req: &RequestHead, body: &[u8]) -> Response {
        if let Some(token) = &self.token {
            if !bearer_matches(req.authorization.as_deref(), token) {
                tracing::debug!(path = %req.path, "rpc request without the right token");
                return Response::text(401, "a bearer token is required");
            }
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/" | "/RPC" | "/rpc") => {
                match self.registry.handle_body(&self.ctx, body).await {
                    Some(v) => Response::json(&v),
                    None => Response {
                        status: 204,
                        content_type: "",
                        body: Vec::new(),
                        allow: None,
                    },
                }
            }
            (_, "/" | "/RPC" | "/rpc") => Response {
                allow: Some("POST"),
                ..Response::text(405, "JSON-RPC needs POST")
            },
            ("GET", "/metrics") => self.metrics().await,
            (_, "/metrics") => Response {
                allow: Some("GET"),
                ..Response::text(405, "metrics needs GET")
            },
            _ => Response::text(404, "not found"),
        }
    }

    async fn metrics(&self) -> Response {
        match self.ctx.shard_call(self.ctx.ctl.snapshot_all(false)).await {
            Ok(snaps) => {
                let text = prom::render(&snaps, &self.ctx.buckets_us, self.ctx.ctl.uptime_s());
                Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: text.into_bytes(),
                    allow: None,
                }
            }
            Err(e) => Response::text(503, &format!("shards unavailable: {e}")),
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let bytes = response.to_bytes(keep_alive);
    timeout(WRITE_TIMEOUT, stream.write_all(&bytes))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    if !keep_alive {
        let _ = timeout(WRITE_TIMEOUT, stream.shutdown()).await;
    }
    Ok(())
}

/// Reads once into `buf`; returns the byte count (0 = EOF).
async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0_u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads until a whole head is buffered. `None`: the peer closed first.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<(RequestHead, usize), HeadError>>> {
    loop {
        // Tolerate blank lines before a request (RFC 9112 §2.2).
        while buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
            buf.remove(0);
        }
        if let Some((head_end, total)) = find_head_end(buf) {
            if head_end > HEAD_BYTES_MAX {
                return Ok(Some(Err(HeadError::HeadTooLarge)));
            }
            return Ok(Some(parse_head(&buf[..head_end]).map(|h| (h, total))));
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Ok(Some(Err(HeadError::HeadTooLarge)));
        }
        if read_some(stream, buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads until `buf` holds `total` bytes; `false` if the peer closed first.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    total: usize,
) -> std::io::Result<bool> {
    while buf.len() < total {
        if read_some(stream, buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    macro_rules! head {
        ($name:ident, $raw:expr, $expect:expr) => {
            #[test]
            fn $name() {
                let raw: &[u8] = $raw;
                let (end, _) = find_head_end(raw).expect("complete head");
                assert_eq!(
                    parse_head(&raw[..end]).map(|h| (
                        h.method,
                        h.path,
                        h.content_length,
                        h.keep_alive
                    )),
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
        absolute_form,
        b"GET http://x/ HTTP/1.1\r\n\r\n",
        Err(HeadError::Target)
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

    #[test]
    fn head_end_needs_blank_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(find_head_end(b"A\r\n\r\nbody"), Some((2, 5)));
    }

    #[test]
    fn too_many_headers() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=HEADERS_MAX {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        assert_eq!(parse_head(&raw), Err(HeadError::TooManyHeaders));
    }
}
