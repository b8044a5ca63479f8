//! KSR.sanity: RFC sanity checks of a SIP message (Kamailio `sanity` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.sanity.sanity_check(msg_checks, uri_checks)` | `int (int, int)` | 1 every selected check passed; -1 one failed (the module has already sent its reply, see below) |
//! | `KSR.sanity.sanity_check_defaults()` | `int ()` | as `sanity_check(3047, 7)` (the `default_checks` / `uri_checks` defaults) |
//! | `KSR.sanity.sanity_reply()` | `int ()` | 1; with `noreply` set, sends the reply the last failed check asked for (500 "Server Sanity Failure" when none) |
//!
//! `msg_checks` bits, run in Kamailio's order (1, 2, 4, 16384, 8, 16, 32,
//! 64, 128, 256, 512, 1024, 2048, 8192, 4096), stopping at the first failure:
//!
//! | bit | check | reply on failure |
//! |---|---|---|
//! | 1 | R-URI SIP version is 2.0 | 505 Version Not Supported (R-URI) |
//! | 2 | R-URI scheme is sip/sips/tel/tels/urn | 400 Bad Request URI (unparseable or another scheme, as Kamailio's parser refuses it before its 416 test) |
//! | 4 | From, To, Call-ID, CSeq present, none of them twice | none (the message is not answered) |
//! | 8 | Via SIP version (a no-op in Kamailio too) | - |
//! | 16 | Via protocol (a no-op in Kamailio too) | - |
//! | 32 | CSeq method equals the request method | 400 Missing method in CSeq header / CSeq method does not match request method |
//! | 64 | CSeq number is an unsigned 32-bit integer | 400 Missing number in CSeq header / CSeq number is illegal |
//! | 128 | Content-Length equals the body size | 400 Content-Length Failure / Content-Length mis-match |
//! | 256 | Expires is an unsigned integer | 400 Bad Expires Header (empty) / Expires value is illegal |
//! | 512 | every Proxy-Require token is in `proxy_require` (empty by default) | 420 Bad Proxy Require Extension with `Unsupported: <token>`; 400 Bad Proxy Require Header |
//! | 1024 | the URIs `uri_checks` selects parse (1 R-URI, 2 From, 4 To, 8 Contact) | 400 Bad Request URI / Invalid From Header / Ivalid To Header (Kamailio's spelling) / Bad Contact Header / Bad Contact URI |
//! | 2048 | digest credentials (Authorization, Proxy-Authorization) have username, realm, nonce, uri and response (their form is not checked); a non-digest scheme fails without a reply | 400 Bad Auth Header / Bad Auth Credentials / Auth Empty User / Auth Empty Nonce / Auth Empty Response |
//! | 4096 | From and To carry at most one tag | 400 Many From Tag Params / Many To Tag Params |
//! | 8192 | as 2048, but a non-digest scheme passes | as 2048 |
//! | 16384 | the top Via parses and has a host | none |
//!
//! Replies and ACKs are never answered. Like Kamailio's KEMI export, the
//! call returns -1 on a failure whatever `autodrop` says: the script stops
//! itself (`KSR.x.exit()` / `KSR.x.drop()`). Module parameters come from
//! the config's `[sanity]` section, with Kamailio's names and defaults:
//! `default_checks` 3047, `uri_checks` 7, `proxy_require` "" (comma
//! separated), `noreply` false, `autodrop` true (accepted, no effect on the
//! KEMI return). Failures are counted in `sanity.failed`.

use std::rc::Rc;

use mlua::{Lua, Table};

use super::{MsgCtx, Shared};
use crate::auth::{Credentials, CredentialsError};
use crate::sip::{Contact, HdrName, Method, NameAddr, Scheme, SipUri, StartLine};
use crate::stats::Counter;

