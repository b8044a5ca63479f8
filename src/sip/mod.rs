//! SIP message core: a lazy, zero-copy parser over one received message, typed
//! on-demand views of the headers a proxy needs, a span-based writer and the
//! RFC 3261 §8.2.6 reply builder.
//!
//! This module is **sans-IO**: it never names sockets, clocks, glommio, mlua or
//! sqlx. It takes bytes and returns spans, typed views or bytes. Malformed input
//! yields a [`ParseError`], never a panic.
//!
//! The parse result ([`Parsed`]) stores *offsets* (`Span`) into the caller's
//! buffer rather than borrowed slices, so a shard can keep a parsed message in a
//! context object next to the buffer it owns and reuse both allocations for the
//! next datagram. [`SipMsg`] pairs the two again for borrowed, typed access.

#![forbid(unsafe_code)]

mod error;
mod hdr;
pub(crate) mod lex;
mod msg;
mod parse;
mod proto;
mod reply;
pub mod stream;
#[cfg(test)]
mod torture;
mod uri;
mod write;

pub use error::ParseError;
pub use hdr::{CSeq, Contact, ContactIter, NameAddr, Params, Via};
pub use msg::SipMsg;
pub use parse::{parse, salvage, Framing, Header, Limits, Parsed, StartLine, Status};
pub use proto::{Dest, Proto};
pub use reply::{build_reply, reason_phrase, ReplyOpts};
pub use stream::{looks_like_http, StreamEvent, StreamFramer, StreamKind};
pub use uri::{Scheme, SipUri};
pub use write::{Edits, MAX_EDITS, MAX_EDIT_BYTES, MAX_SPLICES};

/// A byte range `[start, end)` into the buffer a message was parsed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub const EMPTY: Span = Span { start: 0, end: 0 };

    #[inline]
    pub fn new(start: usize, end: usize) -> Span {
        debug_assert!(start <= end);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes this span covers. Returns an empty slice if the span does not
    /// fit `buf` (never panics).
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// SIP request methods known to the proxy (RFC 3261 and extensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Subscribe,
    Notify,
    Message,
    Info,
    Update,
    Prack,
    Publish,
    Refer,
    Kdmq,
    /// Any other token; the text is in the start line / CSeq span.
    Other,
}

impl Method {
    /// Classifies a method token. Method names are case-sensitive (RFC 3261 §7.1).
    pub fn from_bytes(token: &[u8]) -> Method {
        match token {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"MESSAGE" => Method::Message,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"PUBLISH" => Method::Publish,
            b"REFER" => Method::Refer,
            b"KDMQ" => Method::Kdmq,
            _ => Method::Other,
        }
    }

    /// The canonical token, or `""` for [`Method::Other`].
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Message => "MESSAGE",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Publish => "PUBLISH",
            Method::Refer => "REFER",
            Method::Kdmq => "KDMQ",
            Method::Other => "",
        }
    }
}

/// Header names the proxy looks up by kind. Long and compact forms (RFC 3261
/// §7.3.3: `i m e l c f s k t v`, plus `o` Event, `r` Refer-To, `u` Allow-Events)
/// map to the same variant; comparison is case-insensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HdrName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    MaxForwards,
    Expires,
    MinExpires,
    ContentLength,
    ContentType,
    Route,
    RecordRoute,
    Path,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    UserAgent,
    Server,
    Supported,
    Require,
    ProxyRequire,
    Unsupported,
    Allow,
    Event,
    Subject,
    /// `e`
    ContentEncoding,
    /// `r` (RFC 3515)
    ReferTo,
    /// `u` (RFC 6665)
    AllowEvents,
    /// Any other name; compare the raw name span.
    Other,
}

impl HdrName {
    /// Classifies a header field name (case-insensitive, compact forms included).
    pub fn from_bytes(name: &[u8]) -> HdrName {
        hdr::classify_name(name)
    }

    /// The canonical long form, or `""` for [`HdrName::Other`].
    pub fn canonical(&self) -> &'static str {
        hdr::canonical_name(*self)
    }
}

#[cfg(test)]
mod testdata;
