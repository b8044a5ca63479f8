//! KSR.xhttp: HTTP requests answered by the script (Kamailio `xhttp` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.xhttp.xhttp_reply(code, reason, ctype, body)` | `int (int, str, str, str)` | 1 reply queued (status line in the request's HTTP version, `Content-Type` when `ctype` is not empty, headers added with `KSR.hdr.append_to_reply`, `Server`, `Content-Length`, the body); -1 code outside 100..700, not an HTTP request, or already answered |
//! | `KSR.xhttp.get_hu()` | `xval ()` | the request-target of the HTTP request (`$hu`); nil outside one |
//!
//! An HTTP/1.x request arriving on a SIP stream port (the first line ends
//! in `HTTP/1.0` / `HTTP/1.1` instead of `SIP/2.0`) runs the script's
//! `[xhttp] event_callback` (default `ksr_xhttp_event`) with the argument
//! `"xhttp:request"`, as Kamailio's `modparam("xhttp", "event_callback",
//! "ksr_xhttp_event")` does. As in Kamailio, the SIP pseudo-variables read
//! the HTTP request: `$rm` the method, `$hdr(Name)` a header, `$rb` the
//! body, `$si`/`$sp` the client, `$hu` the URL (`$ru` is not a SIP URI
//! here). `KSR.sl.sl_send_reply(code, reason)` answers an HTTP request too
//! (with the body of `KSR.textops.set_reply_body`, if any). When the route
//! ends without an answer, the request gets `404 Not Found` (Kamailio
//! sends nothing); a script error gets `500`. `KSR.websocket.handle_handshake()`
//! turns the connection into a WebSocket one (see `kemi::websocket`).
//!
//! This file owns the context of an HTTP request in the route and the
//! outcome the connection acts on; the bytes (framing, responses) come
//! from the sans-IO [`crate::http`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use mlua::{Lua, Table};

use super::{MsgCtx, RouteOutcome, RouteRun, Shared};
use crate::sip::{Span, StartLine};

/// The settings of KSR.xhttp and KSR.websocket, compiled once.
#[derive(Debug)]
pub struct Settings {
    pub event_callback: String,
    url_skip: Option<regex::Regex>,
    url_match: Option<regex::Regex>,
    pub limits: crate::http::Limits,
    pub ws: crate::config::WebsocketConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(&Default::default(), &Default::default())
    }
}

impl Settings {
    /// From validated config (a bad regular expression is dropped here;
    /// `Config::validate` refuses it before).
    pub fn new(x: &crate::config::XhttpConfig, ws: &crate::config::WebsocketConfig) -> Settings {
        let re = |s: &str| {
            if s.is_empty() {
                None
            } else {
                regex::Regex::new(s).ok()
            }
        };
        Settings {
            event_callback: x.event_callback.clone(),
            url_skip: re(&x.url_skip),
            url_match: re(&x.url_match),
            limits: crate::http::Limits {
                head_bytes_max: x.head_bytes_max,
                headers_max: x.headers_max,
                body_bytes_max: x.body_bytes_max,
            },
            ws: ws.clone(),
        }
    }

    /// Whether a request for `target` reaches the script (`url_skip` wins
    /// over `url_match`, as in Kamailio).
    pub fn wants(&self, target: &str) -> bool {
        if self.url_skip.as_ref().is_some_and(|r| r.is_match(target)) {
            return false;
        }
        self.url_match.as_ref().is_none_or(|r| r.is_match(target))
    }

    /// The WebSocket frame limits.
    pub fn ws_limits(&self) -> crate::http::ws::WsLimits {
        crate::http::ws::WsLimits {
            frame_bytes_max: self.ws.frame_bytes_max,
            message_bytes_max: self.ws.message_bytes_max,
            fragments_max: self.ws.fragments_max,
        }
    }
}