pub const RURI_SIP_VERSION: i64 = 1;
pub const RURI_SCHEME: i64 = 1 << 1;
pub const REQUIRED_HEADERS: i64 = 1 << 2;
pub const CSEQ_METHOD: i64 = 1 << 5;
pub const CSEQ_VALUE: i64 = 1 << 6;
pub const CONTENT_LENGTH: i64 = 1 << 7;
pub const EXPIRES_VALUE: i64 = 1 << 8;
pub const PROXY_REQUIRE: i64 = 1 << 9;
pub const PARSE_URIS: i64 = 1 << 10;
pub const DIGEST: i64 = 1 << 11;
pub const DUPTAGS: i64 = 1 << 12;
pub const AUTHORIZATION: i64 = 1 << 13;
pub const VIA1_HEADER: i64 = 1 << 14;

pub const URI_RURI: i64 = 1;
pub const URI_FROM: i64 = 1 << 1;
pub const URI_TO: i64 = 1 << 2;
pub const URI_CONTACT: i64 = 1 << 3;

/// The module parameters (Kamailio names and defaults).
#[derive(Clone, Debug)]
pub struct SanityParams {
    pub default_checks: i64,
    pub uri_checks: i64,
    /// Extensions a Proxy-Require may name.
    pub proxy_require: Vec<String>,
    /// Keep the reply for `sanity_reply()` instead of sending it.
    pub noreply: bool,
}

impl Default for SanityParams {
    fn default() -> Self {
        SanityParams {
            default_checks: 3047,
            uri_checks: 7,
            proxy_require: Vec::new(),
            noreply: false,
        }
    }
}

/// Why a check failed: the reply to send (none for a message Kamailio
/// does not answer) and an `Unsupported:` token for a 420.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reply: Option<(u16, &'static str)>,
    pub unsupported: Option<Vec<u8>>,
}

fn fail(code: u16, reason: &'static str) -> Failure {
    Failure {
        reply: Some((code, reason)),
        unsupported: None,
    }
}

fn silent() -> Failure {
    Failure {
        reply: None,
        unsupported: None,
    }
}

impl SanityParams {
    pub fn from_config(c: &crate::config::SanityConfig) -> SanityParams {
        SanityParams {
            default_checks: c.default_checks,
            uri_checks: c.uri_checks,
            proxy_require: c
                .proxy_require
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            noreply: c.noreply,
        }
    }
}

/// The `[sanity]` section, set once at startup before any shard builds
/// its engine (read-only afterwards; engines built without it, as in unit
/// tests, use Kamailio's defaults).
static CONFIGURED: std::sync::OnceLock<SanityParams> = std::sync::OnceLock::new();

/// Installs the `[sanity]` parameters for every engine built afterwards.
pub fn configure(c: &crate::config::SanityConfig) {
    let _ = CONFIGURED.set(SanityParams::from_config(c));
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let params = CONFIGURED.get().cloned().unwrap_or_default();
    register_with(lua, ksr, shared, params)
}

pub(super) fn register_with(
    lua: &Lua,
    ksr: &Table,
    shared: &Rc<Shared>,
    params: SanityParams,
) -> mlua::Result<()> {
    let params = Rc::new(params);
    let t = lua.create_table()?;
    let (s, p) = (shared.clone(), params.clone());
    t.set(
        "sanity_check",
        lua.create_function(move |_, (mc, uc): (i64, i64)| {
            s.with_msg(|m| sanity_check(&s, m, &p, mc, uc))
        })?,
    )?;
    let (s, p) = (shared.clone(), params.clone());
    t.set(
        "sanity_check_defaults",
        lua.create_function(move |_, ()| {
            s.with_msg(|m| sanity_check(&s, m, &p, p.default_checks, p.uri_checks))
        })?,
    )?;
    let (s, p) = (shared.clone(), params);
    t.set(
        "sanity_reply",
        lua.create_function(move |_, ()| s.with_msg(|m| sanity_reply(&s, m, &p)))?,
    )?;
    ksr.set("sanity", t)
}

fn answerable(m: &MsgCtx) -> bool {
    let msg = m.msg();
    msg.is_request() && msg.method() != Some(Method::Ack)
}

