//! SIP / SIPS / tel URI (RFC 3261 §19.1). CONTRACT STUB.

use super::{ParseError, Params};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other,
}

/// `sip:user:password@host:port;params?headers`; IPv6 hosts keep their brackets.
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
    pub fn parse(raw: &'a [u8]) -> Result<SipUri<'a>, ParseError> { let _ = raw; unimplemented!() }
}
