//! KSR.auth and KSR.auth_db: digest authentication (Kamailio `auth` and
//! `auth_db` modules).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.auth_db.auth_check(realm, table, flags)` | `int (str, str, int)` | 1 ok; -1 error/bad nonce; -2 wrong password; -3 unknown user; -4 stale nonce; -5 no credentials; -6 nonce reused; -8 auth user mismatch |
//! | `KSR.auth_db.www_authorize(realm, table)` | `int (str, str)` | as above (Authorization header) — sipshard extension (Kamailio 5.6 has these only as native cfg functions) |
//! | `KSR.auth_db.proxy_authorize(realm, table)` | `int (str, str)` | as above (Proxy-Authorization header) — sipshard extension |
//! | `KSR.auth.auth_challenge(realm, flags)` | `int (str, int)` | 1 sent (401 for REGISTER, else 407), -1 error |
//! | `KSR.auth.www_challenge(realm, flags)` | `int (str, int)` | 1 sent 401, -1 error |
//! | `KSR.auth.proxy_challenge(realm, flags)` | `int (str, int)` | 1 sent 407, -1 error |
//! | `KSR.auth.consume_credentials()` | `int ()` | 1 removed, -1 none |
//! | `KSR.auth.has_credentials(realm)` | `int (str)` | 1 present, -1 absent |
//!
//! Challenge flags: 1 `qop="auth"`, 2 `qop="auth-int"`, 4 do not send a 500
//! on internal errors, 16 `stale=true`. A challenge after a stale nonce
//! (`-4`) carries `stale=true` by itself. `$au`, `$ar`, `$adu` read the
//! credentials header (Proxy-Authorization, else Authorization) whether or
//! not a check ran, as in Kamailio. The `table` argument is accepted for compatibility;
//! credentials come from the configured database's `subscriber` table.

use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, Table};

use super::services::{unix_now_s, CachedCred};
use super::Shared;
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
    let s = shared.clone();
    auth_db.set(
        "__auth_check_sync",
        lua.create_function(
            move |_, (realm, _table, flags): (String, mlua::Value, i64)| {
                Ok(authorize_sync(&s, &realm, Which::ByMethod, flags as u32)
                    .unwrap_or(super::TAKE_ASYNC_PATH))
            },
        )?,
    )?;
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
    for (name, kind) in [
        ("auth_challenge", None),
        ("www_challenge", Some(ChallengeKind::Www)),
        ("proxy_challenge", Some(ChallengeKind::Proxy)),
    ] {
        let s = shared.clone();
        auth.set(
            name,
            lua.create_function(move |_, (realm, flags): (String, i64)| {
                Ok(send_challenge(&s, &realm, flags as u32, kind))
            })?,
        )?;
    }
    let s = shared.clone();
    auth.set(
        "consume_credentials",
        lua.create_function(move |_, ()| {
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
        })?,
    )?;
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
        Ok(Err(code)) => {
            s.counters.incr(if code == AuthCode::NonceExpired {
                Counter::AuthStaleNonce
            } else {
                Counter::AuthFailure
            });
            Err(code.code())
        }
        Err(_) => Err(AuthCode::GenericError.code()),
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
    let use_domain = svc.auth.use_domain;
    let res = s.with_msg(|m| {
        let (code, digest_uri) = verify_in(m, &svc, pending, cred, realm, which, flags, use_domain);
        if code == AuthCode::Ok {
            m.auth_user = Some(pending.username.clone());
            m.auth_realm = Some(pending.realm.clone());
            m.auth_digest_uri = digest_uri;
        }
        code
    });
    let code = res.unwrap_or(AuthCode::GenericError);
    s.counters.incr(if code == AuthCode::Ok {
        Counter::AuthSuccess
    } else {
        Counter::AuthFailure
    });
    code.code()
}

