//! KSR.nathelper: NAT detection and traversal helpers (Kamailio `nathelper`
//! module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.nathelper.nat_uac_test(flags)` | `int (int)` | 1 when any selected test finds a NAT, -1 otherwise (bits below) |
//! | `KSR.nathelper.is_rfc1918(ip)` | `int (str)` | 1 for a private IPv4 address (10/8, 172.16/12, 192.168/16, 100.64/10, 192.0.0/24), -1 otherwise |
//! | `KSR.nathelper.fix_nated_register()` | `int ()` | 1; the source `sip:ip:port` becomes the `received` of the contacts `KSR.registrar.save` stores (lookup then sends to it) |
//! | `KSR.nathelper.fix_nated_contact()` | `int ()` | 1 the first Contact URI's host:port rewritten to the source ip:port; -1 no usable Contact, or the Contact was already rewritten |
//! | `KSR.nathelper.set_contact_alias()` | `int ()` | 1 `;alias=ip~port~1` (source address, 1 = UDP) appended to the first Contact URI (bracketed if it was not); -1 no usable Contact or already rewritten |
//! | `KSR.nathelper.set_contact_alias_trim()` | `int ()` | as `set_contact_alias`, removing an `alias` parameter the URI already had |
//! | `KSR.nathelper.add_contact_alias()` | `int ()` | as `set_contact_alias`; 2 (nothing added) when the Contact already is the source ip:port, or there is no Contact |
//! | `KSR.nathelper.add_contact_alias_addr(ip, port, proto)` | `int (str, str, str)` | as `add_contact_alias` with the given address; -1 for an unknown proto (udp, tcp, tls, sctp, ws, wss) |
//! | `KSR.nathelper.handle_ruri_alias()` | `int ()` | 1 the R-URI's first `alias` parameter was removed and `$du` set from it (`sip:ip:port`, `;transport=` unless UDP); 2 no alias; -1 malformed alias |
//! | `KSR.nathelper.handle_ruri_alias_mode(mode)` | `int (int)` | as `handle_ruri_alias`; mode 0 takes the first alias parameter, others the last |
//! | `KSR.nathelper.add_rcv_param(flag)` | `int (int)` | 1; adds `received="sip:ip:port"` to every Contact (flag 0) or `;received=sip:ip:port` to every Contact URI (flag != 0); -1 no Contact |
//! | `KSR.nathelper.fix_nated_sdp(flags)` | `int (int)` | 1 addresses rewritten, 2 nothing rewritten, -1 no SDP body; flags 1 add `a=direction:active`, 2 rewrite `c=` (and `a=rtcp`) with the source IP, 4 add `a=nortpproxy:yes`, 8 rewrite the `o=` address |
//! | `KSR.nathelper.fix_nated_sdp_ip(flags, ip)` | `int (int, str)` | as `fix_nated_sdp` with `ip` instead of the source IP |
//!
//! `nat_uac_test` bits: 1 the first Contact URI host is private, 2 the top
//! Via host is not the source IP, 4 the top Via host is private, 8 an SDP
//! `c=` address is private, 16 the top Via port (5060 when absent) is not the
//! source port, 32 the source IP is private, 64 received over WebSocket
//! (never: UDP only), 128 the first Contact URI port (5060 when absent) is
//! not the source port, 256 an SDP `c=` address is not the source IP, 512
//! for a request: `$du` is set and its host:port differs from the R-URI's;
//! for a reply: the second Via has `received`/`rport` differing from its
//! host:port. "Private" follows Kamailio's `nat_addr_mode` 1 (the list for
//! `is_rfc1918`, IPv4 only).
//!
//! `KSR.nathelper` is always registered (sipshard has no loadmodule: the
//! basic script's `if KSR.nathelper then` NAT handling is on). Contact
//! and SDP rewrites apply to the message as relayed: a request's branches,
//! and a reply edited in the reply or onreply route (the 200 OK of a callee
//! behind a NAT carries its alias upstream).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;

use mlua::{Lua, Table};

use super::{MsgCtx, Shared};
use crate::sip::{Contact, HdrName, SipUri};