/// What a message context knows about the HTTP request it holds.
#[derive(Clone, Debug, Default)]
pub struct HttpCtx {
    pub version_minor: u8,
    pub keep_alive: bool,
    /// The response the route queued (xhttp_reply, sl_send_reply, a
    /// handshake's 101 or refusal).
    pub reply: Option<Vec<u8>>,
    /// The reply is a `101`: the connection speaks WebSocket after it.
    pub websocket: bool,
}

/// What the connection does after the xhttp route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XhttpAction {
    /// Write `bytes`; then close the connection when `close`.
    Reply { bytes: Vec<u8>, close: bool },
    /// Write the `101` response; from then on the connection carries SIP
    /// in WebSocket frames (`crate::http::ws::Conn`).
    WebSocket { response: Vec<u8> },
}

/// The result of one HTTP request's route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XhttpOutcome {
    pub action: XhttpAction,
    /// How the route ended (a script error is answered 500; log it).
    pub route: RouteOutcome,
}

/// Loads an HTTP request into `m` so the route's pseudo-variables read it.
/// False when its header section cannot be indexed (answer 400).
pub fn prepare(
    m: &mut MsgCtx,
    req: &crate::http::Request,
    src: SocketAddr,
    local: SocketAddr,
    headers_max: usize,
) -> bool {
    m.load(&req.bytes, src, local);
    let limits = crate::sip::Limits {
        max_headers: headers_max.max(1),
        max_msg_len: req.bytes.len() + 1,
    };
    if !crate::sip::salvage(&m.buf[..m.len], &limits, &mut m.parsed) {
        return false;
    }
    // salvage reads "target HTTP/1.1" as the URI: split off the version,
    // so `$hu` is the target and `$rv` the version.
    if let StartLine::Request {
        method,
        method_span,
        uri,
        ..
    } = m.parsed.start
    {
        let line = uri.get(&m.buf[..m.len]);
        let Some(sp) = line.iter().rposition(|&b| b == b' ') else {
            return false;
        };
        let mut end = sp;
        while end > 0 && line.get(end - 1) == Some(&b' ') {
            end -= 1;
        }
        let start = uri.start as usize;
        m.parsed.start = StartLine::Request {
            method,
            method_span,
            uri: Span::new(start, start + end),
            version: Span::new(start + sp + 1, uri.end as usize),
        };
    }
    m.http = Some(Box::new(HttpCtx {
        version_minor: req.head.version_minor,
        keep_alive: req.head.keep_alive,
        reply: None,
        websocket: false,
    }));
    true
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "xhttp_reply",
        lua.create_function(
            move |_, (code, reason, ctype, body): (i64, mlua::String, mlua::String, mlua::String)| {
                let Ok(code) = u16::try_from(code) else {
                    return Ok(-1);
                };
                if !(100..=700).contains(&code) {
                    return Ok(-1);
                }
                let done = s.with_msg(|m| {
                    reply(s.as_ref(), m, code, &reason.as_bytes(), &ctype.as_bytes(), &body.as_bytes())
                })?;
                Ok(if done { 1 } else { -1 })
            },
        )?,
    )?;
    let s = shared.clone();
    t.set(
        "get_hu",
        lua.create_function(move |lua, ()| {
            let hu = s.with_msg(|m| hu(m).map(<[u8]>::to_vec))?;
            super::lua_opt_str(lua, hu.as_deref())
        })?,
    )?;
    ksr.set("xhttp", t)
}

/// `$hu`: the request-target of an HTTP request.
pub(super) fn hu(m: &MsgCtx) -> Option<&[u8]> {
    m.http.as_ref()?;
    m.msg().ruri()
}