/// The check without suspending: `None` when the subscriber is not in the
/// shard's cache (the async path asks the database).
fn authorize_sync(s: &Rc<Shared>, realm: &str, which: Which, flags: u32) -> Option<i32> {
    let now = unix_now_s();
    let pending = match step_credentials(s, realm, which, now) {
        Ok(p) => p,
        Err(code) => return Some(code),
    };
    let cached = s
        .services
        .tables
        .creds
        .get(pending.username.as_bytes())
        .lookup(&pending.username, realm, now)
        .map(|v| v.cloned());
    let cred = cached?;
    Some(step_verify(
        s,
        &pending,
        cred.as_deref(),
        realm,
        which,
        flags,
    ))
}

async fn authorize(s: &Rc<Shared>, realm: &str, which: Which, flags: u32) -> i32 {
    let svc = s.services.clone();
    let now = unix_now_s();
    let pending = match step_credentials(s, realm, which, now) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Step 2: the subscriber, from the shared cache or the database.
    let domain = realm.to_string();
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
                let _ = s.with_msg(|m| m.last_error = Some((500, "Server Internal Error")));
                return AuthCode::GenericError.code();
            };
            s.counters.incr(Counter::DbQueries);
            let fut = match db.credentials(&pending.username, &domain) {
                Ok(f) => f,
                Err(_) => {
                    s.counters.incr(Counter::DbErrors);
                    let _ = s.with_msg(|m| m.last_error = Some((500, "Server Internal Error")));
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
                Ok(Err(_)) | Err(_) => {
                    s.counters.incr(Counter::DbErrors);
                    s.counters.incr(Counter::AuthDbTimeout);
                    let _ = s.with_msg(|m| m.last_error = Some((500, "Server Internal Error")));
                    return AuthCode::GenericError.code();
                }
            }
        }
    };
    step_verify(s, &pending, cred.as_deref(), realm, which, flags)
}

/// Steps 3 and 4 on the message: digest, nonce count, identity.
#[allow(clippy::too_many_arguments)]
fn verify_in(
    m: &super::MsgCtx,
    svc: &super::services::Services,
    pending: &Pending,
    cred: Option<&CachedCred>,
    realm: &str,
    which: Which,
    flags: u32,
    use_domain: bool,
) -> (AuthCode, Option<String>) {
    {
        let msg = m.msg();
        let is_register = msg.method() == Some(crate::sip::Method::Register);
        let hdr = header_for(which, is_register);
        let Ok(Some(creds)) = find_credentials(msg.headers(hdr), realm) else {
            return (AuthCode::GenericError, None);
        };
        let secret = cred.map(|c| {
            if creds.algorithm == Algorithm::Md5 {
                let h = if use_domain || pending.username.contains('@') {
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
        let mut nc = svc.tables.nc.get(creds.nonce.raw().as_bytes());
        let code = post_auth(&creds, secret, &req, Some(&mut nc));
        if code != AuthCode::Ok {
            return (code, None);
        }
        let ident = |na: Option<crate::sip::NameAddr<'_>>| -> (String, String) {
            na.and_then(|n| n.uri_parsed().ok())
                .map(|u| {
                    (
                        String::from_utf8_lossy(u.user.unwrap_or(b"")).into_owned(),
                        String::from_utf8_lossy(u.host).into_owned(),
                    )
                })
                .unwrap_or_default()
        };
        let from = ident(msg.from().ok());
        let to = ident(msg.to().ok());
        let ruri = msg
            .ruri_parsed()
            .ok()
            .map(|u| {
                (
                    String::from_utf8_lossy(u.user.unwrap_or(b"")).into_owned(),
                    String::from_utf8_lossy(u.host).into_owned(),
                )
            })
            .unwrap_or_default();
        let code = check_identity(
            flags,
            msg.method().unwrap_or(crate::sip::Method::Other),
            realm,
            &pending.username,
            &pending.realm,
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
}

/// Sends 401/407 with one challenge per configured algorithm.
fn send_challenge(s: &Rc<Shared>, realm: &str, flags: u32, kind: Option<ChallengeKind>) -> i32 {
    let svc = s.services.clone();
    let now = unix_now_s();
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
    match r {
        Ok(true) => {
            s.counters.incr(Counter::AuthChallenges);
            1
        }
        _ => -1,
    }
}
