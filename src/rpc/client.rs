//! `sipshard ctl`: a blocking JSON-RPC client for the control plane (the
//! `kamcmd` / `kamctl rpc` of sipshard), plus the plain HTTP/1.1 client that
//! `report --url` and the tests use.
//!
//! One request per connection (`Connection: close`), std sockets with
//! timeouts, responses capped at [`RESPONSE_BYTES_MAX`]. Never panics on what
//! the server sends.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::stats::hlog::{self, HlogError, HlogWriter, ShardKey};

pub const DEFAULT_URL: &str = "http://127.0.0.1:5070";
/// Largest response the client reads.
pub const RESPONSE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `sipshard ctl METHOD [ARGS...]`
#[derive(clap::Args, Clone, Debug)]
pub struct CtlArgs {
    /// JSON-RPC method, e.g. `stats.fetch`, `ul.lookup`, `kemi.route_latency`.
    pub method: String,
    /// Positional params. Integers are sent as numbers; prefix `s:` to force a
    /// string (`s:42`), as kamcmd does.
    pub args: Vec<String>,
    /// Print the raw JSON-RPC response instead of tables / indented JSON.
    #[arg(long)]
    pub json: bool,
    /// Control-plane URL.
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,
    /// With `kemi.route_latency`: also write the histograms (merged and per
    /// shard, since start) as a one-interval HdrHistogram log to FILE.
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
    /// The server's `[rpc] token`, sent as `Authorization: Bearer`
    /// (default: the SIPSHARD_RPC_TOKEN environment variable).
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("bad url {0:?}: {1}")]
    Url(String, &'static str),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response")]
    BadResponse,
    #[error("HTTP status {0}: {1}")]
    Status(u16, String),
    #[error("response is not a JSON-RPC answer: {0}")]
    NotJsonRpc(String),
    #[error("error {code}: {message}")]
    Rpc { code: i64, message: String },
    #[error("hlog: {0}")]
    Hlog(#[from] HlogError),
    #[error("{0}")]
    Usage(String),
}

/// `http://host[:port][/path]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<Endpoint, ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or(ClientError::Url(url.into(), "only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or(ClientError::Url(url.into(), "unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(ClientError::Url(url.into(), "missing host"));
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| ClientError::Url(url.into(), "bad port"))?,
        None => 80,
    };
    Ok(Endpoint {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// One HTTP/1.1 request; returns `(status, body)`.
pub fn http_request(
    url: &str,
    method: &str,
    path: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    http_request_with_token(url, method, path, body, timeout, None)
}

/// [`http_request`] with `Authorization: Bearer <token>` when `token` is set.
pub fn http_request_with_token(
    url: &str,
    method: &str,
    path: Option<&str>,
    body: &[u8],
    timeout: Duration,
    token: Option<&str>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let ep = parse_url(url)?;
    let path = path.unwrap_or(&ep.path);
    let addr = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|e| ClientError::Connect(url.into(), e))?
        .next()
        .ok_or_else(|| ClientError::Connect(url.into(), std::io::ErrorKind::NotFound.into()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| ClientError::Connect(url.into(), e))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: sipshard-ctl\r\nConnection: close\r\n",
        ep.port
    );
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        if token.contains(['\r', '\n']) {
            return Err(ClientError::Usage("the token must be one line".into()));
        }
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Splits a whole HTTP/1.x response into `(status, body)`.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let limits = crate::http::Limits {
        head_bytes_max: 64 * 1024,
        headers_max: 64,
        body_bytes_max: usize::MAX,
    };
    let head = crate::http::parse_response_head(raw, &limits)
        .ok()
        .flatten()
        .ok_or(ClientError::BadResponse)?;
    let mut body = raw.get(head.head_len..).unwrap_or_default();
    if let Some(n) = head.content_length {
        body = body.get(..n).ok_or(ClientError::BadResponse)?;
    }
    Ok((head.status, body.to_vec()))
}

/// Sends one JSON-RPC call; returns the full response object.
pub fn call_raw(
    url: &str,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, ClientError> {
    call_raw_with_token(url, method, params, timeout, None)
}

/// [`call_raw`] with a bearer token (`[rpc] token`).
pub fn call_raw_with_token(
    url: &str,
    method: &str,
    params: Value,
    timeout: Duration,
    token: Option<&str>,
) -> Result<Value, ClientError> {
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
    let body = serde_json::to_vec(&body).map_err(|e| ClientError::NotJsonRpc(e.to_string()))?;
    let (status, reply) = http_request_with_token(url, "POST", None, &body, timeout, token)?;
    if status != 200 {
        return Err(ClientError::Status(
            status,
            String::from_utf8_lossy(&reply).trim().to_string(),
        ));
    }
    serde_json::from_slice(&reply).map_err(|e| ClientError::NotJsonRpc(e.to_string()))
}

/// Sends one JSON-RPC call; returns its `result`, or its `error` as [`ClientError::Rpc`].
pub fn call(
    url: &str,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let mut reply = call_raw(url, method, params, timeout)?;
    rpc_result(&mut reply)
}

fn rpc_result(reply: &mut Value) -> Result<Value, ClientError> {
    if let Some(err) = reply.get("error") {
        return Err(ClientError::Rpc {
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    reply
        .get_mut("result")
        .map(Value::take)
        .ok_or_else(|| ClientError::NotJsonRpc("no result".into()))
}

/// `s:text` -> string, integer -> number, anything else -> string.
pub fn parse_arg(arg: &str) -> Value {
    if let Some(s) = arg.strip_prefix("s:") {
        return Value::String(s.to_string());
    }
    match arg.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => Value::String(arg.to_string()),
    }
}

/// Runs `sipshard ctl`, printing to stdout. `Ok(0)` on success, `Ok(1)` when
/// the server answered with a JSON-RPC error (printed to stderr).
pub fn run_ctl(args: CtlArgs) -> Result<i32, ClientError> {
    let stdout = std::io::stdout();
    run_ctl_to(&args, &mut stdout.lock())
}

/// [`run_ctl`] writing to `out`.
pub fn run_ctl_to(args: &CtlArgs, out: &mut dyn Write) -> Result<i32, ClientError> {
    let is_latency = args.method == "kemi.route_latency";
    if args.hlog.is_some() && !is_latency {
        return Err(ClientError::Usage(
            "--hlog works only with kemi.route_latency".into(),
        ));
    }
    let params = if args.hlog.is_some() {
        json!(["hlog"])
    } else {
        Value::Array(args.args.iter().map(|a| parse_arg(a)).collect())
    };
    let timeout = Duration::from_secs(args.timeout_s.clamp(1, 3600));
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("SIPSHARD_RPC_TOKEN").ok());
    let mut reply =
        call_raw_with_token(&args.url, &args.method, params, timeout, token.as_deref())?;
    if args.json {
        writeln!(out, "{reply}")?;
        return Ok(if reply.get("error").is_some() { 1 } else { 0 });
    }
    let result = match rpc_result(&mut reply) {
        Ok(r) => r,
        Err(ClientError::Rpc { code, message }) => {
            eprintln!("error {code}: {message}");
            return Ok(1);
        }
        Err(e) => return Err(e),
    };
    if is_latency {
        out.write_all(latency_table(&result).as_bytes())?;
        if let Some(path) = &args.hlog {
            let n = write_latency_hlog(&result, path)?;
            writeln!(out, "wrote {n} histograms to {}", path.display())?;
        }
    } else {
        let text = serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string());
        writeln!(out, "{text}")?;
    }
    Ok(0)
}

/// The `kemi.route_latency` result as a table: merged (`all`) then each shard.
pub fn latency_table(result: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:>5} {:>10} {:>14} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "route",
        "shard",
        "cnt",
        "sum_us",
        "min_us",
        "max_us",
        "avg_us",
        "p50_us",
        "p90_us",
        "p99_us",
        "p99.9_us"
    );
    let empty = Vec::new();
    let routes = result
        .get("routes")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for r in routes {
        let name = r.get("route").and_then(Value::as_str).unwrap_or("?");
        let mut rows: Vec<(String, &Value)> = Vec::new();
        if let Some(m) = r.get("merged") {
            rows.push(("all".into(), m));
        }
        for sh in r.get("shards").and_then(Value::as_array).unwrap_or(&empty) {
            let id = sh
                .get("shard")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into());
            rows.push((id, sh));
        }
        for (shard, v) in rows {
            let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            let _ = writeln!(
                s,
                "{:<20} {:>5} {:>10} {:>14.1} {:>9.3} {:>10.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name,
                shard,
                v.get("cnt").and_then(Value::as_u64).unwrap_or(0),
                f("sum_us"),
                f("min_us"),
                f("max_us"),
                f("avg_us"),
                f("p50_us"),
                f("p90_us"),
                f("p99_us"),
                f("p999_us"),
            );
        }
    }
    s
}

