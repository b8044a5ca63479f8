//! KSR.registrar: REGISTER processing and user location (Kamailio
//! `registrar` + `usrloc` modules).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.registrar.save(table, flags)` | `int (str, int)` | 1 inserted, 2 updated, 3 deleted, 4 returned; -1 error, -2 too many contacts |
//! | `KSR.registrar.save_uri(table, flags, uri)` | `int (str, int, str)` | as save, AOR from `uri` |
//! | `KSR.registrar.lookup(table)` | `int (str)` | 1 found (R-URI rewritten), -1 not found, -2 method not allowed, -3 error |
//! | `KSR.registrar.lookup_uri(table, uri)` | `int (str, str)` | as lookup, AOR from `uri` |
//! | `KSR.registrar.lookup_to_dset(table, uri)` | `int (str, str)` | as lookup; every contact appended as a branch, R-URI unchanged (`uri` "" = the R-URI) |
//! | `KSR.registrar.lookup_branches(table)` | `int (str)` | lookup on the R-URI and on each branch with only a URI: 1 if any found, else the last code |
//! | `KSR.registrar.registered(table)` | `int (str)` | 1 registered (R-URI AOR), -1 not |
//! | `KSR.registrar.registered_uri(table, uri)` | `int (str, str)` | 1 / -1 |
//! | `KSR.registrar.unregister(table, uri)` | `int (str, str)` | 1 removed, -1 bad AOR, -2 error, -3 not found |
//! | `KSR.registrar.unregister_ruid(table, uri, ruid)` | `int (str, str, str)` | as unregister, only the binding `ruid` |
//!
//! `save` flags (as Kamailio): 0x01 memory only (no database write), 0x02 no
//! reply, 0x04 one contact per AOR (the others are removed); 0x08 (no
//! expires ranges) has nothing to turn off here. The `[registrar]` settings
//! carry Kamailio's registrar/usrloc modparam names and defaults: a
//! too-short expires is raised to `min_expires` (`min_expires_mode = 1`
//! answers 423 with `Min-Expires`), no `max_expires`, no `max_contacts`
//! (beyond it: `503 Service Unavailable`, `P-Registrar-Error: Too many
//! registered contacts`, -2), Path ignored unless `use_path` (then
//! `path_mode`, default 2: 420 + `Unsupported: path` without `Supported:
//! path`), `lookup` appends the other contacts (`append_branches`) and does
//! no method filtering unless `method_filtering` (initial requests: only
//! contacts whose `Allow` had the method, else -2). Error replies carry
//! `P-Registrar-Error` with Kamailio's texts.
//! Differences from Kamailio: `contacts_per_aor_cap` (default 256) bounds an
//! AOR's bindings even with `max_contacts = 0` and is answered the same way;
//! a REGISTER carrying more Contacts than that cap is refused (503, -2,
//! `registrar.too_many_contacts`) before its Contacts are copied;
//! a lookup adds at most 11 branches; `unregister` returns 1 on success
//! (Kamailio documents 0, which Lua would read as success anyway; 1 keeps
//! the ">0 is success" rule); not implemented: `registered_flags`,
//! `registered_action`, `set_q_override`, `add_sock_hdr`,
//! `reg_fetch_contacts` / `reg_free_contacts` (`$ulc`), `reg_send_reply`,
//! and the `xavp_cfg` / `xavp_rcd` parameters.
//!
//! The location table is shared by every shard (lock-striped by AOR), so a
//! save or lookup runs where the message is; only usrloc db_mode 3, which
//! reads the AOR from the database first, suspends the route. `lookup` rewrites the R-URI to the best contact (highest q,
//! then most recent) and sets `$du` from `received` or the first Path hop.

use std::rc::Rc;

use mlua::{Lua, Table};

