//! Zero-copy parser for `Authorization` / `Proxy-Authorization` values
//! (RFC 3261 §25.1, RFC 2617 §3.2.2, RFC 7616 §3.4):
//!
//! ```text
//! credentials     = "Digest" LWS digest-response
//! digest-response = dig-resp *(COMMA dig-resp)
//! dig-resp        = username / realm / nonce / digest-uri / dresponse
//!                   / algorithm / cnonce / opaque / message-qop
//!                   / nonce-count / auth-param
//! auth-param      = auth-param-name EQUAL ( token / quoted-string )
//! nonce-count     = "nc" EQUAL 8LHEX
//! ```
//!
//! Directives may come in any order; unknown ones are ignored; a known one
//! given twice is an error. Quoted strings keep their backslash escapes in
//! [`QStr`] until [`QStr::unescaped`] is asked for. Garbage gives a
//! [`CredentialsError`], never a panic.

use std::borrow::Cow;

use super::digest::Algorithm;

/// Quality of protection (`qop=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qop {
    Auth,
    AuthInt,
}

impl Qop {
    pub const fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// A directive value as written: the inside of a quoted string (escapes not
/// yet resolved) or a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QStr<'a> {
    raw: &'a str,
}

impl<'a> QStr<'a> {
    pub const fn new(raw: &'a str) -> Self {
        QStr { raw }
    }

    /// The value with escapes still in place.
    pub const fn raw(&self) -> &'a str {
        self.raw
    }

    /// The value with `\x` quoted-pairs resolved; borrows when there are none.
    pub fn unescaped(&self) -> Cow<'a, str> {
        if !self.raw.contains('\\') {
            return Cow::Borrowed(self.raw);
        }
        let mut out = String::with_capacity(self.raw.len());
        let mut chars = self.raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// Compares the unescaped value with `s` without allocating.
    pub fn eq_unescaped(&self, s: &str) -> bool {
        if !self.raw.contains('\\') {
            return self.raw == s;
        }
        self.unescaped() == s
    }
}

/// `nc=` value: the 8 hex digits as sent (they enter the digest verbatim) and
/// their value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nc<'a> {
    pub raw: &'a str,
    pub value: u32,
}

/// Parsed digest credentials. All strings borrow the header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: QStr<'a>,
    pub realm: QStr<'a>,
    pub nonce: QStr<'a>,
    pub uri: QStr<'a>,
    /// Hex, of the length [`Algorithm::hex_len`] gives (checked).
    pub response: &'a str,
    /// `MD5` when absent.
    pub algorithm: Algorithm,
    /// Present (with `nc`) exactly when `qop` is.
    pub cnonce: Option<QStr<'a>>,
    pub nc: Option<Nc<'a>>,
    pub qop: Option<Qop>,
    pub opaque: Option<QStr<'a>>,
}

/// Why a credentials value was refused. Maps to [`AuthCode::GenericError`]
/// (`-1`, "bad credentials").
///
/// [`AuthCode::GenericError`]: super::AuthCode::GenericError
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    #[error("credentials are not UTF-8")]
    NotUtf8,
    #[error("credentials scheme is not Digest")]
    NotDigest,
    #[error("malformed digest directive list")]
    Syntax,
    #[error("unterminated quoted string")]
    Unterminated,
    #[error("digest directive given twice")]
    Duplicate,
    #[error("username missing")]
    MissingUsername,
    #[error("realm missing")]
    MissingRealm,
    #[error("nonce missing")]
    MissingNonce,
    #[error("uri missing")]
    MissingUri,
    #[error("response missing")]
    MissingResponse,
    #[error("qop given without cnonce")]
    MissingCnonce,
    #[error("qop given without nc")]
    MissingNc,
    #[error("nc is not 8 hex digits or is zero")]
    BadNc,
    #[error("unsupported qop")]
    UnsupportedQop,
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("response is not a hex digest of the algorithm's length")]
    BadResponse,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 `token` characters.
fn is_token(b: u8) -> bool {
    crate::sip::lex::TOKEN[usize::from(b)]
}

