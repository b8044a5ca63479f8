//! RFC 3261 §8.2.6 stateless reply builder. CONTRACT STUB.

use super::SipMsg;

/// What the caller adds to a reply beyond the copied headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplyOpts<'b> {
    /// To-tag to add when the request's To has none (ignored for 100).
    pub to_tag: Option<&'b [u8]>,
    /// RFC 3581: source address of the request, written to the top Via as
    /// `received=` (when it differs from the sent-by host) and `rport=` (when
    /// the Via asked for rport).
    pub src_ip: Option<&'b [u8]>,
    pub src_port: Option<u16>,
    /// Extra complete header lines, each ending in CRLF.
    pub extra_headers: &'b [u8],
    pub body: &'b [u8],
    /// Value for a `Server:` header, if any.
    pub server: Option<&'b [u8]>,
}

/// Builds a reply to `req` into `out` (cleared first): status line, all Via
/// headers in order, From, To (+tag), Call-ID, CSeq, extra headers,
/// Content-Length, body.
pub fn build_reply(req: &SipMsg<'_>, code: u16, reason: &[u8], opts: &ReplyOpts<'_>, out: &mut Vec<u8>) {
    let _ = (req, code, reason, opts, out);
    unimplemented!()
}
