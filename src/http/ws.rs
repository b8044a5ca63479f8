//! WebSocket (RFC 6455) for SIP (RFC 7118), sans-IO: the opening handshake
//! and the server side of the framing.
//!
//! - [`handshake`] checks an upgrade request (§4.2.1) and builds the
//!   `101 Switching Protocols` response with `Sec-WebSocket-Accept` (§4.2.2:
//!   base64 of the SHA-1 of the key and the RFC's GUID) and
//!   `Sec-WebSocket-Protocol: sip` (RFC 7118 §4.1).
//! - [`Conn`] is one upgraded connection: [`Conn::handle_bytes`] takes what
//!   the socket read; [`Conn::poll_event`] hands out whole messages (each
//!   SIP message is one WebSocket message, RFC 7118 §5), the peer's close
//!   and protocol errors; [`Conn::poll_transmit`] the bytes to write
//!   (pongs, close frames, messages queued with [`Conn::send`]).
//!
//! Client frames must be masked, server frames never are (§5.1). Protocol
//! errors close with 1002, messages over the size limit with 1009, text that
//! is not UTF-8 with 1007 (§7.4.1); after a close the connection reads
//! nothing more.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2 item 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// What the handshake reads from the upgrade request.
#[derive(Clone, Debug, Default)]
pub struct HandshakeRequest<'a> {
    pub method: &'a [u8],
    /// `1` for HTTP/1.1.
    pub version_minor: u8,
    /// Every `Upgrade` header value.
    pub upgrade: Vec<&'a [u8]>,
    /// Every `Connection` header value.
    pub connection: Vec<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    /// Every `Sec-WebSocket-Version` value.
    pub ws_version: Vec<&'a [u8]>,
    /// Every `Sec-WebSocket-Protocol` value (comma lists allowed).
    pub protocols: Vec<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
}

/// Server settings of the handshake (Kamailio websocket modparams).
#[derive(Clone, Debug, Default)]
pub struct HandshakeConfig<'a> {
    /// `Server:` header value; empty = none.
    pub server: &'a [u8],
    /// `cors_mode`: 0 none, 1 `Access-Control-Allow-Origin: *`, 2 the
    /// request's `Origin`.
    pub cors_mode: u8,
}

/// Why an upgrade request was refused, with the status to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("WebSocket handshake needs GET over HTTP/1.1")]
    NotGet,
    #[error("missing or wrong Upgrade / Connection headers")]
    NotUpgrade,
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    #[error("unsupported Sec-WebSocket-Version (13 is)")]
    Version,
    #[error("no supported Sec-WebSocket-Protocol (sip is)")]
    Protocol,
}

impl HandshakeError {
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::Version => 426,
            _ => 400,
        }
    }
}

fn tokens<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'a {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Checks an upgrade request (RFC 6455 §4.2.1, RFC 7118 §4.1) and returns
/// the `101` response. A refusal's response is [`refusal`].
pub fn handshake(
    req: &HandshakeRequest<'_>,
    cfg: &HandshakeConfig<'_>,
) -> Result<Vec<u8>, HandshakeError> {
    if req.method != b"GET" || req.version_minor < 1 {
        return Err(HandshakeError::NotGet);
    }
    if !tokens(&req.upgrade).any(|t| t.eq_ignore_ascii_case(b"websocket"))
        || !tokens(&req.connection).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
    {
        return Err(HandshakeError::NotUpgrade);
    }
    let key = req
        .key
        .map(<[u8]>::trim_ascii)
        .ok_or(HandshakeError::BadKey)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if !tokens(&req.ws_version).any(|t| t == b"13") {
        return Err(HandshakeError::Version);
    }
    if !tokens(&req.protocols).any(|t| t.eq_ignore_ascii_case(b"sip")) {
        return Err(HandshakeError::Protocol);
    }
    let accept = accept_key(key);
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("Upgrade", b"websocket"),
        ("Connection", b"upgrade"),
        ("Sec-WebSocket-Accept", accept.as_bytes()),
        ("Sec-WebSocket-Protocol", b"sip"),
    ];
    if !cfg.server.is_empty() {
        headers.push(("Server", cfg.server));
    }
    match (cfg.cors_mode, req.origin) {
        (1, _) => headers.push(("Access-Control-Allow-Origin", b"*")),
        (2, Some(o)) => headers.push(("Access-Control-Allow-Origin", o)),
        _ => {}
    }
    let mut out = Vec::with_capacity(256);
    super::write_response(
        &mut out,
        1,
        101,
        b"Switching Protocols",
        &headers,
        b"",
        None,
    );
    Ok(out)
}