use super::services::{unix_now_s, OwnedContact, OwnedSave};
use super::{ffi, Shared};
use crate::sip::{Contact, HdrName, SipMsg, SipUri};
use crate::stats::Counter;
use crate::usrloc::{
    codes, error_headers, method_bit, methods_from_allow, ok_headers, LookupCode, ReplyOpts,
    SaveFlags,
};

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let reg = lua.create_table()?;
    // (the table argument is not read: one location table)
    ffi::fast!(lua, &reg, "__save_sync", shared, [], |s, a| {
        let flags = a.opt_int(2)?.unwrap_or(0);
        Ok(save_sync(s, flags as u32, None)
            .unwrap_or(super::TAKE_ASYNC_PATH)
            .into())
    })?;
    let s = shared.clone();
    reg.set(
        "__save_async",
        lua.create_async_function(move |_, (_table, flags): (mlua::Value, Option<i64>)| {
            let s = s.clone();
            async move { Ok(save(&s, flags.unwrap_or(0) as u32, None).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "save_uri",
        lua.create_async_function(move |_, (_table, flags, uri): (mlua::Value, i64, String)| {
            let s = s.clone();
            async move { Ok(save(&s, flags as u32, Some(uri)).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "lookup",
        lua.create_async_function(move |_, _table: mlua::Value| {
            let s = s.clone();
            async move { Ok(lookup(&s, None).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "lookup_uri",
        lua.create_async_function(move |_, (_table, uri): (mlua::Value, String)| {
            let s = s.clone();
            async move { Ok(lookup(&s, Some(uri)).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "lookup_to_dset",
        lua.create_async_function(move |_, (_table, uri): (mlua::Value, Option<String>)| {
            let s = s.clone();
            async move { Ok(lookup_to_dset(&s, uri.unwrap_or_default()).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "lookup_branches",
        lua.create_async_function(move |_, _table: mlua::Value| {
            let s = s.clone();
            async move { Ok(lookup_branches(&s).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "registered",
        lua.create_async_function(move |_, _table: mlua::Value| {
            let s = s.clone();
            async move { Ok(registered(&s, None).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "registered_uri",
        lua.create_async_function(move |_, (_table, uri): (mlua::Value, String)| {
            let s = s.clone();
            async move { Ok(registered(&s, Some(uri)).await) }
        })?,
    )?;
    let s = shared.clone();
    reg.set(
        "unregister",
        lua.create_async_function(
            move |_, (_table, uri, ruid): (mlua::Value, String, Option<String>)| {
                let s = s.clone();
                async move { Ok(unregister(&s, &uri, ruid).await) }
            },
        )?,
    )?;
    let s = shared.clone();
    reg.set(
        "unregister_ruid",
        lua.create_async_function(
            move |_, (_table, uri, ruid): (mlua::Value, String, String)| {
                let s = s.clone();
                async move { Ok(unregister(&s, &uri, Some(ruid)).await) }
            },
        )?,
    )?;
    ksr.set("registrar", reg)?;
    Ok(())
}

/// AOR of a URI per usrloc `use_domain`, or None when it has no user part.
fn aor_of(s: &Shared, uri: &[u8]) -> Option<String> {
    let u = SipUri::parse(uri).ok()?;
    let user = std::str::from_utf8(u.user?).ok()?;
    let host = std::str::from_utf8(u.host).ok()?;
    Some(s.services.aor(user, host))
}

/// usrloc's `socket` of a binding, "proto:ip:port" of the socket the
/// REGISTER came in on. A shard's REGISTERs come in on one or two sockets,
/// so the text is kept per thread for the last one instead of formatted
/// per REGISTER.
fn socket_text(proto: &'static str, local: std::net::SocketAddr) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(&'static str, std::net::SocketAddr, String)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((p, a, t)) if *p == proto && *a == local => t.clone(),
        _ => {
            let t = format!("{proto}:{}:{}", local.ip(), local.port());
            *last = Some((proto, local, t.clone()));
            t
        }
    })
}

fn lossy(b: &[u8]) -> String {
    crate::sip::lex::text(b).into_owned()
}

/// `build_save`'s marker for a REGISTER with more Contacts than
/// `contacts_per_aor_cap`: answered as `SaveError::TooManyContacts`.
const TOO_MANY_CONTACTS: (u16, &str) = (503, "Service Unavailable");

/// Extracts everything `save` needs from the REGISTER that came in over
/// `proto` (`Proto::name`) on `local`.
fn build_save(
    s: &Shared,
    msg: &SipMsg<'_>,
    proto: &'static str,
    local: std::net::SocketAddr,
    flags: u32,
    uri: Option<&str>,
) -> Result<OwnedSave, (u16, &'static str)> {
    let aor = match uri {
        Some(u) => aor_of(s, u.as_bytes()),
        None => msg.to().ok().and_then(|t| aor_of(s, t.uri)),
    }
    .ok_or((400, "Bad Request - bad To URI"))?;
    let mut contacts = Vec::new();
    // Checked before copying: a REGISTER with thousands of Contacts is
    // refused at the first one beyond what one AOR may ever hold.
    let cap = s.services.registrar.contacts_per_aor_cap.max(1);
    for c in msg.contacts() {
        if contacts.len() >= cap {
            s.counters.incr(crate::stats::Counter::TooManyContacts);
            return Err(TOO_MANY_CONTACTS);
        }
        match c {
            Ok(Contact::Star) => contacts.push(OwnedContact {
                uri: "*".into(),
                ..Default::default()
            }),
            Ok(Contact::Addr(na)) => {
                let c2 = Contact::Addr(na);
                let instance = na
                    .params
                    .get(b"+sip.instance")
                    .flatten()
                    .map(|v| lossy(v).trim_matches('"').to_string());
                let reg_id = na
                    .params
                    .get(b"reg-id")
                    .flatten()
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                contacts.push(OwnedContact {
                    uri: lossy(na.uri),
                    expires_s: c2.expires(),
                    q: c2.q(),
                    instance,
                    reg_id,
                });
            }
            Err(_) => return Err((400, "Bad Request - bad Contact")),
        }
    }
    let expires_hdr_s = msg
        .expires()
        .map_err(|_| (400, "Bad Request - bad Expires"))?;
    let cseq = msg.cseq().map_err(|_| (400, "Bad Request - bad CSeq"))?;
    let path: Vec<&[u8]> = msg.headers(HdrName::Path).collect();
    let path =
        (!path.is_empty()).then(|| path.iter().map(|p| lossy(p)).collect::<Vec<_>>().join(","));
    let path_supported = msg.headers(HdrName::Supported).any(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"path"))
    });
    let allow: Vec<&[u8]> = msg.headers(HdrName::Allow).collect();
    let methods = (!allow.is_empty()).then(|| methods_from_allow(allow.iter().copied()));
    Ok(OwnedSave {
        aor,
        contacts,
        expires_hdr_s,
        call_id: lossy(msg.call_id().unwrap_or(b"")),
        cseq: cseq.num,
        user_agent: lossy(msg.user_agent().unwrap_or(b"")),
        received: None,
        path,
        path_supported,
        socket: Some(socket_text(proto, local)),
        methods,
        flags,
    })
}

/// Builds the save request, or answers (and returns the code) when the
/// REGISTER cannot be saved at all.
fn prepare_save(s: &Rc<Shared>, flags: u32, uri: Option<&str>) -> Result<OwnedSave, i32> {
    let built = s.with_msg(|m| {
        let local = m.local;
        // KSR.nathelper.fix_nated_register(): the source address becomes
        // the contacts' `received` (Kamailio's received_avp).
        build_save(s, &m.msg(), m.proto.name(), local, flags, uri).map(|mut r| {
            r.received = m.nat_received.clone();
            if m.proto.is_stream() {
                // A contact registered over a connection is reached over
                // that connection: its source (and transport) is the
                // contact's `received`, which lookup() makes the `$du`.
                let mut hp = Vec::with_capacity(48);
                super::tm::push_host_port(&mut hp, m.src);
                if r.received.is_none() {
                    r.received = Some(format!(
                        "sip:{};transport={}",
                        String::from_utf8_lossy(&hp),
                        m.proto.name()
                    ));
                }
            }
            r
        })
    });
    match built {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(TOO_MANY_CONTACTS)) => {
            // Answered as usrloc answers too many contacts (503,
            // P-Registrar-Error, Retry-After), returning -2.
            let max = s.services.registrar.contacts_per_aor_cap.max(1) as u32;
            let e = crate::usrloc::SaveError::TooManyContacts { max };
            Err(finish_save(s, flags, Some(Err(e)), false))
        }
        Ok(Err((code, reason))) => {
            if flags & SaveFlags::NO_REPLY == 0 {
                let _ = s.with_msg(|m| super::sl::reply_counted(s, m, code, reason.as_bytes()));
            }
            let _ = s.with_msg(|m| m.last_error = Some((code, reason)));
            Err(codes::SAVE_ERROR)
        }
        Err(_) => Err(codes::SAVE_ERROR),
    }
}

/// Replies and persists after the save (or its failure).
fn finish_save(
    s: &Rc<Shared>,
    flags: u32,
    result: Option<Result<crate::usrloc::SaveOutcome, crate::usrloc::SaveError>>,
    written: bool,
) -> i32 {
    let svc = s.services.clone();
    let Some(result) = result else {
        let _ = s.with_msg(|m| m.last_error = Some((500, "Server Internal Error")));
        if flags & SaveFlags::NO_REPLY == 0 {
            let _ = s.with_msg(|m| super::sl::reply_counted(s, m, 500, b"Server Internal Error"));
        }
        return codes::SAVE_ERROR;
    };
    match result {
        Ok(outcome) => {
            if outcome.code() == codes::SAVE_INSERTED {
                s.counters.incr(Counter::UlRegistered);
            }
            if !written
                && matches!(svc.registrar.db_mode, 1 | 3)
                && flags & SaveFlags::MEM_ONLY == 0
            {
                let _ = svc.write_through(&outcome, s.clone());
            }
            if flags & SaveFlags::NO_REPLY == 0 {
                let headers = ok_headers(&outcome, &ReplyOpts::default());
                let _ = s.with_msg(|m| {
                    m.reply_headers.extend_from_slice(headers.as_bytes());
                    super::sl::reply_counted(s, m, 200, b"OK")
                });
            }
            outcome.code()
        }
        Err(e) => {
            let headers = error_headers(&e, svc.location_rules.registrar_params());
            let (status, reason) = (e.status(), e.reason());
            let _ = s.with_msg(|m| {
                m.last_error = Some((status, reason));
                if flags & SaveFlags::NO_REPLY == 0 {
                    m.reply_headers.extend_from_slice(headers.as_bytes());
                    super::sl::reply_counted(s, m, status, reason.as_bytes());
                }
            });
            e.code()
        }
    }
}

/// `KSR.registrar.save(table, flags)` as the Lua binding joins it (see
/// `FAST_PATHS` in mod.rs): without waiting when the database is not in the
/// loop.
pub(super) async fn save_kemi(s: &Rc<Shared>, flags: u32) -> i32 {
    match save_sync(s, flags, None) {
        Some(rc) => rc,
        None => save(s, flags, None).await,
    }
}

/// `save` without suspending the route: whenever the database is not in
/// the loop (db_mode 0 and 2, or no database). `None`: take the async path.
fn save_sync(s: &Rc<Shared>, flags: u32, uri: Option<&str>) -> Option<i32> {
    let svc = s.services.clone();
    if svc.registrar.db_mode == 3 || (svc.registrar.db_mode == 1 && svc.db.is_some()) {
        return None;
    }
    let req = match prepare_save(s, flags, uri) {
        Ok(r) => r,
        Err(code) => return Some(code),
    };
    let result = svc.save(&req);
    Some(finish_save(s, flags, Some(result), false))
}

async fn save(s: &Rc<Shared>, flags: u32, uri: Option<String>) -> i32 {
    let svc = s.services.clone();
    let req = match prepare_save(s, flags, uri.as_deref()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let aor = req.aor.clone();
    // db_mode 3: one save of an AOR at a time on this node, from the
    // database read to the database write.
    let Some(_gate) = svc.db3_save_gate(&aor).await else {
        return finish_save(s, flags, None, false);
    };
    // db_mode 3: the database's bindings, not memory, are what save updates.
    let result = if svc.refresh_from_db(&aor).await {
        Some(svc.save(&req))
    } else {
        None
    };
    // db_mode 1/3 (write-through): the reply waits (at most `[auth]
    // db_timeout_ms`) until the database has the change, so an acknowledged
    // registration survives a crash. A write that fails or is late is kept
    // for retry and the REGISTER is still answered from memory.
    let mut written = false;
    if let Some(Ok(outcome)) = &result {
        if matches!(svc.registrar.db_mode, 1 | 3) && flags & SaveFlags::MEM_ONLY == 0 {
            written = true;
            if let Some(rx) = svc.write_through(outcome, s.clone()) {
                let wait = std::time::Duration::from_millis(svc.auth.db_timeout_ms);
                let _ = crate::exec::timeout(wait, rx).await;
            }
        }
    }
    finish_save(s, flags, result, written)
}

/// Most branches one lookup adds (the R-URI's contact plus these): tm's
/// default `max_branches` is 12.
const LOOKUP_MAX_BRANCHES: usize = 11;

/// The contacts of the AOR of `uri` (the R-URI when `None`) as branch
/// specs, best first; `Err` is the lookup return code.
async fn lookup_specs(s: &Rc<Shared>, uri: Option<Vec<u8>>) -> Result<Vec<super::BranchSpec>, i32> {
    let svc = s.services.clone();
    let target = s.with_msg(|m| {
        let ruri = match &uri {
            Some(u) => u.clone(),
            None => m.ruri().map(<[u8]>::to_vec).unwrap_or_default(),
        };
        // registrar method_filtering: initial requests only; 0 = no filter
        let bit = if svc.registrar.method_filtering && !super::siputils::has_totag(m) {
            m.msg().method().map(method_bit).unwrap_or(0)
        } else {
            0
        };
        (aor_of(s, &ruri), bit)
    });
    let Ok((Some(aor), bit)) = target else {
        return Err(codes::LOOKUP_NOT_FOUND);
    };
    if !svc.refresh_from_db(&aor).await {
        return Err(codes::LOOKUP_INTERNAL_ERROR);
    }
    let (code, contacts) = svc.lookup(&aor, bit);
    if code != LookupCode::Found {
        return Err(code.code());
    }
    if contacts.is_empty() {
        return Err(codes::LOOKUP_NOT_FOUND);
    }
    let spec = |c: &crate::usrloc::Ucontact| super::BranchSpec {
        uri: c.contact.as_bytes().to_vec(),
        dst_uri: contact_dst(c),
        path: c.path.as_ref().map(|p| p.as_bytes().to_vec()),
        q: c.q,
        bflags: c.cflags,
    };
    Ok(contacts
        .iter()
        .take(LOOKUP_MAX_BRANCHES + 1)
        .map(spec)
        .collect())
}

/// Kamailio's lookup: the R-URI becomes the best contact (highest q, most
/// recent) and every other contact is appended as a branch, so t_relay()
/// forks to all of them (parallel within a q value, serial across).
fn set_ruri_branch(m: &mut super::MsgCtx, main: super::BranchSpec) {
    m.new_ruri = Some(main.uri);
    m.dst_uri = main.dst_uri;
    m.path = main.path;
    m.ruri_q = main.q;
    m.bflags |= main.bflags;
}

pub(super) async fn lookup(s: &Rc<Shared>, uri: Option<String>) -> i32 {
    let mut specs = match lookup_specs(s, uri.map(String::into_bytes)).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let main = specs.remove(0);
    let append = s.services.registrar.append_branches;
    let _ = s.with_msg(|m| {
        set_ruri_branch(m, main);
        if append {
            m.branches.extend(specs);
        }
    });
    codes::LOOKUP_FOUND
}

/// `lookup_to_dset`: every contact is appended as a branch; the R-URI stays.
async fn lookup_to_dset(s: &Rc<Shared>, uri: String) -> i32 {
    let uri = (!uri.is_empty()).then(|| uri.into_bytes());
    let specs = match lookup_specs(s, uri).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let _ = s.with_msg(|m| m.branches.extend(specs));
    codes::LOOKUP_FOUND
}

/// `lookup_branches`: `lookup` on the R-URI, then on every branch that
/// carries nothing but its URI (no `$du`, Path or flags): such a branch
/// becomes its best contact, the others are appended. 1 when any lookup
/// found contacts, else the last lookup's code.
async fn lookup_branches(s: &Rc<Shared>) -> i32 {
    let Ok(start) = s.with_msg(|m| m.branches.len()) else {
        return codes::LOOKUP_INTERNAL_ERROR;
    };
    let mut ret = lookup(s, None).await;
    let mut found = ret == codes::LOOKUP_FOUND;
    for i in 0..start {
        let clean = s.with_msg(|m| {
            m.branches
                .get(i)
                .filter(|b| b.dst_uri.is_none() && b.path.is_none() && b.bflags == 0)
                .map(|b| b.uri.clone())
        });
        let Ok(Some(uri)) = clean else {
            continue;
        };
        match lookup_specs(s, Some(uri)).await {
            Ok(mut specs) => {
                found = true;
                ret = codes::LOOKUP_FOUND;
                let main = specs.remove(0);
                let _ = s.with_msg(|m| {
                    if let Some(b) = m.branches.get_mut(i) {
                        *b = main;
                    }
                    m.branches.extend(specs);
                });
            }
            Err(code) => ret = code,
        }
    }
    if found {
        codes::LOOKUP_FOUND
    } else {
        ret
    }
}

/// Where a contact's requests go: the first Path hop, else the NAT
/// `received` address, else the contact itself (`None`).
fn contact_dst(c: &crate::usrloc::Ucontact) -> Option<Vec<u8>> {
    let first_path = c
        .path
        .as_deref()
        .and_then(|p| p.split(',').next())
        .map(|h| {
            h.trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string()
        });
    match (first_path, &c.received) {
        (Some(p), _) if !p.is_empty() => Some(p.into_bytes()),
        (_, Some(r)) => Some(r.as_bytes().to_vec()),
        _ => None,
    }
}

pub(super) async fn registered(s: &Rc<Shared>, uri: Option<String>) -> i32 {
    let svc = s.services.clone();
    let aor = s.with_msg(|m| {
        let ruri = match &uri {
            Some(u) => u.as_bytes().to_vec(),
            None => m.ruri().map(<[u8]>::to_vec).unwrap_or_default(),
        };
        aor_of(s, &ruri)
    });
    let Ok(Some(aor)) = aor else {
        return codes::REGISTERED_FALSE;
    };
    if !svc.refresh_from_db(&aor).await {
        return codes::REGISTERED_FALSE;
    }
    if svc.registered(&aor) {
        codes::REGISTERED_TRUE
    } else {
        codes::REGISTERED_FALSE
    }
}

async fn unregister(s: &Rc<Shared>, uri: &str, ruid: Option<String>) -> i32 {
    let svc = s.services.clone();
    let Some(aor) = aor_of(s, uri.as_bytes()) else {
        return codes::UNREGISTER_BAD_AOR;
    };
    if !svc.refresh_from_db(&aor).await {
        return codes::UNREGISTER_ERROR;
    }
    let what = match ruid.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => crate::usrloc::Unregister::Ruid(r),
        None => crate::usrloc::Unregister::All,
    };
    match svc.unregister_what(&aor, what) {
        Ok(ruids) => {
            if matches!(svc.registrar.db_mode, 1 | 3) {
                if let Some(db) = svc.db.clone() {
                    let _ = svc.spawn_db_write(db, Vec::new(), ruids, s.clone());
                }
            }
            1
        }
        Err(code) => code,
    }
}

/// `ul.*` control commands. The table is shared; a dump from shard `i`
/// covers the stripes shard `i` looks after, so the control plane's merge of
/// every shard's dump lists each AOR once.
pub fn ul_json(
    svc: &super::services::Services,
    cmd: crate::shard::control::UlCmd,
) -> serde_json::Value {
    use crate::shard::control::UlCmd;
    let now = unix_now_s();
    let contact_json = |c: &crate::usrloc::Ucontact| {
        serde_json::json!({
            "contact": c.contact,
            "expires": c.remaining_s(now),
            "q": c.q.map(|q| q as f64 / 1000.0).unwrap_or(-1.0),
            "callid": c.callid,
            "cseq": c.cseq,
            "user_agent": c.user_agent,
            "received": c.received,
            "path": c.path,
            "socket": c.socket,
            "ruid": c.ruid,
            "instance": c.instance,
            "reg_id": c.reg_id,
            "last_modified": c.last_modified_unix_s,
        })
    };
    match cmd {
        UlCmd::Dump => {
            let table = &svc.tables.location;
            let mut aors = Vec::new();
            for i in table.parts_of(svc.shard_id, svc.shard_count) {
                let loc = table.at(i);
                aors.extend(loc.dump().map(|r| serde_json::json!({ "aor": r.aor, "contacts": r.valid(now).map(contact_json).collect::<Vec<_>>() })));
            }
            serde_json::json!({ "aors": aors })
        }
        UlCmd::Lookup { aor } => {
            let loc = svc.tables.location.get(aor.as_bytes());
            match loc.lookup(&aor, now) {
                Some(cs) => {
                    serde_json::json!({ "aor": aor, "contacts": cs.into_iter().map(contact_json).collect::<Vec<_>>() })
                }
                None => serde_json::Value::Null,
            }
        }
        UlCmd::Rm { aor } => {
            let removed = svc
                .tables
                .location
                .get(aor.as_bytes())
                .unregister(&aor, crate::usrloc::Unregister::All)
                .map(|v| v.len())
                .unwrap_or(0);
            serde_json::json!({ "removed": removed })
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::kemi::testutil::{engine, global_int, request, run};

    #[test]
    fn socket_text_follows_the_protocol_and_address() {
        let a: std::net::SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let b: std::net::SocketAddr = "[::1]:5062".parse().unwrap();
        assert_eq!(super::socket_text("udp", a), "udp:127.0.0.1:5060");
        assert_eq!(super::socket_text("udp", a), "udp:127.0.0.1:5060");
        assert_eq!(super::socket_text("tcp", a), "tcp:127.0.0.1:5060");
        assert_eq!(super::socket_text("tcp", b), "tcp:::1:5062");
        assert_eq!(super::socket_text("udp", a), "udp:127.0.0.1:5060");
    }

    const SCRIPT: &str = r#"
function ksr_request_route()
    if KSR.is_REGISTER() then
        rc = KSR.registrar.save("location", 2)
        return
    end
    if MODE == "dset" then
        rc = KSR.registrar.lookup_to_dset("location", "sip:bob@example.com")
    elseif MODE == "branches" then
        KSR.corex.append_branch_uri("sip:bob@example.com")
        KSR.corex.append_branch_uri("sip:nobody@example.com")
        rc = KSR.registrar.lookup_branches("location")
    elseif MODE == "unregister_ruid" then
        rc = KSR.registrar.unregister_ruid("location", "sip:bob@example.com", RUID)
        after = KSR.registrar.registered_uri("location", "sip:bob@example.com")
    else
        rc = KSR.registrar.lookup("location")
    end
end
"#;

    fn register_bob(eng: &crate::kemi::Engine) {
        let reg = request(
            "REGISTER sip:example.com SIP/2.0",
            None,
            &["Contact: <sip:bob@192.0.2.20>;q=0.9, <sip:bob@192.0.2.21>;q=0.5"],
        );
        run(eng, &reg);
        assert_eq!(global_int(eng, "rc"), 1);
    }

    fn set_mode(eng: &crate::kemi::Engine, mode: &str) {
        eng.lua().globals().set("MODE", mode).unwrap();
    }

    #[test]
    fn lookup_to_dset_keeps_the_ruri() {
        let eng = engine(SCRIPT);
        register_bob(&eng);
        set_mode(&eng, "dset");
        let (m, _) = run(
            &eng,
            &request("INVITE sip:carol@example.com SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(m.new_ruri, None);
        let uris: Vec<&[u8]> = m.branches.iter().map(|b| b.uri.as_slice()).collect();
        assert_eq!(uris, [&b"sip:bob@192.0.2.20"[..], b"sip:bob@192.0.2.21"]);
        // an AOR without bindings: -1, no branch
        let eng = engine(SCRIPT);
        set_mode(&eng, "dset");
        let (m, _) = run(
            &eng,
            &request("INVITE sip:carol@example.com SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&eng, "rc"), -1);
        assert!(m.branches.is_empty());
    }

    #[test]
    fn lookup_branches_resolves_clean_branches() {
        let eng = engine(SCRIPT);
        register_bob(&eng);
        set_mode(&eng, "branches");
        // the R-URI (carol) is not registered, the first branch (bob) is,
        // the second (nobody) is not: found overall
        let (m, _) = run(
            &eng,
            &request("INVITE sip:carol@example.com SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&eng, "rc"), 1);
        let uris: Vec<&[u8]> = m.branches.iter().map(|b| b.uri.as_slice()).collect();
        assert_eq!(
            uris,
            [
                &b"sip:bob@192.0.2.20"[..],
                b"sip:nobody@example.com",
                b"sip:bob@192.0.2.21"
            ]
        );
        // nothing registered: the last lookup's code
        let eng = engine(SCRIPT);
        set_mode(&eng, "branches");
        run(
            &eng,
            &request("INVITE sip:carol@example.com SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&eng, "rc"), -1);
    }

    /// A REGISTER with 5000 Contacts is refused (503, save -2, counted) at
    /// the first Contact beyond `contacts_per_aor_cap`, before they are
    /// all copied; nothing is saved.
    #[test]
    fn thousands_of_contacts_are_refused_before_copying() {
        let script = r#"
function ksr_request_route()
    rc = KSR.registrar.save("location", 0)
end
"#;
        let eng = engine(script);
        let list: Vec<String> = (0..5000).map(|i| format!("sip:{i}@a")).collect();
        let contact = format!("Contact: {}", list.join(","));
        let register = request("REGISTER sip:example.com SIP/2.0", None, &[&contact]);
        let (m, _) = run(&eng, &register);
        assert_eq!(global_int(&eng, "rc"), -2);
        let o = m.out.first().expect("a reply");
        let reply = String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]);
        assert!(reply.starts_with("SIP/2.0 503 "), "{reply}");
        assert!(
            reply.contains("P-Registrar-Error: Too many registered contacts\r\n"),
            "{reply}"
        );
        let c = eng.shared().counters.values();
        assert_eq!(c[crate::stats::Counter::TooManyContacts as usize], 1);
        let (_, found) = eng.shared().services.lookup("sip:0@example.com", u32::MAX);
        assert!(found.is_empty());
        // A REGISTER within the cap is saved.
        let ok = request(
            "REGISTER sip:example.com SIP/2.0",
            None,
            &["Contact: <sip:bob@192.0.2.20>"],
        );
        run(&eng, &ok);
        assert_eq!(global_int(&eng, "rc"), 1);
    }

    #[test]
    fn method_filtering_and_append_branches() {
        use crate::config::{AuthConfig, RegistrarConfig};
        use crate::kemi::testutil::engine_with;
        let with = |method_filtering, append_branches| {
            let reg = RegistrarConfig {
                method_filtering,
                append_branches,
                ..RegistrarConfig::default()
            };
            let eng = engine_with(SCRIPT, &AuthConfig::default(), &reg);
            let register = request(
                "REGISTER sip:example.com SIP/2.0",
                None,
                &[
                    "Contact: <sip:bob@192.0.2.20>;q=0.9, <sip:bob@192.0.2.21>;q=0.5",
                    "Allow: INVITE, ACK, BYE",
                ],
            );
            run(&eng, &register);
            assert_eq!(global_int(&eng, "rc"), 1);
            set_mode(&eng, "lookup");
            eng
        };
        let message = request("MESSAGE sip:bob@example.com SIP/2.0", None, &[]);
        let in_dialog = request("MESSAGE sip:bob@example.com SIP/2.0", Some("t"), &[]);
        // Kamailio's defaults: no method filtering, other contacts appended
        let eng = with(false, true);
        let (m, _) = run(&eng, &message);
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(m.new_ruri.as_deref(), Some(&b"sip:bob@192.0.2.20"[..]));
        assert_eq!(m.branches.len(), 1);
        // method_filtering: MESSAGE was not in Allow (initial request only)
        let eng = with(true, true);
        run(&eng, &message);
        assert_eq!(global_int(&eng, "rc"), -2);
        run(&eng, &in_dialog);
        assert_eq!(global_int(&eng, "rc"), 1);
        // append_branches off: the R-URI only
        let eng = with(false, false);
        let (m, _) = run(&eng, &message);
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(m.new_ruri.as_deref(), Some(&b"sip:bob@192.0.2.20"[..]));
        assert!(m.branches.is_empty());
    }

    #[test]
    fn unregister_ruid_removes_one_binding() {
        let eng = engine(SCRIPT);
        register_bob(&eng);
        let svc = &eng.shared().services;
        let (_, contacts) = svc.lookup("bob", u32::MAX);
        assert_eq!(contacts.len(), 2);
        let ruid = contacts[0].ruid.clone();
        eng.lua().globals().set("RUID", ruid.as_str()).unwrap();
        set_mode(&eng, "unregister_ruid");
        run(&eng, &request("OPTIONS sip:example.com SIP/2.0", None, &[]));
        assert_eq!(global_int(&eng, "rc"), 1);
        assert_eq!(global_int(&eng, "after"), 1);
        let (_, left) = svc.lookup("bob", u32::MAX);
        assert_eq!(left.len(), 1);
        assert_ne!(left[0].ruid, ruid);
        // the same ruid again: not found
        run(&eng, &request("OPTIONS sip:example.com SIP/2.0", None, &[]));
        assert_eq!(global_int(&eng, "rc"), -3);
    }
}
