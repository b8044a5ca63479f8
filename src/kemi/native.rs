//! The native route: the bundled default script (etc/sipshard.lua) written
//! in Rust against the same KSR functions, for `[core] route = "native"`
//! (`sipshard run --route native`).
//!
//! Owns: the request, reply and failure routes of etc/sipshard.lua, one Rust
//! function per Lua function of that script (same names, same order of
//! checks, same constants), so that route time and throughput can be
//! compared with the Lua route the way Kamailio's KEMI performance table
//! compares a native `kamailio.cfg` with Lua and Python.
//!
//! Never: its own logic for what a KSR function does. Every step calls the
//! Rust function behind the `KSR.x.y` the script calls (`core::is_method_kind`
//! for `KSR.is_INVITE()`, `auth::auth_check` for `KSR.auth_db.auth_check`,
//! ...); the Lua bindings call the same functions. A change to the default
//! script must be made here too (tests/native_route.rs runs the same
//! scenarios against both).
//!
//! Exit semantics: `KSR.x.exit()` is `Err(Stop::Exit)` propagated with `?`
//! to the route's end, where it is a normal end ([`RouteOutcome::Done`]).
//! An error from a KSR function (only "called outside of a SIP route", which
//! cannot happen here) ends the route as a script error would.
//!
//! Script-level settings: the Lua script's only one is `REALM` (empty: the
//! From domain); [`REALM`] is the same. Everything else (the database, the
//! auth and registrar parameters, `is_myself` names) comes from the server
//! config through the KSR functions, for both routes alike.
//!
//! [`RouteOutcome::Done`]: super::RouteOutcome::Done

#![forbid(unsafe_code)]

use std::rc::Rc;

use mlua::Lua;

use super::pv::Val;
use super::{auth, core, hdr, maxfwd, pv, registrar, rr, siputils, sl, tm, LuaCall, Shared};
use crate::sip::Method;

/// A native route: started for the message in `Shared::cur`, polled by
/// [`super::RouteRun`] like a Lua route's coroutine.
pub(crate) type Route = fn(Rc<Shared>, Lua) -> LuaCall;

/// etc/sipshard.lua's `REALM`: empty, the From domain is the realm.
const REALM: &str = "";

/// Why a route stopped early.
enum Stop {
    /// `KSR.x.exit()`.
    Exit,
    /// A KSR function failed as it would have raised a Lua error.
    Error(mlua::Error),
}

impl From<mlua::Error> for Stop {
    fn from(e: mlua::Error) -> Stop {
        Stop::Error(e)
    }
}

/// `Ok`: go on after the sub-route (Lua's `return 1`); `Err`: unwind.
type Flow = Result<(), Stop>;

/// `return KSR.x.exit()`.
fn exit() -> Flow {
    Err(Stop::Exit)
}

/// The route wrapper's rule: an exit is a normal end.
fn end(r: Flow) -> mlua::Result<()> {
    match r {
        Ok(()) | Err(Stop::Exit) => Ok(()),
        Err(Stop::Error(e)) => Err(e),
    }
}

/// `ksr_request_route()`.
pub(crate) fn request_route(s: Rc<Shared>, lua: Lua) -> LuaCall {
    Box::pin(async move { end(ksr_request_route(&s, &lua).await) })
}

/// `ksr_reply_route()`: `return 1`.
pub(crate) fn reply_route(_s: Rc<Shared>, _lua: Lua) -> LuaCall {
    Box::pin(async { Ok(()) })
}

/// `ksr_failure_manage()`, the INVITE failure route.
fn failure_manage(s: Rc<Shared>, _lua: Lua) -> LuaCall {
    Box::pin(async move { end(ksr_failure_manage(&s)) })
}

/// The routes the script names in `KSR.tm.t_on_*` calls.
pub(crate) fn named(name: &str) -> Option<Route> {
    match name {
        "ksr_failure_manage" => Some(failure_manage),
        _ => None,
    }
}