/// The response refusing an upgrade (426 names the version we speak).
pub fn refusal(e: HandshakeError, server: &[u8]) -> Vec<u8> {
    let status = e.status();
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    if status == 426 {
        headers.push(("Sec-WebSocket-Version", b"13"));
    }
    if !server.is_empty() {
        headers.push(("Server", server));
    }
    let mut out = Vec::with_capacity(160);
    super::write_response(
        &mut out,
        1,
        status,
        super::reason(status).as_bytes(),
        &headers,
        b"",
        Some(false),
    );
    out
}

/// Frame opcodes (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }
}

/// Close status codes this side sends (§7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// Writes one unmasked (server) frame.
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], fin: bool) {
    out.push(if fin { 0x80 } else { 0 } | opcode as u8);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Writes one masked (client) frame: what a test client, or a fuzz target,
/// sends to [`Conn`].
pub fn encode_client_frame(
    out: &mut Vec<u8>,
    opcode: Opcode,
    payload: &[u8],
    fin: bool,
    mask: [u8; 4],
) {
    let start = out.len();
    encode_frame(out, opcode, payload, fin);
    // set the MASK bit, put the key before the payload, mask the payload
    let hdr_len = out.len() - start - payload.len();
    if let Some(b) = out.get_mut(start + 1) {
        *b |= 0x80;
    }
    let at = start + hdr_len;
    out.splice(at..at, mask);
    for (i, b) in out.iter_mut().skip(at + 4).enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Limits of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsLimits {
    /// Payload of one frame.
    pub frame_bytes_max: usize,
    /// A whole (reassembled) message.
    pub message_bytes_max: usize,
    /// Fragments of one message.
    pub fragments_max: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            frame_bytes_max: 65_536,
            message_bytes_max: 65_536,
            fragments_max: 64,
        }
    }
}

/// What a connection delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text message (valid UTF-8).
    Text(Vec<u8>),
    /// A whole binary message.
    Binary(Vec<u8>),
    /// The peer closed (code, reason; 1005 when it sent no code). The close
    /// reply is queued; write it, then close the socket.
    Closed { code: u16, reason: Vec<u8> },
    /// The peer broke the protocol: a close frame with `code` is queued;
    /// write it and close the socket.
    Failed { code: u16, why: &'static str },
}

/// Where the connection is in the close handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close; waiting for the peer's.
    CloseSent,
    /// Nothing more is read.
    Closed,
}

/// One upgraded connection, server side.
#[derive(Debug)]
pub struct Conn {
    limits: WsLimits,
    rx: Vec<u8>,
    /// The message being reassembled: its opcode, bytes and fragment count.
    partial: Option<(Opcode, Vec<u8>, usize)>,
    events: std::collections::VecDeque<Event>,
    tx: Vec<u8>,
    state: State,
}

impl Conn {
    pub fn new(limits: WsLimits) -> Conn {
        debug_assert!(limits.frame_bytes_max > 0 && limits.message_bytes_max > 0);
        Conn {
            limits,
            rx: Vec::new(),
            partial: None,
            events: Default::default(),
            tx: Vec::new(),
            state: State::Open,
        }
    }

