//! KSR.websocket: SIP over WebSocket (Kamailio `websocket` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.websocket.handle_handshake()` | `int ()` | 1 the upgrade request is valid (GET over HTTP/1.1, `Upgrade: websocket`, `Connection: upgrade`, a 16-byte `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Protocol` listing `sip`): the `101 Switching Protocols` response is queued and the connection speaks WebSocket after it; -1 otherwise (Kamailio: 0), with the refusal (400, or 426 for another version) queued, or outside an HTTP request |
//! | `KSR.websocket.close()` | `int ()` | 1 after the route, a close frame (1000 "Normal closure") goes on the WebSocket connection the current message arrived on, which closes when the client answers it; -1 the message did not arrive over WebSocket |
//! | `KSR.websocket.close_reason(status, reason)` | `int (int, str)` | as close, with this status (1000..4999) and reason; -1 also for a status outside that range |
//!
//! The handshake follows RFC 6455 §4.2 and RFC 7118 §4.1 (`crate::http::ws`);
//! `[websocket] cors_mode` adds `Access-Control-Allow-Origin` as Kamailio's
//! modparam does. The script decides first, as in Kamailio's examples:
//! check `$hdr(Host)`, `$hdr(Origin)`, the URL, then call
//! `handle_handshake()` from `ksr_xhttp_event`.

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{MsgCtx, Shared};
use crate::http::ws;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "handle_handshake",
        lua.create_function(move |_, ()| s.with_msg(|m| handle_handshake(&s, m)))?,
    )?;
    let s = shared.clone();
    t.set(
        "close",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| close(m, ws::close_code::NORMAL, b"Normal closure"))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "close_reason",
        lua.create_function(move |_, (code, reason): (i64, mlua::String)| {
            let Ok(code) = u16::try_from(code) else {
                return Ok(-1);
            };
            if !(1000..=4999).contains(&code) {
                return Ok(-1);
            }
            s.with_msg(|m| close(m, code, &reason.as_bytes()))
        })?,
    )?;
    ksr.set("websocket", t)
}

/// Asks the connection the message arrived on to close (the shard acts on
/// `ws_close` after the route).
fn close(m: &mut MsgCtx, code: u16, reason: &[u8]) -> i32 {
    if !matches!(m.proto, crate::sip::Proto::Ws | crate::sip::Proto::Wss) {
        return -1;
    }
    m.ws_close = Some((code, reason.to_vec()));
    1
}

fn handle_handshake(s: &Shared, m: &mut MsgCtx) -> i32 {
    let Some(h) = m.http.as_deref() else {
        return -1;
    };
    if h.reply.is_some() {
        return -1;
    }
    let version_minor = h.version_minor;
    let settings = s.services.tables.xhttp.clone();
    let msg = m.msg();
    let values = |name: &[u8]| super::pv::hdr_values(&msg, name);
    let first = |name: &[u8]| values(name).first().copied();
    let req = ws::HandshakeRequest {
        method: msg.method_bytes(),
        version_minor,
        upgrade: values(b"Upgrade"),
        connection: values(b"Connection"),
        key: first(b"Sec-WebSocket-Key"),
        ws_version: values(b"Sec-WebSocket-Version"),
        protocols: values(b"Sec-WebSocket-Protocol"),
        origin: first(b"Origin"),
    };
    let server = s.server_header.as_deref().unwrap_or_default();
    let cfg = ws::HandshakeConfig {
        server,
        cors_mode: settings.ws.cors_mode,
    };
    let (response, accepted) = match ws::handshake(&req, &cfg) {
        Ok(r) => (r, true),
        Err(e) => (ws::refusal(e, server), false),
    };
    let code = if accepted { 101 } else { 400 };
    if let Some(h) = m.http.as_deref_mut() {
        h.reply = Some(response);
        h.websocket = accepted;
        if !accepted {
            h.keep_alive = false;
        }
    }
    m.replied = Some(code);
    if accepted {
        1
    } else {
        -1
    }
}

#[cfg(test)]
mod tests {
    use crate::kemi::testutil::{engine, global_int, run_http};
    use crate::kemi::xhttp::XhttpAction;

    const SCRIPT: &str = r#"
        function ksr_request_route()
            c = KSR.websocket.close()
            cr = KSR.websocket.close_reason(4000, "Because I say so")
        end
        function ksr_xhttp_event(evname)
            if KSR.pv.get("$hdr(Upgrade)") == "websocket" then
                hs = KSR.websocket.handle_handshake()
                if hs > 0 then return end
                return
            end
            KSR.xhttp.xhttp_reply(404, "Not found", "", "")
        end
    "#;

    fn upgrade(extra: &str) -> Vec<u8> {
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn handshake_accepts_and_refuses() {
        let eng = engine(SCRIPT);
        let out = run_http(&eng, &upgrade("Sec-WebSocket-Protocol: sip\r\n"));
        let XhttpAction::WebSocket { response } = &out.action else {
            panic!("{:?}", out.action);
        };
        let t = String::from_utf8_lossy(response);
        assert!(t.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{t}");
        assert!(
            t.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{t}"
        );
        assert!(t.contains("Sec-WebSocket-Protocol: sip\r\n"), "{t}");
        assert_eq!(global_int(&eng, "hs"), 1);

        let out = run_http(&eng, &upgrade(""));
        let XhttpAction::Reply { bytes, close } = &out.action else {
            panic!("{:?}", out.action);
        };
        assert!(bytes.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
        assert!(*close);
        assert_eq!(global_int(&eng, "hs"), -1);
    }

    #[test]
    fn close_needs_a_websocket_message() {
        let eng = engine(SCRIPT);
        let (m, _) = crate::kemi::testutil::run(
            &eng,
            &crate::kemi::testutil::request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&eng, "c"), -1);
        assert_eq!(global_int(&eng, "cr"), -1);
        assert!(m.ws_close.is_none());
    }
}
