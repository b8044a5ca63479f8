//! Destination URI, branch flags and branches: Kamailio core KEMI functions
//! and the `corex` module.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.setdsturi(uri)` | `bool (str)` | true; false for a URI that is not `sip:`/`sips:` with a host |
//! | `KSR.resetdsturi()` | `bool ()` | true |
//! | `KSR.isdsturiset()` | `bool ()` | true when `$du` is set |
//! | `KSR.setbflag(n)` / `KSR.resetbflag(n)` | `bool (int)` | true; false when `n` is outside 0..31 |
//! | `KSR.isbflagset(n)` | `bool (int)` | branch flag `n` of the main branch (`$bf`) |
//! | `KSR.setbiflag(n, branch)` / `KSR.resetbiflag(n, branch)` | `bool (int, int)` | as `setbflag` on branch `branch` (0 = main branch, 1.. = appended branches); false for a missing branch |
//! | `KSR.isbiflagset(n, branch)` | `bool (int, int)` | as `isbflagset` on branch `branch` |
//! | `KSR.corex.append_branch([uri[, q]])` | `int ([str, str])` | 1 / -1; without `uri`: a copy of the main branch (R-URI, `$du`, path, q, branch flags) |
//! | `KSR.corex.append_branch_uri(uri)` | `int (str)` | 1 / -1 (bad URI, too many branches) |
//! | `KSR.corex.append_branch_uri_q(uri, q)` | `int (str, str)` | 1 / -1; `q` like `"0.5"` (0..1, up to 3 decimals) |
//! | `KSR.corex.has_ruri_user()` | `int ()` | 1 the R-URI has a user part, -1 otherwise (also for a reply) |
//! | `KSR.corex.has_user_agent()` | `int ()` | 1 the message has a User-Agent header, -1 otherwise |
//! | `KSR.corex.setxflag(n)` / `KSR.corex.resetxflag(n)` | `int (int)` | extended message flags 0..63: 1; -1 outside the range |
//! | `KSR.corex.isxflagset(n)` | `int (int)` | 1 set, -1 not set or outside 0..63 |
//! | `KSR.corex.set_send_socket(addr)` | `int (str)` | 1 when `addr` (`udp:ip:port`, `tcp:ip:port`, `tls:ip:port`, `ip:port`) is one of sipshard's listeners: requests relayed from this message then use that transport (whatever the URI says); -1 otherwise |
//! | `KSR.corex.set_send_socket_name(name)` / `set_recv_socket(addr)` / `set_recv_socket_name(name)` | `int (str)` | -1 (sipshard has no named or alternative sockets) |
//! | `KSR.corex.is_socket_name(name)` | `int (str)` | -1 (no named sockets) |
//! | `KSR.corex.set_source_address(addr)` | `int (str)` | 1 the message's source (`$si`, `$sp`, where stateless replies go) becomes `addr` (`udp:ip:port`, `ip:port`, `[v6]:port`); -1 for a malformed address |
//! | `KSR.corex.via_add_srvid(flags)` | `int (int)` | 1 (accepted; sipshard adds no `srvid` Via parameter) |
//! | `KSR.corex.is_faked_msg()` | `int ()` | -1 (route messages are always real) |
//! | `KSR.corex.send_data(uri, data)` | `int (str, str)` | 1 `data` queued as one UDP datagram to the URI's host:port (an IP literal; port 5060 when absent); -1 otherwise |
//! | `KSR.corex.file_read(path)` | `xval (str)` | the file's content (at most 1 MiB), nil when it cannot be read; blocking file I/O in the shard: keep it for small local files |
//! | `KSR.corex.file_write(path, content)` | `int (str, str)` | 1 written (the file is replaced), -1 error; blocking, as `file_read` |
//!
//! At most 12 branches per request (Kamailio's `max_branches` default): the
//! main one and 11 appended.

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{BranchSpec, MsgCtx, Shared};
use crate::sip::{Scheme, SipUri};

