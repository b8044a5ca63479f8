//! KSR.auth and KSR.auth_db: digest authentication (Kamailio `auth` and
//! `auth_db` modules).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.auth_db.auth_check(realm, table, flags)` | `int (str, str, int)` | 1 ok; -1 error/bad nonce; -2 wrong password; -3 unknown user; -4 stale nonce; -5 no credentials; -6 nonce reused; -8 auth user mismatch |
//! | `KSR.auth_db.www_authorize(realm, table)` | `int (str, str)` | as above (Authorization header) — sipshard extension (Kamailio 5.6 has these only as native cfg functions) |
//! | `KSR.auth_db.proxy_authorize(realm, table)` | `int (str, str)` | as above (Proxy-Authorization header) — sipshard extension |
//! | `KSR.auth.auth_challenge(realm, flags)` | `int (str, int)` | 1 sent (401 for REGISTER, else 407), -3 reply not sent (e.g. ACK), -1 error |
//! | `KSR.auth.www_challenge(realm, flags)` | `int (str, int)` | 1 sent 401, -3 / -1 as above |
//! | `KSR.auth.proxy_challenge(realm, flags)` | `int (str, int)` | 1 sent 407, -3 / -1 as above |
//! | `KSR.auth.consume_credentials()` | `int ()` | 1 removed, -1 none |
//! | `KSR.auth.has_credentials(realm)` | `int (str)` | 1 present, -1 absent |
//!
//! Challenge flags: 1 `qop="auth"`, 2 `qop="auth-int"`, 4 do not send a 500
//! on internal errors, 16 `stale=true`. When the check before could not
//! read the subscriber (database down, hung past `[auth] db_timeout_ms` or
//! its queue full), a challenge answers 500 instead and returns -1
//! (sipshard; flag 4: nothing is sent). A challenge after a stale nonce
//! (`-4`) carries `stale=true` by itself. `$au`, `$ar`, `$adu` read the
//! credentials header (Proxy-Authorization, else Authorization) whether or
//! not a check ran, as in Kamailio. ACK, CANCEL and PRACK are not checked: the functions
//! return 1, as Kamailio's. The `table` argument is accepted for
//! compatibility; credentials come from the configured database's
//! `subscriber` table (Kamailio's default columns).
//!
//! With `[flood] auth_failures_max` set (sipshard), a check that fails
//! with -2, -3, -6, -8, or -1 for a credentials header that cannot be used
//! (unparseable, a nonce this server did not make) counts against the
//! source IP; enough failures within the window ban it before any route
//! runs (`flood.list`). -4 (stale) and -5 (no credentials) do not count.
//!
//! `[auth]` carries the auth/auth_db modparam names and defaults:
//! `nonce_expire` 300 s; `nonce_count` off, so a nonce may be reused with
//! the same `nc` until it expires (on: -6 for a replay; a UDP retransmission,
//! same Call-ID and CSeq, still passes); `realm_prefix` stripped from the
//! realm; `algorithm` (MD5); auth_db `use_domain` (subscriber looked up by
//! username and realm) and `calculate_ha1` (HA1 from the plain password
//! instead of the `ha1`/`ha1b` columns). Differences from Kamailio:
//! `algorithms` may offer several challenges (RFC 8760); nonces are
//! checked for expiry and integrity only (`auth_checks_register` /
//! `_no_dlg` / `_in_dlg`, `one_time_nonce` and the `qop` parameter, which
//! KEMI challenges do not use, are not implemented).

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, Table};

use super::services::{unix_now_s, CachedCred};
use super::{ffi, Shared};
use crate::auth::{
    challenges, check_identity, find_credentials, post_auth, pre_auth, Algorithm, AuthCode,
    ChallengeFlags, ChallengeKind, DigestRequest, Secret, UriIdentity,
};
use crate::sip::HdrName;
use crate::stats::Counter;
use std::sync::Arc;

/// Which credentials header to read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    /// By method: REGISTER → Authorization, others → Proxy-Authorization.
    ByMethod,
    Www,
    Proxy,
}

