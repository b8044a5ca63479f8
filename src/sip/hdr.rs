//! Typed views of individual header values. CONTRACT STUB.

use super::{HdrName, Method, ParseError, SipUri};

pub(crate) fn classify_name(name: &[u8]) -> HdrName { let _ = name; unimplemented!() }
pub(crate) fn canonical_name(name: HdrName) -> &'static str { let _ = name; unimplemented!() }

/// `;name=value;flag` parameter list (raw, starting at the first `;` or empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params<'a> {
    pub raw: &'a [u8],
}

impl<'a> Params<'a> {
    /// `None`: absent; `Some(None)`: flag without value; `Some(Some(v))`: value
    /// (quotes kept). Names compare case-insensitively.
    pub fn get(&self, name: &[u8]) -> Option<Option<&'a [u8]>> { let _ = name; unimplemented!() }
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a { std::iter::empty() }
}

/// `Via: SIP/2.0/UDP host:port;branch=..;received=..;rport`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole value of this one via (for copying).
    pub raw: &'a [u8],
    pub transport: &'a [u8],
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    pub fn parse(value: &'a [u8]) -> Result<Via<'a>, ParseError> { let _ = value; unimplemented!() }
    pub fn branch(&self) -> Option<&'a [u8]> { unimplemented!() }
    pub fn received(&self) -> Option<&'a [u8]> { unimplemented!() }
    /// `None`: no rport param; `Some(None)`: `;rport` flag; `Some(Some(p))`.
    pub fn rport(&self) -> Option<Option<u16>> { unimplemented!() }
}

/// From / To / Contact / Route value: `"Display" <uri>;params` or `uri;params`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub raw: &'a [u8],
    pub display: Option<&'a [u8]>,
    pub uri: &'a [u8],
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    pub fn parse(value: &'a [u8]) -> Result<NameAddr<'a>, ParseError> { let _ = value; unimplemented!() }
    pub fn tag(&self) -> Option<&'a [u8]> { unimplemented!() }
    pub fn uri_parsed(&self) -> Result<SipUri<'a>, ParseError> { unimplemented!() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub num: u32,
    pub method: Method,
    pub method_bytes: &'a [u8],
}

impl<'a> CSeq<'a> {
    pub fn parse(value: &'a [u8]) -> Result<CSeq<'a>, ParseError> { let _ = value; unimplemented!() }
}

/// One Contact value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact<'a> {
    Star,
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    /// `expires` param, if present and numeric.
    pub fn expires(&self) -> Option<u32> { unimplemented!() }
    /// `q` param in thousandths (q=0.5 -> 500), if present and valid.
    pub fn q(&self) -> Option<u16> { unimplemented!() }
}

/// Iterator over Contact values across all Contact header lines.
pub struct ContactIter<'a> {
    _p: std::marker::PhantomData<&'a ()>,
}

impl<'a> Iterator for ContactIter<'a> {
    type Item = Result<Contact<'a>, ParseError>;
    fn next(&mut self) -> Option<Self::Item> { unimplemented!() }
}
