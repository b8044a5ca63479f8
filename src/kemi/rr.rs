//! KSR.rr: Record-Route and loose routing (Kamailio `rr` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.rr.record_route()` | `int ()` | 1; -1 when the request is already record-routed or is a reply |
//! | `KSR.rr.record_route_params(params)` | `int (str)` | like `record_route()`, with `;name=value` URI params |
//! | `KSR.rr.record_route_preset(addr[, addr2])` | `int (str, str)` | 1 / -1; `addr` is `host[:port][;params]` without scheme; with `addr2` two Record-Routes, `addr` on top (add `;r2=on` to both) |
//! | `KSR.rr.record_route_preset_one(addr)` | `int (str)` | same, one header |
//! | `KSR.rr.record_route_advertised_address(addr)` | `int (str)` | 1 / -1; Record-Route with `host[:port]` instead of the receiving address |
//! | `KSR.rr.remove_record_route()` | `int ()` | 1; forgets what `record_route*()` / `add_rr_param()` asked for |
//! | `KSR.rr.add_rr_param(param)` | `int (str)` | 1 / -1 (bad characters); before or after `record_route*()` |
//! | `KSR.rr.loose_route()` | `int ()` | 1 routed by the Route set (in-dialog), -3 next hop from a preloaded Route (no To-tag), -1 no Route header, only our own Route on a request without To-tag, or a malformed Route/R-URI |
//! | `KSR.rr.loose_route_mode(mode)` | `int (int)` | as `loose_route()`; mode bit 1 skips the strict-router (R-URI is myself) handling |
//! | `KSR.rr.loose_route_preloaded()` | `int ()` | 1 when `loose_route()` gives -3, else -1 |
//! | `KSR.rr.check_route_param(re)` | `int (str)` | 1 / -1: the URI params of our Route that `loose_route()` consumed (`;lr;ftag=...;x=y`) match `re` |
//! | `KSR.rr.is_direction(dir)` | `int (str)` | 1 / -1: `"downstream"` (ftag of our Route equals the From tag) or `"upstream"`; -1 without ftag |
//! | `KSR.rr.next_hop_route()` | `int ()` | 1 / -1: `loose_route()` left a Route header for the next hop |
//!
//! The Record-Route (`<sip:ip:port;lr;ftag=<From tag>...>`, the receiving
//! address unless preset/advertised) is added when the request is relayed.
//! Its `ftag` is the From tag, or the To tag for an in-dialog request that
//! `loose_route()` found going upstream (Kamailio's `append_fromtag`).
//!
//! `loose_route()` follows RFC 3261 §16.4/§16.12 like Kamailio: a request
//! without To-tag (preloaded route) is only loose-routed; an in-dialog request
//! whose R-URI is this proxy came from a strict router, so the last Route
//! becomes the R-URI. The top Route is removed when it is ours (and the next
//! one too when the first has `r2` and the second is ours: double
//! Record-Route). A remaining Route with `;lr` becomes `$du`; without `;lr`
//! (strict next hop) it becomes the R-URI and the old R-URI is added as the
//! last Route.
//!
//! `check_route_param` regular expressions: a small built-in POSIX-like
//! subset, case-insensitive: literals, `.`, `[...]`/`[^...]` with ranges,
//! `\d \w \s` and `\` escapes, `* + ?`, `^ $` anchors and top-level `|`.
//! Groups and `{m,n}` are not supported (the call logs an error and returns -1).

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{ffi, MsgCtx, Myself, Shared};
use crate::sip::{HdrName, NameAddr, Proto, SipUri};

/// Which Record-Route address `record_route*()` chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RrAddr {
    /// The address the request was received on (`MsgCtx::local`).
    Local,
    /// `record_route_advertised_address(addr)`: `host[:port]`.
    Advertised(Vec<u8>),
    /// `record_route_preset(addr[, addr2])`: `host[:port][;params]` each.
    Preset(Vec<u8>, Option<Vec<u8>>),
}

/// What `record_route*()` / `add_rr_param()` asked for (turned into
/// Record-Route headers when the request is relayed, see
/// [`write_record_route`]) and what `loose_route()` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RrPending {
    /// Set by `record_route*()`: the request gets a Record-Route.
    pub record: Option<RrAddr>,
    /// URI parameters for the Record-Route (`record_route_params`,
    /// `add_rr_param`), each starting with `;`.
    pub params: Vec<u8>,
    /// Return code of the first `loose_route*()` call (a second call returns
    /// it again without editing the message twice).
    pub loose_rc: Option<i32>,
    /// URI parameters (with the leading `;`) of our Route URI that
    /// `loose_route()` consumed, or of the R-URI when the previous hop was a
    /// strict router: `check_route_param`, `is_direction`.
    pub route_params: Option<Vec<u8>>,
    /// `loose_route()` left a Route header for the next hop.
    pub next_hop_route: bool,
}

/// Kamailio's `enable_double_rr` marker parameter.
const R2: &[u8] = b"r2";

/// `KSR.rr.record_route()`.
pub(super) fn record_route(s: &Shared) -> mlua::Result<i32> {
    s.with_msg(|m| start_rr(m, RrAddr::Local, b""))
}