fn header_for(which: Which, is_register: bool) -> HdrName {
    match which {
        Which::Www => HdrName::Authorization,
        Which::Proxy => HdrName::ProxyAuthorization,
        Which::ByMethod if is_register => HdrName::Authorization,
        Which::ByMethod => HdrName::ProxyAuthorization,
    }
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let auth_db = lua.create_table()?;
    // (the table argument is not read: one subscriber table)
    ffi::fast!(lua, &auth_db, "__auth_check_sync", shared, [1], |s, a| {
        let (realm, flags) = (a.str(1)?, a.int(3)?);
        Ok(authorize_sync(s, realm, Which::ByMethod, flags as u32)
            .unwrap_or(super::TAKE_ASYNC_PATH)
            .into())
    })?;
    for (name, which) in [
        ("__www_authorize_sync", Which::Www),
        ("__proxy_authorize_sync", Which::Proxy),
    ] {
        let s = shared.clone();
        auth_db.set(
            name,
            lua.create_function(move |_, (realm, _table): (String, mlua::Value)| {
                Ok(authorize_sync(&s, &realm, which, 0).unwrap_or(super::TAKE_ASYNC_PATH))
            })?,
        )?;
    }
    let s = shared.clone();
    auth_db.set(
        "__auth_check_async",
        lua.create_async_function(
            move |_, (realm, _table, flags): (String, mlua::Value, i64)| {
                let s = s.clone();
                async move { Ok(authorize(&s, &realm, Which::ByMethod, flags as u32).await) }
            },
        )?,
    )?;
    for (name, which) in [
        ("__www_authorize_async", Which::Www),
        ("__proxy_authorize_async", Which::Proxy),
    ] {
        let s = shared.clone();
        auth_db.set(
            name,
            lua.create_async_function(move |_, (realm, _table): (String, mlua::Value)| {
                let s = s.clone();
                async move { Ok(authorize(&s, &realm, which, 0).await) }
            })?,
        )?;
    }
    ksr.set("auth_db", auth_db)?;

    let auth = lua.create_table()?;
    macro_rules! challenges {
        ($($name:literal => $kind:expr),* $(,)?) => {
            [$(($name, ffi::fast_fn!([1], |s, a| {
                let (realm, flags) = (a.str(1)?, a.int(2)?);
                Ok(send_challenge(s, realm, flags as u32, $kind).into())
            }))),*]
        };
    }
    for (name, f) in challenges![
        "auth_challenge" => None,
        "www_challenge" => Some(ChallengeKind::Www),
        "proxy_challenge" => Some(ChallengeKind::Proxy),
    ] {
        ffi::set_fast(lua, &auth, name, shared, f)?;
    }
    ffi::fast!(lua, &auth, "consume_credentials", shared, [], |s, _| {
        Ok(consume_credentials(s)?.into())
    })?;
    let s = shared.clone();
    auth.set(
        "has_credentials",
        lua.create_function(move |_, realm: String| {
            s.with_msg(|m| {
                let msg = m.msg();
                let www = find_credentials(msg.headers(HdrName::Authorization), &realm);
                let proxy = find_credentials(msg.headers(HdrName::ProxyAuthorization), &realm);
                if matches!(www, Ok(Some(_))) || matches!(proxy, Ok(Some(_))) {
                    1
                } else {
                    -1
                }
            })
        })?,
    )?;
    ksr.set("auth", auth)?;
    Ok(())
}

/// `KSR.auth_db.auth_check(realm, table, flags)` as the Lua binding joins
/// it (see `FAST_PATHS` in mod.rs): the cached check, else the one that may
/// wait for the database.
pub(super) async fn auth_check(s: &Rc<Shared>, realm: &str, flags: u32) -> i32 {
    match authorize_sync(s, realm, Which::ByMethod, flags) {
        Some(rc) => rc,
        None => authorize(s, realm, Which::ByMethod, flags).await,
    }
}

/// `KSR.auth.auth_challenge(realm, flags)`.
pub(super) fn auth_challenge(s: &Rc<Shared>, realm: &str, flags: u32) -> i32 {
    send_challenge(s, realm, flags, None)
}

/// `KSR.auth.consume_credentials()`.
pub(super) fn consume_credentials(s: &Shared) -> mlua::Result<i32> {
    s.with_msg(|m| {
        let is_register = m.msg().method() == Some(crate::sip::Method::Register);
        let name = header_for(Which::ByMethod, is_register);
        let buf = &m.buf[..m.len];
        let n = m
            .edits
            .remove_headers(&m.parsed, buf, name, name.canonical().as_bytes());
        if n > 0 {
            1
        } else {
            -1
        }
    })
}