/// Kamailio's `max_branches` default, counting the main branch.
pub(crate) const MAX_BRANCHES: usize = 12;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let s = shared.clone();
    ksr.set(
        "setdsturi",
        lua.create_function(move |_, uri: mlua::String| {
            let uri = uri.as_bytes();
            if !valid_dst_uri(&uri) {
                return Ok(false);
            }
            s.with_msg(|m| m.dst_uri = Some(uri.trim_ascii().to_vec()))?;
            Ok(true)
        })?,
    )?;
    let s = shared.clone();
    ksr.set(
        "resetdsturi",
        lua.create_function(move |_, ()| s.with_msg(|m| m.dst_uri = None).map(|_| true))?,
    )?;
    let s = shared.clone();
    ksr.set(
        "isdsturiset",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| m.dst_uri.as_ref().is_some_and(|d| !d.is_empty()))
        })?,
    )?;
    for (name, op) in [("setbflag", FlagOp::Set), ("resetbflag", FlagOp::Reset)] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, flag: i64| s.with_msg(|m| bflag(m, flag, 0, op)))?,
        )?;
    }
    let s = shared.clone();
    ksr.set(
        "isbflagset",
        lua.create_function(move |_, flag: i64| s.with_msg(|m| bflag(m, flag, 0, FlagOp::Test)))?,
    )?;
    for (name, op) in [
        ("setbiflag", FlagOp::Set),
        ("resetbiflag", FlagOp::Reset),
        ("isbiflagset", FlagOp::Test),
    ] {
        let s = shared.clone();
        ksr.set(
            name,
            lua.create_function(move |_, (flag, branch): (i64, i64)| {
                s.with_msg(|m| bflag(m, flag, branch, op))
            })?,
        )?;
    }

    let corex = lua.create_table()?;
    let s = shared.clone();
    corex.set(
        "append_branch",
        lua.create_function(
            move |_, (uri, q): (Option<mlua::String>, Option<mlua::String>)| {
                let uri = uri.map(|u| u.as_bytes().to_vec());
                let q = q.map(|q| q.as_bytes().to_vec());
                s.with_msg(|m| append_branch(m, uri.as_deref(), q.as_deref()))
            },
        )?,
    )?;
    let s = shared.clone();
    corex.set(
        "append_branch_uri",
        lua.create_function(move |_, uri: mlua::String| {
            let uri = uri.as_bytes();
            s.with_msg(|m| append_branch(m, Some(&uri), None))
        })?,
    )?;
    let s = shared.clone();
    corex.set(
        "append_branch_uri_q",
        lua.create_function(move |_, (uri, q): (mlua::String, mlua::String)| {
            let (uri, q) = (uri.as_bytes(), q.as_bytes());
            s.with_msg(|m| append_branch(m, Some(&uri), Some(&q)))
        })?,
    )?;
    let s = shared.clone();
    corex.set(
        "has_ruri_user",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| {
                let has = m.msg().is_request()
                    && m.ruri()
                        .and_then(|r| SipUri::parse(r).ok())
                        .is_some_and(|u| u.user.is_some_and(|u| !u.is_empty()));
                if has {
                    1
                } else {
                    -1
                }
            })
        })?,
    )?;
    let s = shared.clone();
    corex.set(
        "has_user_agent",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| {
                if m.msg().user_agent().is_some() {
                    1
                } else {
                    -1
                }
            })
        })?,
    )?;
    for (name, op) in [
        ("setxflag", FlagOp::Set),
        ("resetxflag", FlagOp::Reset),
        ("isxflagset", FlagOp::Test),
    ] {
        let s = shared.clone();
        corex.set(
            name,
            lua.create_function(move |_, flag: i64| {
                s.with_msg(|m| {
                    if !(0..64).contains(&flag) {
                        return -1;
                    }
                    let bit = 1u64 << flag;
                    match op {
                        FlagOp::Set => m.xflags |= bit,
                        FlagOp::Reset => m.xflags &= !bit,
                        FlagOp::Test => {
                            if m.xflags & bit == 0 {
                                return -1;
                            }
                        }
                    }
                    1
                })
            })?,
        )?;
    }
    let s = shared.clone();
    corex.set(
        "set_send_socket",
        lua.create_function(move |_, addr: mlua::String| {
            // `proto:ip:port` of one of our listeners: requests relayed from
            // this message leave on that transport.
            let Some((proto, a)) = parse_proto_socket(&addr.as_bytes()) else {
                return s.with_msg(|_| -1);
            };
            let ours = match proto {
                crate::sip::Proto::Udp => a == s.local_addr,
                p => s
                    .services
                    .tables
                    .conns
                    .get()
                    .and_then(|c| c.local_of(p))
                    .is_some_and(|l| l == a || (l.ip().is_unspecified() && l.port() == a.port())),
            };
            s.with_msg(|m| {
                if !ours {
                    return -1;
                }
                m.force_proto = (proto != crate::sip::Proto::Udp
                    || m.proto != crate::sip::Proto::Udp)
                    .then_some(proto);
                1
            })
        })?,
    )?;
    for name in [
        "set_send_socket_name",
        "set_recv_socket",
        "set_recv_socket_name",
        "is_socket_name",
    ] {
        corex.set(name, lua.create_function(|_, _: mlua::Value| Ok(-1))?)?;
    }
    let s = shared.clone();
    corex.set(
        "set_source_address",
        lua.create_function(move |_, addr: mlua::String| {
            let Some(a) = parse_socket(&addr.as_bytes()) else {
                return Ok(-1);
            };
            s.with_msg(|m| {
                m.src = a;
                1
            })
        })?,
    )?;
    corex.set("via_add_srvid", lua.create_function(|_, _: i64| Ok(1))?)?;
    let s = shared.clone();
    corex.set(
        "is_faked_msg",
        lua.create_function(move |_, ()| s.with_msg(|_| -1))?,
    )?;
    let s = shared.clone();
    corex.set(
        "send_data",
        lua.create_function(move |_, (uri, data): (mlua::String, mlua::String)| {
            let Some(dst) = uri_addr(&uri.as_bytes()) else {
                return Ok(-1);
            };
            let data = data.as_bytes();
            if data.is_empty() || data.len() > 65_507 {
                return Ok(-1);
            }
            s.with_msg(|m| {
                m.push_out(&data, dst.into());
                1
            })
        })?,
    )?;
    corex.set(
        "file_read",
        lua.create_function(|lua, path: String| {
            use std::io::Read;
            let Ok(f) = std::fs::File::open(&path) else {
                return Ok(mlua::Value::Nil);
            };
            let mut buf = Vec::new();
            if f.take(FILE_READ_MAX + 1).read_to_end(&mut buf).is_err()
                || buf.len() as u64 > FILE_READ_MAX
            {
                return Ok(mlua::Value::Nil);
            }
            Ok(mlua::Value::String(lua.create_string(&buf)?))
        })?,
    )?;
    corex.set(
        "file_write",
        lua.create_function(|_, (path, content): (String, mlua::String)| {
            Ok(match std::fs::write(&path, &*content.as_bytes()) {
                Ok(()) => 1,
                Err(_) => -1,
            })
        })?,
    )?;
    ksr.set("corex", corex)?;
    Ok(())
}

