//! KSR.tm / KSR.tmx: stateful relaying on the shard's transaction table
//! (`crate::txn`), with Kamailio's names and return codes; and the core's
//! stateless forwarding (`KSR.forward`, replies without a transaction).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.tm.t_relay()` | `int ()` | 1 relayed (or an ACK/CANCEL handled), 0 retransmission absorbed, -1 error (no destination, table full) |
//! | `KSR.tm.t_relay_to_udp(host, port)` / `t_relay_to_tcp(host, port)` / `t_relay_to_tls(host, port)` | `int (str, int)` | as t_relay, to host:port over that transport (TCP/TLS: -1 when `[tcp]`/`[tls]` is not configured) |
//! | `KSR.tm.t_newtran()` | `int ()` | 1 created, 0 retransmission absorbed, -1 error |
//! | `KSR.tm.t_check_trans()` | `int ()` | CANCEL: 1 when its INVITE transaction exists; ACK: 1 when it acknowledges a reply of ours (absorbed); other: 0 retransmission absorbed, 1 this message's transaction, -1 none |
//! | `KSR.tm.t_reply(code, reason)` / `KSR.tm.t_send_reply(code, reason)` | `int (int, str)` | 1 sent, -1 error (creates the transaction if needed) |
//! | `KSR.tm.t_on_reply(fn)` / `t_on_failure(fn)` / `t_on_branch(fn)` | `int (str)` | 1; the named Lua function runs as onreply / failure / branch route |
//! | `KSR.tm.t_is_set(route)` | `int (str)` | 1 when "failure_route", "branch_route" or "onreply_route" is set, else -1 |
//! | `KSR.tm.t_is_canceled()` | `int ()` | 1 when a CANCEL arrived for the transaction, else -1 |
//! | `KSR.tm.t_is_expired()` | `int ()` | 1 when the transaction is gone (expired), else -1 |
//! | `KSR.tm.t_branch_timeout()` / `t_branch_replied()` | `int ()` | failure route: 1 when the failed branch timed out / got a reply, else -1 |
//! | `KSR.tm.t_any_timeout()` / `t_any_replied()` | `int ()` | 1 when any branch timed out / got a reply, else -1 |
//! | `KSR.tm.t_set_fr(fr_inv_ms, fr_ms)` | `int (int, int)` | 1; per-transaction fr_inv / fr timers (0 keeps the default) |
//! | `KSR.tm.t_reset_fr()` | `int ()` | 1 |
//! | `KSR.tm.t_release()` | `int ()` | 1 released, -1 no transaction |
//! | `KSR.tmx.t_precheck_trans()` | `int ()` | 1 when the request belongs to a transaction already (a retransmission), -1 otherwise |
//! | `KSR.tmx.t_is_failure_route()` / `t_is_branch_route()` / `t_is_reply_route()` | `int ()` | 1 in that kind of route, else -1 |
//! | `KSR.tmx.t_reply_callid(callid, cseq, code, reason)` | `int (str, str, int, str)` | 1 replied, -1 no such transaction |
//! | `KSR.forward()` | `int ()` | 1 sent statelessly to `$du` or the R-URI, -1 error |
//! | `KSR.forward_uri(uri)` | `int (str)` | as forward, to `uri` |
//!
//! Pseudo-variables: `$T_branch_idx`, `$T_reply_code`, `$T_req(pv)`,
//! `$T_rpl(pv)` (see `pv.rs`).
//!
//! Destinations are IP literals (or `localhost`); a host name that would
//! need DNS makes the branch fail (DNS is not resolved yet).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use mlua::{Lua, Table};

use super::{ffi, BranchSpec, MsgCtx, RouteOutcome, RouteRun, Shared};
use crate::sip::{Dest, Method, Proto, SipMsg, SipUri};
use crate::txn::{self, Event, ReqMatch, RespAction};

/// What the transaction user keeps in each cell.
#[derive(Debug, Default)]
pub struct TmUser {
    pub on_failure: Option<Arc<str>>,
    pub on_reply: Option<Arc<str>>,
    pub on_branch: Option<Arc<str>>,
    /// Serial forking: the q-value groups still to try, highest q first.
    pub next_groups: Vec<Vec<BranchSpec>>,
    /// Message flags of the request (restored in the failure route).
    pub flags: u32,
    /// Branch flags of each branch sent.
    pub bflags: Vec<u32>,
    /// Where the request came from (the failure route's `$si`).
    pub src: Option<SocketAddr>,
    /// The shard whose route created the transaction.
    pub origin_shard: usize,
    /// The request route's header edits and Record-Route, kept for the
    /// branches a failure route or serial fork adds later (Kamailio keeps
    /// the request's lumps in the transaction the same way).
    pub edits: crate::sip::Edits,
    pub rr: super::rr::RrPending,
    /// The dialog `dlg_manage()` created for this INVITE.
    pub dlg: Option<super::dialog_store::DlgId>,
    /// The route's `$avp`/`$xavp` at the last relay (the failure route's;
    /// the dispatcher's failover list lives there).
    pub pv: super::pv::PvMsg,
}

use super::tm_store::CreateError;
pub use super::tm_store::{SharedTm, TmHandle, TxId};

/// Which kind of route a message runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RouteKind {
    #[default]
    Request,
    Reply,
    OnReply,
    Failure,
    Branch,
}

/// The transaction side of one message's context.
#[derive(Clone, Debug, Default)]
pub struct TmCtx {
    /// The transaction this message created or belongs to.
    pub cell: Option<TxId>,
    /// The request's match against the table, once looked up.
    pub matched: Option<ReqMatch>,
    pub on_failure: Option<Arc<str>>,
    pub on_reply: Option<Arc<str>>,
    pub on_branch: Option<Arc<str>>,
    /// `t_set_fr`: (fr_inv, fr) in ms, 0 = default.
    pub fr: Option<(u64, u64)>,
    pub kind: RouteKind,
    /// `$T_branch_idx`.
    pub branch_idx: Option<u8>,
    /// `$T_reply_code`.
    pub reply_code: u16,
}

/// Milliseconds on the transaction store's clock.
pub fn now_ms(s: &Shared) -> u64 {
    s.tm.now_ms()
}

