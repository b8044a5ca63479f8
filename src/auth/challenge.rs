//! `WWW-Authenticate` / `Proxy-Authenticate` values (RFC 7616 §3.3):
//!
//! ```text
//! challenge = "Digest" LWS digest-cln *(COMMA digest-cln)
//! digest-cln = realm / domain / nonce / opaque / stale / algorithm / qop-options
//! ```
//!
//! Flags follow Kamailio's `www_challenge(realm, flags [, algorithms])` /
//! `proxy_challenge` / `auth_challenge` documentation ([`ChallengeFlags`]).
//! RFC 8760 §3: a server offering several algorithms sends one challenge per
//! algorithm, most preferred first, all with the same nonce ([`challenges`]).

use super::digest::Algorithm;

/// 401 + `WWW-Authenticate` (REGISTER / `www_challenge`) or 407 +
/// `Proxy-Authenticate` (everything else / `proxy_challenge`). Kamailio's
/// `auth_challenge` picks by method: REGISTER → WWW, others → Proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    Www,
    Proxy,
}

impl ChallengeKind {
    /// The kind `auth_challenge` uses for a request method.
    pub fn for_method(method: &str) -> ChallengeKind {
        if method == "REGISTER" {
            ChallengeKind::Www
        } else {
            ChallengeKind::Proxy
        }
    }

    pub const fn status(self) -> u16 {
        match self {
            ChallengeKind::Www => 401,
            ChallengeKind::Proxy => 407,
        }
    }

    pub const fn reason(self) -> &'static str {
        match self {
            ChallengeKind::Www => "Unauthorized",
            ChallengeKind::Proxy => "Proxy Authentication Required",
        }
    }

    /// Header carrying the challenge in the reply.
    pub const fn header_name(self) -> &'static str {
        match self {
            ChallengeKind::Www => "WWW-Authenticate",
            ChallengeKind::Proxy => "Proxy-Authenticate",
        }
    }

    /// Header the client answers with.
    pub const fn credentials_header_name(self) -> &'static str {
        match self {
            ChallengeKind::Www => "Authorization",
            ChallengeKind::Proxy => "Proxy-Authorization",
        }
    }
}

/// Kamailio `www_challenge` / `proxy_challenge` / `auth_challenge` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChallengeFlags {
    /// `1`: build the challenge with `qop=auth`.
    pub qop_auth: bool,
    /// `2`: build the challenge with `qop=auth-int`.
    pub qop_auth_int: bool,
    /// `4`: do not send `500 Internal Server Error` automatically on failure;
    /// return the error code to the script instead (a KSR-layer concern).
    pub no_auto_500: bool,
    /// `16`: build the challenge with `stale=true`.
    pub stale: bool,
}

impl ChallengeFlags {
    pub const QOP_AUTH: u32 = 1;
    pub const QOP_AUTH_INT: u32 = 2;
    pub const NO_AUTO_500: u32 = 4;
    pub const STALE: u32 = 16;

    /// Decodes the script's bitmask; unknown bits are ignored.
    pub const fn from_bits(bits: u32) -> ChallengeFlags {
        ChallengeFlags {
            qop_auth: bits & Self::QOP_AUTH != 0,
            qop_auth_int: bits & Self::QOP_AUTH_INT != 0,
            no_auto_500: bits & Self::NO_AUTO_500 != 0,
            stale: bits & Self::STALE != 0,
        }
    }

    pub const fn bits(self) -> u32 {
        let mut bits = 0;
        if self.qop_auth {
            bits |= Self::QOP_AUTH;
        }
        if self.qop_auth_int {
            bits |= Self::QOP_AUTH_INT;
        }
        if self.no_auto_500 {
            bits |= Self::NO_AUTO_500;
        }
        if self.stale {
            bits |= Self::STALE;
        }
        bits
    }
}

/// Kamailio `pv_www_authenticate` / `pv_proxy_authenticate` / `pv_auth_check`
/// flags (a different table from [`ChallengeFlags`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvAuthFlags {
    /// `1`: the password parameter is in HA1 format.
    pub password_is_ha1: bool,
    /// `2`: build a challenge with no qop (into an avp).
    pub challenge_no_qop: bool,
    /// `4`: build a challenge with `qop=auth`.
    pub challenge_qop_auth: bool,
    /// `8`: build a challenge with `qop=auth-int`.
    pub challenge_qop_auth_int: bool,
    /// `16`: build the challenge with `stale=true`.
    pub stale: bool,
    /// `32`: do not invalidate nc on authentication failure. (This module
    /// never records nc for failed checks, so it is always honoured.)
    pub keep_nc_on_failure: bool,
}