/// Largest file `KSR.corex.file_read` returns.
const FILE_READ_MAX: u64 = 1 << 20;

/// `udp:ip:port`, `ip:port` or `[v6]:port`.
fn parse_socket(a: &[u8]) -> Option<std::net::SocketAddr> {
    let t = std::str::from_utf8(a).ok()?.trim();
    let t = t
        .strip_prefix("udp:")
        .or_else(|| t.strip_prefix("UDP:"))
        .unwrap_or(t);
    t.parse().ok()
}

/// `proto:ip:port` (`udp`, `tcp`, `tls`) or `ip:port` (UDP).
fn parse_proto_socket(a: &[u8]) -> Option<(crate::sip::Proto, std::net::SocketAddr)> {
    let t = std::str::from_utf8(a).ok()?.trim();
    if let Some((p, rest)) = t.split_once(':') {
        if let Some(proto) = crate::sip::Proto::from_token(p.as_bytes()) {
            return Some((proto, rest.parse().ok()?));
        }
    }
    Some((crate::sip::Proto::Udp, t.parse().ok()?))
}

/// The UDP address of a `sip:` URI whose host is an IP literal.
fn uri_addr(uri: &[u8]) -> Option<std::net::SocketAddr> {
    let u = SipUri::parse(uri).ok()?;
    if !matches!(u.scheme, Scheme::Sip | Scheme::Sips) {
        return None;
    }
    let host = std::str::from_utf8(u.host).ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

#[derive(Clone, Copy)]
enum FlagOp {
    Set,
    Reset,
    Test,
}

fn bflag(m: &mut MsgCtx, flag: i64, branch: i64, op: FlagOp) -> bool {
    if !(0..32).contains(&flag) {
        return false;
    }
    let flags = match branch {
        0 => &mut m.bflags,
        b if b > 0 => match m.branches.get_mut(b as usize - 1) {
            Some(br) => &mut br.bflags,
            None => return false,
        },
        _ => return false,
    };
    let bit = 1u32 << flag;
    match op {
        FlagOp::Set => *flags |= bit,
        FlagOp::Reset => *flags &= !bit,
        FlagOp::Test => return *flags & bit != 0,
    }
    true
}

/// `sip:`/`sips:` URI with a host.
pub(crate) fn valid_dst_uri(uri: &[u8]) -> bool {
    SipUri::parse(uri.trim_ascii())
        .is_ok_and(|u| matches!(u.scheme, Scheme::Sip | Scheme::Sips) && !u.host.is_empty())
}

/// A branch Request-URI: `sip:`/`sips:` with a host, or `tel:`.
fn valid_branch_uri(uri: &[u8]) -> bool {
    SipUri::parse(uri).is_ok_and(|u| match u.scheme {
        Scheme::Sip | Scheme::Sips => !u.host.is_empty(),
        Scheme::Tel => true,
        Scheme::Other => false,
    })
}

/// A q-value `0`..`1` with up to three decimals, in thousandths.
pub(crate) fn parse_q(q: &[u8]) -> Option<u16> {
    let q = q.trim_ascii();
    let (whole, frac) = match q.iter().position(|&c| c == b'.') {
        Some(i) => (&q[..i], &q[i + 1..]),
        None => (q, &[][..]),
    };
    if whole.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f = 0u16;
    for k in 0..3 {
        f = f * 10 + frac.get(k).map_or(0, |&c| u16::from(c - b'0'));
    }
    match whole[0] {
        b'0' => Some(f),
        b'1' if f == 0 => Some(1000),
        _ => None,
    }
}

fn append_branch(m: &mut MsgCtx, uri: Option<&[u8]>, q: Option<&[u8]>) -> i32 {
    if m.branches.len() + 1 >= MAX_BRANCHES {
        return -1;
    }
    let q = match q {
        Some(q) => match parse_q(q) {
            Some(q) => Some(q),
            None => return -1,
        },
        None => None,
    };
    let branch = match uri {
        Some(uri) => {
            let uri = uri.trim_ascii();
            if !valid_branch_uri(uri) {
                return -1;
            }
            BranchSpec {
                uri: uri.to_vec(),
                q,
                ..BranchSpec::default()
            }
        }
        None => {
            let Some(ruri) = m.ruri() else { return -1 };
            BranchSpec {
                uri: ruri.to_vec(),
                dst_uri: m.dst_uri.clone(),
                path: m.path.clone(),
                q: q.or(m.ruri_q),
                bflags: m.bflags,
            }
        }
    };
    m.branches.push(branch);
    1
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, global_int, request, run};
    use super::*;

    #[test]
    fn q_values() {
        for (q, want) in [
            ("0.5", Some(500)),
            ("1", Some(1000)),
            ("1.0", Some(1000)),
            ("0", Some(0)),
            ("0.123", Some(123)),
            (" 0.05 ", Some(50)),
            ("1.5", None),
            ("0.1234", None),
            ("2", None),
            ("", None),
            (".5", None),
            ("0.a", None),
        ] {
            assert_eq!(parse_q(q.as_bytes()), want, "{q:?}");
        }
    }

    #[test]
    fn dst_uri_and_bflags() {
        let eng = engine(
            r#"
function ksr_request_route()
    a = KSR.isdsturiset()
    b = KSR.setdsturi("sip:192.0.2.40:5070;transport=udp")
    c = KSR.isdsturiset()
    bad = KSR.setdsturi("not a uri")
    du = KSR.pv.get("$du")
    f1 = KSR.setbflag(3)
    f2 = KSR.isbflagset(3)
    f3 = KSR.isbflagset(4)
    f4 = KSR.setbflag(32)
    KSR.setbflag(5)
    KSR.resetbflag(5)
    bf = KSR.pv.get("$bf")
    n = KSR.corex.append_branch()
    bi = KSR.setbiflag(1, 1)
    bi2 = KSR.isbiflagset(1, 1)
    bi3 = KSR.setbiflag(1, 2)
    KSR.pv.sets("$du", "sip:192.0.2.41")
    d2 = KSR.pv.get("$du")
    n2 = KSR.corex.append_branch("sip:carol@192.0.2.50", "0.5")
    n3 = KSR.corex.append_branch_uri_q("sip:dave@192.0.2.51", "7")
    n4 = KSR.corex.append_branch_uri("urn:x")
    KSR.resetdsturi()
    e = KSR.isdsturiset()
end
"#,
        );
        let (m, _) = run(
            &eng,
            &request("INVITE sip:bob@example.com SIP/2.0", None, &[]),
        );
        for (g, want) in [
            ("a", 0),
            ("b", 1),
            ("c", 1),
            ("bad", 0),
            ("f1", 1),
            ("f2", 1),
            ("f3", 0),
            ("f4", 0),
            ("bf", 8),
            ("n", 1),
            ("bi", 1),
            ("bi2", 1),
            ("bi3", 0),
            ("n2", 1),
            ("n3", -1),
            ("n4", -1),
            ("e", 0),
        ] {
            assert_eq!(global_int(&eng, g), want, "{g}");
        }
        let du: String = eng.lua().globals().get("du").unwrap();
        assert_eq!(du, "sip:192.0.2.40:5070;transport=udp");
        assert_eq!(m.dst_uri, None);
        assert_eq!(m.bflags, 8);
        assert_eq!(
            m.branches,
            vec![
                BranchSpec {
                    uri: b"sip:bob@example.com".to_vec(),
                    dst_uri: Some(b"sip:192.0.2.40:5070;transport=udp".to_vec()),
                    path: None,
                    q: None,
                    bflags: 8 | 2,
                },
                BranchSpec {
                    uri: b"sip:carol@192.0.2.50".to_vec(),
                    q: Some(500),
                    ..BranchSpec::default()
                },
            ]
        );
    }

    #[test]
    fn corex_breadth() {
        let dir = std::env::temp_dir().join(format!("sipshard-corex-{}", std::process::id()));
        let path = dir.to_string_lossy().into_owned();
        let eng = engine(&format!(
            r#"function ksr_request_route()
    a = KSR.corex.has_ruri_user()
    b = KSR.corex.has_user_agent()
    c = KSR.corex.setxflag(40)
    d = KSR.corex.isxflagset(40)
    e = KSR.corex.isxflagset(41)
    f = KSR.corex.setxflag(64)
    g = KSR.corex.set_send_socket("udp:10.0.0.1:5060")
    h = KSR.corex.set_send_socket("udp:10.0.0.2:5060")
    i = KSR.corex.set_source_address("udp:198.51.100.7:7000")
    si = KSR.pv.get("$si")
    j = KSR.corex.send_data("sip:192.0.2.33:5090", "hello")
    k = KSR.corex.send_data("sip:example.com", "hello")
    l = KSR.corex.file_write("{path}", "data 1")
    fr = KSR.corex.file_read("{path}")
    nf = KSR.corex.file_read("{path}.missing")
    n = KSR.corex.is_faked_msg()
end"#
        ));
        let (m, _) = run(
            &eng,
            &request("OPTIONS sip:10.0.0.1 SIP/2.0", None, &["User-Agent: x"]),
        );
        let _ = std::fs::remove_file(&dir);
        for (g, want) in [
            ("a", -1),
            ("b", 1),
            ("c", 1),
            ("d", 1),
            ("e", -1),
            ("f", -1),
            ("g", 1),
            ("h", -1),
            ("i", 1),
            ("j", 1),
            ("k", -1),
            ("l", 1),
            ("n", -1),
        ] {
            assert_eq!(global_int(&eng, g), want, "{g}");
        }
        let g = eng.lua().globals();
        assert_eq!(g.get::<String>("si").unwrap(), "198.51.100.7");
        assert_eq!(g.get::<String>("fr").unwrap(), "data 1");
        assert!(g.get::<mlua::Value>("nf").unwrap().is_nil());
        assert_eq!(m.xflags, 1 << 40);
        assert_eq!(m.out.len(), 1);
        assert_eq!(m.out[0].dst.addr, "192.0.2.33:5090".parse().unwrap());
        run(&eng, &request("INVITE sip:bob@10.0.0.1 SIP/2.0", None, &[]));
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), -1);
    }

    #[test]
    fn branch_limit() {
        let eng = engine(
            "function ksr_request_route() for i = 1, 12 do last = KSR.corex.append_branch() end end",
        );
        let (m, _) = run(
            &eng,
            &request("INVITE sip:bob@example.com SIP/2.0", None, &[]),
        );
        assert_eq!(m.branches.len(), MAX_BRANCHES - 1);
        assert_eq!(global_int(&eng, "last"), -1);
    }
}
