//! KSR.dialog: dialog tracking (Kamailio `dialog` module) on the shared
//! dialog store (`dialog_store.rs`); this file converts arguments, finds
//! the current message's dialog and hooks the store into the proxy path.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.dialog.dlg_manage()` | `int ()` | initial INVITE: 1 dialog created (a `;did=` parameter goes into the Record-Route); request with a To tag: 1 when it belongs to a known dialog (its state follows ACK/BYE); -1 otherwise (table full: -1, counted) |
//! | `KSR.dialog.is_known_dlg()` | `int ()` | 1 when the message belongs to a tracked dialog (Call-ID, From tag, To tag either way), else -1 |
//! | `KSR.dialog.dlg_get(callid, ftag, ttag)` | `int (str, str, str)` | 1 and that dialog becomes the current one (`$dlg`, `dlg_bye`, ...), -1 when unknown; `ttag` "" matches an early dialog |
//! | `KSR.dialog.dlg_get_var(callid, ftag, ttag, name)` | `xval (str, str, str, str)` | the dialog variable, nil when unset or no such dialog |
//! | `KSR.dialog.dlg_set_var(callid, ftag, ttag, name, value)` | `int (str, str, str, str, str)` | 1 set, -1 no such dialog |
//! | `KSR.dialog.dlg_set_timeout(timeout)` | `int (int)` | 1: the current dialog ends `timeout` seconds after now (or after it is confirmed); -1 no dialog |
//! | `KSR.dialog.dlg_set_timeout_id(timeout, h_entry, h_id)` | `int (int, int, int)` | as dlg_set_timeout, for that dialog |
//! | `KSR.dialog.dlg_bye(side)` | `int (str)` | side `caller`, `callee` or `all`: BYE sent to that side of the confirmed current dialog (retransmitted until a final reply), which ends; an early dialog ends with a CANCEL to the callee and `bye_early_code` to the caller; 1 / -1 |
//! | `KSR.dialog.dlg_setflag(flag)` / `dlg_resetflag(flag)` | `int (int)` | 1; -1 no dialog or flag outside 0..31 |
//! | `KSR.dialog.dlg_isflagset(flag)` | `int (int)` | 1 set, -1 not set or no dialog |
//! | `KSR.dialog.set_dlg_profile(profile, value)` / `set_dlg_profile_static(profile)` | `int (str, str)` | 1 added (before `dlg_manage()`: added to the dialog it creates); -1 unknown profile |
//! | `KSR.dialog.unset_dlg_profile(profile, value)` / `unset_dlg_profile_static(profile)` | `int (str, str)` | 1 removed, -1 not a member |
//! | `KSR.dialog.is_in_profile(profile, value)` / `is_in_profile_static(profile)` | `int (str, str)` | 1 member (with that value, "" any), -1 otherwise |
//! | `KSR.dialog.get_profile_size(profile, value, pv)` | `int (str, str, str)` | 1 and the number of active dialogs in the profile (with `value`; "" all) written to `pv`; -1 unknown profile |
//! | `KSR.dialog.get_profile_size_static(profile, pv)` | `int (str, str)` | as get_profile_size without a value |
//! | `KSR.dialog.dlg_set_property(attr)` / `dlg_reset_property(attr)` | `int (str)` | `timeout-noreset`: 1 (in-dialog requests no longer restart the timeout); `ka-src`/`ka-dst`: 1, no keepalives are sent; other: -1 |
//! | `KSR.dialog.var_sets(name, value)` | `int (str, str)` | 1: `$dlg_var(name)` of the current dialog; -1 no dialog |
//! | `KSR.dialog.var_get(name)` / `var_gete(name)` / `var_getw(name)` | `xval (str)` | `$dlg_var(name)`: nil / "" / "<null>" when unset |
//! | `KSR.dialog.var_rm(name)` | `int (str)` | 1 |
//! | `KSR.dialog.var_is_null(name)` | `int (str)` | 1 unset, -1 set |
//!
//! Pseudo-variables (through `KSR.pv`): `$dlg(attr)` with attr `h_id`,
//! `h_entry`, `ref`, `state`, `callid`, `from_uri`, `from_tag`, `to_uri`,
//! `to_tag`, `from_cseq`, `to_cseq`, `from_contact`, `to_contact`,
//! `from_rs`, `to_rs`, `from_bindaddr`, `to_bindaddr`, `dflags`, `sflags`,
//! `lifetime`, `start_ts`, `init_ts`, `count` (active dialogs; the others
//! need a current dialog); `$dlg_var(name)` (read/write); `$dlg_ctx(attr)`
//! with `timeout_bye` and `timeout_int` (read/write; set before
//! `dlg_manage()` they apply to the dialog it creates), `set`, `on`.
//!
//! In-dialog requests are matched when `KSR.rr.loose_route()` consumes our
//! Record-Route with the `did` parameter (`rr_param`), or by `dlg_manage()`
//! / `is_known_dlg()` on Call-ID and tags; nothing else looks at a message
//! for the dialog module, and replies are looked at only for transactions
//! of an INVITE the script called `dlg_manage()` for.

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::dialog_store::{
    ByeSide, Dialogs, DlgId, NewDialog, ReplyInfo, MAX_PROFILES_PER_DLG, ST_DELETED,
};
use super::pv::{PvValue, Val, NULL_TEXT};
use super::{MsgCtx, Shared};
use crate::sip::{HdrName, Method, SipMsg};