fn sanity_check(s: &Shared, m: &mut MsgCtx, p: &SanityParams, mc: i64, uc: i64) -> i32 {
    if p.noreply {
        m.sanity_error = None;
    }
    let Err(f) = check(m, p, mc, uc) else {
        return 1;
    };
    s.counters.incr(Counter::SanityFailed);
    if let Some((code, reason)) = f.reply {
        if answerable(m) {
            if p.noreply {
                m.sanity_error = Some((code, reason));
            } else {
                if let Some(tok) = &f.unsupported {
                    m.reply_headers.extend_from_slice(b"Unsupported: ");
                    m.reply_headers.extend_from_slice(tok);
                    m.reply_headers.extend_from_slice(b"\r\n");
                }
                super::sl::reply_counted(s, m, code, reason.as_bytes());
            }
        }
    }
    -1
}

fn sanity_reply(s: &Shared, m: &mut MsgCtx, p: &SanityParams) -> i32 {
    if !answerable(m) || !p.noreply {
        return 1;
    }
    let (code, reason) = m.sanity_error.unwrap_or((500, "Server Sanity Failure"));
    if super::sl::reply_counted(s, m, code, reason.as_bytes()) {
        1
    } else {
        -1
    }
}

/// Runs the checks `mc` selects (URIs per `uc`), in Kamailio's order.
pub fn check(m: &MsgCtx, p: &SanityParams, mc: i64, uc: i64) -> Result<(), Failure> {
    type Check = fn(&MsgCtx, &SanityParams, i64) -> Result<(), Failure>;
    const ORDER: [(i64, Check); 13] = [
        (RURI_SIP_VERSION, ruri_sip_version),
        (RURI_SCHEME, ruri_scheme),
        (REQUIRED_HEADERS, required_headers),
        (VIA1_HEADER, via1_header),
        (CSEQ_METHOD, cseq_method),
        (CSEQ_VALUE, cseq_value),
        (CONTENT_LENGTH, content_length),
        (EXPIRES_VALUE, expires_value),
        (PROXY_REQUIRE, proxy_require),
        (PARSE_URIS, parse_uris),
        (DIGEST, digest),
        (AUTHORIZATION, authorization),
        (DUPTAGS, duptags),
    ];
    for (bit, f) in ORDER {
        if mc & bit != 0 {
            f(m, p, uc)?;
        }
    }
    Ok(())
}

fn ruri_sip_version(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    let StartLine::Request { version, .. } = m.parsed.start else {
        return Ok(());
    };
    let v = version.get(&m.buf[..m.len]);
    if v.is_empty() {
        return Ok(());
    }
    let Some(slash) = v.iter().position(|&c| c == b'/') else {
        return Err(silent());
    };
    if v.get(slash + 1..) != Some(&b"2.0"[..]) {
        return Err(fail(505, "Version Not Supported (R-URI)"));
    }
    Ok(())
}

/// A URI scheme Kamailio's parser knows (sip, sips, tel, tels, urn).
fn known_scheme(u: &SipUri<'_>) -> bool {
    match u.scheme {
        Scheme::Sip | Scheme::Sips | Scheme::Tel => true,
        Scheme::Other => {
            let r = u.raw;
            r.len() > 5
                && (r[..5].eq_ignore_ascii_case(b"tels:") || r[..4].eq_ignore_ascii_case(b"urn:"))
        }
    }
}

fn ruri_scheme(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    if !m.msg().is_request() {
        return Ok(());
    }
    let Some(ruri) = m.ruri() else {
        return Err(fail(400, "Bad Request URI"));
    };
    match SipUri::parse(ruri) {
        Err(_) => Err(fail(400, "Bad Request URI")),
        // Kamailio's URI parser already refuses other schemes: 400, not 416.
        Ok(u) if !known_scheme(&u) => Err(fail(400, "Bad Request URI")),
        Ok(_) => Ok(()),
    }
}

fn required_headers(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    let msg = m.msg();
    for name in [HdrName::From, HdrName::To, HdrName::CallId, HdrName::CSeq] {
        if msg.headers(name).count() != 1 {
            return Err(silent());
        }
    }
    Ok(())
}

fn via1_header(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    match m.msg().top_via() {
        Ok(v) if !v.host.is_empty() => Ok(()),
        _ => Err(silent()),
    }
}