/// Kamailio's alias parameter name (`alias_name`).
const ALIAS: &[u8] = b"alias";

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "nat_uac_test",
        lua.create_function(move |_, flags: i64| s.with_msg(|m| rc(nat_uac_test(m, flags))))?,
    )?;
    t.set(
        "is_rfc1918",
        lua.create_function(|_, ip: mlua::String| Ok(rc(is_private_text(&ip.as_bytes()))))?,
    )?;
    let s = shared.clone();
    t.set(
        "fix_nated_register",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| {
                m.nat_received = Some(source_uri(m.src));
                1
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "fix_nated_contact",
        lua.create_function(move |_, ()| s.with_msg(fix_nated_contact))?,
    )?;
    let s = shared.clone();
    t.set(
        "set_contact_alias",
        lua.create_function(move |_, ()| s.with_msg(|m| set_contact_alias(m, false)))?,
    )?;
    let s = shared.clone();
    t.set(
        "set_contact_alias_trim",
        lua.create_function(move |_, ()| s.with_msg(|m| set_contact_alias(m, true)))?,
    )?;
    let s = shared.clone();
    t.set(
        "add_contact_alias",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| {
                let src = m.src;
                add_contact_alias(m, src.ip(), src.port(), 1)
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "add_contact_alias_addr",
        lua.create_function(
            move |_, (ip, port, proto): (mlua::String, mlua::String, mlua::String)| {
                let ip = parse_ip(&ip.as_bytes());
                let port = std::str::from_utf8(&port.as_bytes())
                    .ok()
                    .and_then(|p| p.trim().parse::<u16>().ok());
                let proto = proto_number(&proto.as_bytes());
                let (Some(ip), Some(port), Some(proto)) = (ip, port, proto) else {
                    return Ok(-1);
                };
                s.with_msg(|m| add_contact_alias(m, ip, port, proto))
            },
        )?,
    )?;
    let s = shared.clone();
    t.set(
        "handle_ruri_alias",
        lua.create_function(move |_, ()| s.with_msg(|m| handle_ruri_alias(m, false)))?,
    )?;
    let s = shared.clone();
    t.set(
        "handle_ruri_alias_mode",
        lua.create_function(move |_, mode: i64| s.with_msg(|m| handle_ruri_alias(m, mode != 0)))?,
    )?;
    let s = shared.clone();
    t.set(
        "add_rcv_param",
        lua.create_function(move |_, flag: i64| s.with_msg(|m| add_rcv_param(m, flag != 0)))?,
    )?;
    let s = shared.clone();
    t.set(
        "fix_nated_sdp",
        lua.create_function(move |_, flags: i64| {
            s.with_msg(|m| {
                let ip = m.src.ip();
                fix_nated_sdp(m, flags, ip)
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "fix_nated_sdp_ip",
        lua.create_function(move |_, (flags, ip): (i64, mlua::String)| {
            let Some(ip) = parse_ip(&ip.as_bytes()) else {
                return Ok(-1);
            };
            s.with_msg(|m| fix_nated_sdp(m, flags, ip))
        })?,
    )?;
    ksr.set("nathelper", t)
}

fn rc(b: bool) -> i32 {
    if b {
        1
    } else {
        -1
    }
}

/// Kamailio's private ranges (`nat_addr_mode` 1).
pub fn is_private(ip: IpAddr) -> bool {
    let IpAddr::V4(v4) = ip else { return false };
    let a = u32::from(v4);
    const NETS: [(u32, u32); 5] = [
        (0x0a00_0000, 8),  // 10.0.0.0/8
        (0xac10_0000, 12), // 172.16.0.0/12
        (0xc0a8_0000, 16), // 192.168.0.0/16
        (0x6440_0000, 10), // 100.64.0.0/10 (RFC 6598)
        (0xc000_0000, 24), // 192.0.0.0/24 (RFC 7335, nat_addr_mode 1)
    ];
    NETS.iter()
        .any(|&(net, bits)| a & (u32::MAX << (32 - bits)) == net)
}

/// An IP literal, IPv6 with or without brackets.
fn parse_ip(b: &[u8]) -> Option<IpAddr> {
    let t = std::str::from_utf8(b).ok()?.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t);
    t.parse().ok()
}

fn is_private_text(b: &[u8]) -> bool {
    parse_ip(b).is_some_and(is_private)
}

fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `sip:ip:port` of the source (UDP: no transport parameter).
fn source_uri(src: SocketAddr) -> String {
    format!("sip:{}:{}", host_text(src.ip()), src.port())
}

/// Kamailio's protocol numbers in the alias parameter.
fn proto_number(name: &[u8]) -> Option<u8> {
    let n = name.trim_ascii();
    [
        (&b"udp"[..], 1),
        (b"tcp", 2),
        (b"tls", 3),
        (b"sctp", 4),
        (b"ws", 5),
        (b"wss", 6),
    ]
    .iter()
    .find(|(p, _)| p.eq_ignore_ascii_case(n))
    .map(|&(_, v)| v)
}

fn proto_name(n: u8) -> Option<&'static str> {
    Some(match n {
        1 => "udp",
        2 => "tcp",
        3 => "tls",
        4 => "sctp",
        5 => "ws",
        6 => "wss",
        _ => return None,
    })
}

fn nat_uac_test(m: &MsgCtx, flags: i64) -> bool {
    let msg = m.msg();
    let src = m.src;
    let via = msg.top_via().ok();
    let contact = first_contact_uri(m);
    let contact = contact.as_deref().and_then(|c| SipUri::parse(c).ok());
    if flags & 1 != 0 && contact.is_some_and(|u| is_private_text(u.host)) {
        return true;
    }
    if flags & 2 != 0 && via.is_some_and(|v| parse_ip(v.host) != Some(src.ip())) {
        return true;
    }
    if flags & 4 != 0 && via.is_some_and(|v| is_private_text(v.host)) {
        return true;
    }
    if flags & 8 != 0 && sdp_addrs(m).iter().any(|a| is_private(*a)) {
        return true;
    }
    if flags & 16 != 0 && via.is_some_and(|v| v.port.unwrap_or(5060) != src.port()) {
        return true;
    }
    if flags & 32 != 0 && is_private(src.ip()) {
        return true;
    }
    if flags & 128 != 0 && contact.is_some_and(|u| u.port.unwrap_or(5060) != src.port()) {
        return true;
    }
    if flags & 256 != 0 && sdp_addrs(m).iter().any(|a| *a != src.ip()) {
        return true;
    }
    if flags & 512 != 0 && targets_differ(m) {
        return true;
    }
    false
}

/// Bit 512: request: `$du` host:port differs from the R-URI's; reply: the
/// second Via's received/rport differ from its sent-by.
fn targets_differ(m: &MsgCtx) -> bool {
    let msg = m.msg();
    if msg.is_request() {
        let (Some(du), Some(ru)) = (m.dst_uri.as_deref(), m.ruri()) else {
            return false;
        };
        let (Ok(du), Ok(ru)) = (SipUri::parse(du), SipUri::parse(ru)) else {
            return false;
        };
        return !du.host.eq_ignore_ascii_case(ru.host)
            || du.port.unwrap_or(5060) != ru.port.unwrap_or(5060);
    }
    let Some(Ok(v2)) = msg.vias().nth(1) else {
        return false;
    };
    let rcv = v2
        .received()
        .is_some_and(|r| !r.eq_ignore_ascii_case(v2.host));
    let rport = matches!(v2.rport(), Some(Some(p)) if p != v2.port.unwrap_or(5060));
    rcv || rport
}

/// `c=` addresses of an SDP body (session and media level).
fn sdp_addrs(m: &MsgCtx) -> Vec<IpAddr> {
    let msg = m.msg();
    if let Some(ct) = msg.header(HdrName::ContentType) {
        if !ct
            .trim_ascii()
            .to_ascii_lowercase()
            .starts_with(b"application/sdp")
        {
            return Vec::new();
        }
    }
    msg.body()
        .split(|&c| c == b'\n')
        .filter_map(|l| l.strip_prefix(b"c="))
        .filter_map(|l| {
            let mut it = l.trim_ascii().split(|&c| c == b' ');
            let _net = it.next()?;
            let _af = it.next()?;
            let addr = it.next()?;
            let addr = addr.split(|&c| c == b'/').next()?;
            parse_ip(addr)
        })
        .take(64)
        .collect()
}

/// Where the first Contact URI sits: the header index, the header's
/// current value, and the URI's range within it.
struct ContactPos {
    idx: usize,
    value: Vec<u8>,
    uri: (usize, usize),
    bracketed: bool,
}

fn first_contact_pos(m: &MsgCtx) -> Option<ContactPos> {
    let buf = &m.buf[..m.len];
    let idx = m
        .parsed
        .headers
        .iter()
        .position(|h| h.name == HdrName::Contact)?;
    let h = m.parsed.headers.get(idx)?;
    let value = match m.edits.replaced_value(idx) {
        Some(v) => v.to_vec(),
        None => h.value.get(buf).to_vec(),
    };
    // The first comma-separated value of this line.
    let na = contact_values(&value).next()?;
    let Contact::Addr(na) = na else { return None };
    let start = offset_in(&value, na.uri)?;
    let end = start + na.uri.len();
    if end > value.len() {
        return None;
    }
    let bracketed = start > 0 && value.get(start - 1) == Some(&b'<');
    Some(ContactPos {
        idx,
        uri: (start, end),
        bracketed,
        value,
    })
}

/// Contact values of one header line.
fn contact_values(value: &[u8]) -> impl Iterator<Item = Contact<'_>> {
    split_top_commas(value).filter_map(|v| {
        let v = v.trim_ascii();
        if v == b"*" {
            return Some(Contact::Star);
        }
        crate::sip::NameAddr::parse(v).ok().map(Contact::Addr)
    })
}

/// Splits at commas outside quotes and angle brackets.
fn split_top_commas(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth <= 0 => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&v[start.min(v.len())..]);
    parts.into_iter()
}

fn first_contact_uri(m: &MsgCtx) -> Option<Vec<u8>> {
    let p = first_contact_pos(m)?;
    p.value.get(p.uri.0..p.uri.1).map(<[u8]>::to_vec)
}

/// Where `part` (a sub-slice of `whole`) starts in `whole`; `None` when it
/// is not inside it.
pub(crate) fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let off = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (off + part.len() <= whole.len()).then_some(off)
}