    /// True once the connection reads nothing more (the peer closed, we
    /// failed it, or both sides sent their close).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Takes received bytes and decodes every whole frame in them.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.rx.extend_from_slice(bytes);
        let mut pos = 0;
        while self.state != State::Closed {
            match self.decode_one(pos) {
                Ok(Some(n)) => pos += n,
                Ok(None) => break,
                Err((code, why)) => {
                    self.fail(code, why);
                    break;
                }
            }
        }
        if self.state == State::Closed {
            self.rx = Vec::new();
        } else {
            self.rx.drain(..pos);
        }
    }

    /// The next delivered message or close.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to write to the socket (empty when none).
    pub fn poll_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.tx)
    }

    /// Queues one message (a SIP message is a text frame when it is UTF-8,
    /// RFC 7118 §5). False once a close was sent or received.
    pub fn send(&mut self, msg: &[u8]) -> bool {
        if self.state != State::Open {
            return false;
        }
        let op = if std::str::from_utf8(msg).is_ok() {
            Opcode::Text
        } else {
            Opcode::Binary
        };
        encode_frame(&mut self.tx, op, msg, true);
        true
    }

    /// Starts the close handshake (KSR.websocket.close). False when one is
    /// already under way.
    pub fn close(&mut self, code: u16, reason: &[u8]) -> bool {
        if self.state != State::Open {
            return false;
        }
        self.queue_close(code, reason);
        self.state = State::CloseSent;
        true
    }

    /// Queues a ping (keep-alive).
    pub fn ping(&mut self, data: &[u8]) {
        if self.state == State::Open {
            encode_frame(
                &mut self.tx,
                Opcode::Ping,
                &data[..data.len().min(125)],
                true,
            );
        }
    }

    fn queue_close(&mut self, code: u16, reason: &[u8]) {
        let mut p = code.to_be_bytes().to_vec();
        // control payloads are at most 125 bytes (§5.5); cut on a char
        let mut r = &reason[..reason.len().min(123)];
        while std::str::from_utf8(r).is_err() && !r.is_empty() {
            r = &r[..r.len() - 1];
        }
        p.extend_from_slice(r);
        encode_frame(&mut self.tx, Opcode::Close, &p, true);
    }

    fn fail(&mut self, code: u16, why: &'static str) {
        if self.state == State::Open {
            self.queue_close(code, b"");
        }
        self.state = State::Closed;
        self.partial = None;
        self.events.push_back(Event::Failed { code, why });
    }

    /// Decodes the frame at `rx[pos..]`: `Ok(Some(len))` consumed, `Ok(None)`
    /// incomplete, `Err` a protocol error.
    fn decode_one(&mut self, pos: usize) -> Result<Option<usize>, (u16, &'static str)> {
        use close_code::*;
        let b = self.rx.get(pos..).unwrap_or_default();
        let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err((PROTOCOL_ERROR, "reserved bits set"));
        }
        let op = Opcode::from_u8(b0 & 0x0f).ok_or((PROTOCOL_ERROR, "unknown opcode"))?;
        if b1 & 0x80 == 0 {
            return Err((PROTOCOL_ERROR, "unmasked client frame"));
        }
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                let Some(x) = b.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([x[0], x[1]])), 4)
            }
            127 => {
                let Some(x) = b.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(x);
                let n = u64::from_be_bytes(a);
                if n >> 63 != 0 {
                    return Err((PROTOCOL_ERROR, "64-bit length with the top bit set"));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        let control = (op as u8) & 0x8 != 0;
        if control && (!fin || len > 125) {
            return Err((PROTOCOL_ERROR, "fragmented or long control frame"));
        }
        if len > self.limits.frame_bytes_max as u64 {
            return Err((TOO_BIG, "frame over the size limit"));
        }
        let len = len as usize;
        let Some(mask) = b.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        at += 4;
        let Some(masked) = b.get(at..at + len) else {
            return Ok(None);
        };
        let payload: Vec<u8> = masked
            .iter()
            .enumerate()
            .map(|(i, &c)| c ^ mask[i % 4])
            .collect();
        let consumed = at + len;
        match op {
            Opcode::Ping => {
                if self.state == State::Open {
                    encode_frame(&mut self.tx, Opcode::Pong, &payload, true);
                }
            }
            Opcode::Pong => {}
            Opcode::Close => self.on_close(&payload)?,
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err((PROTOCOL_ERROR, "new message inside a fragmented one"));
                }
                if fin {
                    self.deliver(op, payload)?;
                } else {
                    self.partial = Some((op, payload, 1));
                }
            }
            Opcode::Continuation => {
                let Some((first, mut buf, n)) = self.partial.take() else {
                    return Err((PROTOCOL_ERROR, "continuation without a message"));
                };
                if buf.len() + payload.len() > self.limits.message_bytes_max {
                    return Err((TOO_BIG, "message over the size limit"));
                }
                if n + 1 > self.limits.fragments_max {
                    return Err((TOO_BIG, "too many fragments"));
                }
                buf.extend_from_slice(&payload);
                if fin {
                    self.deliver(first, buf)?;
                } else {
                    self.partial = Some((first, buf, n + 1));
                }
            }
        }
        Ok(Some(consumed))
    }

    fn deliver(&mut self, op: Opcode, msg: Vec<u8>) -> Result<(), (u16, &'static str)> {
        if msg.len() > self.limits.message_bytes_max {
            return Err((close_code::TOO_BIG, "message over the size limit"));
        }
        if self.state != State::Open {
            return Ok(()); // data after our close is discarded (§5.5.1)
        }
        match op {
            Opcode::Text => {
                if std::str::from_utf8(&msg).is_err() {
                    return Err((close_code::INVALID_DATA, "text message is not UTF-8"));
                }
                self.events.push_back(Event::Text(msg));
            }
            _ => self.events.push_back(Event::Binary(msg)),
        }
        Ok(())
    }

    /// The peer's close frame (§5.5.1, §7.4).
    fn on_close(&mut self, payload: &[u8]) -> Result<(), (u16, &'static str)> {
        let (code, reason) = match payload {
            [] => (1005, &[][..]),
            [_] => return Err((close_code::PROTOCOL_ERROR, "one-byte close payload")),
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        };
        if payload.len() >= 2 && !valid_close_code(code) {
            return Err((close_code::PROTOCOL_ERROR, "invalid close code"));
        }
        if std::str::from_utf8(reason).is_err() {
            return Err((close_code::INVALID_DATA, "close reason is not UTF-8"));
        }
        if self.state == State::Open {
            // echo the code (§5.5.1); none when the peer sent none
            if payload.is_empty() {
                encode_frame(&mut self.tx, Opcode::Close, b"", true);
            } else {
                self.queue_close(code, b"");
            }
        }
        self.state = State::Closed;
        self.partial = None;
        self.events.push_back(Event::Closed {
            code,
            reason: reason.to_vec(),
        });
        Ok(())
    }
}