/// What step 1 found, owned so no message borrow is held across the lookup.
struct Pending {
    username: String,
    realm: String,
}

/// `auth_check` / `www_authorize` / `proxy_authorize`.
/// Step 1: find and parse the credentials, check the nonce. `Err` is the
/// final return code.
fn step_credentials(s: &Rc<Shared>, realm: &str, which: Which, now: u64) -> Result<Pending, i32> {
    let svc = &s.services;
    let first = s.with_msg(|m| {
        let msg = m.msg();
        // Kamailio's auth API passes these without a check (they cannot be
        // challenged): the functions return 1.
        if matches!(
            msg.method(),
            Some(crate::sip::Method::Ack | crate::sip::Method::Cancel | crate::sip::Method::Prack)
        ) {
            return Err(AuthCode::Ok);
        }
        let is_register = msg.method() == Some(crate::sip::Method::Register);
        let hdr = header_for(which, is_register);
        match pre_auth(msg.headers(hdr), realm, &svc.nonce_key, now) {
            Ok(c) => Ok(Pending {
                username: c.username.unescaped().into_owned(),
                realm: c.realm.unescaped().into_owned(),
            }),
            Err(code) => {
                if code == AuthCode::NonceExpired {
                    m.auth_stale = true;
                }
                Err(code)
            }
        }
    });
    match first {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(code)) => Err(finish_pre(s, code)),
        Err(_) => Err(AuthCode::GenericError.code()),
    }
}

/// Step 1 ended the check with `code` (`Ok` for ACK/CANCEL/PRACK, which
/// pass unchecked): failure accounting, the return code.
fn finish_pre(s: &Rc<Shared>, code: AuthCode) -> i32 {
    if code == AuthCode::Ok {
        return code.code();
    }
    // -1 here is a credentials header we cannot use: unparseable, or a
    // nonce we did not make (forged, tampered)
    if !matches!(code, AuthCode::NonceExpired | AuthCode::NoCredentials) {
        note_failure(s);
    }
    s.counters.incr(if code == AuthCode::NonceExpired {
        Counter::AuthStaleNonce
    } else {
        Counter::AuthFailure
    });
    code.code()
}

/// `[flood] auth_failures_max`: a failure that says the sender does not
/// hold the credentials (wrong password, unknown user, replayed nonce, auth
/// user mismatch, a forged or unparseable credentials header) counts
/// against its source IP; enough of them ban it. A stale nonce or a request
/// without credentials is the normal first step of a digest exchange and
/// does not count, nor does a database failure.
fn note_failure(s: &Rc<Shared>) {
    let flood = &s.services.tables.flood;
    if flood.config().auth_failures_max == 0 {
        return;
    }
    let Ok(ip) = s.with_msg(|m| m.src.ip()) else {
        return;
    };
    if let crate::flood::Failure::Banned { until_ms } =
        flood.auth_failed(ip, super::services::unix_now_ms())
    {
        s.counters.incr(Counter::FloodBans);
        s.services.note_ban(ip, until_ms);
    }
}

/// Step 3: verify the response (re-reading the header: the message is ours again).
fn step_verify(
    s: &Rc<Shared>,
    pending: &Pending,
    cred: Option<&CachedCred>,
    realm: &str,
    which: Which,
    flags: u32,
) -> i32 {
    let svc = s.services.clone();
    let res = s.with_msg(|m| {
        let (code, digest_uri) = verify_in(m, &svc, pending, cred, realm, which, flags);
        if code == AuthCode::NonceExpired {
            // a nonce the nonce-count table may have forgotten
            m.auth_stale = true;
        }
        if code == AuthCode::Ok {
            m.auth_user = Some(pending.username.clone());
            m.auth_realm = Some(pending.realm.clone());
            m.auth_digest_uri = digest_uri;
        }
        code
    });
    finish_verify(s, res.unwrap_or(AuthCode::GenericError))
}