/// The `[host start, host:port end)` range of a SIP URI.
fn hostport_range(uri: &[u8]) -> Option<(usize, usize)> {
    let u = SipUri::parse(uri).ok()?;
    if u.host.is_empty() {
        return None;
    }
    let hs = offset_in(uri, u.host)?;
    let mut he = hs + u.host.len();
    if u.port.is_some() && uri.get(he) == Some(&b':') {
        he += 1;
        while uri.get(he).is_some_and(u8::is_ascii_digit) {
            he += 1;
        }
    }
    Some((hs, he))
}

/// Writes the first Contact with its URI replaced by `new_uri`.
fn replace_contact_uri(m: &mut MsgCtx, p: &ContactPos, new_uri: &[u8]) {
    let mut v = Vec::with_capacity(p.value.len() + new_uri.len() + 2);
    v.extend_from_slice(&p.value[..p.uri.0]);
    if !p.bracketed {
        v.push(b'<');
    }
    v.extend_from_slice(new_uri);
    if !p.bracketed {
        v.push(b'>');
    }
    v.extend_from_slice(&p.value[p.uri.1..]);
    m.edits.replace_header_value(p.idx, &v);
}

fn fix_nated_contact(m: &mut MsgCtx) -> i32 {
    let Some(p) = first_contact_pos(m) else {
        return -1;
    };
    if m.edits.replaced_value(p.idx).is_some() {
        return -1; // Kamailio: the Contact cannot be updated twice
    }
    let uri = &p.value[p.uri.0..p.uri.1];
    let Some((hs, he)) = hostport_range(uri) else {
        return -1;
    };
    let mut new = uri[..hs].to_vec();
    new.extend_from_slice(format!("{}:{}", host_text(m.src.ip()), m.src.port()).as_bytes());
    new.extend_from_slice(&uri[he..]);
    let p = ContactPos {
        bracketed: true,
        ..p
    };
    replace_contact_uri(m, &p, &new);
    1
}

