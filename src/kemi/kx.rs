//! KSR.kx: typed getters of common message attributes (Kamailio `kemix` module).
//!
//! `get_*` return the value or nil; `gete_*` return `""` instead of nil;
//! `getw_*` return `"<null>"` instead of nil (what Kamailio 5.6 returns).
//! Values are those of the pseudo-variable named in the last column, so an
//! empty host or tag, a `tel:` host, or an R-URI of an unknown scheme is nil.
//!
//! | KSR function | Kamailio signature | value |
//! |---|---|---|
//! | `KSR.kx.get_ruri()` `get_ouri()` `gete_ouri()` `getw_ouri()` | `xval ()` | `$ru`; `$ou` (after an R-URI rewrite: the received R-URI, any scheme) |
//! | `KSR.kx.get_ruser()` `get_rhost()` `gete_ruser()` `getw_ruser()` `gete_rhost()` `getw_rhost()` | `xval ()` | `$rU $rd` |
//! | `KSR.kx.get_furi()` `get_turi()` | `xval ()` | `$fu $tu` |
//! | `KSR.kx.get_fuser()` `get_fhost()` `get_tuser()` `get_thost()` `gete_fuser()` `getw_fuser()` `gete_fhost()` `getw_fhost()` `gete_tuser()` `getw_tuser()` `gete_thost()` `getw_thost()` | `xval ()` | `$fU $fd $tU $td` |
//! | `KSR.kx.get_duri()` `get_cturi()` `get_ua()` `get_au()` `get_body()` `gete_duri()` `getw_duri()` `gete_cturi()` `getw_cturi()` `gete_ua()` `getw_ua()` `gete_au()` `getw_au()` `gete_body()` `getw_body()` | `xval ()` | `$du`, first Contact URI, `$ua $au`, body (nil when empty) |
//! | `KSR.kx.get_nhuri()` | `xval ()` | next hop: `$du`, else `$ru` |
//! | `KSR.kx.get_method()` `get_callid()` `get_proto()` `get_msgbuf()` | `xval ()` | `$rm $ci $pr $mb` |
//! | `KSR.kx.get_srcip()` `get_rcvip()` `get_rcvadvip()` | `xval ()` | `$si $Ri $Ri` (no advertised address) |
//! | `KSR.kx.get_srcport()` `get_rcvport()` `get_rcvadvport()` | `xval ()` | `$sp $Rp $Rp` (integers) |
//! | `KSR.kx.get_srcuri()` | `xval ()` | `sip:$si:$sp` |
//! | `KSR.kx.get_srcaddr_sock()` `get_rcvaddr_sock()` | `xval ()` | `udp:$si:$sp`, `udp:$Ri:$Rp` |
//! | `KSR.kx.get_rcv_sock_name()` `get_send_sock()` `get_send_sock_name()` | `xval ()` | nil (no socket names; no send socket set) |
//! | `KSR.kx.get_send_sock_port()` | `int ()` | 0 |
//! | `KSR.kx.get_status()` | `int ()` | `$rs`, -1 for a request |
//! | `KSR.kx.gets_status()` | `xval ()` | `$rs` as a string, nil for a request |
//! | `KSR.kx.get_msglen()` `get_bodylen()` | `int ()` | `$ml $bs` |
//! | `KSR.kx.get_msgtype()` | `int ()` | 1 request, 2 reply |
//! | `KSR.kx.get_protoid()` | `int ()` | the receive transport, Kamailio's numbers: 1 UDP, 2 TCP, 3 TLS, 5 WS, 6 WSS |
//! | `KSR.kx.get_conid()` | `int ()` | id of the TCP/TLS connection the message came on (`$conid`); -1 over UDP |
//! | `KSR.kx.get_timestamp()` | `int ()` | unix seconds |
//! | `KSR.kx.get_def(name)` | `xval (str)` | value of `core.defines` `NAME=value` (as written), `""` otherwise |
//! | `KSR.kx.get_defn(name)` | `int (str)` | that value as an integer, 0 otherwise |
//! | `KSR.kx.ifdef(name)` `ifndef(name)` | `bool (str)` | whether `core.defines` has `name` |
//! | `KSR.kx.get_env(name)` | `xval (str)` | environment variable, `""` when unset |
//! | `KSR.kx.get_envn(name)` | `int (str)` | environment variable as an integer, 0 otherwise |
//! | `KSR.kx.get_rport()` `get_cseq()` | `int ()` | `$rp $cs` as integers — sipshard extension |
//! | `KSR.kx.get_ftag()` `get_ttag()` `gete_ftag()` `getw_ftag()` `gete_ttag()` `getw_ttag()` | `xval ()` | `$ft $tt` — sipshard extension |
//! | `KSR.kx.gete_ruri()` `getw_ruri()` `gete_furi()` `getw_furi()` `gete_turi()` `getw_turi()` `gete_srcip()` `getw_srcip()` `gete_rcvip()` `getw_rcvip()` `gete_method()` `getw_method()` `gete_callid()` `getw_callid()` `gete_proto()` `getw_proto()` | `xval ()` | sipshard extension |

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::pv::{Val, NULL_TEXT};
use super::Shared;

