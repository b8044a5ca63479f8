//! KSR core functions: logging, `KSR.x.exit/drop`, method tests, `is_myself*`
//! and message flags.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.dbg/info/notice/warn/err/crit(msg)` | `void (str)` | nothing |
//! | `KSR.log(level, msg)` | `void (str, str)` | nothing |
//! | `KSR.x.exit()` / `KSR.x.drop()` / `KSR.drop()` | `void ()` | stops the route |
//! | `KSR.is_method_in(letters)` | `bool (str)` | true/false |
//! | `KSR.is_INVITE/is_ACK/is_BYE/is_CANCEL/is_REGISTER/is_OPTIONS/is_SUBSCRIBE/is_NOTIFY/is_MESSAGE/is_INFO/is_UPDATE/is_PRACK/is_PUBLISH/is_REFER/is_KDMQ()` | `bool ()` | true/false |
//! | `KSR.is_myself(uri)` | `bool (str)` | true/false |
//! | `KSR.is_myself_ruri/is_myself_furi/is_myself_turi/is_myself_srcip()` | `bool ()` | true/false |
//! | `KSR.setflag(n)` / `KSR.resetflag(n)` | `int (int)` | 1 / -1 |
//! | `KSR.isflagset(n)` | `bool (int)` | true/false |
//! | `KSR.sipshard_test.panic(text)` | sipshard extension, test only | panics (only with `core.test_hooks = true`; proves a panicking callback is answered 500 and counted in `shard.panics`) |

use std::rc::Rc;

use mlua::{Lua, Table};

