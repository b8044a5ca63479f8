//! The client half of digest authentication (RFC 2617 §3.2.1, RFC 7616 §3.3,
//! §3.4): parse a `WWW-Authenticate` / `Proxy-Authenticate` challenge and
//! write the matching `Authorization` value. Used by `sipshard bench`; the
//! directive lexer and the hashing are the server's own
//! ([`super::credentials`], [`super::digest`]).
//!
//! ```text
//! challenge  = "Digest" LWS digest-cln *(COMMA digest-cln)
//! digest-cln = realm / domain / nonce / opaque / stale / algorithm
//!              / qop-options / auth-param
//! qop-options = "qop" EQUAL LDQUOT qop-value *("," qop-value) RDQUOT
//! ```
//!
//! No I/O, no clock, no randomness: the caller passes the cnonce and nc.

use std::fmt::Write as _;

use super::credentials::{digest_scheme_end, for_each_directive, CredentialsError, QStr};
use super::digest::{ha1, ha2, response, Algorithm};
use super::Qop;

/// One parsed digest challenge. Strings borrow the header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub realm: QStr<'a>,
    pub nonce: QStr<'a>,
    pub opaque: Option<QStr<'a>>,
    /// `MD5` when absent.
    pub algorithm: Algorithm,
    /// `qop` offered `auth` (the only one a client here answers with).
    pub qop_auth: bool,
    pub stale: bool,
}

impl<'a> Challenge<'a> {
    /// Parses one challenge value. A `-sess` or unknown algorithm is
    /// [`CredentialsError::UnsupportedAlgorithm`].
    pub fn parse(s: &'a str) -> Result<Challenge<'a>, CredentialsError> {
        let start = digest_scheme_end(s)?;
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = None;
        let mut qop = None;
        let mut stale = false;
        for_each_directive(s, start, |name, value| {
            let slot = if name.eq_ignore_ascii_case("realm") {
                &mut realm
            } else if name.eq_ignore_ascii_case("nonce") {
                &mut nonce
            } else if name.eq_ignore_ascii_case("opaque") {
                &mut opaque
            } else if name.eq_ignore_ascii_case("algorithm") {
                &mut algorithm
            } else if name.eq_ignore_ascii_case("qop") {
                &mut qop
            } else {
                if name.eq_ignore_ascii_case("stale") {
                    stale = value.raw().eq_ignore_ascii_case("true");
                }
                return Ok(());
            };
            if slot.replace(value).is_some() {
                return Err(CredentialsError::Duplicate);
            }
            Ok(())
        })?;
        let algorithm = match algorithm {
            None => Algorithm::Md5,
            Some(a) => {
                Algorithm::from_token(a.raw()).ok_or(CredentialsError::UnsupportedAlgorithm)?
            }
        };
        let qop_auth = qop.is_some_and(|q: QStr<'a>| {
            q.raw()
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("auth"))
        });
        Ok(Challenge {
            realm: realm.ok_or(CredentialsError::MissingRealm)?,
            nonce: nonce.ok_or(CredentialsError::MissingNonce)?,
            opaque,
            algorithm,
            qop_auth,
            stale,
        })
    }

    /// Appends the `Authorization` value answering this challenge for
    /// `method` and `uri`. With `qop=auth` offered, answers with it, using
    /// `nc` and `cnonce` (a token: no quotes or backslashes); otherwise the
    /// RFC 2069 form. `username` and `password` are used as given.
    pub fn write_authorization(
        &self,
        out: &mut String,
        login: Login<'_>,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) {
        let Login { username, password } = login;
        let realm = self.realm.unescaped();
        let nonce = self.nonce.unescaped();
        let alg = self.algorithm;
        let h1 = ha1(
            alg,
            username.as_bytes(),
            realm.as_bytes(),
            password.as_bytes(),
        );
        let qop = self.qop_auth.then_some(Qop::Auth);
        let h2 = ha2(alg, method.as_bytes(), uri.as_bytes(), qop, b"");
        let mut nc_hex = [0u8; 8];
        write_nc(&mut nc_hex, nc);
        let resp = response(
            alg,
            h1.as_bytes(),
            nonce.as_bytes(),
            qop.map(|q| (q, &nc_hex[..], cnonce.as_bytes())),
            h2.as_bytes(),
        );
        // Realm and nonce go back exactly as they came (still escaped).
        let _ = write!(
            out,
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}",
            self.realm.raw(),
            self.nonce.raw(),
            alg.as_str()
        );
        if qop.is_some() {
            let nc_str = std::str::from_utf8(&nc_hex).unwrap_or("00000001");
            let _ = write!(out, ", cnonce=\"{cnonce}\", nc={nc_str}, qop=auth");
        }
        if let Some(o) = self.opaque {
            let _ = write!(out, ", opaque=\"{}\"", o.raw());
        }
    }
}

/// Who answers a challenge.
#[derive(Clone, Copy, Debug)]
pub struct Login<'a> {
    pub username: &'a str,
    pub password: &'a str,
}

/// `nc` as 8 lowercase hex digits.
fn write_nc(out: &mut [u8; 8], nc: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((nc >> (28 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{verify, Credentials, Secret};

    fn roundtrip(challenge: &str, alg: Algorithm, qop: bool) {
        let c = Challenge::parse(challenge).expect("challenge parses");
        assert_eq!(c.algorithm, alg);
        assert_eq!(c.qop_auth, qop);
        let mut out = String::new();
        c.write_authorization(
            &mut out,
            Login {
                username: "alice",
                password: "secret",
            },
            "REGISTER",
            "sip:example.com",
            1,
            "c1",
        );
        // The server's own parser and verifier accept it...
        let creds = Credentials::parse_str(&out).expect("credentials parse");
        assert_eq!(creds.algorithm, alg);
        assert_eq!(creds.qop.is_some(), qop);
        assert_eq!(
            verify(&creds, "REGISTER", b"", Secret::Password("secret")),
            Ok(true)
        );
        // ...and refuse a wrong password.
        assert_eq!(
            verify(&creds, "REGISTER", b"", Secret::Password("wrong")),
            Ok(false)
        );
    }

    #[test]
    fn answers_md5_and_sha256_with_and_without_qop() {
        roundtrip(
            "Digest realm=\"example.com\", nonce=\"abc\", qop=\"auth,auth-int\", algorithm=MD5",
            Algorithm::Md5,
            true,
        );
        roundtrip(
            "Digest realm=\"example.com\", nonce=\"abc\", qop=\"auth\", algorithm=SHA-256, opaque=\"o\"",
            Algorithm::Sha256,
            true,
        );
        roundtrip(
            "Digest realm=\"example.com\", nonce=\"n\"",
            Algorithm::Md5,
            false,
        );
    }

    #[test]
    fn bad_challenges_are_errors() {
        for bad in [
            "Basic realm=\"x\"",
            "Digest nonce=\"n\"",
            "Digest realm=\"r\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess",
            "Digest realm=\"r\", realm=\"r\", nonce=\"n\"",
            "Digest realm=\"r, nonce=\"n",
            "",
        ] {
            assert!(Challenge::parse(bad).is_err(), "{bad}");
        }
        let c = Challenge::parse("Digest realm=\"r\", nonce=\"n\", stale=TRUE").unwrap();
        assert!(c.stale);
    }

    #[test]
    fn nc_is_eight_hex_digits() {
        let mut b = [0u8; 8];
        write_nc(&mut b, 0x1a);
        assert_eq!(&b, b"0000001a");
        write_nc(&mut b, u32::MAX);
        assert_eq!(&b, b"ffffffff");
    }
}