/// Steps 3-4 ended with `code`: failure accounting, the return code.
fn finish_verify(s: &Rc<Shared>, code: AuthCode) -> i32 {
    if matches!(
        code,
        AuthCode::InvalidPassword
            | AuthCode::InvalidUser
            | AuthCode::NonceReused
            | AuthCode::AuthUserMismatch
    ) {
        note_failure(s);
    }
    s.counters.incr(if code == AuthCode::Ok {
        Counter::AuthSuccess
    } else {
        Counter::AuthFailure
    });
    code.code()
}

/// The check without suspending: `None` when the subscriber is not in the
/// shard's cache (the async path asks the database). One borrow of the
/// message: the credentials are parsed once, and verified right away when
/// the subscriber is cached (the common case: every REGISTER refresh).
fn authorize_sync(s: &Rc<Shared>, realm: &str, which: Which, flags: u32) -> Option<i32> {
    /// What the borrow found.
    enum Found {
        /// Step 1 ended the check.
        Pre(AuthCode),
        /// Not cached: the async path looks it up.
        Miss,
        /// Steps 3-4 ended with this code.
        Verified(AuthCode),
    }
    let svc = &s.services;
    let realm = svc.auth.strip_realm(realm);
    let now = unix_now_s();
    let domain = lookup_domain(s, realm);
    let found = s.with_msg(|m| {
        let (found, ok) = {
            let msg = m.msg();
            // Kamailio's auth API passes these without a check (they cannot
            // be challenged): the functions return 1.
            if matches!(
                msg.method(),
                Some(
                    crate::sip::Method::Ack
                        | crate::sip::Method::Cancel
                        | crate::sip::Method::Prack
                )
            ) {
                return Found::Pre(AuthCode::Ok);
            }
            let is_register = msg.method() == Some(crate::sip::Method::Register);
            let hdr = header_for(which, is_register);
            match pre_auth(msg.headers(hdr), realm, &svc.nonce_key, now) {
                Err(code) => (Found::Pre(code), None),
                Ok(creds) => {
                    let username = creds.username.unescaped();
                    let cached = svc
                        .tables
                        .creds
                        .get(username.as_bytes())
                        .lookup(&username, domain, now)
                        .map(|v| v.cloned());
                    match cached {
                        None => (Found::Miss, None),
                        Some(cred) => {
                            let auth_realm = creds.realm.unescaped();
                            let ids = AuthIds {
                                username: &username,
                                realm: &auth_realm,
                            };
                            let (code, uri) =
                                verify_creds(&msg, svc, &creds, ids, cred.as_deref(), realm, flags);
                            let ok = (code == AuthCode::Ok)
                                .then(|| (username.into_owned(), auth_realm.into_owned(), uri));
                            (Found::Verified(code), ok)
                        }
                    }
                }
            }
        };
        if matches!(
            found,
            Found::Pre(AuthCode::NonceExpired) | Found::Verified(AuthCode::NonceExpired)
        ) {
            // a stale nonce, or one the nonce-count table may have forgotten
            m.auth_stale = true;
        }
        if let Some((user, auth_realm, uri)) = ok {
            m.auth_user = Some(user);
            m.auth_realm = Some(auth_realm);
            m.auth_digest_uri = uri;
        }
        found
    });
    match found {
        Ok(Found::Pre(code)) => Some(finish_pre(s, code)),
        Ok(Found::Miss) => None,
        Ok(Found::Verified(code)) => Some(finish_verify(s, code)),
        Err(_) => Some(AuthCode::GenericError.code()),
    }
}