fn is(s: &Shared, method: Method) -> mlua::Result<bool> {
    core::is_method_kind(s, method)
}

/// `KSR.pv.get(name) == nil`.
fn pv_is_null(s: &Shared, lua: &Lua, name: &str) -> mlua::Result<bool> {
    Ok(matches!(pv::get_val(lua, s, name)?, Val::Null))
}

async fn ksr_request_route(s: &Rc<Shared>, lua: &Lua) -> Flow {
    // per request initial checks
    ksr_route_reqinit(s, lua).await?;

    // CANCEL processing: relayed to the branches of its INVITE
    if is(s, Method::Cancel)? {
        if tm::t_check_trans(s) > 0 {
            ksr_route_relay(s, lua)?;
        }
        return exit();
    }

    // handle retransmissions: absorbed (or answered again) by their
    // transaction
    if !is(s, Method::Ack)? {
        if tm::t_precheck_trans(s)? > 0 {
            tm::t_check_trans(s);
            return exit();
        }
        if tm::t_check_trans(s) == 0 {
            return exit();
        }
    }

    // handle requests within SIP dialogs
    ksr_route_withindlg(s, lua)?;

    // -- only initial requests (no To tag) from here

    // authentication
    ksr_route_auth(s, lua).await?;

    // record routing for dialog forming requests (in case they are routed)
    // - remove preloaded route headers
    hdr::remove(s, b"Route")?;
    // if INVITE or SUBSCRIBE
    if core::is_method_in(s, b"IS")? {
        rr::record_route(s)?;
    }

    // handle registrations
    ksr_route_registrar(s).await?;

    // dispatch requests to foreign domains
    ksr_route_sipout(s, lua)?;

    // -- requests for my local domains

    if pv_is_null(s, lua, "$rU")? {
        // request with no Username in RURI
        sl::send_reply(s, 484, b"Address Incomplete");
        return exit();
    }

    // user location service
    ksr_route_location(s, lua).await
}

/// Stateful forwarding to the R-URI (or $du) and every branch; a failure
/// route for INVITE. Always ends the route.
fn ksr_route_relay(s: &Rc<Shared>, lua: &Lua) -> Flow {
    if is(s, Method::Invite)? {
        tm::t_on(s, 1, "ksr_failure_manage")?;
    }
    if tm::t_relay(lua, s, None) < 0 {
        sl::sl_reply_error(s)?;
    }
    exit()
}

/// Per SIP request initial checks.
async fn ksr_route_reqinit(s: &Rc<Shared>, lua: &Lua) -> Flow {
    if s.with_msg(|m| maxfwd::process_maxfwd(m, 10))? < 0 {
        sl::send_reply(s, 483, b"Too Many Hops");
        return exit();
    }

    // keepalive pings for this server (any OPTIONS without a To tag for
    // myself, unless it asks for a registered user: that one is relayed)
    if is(s, Method::Options)?
        && core::is_myself_ruri(s)?
        && siputils::rc(s.with_msg(|m| siputils::has_totag(m))?) < 0
        && (pv_is_null(s, lua, "$rU")? || registrar::registered(s, None).await < 0)
    {
        sl::send_reply(s, 200, b"Keepalive");
        return exit();
    }
    Ok(())
}

/// Requests within SIP dialogs.
fn ksr_route_withindlg(s: &Rc<Shared>, lua: &Lua) -> Flow {
    if siputils::rc(s.with_msg(|m| siputils::has_totag(m))?) < 0 {
        return Ok(());
    }

    // sequential request within a dialog should
    // take the path determined by record-routing
    if rr::loose_route_kemi(s)? > 0 {
        ksr_route_relay(s, lua)?;
        return exit();
    }
    if is(s, Method::Ack)? {
        if tm::t_check_trans(s) > 0 {
            // no loose-route, but stateful ACK
            ksr_route_relay(s, lua)?;
        }
        return exit();
    }
    sl::send_reply(s, 404, b"Not here");
    exit()
}