fn null_as(lua: &Lua, v: Val, null: Option<&str>) -> mlua::Result<Value> {
    match (v, null) {
        (Val::Null, Some(t)) => Val::s(t.as_bytes()).into_lua(lua),
        (v, _) => v.into_lua(lua),
    }
}

/// (suffix, how the value is read)
type Getter = fn(&Lua, &Shared) -> mlua::Result<Val>;

fn pv(lua: &Lua, s: &Shared, name: &str) -> mlua::Result<Val> {
    super::pv::get_val(lua, s, name)
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let kx = lua.create_table()?;
    let strings: &[(&str, Getter)] = &[
        ("ruri", |l, s| pv(l, s, "$ru")),
        ("ruser", |l, s| pv(l, s, "$rU")),
        ("rhost", |l, s| pv(l, s, "$rd")),
        // `$ou`; once the R-URI was rewritten, the received one as it is,
        // whatever its scheme (what Kamailio 5.6 gives)
        ("ouri", |l, s| {
            if s.with_msg(|m| m.new_ruri.is_some())? {
                s.with_msg(|m| Val::opt(m.msg().ruri()))
            } else {
                pv(l, s, "$ou")
            }
        }),
        ("furi", |l, s| pv(l, s, "$fu")),
        ("fuser", |l, s| pv(l, s, "$fU")),
        ("fhost", |l, s| pv(l, s, "$fd")),
        ("ftag", |l, s| pv(l, s, "$ft")),
        ("turi", |l, s| pv(l, s, "$tu")),
        ("tuser", |l, s| pv(l, s, "$tU")),
        ("thost", |l, s| pv(l, s, "$td")),
        ("ttag", |l, s| pv(l, s, "$tt")),
        ("srcip", |l, s| pv(l, s, "$si")),
        ("rcvip", |l, s| pv(l, s, "$Ri")),
        ("method", |l, s| pv(l, s, "$rm")),
        ("callid", |l, s| pv(l, s, "$ci")),
        ("ua", |l, s| pv(l, s, "$ua")),
        ("duri", |l, s| pv(l, s, "$du")),
        ("proto", |l, s| pv(l, s, "$pr")),
        ("au", |l, s| pv(l, s, "$au")),
        ("cturi", |_, s| s.with_msg(cturi)),
        ("body", |l, s| {
            Ok(match pv(l, s, "$rb")? {
                Val::Str(b) if b.is_empty() => Val::Null,
                v => v,
            })
        }),
    ];
    for (suffix, getter) in strings {
        for (prefix, null) in [
            ("get_", None),
            ("gete_", Some("")),
            ("getw_", Some(NULL_TEXT)),
        ] {
            let s = shared.clone();
            let getter = *getter;
            kx.set(
                format!("{prefix}{suffix}"),
                lua.create_function(move |lua, ()| null_as(lua, getter(lua, &s)?, null))?,
            )?;
        }
    }
    let xvals: &[(&str, Getter)] = &[
        ("msgbuf", |l, s| pv(l, s, "$mb")),
        ("srcport", |l, s| pv(l, s, "$sp")),
        ("rcvport", |l, s| pv(l, s, "$Rp")),
        ("rcvadvip", |l, s| pv(l, s, "$Ri")),
        ("rcvadvport", |l, s| pv(l, s, "$Rp")),
        ("rcv_sock_name", |_, _| Ok(Val::Null)),
        ("send_sock", |_, _| Ok(Val::Null)),
        ("send_sock_name", |_, _| Ok(Val::Null)),
        ("nhuri", |l, s| match pv(l, s, "$du")? {
            Val::Null => pv(l, s, "$ru"),
            v => Ok(v),
        }),
        ("srcuri", |_, s| {
            s.with_msg(|m| {
                let t = match m.src.ip() {
                    std::net::IpAddr::V4(ip) => format!("sip:{ip}:{}", m.src.port()),
                    std::net::IpAddr::V6(ip) => format!("sip:[{ip}]:{}", m.src.port()),
                };
                Val::Str(t.into_bytes())
            })
        }),
        ("srcaddr_sock", |_, s| {
            s.with_msg(|m| Val::Str(sock_text(m.src).into_bytes()))
        }),
        ("rcvaddr_sock", |_, s| {
            s.with_msg(|m| Val::Str(sock_text(m.local).into_bytes()))
        }),
        ("status_s", |l, s| {
            Ok(match pv(l, s, "$rs")? {
                Val::Int(i) => Val::Str(i.to_string().into_bytes()),
                _ => Val::Null,
            })
        }),
    ];
    for (suffix, getter) in xvals {
        let s = shared.clone();
        let getter = *getter;
        let name = if *suffix == "status_s" {
            "gets_status".to_string()
        } else {
            format!("get_{suffix}")
        };
        kx.set(
            name,
            lua.create_function(move |lua, ()| getter(lua, &s)?.into_lua(lua))?,
        )?;
    }
    let ints: &[(&str, &str)] = &[
        ("rport", "$rp"),
        ("status", "$rs"),
        ("cseq", "$cs"),
        ("msglen", "$ml"),
        ("bodylen", "$bs"),
        ("msgtype", "$mt"),
        ("timestamp", "$Ts"),
    ];
    for (suffix, pvname) in ints {
        let s = shared.clone();
        let pvname = *pvname;
        kx.set(
            format!("get_{suffix}"),
            lua.create_function(move |lua, ()| match pv(lua, &s, pvname)? {
                Val::Null => Ok(-1),
                v => Ok(v.int_pub()),
            })?,
        )?;
    }
    let s = shared.clone();
    kx.set(
        "get_protoid",
        lua.create_function(move |_, ()| {
            // Kamailio's PROTO_* numbers: UDP 1, TCP 2, TLS 3, WS 5, WSS 6.
            s.with_msg(|m| match m.proto {
                crate::sip::Proto::Udp => 1,
                crate::sip::Proto::Tcp => 2,
                crate::sip::Proto::Tls => 3,
                crate::sip::Proto::Ws => 5,
                crate::sip::Proto::Wss => 6,
            })
        })?,
    )?;
    let s = shared.clone();
    kx.set(
        "get_conid",
        lua.create_function(move |_, ()| s.with_msg(|m| m.conn_id.map_or(-1, |id| id as i64)))?,
    )?;
    kx.set("get_send_sock_port", lua.create_function(|_, ()| Ok(0))?)?;
    let s = shared.clone();
    kx.set(
        "get_def",
        lua.create_function(move |lua, name: String| {
            let v = define(&s, &name).flatten().unwrap_or_default();
            lua.create_string(v)
        })?,
    )?;
    let s = shared.clone();
    kx.set(
        "get_defn",
        lua.create_function(move |_, name: String| {
            Ok(define(&s, &name)
                .flatten()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0))
        })?,
    )?;
    let s = shared.clone();
    kx.set(
        "ifdef",
        lua.create_function(move |_, name: String| Ok(define(&s, &name).is_some()))?,
    )?;
    let s = shared.clone();
    kx.set(
        "ifndef",
        lua.create_function(move |_, name: String| Ok(define(&s, &name).is_none()))?,
    )?;
    kx.set(
        "get_env",
        lua.create_function(|lua, name: String| {
            lua.create_string(std::env::var(&name).unwrap_or_default())
        })?,
    )?;
    kx.set(
        "get_envn",
        lua.create_function(|_, name: String| {
            Ok(std::env::var(&name)
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0))
        })?,
    )?;
    ksr.set("kx", kx)?;
    Ok(())
}