fn ret(b: bool) -> i32 {
    if b {
        1
    } else {
        -1
    }
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let tm = lua.create_table()?;
    let s = shared.clone();
    tm.set(
        "t_relay",
        lua.create_function(move |lua, ()| Ok(t_relay(lua, &s, None)))?,
    )?;
    for (name, proto) in [
        ("t_relay_to_udp", Proto::Udp),
        ("t_relay_to_tcp", Proto::Tcp),
        ("t_relay_to_tls", Proto::Tls),
    ] {
        let s = shared.clone();
        tm.set(
            name,
            lua.create_function(move |lua, (host, port): (String, i64)| {
                let dst = u16::try_from(port)
                    .ok()
                    .and_then(|p| resolve_host(host.as_bytes(), Some(p)));
                match dst {
                    Some(d) => Ok(t_relay(lua, &s, Some(Dest::new(d, proto)))),
                    None => Ok(-1),
                }
            })?,
        )?;
    }
    let s = shared.clone();
    tm.set(
        "t_newtran",
        lua.create_function(move |_, ()| Ok(t_newtran(&s)))?,
    )?;
    ffi::fast!(lua, &tm, "t_check_trans", shared, [], |s, _| {
        Ok(t_check_trans(s).into())
    })?;
    for name in ["t_reply", "t_send_reply"] {
        let s = shared.clone();
        tm.set(
            name,
            lua.create_function(move |_, (code, reason): (i64, mlua::String)| {
                Ok(t_reply(&s, code, &reason.as_bytes()))
            })?,
        )?;
    }
    for (name, which) in [("t_on_reply", 0), ("t_on_failure", 1), ("t_on_branch", 2)] {
        let s = shared.clone();
        tm.set(
            name,
            lua.create_function(move |_, f: String| t_on(&s, which, &f))?,
        )?;
    }
    let s = shared.clone();
    tm.set(
        "t_is_set",
        lua.create_function(move |_, what: String| {
            let set = s.with_msg(|m| {
                let (f, b, r) = (
                    m.tm.on_failure.is_some(),
                    m.tm.on_branch.is_some(),
                    m.tm.on_reply.is_some(),
                );
                let cell = m.tm.cell;
                (f, b, r, cell)
            })?;
            let (mut f, mut b, mut r, cell) = set;
            if let Some(id) = cell {
                if let Some((cf, cb, cr)) = s.tm.get_map(id, |c| {
                    (
                        c.user.on_failure.is_some(),
                        c.user.on_branch.is_some(),
                        c.user.on_reply.is_some(),
                    )
                }) {
                    f |= cf;
                    b |= cb;
                    r |= cr;
                }
            }
            Ok(ret(match what.as_str() {
                "failure_route" => f,
                "branch_route" => b,
                "onreply_route" => r,
                _ => false,
            }))
        })?,
    )?;
    let s = shared.clone();
    tm.set(
        "t_is_canceled",
        lua.create_function(move |_, ()| Ok(t_is_canceled(&s)))?,
    )?;
    let s = shared.clone();
    tm.set(
        "t_is_expired",
        lua.create_function(move |_, ()| {
            let cell = s.with_msg(|m| m.tm.cell)?;
            Ok(ret(cell.is_some_and(|id| !s.tm.exists(id))))
        })?,
    )?;
    for (name, timeout) in [("t_branch_timeout", true), ("t_branch_replied", false)] {
        let s = shared.clone();
        tm.set(
            name,
            lua.create_function(move |_, ()| {
                let (cell, idx) = s.with_msg(|m| (m.tm.cell, m.tm.branch_idx))?;
                let (Some(id), Some(b)) = (cell, idx) else {
                    return Ok(-1);
                };
                let v = s.tm.get_map(id, |c| {
                    c.branches
                        .get(b as usize)
                        .map(|br| if timeout { br.timed_out } else { br.replied })
                });
                Ok(ret(v.flatten().unwrap_or(false)))
            })?,
        )?;
    }
    for (name, timeout) in [("t_any_timeout", true), ("t_any_replied", false)] {
        let s = shared.clone();
        tm.set(
            name,
            lua.create_function(move |_, ()| {
                Ok(ret(with_cell(&s, |c| {
                    c.branches
                        .iter()
                        .any(|b| if timeout { b.timed_out } else { b.replied })
                })
                .unwrap_or(false)))
            })?,
        )?;
    }
    let s = shared.clone();
    tm.set(
        "t_set_fr",
        lua.create_function(move |_, (inv, fr): (i64, Option<i64>)| {
            let inv = inv.max(0) as u64;
            let fr = fr.unwrap_or(0).max(0) as u64;
            let cell = s.with_msg(|m| {
                m.tm.fr = Some((inv, fr));
                m.tm.cell
            })?;
            if let Some(id) = cell {
                apply_fr(&s, id, Some((inv, fr)));
            }
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    tm.set(
        "t_reset_fr",
        lua.create_function(move |_, ()| {
            let cell = s.with_msg(|m| {
                m.tm.fr = None;
                m.tm.cell
            })?;
            if let Some(id) = cell {
                apply_fr(&s, id, None);
            }
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    tm.set(
        "t_release",
        lua.create_function(move |_, ()| {
            let cell = s.with_msg(|m| m.tm.cell.take())?;
            match cell {
                Some(id) if s.tm.exists(id) => {
                    s.tm.release(id);
                    Ok(1)
                }
                _ => Ok(-1),
            }
        })?,
    )?;
    ksr.set("tm", tm)?;

    let tmx = lua.create_table()?;
    ffi::fast!(lua, &tmx, "t_precheck_trans", shared, [], |s, _| {
        Ok(t_precheck_trans(s)?.into())
    })?;
    for (name, kind) in [
        ("t_is_failure_route", RouteKind::Failure),
        ("t_is_branch_route", RouteKind::Branch),
        ("t_is_reply_route", RouteKind::OnReply),
    ] {
        let s = shared.clone();
        tmx.set(
            name,
            lua.create_function(move |_, ()| Ok(ret(s.with_msg(|m| m.tm.kind == kind)?)))?,
        )?;
    }
    let s = shared.clone();
    tmx.set(
        "t_reply_callid",
        lua.create_function(
            move |_, (callid, cseq, code, reason): (String, String, i64, mlua::String)| {
                Ok(t_reply_callid(&s, &callid, &cseq, code, &reason.as_bytes()))
            },
        )?,
    )?;
    ksr.set("tmx", tmx)?;

    let s = shared.clone();
    ksr.set(
        "forward",
        lua.create_function(move |_, ()| Ok(forward_stateless(&s, None)))?,
    )?;
    let s = shared.clone();
    ksr.set(
        "forward_uri",
        lua.create_function(move |_, uri: mlua::String| {
            Ok(forward_stateless(&s, Some(uri.as_bytes().to_vec())))
        })?,
    )?;
    Ok(())
}

fn with_cell<R>(s: &Shared, f: impl FnOnce(&txn::Cell<TmUser>) -> R) -> Option<R> {
    let id = s.with_msg(|m| m.tm.cell).ok()??;
    s.tm.get_map(id, f)
}

fn apply_fr(s: &Shared, id: TxId, fr: Option<(u64, u64)>) {
    let (def_inv, def_fr) = (s.tm.config().fr_inv_timer_ms, s.tm.config().fr_timer_ms);
    s.tm.get_mut_map(id, |c| {
        let (inv, fr) = fr.unwrap_or((0, 0));
        c.fr_inv_timer_ms = if inv == 0 { def_inv } else { inv };
        c.fr_timer_ms = if fr == 0 { def_fr } else { fr };
    });
}

/// The request's match against the table, looked up once per message
/// (a second lookup would resend the last reply twice).
fn lookup(s: &Shared, m: &mut MsgCtx) -> ReqMatch {
    if let Some(r) = m.tm.matched {
        return r;
    }
    if m.tm.kind != RouteKind::Request {
        return ReqMatch::None;
    }
    let r = s.tm.on_request(&m.msg(), now_ms(s));
    m.tm.matched = Some(r);
    r
}

/// `KSR.tm.t_newtran()`: 1 created (or had one), 0 a retransmission
/// (absorbed), -1 error.
pub(super) fn t_newtran(s: &Shared) -> i32 {
    match ensure_cell(s) {
        Ok(Some(_)) => 1,
        Ok(None) => 0,
        Err(()) => -1,
    }
}

/// `KSR.tm.t_on_reply` (`which` 0), `t_on_failure` (1), `t_on_branch` (2):
/// the route to run by name, "" for none.
pub(super) fn t_on(s: &Shared, which: u8, name: &str) -> mlua::Result<i32> {
    let f: Option<Arc<str>> = (!name.is_empty()).then(|| Arc::from(name));
    s.with_msg(|m| match which {
        0 => m.tm.on_reply = f,
        1 => m.tm.on_failure = f,
        _ => m.tm.on_branch = f,
    })?;
    Ok(1)
}

/// `KSR.tm.t_is_canceled()`.
pub(super) fn t_is_canceled(s: &Shared) -> i32 {
    ret(with_cell(s, |c| c.canceled).unwrap_or(false))
}

/// `KSR.tmx.t_precheck_trans()`: 1 for a retransmission (or an ACK) of a
/// transaction here.
pub(super) fn t_precheck_trans(s: &Shared) -> mlua::Result<i32> {
    let m = s.with_msg(|m| lookup(s, m))?;
    Ok(ret(matches!(
        m,
        ReqMatch::Retransmission(_) | ReqMatch::Ack(_)
    )))
}

/// The message's transaction, created if needed. `Ok(None)`: the request
/// is a retransmission (absorbed); `Err`: the table is full or the request
/// cannot have one.
fn ensure_cell(s: &Shared) -> Result<Option<TxId>, ()> {
    s.with_msg(|m| ensure_cell_in(s, m)).unwrap_or(Err(()))
}

fn ensure_cell_in(s: &Shared, m: &mut MsgCtx) -> Result<Option<TxId>, ()> {
    if let Some(id) = m.tm.cell {
        if s.tm.exists(id) {
            return Ok(Some(id));
        }
        return Err(());
    }
    if !m.msg().is_request() || m.msg().method() == Some(Method::Ack) {
        return Err(());
    }
    match lookup(s, m) {
        ReqMatch::None => {}
        _ => return Ok(None),
    }
    let Some(dst) = super::sl::reply_dst_of(&m.msg(), m.src, m.force_rport) else {
        return Err(());
    };
    let now = now_ms(s);
    let user = TmUser {
        flags: m.flags,
        src: Some(m.src),
        origin_shard: s.shard_id,
        dlg: m.dlg.filter(|_| m.dlg_new),
        ..TmUser::default()
    };
    let invite = m.msg().method() == Some(Method::Invite);
    let created = s.tm.create(&m.msg(), m.reply_dest(dst), now, user);
    let id = match created {
        Ok(id) => id,
        Err(CreateError::Exists) => {
            // Another shard read a retransmission first and created it.
            m.tm.matched = Some(ReqMatch::None);
            return Ok(None);
        }
        Err(CreateError::Full) => {
            s.counters.incr(crate::stats::Counter::TmFull);
            return Err(());
        }
    };
    m.tm.cell = Some(id);
    if let Some(d) = m.dlg.filter(|_| m.dlg_new) {
        super::dialog::set_tx(s, d, id);
    }
    if m.tm.fr.is_some() {
        apply_fr(s, id, m.tm.fr);
    }
    s.counters.incr(crate::stats::Counter::TmCreated);
    if invite {
        // §16.2 / §17.2.1: 100 Trying at once, absorbing retransmissions.
        let mut out = Vec::new();
        if super::sl::build_local_reply(
            s,
            &m.msg(),
            m.src,
            m.force_rport,
            100,
            b"Trying",
            &[],
            &mut out,
        )
        .is_some()
        {
            s.tm.reply(id, 100, out, now);
        }
    }
    Ok(Some(id))
}

pub(super) fn t_check_trans(s: &Shared) -> i32 {
    s.with_msg(|m| {
        let msg = m.msg();
        match msg.method() {
            Some(Method::Cancel) => {
                let found = s.tm.find_invite_for_cancel(&msg);
                ret(found.is_some())
            }
            Some(Method::Ack) => ret(matches!(lookup(s, m), ReqMatch::Ack(_))),
            _ => {
                if m.tm.cell.is_some() {
                    return 1;
                }
                match lookup(s, m) {
                    ReqMatch::None => -1,
                    _ => 0,
                }
            }
        }
    })
    .unwrap_or(-1)
}

pub(super) fn t_reply(s: &Shared, code: i64, reason: &[u8]) -> i32 {
    let Ok(code) = u16::try_from(code) else {
        return -1;
    };
    if !(100..=699).contains(&code) {
        return -1;
    }
    let id = match ensure_cell(s) {
        Ok(Some(id)) => id,
        Ok(None) => return 0,
        Err(()) => return -1,
    };
    let r = s.with_msg(|m| {
        let mut out = Vec::new();
        let hdrs = std::mem::take(&mut m.reply_headers);
        let ok = super::sl::build_local_reply_body(
            s,
            &m.msg(),
            m.src,
            m.force_rport,
            code,
            reason,
            &hdrs,
            &m.reply_body,
            &mut out,
        )
        .is_some();
        m.reply_headers = hdrs;
        if ok {
            m.replied = Some(code);
        }
        ok.then_some(out)
    });
    match r {
        Ok(Some(bytes)) => ret(s.tm.reply(id, code, bytes, now_ms(s))),
        _ => -1,
    }
}

fn t_reply_callid(s: &Shared, callid: &str, cseq: &str, code: i64, reason: &[u8]) -> i32 {
    let Ok(code) = u16::try_from(code) else {
        return -1;
    };
    let num: u32 = cseq.trim().parse().unwrap_or(u32::MAX);
    let found = {
        s.tm.find(|c| {
            let mut p = crate::sip::Parsed::default();
            if crate::sip::parse(
                &c.req,
                crate::sip::Framing::Datagram,
                &crate::sip::Limits::default(),
                &mut p,
            )
            .is_err()
            {
                return false;
            }
            let msg = SipMsg::new(&c.req, &p);
            msg.call_id() == Some(callid.as_bytes())
                && msg.cseq().is_ok_and(|c| c.num == num)
                && !c.is_final()
        })
    };
    match found {
        Some(id) => ret(local_reply_on_cell(s, id, code, reason)),
        None => -1,
    }
}

/// Sends a locally built reply on a cell, from its stored request.
pub(crate) fn local_reply_on_cell(s: &Shared, id: TxId, code: u16, reason: &[u8]) -> bool {
    let Some((req, src)) = s.tm.get_map(id, |c| {
        (c.req.clone(), c.user.src.unwrap_or(c.reply_dst.addr))
    }) else {
        return false;
    };
    let bytes = {
        let mut p = crate::sip::Parsed::default();
        if crate::sip::parse(
            &req,
            crate::sip::Framing::Datagram,
            &crate::sip::Limits::default(),
            &mut p,
        )
        .is_err()
        {
            return false;
        }
        let msg = SipMsg::new(&req, &p);
        let mut out = Vec::new();
        if super::sl::build_local_reply(s, &msg, src, false, code, reason, &[], &mut out).is_none()
        {
            return false;
        }
        out
    };
    s.tm.reply(id, code, bytes, now_ms(s))
}

/// One destination to relay to.
#[derive(Clone, Debug)]
struct Target {
    spec: BranchSpec,
}

/// `t_relay()`: relays the current request statefully (ACK and CANCEL as
/// Kamailio does: an ACK of ours is absorbed, another goes statelessly; a
/// CANCEL with its INVITE here is answered 200 and cancels its branches).
pub(super) fn t_relay(lua: &Lua, s: &Shared, forced: Option<Dest>) -> i32 {
    let Ok((method, kind)) = s.with_msg(|m| (m.msg().method(), m.tm.kind)) else {
        return -1;
    };
    if kind == RouteKind::Request {
        match method {
            Some(Method::Ack) => {
                let absorbed = s
                    .with_msg(|m| matches!(lookup(s, m), ReqMatch::Ack(_)))
                    .unwrap_or(false);
                if absorbed {
                    return 1;
                }
                return forward_stateless_to(s, None, forced);
            }
            Some(Method::Cancel) => {
                let inv = s
                    .with_msg(|m| s.tm.find_invite_for_cancel(&m.msg()))
                    .ok()
                    .flatten();
                let Some(inv) = inv else {
                    return forward_stateless_to(s, None, forced);
                };
                match ensure_cell(s) {
                    Ok(Some(_)) => {}
                    Ok(None) => return 0,
                    Err(()) => return -1,
                }
                t_reply(s, 200, b"canceling");
                s.tm.cancel(inv, now_ms(s));
                return 1;
            }
            _ => {}
        }
    }
    let id = match ensure_cell(s) {
        Ok(Some(id)) => id,
        Ok(None) => return 0,
        Err(()) => {
            let _ = s.with_msg(|m| m.last_error = Some((500, "Server Internal Error")));
            return -1;
        }
    };
    // Destinations: the R-URI branch, then appended ones; grouped by q.
    let Ok((targets, routes)) = s.with_msg(|m| {
        let mut v = Vec::with_capacity(1 + m.branches.len());
        if kind != RouteKind::Failure || m.new_ruri.is_some() || m.dst_uri.is_some() {
            v.push(Target {
                spec: BranchSpec {
                    uri: m.ruri().unwrap_or(b"").to_vec(),
                    dst_uri: m.dst_uri.clone(),
                    path: m.path.clone(),
                    q: m.ruri_q,
                    bflags: m.bflags,
                },
            });
        }
        for b in m.branches.drain(..) {
            v.push(Target { spec: b });
        }
        let routes = (
            m.tm.on_failure.take(),
            m.tm.on_reply.take(),
            m.tm.on_branch.take(),
        );
        (v, routes)
    }) else {
        return -1;
    };
    let kept = if kind == RouteKind::Request {
        s.with_msg(|m| (m.edits.clone(), m.rr.clone())).ok()
    } else {
        None
    };
    let pv = s.with_msg(|m| m.pv.clone()).unwrap_or_default();
    s.tm.get_mut_map(id, |c| {
        if let Some((edits, rr)) = kept {
            c.user.edits = edits;
            c.user.rr = rr;
        }
        c.user.pv = pv;
        c.user.on_failure = routes.0;
        if routes.1.is_some() || kind != RouteKind::Failure {
            c.user.on_reply = routes.1;
        }
        c.user.on_branch = routes.2;
    });
    let mut groups = group_by_q(targets);
    if groups.is_empty() {
        return -1;
    }
    let first = groups.remove(0);
    s.tm.get_mut_map(id, |c| c.user.next_groups = groups);
    let sent = relay_group(lua, s, id, first, forced);
    if sent == 0 {
        let _ = s.with_msg(|m| m.last_error = Some((478, "Unresolvable destination")));
        // Nothing went out: leave no transaction behind a stateless error
        // reply (unless it has other branches, e.g. in a failure route).
        let empty = s.tm.get_map(id, |c| c.branches.is_empty()).unwrap_or(false);
        if empty && kind == RouteKind::Request {
            s.tm.release(id);
            let _ = s.with_msg(|m| m.tm.cell = None);
        }
        return -1;
    }
    1
}

/// Parallel within a q-value, serial across (highest first; unspecified
/// q counts as 1.0).
fn group_by_q(mut targets: Vec<Target>) -> Vec<Vec<BranchSpec>> {
    let q = |t: &Target| t.spec.q.unwrap_or(1000);
    // Stable: the R-URI branch leads its group.
    targets.sort_by_key(|t| std::cmp::Reverse(q(t)));
    let mut groups: Vec<Vec<BranchSpec>> = Vec::new();
    let mut last = None;
    for t in targets {
        let tq = q(&t);
        if last != Some(tq) {
            groups.push(Vec::new());
            last = Some(tq);
        }
        if let Some(g) = groups.last_mut() {
            g.push(t.spec);
        }
    }
    groups
}

/// Sends one branch per target (running the branch route for each);
/// returns how many went out.
fn relay_group(
    lua: &Lua,
    s: &Shared,
    id: TxId,
    group: Vec<BranchSpec>,
    forced: Option<Dest>,
) -> usize {
    let mut sent = 0;
    let on_branch = s.tm.get_map(id, |c| c.user.on_branch.clone()).flatten();
    for spec in group {
        let Some((r, branch)) = s.tm.next_branch(id) else {
            break;
        };
        let built = match &on_branch {
            Some(name) => build_with_branch_route(lua, s, name, &spec, r.branch, &branch, forced),
            // No branch route: the branch as specified, nothing to save.
            None => s
                .with_msg(|m| {
                    let target = spec.dst_uri.as_deref().unwrap_or(&spec.uri);
                    let dst = forced.or_else(|| resolve_dest(target, m.force_proto));
                    let dst = dst.filter(|d| may_send(s, m, d));
                    let proto = dst.map_or(Proto::Udp, |d| d.proto);
                    let mut out = Vec::with_capacity(m.len + 200);
                    write_request(
                        s,
                        m,
                        &spec.uri,
                        spec.path.as_deref(),
                        &branch,
                        proto,
                        &mut out,
                    );
                    (dst, out, spec.bflags)
                })
                .ok(),
        };
        let Some((dst, out, bflags)) = built else {
            continue; // dropped by the branch route
        };
        let Some(dst) = dst else {
            s.counters.incr(crate::stats::Counter::TmUnresolvable);
            continue;
        };
        let now = now_ms(s);
        if s.tm.add_branch(id, out, dst, now, bflags).is_ok() {
            sent += 1;
            s.counters.incr(crate::stats::Counter::TmBranches);
        }
    }
    sent
}

/// A branch route runs to its end at once (it may not wait: the branch is
/// being built). The native route sets none (the default script has no
/// branch route).
fn call_branch_route(f: &super::RouteFn) -> mlua::Result<()> {
    match f {
        super::RouteFn::Lua { f, .. } => f.call::<()>(()),
        super::RouteFn::Native(_) => Err(mlua::Error::RuntimeError(
            "the native route has no branch routes".into(),
        )),
    }
}

/// Runs the branch route `name` for one branch: it sees (and may change)
/// the branch's R-URI, `$du`, branch flags and headers; the changes stay
/// with the branch and the request route's view is restored after.
/// `None` when the branch route dropped the branch.
fn build_with_branch_route(
    lua: &Lua,
    s: &Shared,
    name: &Arc<str>,
    spec: &BranchSpec,
    idx: u8,
    branch: &[u8],
    forced: Option<Dest>,
) -> Option<(Option<Dest>, Vec<u8>, u32)> {
    let saved = s
        .with_msg(|m| {
            let saved = (
                m.new_ruri.replace(spec.uri.clone()),
                std::mem::replace(&mut m.dst_uri, spec.dst_uri.clone()),
                m.edits.clone(),
                m.tm.kind,
                std::mem::replace(&mut m.bflags, spec.bflags),
                m.dropped,
            );
            m.tm.branch_idx = Some(idx);
            m.tm.kind = RouteKind::Branch;
            saved
        })
        .ok()?;
    let f = lua
        .app_data_ref::<Rc<super::NamedRoutes>>()
        .and_then(|r| r.get(lua, name));
    if let Some(f) = f {
        let t0 = std::time::Instant::now();
        if let Err(e) = call_branch_route(&f) {
            tracing::error!(
                shard = s.shard_id,
                "branch route {name}: {}",
                super::format_lua_error(&e)
            );
        }
        s.record_route_time(name, t0.elapsed());
    }
    s.with_msg(|m| {
        let dropped = m.dropped;
        let dst = forced.or_else(|| {
            let target = m
                .dst_uri
                .as_deref()
                .or(m.new_ruri.as_deref())
                .unwrap_or(b"");
            resolve_dest(target, m.force_proto)
        });
        let dst = dst.filter(|d| may_send(s, m, d));
        let proto = dst.map_or(Proto::Udp, |d| d.proto);
        let uri = m.new_ruri.clone().unwrap_or_default();
        let mut out = Vec::with_capacity(m.len + 200);
        write_request(s, m, &uri, spec.path.as_deref(), branch, proto, &mut out);
        let bflags = m.bflags;
        // Restore the request route's view.
        m.new_ruri = saved.0;
        m.dst_uri = saved.1;
        m.edits = saved.2;
        m.tm.kind = saved.3;
        m.bflags = saved.4;
        m.dropped = saved.5;
        m.tm.branch_idx = None;
        (!dropped).then_some((dst, out, bflags))
    })
    .ok()
    .flatten()
}

/// The request as relayed: `uri` as R-URI, our Via on top, the Record-Route
/// the route asked for, the branch's Path as Route headers, the route's
/// header edits.
fn write_request(
    s: &Shared,
    m: &MsgCtx,
    uri: &[u8],
    path: Option<&[u8]>,
    branch: &[u8],
    proto: Proto,
    out: &mut Vec<u8>,
) {
    let mut e = m.edits.clone();
    if !uri.is_empty() {
        e.set_ruri(uri);
    }
    mark_client_via(m, &mut e);
    let mut via = Vec::with_capacity(64);
    via.extend_from_slice(b"SIP/2.0/");
    via.extend_from_slice(proto.via_token().as_bytes());
    via.push(b' ');
    push_sent_by_for(&mut via, s, m, proto);
    via.extend_from_slice(b";branch=");
    via.extend_from_slice(branch);
    e.prepend_via(&via);
    let mut rr = Vec::new();
    super::rr::write_record_route(s, m, proto, &mut rr);
    for line in rr.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            e.insert_header_first(line);
        }
    }
    if let Some(p) = path.filter(|p| !p.is_empty()) {
        let mut line = b"Route: ".to_vec();
        line.extend_from_slice(p);
        e.insert_header_first(&line);
    }
    e.assemble(&m.buf[..m.len], &m.parsed, out);
}

/// RFC 3261 §18.2.1 / RFC 3581 on the client's Via of a relayed request:
/// `received=<source IP>` when the sent-by host is not the source address
/// or the client asked for `rport`; `rport=<source port>` when it asked
/// for it or the script called `KSR.force_rport()` (as Kamailio). Replies
/// forwarded statelessly then find their way back through a NAT.
fn mark_client_via(m: &MsgCtx, e: &mut crate::sip::Edits) {
    let msg = m.msg();
    let Ok(v) = msg.top_via() else { return };
    let asked = v.rport().is_some();
    let rport = (asked || m.force_rport).then_some(m.src.port());
    let host = std::str::from_utf8(v.host).unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let differs = host.parse::<IpAddr>().ok() != Some(m.src.ip());
    if !(differs || rport.is_some()) {
        return;
    }
    let ip = m.src.ip().to_string();
    e.set_top_via_received(Some(ip.as_bytes()), rport);
}

/// Whether a request may go to `d`: with `set_forward_no_connect()` only
/// on a connection that exists (Kamailio core semantics).
fn may_send(s: &Shared, m: &MsgCtx, d: &Dest) -> bool {
    if !d.proto.is_stream() {
        return true;
    }
    match s.services.tables.conns.get() {
        Some(c) => !m.forward_no_connect || c.exists(d),
        None => false, // TCP/TLS not configured
    }
}

/// Our address on transport `proto`: the receiving address when the
/// message came on it, else that transport's listener (its port, with the
/// receiving IP when the listener is a wildcard).
pub(crate) fn local_for(s: &Shared, m: &MsgCtx, proto: Proto) -> SocketAddr {
    if proto == m.proto {
        return m.local;
    }
    let addr = match proto {
        Proto::Udp => Some(s.local_addr),
        _ => s
            .services
            .tables
            .conns
            .get()
            .and_then(|c| c.local_of(proto)),
    };
    match addr {
        Some(a) if a.ip().is_unspecified() => SocketAddr::new(m.local.ip(), a.port()),
        Some(a) => a,
        None => m.local,
    }
}

/// Our `host:port` in a request relayed over `proto` (see [`local_for`]),
/// or what `set_advertised_address` / `set_advertised_port` set.
pub(crate) fn push_sent_by_for(out: &mut Vec<u8>, s: &Shared, m: &MsgCtx, proto: Proto) {
    if m.adv_addr.is_none() && m.adv_port.is_none() {
        push_host_port(out, local_for(s, m, proto));
        return;
    }
    push_sent_by(out, m);
}

/// Our `host:port` in a relayed request's Via: the receiving address, or
/// what `set_advertised_address` / `set_advertised_port` set for it.
pub(crate) fn push_sent_by(out: &mut Vec<u8>, m: &MsgCtx) {
    if m.adv_addr.is_none() && m.adv_port.is_none() {
        push_host_port(out, m.local);
        return;
    }
    match &m.adv_addr {
        Some(h) => out.extend_from_slice(h),
        None => match m.local.ip() {
            IpAddr::V4(v4) => out.extend_from_slice(v4.to_string().as_bytes()),
            IpAddr::V6(v6) => out.extend_from_slice(format!("[{v6}]").as_bytes()),
        },
    }
    out.push(b':');
    out.extend_from_slice(m.adv_port.unwrap_or(m.local.port()).to_string().as_bytes());
}

pub(crate) fn push_host_port(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(v4) => out.extend_from_slice(v4.to_string().as_bytes()),
        IpAddr::V6(v6) => {
            out.push(b'[');
            out.extend_from_slice(v6.to_string().as_bytes());
            out.push(b']');
        }
    }
    out.push(b':');
    out.extend_from_slice(a.port().to_string().as_bytes());
}

/// A SIP URI's address and transport (`transport=`, `sips:`; `force`: the
/// transport of a socket the script forced); the host must be an IP
/// literal (or `localhost`). An unknown transport is unresolvable.
pub(crate) fn resolve_dest(uri: &[u8], force: Option<Proto>) -> Option<Dest> {
    let u = SipUri::parse(uri).ok()?;
    let proto = match force {
        Some(p) => p,
        None => Proto::of_uri(&u)?,
    };
    let addr = resolve_host(u.host, Some(u.port.unwrap_or(proto.default_port())))?;
    Some(Dest::new(addr, proto))
}

/// A SIP URI's address: its host must be an IP literal (or `localhost`).
pub(crate) fn resolve_uri(uri: &[u8]) -> Option<SocketAddr> {
    let u = SipUri::parse(uri).ok()?;
    let port = u.port.or(if u.scheme == crate::sip::Scheme::Sips {
        Some(5061)
    } else {
        None
    });
    resolve_host(u.host, port)
}

pub(crate) fn resolve_host(host: &[u8], port: Option<u16>) -> Option<SocketAddr> {
    let port = port.unwrap_or(5060);
    let h = std::str::from_utf8(host).ok()?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let ip: IpAddr = h.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// `KSR.forward()`: the request, statelessly, to `uri` / `$du` / the R-URI.
fn forward_stateless(s: &Shared, uri: Option<Vec<u8>>) -> i32 {
    forward_stateless_to(s, uri, None)
}

fn forward_stateless_to(s: &Shared, uri: Option<Vec<u8>>, forced: Option<Dest>) -> i32 {
    s.with_msg(|m| {
        let msg = m.msg();
        if !msg.is_request() {
            return -1;
        }
        let target = match &uri {
            Some(u) => u.clone(),
            None => m
                .dst_uri
                .clone()
                .or_else(|| m.ruri().map(<[u8]>::to_vec))
                .unwrap_or_default(),
        };
        let Some(dst) = forced
            .or_else(|| resolve_dest(&target, m.force_proto))
            .filter(|d| may_send(s, m, d))
        else {
            return -1;
        };
        // A stateless branch: the same for a retransmission (RFC 3261
        // §16.11), derived from the received top Via branch.
        let mut branch = Vec::with_capacity(40);
        crate::txn::build::write_branch(
            &mut branch,
            s.shard_id,
            0,
            crate::txn::BranchRef {
                slot: u32::MAX,
                gen: stateless_hash(&msg),
                branch: 0,
            },
        );
        let ruri = m.ruri().unwrap_or(b"").to_vec();
        let mut out = Vec::with_capacity(m.len + 200);
        write_request(
            s,
            m,
            &ruri,
            m.path.clone().as_deref(),
            &branch,
            dst.proto,
            &mut out,
        );
        m.push_out(&out, dst);
        s.counters.incr(crate::stats::Counter::FwdRequests);
        1
    })
    .unwrap_or(-1)
}

fn stateless_hash(msg: &SipMsg<'_>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in [
        msg.top_via().ok().and_then(|v| v.branch()).unwrap_or(b""),
        msg.call_id().unwrap_or(b""),
        msg.method_bytes(),
    ] {
        for &b in part {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// A reply no transaction claims: when its top Via is ours, strip it and
/// send the reply to the next Via (RFC 3261 §18.2.2); else drop it.
pub fn forward_reply_stateless(s: &Shared, m: &mut MsgCtx) -> bool {
    let msg = m.msg();
    let Ok(top) = msg.top_via() else { return false };
    let ours = resolve_host(top.host, top.port).is_some_and(|a| a == m.local)
        || s.myself.matches(top.host, top.port);
    if !ours {
        return false;
    }
    let Some(next) = msg.vias().nth(1).and_then(|v| v.ok()) else {
        return false;
    };
    let host = next.received().unwrap_or(next.host);
    let port = match next.rport() {
        Some(Some(p)) => Some(p),
        _ => next.port,
    };
    let Some(addr) = resolve_host(host, port) else {
        return false;
    };
    let dst = Dest::new(
        addr,
        Proto::from_token(next.transport).unwrap_or(Proto::Udp),
    );
    // the reply route's header edits (KSR.hdr.*) go out with it
    let mut e = std::mem::take(&mut m.edits);
    e.remove_top_via();
    let mut out = Vec::with_capacity(m.len);
    e.assemble(&m.buf[..m.len], &m.parsed, &mut out);
    m.edits = e;
    m.push_out(&out, dst);
    s.counters.incr(crate::stats::Counter::FwdReplies);
    true
}

/// The reply with the route's header edits applied, re-parsed; `None`
/// without edits (or, defensively, when the edited bytes do not parse).
fn edited_reply(m: &MsgCtx) -> Option<(Vec<u8>, crate::sip::Parsed)> {
    if m.edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(m.len + 64);
    m.edits.assemble(&m.buf[..m.len], &m.parsed, &mut out);
    let mut p = crate::sip::Parsed::default();
    match crate::sip::parse(
        &out,
        crate::sip::Framing::Datagram,
        &crate::sip::Limits::default(),
        &mut p,
    ) {
        Ok(crate::sip::Status::Complete(_)) => Some((out, p)),
        _ => None,
    }
}

/// Runs a reply through its transaction: onreply route, §16.7, failure
/// route. Returns the context (for the shard to send and recycle).
pub(super) async fn reply_flow(
    s: Rc<Shared>,
    lua: Lua,
    routes: Rc<super::NamedRoutes>,
    core_route: Option<super::RouteFn>,
    mut ctx: Box<MsgCtx>,
) -> (Box<MsgCtx>, RouteOutcome) {
    ctx.tm.kind = RouteKind::Reply;
    if let Some(f) = core_route {
        let (c, outcome) = RouteRun::new(s.clone(), ctx, &f, &lua).await;
        ctx = c;
        if outcome != RouteOutcome::Done {
            return (ctx, outcome);
        }
    }
    let found = s.tm.match_response(&ctx.msg());
    let Some((id, b, is_cancel)) = found else {
        if !super::dialog::absorb_bye_reply(&s, &ctx) {
            forward_reply_stateless(&s, &mut ctx);
        }
        return (ctx, RouteOutcome::Done);
    };
    let code = ctx.msg().status().unwrap_or(0);
    let Some((on_reply, origin, dlg)) = s.tm.get_map(id, |c| {
        (c.user.on_reply.clone(), c.user.origin_shard, c.user.dlg)
    }) else {
        return (ctx, RouteOutcome::Done);
    };
    if let (Some(d), false) = (dlg, is_cancel) {
        ctx.dlg = Some(d);
        if code < 300 {
            super::dialog::on_reply(&s, d, &ctx);
        }
    }
    if origin != s.shard_id {
        s.counters.incr(crate::stats::Counter::TmForeignReplies);
    }
    if let (false, Some(name)) = (is_cancel, on_reply) {
        if let Some(f) = routes.get(&lua, &name) {
            ctx.tm.cell = Some(id);
            ctx.tm.kind = RouteKind::OnReply;
            ctx.tm.branch_idx = Some(b);
            ctx.tm.reply_code = code;
            let t0 = std::time::Instant::now();
            let (c, outcome) = RouteRun::new(s.clone(), ctx, &f, &lua).await;
            ctx = c;
            s.record_route_time(&name, t0.elapsed());
            if outcome == RouteOutcome::Drop && code < 200 {
                return (ctx, RouteOutcome::Done);
            }
        }
    }
    let now = now_ms(&s);
    // Header edits of the reply / onreply route (e.g. nathelper's
    // set_contact_alias) go upstream with the reply.
    let edited = edited_reply(&ctx);
    let action = match &edited {
        Some((bytes, p)) => {
            s.tm.on_response(id, b, is_cancel, &SipMsg::new(bytes, p), now)
        }
        None => s.tm.on_response(id, b, is_cancel, &ctx.msg(), now),
    };
    match action {
        RespAction::Absorbed => {}
        // Sent upstream already, in the same locked step.
        RespAction::Forward(_) => {
            if let (Some(d), false, 300..) = (dlg, is_cancel, code) {
                super::dialog::on_reply(&s, d, &ctx);
            }
        }
        RespAction::Completed => completed_flow(s.clone(), lua, routes, id).await,
    }
    (ctx, RouteOutcome::Done)
}

/// Every branch failed: the next q group, or the failure route, or the best
/// reply upstream (§16.7 step 6; a 503 goes up as 500).
pub(super) async fn completed_flow(
    s: Rc<Shared>,
    lua: Lua,
    routes: Rc<super::NamedRoutes>,
    id: TxId,
) {
    let best = s.tm.best(id);
    let taken = s.tm.get_mut_map(id, |c| {
        let six = best.is_some_and(|(_, code)| code >= 600);
        let group = if !c.canceled && !six && !c.user.next_groups.is_empty() {
            Some(c.user.next_groups.remove(0))
        } else {
            None
        };
        let on_failure = if group.is_none() {
            c.user.on_failure.take()
        } else {
            None
        };
        (
            group,
            on_failure,
            c.req.clone(),
            c.user.src,
            c.user.flags,
            best,
            c.user.edits.clone(),
            c.user.rr.clone(),
            c.user.dlg,
            c.user.pv.clone(),
        )
    });
    let Some((group, on_failure, req, src, flags, best, edits, rr, dlg, pv)) = taken else {
        return;
    };
    let src = src.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    if let Some(group) = group {
        // Serial forking: the next q group, from the stored request.
        let mut ctx = Box::new(MsgCtx::new(req.len().max(1024), 128));
        ctx.load(&req, src, s.local_addr);
        if ctx.parse(&crate::sip::Limits::default()).is_ok() {
            ctx.tm.cell = Some(id);
            ctx.tm.kind = RouteKind::Failure;
            ctx.edits = edits.clone();
            ctx.rr = rr.clone();
            let prev = s.cur.borrow_mut().replace(ctx);
            let sent = relay_group(&lua, &s, id, group, None);
            let ctx = s.cur.borrow_mut().take();
            *s.cur.borrow_mut() = prev;
            if let Some(ctx) = ctx {
                s.push_extra(&ctx);
            }
            if sent > 0 {
                return;
            }
        }
    }
    if let Some(name) = on_failure {
        if let Some(f) = routes.get(&lua, &name) {
            let mut ctx = Box::new(MsgCtx::new(req.len().max(1024), 128));
            ctx.load(&req, src, s.local_addr);
            if ctx.parse(&crate::sip::Limits::default()).is_ok() {
                ctx.tm.cell = Some(id);
                ctx.tm.kind = RouteKind::Failure;
                ctx.tm.matched = Some(ReqMatch::None);
                ctx.flags = flags;
                ctx.edits = edits;
                ctx.rr = rr;
                ctx.dlg = dlg;
                ctx.pv = pv;
                if let Some((b, code)) = best {
                    ctx.tm.branch_idx = Some(b);
                    ctx.tm.reply_code = code;
                }
                let t0 = std::time::Instant::now();
                let (ctx, outcome) = RouteRun::new(s.clone(), ctx, &f, &lua).await;
                s.record_route_time(&name, t0.elapsed());
                if let RouteOutcome::Error(text) = &outcome {
                    tracing::error!(shard = s.shard_id, "failure route {name}: {text}");
                }
                s.push_extra(&ctx);
            }
        }
    }
    let open =
        s.tm.get_map(id, |c| !c.is_final() && c.pending_branches() == 0)
            .unwrap_or(false);
    if open {
        forward_best(&s, id);
    }
    if let Some(d) = dlg {
        let done =
            s.tm.get_map(id, |c| c.is_final() && c.pending_branches() == 0)
                .unwrap_or(true);
        if done {
            super::dialog::on_failed(&s, d);
        }
    }
}

/// Sends the best branch reply upstream (or a local one for a timeout).
fn forward_best(s: &Shared, id: TxId) {
    let best = s.tm.best(id);
    let Some((b, code)) = best else {
        local_reply_on_cell(s, id, 500, b"Server Internal Error");
        return;
    };
    let bytes =
        s.tm.get_map(id, |c| {
            c.branches.get(b as usize).and_then(|br| br.reply.clone())
        })
        .flatten();
    match bytes {
        Some(bytes) if code != 503 => {
            s.tm.reply(id, code, bytes, now_ms(s));
        }
        _ => {
            let (code, reason): (u16, &[u8]) = match code {
                503 => (500, b"Server Internal Error"),
                408 => (408, b"Request Timeout"),
                c => (c, b""),
            };
            local_reply_on_cell(s, id, code, reason);
        }
    }
}

/// Timer work: fires due transaction timers and returns the cells whose
/// completion the user must handle (each is then run with
/// [`completed_flow`]); expired cells are answered 408 here.
pub(super) fn tick(s: &Shared) -> Vec<TxId> {
    let now = now_ms(s);
    let mut done = Vec::new();
    for (id, ev) in s.tm.tick(now) {
        match ev {
            Event::Completed(_) => done.push(id),
            Event::Expired(_) => {
                local_reply_on_cell(s, id, 408, b"Request Timeout");
            }
        }
    }
    done
}

/// Reads `$T_*` pseudo-variables.
pub(super) fn pv_get(lua: &Lua, s: &Shared, name: &str) -> mlua::Result<mlua::Value> {
    match name {
        "$T_branch_idx" => {
            let b = s.with_msg(|m| m.tm.branch_idx)?;
            return Ok(mlua::Value::Integer(b.map(i64::from).unwrap_or(0)));
        }
        "$T_reply_code" => {
            let c = s.with_msg(|m| m.tm.reply_code)?;
            return Ok(if c == 0 {
                mlua::Value::Nil
            } else {
                mlua::Value::Integer(c as i64)
            });
        }
        _ => {}
    }
    let inner = |p: &str| {
        name.strip_prefix(p)
            .and_then(|r| r.strip_suffix(')'))
            .map(str::to_string)
    };
    let (bytes, src) = if let Some(inner_name) = inner("$T_req(") {
        let cell = s.with_msg(|m| m.tm.cell)?;
        let Some(id) = cell else {
            return Ok(mlua::Value::Nil);
        };
        let Some(got) = s.tm.get_map(id, |c| (c.req.clone(), c.user.src)) else {
            return Ok(mlua::Value::Nil);
        };
        (got, inner_name)
    } else if let Some(inner_name) = inner("$T_rpl(") {
        let (cell, b) = s.with_msg(|m| (m.tm.cell, m.tm.branch_idx))?;
        let (Some(id), Some(b)) = (cell, b) else {
            return Ok(mlua::Value::Nil);
        };
        let Some(r) =
            s.tm.get_map(id, |c| {
                c.branches.get(b as usize).and_then(|br| br.reply.clone())
            })
            .flatten()
        else {
            return Ok(mlua::Value::Nil);
        };
        ((r, None), inner_name)
    } else {
        return Ok(mlua::Value::Nil);
    };
    let (bytes, from) = bytes;
    let mut ctx = Box::new(MsgCtx::new(bytes.len().max(512), 128));
    ctx.load(
        &bytes,
        from.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        s.local_addr,
    );
    if ctx.parse(&crate::sip::Limits::default()).is_err() {
        return Ok(mlua::Value::Nil);
    }
    let prev = s.cur.borrow_mut().replace(ctx);
    let v = super::pv::get(lua, s, &src);
    *s.cur.borrow_mut() = prev;
    v
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, request, run};
    use super::*;
    use crate::sip::{Limits, Parsed};

    fn sent(eng: &super::super::Engine) -> Vec<(SocketAddr, String)> {
        let mut v = Vec::new();
        eng.drain_tm(|d, b| v.push((d.addr, String::from_utf8_lossy(b).to_string())));
        v
    }

    fn reply_to(req: &str, code: u16) -> Vec<u8> {
        let b = req.as_bytes();
        let mut p = Parsed::default();
        crate::sip::parse(b, crate::sip::Framing::Datagram, &Limits::default(), &mut p).unwrap();
        let m = SipMsg::new(b, &p);
        let mut out = format!("SIP/2.0 {code} X\r\n");
        for v in m.headers(crate::sip::HdrName::Via) {
            out.push_str(&format!("Via: {}\r\n", String::from_utf8_lossy(v)));
        }
        out.push_str(&format!(
            "From: {}\r\nTo: {};tag=callee\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            String::from_utf8_lossy(m.header(crate::sip::HdrName::From).unwrap()),
            String::from_utf8_lossy(m.header(crate::sip::HdrName::To).unwrap()),
            String::from_utf8_lossy(m.call_id().unwrap()),
            String::from_utf8_lossy(m.header(crate::sip::HdrName::CSeq).unwrap()),
        ));
        out.into_bytes()
    }

    fn deliver_reply(eng: &super::super::Engine, bytes: &[u8]) {
        use std::task::{Context, Poll, Waker};
        let mut m = Box::new(MsgCtx::new(65535, 128));
        m.load(
            bytes,
            "192.0.2.20:5060".parse().unwrap(),
            "10.0.0.1:5060".parse().unwrap(),
        );
        m.parse(&Limits::default()).unwrap();
        let mut f = eng.process_reply(m);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(_) => {}
            Poll::Pending => panic!("reply flow suspended"),
        }
    }

    const RELAY: &str = r#"
        function ksr_request_route()
            KSR.maxfwd.process_maxfwd(10)
            KSR.rr.record_route()
            KSR.tm.t_on_failure("failed")
            KSR.tm.t_on_reply("onreply")
            rc = KSR.tm.t_relay()
        end
        function onreply() replies = (replies or 0) + 1 end
        function failed()
            code = KSR.pv.get("$T_reply_code")
            is_failure = KSR.tmx.t_is_failure_route()
            if code == 486 then
                KSR.setdsturi("sip:192.0.2.21:5060")
                retry = KSR.tm.t_relay()
            end
        end
    "#;

    #[test]
    fn t_relay_sends_100_and_the_relayed_invite() {
        let eng = engine(RELAY);
        let inv = request(
            "INVITE sip:bob@192.0.2.20:5070 SIP/2.0",
            None,
            &["Max-Forwards: 70"],
        );
        let (_, out) = run(&eng, &inv);
        assert_eq!(out, RouteOutcome::Done);
        assert_eq!(super::super::testutil::global_int(&eng, "rc"), 1);
        let out = sent(&eng);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].0, "192.0.2.9:5060".parse().unwrap());
        assert!(out[0].1.starts_with("SIP/2.0 100 Trying\r\n"));
        assert_eq!(out[1].0, "192.0.2.20:5070".parse().unwrap());
        let fwd = &out[1].1;
        assert!(
            fwd.starts_with("INVITE sip:bob@192.0.2.20:5070 SIP/2.0\r\n"),
            "{fwd}"
        );
        assert!(
            fwd.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsS"),
            "{fwd}"
        );
        assert!(
            fwd.contains("Record-Route: <sip:10.0.0.1:5060;lr;ftag=fromtag1>"),
            "{fwd}"
        );
        assert!(fwd.contains("Max-Forwards: 69"), "{fwd}");
        // The top Via of the relayed request is ours; the client's follows.
        let ours = fwd.find("Via: SIP/2.0/UDP 10.0.0.1").unwrap();
        let theirs = fwd.find("Via: SIP/2.0/UDP 192.0.2.9").unwrap();
        assert!(ours < theirs);

        // A retransmission is absorbed: the 100 again, no second INVITE.
        let (_, _) = run(&eng, &inv);
        assert_eq!(super::super::testutil::global_int(&eng, "rc"), 0);
        let again = sent(&eng);
        assert_eq!(again.len(), 1);
        assert!(again[0].1.starts_with("SIP/2.0 100"));

        // 180 goes up through the onreply route, without our Via.
        deliver_reply(&eng, &reply_to(fwd, 180));
        let up = sent(&eng);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].0, "192.0.2.9:5060".parse().unwrap());
        assert!(up[0].1.starts_with("SIP/2.0 180"));
        assert!(!up[0].1.contains("10.0.0.1:5060;branch"));
        assert_eq!(super::super::testutil::global_int(&eng, "replies"), 1);

        // 486: ACKed downstream; the failure route relays to a second hop.
        deliver_reply(&eng, &reply_to(fwd, 486));
        let out = sent(&eng);
        assert_eq!(super::super::testutil::global_int(&eng, "code"), 486);
        assert_eq!(super::super::testutil::global_int(&eng, "is_failure"), 1);
        assert_eq!(super::super::testutil::global_int(&eng, "retry"), 1);
        assert!(
            out.iter()
                .any(|(d, b)| *d == "192.0.2.20:5070".parse().unwrap() && b.starts_with("ACK ")),
            "{out:?}"
        );
        let second = out
            .iter()
            .find(|(d, b)| *d == "192.0.2.21:5060".parse().unwrap() && b.starts_with("INVITE "))
            .expect("second branch");
        assert!(
            second
                .1
                .contains("Record-Route: <sip:10.0.0.1:5060;lr;ftag=fromtag1>"),
            "the failure route's branch keeps the Record-Route"
        );
        assert!(
            second.1.contains(".1\r\n") || second.1.contains(".1;"),
            "branch 1: {}",
            second.1
        );
        // Its 200 goes upstream.
        deliver_reply(&eng, &reply_to(&second.1, 200));
        let up = sent(&eng);
        assert!(
            up.iter()
                .any(|(d, b)| *d == "192.0.2.9:5060".parse().unwrap()
                    && b.starts_with("SIP/2.0 200")),
            "{up:?}"
        );
    }

    #[test]
    fn relayed_request_marks_the_client_via() {
        let msg = b"MESSAGE sip:bob@192.0.2.30 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 192.168.1.5:5070;branch=z9hG4bK-cv\r\n\
            From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@192.0.2.30>\r\n\
            Call-ID: cv@x\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        for (force, want) in [
            (false, ";branch=z9hG4bK-cv;received=192.0.2.9\r\n"),
            (true, ";branch=z9hG4bK-cv;received=192.0.2.9;rport=5060\r\n"),
        ] {
            let eng = engine(&format!(
                "function ksr_request_route() {} KSR.forward() end",
                if force { "KSR.force_rport()" } else { "" }
            ));
            let (m, _) = run(&eng, msg);
            let o = m.out[0];
            let fwd = String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]);
            assert!(
                fwd.contains(&format!("Via: SIP/2.0/UDP 192.168.1.5:5070{want}")),
                "{fwd}"
            );
        }
        // Sent-by already the source and no rport: untouched.
        let eng = engine("function ksr_request_route() KSR.forward() end");
        let same = String::from_utf8_lossy(msg).replace("192.168.1.5:5070", "192.0.2.9:5060");
        let (m, _) = run(&eng, same.as_bytes());
        let o = m.out[0];
        let fwd = String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]);
        assert!(
            fwd.contains("Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-cv\r\n"),
            "{fwd}"
        );
    }

    #[test]
    fn onreply_contact_alias_goes_upstream() {
        let eng = engine(
            r#"function ksr_request_route()
                 KSR.tm.t_on_reply("onreply")
                 KSR.tm.t_relay()
               end
               function onreply()
                 if KSR.siputils.is_reply() > 0 then
                    alias = KSR.nathelper.set_contact_alias()
                 end
               end"#,
        );
        let inv = request("INVITE sip:bob@192.0.2.20 SIP/2.0", None, &[]);
        run(&eng, &inv);
        let out = sent(&eng);
        let fwd = out[1].1.clone();
        let ok = String::from_utf8(reply_to(&fwd, 200)).unwrap().replacen(
            "Content-Length: 0",
            "Contact: <sip:bob@192.168.1.9:5060>\r\nContent-Length: 0",
            1,
        );
        deliver_reply(&eng, ok.as_bytes());
        assert_eq!(super::super::testutil::global_int(&eng, "alias"), 1);
        let up = sent(&eng);
        let r = up
            .iter()
            .find(|(_, b)| b.starts_with("SIP/2.0 200"))
            .expect("200 upstream");
        assert!(
            r.1.contains("Contact: <sip:bob@192.168.1.9:5060;alias=192.0.2.20~5060~1>\r\n"),
            "{}",
            r.1
        );
        assert!(!r.1.contains("10.0.0.1:5060;branch"), "{}", r.1);
    }

    #[test]
    fn cancel_is_answered_and_sent_to_the_ringing_branch() {
        let eng = engine(
            r#"function ksr_request_route()
                 if KSR.is_CANCEL() then
                    found = KSR.tm.t_check_trans()
                    KSR.tm.t_relay()
                    return
                 end
                 KSR.tm.t_relay()
               end"#,
        );
        let inv = request("INVITE sip:bob@192.0.2.20 SIP/2.0", None, &[]);
        run(&eng, &inv);
        let out = sent(&eng);
        let fwd = out[1].1.clone();
        deliver_reply(&eng, &reply_to(&fwd, 180));
        sent(&eng);
        let cancel = String::from_utf8(inv)
            .unwrap()
            .replacen("INVITE sip", "CANCEL sip", 1)
            .replacen("2 INVITE", "2 CANCEL", 1);
        run(&eng, cancel.as_bytes());
        assert_eq!(super::super::testutil::global_int(&eng, "found"), 1);
        let out = sent(&eng);
        assert!(
            out.iter()
                .any(|(_, b)| b.starts_with("SIP/2.0 200 canceling")),
            "{out:?}"
        );
        let c = out
            .iter()
            .find(|(d, b)| {
                *d == "192.0.2.20:5060".parse().unwrap()
                    && b.starts_with("CANCEL sip:bob@192.0.2.20 SIP/2.0")
            })
            .expect("CANCEL downstream");
        assert!(c.1.contains("CSeq: 2 CANCEL"));
        // The 487 goes upstream as the final answer.
        deliver_reply(&eng, &reply_to(&fwd, 487));
        let up = sent(&eng);
        assert!(
            up.iter().any(|(_, b)| b.starts_with("SIP/2.0 487")),
            "{up:?}"
        );
    }

    #[test]
    fn branch_route_changes_stay_with_its_branch() {
        let eng = engine(
            r#"function ksr_request_route()
                 KSR.corex.append_branch("sip:carol@192.0.2.22")
                 KSR.tm.t_on_branch("per_branch")
                 rc = KSR.tm.t_relay()
                 after = KSR.pv.get("$ru")
               end
               function per_branch()
                 idx = KSR.pv.get("$T_branch_idx")
                 in_branch = KSR.tmx.t_is_branch_route()
                 if KSR.pv.get("$rU") == "carol" then
                   KSR.hdr.append("X-Branch: carol\r\n")
                 end
               end"#,
        );
        let inv = request("MESSAGE sip:bob@192.0.2.20 SIP/2.0", None, &[]);
        run(&eng, &inv);
        assert_eq!(super::super::testutil::global_int(&eng, "rc"), 1);
        assert_eq!(super::super::testutil::global_int(&eng, "idx"), 1);
        assert_eq!(super::super::testutil::global_int(&eng, "in_branch"), 1);
        let out = sent(&eng);
        let bob = out
            .iter()
            .find(|(d, _)| *d == "192.0.2.20:5060".parse().unwrap())
            .expect("bob's branch");
        let carol = out
            .iter()
            .find(|(d, _)| *d == "192.0.2.22:5060".parse().unwrap())
            .expect("carol's branch");
        assert!(carol.1.starts_with("MESSAGE sip:carol@192.0.2.22 SIP/2.0"));
        assert!(carol.1.contains("X-Branch: carol"), "{}", carol.1);
        assert!(!bob.1.contains("X-Branch"), "{}", bob.1);
        let after: String = eng.lua().globals().get("after").unwrap();
        assert_eq!(
            after, "sip:bob@192.0.2.20",
            "the request route's R-URI is restored"
        );
    }

    #[test]
    fn sl_send_reply_is_stateful_once_a_transaction_exists() {
        let eng = engine(
            r#"function ksr_request_route()
                 KSR.tm.t_newtran()
                 rc = KSR.sl.send_reply(486, "Busy Here")
               end"#,
        );
        let inv = request("INVITE sip:bob@192.0.2.20 SIP/2.0", None, &[]);
        let (ctx, _) = run(&eng, &inv);
        assert!(ctx.out.is_empty(), "not sent statelessly");
        assert_eq!(super::super::testutil::global_int(&eng, "rc"), 1);
        let out = sent(&eng);
        assert!(out.iter().any(|(_, b)| b.starts_with("SIP/2.0 100")));
        assert!(out
            .iter()
            .any(|(_, b)| b.starts_with("SIP/2.0 486 Busy Here")));
        // A retransmission gets the 486 again from the transaction.
        run(&eng, &inv);
        let again = sent(&eng);
        assert!(
            again.iter().any(|(_, b)| b.starts_with("SIP/2.0 486")),
            "{again:?}"
        );
    }

    #[test]
    fn unresolvable_destination_fails_and_leaves_no_transaction() {
        let eng = engine("function ksr_request_route() rc = KSR.tm.t_relay() end");
        let inv = request("MESSAGE sip:bob@example.com SIP/2.0", None, &[]);
        run(&eng, &inv);
        assert_eq!(super::super::testutil::global_int(&eng, "rc"), -1);
        assert!(eng.shared().tm.is_empty());
    }

    #[test]
    fn q_groups_are_serial_highest_first() {
        let t = |uri: &str, q: Option<u16>| Target {
            spec: BranchSpec {
                uri: uri.as_bytes().to_vec(),
                q,
                ..BranchSpec::default()
            },
        };
        let g = group_by_q(vec![
            t("a", Some(500)),
            t("b", None),
            t("c", Some(500)),
            t("d", Some(1000)),
        ]);
        let names: Vec<Vec<&[u8]>> = g
            .iter()
            .map(|g| g.iter().map(|b| b.uri.as_slice()).collect())
            .collect();
        assert_eq!(names, vec![vec![&b"b"[..], b"d"], vec![b"a", b"c"]]);
    }

    #[test]
    fn resolves_ip_literals_only() {
        assert_eq!(
            resolve_uri(b"sip:bob@127.0.0.1:5070"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(
            resolve_uri(b"sip:bob@[::1]"),
            Some("[::1]:5060".parse().unwrap())
        );
        assert_eq!(
            resolve_uri(b"sip:localhost:7"),
            Some("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(resolve_uri(b"sip:bob@example.com"), None);
    }
}