/// The CSeq value as (number, method) tokens.
fn cseq_parts(m: &MsgCtx) -> Option<(&[u8], &[u8])> {
    let v = m.msg().header(HdrName::CSeq)?.trim_ascii();
    let split = v.iter().position(|c| c.is_ascii_whitespace());
    Some(match split {
        Some(i) => (&v[..i], v[i..].trim_ascii()),
        None => (v, &[][..]),
    })
}

fn cseq_method(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    let StartLine::Request { method_span, .. } = m.parsed.start else {
        return Ok(());
    };
    let Some((_, method)) = cseq_parts(m) else {
        return Err(silent());
    };
    if method.is_empty() {
        return Err(fail(400, "Missing method in CSeq header"));
    }
    if method != method_span.get(&m.buf[..m.len]) {
        return Err(fail(400, "CSeq method does not match request method"));
    }
    Ok(())
}

/// Kamailio's `str2valid_uint`: digits only, at most 2^32-1.
fn valid_uint(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 10
        && v.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
            .is_some()
}

fn cseq_value(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    let Some((num, _)) = cseq_parts(m) else {
        return Err(silent());
    };
    if num.is_empty() {
        return Err(fail(400, "Missing number in CSeq header"));
    }
    if !valid_uint(num) {
        return Err(fail(400, "CSeq number is illegal"));
    }
    Ok(())
}

fn content_length(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    let msg = m.msg();
    let Ok(cl) = msg.content_length() else {
        return Err(fail(400, "Content-Length Failure"));
    };
    let Some(cl) = cl else { return Ok(()) };
    let start = m.parsed.body.start as usize;
    let actual = m.len.saturating_sub(start);
    if actual != cl as usize {
        return Err(fail(400, "Content-Length mis-match"));
    }
    Ok(())
}

fn expires_value(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    let Some(v) = m.msg().header(HdrName::Expires) else {
        return Ok(());
    };
    let v = v.trim_ascii();
    if v.is_empty() {
        return Err(fail(400, "Bad Expires Header"));
    }
    if !valid_uint(v) {
        return Err(fail(400, "Expires value is illegal"));
    }
    Ok(())
}

fn proxy_require(m: &MsgCtx, p: &SanityParams, _: i64) -> Result<(), Failure> {
    for v in m.msg().headers(HdrName::ProxyRequire) {
        let mut any = false;
        for tok in v.split(|&c| c == b',') {
            let tok = tok.trim_ascii();
            if tok.is_empty() {
                continue;
            }
            any = true;
            // Kamailio compares the tokens case-sensitively.
            if !p.proxy_require.iter().any(|s| s.as_bytes() == tok) {
                return Err(Failure {
                    reply: Some((420, "Bad Proxy Require Extension")),
                    unsupported: Some(tok.iter().copied().filter(|c| *c >= b' ').collect()),
                });
            }
        }
        if !any {
            return Err(fail(400, "Bad Proxy Require Header"));
        }
    }
    Ok(())
}

fn uri_parses(uri: &[u8]) -> bool {
    SipUri::parse(uri).is_ok_and(|u| known_scheme(&u))
}

fn parse_uris(m: &MsgCtx, _: &SanityParams, uc: i64) -> Result<(), Failure> {
    let msg = m.msg();
    if uc & URI_RURI != 0 {
        let ok = msg.is_request() && m.ruri().is_some_and(uri_parses);
        if !ok {
            return Err(fail(400, "Bad Request URI"));
        }
    }
    if uc & URI_FROM != 0 {
        let Some(v) = msg.header(HdrName::From) else {
            return Err(silent());
        };
        if !NameAddr::parse(v).is_ok_and(|na| uri_parses(na.uri)) {
            return Err(fail(400, "Invalid From Header"));
        }
    }
    if uc & URI_TO != 0 {
        let Some(v) = msg.header(HdrName::To) else {
            return Err(silent());
        };
        if !NameAddr::parse(v).is_ok_and(|na| uri_parses(na.uri)) {
            return Err(fail(400, "Ivalid To Header"));
        }
    }
    if uc & URI_CONTACT != 0 {
        match msg.contacts().next() {
            None | Some(Ok(Contact::Star)) => {}
            Some(Err(_)) => return Err(fail(400, "Bad Contact Header")),
            Some(Ok(Contact::Addr(na))) => {
                if !uri_parses(na.uri) {
                    return Err(fail(400, "Bad Contact URI"));
                }
            }
        }
    }
    Ok(())
}