impl PvAuthFlags {
    pub const fn from_bits(bits: u32) -> PvAuthFlags {
        PvAuthFlags {
            password_is_ha1: bits & 1 != 0,
            challenge_no_qop: bits & 2 != 0,
            challenge_qop_auth: bits & 4 != 0,
            challenge_qop_auth_int: bits & 8 != 0,
            stale: bits & 16 != 0,
            keep_nc_on_failure: bits & 32 != 0,
        }
    }

    /// The equivalent challenge flags for the avp challenge.
    pub const fn challenge_flags(self) -> ChallengeFlags {
        ChallengeFlags {
            qop_auth: self.challenge_qop_auth,
            qop_auth_int: self.challenge_qop_auth_int,
            no_auto_500: false,
            stale: self.stale,
        }
    }
}

fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        // quoted-pair for '"' and '\'; CR/LF could split the header: dropped.
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' => {}
            _ => out.push(c),
        }
    }
    out.push('"');
}

/// One challenge value, e.g.
/// `Digest realm="example.com", nonce="…", qop="auth", algorithm=MD5, stale=true`.
pub fn challenge(
    realm: &str,
    nonce: &str,
    opaque: Option<&str>,
    algorithm: Algorithm,
    flags: ChallengeFlags,
) -> String {
    let mut out = String::with_capacity(96 + realm.len() + nonce.len());
    out.push_str("Digest realm=");
    push_quoted(&mut out, realm);
    out.push_str(", nonce=");
    push_quoted(&mut out, nonce);
    if let Some(o) = opaque {
        out.push_str(", opaque=");
        push_quoted(&mut out, o);
    }
    match (flags.qop_auth, flags.qop_auth_int) {
        (true, true) => out.push_str(", qop=\"auth,auth-int\""),
        (true, false) => out.push_str(", qop=\"auth\""),
        (false, true) => out.push_str(", qop=\"auth-int\""),
        (false, false) => {}
    }
    out.push_str(", algorithm=");
    out.push_str(algorithm.as_str());
    if flags.stale {
        out.push_str(", stale=true");
    }
    out
}

/// One challenge per algorithm, in the given (preference) order, sharing the
/// nonce (RFC 8760 §3; Kamailio's `algorithms` parameter). Empty `algorithms`
/// means MD5 only. Duplicates are dropped.
pub fn challenges(
    realm: &str,
    nonce: &str,
    opaque: Option<&str>,
    algorithms: &[Algorithm],
    flags: ChallengeFlags,
) -> Vec<String> {
    if algorithms.is_empty() {
        return vec![challenge(realm, nonce, opaque, Algorithm::Md5, flags)];
    }
    let mut seen: Vec<Algorithm> = Vec::with_capacity(algorithms.len());
    let mut out = Vec::with_capacity(algorithms.len());
    for &a in algorithms {
        if !seen.contains(&a) {
            seen.push(a);
            out.push(challenge(realm, nonce, opaque, a, flags));
        }
    }
    out
}

