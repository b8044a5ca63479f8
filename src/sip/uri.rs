//! SIP / SIPS / tel URI (RFC 3261 §19.1, RFC 3966).

use super::hdr::host_port;
use super::lex::{self, USERINFO};
use super::{Params, ParseError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other,
}

/// `sip:user:password@host:port;params?headers`; IPv6 hosts keep their brackets.
///
/// For `tel:` URIs the number is in `user` and `host` is empty. For other
/// schemes only `raw` and `scheme` are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub raw: &'a [u8],
    pub scheme: Scheme,
    pub user: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub params: Params<'a>,
    /// Raw `?h=v&...` part without the `?`, empty when absent.
    pub headers: &'a [u8],
}

impl<'a> SipUri<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<SipUri<'a>, ParseError> {
        const E: ParseError = ParseError::BadUri;
        let raw = lex::trim_lws(raw);
        if !super::hdr::has_scheme(raw) {
            return Err(E);
        }
        let colon = lex::find(raw, b':').ok_or(E)?;
        let scheme_b = raw.get(..colon).ok_or(E)?;
        let rest = raw.get(colon + 1..).ok_or(E)?;
        let scheme = if scheme_b.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_b.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_b.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        };
        let mut uri = SipUri {
            raw,
            scheme,
            user: None,
            password: None,
            host: &[],
            port: None,
            params: Params::default(),
            headers: &[],
        };
        // One pass: reject whitespace / controls, note the first '?' and the
        // first '@' before it.
        let mut q = None;
        let mut at = None;
        // A user may contain '?' (user-unreserved) and neither userinfo nor
        // headers may hold a raw '@', so the first '@' ends the userinfo and
        // the headers start at the first '?' after it.
        for (k, &c) in rest.iter().enumerate() {
            if c <= b' ' || c == 0x7f {
                return Err(E);
            }
            if c == b'@' && at.is_none() {
                at = Some(k);
                q = None;
            } else if c == b'?' && q.is_none() {
                q = Some(k);
            }
        }
        match scheme {
            Scheme::Other => Ok(uri),
            Scheme::Tel => {
                let pe = q.unwrap_or(rest.len());
                let (num, tail) = rest.split_at(pe);
                let semi = lex::find(num, b';').unwrap_or(num.len());
                let (number, params) = num.split_at(semi);
                if number.is_empty() || !number.iter().all(|&c| USERINFO[c as usize] && c != b';') {
                    return Err(E);
                }
                uri.user = Some(number);
                uri.params = Params { raw: params };
                uri.headers = tail.get(1..).unwrap_or(&[]);
                Ok(uri)
            }
            Scheme::Sip | Scheme::Sips => {
                // userinfo ends at the first '@' before any '?' (users may
                // contain ';' and '?' but never an unescaped '@').
                let hp_start = match at {
                    Some(at) => {
                        let ui = rest.get(..at).ok_or(E)?;
                        let (user, password) = match lex::find(ui, b':') {
                            Some(c) => (ui.get(..c).ok_or(E)?, Some(ui.get(c + 1..).ok_or(E)?)),
                            None => (ui, None),
                        };
                        if user.is_empty() || !user.iter().all(|&c| USERINFO[c as usize]) {
                            return Err(E);
                        }
                        if let Some(p) = password {
                            if !p.iter().all(|&c| USERINFO[c as usize]) {
                                return Err(E);
                            }
                        }
                        uri.user = Some(user);
                        uri.password = password;
                        at + 1
                    }
                    None => 0,
                };
                let (host, port, i) = host_port(rest, hp_start, false).ok_or(E)?;
                uri.host = lex::sub(rest, host);
                uri.port = port;
                let tail = rest.get(i..).unwrap_or(&[]);
                let q = lex::find(tail, b'?').unwrap_or(tail.len());
                let (params, headers) = tail.split_at(q);
                if !params.is_empty() && params.first() != Some(&b';') {
                    return Err(E);
                }
                uri.params = Params { raw: params };
                uri.headers = headers.get(1..).unwrap_or(&[]);
                Ok(uri)
            }
        }
    }

    /// `user=phone`, `transport=` etc. are in `params`; this is a shortcut
    /// for the `transport` parameter.
    pub fn transport(&self) -> Option<&'a [u8]> {
        self.params.get(b"transport").flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! uri {
        ($u:expr => Err) => {
            assert_eq!(
                SipUri::parse($u.as_bytes()),
                Err(ParseError::BadUri),
                "{:?}",
                $u
            )
        };
        ($u:expr => $scheme:ident, $user:expr, $pw:expr, $host:expr, $port:expr, $params:expr, $headers:expr) => {{
            let u = SipUri::parse($u.as_bytes()).unwrap_or_else(|e| panic!("{:?}: {e}", $u));
            assert_eq!(u.scheme, Scheme::$scheme, "{:?}", $u);
            assert_eq!(u.user, $user.map(|s: &str| s.as_bytes()), "{:?} user", $u);
            assert_eq!(
                u.password,
                $pw.map(|s: &str| s.as_bytes()),
                "{:?} password",
                $u
            );
            assert_eq!(u.host, $host.as_bytes(), "{:?} host", $u);
            assert_eq!(u.port, $port, "{:?} port", $u);
            assert_eq!(u.params.raw, $params.as_bytes(), "{:?} params", $u);
            assert_eq!(u.headers, $headers.as_bytes(), "{:?} headers", $u);
            u
        }};
    }

    const N: Option<&str> = None;

    #[test]
    fn uris() {
        uri!("sip:alice@atlanta.com" => Sip, Some("alice"), N, "atlanta.com", None, "", "");
        uri!("sip:alice:secretword@atlanta.com;transport=tcp" => Sip, Some("alice"), Some("secretword"), "atlanta.com", None, ";transport=tcp", "");
        uri!("sips:alice@atlanta.com?subject=project%20x&priority=urgent" => Sips, Some("alice"), N, "atlanta.com", None, "", "subject=project%20x&priority=urgent");
        uri!("sip:+1-212-555-1212:1234@gateway.com;user=phone" => Sip, Some("+1-212-555-1212"), Some("1234"), "gateway.com", None, ";user=phone", "");
        uri!("sips:1212@gateway.com" => Sips, Some("1212"), N, "gateway.com", None, "", "");
        uri!("sip:alice@192.0.2.4" => Sip, Some("alice"), N, "192.0.2.4", None, "", "");
        uri!("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com" => Sip, N, N, "atlanta.com", None, ";method=REGISTER", "to=alice%40atlanta.com");
        uri!("sip:alice;day=tuesday@atlanta.com" => Sip, Some("alice;day=tuesday"), N, "atlanta.com", None, "", "");
        uri!("SIP:registrar.example.com:5060" => Sip, N, N, "registrar.example.com", Some(5060), "", "");
        uri!("sip:[2001:db8::10]:5070;lr" => Sip, N, N, "[2001:db8::10]", Some(5070), ";lr", "");
        uri!("sip:bob@[::ffff:192.0.2.1]" => Sip, Some("bob"), N, "[::ffff:192.0.2.1]", None, "", "");
        let u = uri!("sip:p1.example.com;transport=TCP;lr" => Sip, N, N, "p1.example.com", None, ";transport=TCP;lr", "");
        assert_eq!(u.transport(), Some(&b"TCP"[..]));
        assert_eq!(u.params.get(b"lr"), Some(None));
        uri!("tel:+1-201-555-0123;phone-context=example.com" => Tel, Some("+1-201-555-0123"), N, "", None, ";phone-context=example.com", "");
        uri!("urn:service:sos" => Other, N, N, "", None, "", "");
        uri!("sip:" => Err);
        uri!("sip:@host" => Err);
        uri!("sip:user@" => Err);
        uri!("sip:host:" => Err);
        uri!("sip:host:70000" => Err);
        uri!("sip:host:12ab" => Err);
        uri!("sip:[::1" => Err);
        uri!("sip:a b@host" => Err);
        uri!("sip:host junk" => Err);
        uri!("sip:ho/st" => Err);
        uri!("alice@atlanta.com" => Err);
        uri!("" => Err);
        uri!("tel:" => Err);
        uri!("sip:host\x00" => Err);
    }
}
