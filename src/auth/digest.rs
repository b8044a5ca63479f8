//! Digest hashing: HA1, HA2 and the request-digest of RFC 2617 §3.2.2 and
//! RFC 7616 §3.4, with the hash algorithms of RFC 7616 / RFC 8760 plus
//! Kamailio's `SHA-512`.
//!
//! ```text
//! HA1      = H(username ":" realm ":" password)
//! HA2      = H(method ":" digest-uri)                     ; qop=auth or none
//! HA2      = H(method ":" digest-uri ":" H(entity-body))  ; qop=auth-int
//! response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)   ; with qop
//! response = H(HA1 ":" nonce ":" HA2)                             ; RFC 2069
//! ```
//!
//! Hex is lowercase. Digests live in a fixed stack buffer ([`HexDigest`]);
//! nothing here allocates. The `-sess` variants are not supported.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512, Sha512_256};

use super::credentials::{Credentials, Qop};

/// Digest hash algorithm (`algorithm=` directive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `MD5` (RFC 2617; the default when `algorithm` is absent).
    #[default]
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
    /// `SHA-512-256` (RFC 7616, RFC 8760).
    Sha512_256,
    /// `SHA-512` (offered by Kamailio's `algorithm` parameter; not in RFC 7616).
    Sha512,
}

impl Algorithm {
    /// Every supported algorithm, strongest first.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Sha512_256,
        Algorithm::Sha512,
        Algorithm::Sha256,
        Algorithm::Md5,
    ];

    /// Classifies an `algorithm` token, case-insensitively. `-sess` variants
    /// and unknown names give `None`.
    pub fn from_token(token: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(token))
    }

    /// The token as written in headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512 => "SHA-512",
        }
    }

    /// Length in hex characters of a digest of this algorithm.
    pub const fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 | Algorithm::Sha512_256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Maximum hex length of any supported digest (SHA-512).
const HEX_MAX: usize = 128;

/// A lowercase hex digest on the stack.
#[derive(Clone, Copy)]
pub struct HexDigest {
    buf: [u8; HEX_MAX],
    len: u8,
}

