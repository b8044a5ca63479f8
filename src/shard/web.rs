//! HTTP and WebSocket on a shard's stream connections: what follows the
//! `xhttp hook` of `conn.rs` once a connection's first line was HTTP.
//!
//! - **HTTP** (Kamailio's xhttp): the bytes go to a [`crate::http::Framer`];
//!   each whole request runs the script's xhttp callback
//!   ([`crate::kemi::Engine::run_xhttp`]) and its outcome is written back:
//!   a response (closing the connection when the request asked, HTTP/1.0,
//!   or the framer refused the bytes), or the `101` of a WebSocket upgrade.
//!   Requests are answered in order: while a route waits (a database), the
//!   next pipelined request stays buffered.
//! - **WebSocket** (RFC 6455, RFC 7118): a [`crate::http::ws::Conn`] decodes
//!   the frames; each message is one SIP message, run as if it came on its
//!   own (`io::on_message`, transport WS or WSS); pongs and close frames go
//!   back raw; sends to the connection from any shard are framed by
//!   [`crate::transport::conn::Conn::send`].
//!
//! Never blocks: a route that waits becomes a task, as SIP routes do.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::conn::{Local, Why};
use super::io::Shard;
use crate::http::ws;
use crate::kemi::xhttp::{XhttpAction, XhttpOutcome};
use crate::kemi::RouteOutcome;
use crate::sip::StreamKind;
use crate::stats::Counter;
use crate::transport::conn::Conn;

/// The HTTP or WebSocket side of a connection.
pub(super) enum Web {
    Http {
        framer: crate::http::Framer,
        /// A route of this connection is waiting: the next requests wait.
        busy: bool,
    },
    Ws(ws::Conn),
}

/// The connection's first bytes were an HTTP request: it is HTTP from now on.
pub(super) fn start_http(shard: &Rc<Shard>, l: &mut Local) -> Result<(), Why> {
    let settings = shard.engine.shared().services.tables.xhttp.clone();
    l.kind = StreamKind::Http;
    l.web = Some(Box::new(Web::Http {
        framer: crate::http::Framer::new(settings.limits),
        busy: false,
    }));
    let bytes = l.framer.take_buffered();
    on_bytes(shard, l, &bytes)
}

/// Bytes read from an HTTP or WebSocket connection. Err: close it.
pub(super) fn on_bytes(shard: &Rc<Shard>, l: &mut Local, bytes: &[u8]) -> Result<(), Why> {
    let Some(web) = l.web.as_deref_mut() else {
        return Err(Why::NotSip);
    };
    match web {
        Web::Http { framer, .. } => {
            framer.handle_bytes(bytes);
            http_requests(shard, l)
        }
        Web::Ws(c) => {
            c.handle_bytes(bytes);
            ws_events(shard, l)
        }
    }
}

/// Runs the buffered requests in order until one waits or none is left.
fn http_requests(shard: &Rc<Shard>, l: &mut Local) -> Result<(), Why> {
    loop {
        let Some(Web::Http { framer, busy }) = l.web.as_deref_mut() else {
            return Ok(());
        };
        if *busy {
            return Ok(());
        }
        let req = match framer.poll_request() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                shard.counters().incr(Counter::XhttpBadRequests);
                let server = shard
                    .engine
                    .shared()
                    .server_header
                    .clone()
                    .unwrap_or_default();
                let _ = l
                    .conn
                    .send_raw(&crate::http::error_response(e, &server), now(shard));
                if shard.log.allow(Instant::now()) {
                    tracing::info!(shard = shard.id, peer = %l.conn.peer, error = e.as_str(), "HTTP request refused: connection closed");
                }
                return Err(Why::NotSip);
            }
        };
        shard.counters().incr(Counter::XhttpRequests);
        let settings = shard.engine.shared().services.tables.xhttp.clone();
        let mut ctx = super::io::take_ctx(shard);
        if !crate::kemi::xhttp::prepare(
            &mut ctx,
            &req,
            l.conn.peer,
            l.conn.local,
            settings.limits.headers_max,
        ) {
            super::io::recycle(shard, ctx);
            shard.counters().incr(Counter::XhttpBadRequests);
            let _ = l.conn.send_raw(
                &crate::http::error_response(crate::http::HeadError::BadHeader, b""),
                now(shard),
            );
            return Err(Why::NotSip);
        }
        ctx.proto = l.conn.proto;
        let t0 = Instant::now();
        let mut run: Pin<Box<crate::kemi::xhttp::XhttpRun>> = Box::pin(shard.engine.run_xhttp(ctx));
        let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        }));
        match first {
            Ok(Poll::Ready((ctx, out))) => {
                record(shard, t0);
                super::io::recycle(shard, ctx);
                apply(shard, l, out)?;
            }
            Ok(Poll::Pending) => {
                shard.counters().incr(Counter::RoutesSuspended);
                if let Some(Web::Http { busy, .. }) = l.web.as_deref_mut() {
                    *busy = true;
                }
                let s = shard.clone();
                let id = l.conn.id;
                let spawned = shard.ex.spawn(async move {
                    let (ctx, out) = run.await;
                    record(&s, t0);
                    super::io::recycle(&s, ctx);
                    resume(&s, id, out);
                });
                if spawned.is_err() {
                    return Err(Why::NotSip);
                }
                return Ok(());
            }
            Err(_) => {
                drop(run);
                shard.counters().incr(Counter::Panics);
                let text = crate::exec::take_panic().unwrap_or_default();
                tracing::error!(
                    shard = shard.id,
                    "panic in the xhttp route, caught; the shard goes on: {text}"
                );
                if let Some(ctx) = shard.engine.shared().cur.borrow_mut().take() {
                    super::io::recycle(shard, ctx);
                }
                let _ = l.conn.send_raw(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    now(shard),
                );
                return Err(Why::NotSip);
            }
        }
    }
}