use super::Shared;
use crate::sip::{Method, SipUri};

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    for (name, level) in [
        ("dbg", tracing::Level::DEBUG),
        ("info", tracing::Level::INFO),
        ("notice", tracing::Level::INFO),
        ("warn", tracing::Level::WARN),
        ("err", tracing::Level::ERROR),
        ("crit", tracing::Level::ERROR),
    ] {
        let shard = shared.shard_id;
        ksr.set(
            name,
            lua.create_function(move |_, msg: mlua::String| {
                script_log(level, shard, &msg.to_string_lossy());
                Ok(())
            })?,
        )?;
    }
    let shard = shared.shard_id;
    ksr.set(
        "log",
        lua.create_function(move |_, (level, msg): (mlua::String, mlua::String)| {
            let level = match level.to_str()?.as_ref() {
                "dbg" | "debug" => tracing::Level::DEBUG,
                "warn" => tracing::Level::WARN,
                "err" | "error" | "crit" | "alert" => tracing::Level::ERROR,
                _ => tracing::Level::INFO,
            };
            script_log(level, shard, &msg.to_string_lossy());
            Ok(())
        })?,
    )?;

    // KSR.x.exit/drop are defined in Lua by the engine (a plain Lua error
    // with a sentinel value: no Rust error, no traceback built); this is the
    // Rust half of drop.
    let x = lua.create_table()?;
    let s = shared.clone();
    x.set(
        "__mark_drop",
        lua.create_function(move |_, ()| s.with_msg(|m| m.dropped = true))?,
    )?;
    ksr.set("x", x)?;

    let s = shared.clone();
    ksr.set(
        "is_method_in",
        lua.create_function(move |_, letters: mlua::String| {
            let letters = letters.as_bytes();
            s.with_msg(|m| {
                let method = request_or_cseq_method(m);
                letters.iter().any(|c| method_letter(*c) == Some(method))
            })
        })?,
    )?;

    for (name, method) in [
        ("is_INVITE", Method::Invite),
        ("is_ACK", Method::Ack),
        ("is_BYE", Method::Bye),
        ("is_CANCEL", Method::Cancel),
        ("is_REGISTER", Method::Register),
        ("is_OPTIONS", Method::Options),
        ("is_SUBSCRIBE", Method::Subscribe),
        ("is_NOTIFY", Method::Notify),
        ("is_MESSAGE", Method::Message),
        ("is_INFO", Method::Info),
        ("is_UPDATE", Method::Update),
        ("is_PRACK", Method::Prack),
        ("is_PUBLISH", Method::Publish),
        ("is_REFER", Method::Refer),
        ("is_KDMQ", Method::Kdmq),
    ] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, ()| s.with_msg(|m| request_or_cseq_method(m) == method))?,
        )?;
    }

    let s = shared.clone();
    ksr.set(
        "is_myself",
        lua.create_function(move |_, uri: mlua::String| Ok(uri_is_myself(&s, &uri.as_bytes())))?,
    )?;
    let s = shared.clone();
    ksr.set(
        "is_myself_ruri",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| m.ruri().map(|r| r.to_vec()))
                .map(|r| r.is_some_and(|r| uri_is_myself(&s, &r)))
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "is_myself_furi",
        lua.create_function(move |_, ()| {
            let uri = s.with_msg(|m| m.msg().from().ok().map(|f| f.uri.to_vec()))?;
            Ok(uri.is_some_and(|u| uri_is_myself(&s, &u)))
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "is_myself_turi",
        lua.create_function(move |_, ()| {
            let uri = s.with_msg(|m| m.msg().to().ok().map(|t| t.uri.to_vec()))?;
            Ok(uri.is_some_and(|u| uri_is_myself(&s, &u)))
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "is_myself_srcip",
        lua.create_function(move |_, ()| {
            let src = s.with_msg(|m| m.src)?;
            let host = match src.ip() {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            };
            // Kamailio compares the address only, on any listening port.
            Ok(s.myself
                .names
                .iter()
                .any(|(h, _)| h.eq_ignore_ascii_case(&host)))
        })?,
    )?;

    let s = shared.clone();
    ksr.set(
        "setflag",
        lua.create_function(move |_, flag: i64| {
            if !(0..32).contains(&flag) {
                return Ok(-1);
            }
            s.with_msg(|m| m.flags |= 1 << flag)?;
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "resetflag",
        lua.create_function(move |_, flag: i64| {
            if !(0..32).contains(&flag) {
                return Ok(-1);
            }
            s.with_msg(|m| m.flags &= !(1 << flag))?;
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "isflagset",
        lua.create_function(move |_, flag: i64| {
            if !(0..32).contains(&flag) {
                return Ok(false);
            }
            s.with_msg(|m| m.flags & (1 << flag) != 0)
        })?,
    )?;
    Ok(())
}

fn script_log(level: tracing::Level, shard: usize, msg: &str) {
    let msg = msg.trim_end_matches(['\r', '\n']);
    match level {
        tracing::Level::DEBUG | tracing::Level::TRACE => {
            tracing::debug!(target: "script", shard, "{msg}")
        }
        tracing::Level::INFO => tracing::info!(target: "script", shard, "{msg}"),
        tracing::Level::WARN => tracing::warn!(target: "script", shard, "{msg}"),
        tracing::Level::ERROR => tracing::error!(target: "script", shard, "{msg}"),
    }
}

/// A request's method; for a reply, the CSeq method (as Kamailio's is_method does).
fn request_or_cseq_method(m: &super::MsgCtx) -> Method {
    let msg = m.msg();
    match msg.method() {
        Some(method) => method,
        None => msg.cseq().map(|c| c.method).unwrap_or(Method::Other),
    }
}

/// Kamailio's `is_method_in` letters.
fn method_letter(c: u8) -> Option<Method> {
    Some(match c {
        b'I' => Method::Invite,
        b'A' => Method::Ack,
        b'B' => Method::Bye,
        b'C' => Method::Cancel,
        b'R' => Method::Register,
        b'M' => Method::Message,
        b'O' => Method::Options,
        b'S' => Method::Subscribe,
        b'P' => Method::Publish,
        b'N' => Method::Notify,
        b'U' => Method::Update,
        b'K' => Method::Kdmq,
        b'F' => Method::Info,
        b'E' => Method::Refer,
        b'Q' => Method::Prack,
        _ => return None,
    })
}

pub(super) fn uri_is_myself(s: &Shared, uri: &[u8]) -> bool {
    match SipUri::parse(uri) {
        Ok(u) => s.myself.matches(u.host, u.port),
        Err(_) => false,
    }
}
