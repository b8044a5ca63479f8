//! Message framing and the header index. CONTRACT STUB: bodies to be written.

use super::{HdrName, Method, ParseError, Span};

/// How the message was received: a datagram is complete as received (a missing
/// Content-Length means "the rest"); a stream may need more bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Datagram,
    Stream,
}

/// Result of a parse that may need more input (streams only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    Complete(T),
    Partial,
}

/// Configured maxima: every table has one.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_headers: usize,
    pub max_msg_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_headers: 128, max_msg_len: 65535 }
    }
}

/// One header field line: classified name, name span and value span (value
/// trimmed of surrounding whitespace; folded continuation lines stay inside
/// the value span and are treated as whitespace by the typed parsers).
/// A comma-separated multi-value header line stays ONE entry here; the typed
/// iterators (Contact, Via, Route) split values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HdrName,
    pub name_span: Span,
    pub value: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, method_span: Span, uri: Span, version: Span },
    Response { code: u16, reason: Span, version: Span },
}

/// The reusable parse result: offsets into the caller's buffer.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub start: StartLine,
    pub headers: Vec<Header>,
    /// Offset of the CRLF that ends the header section (insert point for new headers).
    pub headers_end: u32,
    pub body: Span,
    /// Total length of the message (start line through body) within the buffer.
    pub msg_len: u32,
}

impl Default for Parsed {
    fn default() -> Self {
        unimplemented!()
    }
}

impl Parsed {
    /// Index of the first header of kind `name`.
    pub fn first(&self, name: HdrName) -> Option<usize> {
        let _ = name;
        unimplemented!()
    }
}

/// Parses the start line and indexes the header fields of one message.
///
/// Checks framing only (start line, header syntax, Content-Length against the
/// bytes present). Mandatory-header and typed checks are in
/// [`super::SipMsg::check_request`]. `out` is cleared and reused.
pub fn parse(buf: &[u8], framing: Framing, limits: &Limits, out: &mut Parsed) -> Result<Status<usize>, ParseError> {
    let _ = (buf, framing, limits, out);
    unimplemented!()
}