async fn authorize(s: &Rc<Shared>, realm: &str, which: Which, flags: u32) -> i32 {
    let svc = s.services.clone();
    let realm = svc.auth.strip_realm(realm);
    let now = unix_now_s();
    let pending = match step_credentials(s, realm, which, now) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Step 2: the subscriber, from the shared cache or the database.
    let domain = lookup_domain(s, realm).to_string();
    let cached = svc
        .tables
        .creds
        .get(pending.username.as_bytes())
        .lookup(&pending.username, &domain, now)
        .map(|v| v.cloned());
    let cred: Option<Arc<CachedCred>> = match cached {
        Some(v) => v,
        None => {
            let Some(db) = svc.db.clone() else {
                let _ = s.with_msg(|m| {
                    m.last_error = Some((500, "Server Internal Error"));
                    m.auth_db_failed = true;
                });
                return AuthCode::GenericError.code();
            };
            s.counters.incr(Counter::DbQueries);
            let fut = match db.credentials(&pending.username, &domain) {
                Ok(f) => f,
                Err(e) => {
                    s.counters.incr(Counter::DbErrors);
                    if matches!(e, crate::db::DbError::QueueFull) {
                        s.counters.incr(Counter::DbQueueFull);
                    }
                    svc.note_auth_db_failure(&e.to_string());
                    let _ = s.with_msg(|m| {
                        m.last_error = Some((500, "Server Internal Error"));
                        m.auth_db_failed = true;
                    });
                    return AuthCode::GenericError.code();
                }
            };
            let timeout = Duration::from_millis(svc.auth.db_timeout_ms);
            match crate::exec::timeout(timeout, fut).await {
                Ok(Ok(row)) => {
                    let v = row.map(|c| {
                        Arc::new(CachedCred {
                            password: c.password,
                            ha1: c.ha1,
                            ha1b: c.ha1b,
                        })
                    });
                    svc.tables.creds.get(pending.username.as_bytes()).insert(
                        &pending.username,
                        &domain,
                        v.clone(),
                        now,
                    );
                    v
                }
                Ok(Err(e)) => {
                    s.counters.incr(Counter::DbErrors);
                    s.counters.incr(Counter::AuthDbTimeout);
                    svc.note_auth_db_failure(&e.to_string());
                    let _ = s.with_msg(|m| {
                        m.last_error = Some((500, "Server Internal Error"));
                        m.auth_db_failed = true;
                    });
                    return AuthCode::GenericError.code();
                }
                Err(_) => {
                    s.counters.incr(Counter::DbErrors);
                    s.counters.incr(Counter::AuthDbTimeout);
                    svc.note_auth_db_failure("no answer within [auth] db_timeout_ms");
                    let _ = s.with_msg(|m| {
                        m.last_error = Some((500, "Server Internal Error"));
                        m.auth_db_failed = true;
                    });
                    return AuthCode::GenericError.code();
                }
            }
        }
    };
    step_verify(s, &pending, cred.as_deref(), realm, which, flags)
}

/// The subscriber's domain to look up: the realm with auth_db `use_domain`,
/// else none (the username alone; the cache keys on the same).
fn lookup_domain<'a>(s: &Shared, realm: &'a str) -> &'a str {
    if s.services.auth.use_domain {
        realm
    } else {
        ""
    }
}

/// Steps 3 and 4 on the message: digest, nonce count, identity (re-reading
/// the credentials header: the message was given back during the lookup).
fn verify_in(
    m: &super::MsgCtx,
    svc: &super::services::Services,
    pending: &Pending,
    cred: Option<&CachedCred>,
    realm: &str,
    which: Which,
    flags: u32,
) -> (AuthCode, Option<String>) {
    let msg = m.msg();
    let is_register = msg.method() == Some(crate::sip::Method::Register);
    let hdr = header_for(which, is_register);
    let Ok(Some(creds)) = find_credentials(msg.headers(hdr), realm) else {
        return (AuthCode::GenericError, None);
    };
    let ids = AuthIds {
        username: &pending.username,
        realm: &pending.realm,
    };
    verify_creds(&msg, svc, &creds, ids, cred, realm, flags)
}

/// The credentials' username and realm, unescaped.
#[derive(Clone, Copy)]
struct AuthIds<'a> {
    username: &'a str,
    realm: &'a str,
}