/// Queues the response to the HTTP request in `m`; false when `m` is not
/// one or was answered already.
pub(super) fn reply(
    s: &Shared,
    m: &mut MsgCtx,
    code: u16,
    reason: &[u8],
    ctype: &[u8],
    body: &[u8],
) -> bool {
    let Some(h) = m.http.as_deref() else {
        return false;
    };
    if h.reply.is_some() {
        return false;
    }
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    if !ctype.is_empty() {
        headers.push(("Content-Type", ctype));
    }
    // lines from KSR.hdr.append_to_reply ("Name: value\r\n")
    let extra = std::mem::take(&mut m.reply_headers);
    for line in extra.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            if let Ok(name) = std::str::from_utf8(&line[..colon]) {
                headers.push((name.trim(), line[colon + 1..].trim_ascii()));
            }
        }
    }
    if let Some(server) = s.server_header.as_deref() {
        headers.push(("Server", server));
    }
    let close = !h.keep_alive;
    let mut out = Vec::with_capacity(128 + body.len());
    crate::http::write_response(
        &mut out,
        h.version_minor,
        code,
        reason,
        &headers,
        body,
        close.then_some(false),
    );
    drop(headers);
    m.reply_headers = extra;
    if let Some(h) = m.http.as_deref_mut() {
        h.reply = Some(out);
    }
    m.replied = Some(code);
    true
}

/// What the connection does once the route of `m` ended with `route`.
pub fn outcome(s: &Shared, m: &mut MsgCtx, route: RouteOutcome) -> XhttpOutcome {
    if let RouteOutcome::Error(_) = route {
        if m.http.as_ref().is_some_and(|h| h.reply.is_none()) {
            reply(s, m, 500, b"Server Internal Error", b"", b"");
        }
    }
    let h = m.http.take().unwrap_or_default();
    let action = match h.reply {
        Some(response) if h.websocket => XhttpAction::WebSocket { response },
        Some(bytes) => XhttpAction::Reply {
            close: !h.keep_alive,
            bytes,
        },
        None => {
            let mut bytes = Vec::new();
            let server = s.server_header.as_deref().unwrap_or_default();
            let mut headers: Vec<(&str, &[u8])> = Vec::new();
            if !server.is_empty() {
                headers.push(("Server", server));
            }
            crate::http::write_response(
                &mut bytes,
                h.version_minor,
                404,
                b"Not Found",
                &headers,
                b"",
                (!h.keep_alive).then_some(false),
            );
            XhttpAction::Reply {
                bytes,
                close: !h.keep_alive,
            }
        }
    };
    XhttpOutcome { action, route }
}

/// The xhttp route of one request (or, without a callback, its 404).
/// Poll it like a [`RouteRun`]: it hands the context back with the outcome.
pub struct XhttpRun {
    pub(super) shared: Rc<Shared>,
    pub(super) run: Option<RouteRun>,
    pub(super) ctx: Option<Box<MsgCtx>>,
}