/// SIP registrations (authenticated by `ksr_route_auth`).
async fn ksr_route_registrar(s: &Rc<Shared>) -> Flow {
    if !is(s, Method::Register)? {
        return Ok(());
    }
    if registrar::save_kemi(s, 0).await < 0 {
        sl::sl_reply_error(s)?;
    }
    exit()
}

/// User location service.
async fn ksr_route_location(s: &Rc<Shared>, lua: &Lua) -> Flow {
    let rc = registrar::lookup(s, None).await;
    if rc < 0 {
        tm::t_newtran(s);
        if rc == -1 || rc == -3 {
            tm::t_reply(s, 404, b"Not Found");
        } else if rc == -2 {
            tm::t_reply(s, 405, b"Method Not Allowed");
        }
        return exit();
    }
    ksr_route_relay(s, lua)
}

/// The realm: [`REALM`], or the From domain.
fn ksr_realm(s: &Shared, lua: &Lua) -> mlua::Result<String> {
    if !REALM.is_empty() {
        return Ok(REALM.to_string());
    }
    let fd = pv::get_val(lua, s, "$fd")?.into_bytes().unwrap_or_default();
    Ok(String::from_utf8_lossy(&fd).into_owned())
}

/// User authentication: REGISTER (401, Authorization) and requests from
/// local users (407, Proxy-Authorization). The Lua script's branch for a
/// server without `KSR.auth_db` has no counterpart: sipshard always has it.
async fn ksr_route_auth(s: &Rc<Shared>, lua: &Lua) -> Flow {
    if is(s, Method::Register)? || core::is_myself_furi(s)? {
        let realm = ksr_realm(s, lua)?;
        if auth::auth_check(s, &realm, 1).await < 0 {
            auth::auth_challenge(s, &realm, 1);
            return exit();
        }
        // user authenticated - remove auth header
        auth::consume_credentials(s)?;
    }
    if is(s, Method::Register)? {
        return Ok(());
    }

    // if caller is not local subscriber, then check if it calls
    // a local destination, otherwise deny, not an open relay here
    if !core::is_myself_furi(s)? && !core::is_myself_ruri(s)? {
        sl::send_reply(s, 403, b"Not relaying");
        return exit();
    }
    Ok(())
}

/// Routing to foreign domains.
fn ksr_route_sipout(s: &Rc<Shared>, lua: &Lua) -> Flow {
    if core::is_myself_ruri(s)? {
        return Ok(());
    }
    ksr_route_relay(s, lua)
}