/// Codes a peer may send in a close frame (§7.4.1, §7.4.2).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn client(op: Opcode, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(&mut v, op, payload, fin, MASK);
        v
    }

    /// Decodes an unmasked server frame: (fin, opcode, payload, length).
    fn server_frame(b: &[u8]) -> (bool, u8, Vec<u8>, usize) {
        let fin = b[0] & 0x80 != 0;
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        (fin, b[0] & 0x0f, b[at..at + len].to_vec(), at + len)
    }

    #[test]
    fn rfc6455_accept_example() {
        // §1.3
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn upgrade<'a>() -> HandshakeRequest<'a> {
        HandshakeRequest {
            method: b"GET",
            version_minor: 1,
            upgrade: vec![b"websocket"],
            connection: vec![b"keep-alive, Upgrade"],
            key: Some(b"dGhlIHNhbXBsZSBub25jZQ=="),
            ws_version: vec![b"13"],
            protocols: vec![b"chat, sip"],
            origin: Some(b"https://example.com"),
        }
    }

    #[test]
    fn handshake_accepts_sip_subprotocol() {
        let cfg = HandshakeConfig {
            server: b"sipshard",
            cors_mode: 2,
        };
        let r = String::from_utf8(handshake(&upgrade(), &cfg).unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{r}");
        for h in [
            "Upgrade: websocket\r\n",
            "Connection: upgrade\r\n",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
            "Sec-WebSocket-Protocol: sip\r\n",
            "Server: sipshard\r\n",
            "Access-Control-Allow-Origin: https://example.com\r\n",
        ] {
            assert!(r.contains(h), "{h} in {r}");
        }
        assert!(!r.contains("Content-Length"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn handshake_refusals() {
        let cfg = HandshakeConfig::default();
        let mut r = upgrade();
        r.method = b"POST";
        assert_eq!(handshake(&r, &cfg), Err(HandshakeError::NotGet));
        let mut r = upgrade();
        r.connection = vec![b"keep-alive"];
        assert_eq!(handshake(&r, &cfg), Err(HandshakeError::NotUpgrade));
        let mut r = upgrade();
        r.key = Some(b"c2hvcnQ=");
        assert_eq!(handshake(&r, &cfg), Err(HandshakeError::BadKey));
        let mut r = upgrade();
        r.key = None;
        assert_eq!(handshake(&r, &cfg), Err(HandshakeError::BadKey));
        let mut r = upgrade();
        r.ws_version = vec![b"8"];
        assert_eq!(handshake(&r, &cfg), Err(HandshakeError::Version));
        let text = String::from_utf8(refusal(HandshakeError::Version, b"")).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"), "{text}");
        let mut r = upgrade();
        r.protocols = vec![b"chat"];
        assert_eq!(handshake(&r, &cfg), Err(HandshakeError::Protocol));
        r.protocols = vec![];
        assert_eq!(handshake(&r, &cfg), Err(HandshakeError::Protocol));
    }

    #[test]
    fn text_and_binary_messages_byte_by_byte() {
        let sip = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1\r\n\r\n";
        let mut bytes = client(Opcode::Text, sip, true);
        bytes.extend(client(Opcode::Binary, &[0xff, 0, 1], true));
        let big = vec![b'x'; 70_000];
        bytes.extend(client(Opcode::Binary, &big, true));
        let mut c = Conn::new(WsLimits {
            frame_bytes_max: 100_000,
            message_bytes_max: 100_000,
            fragments_max: 4,
        });
        for b in &bytes {
            c.handle_bytes(std::slice::from_ref(b));
        }
        assert_eq!(c.poll_event(), Some(Event::Text(sip.to_vec())));
        assert_eq!(c.poll_event(), Some(Event::Binary(vec![0xff, 0, 1])));
        assert_eq!(c.poll_event(), Some(Event::Binary(big)));
        assert_eq!(c.poll_event(), None);
        assert!(c.poll_transmit().is_empty());
    }

    #[test]
    fn fragments_with_a_ping_between() {
        let mut c = Conn::new(WsLimits::default());
        let mut bytes = client(Opcode::Text, b"INVITE ", false);
        bytes.extend(client(Opcode::Ping, b"hi", true));
        bytes.extend(client(Opcode::Continuation, b"sip:b", false));
        bytes.extend(client(Opcode::Continuation, b" SIP/2.0", true));
        c.handle_bytes(&bytes);
        assert_eq!(
            c.poll_event(),
            Some(Event::Text(b"INVITE sip:b SIP/2.0".to_vec()))
        );
        let tx = c.poll_transmit();
        let (fin, op, payload, n) = server_frame(&tx);
        assert!(fin);
        assert_eq!((op, payload.as_slice(), n), (0xA, &b"hi"[..], tx.len()));
    }

    #[test]
    fn server_frames_are_unmasked_with_each_length_form() {
        for n in [0usize, 125, 126, 65_535, 65_536] {
            let mut c = Conn::new(WsLimits::default());
            let msg = vec![b'a'; n];
            assert!(c.send(&msg));
            let tx = c.poll_transmit();
            let (fin, op, payload, len) = server_frame(&tx);
            assert!(fin);
            assert_eq!((op, payload.len(), len), (1, n, tx.len()));
        }
        let mut c = Conn::new(WsLimits::default());
        c.send(&[0xc3, 0x28]);
        assert_eq!(server_frame(&c.poll_transmit()).1, 2, "not UTF-8: binary");
    }

    #[test]
    fn close_handshake_from_the_peer() {
        let mut c = Conn::new(WsLimits::default());
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        c.handle_bytes(&client(Opcode::Close, &p, true));
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed {
                code: 1000,
                reason: b"bye".to_vec()
            })
        );
        let tx = c.poll_transmit();
        assert_eq!(server_frame(&tx).1, 0x8);
        assert_eq!(server_frame(&tx).2, 1000u16.to_be_bytes());
        assert!(c.is_closed());
        c.handle_bytes(&client(Opcode::Text, b"late", true));
        assert_eq!(c.poll_event(), None);
        assert!(!c.send(b"x"));
    }

    #[test]
    fn close_handshake_from_us() {
        let mut c = Conn::new(WsLimits::default());
        assert!(c.close(4000, b"Because I say so"));
        let tx = c.poll_transmit();
        let (_, op, payload, _) = server_frame(&tx);
        assert_eq!(op, 0x8);
        assert_eq!(&payload[..2], &4000u16.to_be_bytes());
        assert_eq!(&payload[2..], b"Because I say so");
        assert!(!c.close(1000, b""));
        assert!(!c.is_closed());
        c.handle_bytes(&client(Opcode::Close, &4000u16.to_be_bytes(), true));
        assert!(c.is_closed());
        assert!(c.poll_transmit().is_empty(), "no second close frame");
    }

    fn failure(bytes: &[u8], limits: WsLimits) -> (u16, &'static str) {
        let mut c = Conn::new(limits);
        c.handle_bytes(bytes);
        let ev = std::iter::from_fn(|| c.poll_event()).last();
        let Some(Event::Failed { code, why }) = ev else {
            panic!("{ev:?} for {bytes:?}");
        };
        let tx = c.poll_transmit();
        let (_, op, payload, _) = server_frame(&tx);
        assert_eq!(op, 0x8);
        assert_eq!(payload, code.to_be_bytes());
        assert!(c.is_closed());
        (code, why)
    }

    #[test]
    fn protocol_errors_close_1002_1007_1009() {
        let d = WsLimits::default();
        let mut unmasked = Vec::new();
        encode_frame(&mut unmasked, Opcode::Text, b"x", true);
        assert_eq!(failure(&unmasked, d).0, 1002);
        let mut rsv = client(Opcode::Text, b"x", true);
        rsv[0] |= 0x40;
        assert_eq!(failure(&rsv, d).0, 1002);
        let mut op = client(Opcode::Text, b"x", true);
        op[0] = 0x83;
        assert_eq!(failure(&op, d).0, 1002);
        assert_eq!(failure(&client(Opcode::Ping, b"x", false), d).0, 1002);
        assert_eq!(failure(&client(Opcode::Ping, &[0; 126], true), d).0, 1002);
        assert_eq!(
            failure(&client(Opcode::Continuation, b"x", true), d).0,
            1002
        );
        let mut twice = client(Opcode::Text, b"a", false);
        twice.extend(client(Opcode::Text, b"b", true));
        assert_eq!(failure(&twice, d).0, 1002);
        assert_eq!(failure(&client(Opcode::Close, &[3], true), d).0, 1002);
        assert_eq!(
            failure(&client(Opcode::Close, &1005u16.to_be_bytes(), true), d).0,
            1002
        );
        assert_eq!(
            failure(&client(Opcode::Text, &[0xc3, 0x28], true), d).0,
            1007
        );
        let small = WsLimits {
            frame_bytes_max: 10,
            message_bytes_max: 15,
            fragments_max: 3,
        };
        assert_eq!(
            failure(&client(Opcode::Binary, &[0; 11], true), small).0,
            1009
        );
        let mut long = client(Opcode::Binary, &[0; 10], false);
        long.extend(client(Opcode::Continuation, &[0; 10], true));
        assert_eq!(failure(&long, small).0, 1009);
        let mut many = client(Opcode::Binary, &[0; 1], false);
        for _ in 0..3 {
            many.extend(client(Opcode::Continuation, &[0; 1], false));
        }
        assert_eq!(failure(&many, small).0, 1009);
        // a 64-bit length is refused before any payload arrives
        let huge = [0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(failure(&huge, d).0, 1009);
        let top = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(failure(&top, d).0, 1002);
    }

    #[test]
    fn partial_frames_wait() {
        let frame = client(Opcode::Text, &[b'a'; 300], true);
        let mut c = Conn::new(WsLimits::default());
        c.handle_bytes(&frame[..frame.len() - 1]);
        assert_eq!(c.poll_event(), None);
        c.handle_bytes(&frame[frame.len() - 1..]);
        assert_eq!(c.poll_event(), Some(Event::Text(vec![b'a'; 300])));
    }
}
