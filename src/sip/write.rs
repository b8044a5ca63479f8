//! Span-based message editing. CONTRACT STUB.

use super::{HdrName, Parsed};

/// Edits against one parsed message; `assemble` writes the result by copying
/// untouched spans of the original buffer, without re-parsing.
#[derive(Clone, Debug, Default)]
pub struct Edits {
    _p: (),
}

impl Edits {
    pub fn clear(&mut self) { unimplemented!() }
    pub fn is_empty(&self) -> bool { unimplemented!() }
    /// Replace the Request-URI.
    pub fn set_ruri(&mut self, uri: &[u8]) { let _ = uri; unimplemented!() }
    /// Insert `Via: value` before the first Via header.
    pub fn prepend_via(&mut self, value: &[u8]) { let _ = value; unimplemented!() }
    /// Add/replace `received=` and `rport=` on the top Via (RFC 3581).
    pub fn set_top_via_received(&mut self, received: Option<&[u8]>, rport: Option<u16>) { let _ = (received, rport); unimplemented!() }
    /// Remove the first Via value (for replies travelling downstream).
    pub fn remove_top_via(&mut self) { unimplemented!() }
    /// Remove header line number `idx` of `Parsed::headers`.
    pub fn remove_header(&mut self, idx: usize) { let _ = idx; unimplemented!() }
    /// Remove every header of this kind (Other: compare `name` bytes).
    pub fn remove_headers(&mut self, parsed: &Parsed, buf: &[u8], name: HdrName, raw_name: &[u8]) -> usize { let _ = (parsed, buf, name, raw_name); unimplemented!() }
    /// Replace the value of header line `idx`.
    pub fn replace_header_value(&mut self, idx: usize, value: &[u8]) { let _ = (idx, value); unimplemented!() }
    /// Append a header line (`"Name: value"`, no CRLF) after the last header.
    pub fn append_header(&mut self, line: &[u8]) { let _ = line; unimplemented!() }
    /// Insert a header line (`"Name: value"`, no CRLF) before the first header.
    pub fn insert_header_first(&mut self, line: &[u8]) { let _ = line; unimplemented!() }
    /// Replace the body; Content-Length is rewritten to match.
    pub fn set_body(&mut self, body: &[u8]) { let _ = body; unimplemented!() }
    /// Writes the edited message into `out` (cleared first).
    pub fn assemble(&self, buf: &[u8], parsed: &Parsed, out: &mut Vec<u8>) { let _ = (buf, parsed, out); unimplemented!() }
}
