//! Borrowed view pairing a buffer with its [`Parsed`] index. CONTRACT STUB.

use super::{CSeq, ContactIter, HdrName, Method, NameAddr, ParseError, Parsed, SipUri, StartLine, Via};

#[derive(Clone, Copy)]
pub struct SipMsg<'a> {
    pub buf: &'a [u8],
    pub parsed: &'a Parsed,
}

impl<'a> SipMsg<'a> {
    pub fn new(buf: &'a [u8], parsed: &'a Parsed) -> Self {
        SipMsg { buf, parsed }
    }
    pub fn is_request(&self) -> bool {
        matches!(self.parsed.start, StartLine::Request { .. })
    }
    /// Request method (None for a response).
    pub fn method(&self) -> Option<Method> { unimplemented!() }
    /// Request method token bytes, or the CSeq method for a response.
    pub fn method_bytes(&self) -> &'a [u8] { unimplemented!() }
    /// Raw Request-URI bytes.
    pub fn ruri(&self) -> Option<&'a [u8]> { unimplemented!() }
    /// Status code of a response.
    pub fn status(&self) -> Option<u16> { unimplemented!() }
    pub fn reason(&self) -> Option<&'a [u8]> { unimplemented!() }
    /// First header value of this kind.
    pub fn header(&self, name: HdrName) -> Option<&'a [u8]> { let _ = name; unimplemented!() }
    /// Every header line of this kind, in order.
    pub fn headers(&self, name: HdrName) -> impl Iterator<Item = &'a [u8]> + 'a { let _ = name; std::iter::empty() }
    /// First header with this name (any name; case-insensitive; compact forms match).
    pub fn header_by_name(&self, name: &[u8]) -> Option<&'a [u8]> { let _ = name; unimplemented!() }
    pub fn call_id(&self) -> Option<&'a [u8]> { unimplemented!() }
    pub fn cseq(&self) -> Result<CSeq<'a>, ParseError> { unimplemented!() }
    pub fn top_via(&self) -> Result<Via<'a>, ParseError> { unimplemented!() }
    /// All Via values in order, splitting comma-separated lines.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'a>, ParseError>> + 'a { std::iter::empty() }
    pub fn from(&self) -> Result<NameAddr<'a>, ParseError> { unimplemented!() }
    pub fn to(&self) -> Result<NameAddr<'a>, ParseError> { unimplemented!() }
    /// Contact values across all Contact lines (splitting commas), incl. `*`.
    pub fn contacts(&self) -> ContactIter<'a> { unimplemented!() }
    /// Route / Record-Route / Path values across lines, each a name-addr.
    pub fn name_addrs(&self, name: HdrName) -> impl Iterator<Item = Result<NameAddr<'a>, ParseError>> + 'a { let _ = name; std::iter::empty() }
    pub fn max_forwards(&self) -> Result<Option<u32>, ParseError> { unimplemented!() }
    pub fn expires(&self) -> Result<Option<u32>, ParseError> { unimplemented!() }
    pub fn content_length(&self) -> Result<Option<u32>, ParseError> { unimplemented!() }
    pub fn user_agent(&self) -> Option<&'a [u8]> { unimplemented!() }
    pub fn body(&self) -> &'a [u8] { unimplemented!() }
    /// Parsed Request-URI.
    pub fn ruri_parsed(&self) -> Result<SipUri<'a>, ParseError> { unimplemented!() }
    /// RFC 3261 §8.2 / §16.3 sanity for a request: Via, From, To, Call-ID and
    /// CSeq present and parseable, CSeq method equals the request method
    /// (except ACK/CANCEL rules as the RFC says), Max-Forwards numeric if present,
    /// Content-Length consistent. Errors name the first fault found.
    pub fn check_request(&self) -> Result<(), ParseError> { unimplemented!() }
    /// Same for a response: Via, From, To, Call-ID, CSeq present and parseable.
    pub fn check_response(&self) -> Result<(), ParseError> { unimplemented!() }
}