/// The Contact URI as Kamailio 5.6's `get_cturi` gives it: the last contact
/// of the first Contact header; nil for `*` or no Contact.
fn cturi(m: &mut super::MsgCtx) -> Val {
    let msg = m.msg();
    let Some(first) = msg.header(crate::sip::HdrName::Contact) else {
        return Val::Null;
    };
    let mut last = None;
    let mut rest = first;
    while let Some((_, uri)) = super::pv::first_nameaddr(rest) {
        if uri == b"*" {
            return Val::Null;
        }
        last = Some(uri);
        // skip to the next top-level comma
        let mut in_quote = false;
        let mut in_angle = false;
        let next = rest.iter().position(|&c| {
            match c {
                b'"' => in_quote = !in_quote,
                b'<' if !in_quote => in_angle = true,
                b'>' if !in_quote => in_angle = false,
                b',' if !in_quote && !in_angle => return true,
                _ => {}
            }
            false
        });
        match next.and_then(|i| rest.get(i + 1..)) {
            Some(r) => rest = r,
            None => break,
        }
    }
    Val::opt(last)
}

/// `Some(value)` when `name` is defined (`Some(None)` without a value).
fn define(s: &Shared, name: &str) -> Option<Option<String>> {
    s.pv.defines
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn sock_text(a: std::net::SocketAddr) -> String {
    match a.ip() {
        std::net::IpAddr::V4(ip) => format!("udp:{ip}:{}", a.port()),
        std::net::IpAddr::V6(ip) => format!("udp:[{ip}]:{}", a.port()),
    }
}