/// The histograms of a `kemi.route_latency ["hlog"]` result as a
/// one-interval log spanning the process's uptime. Returns how many
/// histograms were written.
pub fn write_latency_hlog(result: &Value, path: &std::path::Path) -> Result<usize, ClientError> {
    let intervals = latency_intervals(result)?;
    let uptime_s = result
        .get("uptime_s")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        .max(0.0);
    let now_s = result
        .get("now_s")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        .max(uptime_s);
    let base = UNIX_EPOCH + Duration::try_from_secs_f64(now_s - uptime_s).unwrap_or_default();
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = HlogWriter::new(
        file,
        base,
        "[snapshot from sipshard ctl kemi.route_latency; since start or reset]",
    )?;
    let tagged: Vec<(String, &hdrhistogram::Histogram<u64>)> = intervals
        .iter()
        .map(|(route, shard, h)| (hlog::route_tag(route, *shard), h))
        .collect();
    w.write_intervals(
        Duration::ZERO,
        Duration::try_from_secs_f64(uptime_s).unwrap_or_default(),
        tagged,
    )?;
    Ok(intervals.len())
}

/// Decodes every `hist` of a `kemi.route_latency ["hlog"]` result:
/// `(route, shard, histogram)`, merged (`ShardKey::All`) first per route.
pub fn latency_intervals(
    result: &Value,
) -> Result<Vec<(String, ShardKey, hdrhistogram::Histogram<u64>)>, ClientError> {
    let mut out = Vec::new();
    let routes = result
        .get("routes")
        .and_then(Value::as_array)
        .ok_or_else(|| ClientError::NotJsonRpc("result has no routes".into()))?;
    let decode = |v: &Value| -> Result<hdrhistogram::Histogram<u64>, ClientError> {
        let text = v.get("hist").and_then(Value::as_str).ok_or_else(|| {
            ClientError::NotJsonRpc("no hist; call with the \"hlog\" param".into())
        })?;
        Ok(hlog::decode_base64(text)?)
    };
    for r in routes {
        let route = r
            .get("route")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        if let Some(m) = r.get("merged") {
            out.push((route.clone(), ShardKey::All, decode(m)?));
        }
        for sh in r
            .get("shards")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let id = sh.get("shard").and_then(Value::as_u64).unwrap_or(0) as usize;
            out.push((route.clone(), ShardKey::Shard(id), decode(sh)?));
        }
    }
    Ok(out)
}

/// Seconds since the epoch now (for callers building logs by hand).
pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:5070").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 5070,
                path: "/".into()
            }
        );
        assert_eq!(
            parse_url("http://h/RPC").unwrap(),
            Endpoint {
                host: "h".into(),
                port: 80,
                path: "/RPC".into()
            }
        );
        assert_eq!(parse_url("http://[::1]:9/x").unwrap().host, "::1");
        assert!(parse_url("https://h").is_err());
        assert!(parse_url("http://:80").is_err());
        assert!(parse_url("http://h:port").is_err());
    }

    #[test]
    fn args() {
        assert_eq!(parse_arg("42"), json!(42));
        assert_eq!(parse_arg("s:42"), json!("42"));
        assert_eq!(parse_arg("alice@example.com"), json!("alice@example.com"));
    }

    #[test]
    fn responses() {
        let (s, b) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SIP/2.0 200 OK\r\n\r\n").is_err());
    }
}
