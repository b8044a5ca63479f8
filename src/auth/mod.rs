//! Digest authentication, pure: parsing of `Authorization` /
//! `Proxy-Authorization` values, RFC 2617 / RFC 7616 / RFC 8760 digest math,
//! stateless tamper-proof nonces, nonce-count replay tracking, challenge
//! building, a per-shard credential cache, and Kamailio's auth return codes.
//!
//! This module owns the *logic* of `KSR.auth.*` / `KSR.auth_db.*`. It must
//! never do I/O: no sockets, no database, no clock reads (`now_unix_s` is
//! always a parameter), no executor, script engine or database crate. Every
//! table it keeps ([`NcTracker`], [`CredCache`]) has a configured maximum.
//!
//! # How the KSR layer uses it (sans-IO, two steps around the DB lookup)
//!
//! ```text
//! auth_check(realm, table, flags):
//!   pre_auth(headers, realm, &nonce_key, now)  -> Err(code) | Ok(creds)
//!   cache.lookup(creds.username, domain, now)  -> hit | miss -> ask db, cache.insert
//!   post_auth(&creds, Some(secret), &request, Some(&mut nc))   -> AuthCode
//!   check_identity(flags, ...)                 -> AuthCode::AuthUserMismatch (-8)
//! auth_challenge(realm, flags):
//!   nonce = nonce_key.make(now, realm, nonce_gen.next_unique())
//!   challenges(realm, &nonce, None, &[alg..], ChallengeFlags::from_bits(flags))
//! ```
//!
//! Return codes ([`AuthCode`]) are the ones documented by Kamailio's `auth_db`
//! module for `www_authenticate` / `proxy_authenticate` / `auth_check` and by
//! the `auth` module for `pv_auth_check`.

#![forbid(unsafe_code)]

mod cache;
mod challenge;
mod check;
mod client;
mod credentials;
mod digest;
mod nc;
mod nonce;

pub use cache::CredCache;
pub use challenge::{
    challenge, challenges, parse_algorithms, ChallengeFlags, ChallengeKind, PvAuthFlags,
};
pub use check::{
    check_identity, post_auth, pre_auth, DigestRequest, UriIdentity, IDENTITY_CHECK,
    IDENTITY_SKIP_ANONYMOUS_METHODS,
};
pub use client::{Challenge, Login};
pub use credentials::{find_credentials, Credentials, CredentialsError, Nc, QStr, Qop};
pub use digest::{
    ct_eq_hex, ha1, ha2, response, verify, Algorithm, HexDigest, Secret, VerifyError,
};
pub use nc::{NcCheck, NcTracker};
pub use nonce::{NonceCheck, NonceGen, NonceKey, NONCE_LEN};

/// Return codes of Kamailio's authentication functions, as documented for
/// `auth_db`'s `www_authenticate()` / `proxy_authenticate()` / `auth_check()`
/// ("Negative codes may be interpreted as follows") and `auth`'s
/// `pv_www_authenticate()` / `pv_auth_check()`.
///
/// `-7` is not documented and not used. The KSR layer returns
/// [`AuthCode::code`] to Lua unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthCode {
    /// `1`: credentials verified.
    Ok,
    /// `-1` (generic error): bad or unparseable credentials, a nonce that was
    /// not made by us (tampered, garbage, other secret, other realm), or an
    /// internal error. No reply was sent.
    GenericError,
    /// `-2` (invalid password): the response does not match.
    InvalidPassword,
    /// `-3` (invalid user): the authentication user does not exist.
    InvalidUser,
    /// `-4` (nonce expired): stale nonce; re-challenge with `stale=true`.
    NonceExpired,
    /// `-5` (no credentials): no Authorization header with the right realm.
    NoCredentials,
    /// `-6` (nonce reused): nonce-count replay.
    NonceReused,
    /// `-8` (auth user mismatch): From/To/R-URI user differs from the auth user.
    AuthUserMismatch,
}

impl AuthCode {
    /// The numeric value Kamailio documents (and KSR returns to Lua).
    pub const fn code(self) -> i32 {
        match self {
            AuthCode::Ok => 1,
            AuthCode::GenericError => -1,
            AuthCode::InvalidPassword => -2,
            AuthCode::InvalidUser => -3,
            AuthCode::NonceExpired => -4,
            AuthCode::NoCredentials => -5,
            AuthCode::NonceReused => -6,
            AuthCode::AuthUserMismatch => -8,
        }
    }

    /// Inverse of [`AuthCode::code`]; `None` for undocumented values.
    pub const fn from_code(code: i32) -> Option<AuthCode> {
        Some(match code {
            1 => AuthCode::Ok,
            -1 => AuthCode::GenericError,
            -2 => AuthCode::InvalidPassword,
            -3 => AuthCode::InvalidUser,
            -4 => AuthCode::NonceExpired,
            -5 => AuthCode::NoCredentials,
            -6 => AuthCode::NonceReused,
            -8 => AuthCode::AuthUserMismatch,
            _ => return None,
        })
    }

    /// The name Kamailio's documentation gives the code.
    pub const fn name(self) -> &'static str {
        match self {
            AuthCode::Ok => "authenticated",
            AuthCode::GenericError => "generic error",
            AuthCode::InvalidPassword => "invalid password",
            AuthCode::InvalidUser => "invalid user",
            AuthCode::NonceExpired => "nonce expired",
            AuthCode::NoCredentials => "no credentials",
            AuthCode::NonceReused => "nonce reused",
            AuthCode::AuthUserMismatch => "auth user mismatch",
        }
    }

    /// True when a re-challenge should carry `stale=true` (RFC 7616 §3.3).
    pub const fn is_stale(self) -> bool {
        matches!(self, AuthCode::NonceExpired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_codes_match_kamailio_docs() {
        let table = [
            (AuthCode::Ok, 1),
            (AuthCode::GenericError, -1),
            (AuthCode::InvalidPassword, -2),
            (AuthCode::InvalidUser, -3),
            (AuthCode::NonceExpired, -4),
            (AuthCode::NoCredentials, -5),
            (AuthCode::NonceReused, -6),
            (AuthCode::AuthUserMismatch, -8),
        ];
        for (code, n) in table {
            assert_eq!(code.code(), n, "{code:?}");
            assert_eq!(AuthCode::from_code(n), Some(code));
            assert!(!code.name().is_empty());
        }
        assert_eq!(AuthCode::from_code(-7), None);
        assert_eq!(AuthCode::from_code(0), None);
        assert!(AuthCode::NonceExpired.is_stale());
        assert!(!AuthCode::NonceReused.is_stale());
    }
}