impl HexDigest {
    fn from_raw(raw: &[u8]) -> HexDigest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        debug_assert!(raw.len() * 2 <= HEX_MAX);
        let mut buf = [0u8; HEX_MAX];
        for (i, b) in raw.iter().take(HEX_MAX / 2).enumerate() {
            buf[2 * i] = HEX[usize::from(b >> 4)];
            buf[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        let len = (raw.len() * 2).min(HEX_MAX) as u8;
        HexDigest { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for HexDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for HexDigest {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HexDigest {}

/// `H(p0 ":" p1 ":" ...)`.
fn hash_joined(alg: Algorithm, parts: &[&[u8]]) -> HexDigest {
    fn run<D: Digest>(parts: &[&[u8]]) -> HexDigest {
        let mut h = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                h.update(b":");
            }
            h.update(p);
        }
        HexDigest::from_raw(&h.finalize())
    }
    match alg {
        Algorithm::Md5 => run::<Md5>(parts),
        Algorithm::Sha256 => run::<Sha256>(parts),
        Algorithm::Sha512_256 => run::<Sha512_256>(parts),
        Algorithm::Sha512 => run::<Sha512>(parts),
    }
}

/// `HA1 = H(username ":" realm ":" password)`.
pub fn ha1(alg: Algorithm, username: &[u8], realm: &[u8], password: &[u8]) -> HexDigest {
    hash_joined(alg, &[username, realm, password])
}

/// `HA2`; `body` is used only for `qop=auth-int`.
pub fn ha2(alg: Algorithm, method: &[u8], uri: &[u8], qop: Option<Qop>, body: &[u8]) -> HexDigest {
    match qop {
        Some(Qop::AuthInt) => {
            let body_hash = hash_joined(alg, &[body]);
            hash_joined(alg, &[method, uri, body_hash.as_bytes()])
        }
        _ => hash_joined(alg, &[method, uri]),
    }
}

/// The request-digest. `qop` carries `(qop, nc, cnonce)` exactly as they
/// appear in the credentials (nc as its 8 hex digits).
pub fn response(
    alg: Algorithm,
    ha1_hex: &[u8],
    nonce: &[u8],
    qop: Option<(Qop, &[u8], &[u8])>,
    ha2_hex: &[u8],
) -> HexDigest {
    match qop {
        Some((q, nc, cnonce)) => hash_joined(
            alg,
            &[ha1_hex, nonce, nc, cnonce, q.as_str().as_bytes(), ha2_hex],
        ),
        None => hash_joined(alg, &[ha1_hex, nonce, ha2_hex]),
    }
}

/// Constant-time comparison of two hex strings, ignoring ASCII case. Time
/// depends only on the lengths, never on where the strings differ.
pub fn ct_eq_hex(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        // ASCII lowercase without a data-dependent branch: set bit 0x20 for
        // letters only. Hex digits and letters map consistently.
        diff |= (x | 0x20) ^ (y | 0x20);
    }
    // `| 0x20` maps some non-hex pairs together (e.g. '@' and '`'); reject
    // non-hex input outright (a length-only, public property of the input).
    diff == 0 && a.iter().all(u8::is_ascii_hexdigit) && b.iter().all(u8::is_ascii_hexdigit)
}

/// What the server knows about the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secret<'a> {
    /// Plaintext password (Kamailio `calculate_ha1` mode; works for any algorithm).
    Password(&'a str),
    /// Stored HA1 in hex for the algorithm the client used (the DB `ha1`
    /// column for `username`, or `ha1b` when the username is `user@domain`).
    Ha1(&'a str),
}

/// Why a response could not be checked at all (as opposed to not matching).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The stored HA1 has the wrong length for the client's algorithm (e.g.
    /// an MD5 `ha1` column with `algorithm=SHA-256`): configure a password or
    /// store HA1 for that algorithm.
    #[error("stored HA1 does not fit the requested digest algorithm")]
    Ha1Algorithm,
}

/// Checks `creds.response` for a request with this method and body (the body
/// matters only for `qop=auth-int`). The comparison is constant-time.
pub fn verify(
    creds: &Credentials<'_>,
    method: &str,
    body: &[u8],
    secret: Secret<'_>,
) -> Result<bool, VerifyError> {
    let alg = creds.algorithm;
    let username = creds.username.unescaped();
    let realm = creds.realm.unescaped();
    let computed_ha1;
    let ha1_hex: &[u8] = match secret {
        Secret::Password(pw) => {
            computed_ha1 = ha1(alg, username.as_bytes(), realm.as_bytes(), pw.as_bytes());
            computed_ha1.as_bytes()
        }
        Secret::Ha1(stored) => {
            if stored.len() != alg.hex_len() || !stored.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(VerifyError::Ha1Algorithm);
            }
            // HA1 enters the next hash as text: normalise to lowercase.
            let mut lower = [0u8; HEX_MAX];
            for (d, s) in lower.iter_mut().zip(stored.bytes()) {
                *d = s.to_ascii_lowercase();
            }
            return Ok(finish(creds, method, body, &lower[..stored.len()]));
        }
    };
    Ok(finish(creds, method, body, ha1_hex))
}

fn finish(creds: &Credentials<'_>, method: &str, body: &[u8], ha1_hex: &[u8]) -> bool {
    let alg = creds.algorithm;
    let uri = creds.uri.unescaped();
    let h2 = ha2(alg, method.as_bytes(), uri.as_bytes(), creds.qop, body);
    let nonce = creds.nonce.unescaped();
    let cnonce = creds.cnonce.map(|c| c.unescaped());
    let qop = match (creds.qop, creds.nc, cnonce.as_deref()) {
        (Some(q), Some(nc), Some(cn)) => Some((q, nc.raw.as_bytes(), cn.as_bytes())),
        _ => None,
    };
    let expected = response(alg, ha1_hex, nonce.as_bytes(), qop, h2.as_bytes());
    ct_eq_hex(expected.as_bytes(), creds.response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::credentials::Credentials;

    #[test]
    fn algorithm_tokens() {
        let table = [
            ("MD5", Some(Algorithm::Md5)),
            ("md5", Some(Algorithm::Md5)),
            ("SHA-256", Some(Algorithm::Sha256)),
            ("sha-256", Some(Algorithm::Sha256)),
            ("SHA-512-256", Some(Algorithm::Sha512_256)),
            ("SHA-512", Some(Algorithm::Sha512)),
            ("MD5-sess", None),
            ("SHA-256-sess", None),
            ("SHA1", None),
            ("", None),
        ];
        for (tok, want) in table {
            assert_eq!(Algorithm::from_token(tok), want, "{tok}");
            if let Some(a) = want {
                assert_eq!(Algorithm::from_token(a.as_str()), Some(a));
            }
        }
        assert_eq!(Algorithm::default(), Algorithm::Md5);
    }

    #[test]
    fn hex_lengths_match_hashes() {
        for alg in Algorithm::ALL {
            assert_eq!(
                ha1(alg, b"a", b"b", b"c").as_bytes().len(),
                alg.hex_len(),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn known_hashes() {
        // H("a:b:c") for each algorithm, computed independently (Python hashlib).
        let table = [
            (Algorithm::Md5, "02cc8f08398a4f3113b554e8105ebe4c"),
            (
                Algorithm::Sha256,
                "b0ee04f880c4ff4261479e2e7822b7410aee4c7159f4185ad5b0d88a312b495e",
            ),
            (
                Algorithm::Sha512_256,
                "8eb13a416df8d7c256bb1b2fdc7824b9ab088eba9459502ef1de3d73c9dd7901",
            ),
            (
                Algorithm::Sha512,
                "1bbf63bc7ff25dbe01a56a3b9f6966813c11c88d118fb8db5b8dec47055386a8\
                 4140c634df17d6ee340549acdd816d8c49fcc5d3201412e7a858583a1919d6da",
            ),
        ];
        for (alg, want) in table {
            assert_eq!(ha1(alg, b"a", b"b", b"c").as_str(), want, "{alg:?}");
        }
    }

    /// RFC 2617 §3.5.
    #[test]
    fn rfc2617_mufasa() {
        let h1 = ha1(
            Algorithm::Md5,
            b"Mufasa",
            b"testrealm@host.com",
            b"Circle Of Life",
        );
        assert_eq!(h1.as_str(), "939e7578ed9e3c518a452acee763bce9");
        let h2 = ha2(
            Algorithm::Md5,
            b"GET",
            b"/dir/index.html",
            Some(Qop::Auth),
            b"",
        );
        let r = response(
            Algorithm::Md5,
            h1.as_bytes(),
            b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some((Qop::Auth, b"00000001", b"0a4f113b")),
            h2.as_bytes(),
        );
        assert_eq!(r.as_str(), "6629fae49393a05397450978507c4ef1");
    }

    const RFC7616_HDR_SHA256: &str =
        "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
        uri=\"/dir/index.html\", algorithm=SHA-256, \
        nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
        cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
        response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", \
        opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";

    const RFC7616_HDR_MD5: &str = "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
        uri=\"/dir/index.html\", algorithm=MD5, \
        nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
        cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
        response=\"8ca523f5e9506fed4657c9700eebdbec\", \
        opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";

    /// RFC 7616 §3.9.1, both the SHA-256 and the MD5 responses.
    #[test]
    fn rfc7616_mufasa() {
        for hdr in [RFC7616_HDR_SHA256, RFC7616_HDR_MD5] {
            let c = Credentials::parse(hdr.as_bytes()).expect("parses");
            assert_eq!(
                verify(&c, "GET", b"", Secret::Password("Circle of Life")),
                Ok(true),
                "{hdr}"
            );
            assert_eq!(
                verify(&c, "GET", b"", Secret::Password("Circle Of Life")),
                Ok(false)
            );
            assert_eq!(
                verify(&c, "POST", b"", Secret::Password("Circle of Life")),
                Ok(false)
            );
            let h1 = ha1(
                c.algorithm,
                b"Mufasa",
                b"http-auth@example.org",
                b"Circle of Life",
            );
            assert_eq!(verify(&c, "GET", b"", Secret::Ha1(h1.as_str())), Ok(true));
            let upper = h1.as_str().to_ascii_uppercase();
            assert_eq!(verify(&c, "GET", b"", Secret::Ha1(&upper)), Ok(true));
        }
    }

    #[test]
    fn stored_md5_ha1_cannot_check_sha256() {
        let c = Credentials::parse(RFC7616_HDR_SHA256.as_bytes()).expect("parses");
        let md5 = ha1(
            Algorithm::Md5,
            b"Mufasa",
            b"http-auth@example.org",
            b"Circle of Life",
        );
        assert_eq!(
            verify(&c, "GET", b"", Secret::Ha1(md5.as_str())),
            Err(VerifyError::Ha1Algorithm)
        );
        let not_hex = "z".repeat(64);
        assert_eq!(
            verify(&c, "GET", b"", Secret::Ha1(&not_hex)),
            Err(VerifyError::Ha1Algorithm)
        );
    }

    #[test]
    fn no_qop_rfc2069_form() {
        // response = MD5(HA1:nonce:HA2), computed independently.
        let h1 = ha1(Algorithm::Md5, b"alice", b"example.com", b"secret");
        let h2 = ha2(Algorithm::Md5, b"REGISTER", b"sip:example.com", None, b"");
        let r = response(Algorithm::Md5, h1.as_bytes(), b"abc", None, h2.as_bytes());
        let hdr = format!(
            "Digest username=\"alice\", realm=\"example.com\", nonce=\"abc\", \
             uri=\"sip:example.com\", response=\"{r}\""
        );
        let c = Credentials::parse(hdr.as_bytes()).expect("parses");
        assert_eq!(
            verify(&c, "REGISTER", b"", Secret::Password("secret")),
            Ok(true)
        );
        assert_eq!(
            verify(&c, "REGISTER", b"", Secret::Password("Secret")),
            Ok(false)
        );
        assert_eq!(
            verify(&c, "INVITE", b"", Secret::Password("secret")),
            Ok(false)
        );
    }

    #[test]
    fn auth_int_covers_body() {
        for alg in Algorithm::ALL {
            let h1 = ha1(alg, b"bob", b"r", b"pw");
            let h2 = ha2(alg, b"MESSAGE", b"sip:a@r", Some(Qop::AuthInt), b"hello");
            let r = response(
                alg,
                h1.as_bytes(),
                b"n",
                Some((Qop::AuthInt, b"00000002", b"cn")),
                h2.as_bytes(),
            );
            let hdr = format!(
                "Digest username=\"bob\",realm=\"r\",nonce=\"n\",uri=\"sip:a@r\",qop=auth-int,\
                 nc=00000002,cnonce=\"cn\",algorithm={},response=\"{r}\"",
                alg.as_str()
            );
            let c = Credentials::parse(hdr.as_bytes()).expect("parses");
            assert_eq!(
                verify(&c, "MESSAGE", b"hello", Secret::Password("pw")),
                Ok(true),
                "{alg:?}"
            );
            assert_eq!(
                verify(&c, "MESSAGE", b"hellO", Secret::Password("pw")),
                Ok(false),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn ct_eq_hex_table() {
        let table: [(&[u8], &[u8], bool); 8] = [
            (b"", b"", true),
            (b"abc123", b"abc123", true),
            (b"ABC123", b"abc123", true),
            (b"abc123", b"abc124", false),
            (b"abc12", b"abc123", false),
            (b"@", b"`", false),
            (b"zz", b"ZZ", false),
            (b"0f", b"0F", true),
        ];
        for (a, b, want) in table {
            assert_eq!(ct_eq_hex(a, b), want, "{:?} {:?}", a, b);
        }
    }
}
