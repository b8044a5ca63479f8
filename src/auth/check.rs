//! The `auth_check` / `www_authenticate` / `proxy_authenticate` flow, split
//! around the (asynchronous, elsewhere) credential lookup:
//!
//! 1. [`pre_auth`]: find the credentials for the realm (`-5` when none),
//!    parse them (`-1` when malformed), check the nonce (`-1` when not ours,
//!    `-4` when stale). Nothing here needs the database.
//! 2. The caller looks up `(username, domain)` in [`super::CredCache`] or the DB.
//! 3. [`post_auth`]: `-3` unknown user, `-2` wrong response, `-6` nonce-count
//!    replay, else `1`.
//! 4. [`check_identity`] for `auth_check`'s flags: `-8` on mismatch.
//!
//! Not checked (as in Kamailio by default): that the credentials' `uri`
//! equals the Request-URI, since proxies on the path may rewrite it.

use crate::sip::Method;

use super::credentials::{find_credentials, Credentials};
use super::digest::{verify, Secret};
use super::nc::{NcCheck, NcTracker};
use super::nonce::{NonceCheck, NonceKey};
use super::AuthCode;

/// Step 1. `values` are the `Authorization` (REGISTER / www) or
/// `Proxy-Authorization` (others / proxy) header values in order.
pub fn pre_auth<'a, I>(
    values: I,
    realm: &str,
    key: &NonceKey,
    now_unix_s: u64,
) -> Result<Credentials<'a>, AuthCode>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let creds = match find_credentials(values, realm) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(AuthCode::NoCredentials),
        Err(_) => return Err(AuthCode::GenericError),
    };
    match key.check(&creds.nonce.unescaped(), realm, now_unix_s) {
        NonceCheck::Valid => Ok(creds),
        NonceCheck::Stale => Err(AuthCode::NonceExpired),
        NonceCheck::Invalid => Err(AuthCode::GenericError),
    }
}

/// What identifies the request being authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestRequest<'a> {
    /// The method that enters HA2 (the request method, or the `method`
    /// parameter of `www_authenticate(realm, table, method)`).
    pub method: &'a str,
    /// Message body, used only for `qop=auth-int`.
    pub body: &'a [u8],
    pub call_id: &'a [u8],
    pub cseq: u32,
    pub cseq_method: &'a [u8],
}

/// Step 3. `secret` is `None` when the user does not exist. With `nc` given,
/// credentials carrying `qop` are checked for nonce-count replay (after the
/// digest verified, so forged requests cannot burn nc values).
pub fn post_auth(
    creds: &Credentials<'_>,
    secret: Option<Secret<'_>>,
    req: &DigestRequest<'_>,
    nc: Option<&mut NcTracker>,
) -> AuthCode {
    let Some(secret) = secret else {
        return AuthCode::InvalidUser;
    };
    match verify(creds, req.method, req.body, secret) {
        Ok(true) => {}
        Ok(false) => return AuthCode::InvalidPassword,
        Err(_) => return AuthCode::GenericError,
    }
    if let (Some(tracker), Some(n)) = (nc, creds.nc) {
        let nonce = creds.nonce.unescaped();
        // A valid nonce always carries its expiry; 0 (never) would only
        // make an unseen nonce count as possibly evicted.
        let expires = super::nonce::nonce_expires_unix_s(&nonce).unwrap_or(0);
        match tracker.check_at(
            &nonce,
            Some(expires),
            n.value,
            req.call_id,
            req.cseq,
            req.cseq_method,
        ) {
            NcCheck::Fresh | NcCheck::Retransmission => {}
            NcCheck::Replay => return AuthCode::NonceReused,
            NcCheck::Forgotten => return AuthCode::NonceExpired,
        }
    }
    AuthCode::Ok
}

/// `user` and `host` of a From / To / Request-URI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UriIdentity<'a> {
    pub user: &'a str,
    pub host: &'a str,
}

/// `auth_check` flag 1: check the auth user against From/To (/R-URI).
pub const IDENTITY_CHECK: u32 = 1;
/// `auth_check` flag 2 (with 1, i.e. flags == 3): skip the check for INVITE,
/// BYE, PRACK, UPDATE and MESSAGE, which may carry an anonymous caller id.
pub const IDENTITY_SKIP_ANONYMOUS_METHODS: u32 = 2;

