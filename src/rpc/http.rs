//! A deliberately small HTTP/1.1 server for the control plane (RFC 9112),
//! on the sans-IO framer of [`crate::http`] (request heads parsed by
//! `httparse`).
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

use crate::http::{Framer, Limits};
pub use crate::http::{HeadError, RequestHead};
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

const LIMITS: Limits = Limits {
    head_bytes_max: HEAD_BYTES_MAX,
    headers_max: HEADERS_MAX,
    body_bytes_max: BODY_BYTES_MAX,
};

/// Parses a request head at the start of `buf` with the control plane's
/// limits and its one extra rule: the target must be origin-form.
/// `Ok(None)`: more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let head = crate::http::parse_head(buf, &LIMITS)?;
    if let Some(h) = &head {
        check_target(h)?;
    }
    Ok(head)
}

fn check_target(h: &RequestHead) -> Result<(), HeadError> {
    if h.target.starts_with('/') {
        Ok(())
    } else {
        Err(HeadError::Target)
    }
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
        let mut headers: Vec<(&str, &[u8])> = vec![("Server", b"sipshard")];
        if !self.body.is_empty() || self.status != 204 {
            headers.push(("Content-Type", self.content_type.as_bytes()));
        }
        if let Some(allow) = self.allow {
            headers.push(("Allow", allow.as_bytes()));
        }
        if self.status == 401 {
            headers.push(("WWW-Authenticate", b"Bearer realm=\"sipshard\""));
        }
        let mut out = Vec::with_capacity(160 + self.body.len());
        crate::http::write_response(
            &mut out,
            1,
            self.status,
            crate::http::reason(self.status).as_bytes(),
            &headers,
            &self.body,
            Some(keep_alive),
        );
        out
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
        let mut framer = Framer::new(LIMITS);
        let mut chunk = vec![0_u8; 4096];
        for served in 1..=REQUESTS_PER_CONNECTION_MAX {
            // Wait for the first byte of the next request (idle), then for
            // the whole request (request timeout from its first byte).
            let mut deadline = None;
            let mut continued = false;
            let req = loop {
                match framer.poll_request() {
                    Ok(Some(r)) => break r,
                    Ok(None) => {}
                    Err(e) => {
                        return self
                            .finish(&mut stream, Response::text(e.status(), &e.to_string()))
                            .await
                    }
                }
                if framer.buffered() > 0 && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + REQUEST_TIMEOUT);
                }
                if !continued {
                    if let Some(h) = framer.pending_head() {
                        if let Err(e) = check_target(h) {
                            return self
                                .finish(&mut stream, Response::text(e.status(), &e.to_string()))
                                .await;
                        }
                        if h.expect_continue && h.content_length > 0 {
                            continued = true;
                            timeout(
                                WRITE_TIMEOUT,
                                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"),
                            )
                            .await
                            .map_err(|_| std::io::ErrorKind::TimedOut)??;
                        }
                    }
                }
                let read = match deadline {
                    None => timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await,
                    Some(d) => tokio::time::timeout_at(d, stream.read(&mut chunk)).await,
                };
                match read {
                    Err(_) if deadline.is_none() => return Ok(()),
                    Err(_) => {
                        return self
                            .finish(&mut stream, Response::text(408, "request timeout"))
                            .await
                    }
                    Ok(Ok(0)) => return Ok(()), // peer closed (mid-request or idle)
                    Ok(Ok(n)) => framer.handle_bytes(chunk.get(..n).unwrap_or_default()),
                    Ok(Err(e)) => return Err(e),
                }
            };
            if let Err(e) = check_target(&req.head) {
                return self
                    .finish(&mut stream, Response::text(e.status(), &e.to_string()))
                    .await;
            }
            let response = self.route(&req.head, req.body()).await;
            let keep_alive = req.head.keep_alive && served < REQUESTS_PER_CONNECTION_MAX;
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
                tracing::debug!(path = %req.path(), "rpc request without the right token");
                return Response::text(401, "a bearer token is required");
            }
        }
        match (req.method.as_str(), req.path()) {
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

#[cfg(test)]
mod unit_tests {
    use super::*;

    macro_rules! head {
        ($name:ident, $raw:expr, $expect:expr) => {
            #[test]
            fn $name() {
                let raw: &[u8] = $raw;
                assert_eq!(
                    parse_head(raw).map(|h| {
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
    fn head_needs_blank_line() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(
            parse_head(b"A / HTTP/1.1\r\n\r\nbody").map(|h| h.map(|h| h.head_len)),
            Ok(Some(16))
        );
    }

    #[test]
    fn too_many_headers() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=HEADERS_MAX {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&raw), Err(HeadError::TooManyHeaders));
    }
}