/// A waiting xhttp route of connection `id` finished.
fn resume(shard: &Rc<Shard>, id: u64, out: XhttpOutcome) {
    super::conn::with_local(shard, id, |l| {
        if let Some(Web::Http { busy, .. }) = l.web.as_deref_mut() {
            *busy = false;
        }
        apply(shard, l, out)?;
        http_requests(shard, l)
    });
}

fn record(shard: &Shard, t0: Instant) {
    thread_local! {
        static NAME: Arc<str> = Arc::from("xhttp:request");
    }
    NAME.with(|n| shard.engine.shared().record_route_time(n, t0.elapsed()));
}

/// Writes what the route decided.
fn apply(shard: &Rc<Shard>, l: &mut Local, out: XhttpOutcome) -> Result<(), Why> {
    if let RouteOutcome::Error(text) = &out.route {
        shard.counters().incr(Counter::ErrRequests);
        if shard.log.allow(Instant::now()) {
            tracing::error!(shard = shard.id, src = %l.conn.peer, "script error in the xhttp route: {text}");
        }
    }
    match out.action {
        XhttpAction::Reply { bytes, close } => {
            if l.conn.send_raw(&bytes, now(shard)).is_err() || close {
                return Err(Why::NotSip);
            }
            Ok(())
        }
        XhttpAction::WebSocket { response } => {
            if l.conn.send_raw(&response, now(shard)).is_err() {
                return Err(Why::NotSip);
            }
            let rest = match l.web.as_deref_mut() {
                Some(Web::Http { framer, .. }) => framer.take_rest(),
                _ => Vec::new(),
            };
            let limits = shard.engine.shared().services.tables.xhttp.ws_limits();
            if let Some(sc) = &shard.conns {
                sc.table.upgrade_ws(&l.conn);
            }
            shard.counters().incr(Counter::WsUpgrades);
            l.kind = StreamKind::WebSocket;
            let mut c = ws::Conn::new(limits);
            c.handle_bytes(&rest);
            l.web = Some(Box::new(Web::Ws(c)));
            ws_events(shard, l)
        }
    }
}

/// Delivers the WebSocket connection's messages; writes its pongs and close.
fn ws_events(shard: &Rc<Shard>, l: &mut Local) -> Result<(), Why> {
    loop {
        let Some(Web::Ws(c)) = l.web.as_deref_mut() else {
            return Ok(());
        };
        let tx = c.poll_transmit();
        if !tx.is_empty() {
            let _ = l.conn.send_raw(&tx, now(shard));
        }
        let Some(ev) = c.poll_event() else {
            return Ok(());
        };
        match ev {
            ws::Event::Text(msg) | ws::Event::Binary(msg) => {
                shard.counters().incr(Counter::WsMessages);
                let proto = l.conn.msg_proto();
                super::io::on_message(shard, &msg, l.conn.peer, l.conn.local, proto, &l.conn);
            }
            ws::Event::Closed { .. } => {
                flush_ws(shard, l);
                return Err(Why::Peer);
            }
            ws::Event::Failed { code, why } => {
                flush_ws(shard, l);
                shard.counters().incr(Counter::WsProtocolErrors);
                if shard.log.allow(Instant::now()) {
                    tracing::info!(shard = shard.id, peer = %l.conn.peer, code, "WebSocket closed: {why}");
                }
                return Err(Why::BadFraming);
            }
        }
    }
}

fn flush_ws(shard: &Shard, l: &mut Local) {
    if let Some(Web::Ws(c)) = l.web.as_deref_mut() {
        let tx = c.poll_transmit();
        if !tx.is_empty() {
            let _ = l.conn.send_raw(&tx, now(shard));
        }
    }
}

/// `KSR.websocket.close*()` in a route: a close frame on the connection the
/// message came on (any shard may send it; its owner closes the socket
/// when the client answers the close).
pub(super) fn close_from_route(conn: &Arc<Conn>, code: u16, reason: &[u8], now_ms: u64) {
    if !conn.is_ws() {
        return;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason[..reason.len().min(123)]);
    let mut frame = Vec::with_capacity(payload.len() + 2);
    ws::encode_frame(&mut frame, ws::Opcode::Close, &payload, true);
    let _ = conn.send_raw(&frame, now_ms);
}

fn now(shard: &Shard) -> u64 {
    shard.conns.as_ref().map_or(0, |sc| sc.table.now_ms())
}