fn store(s: &Shared) -> &Dialogs {
    &s.services.tables.dialog
}

fn rc(ok: bool) -> i32 {
    if ok {
        1
    } else {
        -1
    }
}

/// The current message's dialog (set by dlg_manage, loose_route, dlg_get,
/// is_known_dlg; in reply and failure routes, the transaction's).
fn current(s: &Shared) -> Option<DlgId> {
    s.with_msg(|m| m.dlg).ok().flatten()
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "dlg_manage",
        lua.create_function(move |_, ()| s.with_msg(|m| dlg_manage(&s, m)))?,
    )?;
    let s = shared.clone();
    t.set(
        "is_known_dlg",
        lua.create_function(move |_, ()| s.with_msg(|m| rc(known(&s, m).is_some())))?,
    )?;
    let s = shared.clone();
    t.set(
        "dlg_get",
        lua.create_function(
            move |_, (ci, ft, tt): (mlua::String, mlua::String, mlua::String)| {
                let found = store(&s).lookup(&ci.as_bytes(), &ft.as_bytes(), &tt.as_bytes());
                let Some((id, _)) = found else { return Ok(-1) };
                s.with_msg(|m| m.dlg = Some(id))?;
                Ok(1)
            },
        )?,
    )?;
    let s = shared.clone();
    t.set(
        "dlg_get_var",
        lua.create_function(
            move |lua,
                  (ci, ft, tt, name): (mlua::String, mlua::String, mlua::String, mlua::String)| {
                let found = store(&s).lookup(&ci.as_bytes(), &ft.as_bytes(), &tt.as_bytes());
                let v = found.and_then(|(id, _)| var_get(&s, id, &name.as_bytes()));
                super::lua_opt_str(lua, v.as_deref())
            },
        )?,
    )?;
    let s = shared.clone();
    t.set(
        "dlg_set_var",
        lua.create_function(
            move |_,
                  (ci, ft, tt, name, value): (
                mlua::String,
                mlua::String,
                mlua::String,
                mlua::String,
                mlua::String,
            )| {
                let found = store(&s).lookup(&ci.as_bytes(), &ft.as_bytes(), &tt.as_bytes());
                Ok(match found {
                    Some((id, _)) => rc(var_set(&s, id, &name.as_bytes(), Some(&value.as_bytes()))),
                    None => -1,
                })
            },
        )?,
    )?;
    let s = shared.clone();
    t.set(
        "dlg_set_timeout",
        lua.create_function(move |_, timeout: i64| {
            let Some(id) = current(&s) else { return Ok(-1) };
            Ok(set_timeout(&s, id, timeout))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "dlg_set_timeout_id",
        lua.create_function(move |_, (timeout, h_entry, h_id): (i64, i64, i64)| {
            let (Ok(h_entry), Ok(h_id)) = (u32::try_from(h_entry), u32::try_from(h_id)) else {
                return Ok(-1);
            };
            Ok(set_timeout(&s, DlgId { h_entry, h_id }, timeout))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "dlg_bye",
        lua.create_function(move |_, side: mlua::String| {
            let Some(side) = ByeSide::parse(&side.as_bytes()) else {
                return Ok(-1);
            };
            let Some(id) = current(&s) else { return Ok(-1) };
            Ok(rc(end_dialog(&s, id, side)))
        })?,
    )?;
    for (name, op) in [
        ("dlg_setflag", 1u8),
        ("dlg_resetflag", 2),
        ("dlg_isflagset", 3),
    ] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, flag: i64| {
                let Some(id) = current(&s) else { return Ok(-1) };
                let Ok(bit) = u32::try_from(flag) else {
                    return Ok(-1);
                };
                if bit > 31 {
                    return Ok(-1);
                }
                let mask = 1u32 << bit;
                let r = store(&s).with(id, |d| match op {
                    1 => {
                        d.sflags |= mask;
                        true
                    }
                    2 => {
                        d.sflags &= !mask;
                        true
                    }
                    _ => d.sflags & mask != 0,
                });
                Ok(rc(r.unwrap_or(false)))
            })?,
        )?;
    }
    for (name, op, with_value) in [
        ("set_dlg_profile", 1u8, true),
        ("set_dlg_profile_static", 1, false),
        ("unset_dlg_profile", 2, true),
        ("unset_dlg_profile_static", 2, false),
        ("is_in_profile", 3, true),
        ("is_in_profile_static", 3, false),
    ] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(
                move |_, (profile, value): (mlua::String, Option<mlua::String>)| {
                    let value = if with_value {
                        value.map(|v| v.as_bytes().to_vec()).unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let st = store(&s);
                    let Some(p) = st.profiles.find(&profile.to_string_lossy()) else {
                        tracing::error!(target: "script", "dialog: profile {} not defined", profile.to_string_lossy());
                        return Ok(-1);
                    };
                    let Some(id) = current(&s) else {
                        // before dlg_manage(): remembered for the dialog it
                        // creates, as Kamailio links pending profiles
                        return Ok(if op == 1 {
                            s.with_msg(|m| {
                                if m.dlg_profiles.len() >= MAX_PROFILES_PER_DLG {
                                    return -1;
                                }
                                m.dlg_profiles.push((p, value.clone()));
                                1
                            })?
                        } else {
                            -1
                        });
                    };
                    Ok(rc(match op {
                        1 => st.set_profile(id, p, &value),
                        2 => st.unset_profile(id, p, &value),
                        _ => st.in_profile(id, p, (!value.is_empty()).then_some(&value[..])),
                    }))
                },
            )?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "get_profile_size",
        lua.create_function(
            move |_, (profile, value, pv): (mlua::String, mlua::String, mlua::String)| {
                profile_size(
                    &s,
                    &profile.to_string_lossy(),
                    &value.as_bytes(),
                    &pv.to_str()?,
                )
            },
        )?,
    )?;
    let s = shared.clone();
    t.set(
        "get_profile_size_static",
        lua.create_function(move |_, (profile, pv): (mlua::String, mlua::String)| {
            profile_size(&s, &profile.to_string_lossy(), b"", &pv.to_str()?)
        })?,
    )?;
    for (name, set) in [("dlg_set_property", true), ("dlg_reset_property", false)] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, attr: mlua::String| {
                let Some(id) = current(&s) else { return Ok(-1) };
                Ok(match &*attr.as_bytes() {
                    b"timeout-noreset" => rc(store(&s).with(id, |d| d.noreset = set).is_some()),
                    b"ka-src" | b"ka-dst" => 1,
                    _ => -1,
                })
            })?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "var_sets",
        lua.create_function(move |_, (name, value): (mlua::String, mlua::String)| {
            let Some(id) = current(&s) else { return Ok(-1) };
            Ok(rc(var_set(
                &s,
                id,
                &name.as_bytes(),
                Some(&value.as_bytes()),
            )))
        })?,
    )?;
    for (name, null) in [
        ("var_get", None),
        ("var_gete", Some("")),
        ("var_getw", Some(NULL_TEXT)),
    ] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |lua, key: mlua::String| {
                let v = current(&s).and_then(|id| var_get(&s, id, &key.as_bytes()));
                match (v, null) {
                    (Some(v), _) => super::lua_opt_str(lua, Some(&v)),
                    (None, Some(n)) => super::lua_opt_str(lua, Some(n.as_bytes())),
                    (None, None) => Ok(Value::Nil),
                }
            })?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "var_rm",
        lua.create_function(move |_, key: mlua::String| {
            if let Some(id) = current(&s) {
                var_set(&s, id, &key.as_bytes(), None);
            }
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "var_is_null",
        lua.create_function(move |_, key: mlua::String| {
            let v = current(&s).and_then(|id| var_get(&s, id, &key.as_bytes()));
            Ok(rc(v.is_none()))
        })?,
    )?;
    ksr.set("dialog", t)
}

