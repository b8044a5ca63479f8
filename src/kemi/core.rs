//! KSR core functions: logging, `KSR.x.exit/drop`, method and transport
//! tests, `is_myself*`, message and script flags, rport and connection flags.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.dbg/info/notice/warn/err/crit(msg)` | `void (str)` | nothing |
//! | `KSR.log(level, msg)` | `void (str, str)` | nothing |
//! | `KSR.x.exit()` / `KSR.x.drop()` / `KSR.drop()` | `void ()` | stops the route |
//! | `KSR.route(name)` | `int (str)` | runs the script's function `name` (else `ksr_route_<name>`) as a sub-route (Kamailio runs the native cfg's `route[name]`, which sipshard does not have): its number result, 1 when it returns no number, -1 when there is no such function; `KSR.x.exit()` inside it ends the whole route |
//! | `KSR.x.modf(fname, ...)` | `int (str, ...)` | raises the Lua error "KSR.x.modf('fname') is not supported by sipshard" (native module functions do not exist here) |
//! | `KSR.set_drop()` | `void ()` | marks the message dropped without stopping the route |
//! | `KSR.is_method(name)` | `bool (str)` | true when the request method (a reply's CSeq method) is `name`, case-insensitive; `name` may be a `|` list (`"INVITE|BYE"`) |
//! | `KSR.is_method_in(letters)` | `bool (str)` | true/false |
//! | `KSR.is_INVITE/is_ACK/is_BYE/is_CANCEL/is_REGISTER/is_OPTIONS/is_SUBSCRIBE/is_NOTIFY/is_MESSAGE/is_INFO/is_UPDATE/is_PRACK/is_PUBLISH/is_REFER/is_KDMQ()` | `bool ()` | true/false |
//! | `KSR.is_GET/is_POST/is_PUT/is_DELETE()` | `bool ()` | false (no HTTP here) |
//! | `KSR.is_myself(uri)` | `bool (str)` | a `sip:`/`sips:` URI whose host (and port, when it has one; none matches any of ours) is ours, or a bare host that is ours |
//! | `KSR.is_myself_ruri/is_myself_furi/is_myself_turi()` | `bool ()` | `is_myself` of the R-URI / From URI / To URI |
//! | `KSR.is_myself_duri()` | `bool ()` | `is_myself($du)`; false when `$du` is unset |
//! | `KSR.is_myself_nhuri()` | `bool ()` | `is_myself` of the next hop: `$du`, else the R-URI |
//! | `KSR.is_myself_suri()` | `bool ()` | `is_myself` of the source address URI (`sip:ip:port`) |
//! | `KSR.is_myself_srcip()` | `bool ()` | the source IP is one of ours (any port) |
//! | `KSR.setflag(n)` / `KSR.resetflag(n)` | `bool (int)` | true; false when `n` is outside 0..31 |
//! | `KSR.isflagset(n)` | `bool (int)` | message flag `n` |
//! | `KSR.setsflag(n)` / `KSR.resetsflag(n)` | `bool (int)` | script flags: true; false outside 0..31 (zero at the start of each route run) |
//! | `KSR.issflagset(n)` | `bool (int)` | script flag `n` |
//! | `KSR.force_rport()` | `bool ()` | true; as if the client's Via carried `rport` (RFC 3581): local replies go to the source port with `rport=<source port>` in their Via, and a relayed request's client Via gets `received=`/`rport=` so replies forwarded statelessly return to the source address (a relayed request always gets `received=` when the sent-by host is not the source IP, and `rport=` when the client asked) |
//! | `KSR.add_local_rport()` | `bool ()` | true (sipshard's own Via needs no rport: replies come back to the port it sends from) |
//! | `KSR.set_reply_no_connect()` / `KSR.set_forward_no_connect()` | `bool ()` | true; replies (forwarded requests) of this message go over TCP/TLS only on a connection that exists, none is opened for them (a relay to a destination without one fails, -1) |
//! | `KSR.set_reply_close()` / `KSR.set_forward_close()` | `bool ()` | true; no effect over UDP |
//! | `KSR.is_UDP()` | `bool ()` | true when the message came over UDP |
//! | `KSR.is_TCP/is_TLS/is_WS/is_WSS/is_WSX/is_SCTP()` | `bool ()` | true when the message came over that transport (`is_WSX`: WS or WSS; SCTP: never) |
//! | `KSR.is_proto(letters)` | `bool ()` | true when the letters name the receive protocol (`u` UDP, `t` TCP, `e` TLS, `s` SCTP, `v` WS, `w` WSS) |
//! | `KSR.is_IPv4()` / `KSR.is_IPv6()` | `bool ()` | address family of the source |
//! | `KSR.is_src_port(port)` / `KSR.is_dst_port(port)` | `bool (int)` | the source / local port equals `port` |
//! | `KSR.set_advertised_address(addr)` | `int (str)` | 1; `addr` (`host`, an IPv6 in brackets) is written instead of the receiving address in this message's Via and Record-Route when it is relayed; -1 for an empty or malformed `addr` |
//! | `KSR.set_advertised_port(port)` | `int (int)` | 1; likewise for the port; -1 outside 1..65535 |
//! | `KSR.sipshard_test.panic(text)` | sipshard extension, test only | panics (only with `core.test_hooks = true`; proves a panicking callback is answered 500 and counted in `shard.panics`) |

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{ffi, Shared};
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
    x.set(
        "modf",
        lua.create_function(|_, args: mlua::MultiValue| -> mlua::Result<i32> {
            let name = match args.front() {
                Some(mlua::Value::String(s)) => s.to_string_lossy(),
                _ => String::new(),
            };
            Err(mlua::Error::RuntimeError(format!(
                "KSR.x.modf('{name}') is not supported by sipshard"
            )))
        })?,
    )?;
    ksr.set("x", x)?;
    let s = shared.clone();
    ksr.set(
        "set_drop",
        lua.create_function(move |_, ()| s.with_msg(|m| m.dropped = true))?,
    )?;

    // The method and is_myself tests: fast functions (ffi.rs), the calls
    // every route makes.
    ffi::fast!(lua, ksr, "is_method_in", shared, [1], |s, a| {
        Ok(is_method_in(s, a.bytes(1)?)?.into())
    })?;
    ffi::fast!(lua, ksr, "is_method", shared, [1], |s, a| {
        let name = a.bytes(1)?;
        Ok(s.with_msg(|m| is_method(m, name))?.into())
    })?;
    for name in ["is_GET", "is_POST", "is_PUT", "is_DELETE"] {
        ffi::fast!(lua, ksr, name, shared, [], |s, _| {
            Ok(s.with_msg(|_| false)?.into())
        })?;
    }

    macro_rules! method_tests {
        ($($name:literal => $method:ident),* $(,)?) => {
            [$(($name, ffi::fast_fn!([], |s, _| Ok(is_method_kind(s, Method::$method)?.into())))),*]
        };
    }
    for (name, f) in method_tests![
        "is_INVITE" => Invite,
        "is_ACK" => Ack,
        "is_BYE" => Bye,
        "is_CANCEL" => Cancel,
        "is_REGISTER" => Register,
        "is_OPTIONS" => Options,
        "is_SUBSCRIBE" => Subscribe,
        "is_NOTIFY" => Notify,
        "is_MESSAGE" => Message,
        "is_INFO" => Info,
        "is_UPDATE" => Update,
        "is_PRACK" => Prack,
        "is_PUBLISH" => Publish,
        "is_REFER" => Refer,
        "is_KDMQ" => Kdmq,
    ] {
        ffi::set_fast(lua, ksr, name, shared, f)?;
    }

    ffi::fast!(lua, ksr, "is_myself", shared, [1], |s, a| {
        Ok(uri_is_myself(s, a.bytes(1)?).into())
    })?;
    ffi::fast!(lua, ksr, "is_myself_ruri", shared, [], |s, _| {
        Ok(is_myself_ruri(s)?.into())
    })?;
    ffi::fast!(lua, ksr, "is_myself_furi", shared, [], |s, _| {
        Ok(is_myself_furi(s)?.into())
    })?;
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
        "is_myself_duri",
        lua.create_function(move |_, ()| {
            let du = s.with_msg(|m| m.dst_uri.clone())?;
            Ok(du.is_some_and(|u| uri_is_myself(&s, &u)))
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "is_myself_nhuri",
        lua.create_function(move |_, ()| {
            let nh = s.with_msg(|m| m.dst_uri.clone().or_else(|| m.ruri().map(<[u8]>::to_vec)))?;
            Ok(nh.is_some_and(|u| uri_is_myself(&s, &u)))
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "is_myself_suri",
        lua.create_function(move |_, ()| {
            let src = s.with_msg(|m| m.src)?;
            let uri = match src.ip() {
                std::net::IpAddr::V4(v4) => format!("sip:{v4}:{}", src.port()),
                std::net::IpAddr::V6(v6) => format!("sip:[{v6}]:{}", src.port()),
            };
            Ok(uri_is_myself(&s, uri.as_bytes()))
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "set_advertised_address",
        lua.create_function(move |_, addr: mlua::String| {
            let a = addr.as_bytes();
            let a = a.trim_ascii();
            let host_ok = !a.is_empty()
                && a.len() <= 255
                && (a
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-')
                    || (a.first() == Some(&b'[')
                        && a.last() == Some(&b']')
                        && a.iter()
                            .all(|c| c.is_ascii_hexdigit() || b"[]:.".contains(c))));
            if !host_ok {
                return Ok(-1);
            }
            let a = a.to_vec();
            s.with_msg(|m| m.adv_addr = Some(a))?;
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "set_advertised_port",
        lua.create_function(move |_, port: i64| {
            let Ok(p) = u16::try_from(port) else {
                return Ok(-1);
            };
            if p == 0 {
                return Ok(-1);
            }
            s.with_msg(|m| m.adv_port = Some(p))?;
            Ok(1)
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
            Ok(s.myself.matches_any_port(host.as_bytes(), None))
        })?,
    )?;

    for (name, op) in [
        ("setflag", FlagOp::Set),
        ("resetflag", FlagOp::Reset),
        ("isflagset", FlagOp::Test),
    ] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, flag: i64| {
                s.with_msg(|m| flag_op(&mut m.flags, flag, op))
            })?,
        )?;
    }
    for (name, op) in [
        ("setsflag", FlagOp::Set),
        ("resetsflag", FlagOp::Reset),
        ("issflagset", FlagOp::Test),
    ] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, flag: i64| {
                s.with_msg(|m| flag_op(&mut m.sflags, flag, op))
            })?,
        )?;
    }

    let s = shared.clone();
    ksr.set(
        "force_rport",
        lua.create_function(move |_, ()| s.with_msg(|m| m.force_rport = true).map(|_| true))?,
    )?;
    let s = shared.clone();
    ksr.set(
        "set_reply_no_connect",
        lua.create_function(move |_, ()| s.with_msg(|m| m.reply_no_connect = true).map(|_| true))?,
    )?;
    let s = shared.clone();
    ksr.set(
        "set_forward_no_connect",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| m.forward_no_connect = true).map(|_| true)
        })?,
    )?;
    for name in ["add_local_rport", "set_reply_close", "set_forward_close"] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, ()| s.with_msg(|_| true))?,
        )?;
    }

    use crate::sip::Proto;
    for (name, protos) in [
        ("is_UDP", &[Proto::Udp][..]),
        ("is_TCP", &[Proto::Tcp][..]),
        ("is_TLS", &[Proto::Tls][..]),
        ("is_WS", &[Proto::Ws][..]),
        ("is_WSS", &[Proto::Wss][..]),
        ("is_WSX", &[Proto::Ws, Proto::Wss][..]),
        ("is_SCTP", &[][..]),
    ] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, ()| s.with_msg(|m| protos.contains(&m.proto)))?,
        )?;
    }
    let s = shared.clone();
    ksr.set(
        "is_proto",
        lua.create_function(move |_, letters: mlua::String| {
            let letters = letters.as_bytes().to_ascii_lowercase();
            s.with_msg(|m| {
                let c = match m.proto {
                    Proto::Udp => b'u',
                    Proto::Tcp => b't',
                    Proto::Tls => b'e',
                    Proto::Ws => b'v',
                    Proto::Wss => b'w',
                };
                letters.contains(&c)
            })
        })?,
    )?;
    for (name, v6) in [("is_IPv4", false), ("is_IPv6", true)] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, ()| s.with_msg(|m| m.src.is_ipv6() == v6))?,
        )?;
    }
    let s = shared.clone();
    ksr.set(
        "is_src_port",
        lua.create_function(move |_, port: i64| s.with_msg(|m| i64::from(m.src.port()) == port))?,
    )?;
    let s = shared.clone();
    ksr.set(
        "is_dst_port",
        lua.create_function(move |_, port: i64| s.with_msg(|m| i64::from(m.local.port()) == port))?,
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

/// `KSR.is_INVITE()`, `KSR.is_REGISTER()`, ...: the method is `method`.
pub(super) fn is_method_kind(s: &Shared, method: Method) -> mlua::Result<bool> {
    s.with_msg(|m| request_or_cseq_method(m) == method)
}

/// `KSR.is_method_in(letters)`: Kamailio's one-letter method set.
pub(super) fn is_method_in(s: &Shared, letters: &[u8]) -> mlua::Result<bool> {
    s.with_msg(|m| {
        let method = request_or_cseq_method(m);
        letters.iter().any(|c| method_letter(*c) == Some(method))
    })
}

/// `KSR.is_myself_ruri()`.
pub(super) fn is_myself_ruri(s: &Shared) -> mlua::Result<bool> {
    s.with_msg(|m| m.ruri().map(|r| r.to_vec()))
        .map(|r| r.is_some_and(|r| uri_is_myself(s, &r)))
}

/// `KSR.is_myself_furi()`.
pub(super) fn is_myself_furi(s: &Shared) -> mlua::Result<bool> {
    let uri = s.with_msg(|m| m.msg().from().ok().map(|f| f.uri.to_vec()))?;
    Ok(uri.is_some_and(|u| uri_is_myself(s, &u)))
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

/// KEMI `is_myself`: a `sip:`/`sips:` URI (no port = any of our ports) or
/// a bare host.
pub(super) fn uri_is_myself(s: &Shared, uri: &[u8]) -> bool {
    let uri = uri.trim_ascii();
    let is_sip = uri.len() > 4
        && (uri[..4].eq_ignore_ascii_case(b"sip:")
            || uri.len() > 5 && uri[..5].eq_ignore_ascii_case(b"sips:"));
    if !is_sip {
        return !uri.is_empty() && s.myself.matches_any_port(uri, None);
    }
    match SipUri::parse(uri) {
        Ok(u) => s.myself.matches_any_port(u.host, u.port),
        Err(_) => false,
    }
}

#[derive(Clone, Copy)]
enum FlagOp {
    Set,
    Reset,
    Test,
}

/// Kamailio's flag functions: flags 0..31; false for one outside.
fn flag_op(flags: &mut u32, flag: i64, op: FlagOp) -> bool {
    if !(0..32).contains(&flag) {
        return false;
    }
    let bit = 1u32 << flag;
    match op {
        FlagOp::Set => *flags |= bit,
        FlagOp::Reset => *flags &= !bit,
        FlagOp::Test => return *flags & bit != 0,
    }
    true
}

/// `KSR.is_method(name)`: one name, or a `|` list of standard methods.
fn is_method(m: &super::MsgCtx, name: &[u8]) -> bool {
    let msg = m.msg();
    let actual = msg.method_bytes();
    if actual.is_empty() || name.is_empty() {
        return false;
    }
    if !name.contains(&b'|') {
        return actual.eq_ignore_ascii_case(name);
    }
    let method = request_or_cseq_method(m);
    if method == Method::Other {
        return false;
    }
    name.split(|&c| c == b'|')
        .map(|n| n.trim_ascii().to_ascii_uppercase())
        .any(|n| !n.is_empty() && Method::from_bytes(&n) == method)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, global_int, request, run};

    #[test]
    fn is_myself_forms() {
        let eng = engine(
            r#"function ksr_request_route()
    a = KSR.is_myself("sip:10.0.0.1")
    b = KSR.is_myself("sip:10.0.0.1:5060")
    c = KSR.is_myself("sip:10.0.0.1:5070")
    d = KSR.is_myself("10.0.0.1")
    e = KSR.is_myself("proxy.example.com")
    f = KSR.is_myself("sip:bob@PROXY.example.com:7000")
    g = KSR.is_myself("192.0.2.1")
    h = KSR.is_myself_ruri()
    i = KSR.is_myself_duri()
    KSR.setdsturi("sip:10.0.0.1;transport=udp")
    j = KSR.is_myself_duri()
    k = KSR.is_myself_nhuri()
    l = KSR.is_myself_suri()
    n = KSR.is_myself_srcip()
end"#,
        );
        run(&eng, &request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]));
        for (g, want) in [
            ("a", 1),
            ("b", 1),
            ("c", 0),
            ("d", 1),
            ("e", 1),
            ("f", 1),
            ("g", 0),
            ("h", 1),
            ("i", 0),
            ("j", 1),
            ("k", 1),
            ("l", 0),
            ("n", 0),
        ] {
            assert_eq!(global_int(&eng, g), want, "{g}");
        }
    }

    #[test]
    fn flags_are_bools() {
        let eng = engine(
            r#"function ksr_request_route()
    a = KSR.setflag(3)
    b = KSR.isflagset(3)
    c = KSR.setflag(32)
    d = KSR.resetflag(3)
    e = KSR.isflagset(3)
    f = KSR.setsflag(5)
    g = KSR.issflagset(5)
    h = KSR.issflagset(4)
    KSR.resetsflag(5)
    i = KSR.issflagset(5)
    KSR.setflag(1)
    t = type(a)
end"#,
        );
        let (m, _) = run(&eng, &request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]));
        for (g, want) in [
            ("a", 1),
            ("b", 1),
            ("c", 0),
            ("d", 1),
            ("e", 0),
            ("f", 1),
            ("g", 1),
            ("h", 0),
            ("i", 0),
        ] {
            assert_eq!(global_int(&eng, g), want, "{g}");
        }
        let t: String = eng.lua().globals().get("t").unwrap();
        assert_eq!(t, "boolean");
        assert_eq!(m.flags, 2);
        assert_eq!(m.sflags, 0);
    }

    #[test]
    fn method_proto_and_ports() {
        let eng = engine(
            r#"function ksr_request_route()
    a = KSR.is_method("invite")
    b = KSR.is_method("BYE")
    c = KSR.is_method("BYE|INVITE")
    d = KSR.is_method("BYE|ACK")
    e = KSR.is_UDP()
    f = KSR.is_TCP()
    g = KSR.is_proto("tu")
    h = KSR.is_proto("tw")
    i = KSR.is_IPv4()
    j = KSR.is_IPv6()
    k = KSR.is_src_port(5060)
    l = KSR.is_src_port(5061)
    n = KSR.is_dst_port(5060)
    o = KSR.set_reply_no_connect()
    p = KSR.set_forward_no_connect()
end"#,
        );
        let (m, _) = run(&eng, &request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]));
        for (g, want) in [
            ("a", 1),
            ("b", 0),
            ("c", 1),
            ("d", 0),
            ("e", 1),
            ("f", 0),
            ("g", 1),
            ("h", 0),
            ("i", 1),
            ("j", 0),
            ("k", 1),
            ("l", 0),
            ("n", 1),
            ("o", 1),
            ("p", 1),
        ] {
            assert_eq!(global_int(&eng, g), want, "{g}");
        }
        assert!(m.reply_no_connect && m.forward_no_connect);
    }

    #[test]
    fn ksr_route_runs_a_named_function() {
        let eng = engine(
            r#"function helper() n = (n or 0) + 1 return 7 end
               function ksr_route_AUTH() n = (n or 0) + 10 end
               function stopper() KSR.x.exit() end
               function ksr_request_route()
                 a = KSR.route("helper") b = KSR.route("AUTH") c = KSR.route("nope")
                 KSR.route("stopper") after = 1
               end"#,
        );
        run(&eng, &request("OPTIONS sip:192.0.2.20 SIP/2.0", None, &[]));
        for (name, want) in [("a", 7), ("b", 1), ("c", -1), ("n", 11)] {
            assert_eq!(global_int(&eng, name), want, "{name}");
        }
        let after: Option<i64> = eng.lua().globals().get("after").unwrap();
        assert_eq!(after, None, "KSR.x.exit() in a sub-route ends the route");
    }

    #[test]
    fn modf_names_the_function() {
        let eng = engine(r#"function ksr_request_route() KSR.x.modf("rtpproxy_manage", "co") end"#);
        let (_, outcome) = run(&eng, &request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]));
        match outcome {
            super::super::RouteOutcome::Error(e) => assert!(
                e.contains("KSR.x.modf('rtpproxy_manage') is not supported by sipshard"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn force_rport_sends_to_source_port() {
        let msg = b"OPTIONS sip:10.0.0.1 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK-fr\r\n\
            From: <sip:alice@example.com>;tag=1\r\nTo: <sip:10.0.0.1>\r\n\
            Call-ID: fr@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        for (force, port) in [(false, 5070), (true, 5060)] {
            let eng = engine(&format!(
                "function ksr_request_route() {} KSR.sl.sl_send_reply(200, 'OK') end",
                if force { "KSR.force_rport()" } else { "" }
            ));
            let (m, _) = run(&eng, msg);
            let o = m.out[0];
            assert_eq!(o.dst.addr.port(), port);
            let wire = String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]);
            assert_eq!(wire.contains(";rport=5060"), force, "{wire}");
        }
    }
}