impl Future for XhttpRun {
    type Output = (Box<MsgCtx>, XhttpOutcome);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (mut ctx, route) = match this.run.as_mut() {
            Some(run) => match Pin::new(run).poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            },
            None => match this.ctx.take() {
                Some(c) => (c, RouteOutcome::Done),
                None => return Poll::Pending, // polled after completion
            },
        };
        let out = outcome(&this.shared, &mut ctx, route);
        Poll::Ready((ctx, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kemi::testutil::{engine, run_http};

    fn text(a: &XhttpAction) -> String {
        match a {
            XhttpAction::Reply { bytes, .. } => String::from_utf8_lossy(bytes).into_owned(),
            XhttpAction::WebSocket { response } => String::from_utf8_lossy(response).into_owned(),
        }
    }

    #[test]
    fn event_callback_reads_the_request_and_replies() {
        let eng = engine(
            r#"
            function ksr_request_route() end
            function ksr_xhttp_event(evname)
                local body = evname .. " " .. KSR.pv.get("$rm") .. " " .. KSR.pv.get("$hu")
                    .. " " .. tostring(KSR.pv.get("$hdr(X-Thing)")) .. " " .. KSR.pv.get("$si")
                    .. ":" .. KSR.pv.get("$sp") .. " [" .. KSR.pv.get("$rb") .. "] "
                    .. KSR.xhttp.get_hu() .. " " .. KSR.pv.get("$rv")
                rc = KSR.xhttp.xhttp_reply(200, "OK", "text/plain", body)
                again = KSR.xhttp.xhttp_reply(200, "OK", "text/plain", "twice")
            end
            "#,
        );
        let out = run_http(
            &eng,
            b"POST /e-1-2?x=1 HTTP/1.1\r\nHost: h\r\nX-Thing: yes\r\nContent-Length: 4\r\n\r\nabcd",
        );
        assert_eq!(out.route, RouteOutcome::Done);
        let t = text(&out.action);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("Content-Type: text/plain\r\n"), "{t}");
        assert!(t.contains("Server: sipshard\r\n"), "{t}");
        let body = "xhttp:request POST /e-1-2?x=1 yes 192.0.2.9:5060 [abcd] /e-1-2?x=1 HTTP/1.1";
        assert!(
            t.ends_with(&format!("Content-Length: {}\r\n\r\n{body}", body.len())),
            "{t}"
        );
        assert!(matches!(
            out.action,
            XhttpAction::Reply { close: false, .. }
        ));
        assert_eq!(crate::kemi::testutil::global_int(&eng, "rc"), 1);
        assert_eq!(crate::kemi::testutil::global_int(&eng, "again"), -1);
    }

    #[test]
    fn no_reply_is_404_and_errors_500() {
        let eng = engine(
            r#"
            function ksr_request_route() end
            function ksr_xhttp_event(evname)
                if KSR.pv.get("$hu") == "/boom" then error("boom") end
            end
            "#,
        );
        let out = run_http(&eng, b"GET /nothing HTTP/1.0\r\n\r\n");
        let t = text(&out.action);
        assert!(t.starts_with("HTTP/1.0 404 Not Found\r\n"), "{t}");
        assert!(
            matches!(out.action, XhttpAction::Reply { close: true, .. }),
            "1.0 closes"
        );
        let out = run_http(&eng, b"GET /boom HTTP/1.1\r\n\r\n");
        assert!(matches!(out.route, RouteOutcome::Error(ref e) if e.contains("boom")));
        assert!(
            text(&out.action).starts_with("HTTP/1.1 500 "),
            "{:?}",
            out.action
        );
        // a script without the callback answers 404 too
        let plain = engine("function ksr_request_route() end");
        assert!(
            text(&run_http(&plain, b"GET / HTTP/1.1\r\n\r\n").action).starts_with("HTTP/1.1 404")
        );
    }

    #[test]
    fn sl_reply_and_reply_headers_and_close() {
        let eng = engine(
            r#"
            function ksr_request_route() end
            function ksr_xhttp_event(evname)
                KSR.hdr.append_to_reply("X-Game: on\r\n")
                KSR.textops.set_reply_body("board", "text/plain")
                sl = KSR.sl.sl_send_reply(403, "Forbidden")
            end
            "#,
        );
        let out = run_http(&eng, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        let t = text(&out.action);
        assert!(t.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{t}");
        assert!(t.contains("X-Game: on\r\n"), "{t}");
        assert!(t.contains("Connection: close\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\nboard"), "{t}");
        assert!(matches!(out.action, XhttpAction::Reply { close: true, .. }));
        assert_eq!(crate::kemi::testutil::global_int(&eng, "sl"), 1);
    }

    #[test]
    fn xhttp_functions_outside_http_fail() {
        let eng = engine(
            r#"
            function ksr_request_route()
                rc = KSR.xhttp.xhttp_reply(200, "OK", "", "")
                hu = KSR.xhttp.get_hu()
                hv = KSR.pv.get("$hu")
                bad = 0
            end
            "#,
        );
        let (_, out) = crate::kemi::testutil::run(
            &eng,
            &crate::kemi::testutil::request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]),
        );
        assert_eq!(out, RouteOutcome::Done);
        assert_eq!(crate::kemi::testutil::global_int(&eng, "rc"), -1);
        assert_eq!(crate::kemi::testutil::global_str(&eng, "hu"), "");
        assert_eq!(crate::kemi::testutil::global_str(&eng, "hv"), "");
    }

    #[test]
    fn url_skip_and_match() {
        let s = Settings::new(
            &crate::config::XhttpConfig {
                url_skip: "^/RPC2".into(),
                url_match: "^/(sip|e-)".into(),
                ..Default::default()
            },
            &Default::default(),
        );
        assert!(s.wants("/e-1-2"));
        assert!(s.wants("/sip/x"));
        assert!(!s.wants("/other"));
        assert!(!s.wants("/RPC2/sip"));
        assert!(Settings::default().wants("/anything"));
    }

    mod minesweeper {
        use super::*;
        use crate::kemi::testutil::{engine_on_with, request, run, tables_with};
        use crate::kemi::Engine;

        const SCRIPT: &str = include_str!("../../etc/examples/minesweeper.lua");
        const ROWS: usize = 5;
        const COLS: usize = 6;

        /// Two shards over one set of tables, seed 42.
        fn shards() -> (Engine, Engine) {
            let tables = tables_with("[[htable]]\nname = \"mines\"\n");
            let defines = vec!["MINESWEEPER_SEED=42".to_string()];
            (
                engine_on_with(SCRIPT, tables.clone(), 0, 2, &defines),
                engine_on_with(SCRIPT, tables, 1, 2, &defines),
            )
        }

        /// (status line, body) of an HTTP GET of `path`.
        fn http(eng: &Engine, path: &str) -> (String, String) {
            let out = run_http(
                eng,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            assert_eq!(out.route, RouteOutcome::Done);
            let t = text(&out.action);
            let (head, body) = t.split_once("\r\n\r\n").unwrap();
            (head.lines().next().unwrap().to_string(), body.to_string())
        }

        /// (code, reason, body) of the reply to OPTIONS sip:<cmd>@10.0.0.1.
        fn sip(eng: &Engine, cmd: &str) -> (u16, String, String) {
            let ruri = if cmd.is_empty() {
                "sip:10.0.0.1".to_string()
            } else {
                format!("sip:{cmd}@10.0.0.1")
            };
            let (m, out) = run(eng, &request(&format!("OPTIONS {ruri} SIP/2.0"), None, &[]));
            assert_eq!(out, RouteOutcome::Done);
            let o = m.out.first().expect("a reply");
            let t =
                String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]).into_owned();
            let first = t.lines().next().unwrap().to_string();
            let mut parts = first.splitn(3, ' ');
            parts.next();
            let code = parts.next().unwrap().parse().unwrap();
            let reason = parts.next().unwrap().to_string();
            let body = t.split_once("\r\n\r\n").unwrap().1.to_string();
            (code, reason, body)
        }

        /// The mines of the current game, read from the shared htable.
        fn mines(eng: &Engine) -> Vec<(usize, usize)> {
            let mut out = Vec::new();
            for r in 1..=ROWS {
                for c in 1..=COLS {
                    let v: i64 = eng
                        .lua()
                        .load(format!("return KSR.htable.sht_get('mines', 'm-{r}-{c}')"))
                        .eval()
                        .unwrap();
                    if v == 1 {
                        out.push((r, c));
                    }
                }
            }
            out
        }

        /// The board's cells, row by row.
        fn cells(body: &str) -> Vec<Vec<String>> {
            body.lines()
                .skip_while(|l| !l.starts_with("    1"))
                .skip(1)
                .take(ROWS)
                .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
                .collect()
        }

        #[test]
        fn playable_over_http_and_sip_on_every_shard() {
            let (a, b) = shards();
            let (status, body) = http(&a, "/");
            assert_eq!(status, "HTTP/1.1 200 Board");
            assert!(body.contains("game 1: playing (5x6, 5 mines)"), "{body}");
            let board = cells(&body);
            assert_eq!(board.len(), ROWS);
            assert!(board.iter().flatten().all(|c| c == "H"), "{body}");
            let mine_set = mines(&a);
            assert_eq!(mine_set.len(), 5);
            assert_eq!(mines(&b), mine_set, "one board for every shard");

            // a safe cell, explored over HTTP on shard 0, seen over SIP on shard 1
            let (r, c) = (1..=ROWS)
                .flat_map(|r| (1..=COLS).map(move |c| (r, c)))
                .find(|p| !mine_set.contains(p))
                .unwrap();
            let (status, _) = http(&a, &format!("/e-{r}-{c}"));
            assert!(
                status == "HTTP/1.1 200 Safe" || status == "HTTP/1.1 200 You Won",
                "{status}"
            );
            let (code, reason, body) = sip(&b, "board");
            assert_eq!((code, reason.as_str()), (200, "Board"));
            let near = mine_set
                .iter()
                .filter(|(mr, mc)| mr.abs_diff(r) <= 1 && mc.abs_diff(c) <= 1)
                .count();
            assert_eq!(cells(&body)[r - 1][c - 1], near.to_string(), "{body}");

            // defuse a mine over SIP, then step on another one over HTTP
            let (mr, mc) = mine_set[0];
            let (code, reason, body) = sip(&b, &format!("d-{mr}-{mc}"));
            assert_eq!((code, reason.as_str()), (200, "Defused"));
            assert_eq!(cells(&body)[mr - 1][mc - 1], "W");
            let (mr, mc) = mine_set[1];
            let (status, body) = http(&b, &format!("/e-{mr}-{mc}"));
            assert_eq!(status, "HTTP/1.1 200 Buuum");
            assert_eq!(cells(&body)[mr - 1][mc - 1], "X");
            assert!(body.contains("game 1: lost"), "{body}");
            let (code, reason, _) = sip(&a, &format!("e-{r}-{c}"));
            assert_eq!((code, reason.as_str()), (409, "Game Over"));
            assert_eq!(sip(&a, "e-9-9").0, 400);
            assert_eq!(http(&a, "/favicon.ico").0, "HTTP/1.1 400 Bad Command");

            // a new game (over SIP), all hidden again
            let (code, reason, body) = sip(&a, "new");
            assert_eq!((code, reason.as_str()), (200, "New Game"));
            assert!(body.contains("game 2: playing"), "{body}");
            assert!(cells(&body).iter().flatten().all(|c| c == "H"));
            // a plain keepalive OPTIONS shows the board
            assert_eq!(sip(&b, "").1, "Board");
        }

        #[test]
        fn winning_and_the_seed_is_deterministic() {
            let (a, _) = shards();
            http(&a, "/");
            let first = mines(&a);
            let (c, _) = shards();
            http(&c, "/");
            assert_eq!(mines(&c), first, "same seed, same mines");
            let mut seen = Vec::new();
            for r in 1..=ROWS {
                for col in 1..=COLS {
                    if !first.contains(&(r, col)) {
                        seen.push(http(&a, &format!("/e-{r}-{col}")).0);
                    }
                }
            }
            // safe (or opened by a neighbour's flood fill) until the last
            // hidden safe cell wins; then the game is over
            let won = seen
                .iter()
                .position(|s| s == "HTTP/1.1 200 You Won")
                .expect("a win");
            assert!(seen[..won]
                .iter()
                .all(|s| s == "HTTP/1.1 200 Safe" || s == "HTTP/1.1 200 Already Explored"));
            assert!(seen[won + 1..]
                .iter()
                .all(|s| s == "HTTP/1.1 409 Game Over"));
            let (_, body) = http(&a, "/");
            assert!(body.contains("game 1: won"), "{body}");
            // next game, other mines
            http(&a, "/new");
            assert_ne!(mines(&a), first);
        }
    }
}
