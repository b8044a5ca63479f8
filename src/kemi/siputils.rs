//! KSR.siputils: SIP message and URI tests (Kamailio `siputils` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.siputils.has_totag()` | `int ()` | 1 the To header has a non-empty tag, -1 otherwise |
//! | `KSR.siputils.is_request()` | `int ()` | 1 request / -1 reply |
//! | `KSR.siputils.is_reply()` | `int ()` | 1 reply / -1 request |
//! | `KSR.siputils.is_first_hop()` | `int ()` | request: 1 when it carries a single Via value; reply: 1 when the top Record-Route URI is ours, its host an IP, and the source is not ours; -1 otherwise |
//! | `KSR.siputils.is_first_hop_mode(mode)` | `int (int)` | as `is_first_hop`; mode 1 for replies only asks that the top Record-Route is ours |
//! | `KSR.siputils.is_uri(s)` | `int (str)` | 1 `s` parses as a sip/sips/tel URI, -1 otherwise |
//! | `KSR.siputils.is_user(username)` | `int (str)` | 1 the credentials an `auth_check` / `www_authorize` / `proxy_authorize` accepted for this message have user `username` (`$au`), -1 otherwise (also before any succeeded) |
//! | `KSR.siputils.uri_param(name)` | `int (str)` | 1 the R-URI has parameter `name` without a value, -1 otherwise |
//! | `KSR.siputils.uri_param_value(name, value)` | `int (str, str)` | 1 the R-URI has `name=value` (value compared exactly), -1 otherwise |
//! | `KSR.siputils.uri_param_any(name)` | `int (str)` | 1 the R-URI has parameter `name`, with or without a value |
//! | `KSR.siputils.uri_param_rm(name)` | `int (str)` | 1 every `name` parameter removed from the R-URI (also when there was none), -1 no usable R-URI |
//! | `KSR.siputils.add_uri_param(param)` | `int (str)` | 1 `;param` appended to the R-URI's parameters (also 1 for an empty `param`: nothing added), -1 for a reply or a tel: R-URI |
//! | `KSR.siputils.is_tel_number(s)` | `int (str)` | 1 digits, optionally after `+` and a first digit 1-9; -2 otherwise (Kamailio's code) |
//! | `KSR.siputils.is_numeric(s)` | `int (str)` | 1 digits only (at least one), -2 otherwise |
//! | `KSR.siputils.is_alphanum(s)` | `int (str)` | 1 ASCII letters and digits only; -2 empty; -3 another character |
//! | `KSR.siputils.is_alphanumex(s, extra)` | `int (str, str)` | as `is_alphanum`, also allowing the characters of `extra` |
//! | `KSR.siputils.cmp_uri(a, b)` | `int (str, str)` | 1 the two URIs are equal by RFC 3261 §19.1.4 (user case-sensitive, host case-insensitive, port, `user`/`ttl`/`method`/`maddr`/`transport` parameters, common parameters), -1 otherwise or when one does not parse |
//! | `KSR.siputils.cmp_aor(a, b)` | `int (str, str)` | 1 same user, host (case-insensitive) and port (absent = 5060), -1 otherwise |
//! | `KSR.siputils.cmp_hdr_name(a, b)` | `int (str, str)` | 1 the two header names are the same (case-insensitive, compact forms match), -1 otherwise |
//! | `KSR.siputils.is_gruu()` | `int ()` | 1 the R-URI is a public GRUU (`gr=value`), 2 a temporary GRUU (`gr`), -1 no `gr` parameter |
//! | `KSR.siputils.options_reply()` | `int ()` | 1 a 200 OK sent with Kamailio's default `Accept: */*`, `Accept-Encoding:`, `Accept-Language: en`, `Supported:`; -1 for a request other than OPTIONS or an R-URI with a user part |
//!
//! Not implemented yet (Kamailio has them): `encode_contact` / `decode_contact*`, `contact_param_*`, `hdr_date_check`.

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{ffi, MsgCtx, Shared};
use crate::sip::{HdrName, Scheme, SipUri};

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    ffi::fast!(lua, &t, "has_totag", shared, [], |s, _| {
        Ok(s.with_msg(|m| rc(has_totag(m)))?.into())
    })?;
    let s = shared.clone();
    t.set(
        "is_request",
        lua.create_function(move |_, ()| s.with_msg(|m| rc(m.msg().is_request())))?,
    )?;
    let s = shared.clone();
    t.set(
        "is_reply",
        lua.create_function(move |_, ()| s.with_msg(|m| rc(!m.msg().is_request())))?,
    )?;
    let s = shared.clone();
    t.set(
        "is_first_hop",
        lua.create_function(move |_, ()| Ok(rc(is_first_hop(&s, 0)?)))?,
    )?;
    let s = shared.clone();
    t.set(
        "is_first_hop_mode",
        lua.create_function(move |_, mode: i64| Ok(rc(is_first_hop(&s, mode)?)))?,
    )?;
    t.set(
        "is_uri",
        lua.create_function(|_, u: mlua::String| Ok(rc(is_uri(&u.as_bytes()))))?,
    )?;
    let s = shared.clone();
    t.set(
        "is_user",
        lua.create_function(move |_, user: mlua::String| {
            let user = user.as_bytes();
            s.with_msg(|m| rc(is_user(m, &user)))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "uri_param",
        lua.create_function(move |_, name: mlua::String| {
            let name = name.as_bytes();
            s.with_msg(|m| rc(ruri_param(m, &name) == Some(None)))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "uri_param_value",
        lua.create_function(move |_, (name, value): (mlua::String, mlua::String)| {
            let (name, value) = (name.as_bytes(), value.as_bytes());
            s.with_msg(|m| rc(ruri_param(m, &name) == Some(Some(value.to_vec()))))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "uri_param_any",
        lua.create_function(move |_, name: mlua::String| {
            let name = name.as_bytes();
            s.with_msg(|m| rc(ruri_param(m, &name).is_some()))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "uri_param_rm",
        lua.create_function(move |_, name: mlua::String| {
            let name = name.as_bytes();
            s.with_msg(|m| uri_param_rm(m, &name))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "add_uri_param",
        lua.create_function(move |_, param: mlua::String| {
            let param = param.as_bytes();
            s.with_msg(|m| add_uri_param(m, &param))
        })?,
    )?;
    t.set(
        "is_tel_number",
        lua.create_function(|_, v: mlua::String| Ok(is_tel_number(&v.as_bytes())))?,
    )?;
    t.set(
        "is_numeric",
        lua.create_function(|_, v: mlua::String| {
            let v = v.as_bytes();
            Ok(if !v.is_empty() && v.iter().all(u8::is_ascii_digit) {
                1
            } else {
                -2
            })
        })?,
    )?;
    t.set(
        "is_alphanum",
        lua.create_function(|_, v: mlua::String| Ok(alphanum(&v.as_bytes(), b"")))?,
    )?;
    t.set(
        "is_alphanumex",
        lua.create_function(|_, (v, extra): (mlua::String, mlua::String)| {
            Ok(alphanum(&v.as_bytes(), &extra.as_bytes()))
        })?,
    )?;
    t.set(
        "cmp_uri",
        lua.create_function(|_, (a, b): (mlua::String, mlua::String)| {
            Ok(rc(cmp_uri(&a.as_bytes(), &b.as_bytes())))
        })?,
    )?;
    t.set(
        "cmp_aor",
        lua.create_function(|_, (a, b): (mlua::String, mlua::String)| {
            Ok(rc(cmp_aor(&a.as_bytes(), &b.as_bytes())))
        })?,
    )?;
    t.set(
        "cmp_hdr_name",
        lua.create_function(|_, (a, b): (mlua::String, mlua::String)| {
            let (a, b) = (a.as_bytes(), b.as_bytes());
            let (ka, kb) = (HdrName::from_bytes(&a), HdrName::from_bytes(&b));
            let same = if ka == HdrName::Other || kb == HdrName::Other {
                ka == kb && a.eq_ignore_ascii_case(&b)
            } else {
                ka == kb
            };
            Ok(rc(same))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "is_gruu",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| match ruri_param(m, b"gr") {
                Some(Some(_)) => 1,
                Some(None) => 2,
                None => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "options_reply",
        lua.create_function(move |_, ()| {
            let ok = s.with_msg(|m| {
                m.msg().method() == Some(crate::sip::Method::Options)
                    && m.ruri()
                        .and_then(|r| SipUri::parse(r).ok())
                        .is_some_and(|u| u.user.is_none_or(<[u8]>::is_empty))
            })?;
            if !ok {
                return Ok(-1);
            }
            s.with_msg(|m| {
                m.reply_headers.extend_from_slice(
                    b"Accept: */*\r\nAccept-Encoding: \r\nAccept-Language: en\r\nSupported: \r\n",
                );
                rc(super::sl::reply_counted(&s, m, 200, b"OK"))
            })
        })?,
    )?;
    ksr.set("siputils", t)?;
    Ok(())
}

pub(super) fn rc(b: bool) -> i32 {
    if b {
        1
    } else {
        -1
    }
}

/// The To header carries a non-empty tag (an in-dialog request).
pub(crate) fn has_totag(m: &MsgCtx) -> bool {
    m.msg()
        .to()
        .ok()
        .and_then(|t| t.tag())
        .is_some_and(|t| !t.is_empty())
}

/// Kamailio's `is_tel_number`: 1, or -2 (empty, or not `[+[1-9]]digits`).
fn is_tel_number(v: &[u8]) -> i32 {
    let digits = match v.strip_prefix(b"+") {
        Some(rest) => match rest.first() {
            Some(b'1'..=b'9') => rest,
            _ => return -2,
        },
        None => v,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return -2;
    }
    1
}

/// Kamailio's `is_alphanum(ex)`: 1; -2 empty; -3 another character.
fn alphanum(v: &[u8], extra: &[u8]) -> i32 {
    if v.is_empty() {
        return -2;
    }
    if v.iter()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    {
        1
    } else {
        -3
    }
}

fn is_first_hop(s: &Shared, mode: i64) -> mlua::Result<bool> {
    let (request, vias, rr, src) = s.with_msg(|m| {
        let msg = m.msg();
        let rr = msg
            .name_addrs(HdrName::RecordRoute)
            .next()
            .and_then(Result::ok)
            .map(|na| na.uri.to_vec());
        (msg.is_request(), msg.vias().count(), rr, m.src)
    })?;
    if request {
        return Ok(vias == 1);
    }
    let Some(rr) = rr else { return Ok(false) };
    let Ok(u) = SipUri::parse(&rr) else {
        return Ok(false);
    };
    if !s.myself.matches_any_port(u.host, u.port) {
        return Ok(false);
    }
    if mode == 1 {
        return Ok(true);
    }
    let host = std::str::from_utf8(u.host).unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_err() {
        return Ok(false);
    }
    let src_host = match src.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    };
    Ok(!s.myself.matches_any_port(src_host.as_bytes(), None))
}

fn is_uri(u: &[u8]) -> bool {
    SipUri::parse(u).is_ok_and(|u| u.scheme != Scheme::Other)
}

/// Kamailio reads the credentials an authorize call accepted: before one
/// succeeded (`$au` unset), no user matches.
fn is_user(m: &MsgCtx, user: &[u8]) -> bool {
    m.auth_user.as_deref().is_some_and(|u| u.as_bytes() == user)
}

/// A parameter of the current R-URI: `Some(None)` present without a value.
fn ruri_param(m: &MsgCtx, name: &[u8]) -> Option<Option<Vec<u8>>> {
    let ruri = m.ruri()?;
    let u = SipUri::parse(ruri).ok()?;
    u.params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.map(<[u8]>::to_vec))
}

/// The R-URI split at its parameters: (before params, params, `?headers`).
fn split_uri_params(ruri: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let u = SipUri::parse(ruri).ok()?;
    if !matches!(u.scheme, Scheme::Sip | Scheme::Sips) {
        return None;
    }
    let raw = u.raw;
    let ps = if u.params.raw.is_empty() {
        let hs = super::nathelper::offset_in(raw, u.host)? + u.host.len();
        let mut e = hs;
        if u.port.is_some() && raw.get(e) == Some(&b':') {
            e += 1;
            while raw.get(e).is_some_and(u8::is_ascii_digit) {
                e += 1;
            }
        }
        e
    } else {
        super::nathelper::offset_in(raw, u.params.raw)?
    };
    let pe = ps + u.params.raw.len();
    Some((raw.get(..ps)?, raw.get(ps..pe)?, raw.get(pe..)?))
}

fn uri_param_rm(m: &mut MsgCtx, name: &[u8]) -> i32 {
    let Some(ruri) = m.ruri().map(<[u8]>::to_vec) else {
        return -1;
    };
    let Some((head, params, tail)) = split_uri_params(&ruri) else {
        return -1;
    };
    let mut out = head.to_vec();
    let mut removed = false;
    for p in params.split(|&c| c == b';').filter(|p| !p.is_empty()) {
        let n = p.split(|&c| c == b'=').next().unwrap_or(&[]);
        if n.trim_ascii().eq_ignore_ascii_case(name) {
            removed = true;
            continue;
        }
        out.push(b';');
        out.extend_from_slice(p);
    }
    out.extend_from_slice(tail);
    if removed {
        m.new_ruri = Some(out);
    }
    1
}

fn add_uri_param(m: &mut MsgCtx, param: &[u8]) -> i32 {
    let param = param.trim_ascii();
    let param = param.strip_prefix(b";").unwrap_or(param);
    if param.is_empty() {
        return 1; // Kamailio: nothing to add
    }
    if !m.msg().is_request() || param.iter().any(|c| *c <= b' ') {
        return -1;
    }
    let Some(ruri) = m.ruri().map(<[u8]>::to_vec) else {
        return -1;
    };
    let Some((head, params, tail)) = split_uri_params(&ruri) else {
        return -1;
    };
    let mut out = head.to_vec();
    out.extend_from_slice(params);
    out.push(b';');
    out.extend_from_slice(param);
    out.extend_from_slice(tail);
    m.new_ruri = Some(out);
    1
}

/// Parameters of a URI, names lower-cased.
fn params_of(u: &SipUri<'_>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    u.params
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.map(<[u8]>::to_vec)))
        .collect()
}

/// RFC 3261 §19.1.4 URI comparison.
fn cmp_uri(a: &[u8], b: &[u8]) -> bool {
    let (Ok(a), Ok(b)) = (SipUri::parse(a), SipUri::parse(b)) else {
        return false;
    };
    if a.scheme != b.scheme || a.scheme == Scheme::Other {
        return false;
    }
    if a.user != b.user || a.password != b.password {
        return false;
    }
    if !a.host.eq_ignore_ascii_case(b.host) || a.port != b.port {
        return false;
    }
    let (pa, pb) = (params_of(&a), params_of(&b));
    let get = |ps: &[(Vec<u8>, Option<Vec<u8>>)], n: &[u8]| {
        ps.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
    };
    for special in [&b"user"[..], b"ttl", b"method", b"maddr", b"transport"] {
        let (x, y) = (get(&pa, special), get(&pb, special));
        let same = match (&x, &y) {
            (Some(Some(x)), Some(Some(y))) => x.eq_ignore_ascii_case(y),
            _ => x == y,
        };
        if !same {
            return false;
        }
    }
    for (k, v) in &pa {
        if let Some(w) = get(&pb, k) {
            let same = match (v, &w) {
                (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
                _ => *v == w,
            };
            if !same {
                return false;
            }
        }
    }
    a.headers.eq_ignore_ascii_case(b.headers)
}

fn cmp_aor(a: &[u8], b: &[u8]) -> bool {
    let (Ok(a), Ok(b)) = (SipUri::parse(a), SipUri::parse(b)) else {
        return false;
    };
    a.user == b.user
        && a.host.eq_ignore_ascii_case(b.host)
        && a.port.unwrap_or(5060) == b.port.unwrap_or(5060)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, global_int, request, run};

    #[test]
    fn has_totag_and_kind() {
        let eng = engine(
            "function ksr_request_route() t = KSR.siputils.has_totag() q = KSR.siputils.is_request() r = KSR.siputils.is_reply() end",
        );
        for (tag, want) in [(Some("abc"), 1), (None, -1), (Some(""), -1)] {
            run(&eng, &request("BYE sip:bob@192.0.2.20 SIP/2.0", tag, &[]));
            assert_eq!(global_int(&eng, "t"), want, "{tag:?}");
            assert_eq!(global_int(&eng, "q"), 1);
            assert_eq!(global_int(&eng, "r"), -1);
        }
    }

    #[test]
    fn first_hop_and_string_tests() {
        let eng = engine(
            r#"function ksr_request_route()
    a = KSR.siputils.is_first_hop()
    b = KSR.siputils.is_uri("sip:alice@example.com;transport=tcp")
    c = KSR.siputils.is_uri("http://x")
    d = KSR.siputils.is_tel_number("+4930123")
    e = KSR.siputils.is_tel_number("+49-30")
    f = KSR.siputils.is_numeric("0123")
    g = KSR.siputils.is_numeric("")
    h = KSR.siputils.is_alphanum("abc123")
    i = KSR.siputils.is_alphanumex("a.b-c", ".-")
    j = KSR.siputils.is_alphanumex("a.b_c", ".-")
    k = KSR.siputils.cmp_uri("sip:bob@EXAMPLE.com;transport=udp", "sip:bob@example.com;Transport=UDP")
    l = KSR.siputils.cmp_uri("sip:bob@example.com", "sip:bob@example.com:5060")
    n = KSR.siputils.cmp_uri("sip:Bob@example.com", "sip:bob@example.com")
    o = KSR.siputils.cmp_aor("sip:bob@example.com", "sip:bob@EXAMPLE.COM:5060;x=1")
    p = KSR.siputils.cmp_hdr_name("v", "Via")
    q = KSR.siputils.cmp_hdr_name("X-A", "x-a")
    r = KSR.siputils.cmp_hdr_name("From", "To")
    s = KSR.siputils.is_user("alice")
    t = KSR.siputils.is_user("bob")
end"#,
        );
        run(
            &eng,
            &request(
                "INVITE sip:bob@example.com SIP/2.0",
                None,
                &["Authorization: Digest username=\"alice\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"0123456789abcdef0123456789abcdef\""],
            ),
        );
        for (g, want) in [
            ("a", 1),
            ("b", 1),
            ("c", -1),
            ("d", 1),
            ("e", -2),
            ("f", 1),
            ("g", -2),
            ("h", 1),
            ("i", 1),
            ("j", -3),
            ("k", 1),
            ("l", -1),
            ("n", -1),
            ("o", 1),
            ("p", 1),
            ("q", 1),
            ("r", -1),
            ("s", -1),
            ("t", -1),
        ] {
            assert_eq!(global_int(&eng, g), want, "{g}");
        }
        // Two Via values: not the first hop.
        run(
            &eng,
            &request(
                "INVITE sip:bob@example.com SIP/2.0",
                None,
                &["Via: SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK-2"],
            ),
        );
        assert_eq!(global_int(&eng, "a"), -1);
    }

    #[test]
    fn options_reply() {
        let eng = engine("function ksr_request_route() o = KSR.siputils.options_reply() end");
        let (m, _) = run(&eng, &request("OPTIONS sip:10.0.0.1 SIP/2.0", None, &[]));
        assert_eq!(global_int(&eng, "o"), 1);
        let o = m.out[0];
        let w = String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]).into_owned();
        assert!(w.starts_with("SIP/2.0 200 OK\r\n"), "{w}");
        assert!(
            w.contains(
                "\r\nAccept: */*\r\nAccept-Encoding: \r\nAccept-Language: en\r\nSupported: \r\n"
            ),
            "{w}"
        );
        for start in [
            "OPTIONS sip:bob@10.0.0.1 SIP/2.0",
            "INVITE sip:10.0.0.1 SIP/2.0",
        ] {
            let (m, _) = run(&eng, &request(start, None, &[]));
            assert_eq!(global_int(&eng, "o"), -1, "{start}");
            assert!(m.out.is_empty());
        }
    }

    #[test]
    fn is_user_reads_authorized_credentials() {
        let mut m = super::MsgCtx::new(65535, 128);
        assert!(!super::is_user(&m, b"alice"));
        m.auth_user = Some("alice".into());
        assert!(super::is_user(&m, b"alice"));
        assert!(!super::is_user(&m, b"bob"));
    }

    #[test]
    fn kamailio_codes_of_string_checks() {
        for (v, want) in [
            ("+4930", 1),
            ("0301", 1),
            ("+", -2),
            ("+030", -2),
            ("", -2),
            ("12a", -2),
        ] {
            assert_eq!(super::is_tel_number(v.as_bytes()), want, "{v}");
        }
        assert_eq!(super::alphanum(b"", b""), -2);
        assert_eq!(super::alphanum(b"a_b", b""), -3);
        assert_eq!(super::alphanum(b"a_b", b"_"), 1);
    }

    #[test]
    fn ruri_params() {
        let eng = engine(
            r#"function ksr_request_route()
    a = KSR.siputils.uri_param("lr")
    b = KSR.siputils.uri_param("user")
    c = KSR.siputils.uri_param_value("user", "phone")
    d = KSR.siputils.uri_param_value("user", "ip")
    e = KSR.siputils.uri_param_any("user")
    f = KSR.siputils.uri_param_any("nope")
    g = KSR.siputils.is_gruu()
    h = KSR.siputils.add_uri_param("nat=yes")
    i = KSR.siputils.uri_param_rm("lr")
    j = KSR.siputils.uri_param_value("nat", "yes")
    ru = KSR.pv.get("$ru")
end"#,
        );
        let (m, _) = run(
            &eng,
            &request(
                "INVITE sip:+49301@example.com:5070;user=phone;lr;gr?X=1 SIP/2.0",
                None,
                &[],
            ),
        );
        for (g, want) in [
            ("a", 1),
            ("b", -1),
            ("c", 1),
            ("d", -1),
            ("e", 1),
            ("f", -1),
            ("g", 2),
            ("h", 1),
            ("i", 1),
            ("j", 1),
        ] {
            assert_eq!(global_int(&eng, g), want, "{g}");
        }
        assert_eq!(
            m.new_ruri.as_deref(),
            Some(&b"sip:+49301@example.com:5070;user=phone;gr;nat=yes?X=1"[..])
        );
        let (m, _) = run(
            &eng,
            &request("INVITE sip:bob@example.com SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&eng, "h"), 1);
        assert_eq!(global_int(&eng, "g"), -1);
        assert_eq!(
            m.new_ruri.as_deref(),
            Some(&b"sip:bob@example.com;nat=yes"[..])
        );
    }
}