/// Steps 3 and 4 on parsed credentials: digest, nonce count, identity.
/// `Ok` also gives the credentials' digest uri.
fn verify_creds(
    msg: &crate::sip::SipMsg<'_>,
    svc: &super::services::Services,
    creds: &crate::auth::Credentials<'_>,
    ids: AuthIds<'_>,
    cred: Option<&CachedCred>,
    realm: &str,
    flags: u32,
) -> (AuthCode, Option<String>) {
    let secret = cred.map(|c| {
        // auth_db calculate_ha1 = 0: the stored HA1 (password_column_2,
        // ha1b, when the username carries a domain).
        if creds.algorithm == Algorithm::Md5 && !svc.auth.calculate_ha1 {
            let h = if ids.username.contains('@') {
                &c.ha1b
            } else {
                &c.ha1
            };
            if !h.is_empty() {
                return Secret::Ha1(h.as_str());
            }
        }
        Secret::Password(c.password.as_str())
    });
    let cseq = msg.cseq().ok();
    let req = DigestRequest {
        method: std::str::from_utf8(msg.method_bytes()).unwrap_or(""),
        body: msg.body(),
        call_id: msg.call_id().unwrap_or(b""),
        cseq: cseq.map(|c| c.num).unwrap_or(0),
        cseq_method: cseq.map(|c| c.method_bytes).unwrap_or(b""),
    };
    // auth nonce_count: off (Kamailio's default), a nonce is good until
    // it expires whatever its nc.
    let code = if svc.auth.nonce_count {
        let mut nc = svc.tables.nc.get(creds.nonce.raw().as_bytes());
        post_auth(creds, secret, &req, Some(&mut nc))
    } else {
        post_auth(creds, secret, &req, None)
    };
    if code != AuthCode::Ok {
        return (code, None);
    }
    // user and host as text (borrowed unless not UTF-8)
    fn ident_of(u: crate::sip::SipUri<'_>) -> (Cow<'_, str>, Cow<'_, str>) {
        (
            crate::sip::lex::text(u.user.unwrap_or(b"")),
            crate::sip::lex::text(u.host),
        )
    }
    let none = || (Cow::Borrowed(""), Cow::Borrowed(""));
    let from = msg
        .from()
        .ok()
        .and_then(|n| n.uri_parsed().ok())
        .map_or_else(none, ident_of);
    let to = msg
        .to()
        .ok()
        .and_then(|n| n.uri_parsed().ok())
        .map_or_else(none, ident_of);
    let ruri = msg.ruri_parsed().ok().map_or_else(none, ident_of);
    let code = check_identity(
        flags,
        msg.method().unwrap_or(crate::sip::Method::Other),
        realm,
        ids.username,
        ids.realm,
        UriIdentity {
            user: &from.0,
            host: &from.1,
        },
        UriIdentity {
            user: &to.0,
            host: &to.1,
        },
        UriIdentity {
            user: &ruri.0,
            host: &ruri.1,
        },
    );
    (code, Some(creds.uri.unescaped().into_owned()))
}