/// `KSR.rr.loose_route()` (with the dialog module's bookkeeping).
pub(super) fn loose_route_kemi(s: &Shared) -> mlua::Result<i32> {
    s.with_msg(|m| {
        let r = loose_route(&s.myself, m, 0);
        if r > 0 {
            super::dialog::after_loose_route(s, m);
        }
        r
    })
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let rr = lua.create_table()?;
    ffi::fast!(lua, &rr, "record_route", shared, [], |s, _| {
        Ok(record_route(s)?.into())
    })?;
    let s = shared.clone();
    rr.set(
        "record_route_params",
        lua.create_function(move |_, params: mlua::String| {
            let p = params.as_bytes();
            s.with_msg(|m| start_rr(m, RrAddr::Local, &p))
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "record_route_preset",
        lua.create_function(
            move |_, (addr, addr2): (mlua::String, Option<mlua::String>)| {
                let a = addr.as_bytes();
                let b = addr2.as_ref().map(|x| x.as_bytes());
                preset(&s, &a, b.as_deref())
            },
        )?,
    )?;
    let s = shared.clone();
    rr.set(
        "record_route_preset_one",
        lua.create_function(move |_, addr: mlua::String| preset(&s, &addr.as_bytes(), None))?,
    )?;
    let s = shared.clone();
    rr.set(
        "record_route_advertised_address",
        lua.create_function(move |_, addr: mlua::String| {
            let Some(a) = rr_address(&addr.as_bytes()) else {
                return Ok(-1);
            };
            s.with_msg(|m| start_rr(m, RrAddr::Advertised(a), b""))
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "remove_record_route",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| {
                m.rr.record = None;
                m.rr.params.clear();
                1
            })
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "add_rr_param",
        lua.create_function(move |_, param: mlua::String| {
            let Some(p) = norm_params(&param.as_bytes()) else {
                return Ok(-1);
            };
            s.with_msg(|m| {
                m.rr.params.extend_from_slice(&p);
                1
            })
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "loose_route",
        lua.create_function(move |_, ()| loose_route_kemi(&s))?,
    )?;
    let s = shared.clone();
    rr.set(
        "loose_route_mode",
        lua.create_function(move |_, mode: i64| {
            s.with_msg(|m| {
                let r = loose_route(&s.myself, m, mode);
                if r > 0 {
                    super::dialog::after_loose_route(&s, m);
                }
                r
            })
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "loose_route_preloaded",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| match loose_route(&s.myself, m, 0) {
                -3 => 1,
                _ => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "check_route_param",
        lua.create_function(move |_, re: mlua::String| {
            let re = re.as_bytes();
            let re = match minire::Regex::new(&re) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(target: "script", "rr.check_route_param: {e}");
                    return Ok(-1);
                }
            };
            s.with_msg(|m| match &m.rr.route_params {
                Some(p) if re.is_match(p) => 1,
                _ => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "is_direction",
        lua.create_function(move |_, dir: mlua::String| {
            let want_down = match &*dir.as_bytes() {
                b"downstream" => true,
                b"upstream" => false,
                _ => return Ok(-1),
            };
            s.with_msg(|m| match is_downstream(m) {
                Some(down) if down == want_down => 1,
                _ => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    rr.set(
        "next_hop_route",
        lua.create_function(move |_, ()| s.with_msg(|m| if m.rr.next_hop_route { 1 } else { -1 }))?,
    )?;
    ksr.set("rr", rr)?;
    Ok(())
}

/// `record_route*()`: only once per request (Kamailio's "double attempt to
/// record-route" is an error).
fn start_rr(m: &mut MsgCtx, addr: RrAddr, params: &[u8]) -> i32 {
    if !m.msg().is_request() || m.rr.record.is_some() {
        return -1;
    }
    let Some(p) = norm_params(params) else {
        return -1;
    };
    m.rr.params.extend_from_slice(&p);
    m.rr.record = Some(addr);
    1
}

fn preset(s: &Shared, a: &[u8], b: Option<&[u8]>) -> mlua::Result<i32> {
    let Some(a) = rr_address(a) else {
        return Ok(-1);
    };
    let b = match b {
        Some(b) => match rr_address(b) {
            Some(b) => Some(b),
            None => return Ok(-1),
        },
        None => None,
    };
    s.with_msg(|m| start_rr(m, RrAddr::Preset(a, b), b""))
}

/// `host[:port][;params]` for a Record-Route URI: a leading `sip:` is
/// tolerated (and dropped); None when it does not form a SIP URI.
fn rr_address(a: &[u8]) -> Option<Vec<u8>> {
    let a = a.trim_ascii();
    let a = strip_prefix_ci(a, b"sip:").unwrap_or(a);
    if a.is_empty() || a.iter().any(|&c| bad_uri_char(c)) {
        return None;
    }
    let mut uri = b"sip:".to_vec();
    uri.extend_from_slice(a);
    let ok = SipUri::parse(&uri).is_ok_and(|u| !u.host.is_empty() && u.headers.is_empty());
    ok.then(|| a.to_vec())
}

fn strip_prefix_ci<'a>(b: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
    (b.len() >= p.len() && b[..p.len()].eq_ignore_ascii_case(p)).then(|| &b[p.len()..])
}

/// Bytes that would break out of `<...>` in a header.
fn bad_uri_char(c: u8) -> bool {
    c <= b' ' || c >= 0x7f || matches!(c, b'<' | b'>' | b'"' | b',')
}

/// `;a=b;c` (a missing leading `;` is added); None for characters that do
/// not belong in URI parameters.
fn norm_params(p: &[u8]) -> Option<Vec<u8>> {
    let p = p.trim_ascii();
    if p.iter().any(|&c| bad_uri_char(c) || c == b'?') {
        return None;
    }
    let mut out = Vec::with_capacity(p.len() + 1);
    if !p.is_empty() && p[0] != b';' {
        out.push(b';');
    }
    out.extend_from_slice(p);
    Some(out)
}

/// Writes the complete `Record-Route: ...\r\n` line(s) this request must
/// carry when relayed (nothing when the route did not record-route). Insert
/// them before the first header of the outgoing request.
// (Called by the relay; the allow goes once that is merged.)
#[allow(dead_code)]
pub(crate) fn write_record_route(s: &Shared, m: &MsgCtx, out_proto: Proto, out: &mut Vec<u8>) {
    let Some(addr) = &m.rr.record else { return };
    let msg = m.msg();
    let from_tag = msg.from().ok().and_then(|f| f.tag());
    // An in-dialog request going upstream carries the caller's tag in To.
    let tag = match is_downstream(m) {
        Some(false) => msg.to().ok().and_then(|t| t.tag()),
        _ => from_tag,
    };
    let params = &m.rr.params;
    match addr {
        RrAddr::Local => {
            let host = local_address(s, m);
            let in_proto = m.proto;
            if in_proto == out_proto {
                let host = with_transport(host, in_proto, false);
                rr_line(out, host.as_bytes(), tag, params);
            } else {
                // rr's enable_double_rr: the transport changes here, so one
                // Record-Route per side, the outgoing side on top, both
                // marked r2=on (loose_route() then consumes both).
                let out_host = if m.adv_addr.is_some() || m.adv_port.is_some() {
                    host.clone()
                } else {
                    let a = super::tm::local_for(s, m, out_proto);
                    let mut b = Vec::with_capacity(48);
                    super::tm::push_host_port(&mut b, a);
                    String::from_utf8_lossy(&b).into_owned()
                };
                let top = with_transport(out_host, out_proto, true);
                rr_line(out, top.as_bytes(), tag, params);
                let second = with_transport(host, in_proto, true);
                rr_line(out, second.as_bytes(), tag, params);
            }
        }
        RrAddr::Advertised(a) => rr_line(out, a, tag, params),
        RrAddr::Preset(a, b) => {
            rr_line(out, a, tag, params);
            if let Some(b) = b {
                rr_line(out, b, tag, params);
            }
        }
    }
}

/// `host` with `;transport=` for a transport other than UDP (Kamailio's rr
/// writes `;transport=tls` for TLS too) and `;r2=on` when doubled.
fn with_transport(mut host: String, proto: Proto, r2: bool) -> String {
    if proto != Proto::Udp {
        host.push_str(";transport=");
        host.push_str(proto.name());
    }
    if r2 {
        host.push_str(";r2=on");
    }
    host
}

#[allow(dead_code)]
fn rr_line(out: &mut Vec<u8>, addr: &[u8], ftag: Option<&[u8]>, params: &[u8]) {
    out.extend_from_slice(b"Record-Route: <sip:");
    out.extend_from_slice(addr);
    out.extend_from_slice(b";lr");
    if let Some(t) = ftag.filter(|t| !t.is_empty()) {
        out.extend_from_slice(b";ftag=");
        out.extend_from_slice(t);
    }
    out.extend_from_slice(params);
    out.extend_from_slice(b">\r\n");
}

/// `ip:port` of the receiving socket (IPv6 in brackets); for a wildcard
/// listener, the first configured name.
#[allow(dead_code)]
fn local_address(s: &Shared, m: &MsgCtx) -> String {
    if m.adv_addr.is_some() || m.adv_port.is_some() {
        let mut out = Vec::with_capacity(48);
        super::tm::push_sent_by(&mut out, m);
        return String::from_utf8_lossy(&out).into_owned();
    }
    let ip = m.local.ip();
    if ip.is_unspecified() {
        if let Some((h, p)) = s.myself.names.first() {
            return match p {
                Some(p) => format!("{h}:{p}"),
                None => h.clone(),
            };
        }
    }
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}", m.local.port()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", m.local.port()),
    }
}

/// Direction from the `ftag` of the Route `loose_route()` consumed: Some(true)
/// when it equals the From tag. None without ftag.
fn is_downstream(m: &MsgCtx) -> Option<bool> {
    let params = m.rr.route_params.as_deref()?;
    let ftag = crate::sip::Params { raw: params }.get(b"ftag").flatten()?;
    let from_tag = m.msg().from().ok().and_then(|f| f.tag());
    Some(from_tag == Some(ftag))
}

/// What `loose_route()` decided, independent of how the message stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LoosePlan {
    pub rc: i32,
    /// Route values (index in message order) to remove.
    pub remove: Vec<usize>,
    /// New Request-URI.
    pub new_ruri: Option<Vec<u8>>,
    /// Next hop (`$du`): a loose-routing Route.
    pub dst_uri: Option<Vec<u8>>,
    /// URI to add as the last Route (the R-URI displaced by a strict next hop).
    pub append_route: Option<Vec<u8>>,
    pub route_params: Option<Vec<u8>>,
    pub next_hop_route: bool,
}

/// `loose_route_mode` bit: skip the strict-router (R-URI is myself) check.
const LR_MODE_LOOSE_ONLY: i64 = 1;

/// RFC 3261 §16.4 / §16.12 over the Route values `routes` (name-addrs, in
/// message order). `in_dialog`: the request has a To-tag.
pub(crate) fn plan_loose_route(
    routes: &[&[u8]],
    ruri: &[u8],
    in_dialog: bool,
    mode: i64,
    myself: &Myself,
) -> LoosePlan {
    let fail = LoosePlan {
        rc: -1,
        ..LoosePlan::default()
    };
    if routes.is_empty() {
        return fail;
    }
    let mut uris = Vec::with_capacity(routes.len());
    for r in routes {
        match NameAddr::parse(r).and_then(|na| Ok((na.uri, na.uri_parsed()?))) {
            Ok(u) => uris.push(u),
            Err(_) => return fail,
        }
    }
    let Ok(ruri_p) = SipUri::parse(ruri) else {
        return fail;
    };
    let mine = |u: &SipUri<'_>| myself.matches(u.host, u.port);
    let mut plan = LoosePlan::default();
    let mut removed = vec![false; uris.len()];
    let mut cur_ruri: Vec<u8> = ruri.to_vec();

    // The previous hop was a strict router: the R-URI is the Record-Route
    // value we inserted, the remote target is the last Route.
    let strict_prev = in_dialog && mode & LR_MODE_LOOSE_ONLY == 0 && mine(&ruri_p);
    if strict_prev {
        let last = uris.len() - 1;
        plan.route_params = Some(ruri_p.params.raw.to_vec());
        cur_ruri = uris[last].0.to_vec();
        plan.new_ruri = Some(cur_ruri.clone());
        removed[last] = true;
        plan.remove.push(last);
    }

    // Our own Route on top (two of them for a double Record-Route).
    let mut ours = false;
    if let Some(i) = (0..uris.len()).find(|&i| !removed[i]) {
        if mine(&uris[i].1) {
            ours = true;
            removed[i] = true;
            plan.remove.push(i);
            let params = uris[i].1.params;
            if plan.route_params.is_none() {
                plan.route_params = Some(params.raw.to_vec());
            }
            if params.get(R2).is_some() {
                if let Some(j) = (i + 1..uris.len()).find(|&j| !removed[j]) {
                    if mine(&uris[j].1) {
                        removed[j] = true;
                        plan.remove.push(j);
                    }
                }
            }
        }
    }

    match (0..uris.len()).find(|&i| !removed[i]) {
        None => {
            // Only our Route on an initial request: removed, but "not routed".
            plan.rc = if !in_dialog && ours && !strict_prev {
                -1
            } else {
                1
            };
        }
        Some(i) => {
            plan.next_hop_route = true;
            let (uri, parsed) = &uris[i];
            if parsed.params.get(b"lr").is_some() {
                plan.dst_uri = Some(uri.to_vec());
            } else {
                // Strict next hop: it becomes the R-URI, the R-URI the last Route.
                plan.append_route = Some(cur_ruri);
                plan.new_ruri = Some(uri.to_vec());
                plan.remove.push(i);
            }
            plan.rc = if in_dialog { 1 } else { -3 };
        }
    }
    plan.remove.sort_unstable();
    plan
}

/// Where one Route value sits: its header line (index into `Parsed::headers`).
#[derive(Clone, Copy, Debug)]
struct RouteItem {
    hdr: usize,
}

/// `loose_route_mode(mode)` on the current message: plans, then records the
/// edits (Route removals, R-URI, `$du`, appended Route).
pub(crate) fn loose_route(myself: &Myself, m: &mut MsgCtx, mode: i64) -> i32 {
    if let Some(rc) = m.rr.loose_rc {
        return rc;
    }
    if !m.msg().is_request() {
        return -1;
    }
    let buf = &m.buf[..m.len];
    let mut items = Vec::new();
    let mut routes: Vec<&[u8]> = Vec::new();
    for (idx, h) in m.parsed.headers.iter().enumerate() {
        if h.name == HdrName::Route {
            let v = h.value.get(buf);
            for (s, e) in split_values(v) {
                items.push(RouteItem { hdr: idx });
                routes.push(&v[s..e]);
            }
        }
    }
    let msg = m.msg();
    let in_dialog = msg
        .to()
        .ok()
        .and_then(|t| t.tag())
        .is_some_and(|t| !t.is_empty());
    let Some(ruri) = m.ruri() else { return -1 };
    let plan = plan_loose_route(&routes, ruri, in_dialog, mode, myself);

    // Route header lines that lose values: removed, or rewritten with the rest.
    let mut i = 0;
    while i < items.len() {
        let hdr = items[i].hdr;
        let mut j = i;
        while j < items.len() && items[j].hdr == hdr {
            j += 1;
        }
        if (i..j).any(|k| plan.remove.contains(&k)) {
            let keep: Vec<usize> = (i..j).filter(|k| !plan.remove.contains(k)).collect();
            if keep.is_empty() {
                m.edits.remove_header(hdr);
            } else {
                let mut v = Vec::new();
                for (n, &k) in keep.iter().enumerate() {
                    if n > 0 {
                        v.extend_from_slice(b", ");
                    }
                    v.extend_from_slice(routes[k]);
                }
                m.edits.replace_header_value(hdr, &v);
            }
        }
        i = j;
    }
    if let Some(r) = &plan.append_route {
        let mut line = b"Route: <".to_vec();
        line.extend_from_slice(r);
        line.push(b'>');
        m.edits.append_header(&line);
    }
    if let Some(r) = plan.new_ruri {
        m.new_ruri = Some(r);
    }
    if let Some(d) = plan.dst_uri {
        m.dst_uri = Some(d);
    }
    m.rr.route_params = plan.route_params;
    m.rr.next_hop_route = plan.next_hop_route;
    m.rr.loose_rc = Some(plan.rc);
    plan.rc
}

/// Ranges of the comma-separated values of one header line (commas inside
/// quotes or `<...>` do not split), trimmed; empty values skipped.
pub(crate) fn split_values(v: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut esc) = (false, false, false);
    let mut start = 0;
    let mut push = |s: usize, e: usize| {
        let mut s = s;
        let mut e = e;
        while s < e && v[s].is_ascii_whitespace() {
            s += 1;
        }
        while e > s && v[e - 1].is_ascii_whitespace() {
            e -= 1;
        }
        if s < e {
            out.push((s, e));
        }
    };
    for (i, &c) in v.iter().enumerate() {
        if quoted {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                quoted = false;
            }
            continue;
        }
        match c {
            b'"' => quoted = true,
            b'<' => angle = true,
            b'>' => angle = false,
            b',' if !angle => {
                push(start, i);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(start, v.len());
    out
}

/// The small regular-expression matcher behind `check_route_param`.
pub(crate) mod minire {
    #[derive(Clone, Debug)]
    enum Atom {
        Byte(u8),
        Any,
        /// Inclusive byte ranges (already lower-cased), negated or not.
        Class(Vec<(u8, u8)>, bool),
    }

    #[derive(Clone, Debug)]
    struct Node {
        atom: Atom,
        min: usize,
        max: usize,
    }

    #[derive(Clone, Debug)]
    struct Alt {
        start: bool,
        end: bool,
        nodes: Vec<Node>,
    }

    /// A compiled pattern (case-insensitive).
    #[derive(Clone, Debug)]
    pub struct Regex {
        alts: Vec<Alt>,
    }

    fn class_escape(c: u8) -> Option<Atom> {
        Some(match c {
            b'd' => Atom::Class(vec![(b'0', b'9')], false),
            b'D' => Atom::Class(vec![(b'0', b'9')], true),
            b'w' => Atom::Class(vec![(b'a', b'z'), (b'0', b'9'), (b'_', b'_')], false),
            b'W' => Atom::Class(vec![(b'a', b'z'), (b'0', b'9'), (b'_', b'_')], true),
            b's' => Atom::Class(vec![(b' ', b' '), (b'\t', b'\r')], false),
            b'S' => Atom::Class(vec![(b' ', b' '), (b'\t', b'\r')], true),
            _ => return None,
        })
    }

    impl Regex {
        pub fn new(p: &[u8]) -> Result<Regex, String> {
            // Split at top-level '|'.
            let mut parts = Vec::new();
            let (mut s, mut i, mut in_class) = (0, 0, false);
            while i < p.len() {
                match p[i] {
                    b'\\' => i += 1,
                    b'[' if !in_class => {
                        in_class = true;
                        // A ']' right after '[' or '[^' is literal.
                        if p.get(i + 1) == Some(&b'^') {
                            i += 1;
                        }
                        if p.get(i + 1) == Some(&b']') {
                            i += 1;
                        }
                    }
                    b']' if in_class => in_class = false,
                    b'|' if !in_class => {
                        parts.push(&p[s..i]);
                        s = i + 1;
                    }
                    _ => {}
                }
                i += 1;
            }
            parts.push(&p[s..]);
            let alts = parts
                .into_iter()
                .map(Self::alt)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Regex { alts })
        }

        fn alt(mut p: &[u8]) -> Result<Alt, String> {
            let start = p.first() == Some(&b'^');
            if start {
                p = &p[1..];
            }
            let mut end = false;
            if p.last() == Some(&b'$') {
                // Unless escaped.
                let backslashes = p[..p.len() - 1]
                    .iter()
                    .rev()
                    .take_while(|&&c| c == b'\\')
                    .count();
                if backslashes % 2 == 0 {
                    end = true;
                    p = &p[..p.len() - 1];
                }
            }
            let mut nodes: Vec<Node> = Vec::new();
            let mut i = 0;
            while i < p.len() {
                let c = p[i];
                let atom = match c {
                    b'*' | b'+' | b'?' => {
                        let Some(last) = nodes.last_mut() else {
                            return Err(format!("nothing to repeat at {i}"));
                        };
                        if last.min != 1 || last.max != 1 {
                            return Err(format!("repeated repetition at {i}"));
                        }
                        (last.min, last.max) = match c {
                            b'*' => (0, usize::MAX),
                            b'+' => (1, usize::MAX),
                            _ => (0, 1),
                        };
                        i += 1;
                        continue;
                    }
                    b'(' | b')' | b'{' => {
                        return Err(format!("unsupported `{}` in regular expression", c as char))
                    }
                    b'^' | b'$' => return Err(format!("anchor `{}` inside pattern", c as char)),
                    b'.' => Atom::Any,
                    b'\\' => {
                        i += 1;
                        let Some(&e) = p.get(i) else {
                            return Err("trailing backslash".into());
                        };
                        class_escape(e).unwrap_or(Atom::Byte(e.to_ascii_lowercase()))
                    }
                    b'[' => {
                        let mut j = i + 1;
                        let neg = p.get(j) == Some(&b'^');
                        if neg {
                            j += 1;
                        }
                        let mut ranges = Vec::new();
                        let mut first = true;
                        loop {
                            let Some(&x) = p.get(j) else {
                                return Err("unterminated [".into());
                            };
                            if x == b']' && !first {
                                break;
                            }
                            first = false;
                            if p.get(j + 1) == Some(&b'-')
                                && p.get(j + 2).is_some_and(|&y| y != b']')
                            {
                                let y = p[j + 2];
                                if y < x {
                                    return Err("bad range in [...]".into());
                                }
                                ranges.push((x, y));
                                j += 3;
                            } else {
                                ranges.push((x, x));
                                j += 1;
                            }
                        }
                        i = j;
                        Atom::Class(ranges, neg)
                    }
                    _ => Atom::Byte(c.to_ascii_lowercase()),
                };
                nodes.push(Node {
                    atom,
                    min: 1,
                    max: 1,
                });
                i += 1;
            }
            Ok(Alt { start, end, nodes })
        }

        /// Unanchored search (like `regexec`), case-insensitive.
        pub fn is_match(&self, text: &[u8]) -> bool {
            self.alts.iter().any(|a| a.is_match(text))
        }
    }

    impl Atom {
        fn matches(&self, c: u8) -> bool {
            let l = c.to_ascii_lowercase();
            let u = c.to_ascii_uppercase();
            match self {
                Atom::Any => c != b'\n',
                Atom::Byte(b) => *b == l,
                Atom::Class(r, neg) => {
                    let hit = r
                        .iter()
                        .any(|&(a, b)| [c, l, u].iter().any(|x| (a..=b).contains(x)));
                    hit != *neg
                }
            }
        }
    }

    impl Alt {
        fn is_match(&self, t: &[u8]) -> bool {
            // Failed (node, position) pairs: keeps backtracking polynomial.
            let mut failed = vec![false; (self.nodes.len() + 1) * (t.len() + 1)];
            let last_start = if self.start { 0 } else { t.len() };
            (0..=last_start).any(|i| self.here(0, i, t, &mut failed))
        }

        fn here(&self, k: usize, i: usize, t: &[u8], failed: &mut [bool]) -> bool {
            let Some(node) = self.nodes.get(k) else {
                return !self.end || i == t.len();
            };
            let key = k * (t.len() + 1) + i;
            if failed[key] {
                return false;
            }
            let mut n = 0;
            while n < node.max && i + n < t.len() && node.atom.matches(t[i + n]) {
                n += 1;
            }
            let mut ok = false;
            if n >= node.min {
                for j in (node.min..=n).rev() {
                    if self.here(k + 1, i + j, t, failed) {
                        ok = true;
                        break;
                    }
                }
            }
            if !ok {
                failed[key] = true;
            }
            ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{assembled, engine, global_int, request, run};
    use super::*;

    fn me() -> Myself {
        Myself::new(
            "10.0.0.1:5060".parse().unwrap(),
            &["proxy.example.com".into()],
        )
    }

    #[test]
    fn minire_subset() {
        for (re, text, want) in [
            ("nat=yes", ";lr;ftag=a;nat=yes", true),
            ("nat=yes", ";lr;ftag=a;nat=no", false),
            ("NAT=Yes", ";nat=yes", true),
            ("^;lr", ";lr;x=1", true),
            ("^lr", ";lr;x=1", false),
            ("x=1$", ";lr;x=1", true),
            ("x=1$", ";lr;x=12", false),
            ("x=[0-9]+$", ";lr;x=12", true),
            ("x=[^0-9]", ";x=12", false),
            ("x=\\d\\d", ";x=12", true),
            ("a.c", "abc", true),
            ("ab*c", "ac", true),
            ("ab+c", "ac", false),
            ("ab?c", "abbc", false),
            ("foo|nat=yes", ";nat=yes", true),
            ("foo|bar", ";nat=yes", false),
            ("\\.", "a.b", true),
            ("\\.", "ab", false),
            ("[]x]", "]", true),
            ("", "anything", true),
            ("a*a*a*a*a*b", &"a".repeat(300), false),
        ] {
            let r = minire::Regex::new(re.as_bytes()).unwrap();
            assert_eq!(r.is_match(text.as_bytes()), want, "{re:?} on {text:?}");
        }
        for bad in ["(a)", "a{2}", "*a", "a**", "[a", "a\\"] {
            assert!(minire::Regex::new(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn split_route_values() {
        let v = b"<sip:a;lr>, \"x,y\" <sip:b;lr>;p=1 ,<sip:c,d>,, sip:e";
        let got: Vec<&[u8]> = split_values(v).iter().map(|&(s, e)| &v[s..e]).collect();
        assert_eq!(
            got,
            vec![
                &b"<sip:a;lr>"[..],
                b"\"x,y\" <sip:b;lr>;p=1",
                b"<sip:c,d>",
                b"sip:e"
            ]
        );
    }

    /// Table of loose-route decisions: routes, R-URI, To-tag?, mode →
    /// rc, removed, new R-URI, $du, appended Route, route params, next hop.
    #[test]
    fn loose_route_plans() {
        type Row<'a> = (
            &'a [&'a str],
            &'a str,
            bool,
            i64,
            i32,
            &'a [usize],
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            bool,
        );
        let rows: &[Row] = &[
            // No Route.
            (
                &[],
                "sip:bob@192.0.2.20",
                true,
                0,
                -1,
                &[],
                None,
                None,
                None,
                None,
                false,
            ),
            // Our RR on top, next hop loose.
            (
                &["<sip:10.0.0.1:5060;lr;ftag=f1>", "<sip:192.0.2.30;lr>"],
                "sip:bob@192.0.2.20",
                true,
                0,
                1,
                &[0],
                None,
                Some("sip:192.0.2.30;lr"),
                None,
                Some(";lr;ftag=f1"),
                true,
            ),
            // Our RR only (alias, default port): in-dialog → 1, R-URI is the target.
            (
                &["<sip:proxy.example.com;lr>"],
                "sip:bob@192.0.2.20",
                true,
                0,
                1,
                &[0],
                None,
                None,
                None,
                Some(";lr"),
                false,
            ),
            // Same without To-tag: removed, but -1.
            (
                &["<sip:proxy.example.com;lr>"],
                "sip:bob@192.0.2.20",
                false,
                0,
                -1,
                &[0],
                None,
                None,
                None,
                Some(";lr"),
                false,
            ),
            // Preloaded foreign Route: -3, $du set.
            (
                &["<sip:192.0.2.30;lr>"],
                "sip:bob@example.com",
                false,
                0,
                -3,
                &[],
                None,
                Some("sip:192.0.2.30;lr"),
                None,
                None,
                true,
            ),
            // Preloaded: ours then a foreign one.
            (
                &["<sip:10.0.0.1;lr>", "<sip:192.0.2.30;lr>"],
                "sip:bob@example.com",
                false,
                0,
                -3,
                &[0],
                None,
                Some("sip:192.0.2.30;lr"),
                None,
                Some(";lr"),
                true,
            ),
            // Double RR (r2=on): both of ours removed.
            (
                &[
                    "<sip:10.0.0.1:5060;r2=on;lr;ftag=f1>",
                    "<sip:proxy.example.com:5060;r2=on;lr;ftag=f1>",
                    "<sip:192.0.2.30;lr>",
                ],
                "sip:bob@192.0.2.20",
                true,
                0,
                1,
                &[0, 1],
                None,
                Some("sip:192.0.2.30;lr"),
                None,
                Some(";r2=on;lr;ftag=f1"),
                true,
            ),
            // Two of ours without r2 (a spiral): only the top one goes.
            (
                &["<sip:10.0.0.1;lr>", "<sip:10.0.0.1;lr;x=2>"],
                "sip:bob@192.0.2.20",
                true,
                0,
                1,
                &[0],
                None,
                Some("sip:10.0.0.1;lr;x=2"),
                None,
                Some(";lr"),
                true,
            ),
            // Strict previous hop: R-URI is ours, last Route is the target.
            (
                &["<sip:192.0.2.30;lr>", "<sip:bob@192.0.2.20>"],
                "sip:10.0.0.1;ftag=f1;lr",
                true,
                0,
                1,
                &[1],
                Some("sip:bob@192.0.2.20"),
                Some("sip:192.0.2.30;lr"),
                None,
                Some(";ftag=f1;lr"),
                true,
            ),
            // Strict previous hop, nothing else: the target only.
            (
                &["<sip:bob@192.0.2.20>"],
                "sip:10.0.0.1;lr",
                true,
                0,
                1,
                &[0],
                Some("sip:bob@192.0.2.20"),
                None,
                None,
                Some(";lr"),
                false,
            ),
            // Same with mode 1 (loose only): R-URI myself is not special.
            (
                &["<sip:bob@192.0.2.20>"],
                "sip:10.0.0.1;lr",
                true,
                1,
                1,
                &[0],
                Some("sip:bob@192.0.2.20"),
                None,
                Some("sip:10.0.0.1;lr"),
                None,
                true,
            ),
            // Strict next hop: it becomes the R-URI, the R-URI the last Route.
            (
                &[
                    "<sip:10.0.0.1;lr>",
                    "<sip:192.0.2.30>",
                    "<sip:192.0.2.31;lr>",
                ],
                "sip:bob@192.0.2.20",
                true,
                0,
                1,
                &[0, 1],
                Some("sip:192.0.2.30"),
                None,
                Some("sip:bob@192.0.2.20"),
                Some(";lr"),
                true,
            ),
            // Malformed Route.
            (
                &["<sip:>"],
                "sip:bob@192.0.2.20",
                true,
                0,
                -1,
                &[],
                None,
                None,
                None,
                None,
                false,
            ),
        ];
        let me = me();
        for (n, r) in rows.iter().enumerate() {
            let routes: Vec<&[u8]> = r.0.iter().map(|s| s.as_bytes()).collect();
            let p = plan_loose_route(&routes, r.1.as_bytes(), r.2, r.3, &me);
            let b = |o: Option<&str>| o.map(|s| s.as_bytes().to_vec());
            assert_eq!(p.rc, r.4, "row {n} rc");
            assert_eq!(p.remove, r.5, "row {n} remove");
            assert_eq!(p.new_ruri, b(r.6), "row {n} ruri");
            assert_eq!(p.dst_uri, b(r.7), "row {n} du");
            assert_eq!(p.append_route, b(r.8), "row {n} append");
            assert_eq!(p.route_params, b(r.9), "row {n} params");
            assert_eq!(p.next_hop_route, r.10, "row {n} next hop");
        }
    }

    const LR_SCRIPT: &str = r#"
function ksr_request_route()
    rc = KSR.rr.loose_route()
    again = KSR.rr.loose_route()
    down = KSR.rr.is_direction("downstream")
    up = KSR.rr.is_direction("upstream")
    nat = KSR.rr.check_route_param("nat=yes")
    nonat = KSR.rr.check_route_param("^;nat")
    nh = KSR.rr.next_hop_route()
    pre = KSR.rr.loose_route_preloaded()
end
"#;

    #[test]
    fn ksr_loose_route_our_rr_then_next_hop() {
        let eng = engine(LR_SCRIPT);
        let msg = request(
            "BYE sip:bob@192.0.2.20:5062 SIP/2.0",
            Some("totag9"),
            &[
                "Route: <sip:10.0.0.1:5060;lr;ftag=fromtag1;nat=yes>, <sip:192.0.2.30;lr>",
                "Route: <sip:192.0.2.31;lr>",
            ],
        );
        let (m, _) = run(&eng, &msg);
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(global_int(&eng, "again"), 1);
        assert_eq!(global_int(&eng, "down"), 1);
        assert_eq!(global_int(&eng, "up"), -1);
        assert_eq!(global_int(&eng, "nat"), 1);
        assert_eq!(global_int(&eng, "nonat"), -1);
        assert_eq!(global_int(&eng, "nh"), 1);
        assert_eq!(global_int(&eng, "pre"), -1);
        assert_eq!(m.dst_uri.as_deref(), Some(&b"sip:192.0.2.30;lr"[..]));
        assert_eq!(m.new_ruri, None);
        let out = assembled(&m);
        assert!(
            out.contains("\r\nRoute: <sip:192.0.2.30;lr>\r\nRoute: <sip:192.0.2.31;lr>\r\n"),
            "{out}"
        );
        assert!(!out.contains("10.0.0.1"), "{out}");
    }

    #[test]
    fn ksr_loose_route_upstream_and_record_route_tag() {
        let eng = engine(
            r#"
function ksr_request_route()
    rc = KSR.rr.loose_route()
    up = KSR.rr.is_direction("upstream")
    rr = KSR.rr.record_route()
    rr2 = KSR.rr.record_route()
end
"#,
        );
        // From the callee: its From tag is the dialog's To tag.
        let msg = request(
            "BYE sip:alice@192.0.2.9 SIP/2.0",
            Some("calleetag"),
            &["Route: <sip:proxy.example.com;lr;ftag=calleetag>"],
        );
        let (m, _) = run(&eng, &msg);
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(global_int(&eng, "up"), 1);
        assert_eq!(global_int(&eng, "rr"), 1);
        assert_eq!(global_int(&eng, "rr2"), -1);
        assert_eq!(m.dst_uri, None);
        let out = assembled(&m);
        assert!(!out.contains("Route:"), "{out}");
        // Going upstream: the ftag stays the caller's tag (here the To tag).
        let mut line = Vec::new();
        write_record_route(eng.shared(), &m, crate::sip::Proto::Udp, &mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "Record-Route: <sip:10.0.0.1:5060;lr;ftag=calleetag>\r\n"
        );
    }

    #[test]
    fn ksr_loose_route_strict_router_and_no_route() {
        let eng = engine("function ksr_request_route() rc = KSR.rr.loose_route() end");
        let msg = request(
            "BYE sip:10.0.0.1;lr;ftag=fromtag1 SIP/2.0",
            Some("t2"),
            &["Route: <sip:192.0.2.30;lr>, <sip:bob@192.0.2.20:5062>"],
        );
        let (m, _) = run(&eng, &msg);
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(m.new_ruri.as_deref(), Some(&b"sip:bob@192.0.2.20:5062"[..]));
        assert_eq!(m.dst_uri.as_deref(), Some(&b"sip:192.0.2.30;lr"[..]));
        assert_eq!(
            m.rr.route_params.as_deref(),
            Some(&b";lr;ftag=fromtag1"[..])
        );
        let out = assembled(&m);
        assert!(out.contains("\r\nRoute: <sip:192.0.2.30;lr>\r\n"), "{out}");
        assert!(!out.contains("5062>"), "{out}");

        let (m, _) = run(
            &eng,
            &request("BYE sip:bob@192.0.2.20 SIP/2.0", Some("t"), &[]),
        );
        assert_eq!(global_int(&eng, "rc"), -1);
        assert!(m.edits.is_empty());
        assert_eq!((m.new_ruri, m.dst_uri), (None, None));
    }

    #[test]
    fn ksr_loose_route_strict_next_hop() {
        let eng = engine("function ksr_request_route() rc = KSR.rr.loose_route() end");
        let msg = request(
            "BYE sip:bob@192.0.2.20 SIP/2.0",
            Some("t2"),
            &["Route: <sip:10.0.0.1;lr>", "Route: <sip:192.0.2.30>"],
        );
        let (m, _) = run(&eng, &msg);
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(m.new_ruri.as_deref(), Some(&b"sip:192.0.2.30"[..]));
        assert_eq!(m.dst_uri, None);
        let out = assembled(&m);
        assert!(out.contains("Route: <sip:bob@192.0.2.20>\r\n"), "{out}");
        assert_eq!(out.matches("Route:").count(), 1, "{out}");
    }

    #[test]
    fn ksr_loose_route_double_rr_and_preloaded() {
        let eng = engine(
            "function ksr_request_route() rc = KSR.rr.loose_route() pre = KSR.rr.loose_route_preloaded() end",
        );
        let msg = request(
            "INVITE sip:bob@192.0.2.20 SIP/2.0",
            Some("t3"),
            &[
                "Route: <sip:10.0.0.1;r2=on;lr;ftag=fromtag1>,<sip:proxy.example.com;r2=on;lr;ftag=fromtag1>",
                "Route: <sip:192.0.2.30;lr>",
            ],
        );
        let (m, _) = run(&eng, &msg);
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(m.dst_uri.as_deref(), Some(&b"sip:192.0.2.30;lr"[..]));
        let out = assembled(&m);
        assert_eq!(out.matches("Route:").count(), 1, "{out}");

        // Preloaded (no To-tag), first Route foreign.
        let msg = request(
            "INVITE sip:bob@example.com SIP/2.0",
            None,
            &["Route: <sip:192.0.2.30;lr>"],
        );
        let (m, _) = run(&eng, &msg);
        assert_eq!(global_int(&eng, "rc"), -3);
        assert_eq!(global_int(&eng, "pre"), 1);
        assert_eq!(m.dst_uri.as_deref(), Some(&b"sip:192.0.2.30;lr"[..]));
        assert!(m.edits.is_empty());

        // Preloaded, only our Route: removed, -1.
        let msg = request(
            "INVITE sip:bob@example.com SIP/2.0",
            None,
            &["Route: <sip:10.0.0.1;lr>"],
        );
        let (m, _) = run(&eng, &msg);
        assert_eq!(global_int(&eng, "rc"), -1);
        assert_eq!(global_int(&eng, "pre"), -1);
        assert!(!assembled(&m).contains("Route:"));
    }

    #[test]
    fn ksr_record_route_variants() {
        let eng = engine(
            r#"
function ksr_request_route()
    local which = KSR.hdr.get("X-Test")
    if which == "params" then
        a = KSR.rr.add_rr_param(";before=1")
        rc = KSR.rr.record_route_params(";foo=bar")
        b = KSR.rr.add_rr_param("after=2")
    elseif which == "preset" then
        rc = KSR.rr.record_route_preset("192.0.2.50:5090;r2=on", "10.0.0.1:5060;r2=on")
    elseif which == "adv" then
        rc = KSR.rr.record_route_advertised_address("sip.example.net:5080")
    elseif which == "removed" then
        KSR.rr.record_route()
        rc = KSR.rr.remove_record_route()
    elseif which == "bad" then
        rc = KSR.rr.record_route_preset("bad host")
        b = KSR.rr.add_rr_param("x=<y>")
    end
end
"#,
        );
        let rr = |which: &str| -> (i64, String) {
            let msg = request(
                "INVITE sip:bob@example.com SIP/2.0",
                None,
                &[&format!("X-Test: {which}")],
            );
            let (m, _) = run(&eng, &msg);
            let mut out = Vec::new();
            write_record_route(eng.shared(), &m, crate::sip::Proto::Udp, &mut out);
            (global_int(&eng, "rc"), String::from_utf8(out).unwrap())
        };
        assert_eq!(
            rr("params"),
            (
                1,
                "Record-Route: <sip:10.0.0.1:5060;lr;ftag=fromtag1;before=1;foo=bar;after=2>\r\n"
                    .into()
            )
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), 1);
        assert_eq!(
            rr("preset"),
            (
                1,
                "Record-Route: <sip:192.0.2.50:5090;r2=on;lr;ftag=fromtag1>\r\n\
                 Record-Route: <sip:10.0.0.1:5060;r2=on;lr;ftag=fromtag1>\r\n"
                    .into()
            )
        );
        assert_eq!(
            rr("adv"),
            (
                1,
                "Record-Route: <sip:sip.example.net:5080;lr;ftag=fromtag1>\r\n".into()
            )
        );
        assert_eq!(rr("removed"), (1, String::new()));
        assert_eq!(rr("bad"), (-1, String::new()));
        assert_eq!(global_int(&eng, "b"), -1);
    }

    #[test]
    fn record_route_ipv6_local() {
        let eng = engine("function ksr_request_route() KSR.rr.record_route() end");
        let (mut m, _) = run(
            &eng,
            &request("INVITE sip:bob@example.com SIP/2.0", None, &[]),
        );
        m.local = "[2001:db8::1]:5070".parse().unwrap();
        let mut out = Vec::new();
        write_record_route(eng.shared(), &m, crate::sip::Proto::Udp, &mut out);
        assert_eq!(
            out,
            b"Record-Route: <sip:[2001:db8::1]:5070;lr;ftag=fromtag1>\r\n"
        );
    }
}