/// Every Authorization / Proxy-Authorization value: `Ok(true)` all digest
/// and complete, `Ok(false)` some credentials are not digest.
fn digest_only(m: &MsgCtx) -> Result<bool, Failure> {
    let msg = m.msg();
    let values = msg
        .headers(HdrName::Authorization)
        .chain(msg.headers(HdrName::ProxyAuthorization));
    for v in values {
        let c = match Credentials::parse(v) {
            Ok(c) => c,
            Err(CredentialsError::NotDigest) => return Ok(false),
            Err(CredentialsError::NotUtf8 | CredentialsError::Unterminated) => {
                return Err(fail(400, "Bad Auth Header"))
            }
            // Kamailio checks that the fields are there, not their form.
            Err(
                CredentialsError::BadResponse
                | CredentialsError::BadNc
                | CredentialsError::UnsupportedQop
                | CredentialsError::UnsupportedAlgorithm,
            ) => continue,
            Err(_) => return Err(fail(400, "Bad Auth Credentials")),
        };
        if c.username.raw().is_empty() {
            return Err(fail(400, "Auth Empty User"));
        }
        if c.nonce.raw().is_empty() {
            return Err(fail(400, "Auth Empty Nonce"));
        }
        if c.response.is_empty() {
            return Err(fail(400, "Auth Empty Response"));
        }
    }
    Ok(true)
}

fn digest(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    match digest_only(m)? {
        true => Ok(()),
        false => Err(silent()),
    }
}

fn authorization(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    digest_only(m).map(|_| ())
}