impl<'a> Credentials<'a> {
    /// Parses one header value.
    pub fn parse(value: &'a [u8]) -> Result<Credentials<'a>, CredentialsError> {
        let s = std::str::from_utf8(value).map_err(|_| CredentialsError::NotUtf8)?;
        Self::parse_str(s)
    }

    /// Parses one header value given as `&str`.
    pub fn parse_str(s: &'a str) -> Result<Credentials<'a>, CredentialsError> {
        let i = digest_scheme_end(s)?;
        let mut f = Fields::default();
        for_each_directive(s, i, |name, value| f.set(name, value))?;
        f.finish()
    }
}

/// Checks that `s` starts with the `Digest` scheme; returns the byte just
/// past it.
pub(super) fn digest_scheme_end(s: &str) -> Result<usize, CredentialsError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    let scheme_start = i;
    while i < b.len() && is_token(b[i]) {
        i += 1;
    }
    if !s[scheme_start..i].eq_ignore_ascii_case("Digest") {
        return Err(CredentialsError::NotDigest);
    }
    if i < b.len() && !is_ws(b[i]) {
        return Err(CredentialsError::NotDigest);
    }
    Ok(i)
}

/// Walks the `name=value` directive list of a digest header value from byte
/// `i` (just past the scheme), calling `f` for each. Shared by the
/// credentials parser and the client-side challenge parser
/// ([`super::client::Challenge`]).
pub(super) fn for_each_directive<'a>(
    s: &'a str,
    mut i: usize,
    mut f: impl FnMut(&'a str, QStr<'a>) -> Result<(), CredentialsError>,
) -> Result<(), CredentialsError> {
    let b = s.as_bytes();
    {
        loop {
            // Skip separators: whitespace and (possibly empty) list elements.
            while i < b.len() && (is_ws(b[i]) || b[i] == b',') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let name_start = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            if i == name_start {
                return Err(CredentialsError::Syntax);
            }
            let name = &s[name_start..i];
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i >= b.len() || b[i] != b'=' {
                return Err(CredentialsError::Syntax);
            }
            i += 1;
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let start = i;
                loop {
                    // jump to the next quote or backslash (values are long:
                    // nonce, response, uri, cnonce)
                    let rest = b.get(i..).unwrap_or_default();
                    i += memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                    match b.get(i) {
                        None => return Err(CredentialsError::Unterminated),
                        Some(b'\\') => {
                            if i + 1 >= b.len() {
                                return Err(CredentialsError::Unterminated);
                            }
                            i += 2;
                        }
                        _ => break, // the closing quote
                    }
                }
                let v = &s[start..i];
                i += 1;
                v
            } else {
                // Lenient: an unquoted value runs to the next separator, so
                // broken clients sending `uri=sip:a@b` still parse.
                let start = i;
                while i < b.len() && !is_ws(b[i]) && b[i] != b',' && b[i] != b'"' {
                    i += 1;
                }
                if i == start {
                    return Err(CredentialsError::Syntax);
                }
                &s[start..i]
            };
            // Slicing above is at ASCII positions, so it never splits a char.
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i < b.len() && b[i] != b',' {
                return Err(CredentialsError::Syntax);
            }
            f(name, QStr::new(value))?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Fields<'a> {
    username: Option<QStr<'a>>,
    realm: Option<QStr<'a>>,
    nonce: Option<QStr<'a>>,
    uri: Option<QStr<'a>>,
    response: Option<QStr<'a>>,
    algorithm: Option<QStr<'a>>,
    cnonce: Option<QStr<'a>>,
    nc: Option<QStr<'a>>,
    qop: Option<QStr<'a>>,
    opaque: Option<QStr<'a>>,
}

impl<'a> Fields<'a> {
    fn set(&mut self, name: &str, value: QStr<'a>) -> Result<(), CredentialsError> {
        const NAMES: [&str; 10] = [
            "username",
            "realm",
            "nonce",
            "uri",
            "response",
            "algorithm",
            "cnonce",
            "nc",
            "qop",
            "opaque",
        ];
        let Some(idx) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) else {
            return Ok(()); // unknown auth-param: ignored
        };
        let slot = match idx {
            0 => &mut self.username,
            1 => &mut self.realm,
            2 => &mut self.nonce,
            3 => &mut self.uri,
            4 => &mut self.response,
            5 => &mut self.algorithm,
            6 => &mut self.cnonce,
            7 => &mut self.nc,
            8 => &mut self.qop,
            _ => &mut self.opaque,
        };
        if slot.is_some() {
            return Err(CredentialsError::Duplicate);
        }
        *slot = Some(value);
        Ok(())
    }

    fn finish(self) -> Result<Credentials<'a>, CredentialsError> {
        let username = self.username.ok_or(CredentialsError::MissingUsername)?;
        let realm = self.realm.ok_or(CredentialsError::MissingRealm)?;
        let nonce = self.nonce.ok_or(CredentialsError::MissingNonce)?;
        let uri = self.uri.ok_or(CredentialsError::MissingUri)?;
        let response = self
            .response
            .ok_or(CredentialsError::MissingResponse)?
            .raw();
        let algorithm = match self.algorithm {
            None => Algorithm::Md5,
            Some(a) => {
                Algorithm::from_token(a.raw()).ok_or(CredentialsError::UnsupportedAlgorithm)?
            }
        };
        if response.len() != algorithm.hex_len() || !response.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err(CredentialsError::BadResponse);
        }
        let qop = match self.qop {
            None => None,
            Some(q) if q.raw().eq_ignore_ascii_case("auth") => Some(Qop::Auth),
            Some(q) if q.raw().eq_ignore_ascii_case("auth-int") => Some(Qop::AuthInt),
            Some(_) => return Err(CredentialsError::UnsupportedQop),
        };
        // Without qop, nc and cnonce do not enter the digest (RFC 2617 says a
        // client MUST NOT send them); they are ignored rather than refused.
        let (cnonce, nc) = if qop.is_some() {
            let cnonce = self.cnonce.ok_or(CredentialsError::MissingCnonce)?;
            let nc_raw = self.nc.ok_or(CredentialsError::MissingNc)?.raw();
            if nc_raw.len() != 8 || !nc_raw.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(CredentialsError::BadNc);
            }
            let value = u32::from_str_radix(nc_raw, 16).map_err(|_| CredentialsError::BadNc)?;
            if value == 0 {
                return Err(CredentialsError::BadNc);
            }
            (Some(cnonce), Some(Nc { raw: nc_raw, value }))
        } else {
            (None, None)
        };
        Ok(Credentials {
            username,
            realm,
            nonce,
            uri,
            response,
            algorithm,
            cnonce,
            nc,
            qop,
            opaque: self.opaque,
        })
    }
}

