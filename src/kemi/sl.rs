//! KSR.sl: stateless replies (Kamailio `sl` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.sl.sl_send_reply(code, reason)` | `int (int, str)` | 1 sent, -1 error |
//! | `KSR.sl.send_reply(code, reason)` | `int (int, str)` | 1 sent, -1 error; stateful (as `KSR.tm.t_reply`) when the request has a transaction |
//! | `KSR.sl.sl_reply_error()` | `int ()` | 1 sent, -1 error |
//!
//! The reply goes to the request's source address, to the Via `rport` when the
//! client asked for it (RFC 3581) and otherwise to the Via sent-by port
//! (RFC 3261 §18.2.2). The To-tag is derived from the Call-ID, From-tag and
//! Via branch, so a retransmitted request gets the same tag.

use std::net::SocketAddr;
use std::rc::Rc;

use mlua::{Lua, Table};

use super::{ffi, MsgCtx, Shared};
use crate::sip::{build_reply, ReplyOpts};
use crate::stats::Counter;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let sl = lua.create_table()?;
    ffi::fast!(lua, &sl, "sl_send_reply", shared, [2], |s, a| {
        Ok(send_reply(s, a.int(1)?, a.bytes(2)?).into())
    })?;
    // Kamailio's sl `send_reply`: stateful when the request has a
    // transaction (t_newtran / t_relay created one), stateless otherwise.
    let s = shared.clone();
    sl.set(
        "send_reply",
        lua.create_function(move |_, (code, reason): (i64, mlua::String)| {
            let has_txn = s.with_msg(|m| m.tm.cell.is_some()).unwrap_or(false);
            if has_txn {
                return Ok(super::tm::t_reply(&s, code, &reason.as_bytes()));
            }
            Ok(send_reply(&s, code, &reason.as_bytes()))
        })?,
    )?;
    ffi::fast!(lua, &sl, "sl_reply_error", shared, [], |s, _| {
        Ok(sl_reply_error(s)?.into())
    })?;
    ksr.set("sl", sl)?;
    Ok(())
}

/// Sends a stateless reply to the current request; Kamailio return codes.
/// `KSR.sl.sl_reply_error()`: the last module error's code (500 without one).
pub(super) fn sl_reply_error(s: &Shared) -> mlua::Result<i32> {
    // A module that already answered (e.g. registrar's 423) is not
    // answered twice.
    let (code, reason, replied) = s.with_msg(|m| {
        let (c, r) = m.last_error.unwrap_or((500, "Server Internal Error"));
        (c, r, m.replied.is_some())
    })?;
    if replied {
        return Ok(-1);
    }
    Ok(send_reply(s, code as i64, reason.as_bytes()))
}

pub fn send_reply(s: &Shared, code: i64, reason: &[u8]) -> i32 {
    let Ok(code) = u16::try_from(code) else {
        return -1;
    };
    if !(100..=699).contains(&code) {
        return -1;
    }
    match s.with_msg(|m| reply_counted(s, m, code, reason)) {
        Ok(true) => 1,
        _ => -1,
    }
}

/// Builds and queues a reply for `m`, counting it in the sl statistics.
pub fn reply_counted(s: &Shared, m: &mut MsgCtx, code: u16, reason: &[u8]) -> bool {
    if !reply_into(s, m, code, reason) {
        s.counters.incr(Counter::SlSentErrReplies);
        return false;
    }
    s.counters.incr(Counter::SlSentReplies);
    s.counters.incr(match code / 100 {
        1 => Counter::SlReplies1xx,
        2 => Counter::SlReplies2xx,
        3 => Counter::SlReplies3xx,
        4 => Counter::SlReplies4xx,
        5 => Counter::SlReplies5xx,
        _ => Counter::SlReplies6xx,
    });
    true
}

/// Builds the reply into the context's outgoing queue. False for a reply or
/// an ACK (nothing to answer) or an unusable Via.
pub fn reply_into(s: &Shared, m: &mut MsgCtx, code: u16, reason: &[u8]) -> bool {
    if m.http.is_some() {
        // an HTTP request (KSR.xhttp): answered in HTTP, as Kamailio's sl does
        let body = std::mem::take(&mut m.reply_body);
        let done = super::xhttp::reply(s, m, code, reason, b"", &body);
        m.reply_body = body;
        return done;
    }
    let reply_headers = std::mem::take(&mut m.reply_headers);
    let mut scratch = std::mem::take(&mut m.scratch);
    let dst = build_local_reply_body(
        s,
        &m.msg(),
        m.src,
        m.force_rport,
        code,
        reason,
        &reply_headers,
        &m.reply_body,
        &mut scratch,
    );
    if let Some(dst) = dst {
        m.push_out(&scratch, m.reply_dest(dst));
        m.replied = Some(code);
    }
    m.scratch = scratch;
    m.reply_headers = reply_headers;
    dst.is_some()
}