/// Removes every `;alias=...` URI parameter (before any `?headers`).
fn trim_alias(uri: &[u8]) -> Vec<u8> {
    let (main, headers) = match uri.iter().position(|&c| c == b'?') {
        Some(q) => uri.split_at(q),
        None => (uri, &[][..]),
    };
    let mut parts = main.split(|&c| c == b';');
    let mut out = parts.next().unwrap_or(&[]).to_vec();
    for p in parts {
        let name = p.split(|&c| c == b'=').next().unwrap_or(&[]);
        if name.trim_ascii().eq_ignore_ascii_case(ALIAS) {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(p);
    }
    out.extend_from_slice(headers);
    out
}

fn alias_param(ip: IpAddr, port: u16, proto: u8) -> String {
    format!(";alias={}~{}~{}", host_text(ip), port, proto)
}

/// Appends `;alias=` to the URI's parameters (before any `?headers`).
fn with_alias(uri: &[u8], param: &str) -> Vec<u8> {
    let q = uri.iter().position(|&c| c == b'?').unwrap_or(uri.len());
    let mut out = uri[..q].to_vec();
    out.extend_from_slice(param.as_bytes());
    out.extend_from_slice(&uri[q..]);
    out
}

fn set_contact_alias(m: &mut MsgCtx, trim: bool) -> i32 {
    let Some(p) = first_contact_pos(m) else {
        return -1;
    };
    if m.edits.replaced_value(p.idx).is_some() {
        return -1;
    }
    let uri = &p.value[p.uri.0..p.uri.1];
    if SipUri::parse(uri).is_err() {
        return -1;
    }
    let base = if trim { trim_alias(uri) } else { uri.to_vec() };
    let new = with_alias(&base, &alias_param(m.src.ip(), m.src.port(), 1));
    replace_contact_uri(m, &p, &new);
    1
}

fn add_contact_alias(m: &mut MsgCtx, ip: IpAddr, port: u16, proto: u8) -> i32 {
    if m.msg().header(HdrName::Contact).is_none() {
        return 2;
    }
    let Some(p) = first_contact_pos(m) else {
        return -1;
    };
    let uri = &p.value[p.uri.0..p.uri.1];
    let Ok(u) = SipUri::parse(uri) else {
        return -1;
    };
    let uproto = u.transport().and_then(proto_number).unwrap_or(1);
    if parse_ip(u.host) == Some(ip) && u.port.unwrap_or(5060) == port && uproto == proto {
        return 2;
    }
    if m.edits.replaced_value(p.idx).is_some() {
        return -1;
    }
    let new = with_alias(uri, &alias_param(ip, port, proto));
    replace_contact_uri(m, &p, &new);
    1
}

fn handle_ruri_alias(m: &mut MsgCtx, last: bool) -> i32 {
    let Some(ruri) = m.ruri().map(<[u8]>::to_vec) else {
        return -1;
    };
    let q = ruri.iter().position(|&c| c == b'?').unwrap_or(ruri.len());
    let (main, headers) = ruri.split_at(q);
    // Parameter ranges after the host part (a user part may hold ';').
    let mut found: Option<(usize, usize)> = None;
    let Some((_, mut i)) = hostport_range(main) else {
        return -1;
    };
    while let Some(off) = main
        .get(i..)
        .and_then(|t| t.iter().position(|&c| c == b';'))
    {
        let start = i + off; // at ';'
        let end = main
            .get(start + 1..)
            .and_then(|t| t.iter().position(|&c| c == b';'))
            .map_or(main.len(), |e| start + 1 + e);
        let param = &main[start + 1..end];
        let is_alias = param.len() > ALIAS.len()
            && param[..ALIAS.len()].eq_ignore_ascii_case(ALIAS)
            && param[ALIAS.len()] == b'=';
        if is_alias {
            found = Some((start, end));
            if !last {
                break;
            }
        }
        i = end;
    }
    let Some((start, end)) = found else { return 2 };
    let value = &main[start + 1 + ALIAS.len() + 1..end];
    let mut parts = value.split(|&c| c == b'~');
    let (Some(ip), Some(port), Some(proto), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return -1;
    };
    let port_ok = std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .is_some();
    let proto = match proto {
        [d] if d.is_ascii_digit() => proto_name(d - b'0'),
        _ => None,
    };
    let (true, Some(proto), false) = (port_ok, proto, ip.is_empty()) else {
        return -1;
    };
    let mut du = b"sip:".to_vec();
    du.extend_from_slice(ip);
    du.push(b':');
    du.extend_from_slice(port);
    if proto != "udp" {
        du.extend_from_slice(b";transport=");
        du.extend_from_slice(proto.as_bytes());
    }
    if !super::corex::valid_dst_uri(&du) {
        return -1;
    }
    let mut new = main[..start].to_vec();
    new.extend_from_slice(&main[end..]);
    new.extend_from_slice(headers);
    m.dst_uri = Some(du);
    m.new_ruri = Some(new);
    1
}

fn add_rcv_param(m: &mut MsgCtx, in_uri: bool) -> i32 {
    let buf = &m.buf[..m.len];
    let rcv = source_uri(m.src);
    let mut edits = Vec::new();
    for (idx, h) in m.parsed.headers.iter().enumerate() {
        if h.name != HdrName::Contact {
            continue;
        }
        let value = match m.edits.replaced_value(idx) {
            Some(v) => v.to_vec(),
            None => h.value.get(buf).to_vec(),
        };
        let mut out = Vec::with_capacity(value.len() + 40);
        let mut first = true;
        for part in split_top_commas(&value) {
            if !first {
                out.push(b',');
            }
            first = false;
            let trimmed = part.trim_ascii();
            let Ok(na) = crate::sip::NameAddr::parse(trimmed) else {
                out.extend_from_slice(part);
                continue;
            };
            let Some(us) = offset_in(trimmed, na.uri) else {
                out.extend_from_slice(part);
                continue;
            };
            let ue = us + na.uri.len();
            let bracketed = us > 0 && trimmed.get(us - 1) == Some(&b'<');
            if in_uri {
                out.extend_from_slice(&trimmed[..us]);
                if !bracketed {
                    out.push(b'<');
                }
                out.extend_from_slice(&with_alias(na.uri, &format!(";received={rcv}")));
                if !bracketed {
                    out.push(b'>');
                }
                out.extend_from_slice(&trimmed[ue..]);
            } else {
                out.extend_from_slice(trimmed);
                out.extend_from_slice(format!(";received=\"{rcv}\"").as_bytes());
            }
        }
        edits.push((idx, out));
    }
    if edits.is_empty() {
        return -1;
    }
    for (idx, v) in edits {
        m.edits.replace_header_value(idx, &v);
    }
    1
}

fn fix_nated_sdp(m: &mut MsgCtx, flags: i64, ip: IpAddr) -> i32 {
    let body = m.msg().body().to_vec();
    if body.is_empty() || !sdp_addrs_any(&body) {
        return -1;
    }
    let IpAddr::V4(v4) = ip else { return -1 };
    let (out, replaced) = rewrite_sdp(&body, flags, v4);
    if out != body {
        m.edits.set_body(&out);
    }
    if replaced {
        1
    } else {
        2
    }
}

fn sdp_addrs_any(body: &[u8]) -> bool {
    body.starts_with(b"v=") || body.windows(3).any(|w| w == b"\nc=")
}

/// Kamailio's `fix_nated_sdp` edits, line by line.
fn rewrite_sdp(body: &[u8], flags: i64, ip: Ipv4Addr) -> (Vec<u8>, bool) {
    let ip_s = ip.to_string();
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut replaced = false;
    let mut media_seen = false;
    let add_lines = |out: &mut Vec<u8>| {
        if flags & 1 != 0 {
            out.extend_from_slice(b"a=direction:active\r\n");
        }
        if flags & 4 != 0 {
            out.extend_from_slice(b"a=nortpproxy:yes\r\n");
        }
    };
    for raw in body.split_inclusive(|&c| c == b'\n') {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"m=") && !media_seen {
            media_seen = true;
            add_lines(&mut out);
        }
        let rewrite_addr = |prefix: &[u8], idx: usize| -> Option<Vec<u8>> {
            let rest = line.strip_prefix(prefix)?;
            let mut toks: Vec<&[u8]> = rest.split(|&c| c == b' ').collect();
            if toks.len() <= idx || toks.get(idx - 1) != Some(&&b"IP4"[..]) {
                return None;
            }
            let tail = toks[idx]
                .iter()
                .position(|&c| c == b'/')
                .map(|p| toks[idx][p..].to_vec())
                .unwrap_or_default();
            let mut addr = ip_s.as_bytes().to_vec();
            addr.extend_from_slice(&tail);
            let owned = addr;
            let mut v = prefix.to_vec();
            for (k, t) in toks.iter_mut().enumerate() {
                if k > 0 {
                    v.push(b' ');
                }
                if k == idx {
                    v.extend_from_slice(&owned);
                } else {
                    v.extend_from_slice(t);
                }
            }
            Some(v)
        };
        let new = if flags & 2 != 0 && line.starts_with(b"c=") {
            rewrite_addr(b"c=", 2)
        } else if flags & 8 != 0 && line.starts_with(b"o=") {
            rewrite_addr(b"o=", 5)
        } else if flags & 2 != 0 && line.starts_with(b"a=rtcp:") {
            rewrite_addr(b"a=rtcp:", 3)
        } else {
            None
        };
        match new {
            Some(v) => {
                replaced |= v != line;
                out.extend_from_slice(&v);
                out.extend_from_slice(&raw[line.len()..]);
            }
            None => out.extend_from_slice(raw),
        }
    }
    if !media_seen {
        add_lines(&mut out);
    }
    (out, replaced)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assembled, engine, global_int, request};
    use super::*;
    use crate::sip::Limits;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    /// Runs the route on `msg` received from `src`.
    fn run_from(eng: &super::super::Engine, msg: &[u8], src: &str) -> Box<MsgCtx> {
        let mut m = Box::new(MsgCtx::new(65535, 128));
        m.load(msg, src.parse().unwrap(), "10.0.0.1:5060".parse().unwrap());
        m.parse(&Limits::default()).unwrap();
        let mut run = eng.run_request(m);
        match Pin::new(&mut run).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready((m, _)) => m,
            Poll::Pending => panic!("suspended"),
        }
    }

    fn reg(contact: &str, via: &str) -> Vec<u8> {
        format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-n1\r\n\
             From: <sip:alice@example.com>;tag=a\r\nTo: <sip:alice@example.com>\r\n\
             Call-ID: n1@x\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn odd_messages_never_break_a_route() {
        let eng = engine(
            r#"function ksr_request_route()
    local n = KSR.nathelper
    r = {
        n.nat_uac_test(1023), n.set_contact_alias_trim(), n.add_rcv_param(1), n.add_rcv_param(0),
        n.fix_nated_contact(), n.handle_ruri_alias_mode(1), n.add_contact_alias(),
        n.fix_nated_sdp(15), KSR.sanity.sanity_check(32767, 15), KSR.siputils.uri_param_rm("x"),
        KSR.siputils.add_uri_param("y=1"), KSR.siputils.is_first_hop_mode(1),
    }
    done = 1
end"#,
        );
        let mut ran = 0;
        for (contact, ruri) in [
            ("*", "sip:a@h;alias=1.2.3.4~5~1"),
            ("<>", "sip:a@h;alias="),
            ("\"unterminated <sip:a@192.168.0.1>", "sip:a@h;alias=~~"),
            (
                "<sip:a@[2001:db8::1]:5070;alias=x>, <sip:b@10.0.0.1>",
                "sip:a@[::1];alias=[::1]~5060~9",
            ),
            ("sip:a@10.0.0.1?x=1", "sip:a@h;alias=1.2.3.4~70000~1"),
            ("<tel:+123>", "tel:+123;alias=1.2.3.4~5~1"),
        ] {
            let msg = String::from_utf8(reg(contact, "192.168.1.5"))
                .unwrap()
                .replacen("REGISTER sip:example.com", &format!("REGISTER {ruri}"), 1);
            let mut m = Box::new(MsgCtx::new(65535, 128));
            m.load(
                msg.as_bytes(),
                "[2001:db8::9]:5060".parse().unwrap(),
                "10.0.0.1:5060".parse().unwrap(),
            );
            if m.parse(&Limits::default()).is_err() {
                continue;
            }
            let mut run = eng.run_request(m);
            let (m, outcome) =
                match Pin::new(&mut run).poll(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(r) => r,
                    Poll::Pending => panic!("suspended"),
                };
            assert_eq!(outcome, super::super::RouteOutcome::Done, "{contact}");
            assert_eq!(global_int(&eng, "done"), 1);
            let _ = assembled(&m);
            ran += 1;
        }
        assert!(ran >= 4, "only {ran} of the odd messages parsed");
    }

    #[test]
    fn rfc1918() {
        for (ip, want) in [
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("100.64.0.1", true),
            ("100.128.0.1", false),
            ("192.0.0.7", true),
            ("192.0.2.1", false),
            ("8.8.8.8", false),
            ("::1", false),
            ("junk", false),
        ] {
            assert_eq!(is_private_text(ip.as_bytes()), want, "{ip}");
        }
        let eng = engine(
            "function ksr_request_route() a = KSR.nathelper.is_rfc1918('192.168.0.1') b = KSR.nathelper.is_rfc1918('192.0.2.1') end",
        );
        run_from(
            &eng,
            &reg("<sip:a@192.0.2.9>", "192.0.2.9"),
            "192.0.2.9:5060",
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), -1);
    }

    #[test]
    fn nat_uac_test_bits() {
        let eng = engine(
            "function ksr_request_route() for _, f in ipairs({1,2,4,16,32,128,19}) do r[f] = KSR.nathelper.nat_uac_test(f) end end r = {}",
        );
        let get = |f: i64| -> i64 {
            let r: mlua::Table = eng.lua().globals().get("r").unwrap();
            r.get(f).unwrap()
        };
        // Behind a NAT: private Contact and Via, public source 203.0.113.5:40000.
        run_from(
            &eng,
            &reg("<sip:alice@192.168.1.5:5060>", "192.168.1.5:5060"),
            "203.0.113.5:40000",
        );
        for (f, want) in [(1, 1), (2, 1), (4, 1), (16, 1), (32, -1), (128, 1), (19, 1)] {
            assert_eq!(get(f), want, "natted bit {f}");
        }
        // A public client: nothing.
        run_from(
            &eng,
            &reg("<sip:alice@203.0.113.5:5070>", "203.0.113.5:5070"),
            "203.0.113.5:5070",
        );
        for f in [1, 2, 4, 16, 32, 128, 19] {
            assert_eq!(get(f), -1, "public bit {f}");
        }
        // Private source, Via port without port: 5060 assumed.
        run_from(
            &eng,
            &reg("<sip:alice@10.0.0.7>", "10.0.0.7"),
            "10.0.0.7:5060",
        );
        for (f, want) in [(1, 1), (2, -1), (16, -1), (32, 1), (128, -1)] {
            assert_eq!(get(f), want, "private bit {f}");
        }
    }

    #[test]
    fn sdp_bits() {
        let eng = engine(
            "function ksr_request_route() a = KSR.nathelper.nat_uac_test(8) b = KSR.nathelper.nat_uac_test(256) end",
        );
        let body = "v=0\r\no=- 1 1 IN IP4 192.168.1.5\r\ns=-\r\nc=IN IP4 192.168.1.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let msg = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.5;branch=z9hG4bK-s\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: s@x\r\nCSeq: 1 INVITE\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        run_from(&eng, msg.as_bytes(), "203.0.113.5:5060");
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), 1);
        let public = msg.replace("192.168.1.5", "203.0.113.5");
        run_from(&eng, public.as_bytes(), "203.0.113.5:5060");
        assert_eq!(global_int(&eng, "a"), -1);
        assert_eq!(global_int(&eng, "b"), -1);
        // fix_nated_sdp(2|8) rewrites c= and o= with the source address.
        let eng = engine("function ksr_request_route() a = KSR.nathelper.fix_nated_sdp(10) end");
        let m = run_from(&eng, msg.as_bytes(), "203.0.113.5:5060");
        assert_eq!(global_int(&eng, "a"), 1);
        let out = assembled(&m);
        assert!(out.contains("c=IN IP4 203.0.113.5\r\n"), "{out}");
        assert!(out.contains("o=- 1 1 IN IP4 203.0.113.5\r\n"), "{out}");
        assert!(!out.contains("192.168.1.5\r\n"), "{out}");
    }

    #[test]
    fn fix_nated_register_feeds_received() {
        let eng = engine("function ksr_request_route() a = KSR.nathelper.fix_nated_register() end");
        let m = run_from(
            &eng,
            &reg("<sip:alice@192.168.1.5:5060>", "192.168.1.5:5060"),
            "203.0.113.5:40000",
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(m.nat_received.as_deref(), Some("sip:203.0.113.5:40000"));
        // registrar.save stores it: the 200 OK shows it, lookup routes to it.
        let eng = engine(
            r#"function ksr_request_route()
    if KSR.is_REGISTER() then
        KSR.nathelper.fix_nated_register()
        KSR.registrar.save("location", 0)
    else
        l = KSR.registrar.lookup("location")
    end
end"#,
        );
        let m = run_from(
            &eng,
            &reg("<sip:alice@192.168.1.5:5060>", "192.168.1.5:5060"),
            "203.0.113.5:40000",
        );
        let o = m.out.first().expect("200 OK");
        let wire = String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]);
        assert!(wire.starts_with("SIP/2.0 200"), "{wire}");
        assert!(
            wire.contains("received=\"sip:203.0.113.5:40000\""),
            "{wire}"
        );
        let m = run_from(
            &eng,
            &request("INVITE sip:alice@example.com SIP/2.0", None, &[]),
            "192.0.2.9:5060",
        );
        assert_eq!(global_int(&eng, "l"), 1);
        assert_eq!(m.dst_uri.as_deref(), Some(&b"sip:203.0.113.5:40000"[..]));
    }

    #[test]
    fn alias_round_trip() {
        let eng = engine(
            "function ksr_request_route() a = KSR.nathelper.set_contact_alias() b = KSR.nathelper.set_contact_alias() end",
        );
        let m = run_from(
            &eng,
            &reg(
                "\"Al\" <sip:alice@192.168.1.5:5060;transport=udp>;expires=60",
                "192.168.1.5",
            ),
            "203.0.113.5:40000",
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(
            global_int(&eng, "b"),
            -1,
            "the Contact cannot be updated twice"
        );
        let out = assembled(&m);
        let want = "Contact: \"Al\" <sip:alice@192.168.1.5:5060;transport=udp;alias=203.0.113.5~40000~1>;expires=60\r\n";
        assert!(out.contains(want), "{out}");

        // The alias comes back in an in-dialog R-URI.
        let eng = engine(
            "function ksr_request_route() h = KSR.nathelper.handle_ruri_alias() du = KSR.pv.get('$du') ru = KSR.pv.get('$ru') end",
        );
        let bye = request(
            "BYE sip:alice;alias=9.9.9.9~1~1@192.168.1.5:5060;transport=udp;alias=203.0.113.5~40000~1;lr SIP/2.0",
            Some("t"),
            &[],
        );
        run_from(&eng, &bye, "192.0.2.9:5060");
        assert_eq!(global_int(&eng, "h"), 1);
        let du: String = eng.lua().globals().get("du").unwrap();
        let ru: String = eng.lua().globals().get("ru").unwrap();
        assert_eq!(du, "sip:203.0.113.5:40000");
        assert_eq!(
            ru,
            "sip:alice;alias=9.9.9.9~1~1@192.168.1.5:5060;transport=udp;lr"
        );
        // No alias: 2; bad alias: -1; TCP alias: transport in $du.
        for (uri, want, du_want) in [
            ("sip:alice@192.0.2.1", 2, None),
            ("sip:alice@192.0.2.1;alias=1.2.3.4~x~1", -1, None),
            (
                "sip:alice@192.0.2.1;alias=1.2.3.4~5070~2",
                1,
                Some("sip:1.2.3.4:5070;transport=tcp"),
            ),
        ] {
            let m = run_from(
                &eng,
                &request(&format!("BYE {uri} SIP/2.0"), Some("t"), &[]),
                "192.0.2.9:5060",
            );
            assert_eq!(global_int(&eng, "h"), want, "{uri}");
            assert_eq!(m.dst_uri.as_deref(), du_want.map(str::as_bytes), "{uri}");
        }
    }

    #[test]
    fn contact_rewrites() {
        // Unbracketed contact: brackets added, params stay header params.
        let eng =
            engine("function ksr_request_route() a = KSR.nathelper.set_contact_alias_trim() end");
        let m = run_from(
            &eng,
            &reg("sip:alice@192.168.1.5;expires=60", "192.168.1.5"),
            "203.0.113.5:40000",
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert!(
            assembled(&m).contains(
                "Contact: <sip:alice@192.168.1.5;alias=203.0.113.5~40000~1>;expires=60\r\n"
            ),
            "{}",
            assembled(&m)
        );
        let eng = engine("function ksr_request_route() a = KSR.nathelper.fix_nated_contact() end");
        let m = run_from(
            &eng,
            &reg("<sip:alice@192.168.1.5:5062;ob>", "192.168.1.5"),
            "203.0.113.5:40000",
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert!(assembled(&m).contains("Contact: <sip:alice@203.0.113.5:40000;ob>\r\n"));
        // add_contact_alias: nothing to add when the Contact is the source.
        let eng = engine("function ksr_request_route() a = KSR.nathelper.add_contact_alias() end");
        let m = run_from(
            &eng,
            &reg("<sip:alice@203.0.113.5:40000>", "203.0.113.5:40000"),
            "203.0.113.5:40000",
        );
        assert_eq!(global_int(&eng, "a"), 2);
        assert!(m.edits.is_empty());
        let eng = engine(
            "function ksr_request_route() a = KSR.nathelper.add_contact_alias_addr('198.51.100.1', '5080', 'tcp') b = KSR.nathelper.add_rcv_param(0) end",
        );
        let m = run_from(
            &eng,
            &reg("<sip:alice@192.168.1.5>", "192.168.1.5"),
            "203.0.113.5:40000",
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), 1);
        let out = assembled(&m);
        assert!(
            out.contains(
                "Contact: <sip:alice@192.168.1.5;alias=198.51.100.1~5080~2>;received=\"sip:203.0.113.5:40000\"\r\n"
            ),
            "{out}"
        );
    }
}