/// Parses Kamailio's comma-separated `algorithms` list, e.g.
/// `"SHA-512-256,SHA-256,MD5"`. Whitespace around names is ignored; an
/// unknown name is an error (returned as the offending token).
pub fn parse_algorithms(list: &str) -> Result<Vec<Algorithm>, &str> {
    let mut out = Vec::new();
    for tok in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let a = Algorithm::from_token(tok).ok_or(tok)?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Credentials;

    #[test]
    fn flags_table() {
        let table = [
            (0, "Digest realm=\"r\", nonce=\"N\", algorithm=MD5"),
            (
                1,
                "Digest realm=\"r\", nonce=\"N\", qop=\"auth\", algorithm=MD5",
            ),
            (
                2,
                "Digest realm=\"r\", nonce=\"N\", qop=\"auth-int\", algorithm=MD5",
            ),
            (
                3,
                "Digest realm=\"r\", nonce=\"N\", qop=\"auth,auth-int\", algorithm=MD5",
            ),
            (4, "Digest realm=\"r\", nonce=\"N\", algorithm=MD5"),
            (
                16,
                "Digest realm=\"r\", nonce=\"N\", algorithm=MD5, stale=true",
            ),
            (
                17,
                "Digest realm=\"r\", nonce=\"N\", qop=\"auth\", algorithm=MD5, stale=true",
            ),
        ];
        for (bits, want) in table {
            let f = ChallengeFlags::from_bits(bits);
            assert_eq!(f.bits(), bits, "{bits}");
            assert_eq!(challenge("r", "N", None, Algorithm::Md5, f), want, "{bits}");
        }
        let f = ChallengeFlags::from_bits(0xffff_ffe0);
        assert_eq!(f, ChallengeFlags::default());
        assert!(ChallengeFlags::from_bits(4).no_auto_500);
    }

    #[test]
    fn opaque_escaping_and_algorithms() {
        let got = challenge(
            "a\"b\\c\r\nd",
            "N",
            Some("o"),
            Algorithm::Sha256,
            ChallengeFlags::from_bits(1),
        );
        assert_eq!(got, "Digest realm=\"a\\\"b\\\\cd\", nonce=\"N\", opaque=\"o\", qop=\"auth\", algorithm=SHA-256");
        let all = challenges(
            "r",
            "N",
            None,
            &[Algorithm::Sha256, Algorithm::Md5, Algorithm::Sha256],
            ChallengeFlags::from_bits(1),
        );
        assert_eq!(
            all,
            vec![
                "Digest realm=\"r\", nonce=\"N\", qop=\"auth\", algorithm=SHA-256".to_string(),
                "Digest realm=\"r\", nonce=\"N\", qop=\"auth\", algorithm=MD5".to_string(),
            ]
        );
        assert_eq!(
            challenges("r", "N", None, &[], ChallengeFlags::default()).len(),
            1
        );
    }

    #[test]
    fn challenge_round_trips_through_credentials_parser() {
        // A challenge uses the same directive syntax as credentials; make
        // sure our quoting is parseable by our own parser.
        let c = challenge(
            "we\"ird",
            "N",
            Some("o"),
            Algorithm::Md5,
            ChallengeFlags::from_bits(17),
        );
        let as_creds = c.replacen(
            "Digest ",
            "Digest username=u, uri=u, response=6629fae49393a05397450978507c4ef1, ",
            1,
        );
        let as_creds = as_creds
            .replace(", qop=\"auth\"", "")
            .replace(", stale=true", "");
        let p = Credentials::parse(as_creds.as_bytes()).expect("parses");
        assert_eq!(p.realm.unescaped(), "we\"ird");
    }

    #[test]
    fn algorithm_list() {
        assert_eq!(
            parse_algorithms("SHA-512-256, SHA-256 ,MD5,md5"),
            Ok(vec![
                Algorithm::Sha512_256,
                Algorithm::Sha256,
                Algorithm::Md5
            ])
        );
        assert_eq!(parse_algorithms(""), Ok(vec![]));
        assert_eq!(parse_algorithms("MD5,MD5-sess"), Err("MD5-sess"));
    }

    #[test]
    fn kinds() {
        assert_eq!(ChallengeKind::for_method("REGISTER"), ChallengeKind::Www);
        assert_eq!(ChallengeKind::for_method("INVITE"), ChallengeKind::Proxy);
        assert_eq!(ChallengeKind::Www.status(), 401);
        assert_eq!(ChallengeKind::Proxy.status(), 407);
        assert_eq!(ChallengeKind::Www.header_name(), "WWW-Authenticate");
        assert_eq!(
            ChallengeKind::Proxy.credentials_header_name(),
            "Proxy-Authorization"
        );
        assert!(!ChallengeKind::Proxy.reason().is_empty());
    }

    #[test]
    fn pv_flags() {
        let f = PvAuthFlags::from_bits(1 | 4 | 16 | 32);
        assert!(f.password_is_ha1 && f.challenge_qop_auth && f.stale && f.keep_nc_on_failure);
        assert!(!f.challenge_no_qop && !f.challenge_qop_auth_int);
        assert_eq!(
            f.challenge_flags().bits(),
            ChallengeFlags::QOP_AUTH | ChallengeFlags::STALE
        );
        assert_eq!(
            PvAuthFlags::from_bits(8).challenge_flags().bits(),
            ChallengeFlags::QOP_AUTH_INT
        );
    }
}