/// Picks the credentials for `realm` among several header values (all
/// `Authorization` or all `Proxy-Authorization` lines, in order).
///
/// * `Ok(Some(c))`: the first value that parses and whose realm equals `realm`.
/// * `Ok(None)`: none is for this realm ([`AuthCode::NoCredentials`], `-5`).
/// * `Err(e)`: none matched and at least one value was malformed
///   ([`AuthCode::GenericError`], `-1`: its realm cannot be trusted either).
///
/// [`AuthCode::NoCredentials`]: super::AuthCode::NoCredentials
/// [`AuthCode::GenericError`]: super::AuthCode::GenericError
pub fn find_credentials<'a, I>(
    values: I,
    realm: &str,
) -> Result<Option<Credentials<'a>>, CredentialsError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut first_err = None;
    for v in values {
        match Credentials::parse(v) {
            Ok(c) if c.realm.eq_unescaped(realm) => return Ok(Some(c)),
            Ok(_) => {}
            Err(CredentialsError::NotDigest) => {} // another scheme: not ours
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESP32: &str = "6629fae49393a05397450978507c4ef1";

    #[test]
    fn rfc2617_example_parses() {
        let v = "Digest username=\"Mufasa\",\r\n realm=\"testrealm@host.com\",\r\n \
                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n uri=\"/dir/index.html\",\r\n \
                 qop=auth,\r\n nc=00000001,\r\n cnonce=\"0a4f113b\",\r\n \
                 response=\"6629fae49393a05397450978507c4ef1\",\r\n \
                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let c = Credentials::parse(v.as_bytes()).expect("parses");
        assert_eq!(c.username.raw(), "Mufasa");
        assert_eq!(c.realm.raw(), "testrealm@host.com");
        assert_eq!(c.nonce.raw(), "dcd98b7102dd2f0e8b11d0f600bfb0c093");
        assert_eq!(c.uri.raw(), "/dir/index.html");
        assert_eq!(c.response, RESP32);
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.qop, Some(Qop::Auth));
        assert_eq!(
            c.nc,
            Some(Nc {
                raw: "00000001",
                value: 1
            })
        );
        assert_eq!(c.cnonce.map(|q| q.raw()), Some("0a4f113b"));
        assert_eq!(
            c.opaque.map(|q| q.raw()),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
    }

    fn base(extra: &str) -> String {
        format!("Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"{RESP32}\"{extra}")
    }

    #[test]
    fn variants_table() {
        type Check = fn(&Credentials<'_>) -> bool;
        let ok: [(String, Check); 14] = [
            (base(""), |c| c.qop.is_none() && c.nc.is_none() && c.algorithm == Algorithm::Md5),
            // any order, odd spacing, case-insensitive names and scheme
            (
                format!("dIgEsT   RESPONSE = \"{RESP32}\" ,URI=\"sip:r\",Nonce=n,realm=\"r\",  username=u"),
                |c| c.username.raw() == "u" && c.nonce.raw() == "n",
            ),
            (base(", algorithm=MD5"), |c| c.algorithm == Algorithm::Md5),
            (base(", algorithm=\"md5\""), |c| c.algorithm == Algorithm::Md5),
            (base(", qop=\"auth\", nc=0000000a, cnonce=\"x\""), |c| {
                c.qop == Some(Qop::Auth) && c.nc.map(|n| n.value) == Some(10)
            }),
            (base(", qop=auth-int, nc=FFFFFFFF, cnonce=x"), |c| {
                c.qop == Some(Qop::AuthInt) && c.nc.map(|n| n.value) == Some(u32::MAX)
            }),
            // nc / cnonce without qop are ignored
            (base(", nc=zz, cnonce=\"x\""), |c| c.nc.is_none() && c.cnonce.is_none()),
            // unknown params, including quoted ones with commas, ignored
            (base(", foo=\"a, b=c\", bar=baz, userhash=false"), |c| c.opaque.is_none()),
            // empty list elements and trailing comma
            (base(",,  ,"), |c| c.realm.raw() == "r"),
            // escapes
            (
                format!("Digest username=\"a\\\"b\\\\c\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"{RESP32}\""),
                |c| c.username.raw() == "a\\\"b\\\\c" && c.username.unescaped() == "a\"b\\c",
            ),
            // empty quoted values
            (
                format!("Digest username=\"\", realm=\"\", nonce=\"\", uri=\"\", response=\"{RESP32}\""),
                |c| c.username.raw().is_empty() && c.realm.eq_unescaped(""),
            ),
            // lenient unquoted uri with colon and @
            (
                format!("Digest username=u, realm=r, nonce=n, uri=sip:a@b;transport=udp, response={RESP32}"),
                |c| c.uri.raw() == "sip:a@b;transport=udp",
            ),
            // UTF-8 in quoted strings
            (
                format!("Digest username=\"jösé\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"{RESP32}\""),
                |c| c.username.raw() == "jösé",
            ),
            // uppercase hex response accepted (compared case-insensitively)
            (
                format!("Digest username=u, realm=r, nonce=n, uri=u, response={}", RESP32.to_ascii_uppercase()),
                |c| c.response.len() == 32,
            ),
        ];
        for (v, check) in ok.iter() {
            let c = Credentials::parse(v.as_bytes()).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert!(check(&c), "{v}");
        }
    }

    #[test]
    fn errors_table() {
        use CredentialsError as E;
        let sha = "a".repeat(64);
        let bad: Vec<(Vec<u8>, E)> = vec![
            (b"".to_vec(), E::NotDigest),
            (b"Basic dXNlcjpwYXNz".to_vec(), E::NotDigest),
            (b"Digestusername=\"u\"".to_vec(), E::NotDigest),
            (b"Digest".to_vec(), E::MissingUsername),
            (b"Digest username".to_vec(), E::Syntax),
            (b"Digest username=".to_vec(), E::Syntax),
            (b"Digest =x".to_vec(), E::Syntax),
            (b"Digest username=\"u".to_vec(), E::Unterminated),
            (b"Digest username=\"u\\".to_vec(), E::Unterminated),
            (b"Digest username=\"u\" realm=\"r\"".to_vec(), E::Syntax),
            (b"Digest username=\"u\"x".to_vec(), E::Syntax),
            (b"Digest username=a\"b\"".to_vec(), E::Syntax),
            (vec![b'D', b'i', b'g', b'e', b's', b't', b' ', 0xff, 0xfe], E::NotUtf8),
            (base(", username=\"v\"").into_bytes(), E::Duplicate),
            (base(", REALM=x").into_bytes(), E::Duplicate),
            (format!("Digest realm=r, nonce=n, uri=u, response={RESP32}").into_bytes(), E::MissingUsername),
            (format!("Digest username=u, nonce=n, uri=u, response={RESP32}").into_bytes(), E::MissingRealm),
            (format!("Digest username=u, realm=r, uri=u, response={RESP32}").into_bytes(), E::MissingNonce),
            (format!("Digest username=u, realm=r, nonce=n, response={RESP32}").into_bytes(), E::MissingUri),
            (b"Digest username=u, realm=r, nonce=n, uri=u".to_vec(), E::MissingResponse),
            (base(", algorithm=MD5-sess").into_bytes(), E::UnsupportedAlgorithm),
            (base(", algorithm=SHA-256-sess").into_bytes(), E::UnsupportedAlgorithm),
            (base(", algorithm=SHA1").into_bytes(), E::UnsupportedAlgorithm),
            // MD5-length response with SHA-256
            (base(", algorithm=SHA-256").into_bytes(), E::BadResponse),
            (
                format!("Digest username=u, realm=r, nonce=n, uri=u, response=\"{sha}\"").into_bytes(),
                E::BadResponse,
            ),
            (
                b"Digest username=u, realm=r, nonce=n, uri=u, response=\"zz29fae49393a05397450978507c4ef1\"".to_vec(),
                E::BadResponse,
            ),
            (base(", qop=auth-conf, nc=00000001, cnonce=x").into_bytes(), E::UnsupportedQop),
            (base(", qop=auth, nc=00000001").into_bytes(), E::MissingCnonce),
            (base(", qop=auth, cnonce=x").into_bytes(), E::MissingNc),
            (base(", qop=auth, nc=1, cnonce=x").into_bytes(), E::BadNc),
            (base(", qop=auth, nc=0000000g, cnonce=x").into_bytes(), E::BadNc),
            (base(", qop=auth, nc=000000001, cnonce=x").into_bytes(), E::BadNc),
            (base(", qop=auth, nc=00000000, cnonce=x").into_bytes(), E::BadNc),
            (base(", qop=auth, nc=+0000001, cnonce=x").into_bytes(), E::BadNc),
        ];
        for (v, want) in bad {
            assert_eq!(
                Credentials::parse(&v),
                Err(want),
                "{}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        // Every prefix and every single-byte mutation of a valid value.
        let v = "Digest username=\"Mu\\\"fasa\", realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, \
                 nc=00000001, cnonce=\"c\", response=\"6629fae49393a05397450978507c4ef1\", opaque=\"o\"";
        let b = v.as_bytes();
        for end in 0..=b.len() {
            let _ = Credentials::parse(&b[..end]);
        }
        let mut m = b.to_vec();
        for i in 0..m.len() {
            for x in [b'"', b'\\', b',', b'=', b' ', 0, 0x80, b'\n'] {
                let old = m[i];
                m[i] = x;
                let _ = Credentials::parse(&m);
                m[i] = old;
            }
        }
        assert!(Credentials::parse(b).is_ok());
    }

    #[test]
    fn random_garbage_never_panics() {
        // Deterministic LCG: bytes drawn from the characters that matter.
        let alphabet = b"Digest usernamrlcoqpf=\",\\ \t\r\n0123456789abcdef\x80\xc3\xa9";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut buf = Vec::with_capacity(128);
        for _ in 0..20_000 {
            buf.clear();
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (x >> 58) as usize * 2;
            buf.extend_from_slice(b"Digest ");
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                buf.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            let _ = Credentials::parse(&buf);
            let _ = find_credentials([&buf[..]], "r");
        }
    }

    #[test]
    fn find_by_realm() {
        let a = format!("Digest username=a, realm=\"one\", nonce=n, uri=u, response={RESP32}");
        let b = format!("Digest username=b, realm=\"two\", nonce=n, uri=u, response={RESP32}");
        let garbage = "Digest username=\"x".to_string();
        let basic = "Basic Zm9vOmJhcg==".to_string();
        let vals = [basic.as_bytes(), a.as_bytes(), b.as_bytes()];
        let got = find_credentials(vals, "two").expect("ok").expect("found");
        assert_eq!(got.username.raw(), "b");
        assert_eq!(find_credentials(vals, "three"), Ok(None));
        assert_eq!(find_credentials(Vec::<&[u8]>::new(), "one"), Ok(None));
        // a malformed value, and no match: bad credentials
        let vals = [garbage.as_bytes(), a.as_bytes()];
        assert_eq!(
            find_credentials(vals, "two"),
            Err(CredentialsError::Unterminated)
        );
        // a malformed value does not hide a later match
        let got = find_credentials(vals, "one").expect("ok").expect("found");
        assert_eq!(got.username.raw(), "a");
    }
}