/// Writes a locally generated reply to request `msg` (received from `src`)
/// into `out`, and returns where it goes. `None` for a reply or an ACK
/// (nothing to answer) or an unusable Via. `force_rport`: the script called
/// `KSR.force_rport()`.
#[allow(clippy::too_many_arguments)]
pub fn build_local_reply(
    s: &Shared,
    msg: &crate::sip::SipMsg<'_>,
    src: SocketAddr,
    force_rport: bool,
    code: u16,
    reason: &[u8],
    extra_headers: &[u8],
    out: &mut Vec<u8>,
) -> Option<SocketAddr> {
    build_local_reply_body(
        s,
        msg,
        src,
        force_rport,
        code,
        reason,
        extra_headers,
        &[],
        out,
    )
}

/// [`build_local_reply`] with a body (`KSR.textops.set_reply_body`).
#[allow(clippy::too_many_arguments)]
pub fn build_local_reply_body(
    s: &Shared,
    msg: &crate::sip::SipMsg<'_>,
    src: SocketAddr,
    force_rport: bool,
    code: u16,
    reason: &[u8],
    extra_headers: &[u8],
    body: &[u8],
    out: &mut Vec<u8>,
) -> Option<SocketAddr> {
    if !msg.is_request() || msg.method() == Some(crate::sip::Method::Ack) {
        return None;
    }
    let via = msg.top_via().ok()?;
    let dst = reply_destination(src, via.port, via.rport(), force_rport);
    let mut tag_buf = [0u8; 18];
    let tag = to_tag(msg, via.branch(), &mut tag_buf);
    let mut ip_buf = [0u8; 48];
    let src_ip = ip_text(src, &mut ip_buf);
    let opts = ReplyOpts {
        to_tag: Some(tag),
        src_ip: Some(src_ip),
        src_port: Some(src.port()),
        extra_headers,
        body,
        server: s.server_header.as_deref(),
        force_rport,
    };
    build_reply(msg, code, reason, &opts, out);
    Some(dst)
}

/// Where replies to a request from `src` go (RFC 3261 §18.2.2, RFC 3581);
/// `force_rport` as if the Via carried `rport`.
pub fn reply_dst_of(
    msg: &crate::sip::SipMsg<'_>,
    src: SocketAddr,
    force_rport: bool,
) -> Option<SocketAddr> {
    let via = msg.top_via().ok()?;
    Some(reply_destination(src, via.port, via.rport(), force_rport))
}

/// RFC 3581 / RFC 3261 §18.2.2 (unreliable transport, no maddr).
fn reply_destination(
    src: SocketAddr,
    via_port: Option<u16>,
    rport: Option<Option<u16>>,
    force_rport: bool,
) -> SocketAddr {
    match rport {
        Some(_) => src,
        None if force_rport => src,
        None => SocketAddr::new(src.ip(), via_port.unwrap_or(5060)),
    }
}

/// The source IP as text, without `fmt` (IPv6 in brackets, as in a Via).
fn ip_text(a: SocketAddr, buf: &mut [u8; 48]) -> &[u8] {
    match a.ip() {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let o = *octet;
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + (o / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            &buf[..n]
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cur = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cur, "[{v6}]");
            let n = cur.position() as usize;
            &buf[..n]
        }
    }
}

/// Stable per-request To-tag: FNV-1a over Call-ID, From-tag and Via branch,
/// as `ss` + 16 hex digits.
fn to_tag<'b>(
    msg: &crate::sip::SipMsg<'_>,
    branch: Option<&[u8]>,
    buf: &'b mut [u8; 18],
) -> &'b [u8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(msg.call_id().unwrap_or(b""));
    eat(msg.from().ok().and_then(|f| f.tag()).unwrap_or(b""));
    eat(branch.unwrap_or(b""));
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[0] = b's';
    buf[1] = b's';
    for i in 0..16 {
        buf[2 + i] = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
    &buf[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_formats_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "127.0.0.1",
            "10.100.9.255",
            "255.255.255.255",
        ] {
            let mut b = [0u8; 48];
            let a: SocketAddr = format!("{ip}:1").parse().unwrap();
            assert_eq!(ip_text(a, &mut b), ip.as_bytes());
        }
        let mut b = [0u8; 48];
        let a: SocketAddr = "[::1]:5060".parse().unwrap();
        assert_eq!(ip_text(a, &mut b), b"[::1]");
    }
}