fn duptags(m: &MsgCtx, _: &SanityParams, _: i64) -> Result<(), Failure> {
    let msg = m.msg();
    let (Ok(from), Ok(to)) = (msg.from(), msg.to()) else {
        return Err(silent());
    };
    let tags = |na: &NameAddr<'_>| {
        na.params
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"tag"))
            .count()
    };
    if tags(&from) > 1 {
        return Err(fail(400, "Many From Tag Params"));
    }
    if tags(&to) > 1 {
        return Err(fail(400, "Many To Tag Params"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{engine, global_int, run};
    use super::*;

    fn wire(m: &MsgCtx) -> String {
        let o = m.out.first().expect("a reply was sent");
        String::from_utf8_lossy(&m.out_buf[o.start as usize..o.end as usize]).into_owned()
    }

    const OK_REQ: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-s1\r\n\
        From: <sip:alice@example.com>;tag=f1\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: s1@192.0.2.9\r\n\
        CSeq: 1 INVITE\r\n\
        Max-Forwards: 70\r\n";

    fn req(extra: &str, body: &str) -> Vec<u8> {
        format!(
            "{OK_REQ}{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    const SCRIPT: &str = "function ksr_request_route() rc = KSR.sanity.sanity_check(17895, 7) end";

    #[test]
    fn params_from_config() {
        let c = crate::config::SanityConfig {
            proxy_require: " foo, ,bar ".into(),
            ..Default::default()
        };
        let p = SanityParams::from_config(&c);
        assert_eq!(p.proxy_require, vec!["foo".to_string(), "bar".to_string()]);
        assert_eq!(
            (p.default_checks, p.uri_checks, p.noreply),
            (3047, 7, false)
        );
        let mut m = MsgCtx::new(65535, 128);
        m.load(
            &req("Proxy-Require: bar\r\n", ""),
            "192.0.2.9:5060".parse().unwrap(),
            "10.0.0.1:5060".parse().unwrap(),
        );
        m.parse(&crate::sip::Limits::default()).unwrap();
        assert_eq!(check(&m, &p, PROXY_REQUIRE, 7), Ok(()));
        assert!(check(&m, &SanityParams::default(), PROXY_REQUIRE, 7).is_err());
    }

    #[test]
    fn reply_checks() {
        let load = |text: &str| {
            let mut m = MsgCtx::new(65535, 128);
            m.load(
                text.as_bytes(),
                "192.0.2.9:5060".parse().unwrap(),
                "10.0.0.1:5060".parse().unwrap(),
            );
            m.parse(&crate::sip::Limits::default()).unwrap();
            m
        };
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-r\r\n\
            From: <sip:alice@example.com>;tag=f\r\nTo: <sip:bob@example.com>;tag=t\r\n\
            Call-ID: r@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let p = SanityParams::default();
        // The basic script's reply check.
        assert_eq!(check(&load(ok), &p, 17604, 6), Ok(()));
        let bad = ok.replace("To: <sip:bob@example.com>", "To: <bob-at-example>");
        assert_eq!(
            check(&load(&bad), &p, 17604, 6),
            Err(fail(400, "Ivalid To Header"))
        );
        // A reply is never answered: nothing goes out.
        let eng = engine("function ksr_request_route() end");
        let mut m = load(&bad);
        assert_eq!(sanity_check(eng.shared(), &mut m, &p, 17604, 6), -1);
        assert!(m.out.is_empty());
    }

    #[test]
    fn good_request_passes() {
        let eng = engine(SCRIPT);
        let (m, _) = run(&eng, &req("Expires: 60\r\n", "v=0\r\n"));
        assert_eq!(global_int(&eng, "rc"), 1);
        assert!(m.out.is_empty());
        let eng =
            engine("function ksr_request_route() rc = KSR.sanity.sanity_check_defaults() end");
        run(&eng, &req("", ""));
        assert_eq!(global_int(&eng, "rc"), 1);
    }

    #[test]
    fn failures_reply_with_kamailio_codes() {
        // The basic script's checks plus proxy-require (512) and digest (2048).
        let eng = engine(
            "function ksr_request_route() rc = KSR.sanity.sanity_check(17895 + 512 + 2048, 7) end",
        );
        for (msg, code, reason) in [
            (
                req("", ""),
                0,
                "",
            ),
            (
                String::from_utf8(req("", ""))
                    .unwrap()
                    .replacen("CSeq: 1 INVITE", "CSeq: 1 BYE", 1)
                    .into_bytes(),
                400,
                "CSeq method does not match request method",
            ),
            (
                String::from_utf8(req("", ""))
                    .unwrap()
                    .replacen("CSeq: 1 INVITE", "CSeq: 99999999999 INVITE", 1)
                    .into_bytes(),
                400,
                "CSeq number is illegal",
            ),
            (req("Expires: 1x\r\n", ""), 400, "Expires value is illegal"),
            (req("Expires: \r\n", ""), 400, "Bad Expires Header"),
            (
                req("Authorization: Digest username=\"\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"0123456789abcdef0123456789abcdef\"\r\n", ""),
                400,
                "Auth Empty User",
            ),
            (
                req("Authorization: Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"0123\"\r\n", ""),
                0,
                "",
            ),
            (req("Expires: 99999999999\r\n", ""), 400, "Expires value is illegal"),
            (
                req("Proxy-Require: foo\r\n", ""),
                420,
                "Bad Proxy Require Extension",
            ),
            (
                String::from_utf8(req("", ""))
                    .unwrap()
                    .replacen("INVITE sip:bob@example.com", "INVITE http://example.com/", 1)
                    .into_bytes(),
                400,
                "Bad Request URI",
            ),
            (
                req("Authorization: Digest realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"0123456789abcdef0123456789abcdef\"\r\n", ""),
                400,
                "Bad Auth Credentials",
            ),
        ] {
            let (m, _) = run(&eng, &msg);
            if code == 0 {
                assert_eq!(global_int(&eng, "rc"), 1);
                continue;
            }
            assert_eq!(global_int(&eng, "rc"), -1, "{reason}");
            let w = wire(&m);
            assert!(
                w.starts_with(&format!("SIP/2.0 {code} {reason}\r\n")),
                "{reason}: {w}"
            );
            if code == 420 {
                assert!(w.contains("\r\nUnsupported: foo\r\n"), "{w}");
            }
        }
    }

    #[test]
    fn version_content_length_and_tags() {
        let eng = engine(
            "function ksr_request_route() a = KSR.sanity.sanity_check(1, 7) b = KSR.sanity.sanity_check(128, 7) c = KSR.sanity.sanity_check(4096, 7) end",
        );
        let bad_ver =
            String::from_utf8(req("", ""))
                .unwrap()
                .replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1);
        // The parser may refuse a non-2.0 request line outright; when it
        // accepts one, sanity answers 505.
        let mut p = crate::sip::Parsed::default();
        if crate::sip::parse(
            bad_ver.as_bytes(),
            crate::sip::Framing::Datagram,
            &crate::sip::Limits::default(),
            &mut p,
        )
        .is_ok()
        {
            let (m, _) = run(&eng, bad_ver.as_bytes());
            assert_eq!(global_int(&eng, "a"), -1);
            assert!(wire(&m).starts_with("SIP/2.0 505 Version Not Supported (R-URI)\r\n"));
        }
        // A body longer than Content-Length says.
        let mut long = req("", "");
        long.extend_from_slice(b"extra");
        let (m, _) = run(&eng, &long);
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), -1);
        assert!(wire(&m).starts_with("SIP/2.0 400 Content-Length mis-match\r\n"));
        let dup = String::from_utf8(req("", ""))
            .unwrap()
            .replacen(";tag=f1", ";tag=f1;tag=f2", 1);
        let (m, _) = run(&eng, dup.as_bytes());
        assert_eq!(global_int(&eng, "c"), -1);
        assert!(wire(&m).starts_with("SIP/2.0 400 Many From Tag Params\r\n"));
    }

    #[test]
    fn required_headers_fail_silently() {
        let eng = engine("function ksr_request_route() rc = KSR.sanity.sanity_check(4, 7) end");
        let dup = String::from_utf8(req("", "")).unwrap().replacen(
            "Call-ID: s1@192.0.2.9\r\n",
            "Call-ID: s1@192.0.2.9\r\nCall-ID: s2\r\n",
            1,
        );
        let (m, _) = run(&eng, dup.as_bytes());
        assert_eq!(global_int(&eng, "rc"), -1);
        assert!(m.out.is_empty(), "no reply for a broken transaction key");
    }

    #[test]
    fn ack_is_not_answered_and_counts() {
        let eng = engine(SCRIPT);
        let ack = String::from_utf8(req("Expires: x\r\n", ""))
            .unwrap()
            .replace("INVITE", "ACK");
        let (m, _) = run(&eng, ack.as_bytes());
        assert_eq!(global_int(&eng, "rc"), -1);
        assert!(m.out.is_empty());
        let c = eng.shared().counters.values();
        assert_eq!(c[Counter::SanityFailed as usize], 1);
    }

    #[test]
    fn noreply_keeps_the_reply_for_sanity_reply() {
        let mut m = MsgCtx::new(65535, 128);
        let bytes = req("Expires: x\r\n", "");
        m.load(
            &bytes,
            "192.0.2.9:5060".parse().unwrap(),
            "10.0.0.1:5060".parse().unwrap(),
        );
        m.parse(&crate::sip::Limits::default()).unwrap();
        let p = SanityParams {
            noreply: true,
            ..SanityParams::default()
        };
        assert_eq!(
            check(&m, &p, p.default_checks, p.uri_checks),
            Err(fail(400, "Expires value is illegal"))
        );
        // Through the engine: noreply stores, sanity_reply sends.
        let eng = engine("function ksr_request_route() end");
        let s = eng.shared();
        assert_eq!(sanity_check(s, &mut m, &p, 256, 7), -1);
        assert!(m.out.is_empty());
        assert_eq!(m.sanity_error, Some((400, "Expires value is illegal")));
        assert_eq!(sanity_reply(s, &mut m, &p), 1);
        assert!(wire(&m).starts_with("SIP/2.0 400 Expires value is illegal\r\n"));
        // Without noreply, sanity_reply sends nothing.
        let mut m2 = MsgCtx::new(65535, 128);
        m2.load(
            &bytes,
            "192.0.2.9:5060".parse().unwrap(),
            "10.0.0.1:5060".parse().unwrap(),
        );
        m2.parse(&crate::sip::Limits::default()).unwrap();
        assert_eq!(sanity_reply(s, &mut m2, &SanityParams::default()), 1);
        assert!(m2.out.is_empty());
    }
}