fn set_timeout(s: &Shared, id: DlgId, timeout: i64) -> i32 {
    let Ok(t) = u64::try_from(timeout) else {
        return -1;
    };
    let st = store(s);
    rc(st.set_timeout(id, t, st.now_ms()))
}

fn profile_size(s: &Shared, profile: &str, value: &[u8], pv: &str) -> mlua::Result<i32> {
    let st = store(s);
    let Some(p) = st.profiles.find(profile) else {
        tracing::error!(target: "script", "dialog: profile {profile} not defined");
        return Ok(-1);
    };
    let n = st.profiles.size(p, (!value.is_empty()).then_some(value));
    super::pv::set(s, pv, Some(PvValue::Int(n.min(i64::MAX as u64) as i64)))?;
    Ok(1)
}

fn var_get(s: &Shared, id: DlgId, name: &[u8]) -> Option<Vec<u8>> {
    store(s)
        .with(id, |d| {
            d.vars
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
        .flatten()
}

/// Sets (or with `None` removes) a dialog variable; false when there is no
/// such dialog or the variable does not fit the limits.
fn var_set(s: &Shared, id: DlgId, name: &[u8], value: Option<&[u8]>) -> bool {
    use super::dialog_store::{MAX_VARS, MAX_VAR_BYTES};
    if name.is_empty() || name.len() > MAX_VAR_BYTES {
        return false;
    }
    store(s)
        .with(id, |d| {
            let pos = d.vars.iter().position(|(k, _)| k == name);
            match (value, pos) {
                (None, Some(i)) => {
                    d.vars.swap_remove(i);
                    true
                }
                (None, None) => true,
                (Some(v), _) if v.len() > MAX_VAR_BYTES => false,
                (Some(v), Some(i)) => {
                    d.vars[i].1 = v.to_vec();
                    true
                }
                (Some(v), None) => {
                    if d.vars.len() >= MAX_VARS {
                        return false;
                    }
                    d.vars.push((name.to_vec(), v.to_vec()));
                    true
                }
            }
        })
        .unwrap_or(false)
}

/// Ends a dialog with BYEs to `side` (queued with the shard's sends); an
/// early one (no 2xx yet) as Kamailio does: CANCEL to the callee's
/// branches and `bye_early_code` to the caller, through its transaction.
fn end_dialog(s: &Shared, id: DlgId, side: ByeSide) -> bool {
    let st = store(s);
    let now = st.now_ms();
    let early_tx = st
        .with(id, |d| {
            (d.state < super::dialog_store::ST_CONFIRMED_NA).then_some(d.tx)
        })
        .flatten()
        .flatten();
    match st.end(id, side, s.local_addr, now) {
        Some(out) => {
            send_byes(s, out, now);
            if let Some(tx) = early_tx {
                let tnow = super::tm::now_ms(s);
                s.tm.cancel(tx, tnow);
                super::tm::local_reply_on_cell(
                    s,
                    tx,
                    st.params.bye_early_code,
                    &st.params.bye_early_reason,
                );
            }
            true
        }
        None => false,
    }
}

/// The transaction of the INVITE that created dialog `id`.
pub(super) fn set_tx(s: &Shared, id: DlgId, tx: super::tm_store::TxId) {
    store(s).with(id, |d| d.tx = Some(tx));
}

/// Queues BYEs with the shard's sends and tracks them for retransmission.
fn send_byes(s: &Shared, out: Vec<super::dialog_store::Outgoing>, now_ms: u64) {
    if out.is_empty() {
        return;
    }
    {
        let mut extra = s.extra_out.borrow_mut();
        for o in &out {
            extra.push((o.dst.into(), o.bytes.clone()));
        }
    }
    store(s).track_byes(out, true, now_ms);
}

/// A reply no transaction claims whose top Via branch is one of our BYEs':
/// absorbed (a final one stops the BYE's retransmissions). False for any
/// other reply.
pub(super) fn absorb_bye_reply(s: &Shared, m: &MsgCtx) -> bool {
    let msg = m.msg();
    let Ok(via) = msg.top_via() else { return false };
    let Some(branch) = via.branch() else {
        return false;
    };
    if !branch.starts_with(super::dialog_store::BYE_BRANCH_PREFIX) {
        return false;
    }
    store(s).bye_replied(branch, msg.status().unwrap_or(0));
    true
}

/// (Call-ID, From tag, To tag) of a message.
fn keys<'a>(msg: &SipMsg<'a>) -> Option<(&'a [u8], &'a [u8], &'a [u8])> {
    let callid = msg.call_id()?;
    let ftag = msg.from().ok()?.tag().unwrap_or(b"");
    let ttag = msg.to().ok()?.tag().unwrap_or(b"");
    Some((callid, ftag, ttag))
}

/// The message's dialog, found by Call-ID and tags (and remembered).
fn known(s: &Shared, m: &mut MsgCtx) -> Option<DlgId> {
    if let Some(id) = m.dlg {
        return Some(id);
    }
    let st = store(s);
    if st.is_empty() {
        return None;
    }
    let msg = m.msg();
    let (ci, ft, tt) = keys(&msg)?;
    let (id, _) = st.lookup(ci, ft, tt)?;
    if st.with(id, |d| d.state == ST_DELETED).unwrap_or(true) {
        return None;
    }
    m.dlg = Some(id);
    Some(id)
}

fn dlg_manage(s: &Shared, m: &mut MsgCtx) -> i32 {
    if m.dlg.is_some() {
        return 1;
    }
    let msg = m.msg();
    if !msg.is_request() {
        return -1;
    }
    let Some((callid, ftag, ttag)) = keys(&msg) else {
        return -1;
    };
    let st = store(s);
    if !ttag.is_empty() {
        return rc(sequential(s, m));
    }
    if msg.method() != Some(Method::Invite) {
        return -1;
    }
    let (Ok(from), Ok(to), Ok(cseq)) = (msg.from(), msg.to(), msg.cseq()) else {
        return -1;
    };
    let contact = msg
        .contacts()
        .next()
        .and_then(|c| c.ok())
        .and_then(|c| match c {
            crate::sip::Contact::Addr(a) => Some(a.uri),
            crate::sip::Contact::Star => None,
        })
        .unwrap_or(b"");
    let record_route: Vec<Vec<u8>> = msg
        .name_addrs(HdrName::RecordRoute)
        .filter_map(|r| r.ok())
        .map(|r| r.raw.to_vec())
        .collect();
    let n = NewDialog {
        callid,
        from_hdr: msg.header(HdrName::From).unwrap_or(b""),
        from_uri: from.uri,
        from_tag: ftag,
        to_hdr: msg.header(HdrName::To).unwrap_or(b""),
        to_uri: to.uri,
        contact,
        record_route,
        cseq: cseq.num,
        src: m.src,
        bind: m.local,
    };
    let id = match st.create(&n, st.now_ms()) {
        Ok((id, created)) => {
            m.dlg_new = created;
            id
        }
        Err(_) => {
            s.counters.incr(crate::stats::Counter::DialogFull);
            if st.full_log_allowed() {
                tracing::warn!(
                    shard = s.shard_id,
                    "dialog table full ([dialog] max_dialogs = {}): dlg_manage refused",
                    st.params.max_dialogs
                );
            }
            return -1;
        }
    };
    m.dlg = Some(id);
    if m.dlg_new {
        for (p, v) in std::mem::take(&mut m.dlg_profiles) {
            st.set_profile(id, p, &v);
        }
    }
    if created_now(m) {
        let (bye, timeout) = (m.dlg_ctx_bye, m.dlg_ctx_timeout);
        st.with(id, |d| {
            if let Some(b) = bye {
                d.timeout_bye = b;
            }
            if let Some(t) = timeout {
                d.lifetime_s = t;
            }
        });
    }
    let param = format!(";{}={:x}.{:x}", st.params.rr_param, id.h_entry, id.h_id);
    m.rr.params.extend_from_slice(param.as_bytes());
    if let Some(cell) = m.tm.cell.filter(|_| m.dlg_new) {
        s.tm.get_mut_map(cell, |c| c.user.dlg = Some(id));
        set_tx(s, id, cell);
    }
    1
}

fn created_now(m: &MsgCtx) -> bool {
    m.dlg_new && (m.dlg_ctx_bye.is_some() || m.dlg_ctx_timeout.is_some())
}

/// `$dlg_ctx(attr)`: `timeout_bye` (1: BYE both sides at the timeout),
/// `timeout_int` (the dialog's timeout, s), `set` (1 when the message has a
/// dialog), `on` (1 when dialog tracking is on for it: the same here).
pub(super) fn pv_ctx_get(s: &Shared, attr: &str) -> mlua::Result<Val> {
    let (dlg, bye, timeout) = s.with_msg(|m| (m.dlg, m.dlg_ctx_bye, m.dlg_ctx_timeout))?;
    let from_dlg = dlg.and_then(|id| store(s).with(id, |d| (d.timeout_bye, d.lifetime_s)));
    Ok(match attr {
        "timeout_bye" => Val::Int(i64::from(
            from_dlg
                .map(|x| x.0)
                .or(bye)
                .unwrap_or(store(s).params.send_bye),
        )),
        "timeout_int" => Val::Int(
            from_dlg
                .map(|x| x.1)
                .or(timeout)
                .unwrap_or(0)
                .min(i64::MAX as u64) as i64,
        ),
        "set" | "on" => Val::Int(i64::from(dlg.is_some())),
        _ => Val::Null,
    })
}

/// `$dlg_ctx(timeout_bye) = 0|1`, `$dlg_ctx(timeout_int) = seconds`: for
/// the message's dialog, or the one `dlg_manage()` creates next.
pub(super) fn pv_ctx_set(s: &Shared, attr: &str, value: &Option<PvValue>) -> mlua::Result<bool> {
    let n = match value {
        Some(PvValue::Int(n)) => *n,
        Some(PvValue::Str(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0),
        None => 0,
    };
    let dlg = s.with_msg(|m| {
        match attr {
            "timeout_bye" => m.dlg_ctx_bye = Some(n != 0),
            "timeout_int" => m.dlg_ctx_timeout = Some(u64::try_from(n).unwrap_or(0)),
            _ => return Err(()),
        }
        Ok(m.dlg)
    })?;
    let Ok(dlg) = dlg else {
        return Ok(false);
    };
    if let Some(id) = dlg {
        let st = store(s);
        match attr {
            "timeout_bye" => {
                st.with(id, |d| d.timeout_bye = n != 0);
            }
            _ => {
                st.set_timeout(id, u64::try_from(n).unwrap_or(0), st.now_ms());
            }
        }
    }
    Ok(true)
}

/// A request with a To tag: matches it to its dialog and updates the
/// dialog (ACK confirms, BYE ends, others restart the timeout).
fn sequential(s: &Shared, m: &mut MsgCtx) -> bool {
    let st = store(s);
    if st.is_empty() {
        return false;
    }
    let msg = m.msg();
    let Some((ci, ft, tt)) = keys(&msg) else {
        return false;
    };
    if tt.is_empty() {
        return false;
    }
    let Some((id, dir)) = st.lookup(ci, ft, tt) else {
        return false;
    };
    let cseq = msg.cseq().map(|c| c.num).unwrap_or(0);
    st.on_request(id, msg.method_bytes(), dir, cseq, st.now_ms());
    m.dlg = Some(id);
    true
}

/// `loose_route()` consumed our Route: when it carries the dialog
/// parameter, the request is matched to its dialog.
pub(super) fn after_loose_route(s: &Shared, m: &mut MsgCtx) {
    if m.dlg.is_some() || store(s).is_empty() {
        return;
    }
    let has = m.rr.route_params.as_deref().is_some_and(|p| {
        crate::sip::Params { raw: p }
            .get(store(s).params.rr_param.as_bytes())
            .is_some()
    });
    if has {
        sequential(s, m);
    }
}

/// A reply of an INVITE transaction whose request called `dlg_manage()`.
pub(super) fn on_reply(s: &Shared, id: DlgId, m: &MsgCtx) {
    let msg = m.msg();
    let Some(code) = msg.status() else { return };
    if msg.cseq().map(|c| c.method) != Ok(Method::Invite) {
        return;
    }
    let to_hdr = msg.header(HdrName::To).unwrap_or(b"");
    let to = msg.to().ok();
    let to_tag = to.as_ref().and_then(|t| t.tag()).unwrap_or(b"");
    let contact = msg
        .contacts()
        .next()
        .and_then(|c| c.ok())
        .and_then(|c| match c {
            crate::sip::Contact::Addr(a) => Some(a.uri),
            crate::sip::Contact::Star => None,
        })
        .unwrap_or(b"");
    // Record-Routes above ours were added downstream of us
    let mut downstream_rr = Vec::new();
    if (200..300).contains(&code) {
        for r in msg.name_addrs(HdrName::RecordRoute).filter_map(|r| r.ok()) {
            let ours = r.uri_parsed().is_ok_and(|u| {
                s.myself.matches(u.host, u.port)
                    || super::tm::resolve_host(u.host, u.port) == Some(m.local)
            });
            if ours {
                break;
            }
            downstream_rr.push(r.raw.to_vec());
        }
    }
    let st = store(s);
    st.on_reply(
        id,
        &ReplyInfo {
            code,
            to_hdr,
            to_tag,
            contact,
            downstream_rr,
            src: m.src,
        },
        st.now_ms(),
    );
}

/// The request route of an initial INVITE ended: a dialog it created but
/// did not relay (a local reply, a drop) ends as failed, as Kamailio ends
/// a dialog without a transaction at the end of the script.
pub fn route_end(s: &Shared, m: &MsgCtx) {
    let Some(id) = m.dlg.filter(|_| m.dlg_new) else {
        return;
    };
    let relayed = m.tm.cell.is_some() && m.replied.is_none_or(|c| c < 300);
    if !relayed {
        let st = store(s);
        st.fail_unconfirmed(id, st.now_ms());
    }
}

/// The transaction of a dialog's INVITE completed without a 2xx (every
/// branch failed and the failure route relayed nothing more).
pub(super) fn on_failed(s: &Shared, id: DlgId) {
    let st = store(s);
    st.fail_unconfirmed(id, st.now_ms());
}

/// Timer work of this shard (once a second while dialogs or unanswered
/// BYEs exist): timed out dialogs end, with BYEs when `send_bye` is set;
/// BYEs without a final reply are retransmitted.
pub fn tick(s: &Shared, now_ms: u64) {
    let st = store(s);
    if !st.is_empty() {
        let out = st.tick(s.shard_id, s.shard_count, s.local_addr, now_ms);
        send_byes(s, out, now_ms);
    }
    let due = st.due_byes(now_ms);
    if !due.is_empty() {
        let mut extra = s.extra_out.borrow_mut();
        for o in due {
            extra.push((o.dst.into(), o.bytes));
        }
    }
}

/// `$dlg(attr)`.
pub(super) fn pv_dlg(s: &Shared, attr: &str) -> mlua::Result<Val> {
    let st = store(s);
    if attr == "count" {
        return Ok(Val::Int(st.active() as i64));
    }
    let Some(id) = current(s) else {
        return Ok(Val::Null);
    };
    let v = st.with(id, |d| {
        let i = |n: u64| Val::Int(n.min(i64::MAX as u64) as i64);
        let b = |v: &[u8]| {
            if v.is_empty() {
                Val::Null
            } else {
                Val::s(v)
            }
        };
        let rs = |r: &[Vec<u8>]| {
            if r.is_empty() {
                Val::Null
            } else {
                Val::Str(r.join(&b","[..]))
            }
        };
        match attr {
            "h_id" => i(u64::from(id.h_id)),
            "h_entry" => i(u64::from(id.h_entry)),
            "ref" => i(1),
            "state" => i(u64::from(d.state)),
            "callid" => b(&d.callid),
            "from_uri" => b(&d.caller.uri),
            "from_tag" => b(&d.caller.tag),
            "to_uri" => b(&d.callee.uri),
            "to_tag" => b(&d.callee.tag),
            "from_cseq" => Val::s(d.caller.cseq.to_string().as_bytes()),
            "to_cseq" => Val::s(d.callee.cseq.to_string().as_bytes()),
            "from_contact" => b(&d.caller.contact),
            "to_contact" => b(&d.callee.contact),
            "from_rs" => rs(&d.caller.route_set),
            "to_rs" => rs(&d.callee.route_set),
            "from_bindaddr" | "to_bindaddr" => Val::s(format!("udp:{}", d.bind).as_bytes()),
            "dflags" => i(0),
            "sflags" => i(u64::from(d.sflags)),
            "lifetime" => i(d.lifetime_s),
            "start_ts" => i(d.start_ts),
            "init_ts" => i(d.init_ts),
            _ => Val::Null,
        }
    });
    Ok(v.unwrap_or(Val::Null))
}

/// `$dlg_var(name)`.
pub(super) fn pv_var_get(s: &Shared, name: &str) -> mlua::Result<Val> {
    Ok(current(s)
        .and_then(|id| var_get(s, id, name.as_bytes()))
        .map(Val::Str)
        .unwrap_or(Val::Null))
}

/// `$dlg_var(name) = value` (None: unset); false without a dialog.
pub(super) fn pv_var_set(s: &Shared, name: &str, value: &Option<PvValue>) -> mlua::Result<bool> {
    let Some(id) = current(s) else {
        return Ok(false);
    };
    let text = match value {
        Some(PvValue::Str(b)) => Some(b.clone()),
        Some(PvValue::Int(n)) => Some(n.to_string().into_bytes()),
        None => None,
    };
    Ok(var_set(s, id, name.as_bytes(), text.as_deref()))
}