/// Kamailio `auth_check(realm, table, flags)` identity checks, per its docs:
/// with flag 1, REGISTER needs From and To users equal to the auth user,
/// PUBLISH needs From, To and R-URI, every other method needs From; and every
/// checked URI's domain, and the credentials' realm, must equal `realm`
/// (domains compare case-insensitively, users exactly). With flags 3 the
/// check is skipped for INVITE, BYE, PRACK, UPDATE and MESSAGE.
#[allow(clippy::too_many_arguments)]
pub fn check_identity(
    flags: u32,
    method: Method,
    realm: &str,
    auth_user: &str,
    auth_realm: &str,
    from: UriIdentity<'_>,
    to: UriIdentity<'_>,
    ruri: UriIdentity<'_>,
) -> AuthCode {
    if flags & IDENTITY_CHECK == 0 {
        return AuthCode::Ok;
    }
    if flags & IDENTITY_SKIP_ANONYMOUS_METHODS != 0
        && matches!(
            method,
            Method::Invite | Method::Bye | Method::Prack | Method::Update | Method::Message
        )
    {
        return AuthCode::Ok;
    }
    if !auth_realm.eq_ignore_ascii_case(realm) {
        return AuthCode::AuthUserMismatch;
    }
    let ok = |id: UriIdentity<'_>| id.user == auth_user && id.host.eq_ignore_ascii_case(realm);
    let pass = match method {
        Method::Register => ok(from) && ok(to),
        Method::Publish => ok(from) && ok(to) && ok(ruri),
        _ => ok(from),
    };
    if pass {
        AuthCode::Ok
    } else {
        AuthCode::AuthUserMismatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::digest::{ha1, ha2, response, Algorithm};
    use crate::auth::{Nc, Qop};

    const NOW: u64 = 1_700_000_000;
    const REALM: &str = "example.com";

    /// Builds a client's Authorization value for `nonce` as a UA would.
    fn client(
        alg: Algorithm,
        user: &str,
        pw: &str,
        nonce: &str,
        method: &str,
        nc: Option<u32>,
    ) -> String {
        let uri = "sip:example.com";
        let h1 = ha1(alg, user.as_bytes(), REALM.as_bytes(), pw.as_bytes());
        match nc {
            Some(n) => {
                let ncs = format!("{n:08x}");
                let h2 = ha2(alg, method.as_bytes(), uri.as_bytes(), Some(Qop::Auth), b"");
                let r = response(
                    alg,
                    h1.as_bytes(),
                    nonce.as_bytes(),
                    Some((Qop::Auth, ncs.as_bytes(), b"abc")),
                    h2.as_bytes(),
                );
                format!(
                    "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
                     response=\"{r}\", algorithm={}, qop=auth, nc={ncs}, cnonce=\"abc\"",
                    alg.as_str()
                )
            }
            None => {
                let h2 = ha2(alg, method.as_bytes(), uri.as_bytes(), None, b"");
                let r = response(alg, h1.as_bytes(), nonce.as_bytes(), None, h2.as_bytes());
                format!(
                    "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
                     response=\"{r}\", algorithm={}",
                    alg.as_str()
                )
            }
        }
    }

    fn req<'a>(call_id: &'a str, cseq: u32) -> DigestRequest<'a> {
        DigestRequest {
            method: "REGISTER",
            body: b"",
            call_id: call_id.as_bytes(),
            cseq,
            cseq_method: b"REGISTER",
        }
    }

    /// Runs both steps the way the KSR layer will.
    fn run(
        hdrs: &[&str],
        key: &NonceKey,
        now: u64,
        pw: Option<&str>,
        r: &DigestRequest<'_>,
        nc: &mut NcTracker,
    ) -> AuthCode {
        let vals = hdrs.iter().map(|h| h.as_bytes());
        match pre_auth(vals, REALM, key, now) {
            Err(code) => code,
            Ok(c) => post_auth(&c, pw.map(Secret::Password), r, Some(nc)),
        }
    }

    #[test]
    fn full_flow_table() {
        let key = NonceKey::new([1; 32]);
        let other_key = NonceKey::new([2; 32]);
        let n = key.make(NOW, REALM, 1);
        let n_other_realm = key.make(NOW, "other.org", 2);
        let n_other_secret = other_key.make(NOW, REALM, 3);
        let good = client(Algorithm::Md5, "alice", "pw", &n, "REGISTER", Some(1));
        let sha = client(Algorithm::Sha256, "alice", "pw", &n, "REGISTER", Some(1));
        let no_qop = client(Algorithm::Md5, "alice", "pw", &n, "REGISTER", None);
        let wrong_pw = client(Algorithm::Md5, "alice", "nope", &n, "REGISTER", Some(1));
        let realm_forged = client(
            Algorithm::Md5,
            "alice",
            "pw",
            &n_other_realm,
            "REGISTER",
            Some(1),
        );
        let secret_forged = client(
            Algorithm::Md5,
            "alice",
            "pw",
            &n_other_secret,
            "REGISTER",
            Some(1),
        );
        let garbage_nonce = client(
            Algorithm::Md5,
            "alice",
            "pw",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "REGISTER",
            Some(1),
        );
        let other_realm_hdr = good.replace("realm=\"example.com\"", "realm=\"elsewhere\"");
        type Case<'a> = (&'a str, Vec<&'a str>, u64, Option<&'a str>, AuthCode);
        let cases: [Case<'_>; 12] = [
            ("ok md5", vec![&good], NOW, Some("pw"), AuthCode::Ok),
            ("ok sha-256", vec![&sha], NOW, Some("pw"), AuthCode::Ok),
            (
                "ok without qop",
                vec![&no_qop],
                NOW,
                Some("pw"),
                AuthCode::Ok,
            ),
            (
                "no header",
                vec![],
                NOW,
                Some("pw"),
                AuthCode::NoCredentials,
            ),
            (
                "other realm only",
                vec![&other_realm_hdr],
                NOW,
                Some("pw"),
                AuthCode::NoCredentials,
            ),
            (
                "garbage header",
                vec!["Digest username=\"x"],
                NOW,
                Some("pw"),
                AuthCode::GenericError,
            ),
            (
                "wrong password",
                vec![&wrong_pw],
                NOW,
                Some("pw"),
                AuthCode::InvalidPassword,
            ),
            (
                "unknown user",
                vec![&good],
                NOW,
                None,
                AuthCode::InvalidUser,
            ),
            (
                "stale",
                vec![&good],
                NOW + 300,
                Some("pw"),
                AuthCode::NonceExpired,
            ),
            (
                "nonce for other realm",
                vec![&realm_forged],
                NOW,
                Some("pw"),
                AuthCode::GenericError,
            ),
            (
                "nonce from other secret",
                vec![&secret_forged],
                NOW,
                Some("pw"),
                AuthCode::GenericError,
            ),
            (
                "not our nonce",
                vec![&garbage_nonce],
                NOW,
                Some("pw"),
                AuthCode::GenericError,
            ),
        ];
        for (name, hdrs, now, pw, want) in cases {
            let mut nc = NcTracker::new(16);
            assert_eq!(
                run(&hdrs, &key, now, pw, &req("cid", 1), &mut nc),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn replay_and_retransmission() {
        let key = NonceKey::new([1; 32]);
        let n = key.make(NOW, REALM, 1);
        let mut nc = NcTracker::new(16);
        let h1 = client(Algorithm::Md5, "alice", "pw", &n, "REGISTER", Some(1));
        let h2 = client(Algorithm::Md5, "alice", "pw", &n, "REGISTER", Some(2));
        let steps = [
            (&h1, "cid", 1, AuthCode::Ok),
            (&h1, "cid", 1, AuthCode::Ok), // UDP retransmission
            (&h1, "cid", 2, AuthCode::NonceReused), // replay as a new request
            (&h2, "cid", 2, AuthCode::Ok),
            (&h1, "other", 7, AuthCode::NonceReused),
            (&h2, "cid", 2, AuthCode::Ok), // retransmission again
        ];
        for (i, (h, cid, cseq, want)) in steps.into_iter().enumerate() {
            assert_eq!(
                run(&[h], &key, NOW + 1, Some("pw"), &req(cid, cseq), &mut nc),
                want,
                "step {i}"
            );
        }
        // A wrong password with a fresh nc must not burn it.
        let bad = client(Algorithm::Md5, "alice", "wrong", &n, "REGISTER", Some(3));
        assert_eq!(
            run(&[&bad], &key, NOW + 1, Some("pw"), &req("cid", 3), &mut nc),
            AuthCode::InvalidPassword
        );
        let good3 = client(Algorithm::Md5, "alice", "pw", &n, "REGISTER", Some(3));
        assert_eq!(
            run(
                &[&good3],
                &key,
                NOW + 1,
                Some("pw"),
                &req("cid", 3),
                &mut nc
            ),
            AuthCode::Ok
        );
    }

    #[test]
    fn stored_ha1_and_mismatched_algorithm() {
        let key = NonceKey::new([1; 32]);
        let n = key.make(NOW, REALM, 1);
        let h = client(Algorithm::Sha256, "alice", "pw", &n, "REGISTER", Some(1));
        let c = pre_auth([h.as_bytes()], REALM, &key, NOW).expect("pre");
        let md5_ha1 = ha1(Algorithm::Md5, b"alice", REALM.as_bytes(), b"pw");
        assert_eq!(
            post_auth(&c, Some(Secret::Ha1(md5_ha1.as_str())), &req("c", 1), None),
            AuthCode::GenericError
        );
        let sha_ha1 = ha1(Algorithm::Sha256, b"alice", REALM.as_bytes(), b"pw");
        assert_eq!(
            post_auth(&c, Some(Secret::Ha1(sha_ha1.as_str())), &req("c", 1), None),
            AuthCode::Ok
        );
        assert_eq!(
            c.nc,
            Some(Nc {
                raw: "00000001",
                value: 1
            })
        );
    }

    #[test]
    fn identity_table() {
        let alice = UriIdentity {
            user: "alice",
            host: "example.com",
        };
        let alice_uc = UriIdentity {
            user: "alice",
            host: "EXAMPLE.com",
        };
        let bob = UriIdentity {
            user: "bob",
            host: "example.com",
        };
        let alice_elsewhere = UriIdentity {
            user: "alice",
            host: "evil.org",
        };
        let anon = UriIdentity {
            user: "anonymous",
            host: "anonymous.invalid",
        };
        use AuthCode::{AuthUserMismatch as Mis, Ok};
        // (flags, method, auth_realm, from, to, ruri, expected)
        let cases = [
            (0, Method::Register, REALM, bob, bob, bob, Ok),
            (1, Method::Register, REALM, alice, alice, bob, Ok),
            (1, Method::Register, REALM, alice_uc, alice, bob, Ok),
            (1, Method::Register, REALM, alice, bob, bob, Mis),
            (1, Method::Register, REALM, bob, alice, bob, Mis),
            (1, Method::Register, REALM, alice_elsewhere, alice, bob, Mis),
            (1, Method::Register, "other", alice, alice, bob, Mis),
            (1, Method::Publish, REALM, alice, alice, alice, Ok),
            (1, Method::Publish, REALM, alice, alice, bob, Mis),
            (1, Method::Invite, REALM, alice, bob, bob, Ok),
            (1, Method::Invite, REALM, anon, bob, bob, Mis),
            (3, Method::Invite, REALM, anon, bob, bob, Ok),
            (3, Method::Bye, REALM, anon, bob, bob, Ok),
            (3, Method::Prack, REALM, anon, bob, bob, Ok),
            (3, Method::Update, REALM, anon, bob, bob, Ok),
            (3, Method::Message, REALM, anon, bob, bob, Ok),
            (3, Method::Subscribe, REALM, anon, bob, bob, Mis),
            (3, Method::Register, REALM, anon, alice, bob, Mis),
            (2, Method::Register, REALM, anon, anon, anon, Ok),
        ];
        for (i, (flags, m, auth_realm, from, to, ruri, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                check_identity(flags, m, REALM, "alice", auth_realm, from, to, ruri),
                want,
                "case {i}"
            );
        }
    }
}