/// `ksr_failure_manage()`: the final reply (the best one of every branch)
/// goes back to the caller.
fn ksr_failure_manage(s: &Shared) -> Flow {
    if tm::t_is_canceled(s) > 0 {
        return Ok(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, engine_native, run, LOCAL};
    use super::super::RouteOutcome;
    use crate::config::DEFAULT_SCRIPT;

    fn req(method: &str, ruri: &str, from: &str, to_tag: bool, extra: &str) -> Vec<u8> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let to_tag = if to_tag { ";tag=t1" } else { "" };
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-n{n}\r\n\
             From: <{from}>;tag=f1\r\nTo: <{ruri}>{to_tag}\r\n\
             Call-ID: native-{n}@192.0.2.9\r\nCSeq: 1 {method}\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// Outcome and every datagram's first line (and for a challenge, its
    /// header names).
    fn observe(eng: &super::super::Engine, msg: &[u8]) -> (RouteOutcome, Vec<String>) {
        let (m, outcome) = run(eng, msg);
        let mut sent: Vec<Vec<u8>> = m
            .out
            .iter()
            .map(|o| m.out_buf[o.start as usize..o.end as usize].to_vec())
            .collect();
        // stateful replies (t_reply) leave through the transaction layer
        eng.drain_tm(|_, bytes| sent.push(bytes.to_vec()));
        let mut out: Vec<String> = sent
            .iter()
            .map(|b| {
                let b = String::from_utf8_lossy(b);
                let first = b.lines().next().unwrap_or("").to_string();
                let challenge = b.lines().any(|l| l.starts_with("WWW-Authenticate: Digest"));
                let proxy = b
                    .lines()
                    .any(|l| l.starts_with("Proxy-Authenticate: Digest"));
                format!("{first} www={challenge} proxy={proxy}")
            })
            .collect();
        out.sort();
        (outcome, out)
    }

    /// The native route answers every request the way etc/sipshard.lua does.
    #[test]
    fn same_answers_as_the_default_script() {
        let me = format!("sip:{LOCAL}");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "keepalive",
                req(
                    "OPTIONS",
                    &me,
                    "sip:a@example.com",
                    false,
                    "Max-Forwards: 70\r\n",
                ),
            ),
            (
                "max-forwards 0",
                req(
                    "OPTIONS",
                    &me,
                    "sip:a@example.com",
                    false,
                    "Max-Forwards: 0\r\n",
                ),
            ),
            (
                "register without credentials",
                req(
                    "REGISTER",
                    "sip:proxy.example.com",
                    "sip:alice@proxy.example.com",
                    false,
                    "Contact: <sip:alice@192.0.2.9>\r\n",
                ),
            ),
            (
                "invite from a local user",
                req(
                    "INVITE",
                    "sip:bob@proxy.example.com",
                    "sip:alice@proxy.example.com",
                    false,
                    "",
                ),
            ),
            (
                "foreign to foreign",
                req(
                    "MESSAGE",
                    "sip:bob@example.org",
                    "sip:alice@example.com",
                    false,
                    "",
                ),
            ),
            (
                "no user in the R-URI",
                req("MESSAGE", &me, "sip:alice@example.com", false, ""),
            ),
            (
                "unknown user",
                req(
                    "MESSAGE",
                    "sip:nobody@proxy.example.com",
                    "sip:alice@example.com",
                    false,
                    "",
                ),
            ),
            (
                "in-dialog, no route",
                req(
                    "BYE",
                    "sip:bob@proxy.example.com",
                    "sip:alice@example.com",
                    true,
                    "",
                ),
            ),
            (
                "ack, no transaction",
                req(
                    "ACK",
                    "sip:bob@proxy.example.com",
                    "sip:alice@example.com",
                    true,
                    "",
                ),
            ),
            (
                "cancel, no transaction",
                req(
                    "CANCEL",
                    "sip:bob@proxy.example.com",
                    "sip:alice@example.com",
                    false,
                    "",
                ),
            ),
        ];
        let lua = engine(DEFAULT_SCRIPT);
        let native = engine_native();
        assert!(native.is_native() && !lua.is_native());
        for (what, msg) in cases {
            let a = observe(&lua, &msg);
            let b = observe(&native, &msg);
            assert_eq!(a, b, "{what}: Lua {a:?} vs native {b:?}");
        }
        // and they did answer (the comparison is not between two silences)
        let (_, keepalive) = observe(
            &native,
            &req("OPTIONS", &me, "sip:a@example.com", false, ""),
        );
        assert_eq!(keepalive, ["SIP/2.0 200 Keepalive www=false proxy=false"]);
        let (_, hops) = observe(
            &native,
            &req("OPTIONS", &me, "sip:a@x", false, "Max-Forwards: 0\r\n"),
        );
        assert_eq!(hops, ["SIP/2.0 483 Too Many Hops www=false proxy=false"]);
        let unknown = req(
            "MESSAGE",
            "sip:nobody@proxy.example.com",
            "sip:a@example.com",
            false,
            "",
        );
        let (_, not_found) = observe(&native, &unknown);
        assert_eq!(not_found, ["SIP/2.0 404 Not Found www=false proxy=false"]);
    }
}