/// Sends 401/407 with one challenge per configured algorithm.
fn send_challenge(s: &Rc<Shared>, realm: &str, flags: u32, kind: Option<ChallengeKind>) -> i32 {
    let svc = s.services.clone();
    let realm = svc.auth.strip_realm(realm);
    let now = unix_now_s();
    // sipshard: the check before could not read the subscriber (database
    // down or late): a challenge would only make the client send the same
    // credentials again, so answer 500 (flag 4: send nothing) and return -1.
    let db_failed = s.with_msg(|m| m.auth_db_failed).unwrap_or(false);
    if db_failed {
        if flags & 4 == 0 {
            let _ = s.with_msg(|m| super::sl::reply_counted(s, m, 500, b"Server Internal Error"));
        }
        return -1;
    }
    let r = s.with_msg(|m| {
        let method = std::str::from_utf8(m.msg().method_bytes())
            .unwrap_or("")
            .to_string();
        let kind = kind.unwrap_or_else(|| ChallengeKind::for_method(&method));
        let mut f = ChallengeFlags::from_bits(flags);
        if m.auth_stale {
            f.stale = true;
        }
        let nonce = svc
            .nonce_key
            .make(now, realm, svc.nonce_gen.borrow_mut().next_unique());
        for value in challenges(realm, &nonce, None, &svc.algorithms, f) {
            m.reply_headers
                .extend_from_slice(kind.header_name().as_bytes());
            m.reply_headers.extend_from_slice(b": ");
            m.reply_headers.extend_from_slice(value.as_bytes());
            m.reply_headers.extend_from_slice(b"\r\n");
        }
        super::sl::reply_counted(s, m, kind.status(), kind.reason().as_bytes())
    });
    // Kamailio: 1 sent, -3 the reply could not be sent, -1 no message.
    match r {
        Ok(true) => {
            s.counters.incr(Counter::AuthChallenges);
            1
        }
        Ok(false) => -3,
        Err(_) => -1,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::auth::{ha1, ha2, response, Algorithm, Qop};
    use crate::config::{AuthConfig, RegistrarConfig};
    use crate::kemi::services::{unix_now_s, CachedCred};
    use crate::kemi::testutil::{engine_with, global_int, request, run};
    use crate::kemi::Engine;

    const SCRIPT: &str = r#"
function ksr_request_route()
    rc = KSR.auth_db.www_authorize(REALM, "subscriber")
    if rc < 0 then
        KSR.auth.www_challenge(REALM, 1)
    end
end
"#;

    fn eng(auth: AuthConfig, realm: &str) -> Engine {
        let e = engine_with(SCRIPT, &auth, &RegistrarConfig::default());
        e.lua().globals().set("REALM", realm).unwrap();
        e
    }

    /// Caches alice's subscriber row under `domain` ("" = username only).
    fn cache_alice(e: &Engine, domain: &str, ha1_hex: &str) {
        let cred = CachedCred {
            password: "pw".into(),
            ha1: ha1_hex.into(),
            ha1b: String::new(),
        };
        e.shared().services.tables.creds.get(b"alice").insert(
            "alice",
            domain,
            Some(Arc::new(cred)),
            unix_now_s(),
        );
    }

    /// The nonce and realm of the challenge a credential-less REGISTER gets.
    fn challenge(e: &Engine) -> (String, String) {
        let (m, _) = run(e, &request("REGISTER sip:example.com SIP/2.0", None, &[]));
        assert_eq!(global_int(e, "rc"), -5);
        let reply = String::from_utf8_lossy(&m.out_buf).into_owned();
        assert!(reply.starts_with("SIP/2.0 401"), "{reply}");
        let param = |name: &str| {
            let start = reply.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
            reply[start..].split('"').next().unwrap().to_string()
        };
        (param("nonce"), param("realm"))
    }

    /// A REGISTER (CSeq `cseq`) answering with nc=1 and qop=auth.
    fn answer(nonce: &str, realm: &str, cseq: u32) -> Vec<u8> {
        let uri = "sip:example.com";
        let h1 = ha1(Algorithm::Md5, b"alice", realm.as_bytes(), b"pw");
        let h2 = ha2(
            Algorithm::Md5,
            b"REGISTER",
            uri.as_bytes(),
            Some(Qop::Auth),
            b"",
        );
        let r = response(
            Algorithm::Md5,
            h1.as_bytes(),
            nonce.as_bytes(),
            Some((Qop::Auth, b"00000001", b"c1")),
            h2.as_bytes(),
        );
        let auth = format!(
            "Authorization: Digest username=\"alice\", realm=\"{realm}\", nonce=\"{nonce}\", \
             uri=\"{uri}\", response=\"{r}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c1\""
        );
        let msg = request("REGISTER sip:example.com SIP/2.0", None, &[&auth]);
        String::from_utf8(msg)
            .unwrap()
            .replace("CSeq: 2 ", &format!("CSeq: {cseq} "))
            .into_bytes()
    }

    fn md5_ha1(realm: &str) -> String {
        ha1(Algorithm::Md5, b"alice", realm.as_bytes(), b"pw")
            .as_str()
            .to_string()
    }

    #[test]
    fn nonce_count_off_by_default_on_when_configured() {
        for (nonce_count, want_reuse) in [(false, 1), (true, -6)] {
            let e = eng(
                AuthConfig {
                    nonce_count,
                    ..AuthConfig::default()
                },
                "example.com",
            );
            cache_alice(&e, "", &md5_ha1("example.com"));
            let (nonce, realm) = challenge(&e);
            run(&e, &answer(&nonce, &realm, 3));
            assert_eq!(global_int(&e, "rc"), 1, "nonce_count {nonce_count}");
            // a retransmission (same Call-ID and CSeq) always passes
            run(&e, &answer(&nonce, &realm, 3));
            assert_eq!(global_int(&e, "rc"), 1, "nonce_count {nonce_count}");
            // the same nc in a new request
            run(&e, &answer(&nonce, &realm, 4));
            assert_eq!(
                global_int(&e, "rc"),
                want_reuse,
                "nonce_count {nonce_count}"
            );
        }
    }

    #[test]
    fn realm_prefix_is_stripped() {
        let e = eng(
            AuthConfig {
                realm_prefix: "sip.".into(),
                ..AuthConfig::default()
            },
            "sip.example.com",
        );
        cache_alice(&e, "", &md5_ha1("example.com"));
        let (nonce, realm) = challenge(&e);
        assert_eq!(realm, "example.com");
        run(&e, &answer(&nonce, &realm, 3));
        assert_eq!(global_int(&e, "rc"), 1);
    }

    #[test]
    fn calculate_ha1_uses_the_password() {
        // the stored ha1 is wrong; only calculate_ha1 ignores it
        let bogus = "0".repeat(32);
        for (calculate_ha1, want) in [(false, -2), (true, 1)] {
            let e = eng(
                AuthConfig {
                    calculate_ha1,
                    ..AuthConfig::default()
                },
                "example.com",
            );
            cache_alice(&e, "", &bogus);
            let (nonce, realm) = challenge(&e);
            run(&e, &answer(&nonce, &realm, 3));
            assert_eq!(global_int(&e, "rc"), want, "calculate_ha1 {calculate_ha1}");
        }
    }

    #[test]
    fn use_domain_looks_the_subscriber_up_by_realm() {
        // alice is known only as alice@example.com; without use_domain the
        // lookup is by username alone, which the cache does not hold and
        // (no database here) fails with -1
        for (use_domain, want) in [(true, 1), (false, -1)] {
            let e = eng(
                AuthConfig {
                    use_domain,
                    ..AuthConfig::default()
                },
                "example.com",
            );
            cache_alice(&e, "example.com", &md5_ha1("example.com"));
            let (nonce, realm) = challenge(&e);
            run(&e, &answer(&nonce, &realm, 3));
            assert_eq!(global_int(&e, "rc"), want, "use_domain {use_domain}");
        }
    }

    #[test]
    fn ack_cancel_prack_are_not_checked() {
        let e = eng(AuthConfig::default(), "example.com");
        for start in [
            "ACK sip:bob@example.com SIP/2.0",
            "CANCEL sip:bob@example.com SIP/2.0",
            "PRACK sip:bob@example.com SIP/2.0",
        ] {
            let (m, _) = run(&e, &request(start, None, &[]));
            assert_eq!(global_int(&e, "rc"), 1, "{start}");
            assert!(m.out.is_empty(), "{start}: no challenge");
        }
    }

    #[test]
    fn challenge_return_codes() {
        let script = r#"
function ksr_request_route()
    ch = KSR.auth.auth_challenge("example.com", 1)
end
"#;
        let e = engine_with(script, &AuthConfig::default(), &RegistrarConfig::default());
        let (m, _) = run(
            &e,
            &request("INVITE sip:bob@example.com SIP/2.0", None, &[]),
        );
        assert_eq!(global_int(&e, "ch"), 1);
        let reply = String::from_utf8_lossy(&m.out_buf).into_owned();
        assert!(
            reply.starts_with("SIP/2.0 407 Proxy Authentication Required"),
            "{reply}"
        );
        assert!(reply.contains("Proxy-Authenticate: Digest"), "{reply}");
        // an ACK cannot be answered: the reply is not sent
        run(&e, &request("ACK sip:bob@example.com SIP/2.0", None, &[]));
        assert_eq!(global_int(&e, "ch"), -3);
    }

    #[test]
    fn unreadable_subscriber_is_answered_500_not_challenged() {
        // no database and nothing cached: the check cannot read alice
        for (flags, want) in [(1, Some("SIP/2.0 500 Server Internal Error")), (5, None)] {
            let script = format!(
                r#"
function ksr_request_route()
    rc = KSR.auth_db.auth_check("example.com", "subscriber", 1)
    ch = KSR.auth.auth_challenge("example.com", {flags})
end
"#
            );
            let e = engine_with(&script, &AuthConfig::default(), &RegistrarConfig::default());
            // a message without credentials is challenged as before
            let (nonce, realm) = challenge(&e);
            let (m, _) = run(&e, &answer(&nonce, &realm, 3));
            assert_eq!(global_int(&e, "rc"), -1);
            assert_eq!(global_int(&e, "ch"), -1);
            let reply = String::from_utf8_lossy(&m.out_buf).into_owned();
            match want {
                Some(start) => assert!(reply.starts_with(start), "{reply}"),
                None => assert!(m.out.is_empty(), "flag 4: nothing sent: {reply}"),
            }
        }
    }
}
