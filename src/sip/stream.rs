//! Sans-IO framing of a byte stream (TCP, TLS) into SIP messages: partial
//! reads, several messages in one read (pipelining), RFC 5626 §4.4.1
//! keepalives (a CRLFCRLF "ping" is answered with a CRLF "pong"; a lone
//! CRLF is skipped), and the `max_msg_len` bound on anything buffered.
//!
//! A connection's bytes are fed with [`StreamFramer::feed`] (or written
//! straight into [`StreamFramer::spare`]) and taken out as
//! [`StreamEvent`]s with [`StreamFramer::next`]. Nothing here reads a
//! socket or a clock.
//!
//! **Kinds of stream.** A connection on the SIP port carries SIP, but the
//! first bytes may be an HTTP request instead (`GET /...`, `POST /...`):
//! Kamailio's xhttp module serves those, and a WebSocket (RFC 7118) starts
//! as one. [`StreamKind`] says what a connection carries; it starts as
//! `Sip` and [`StreamEvent::NotSip`] is returned, once, when the first
//! message of a connection is an HTTP request line. The connection layer
//! then hands the buffered bytes ([`StreamFramer::take_buffered`]) to the
//! HTTP handler (the `// xhttp hook` in `shard/conn.rs`).

use super::{parse, Framing, Limits, ParseError, Parsed, Status};

/// What a connection carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamKind {
    /// SIP messages framed by Content-Length (RFC 3261 §18.3).
    #[default]
    Sip,
    /// HTTP/1.1 requests (xhttp; the WebSocket upgrade starts here).
    Http,
    /// RFC 6455 frames carrying SIP (RFC 7118).
    WebSocket,
}

/// One thing found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    /// A complete SIP message (leading CRLFs stripped).
    Message(&'a [u8]),
    /// A CRLFCRLF keepalive ping: answer with a CRLF pong.
    Ping,
    /// The connection's first bytes are an HTTP request, not SIP.
    NotSip,
}

/// Framing state of one connection.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// Bytes to consume before looking for the next event.
    pending: usize,
    /// No message framed yet (the HTTP check applies).
    first: bool,
    max: usize,
    parsed: Parsed,
}

/// Bytes a read may add at once beyond what is buffered.
pub const READ_CHUNK: usize = 16 << 10;

impl StreamFramer {
    /// A framer that refuses to buffer more than `max_msg_len` bytes of one
    /// message.
    pub fn new(max_msg_len: usize) -> StreamFramer {
        StreamFramer {
            buf: Vec::new(),
            start: 0,
            pending: 0,
            first: true,
            max: max_msg_len.max(64),
            parsed: Parsed::default(),
        }
    }

    /// Bytes buffered and not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start - self.pending
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Room for reading up to `n` bytes directly; call [`Self::filled`] with
    /// how many were written.
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        self.compact();
        let len = self.buf.len();
        self.buf.resize(len + n, 0);
        &mut self.buf[len..]
    }

    /// After [`Self::spare`]: `n` bytes of the spare room hold data, the
    /// rest (`room - n`) is given back.
    pub fn filled(&mut self, room: usize, n: usize) {
        let keep = self.buf.len() - room + n.min(room);
        self.buf.truncate(keep);
    }

    fn compact(&mut self) {
        self.consume();
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            self.buf = Vec::new();
        }
    }

    fn consume(&mut self) {
        self.start += self.pending;
        self.pending = 0;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// The buffered, unframed bytes (for a handler that takes the stream
    /// over, e.g. HTTP); the framer is empty afterwards.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.consume();
        let out = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        out
    }

    /// The next event, `Ok(None)` when more bytes are needed. An error
    /// means the stream cannot be framed any more (close the connection).
    pub fn next(&mut self, limits: &Limits) -> Result<Option<StreamEvent<'_>>, ParseError> {
        self.consume();
        let data = &self.buf[self.start..];
        // Keepalives (RFC 5626 §4.4.1): CRLFCRLF is a ping; CRLFs before a
        // message are skipped; a lone CRLF waits for what follows.
        let crlfs = data
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if crlfs == data.len() {
            if data.starts_with(b"\r\n\r\n") {
                self.pending = 4;
                return Ok(Some(StreamEvent::Ping));
            }
            if data.len() > 4 {
                // A run of CRLFs that is not a ping: drop it.
                self.pending = data.len();
            }
            return Ok(None);
        }
        if data.starts_with(b"\r\n\r\n") {
            self.pending = 4;
            return Ok(Some(StreamEvent::Ping));
        }
        if self.first && looks_like_http(&data[crlfs..]) {
            self.first = false;
            return Ok(Some(StreamEvent::NotSip));
        }
        let lim = Limits {
            max_msg_len: limits.max_msg_len.min(self.max),
            ..*limits
        };
        match parse(data, Framing::Stream, &lim, &mut self.parsed)? {
            Status::Partial => {
                if data.len() - crlfs >= lim.max_msg_len {
                    return Err(ParseError::TooLarge);
                }
                Ok(None)
            }
            Status::Complete(end) => {
                self.first = false;
                self.pending = end;
                Ok(Some(StreamEvent::Message(&data[crlfs..end])))
            }
        }
    }
}

/// `TOKEN SP /` at the start: an HTTP request line (a SIP request line has a
/// URI with a scheme there, a SIP reply starts with `SIP/`).
pub fn looks_like_http(data: &[u8]) -> bool {
    let Some(sp) = data.iter().take(32).position(|&b| b == b' ') else {
        return false;
    };
    sp > 0 && data[..sp].iter().all(u8::is_ascii_uppercase) && data.get(sp + 1) == Some(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &[u8] = b"REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\
Content-Length: 4\r\n\r\nbody";

    fn lim() -> Limits {
        Limits {
            max_headers: 64,
            max_msg_len: 4096,
        }
    }

    fn drain(f: &mut StreamFramer) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(e) = f.next(&lim()).unwrap() {
            v.push(match e {
                StreamEvent::Message(m) => String::from_utf8_lossy(m).into_owned(),
                StreamEvent::Ping => "PING".into(),
                StreamEvent::NotSip => "HTTP".into(),
            });
        }
        v
    }

    #[test]
    fn byte_by_byte_then_pipelined() {
        let mut f = StreamFramer::new(4096);
        let mut got = Vec::new();
        for b in REG {
            f.feed(&[*b]);
            got.extend(drain(&mut f));
        }
        assert_eq!(got, vec![String::from_utf8_lossy(REG).into_owned()]);
        let mut three = Vec::new();
        three.extend_from_slice(REG);
        three.extend_from_slice(b"\r\n\r\n");
        three.extend_from_slice(REG);
        three.extend_from_slice(b"\r\n");
        three.extend_from_slice(REG);
        f.feed(&three);
        let got = drain(&mut f);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[1], "PING");
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn keepalives() {
        let mut f = StreamFramer::new(4096);
        f.feed(b"\r\n");
        assert_eq!(drain(&mut f), Vec::<String>::new());
        f.feed(b"\r\n");
        assert_eq!(drain(&mut f), vec!["PING"]);
        f.feed(b"\r\n\r\n\r\n\r\n");
        assert_eq!(drain(&mut f), vec!["PING", "PING"]);
    }

    #[test]
    fn too_large_and_garbage() {
        let mut f = StreamFramer::new(256);
        f.feed(&REG[..60]);
        assert_eq!(drain(&mut f), Vec::<String>::new());
        f.feed(&[b'a'; 300]);
        assert!(f.next(&lim()).is_err());
        let mut g = StreamFramer::new(4096);
        g.feed(b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
        assert!(g.next(&lim()).is_err());
    }

    #[test]
    fn http_is_told_apart() {
        let mut f = StreamFramer::new(4096);
        f.feed(b"GET /e-1-2 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(f.next(&lim()).unwrap(), Some(StreamEvent::NotSip));
        assert!(f.take_buffered().starts_with(b"GET /e-1-2"));
        assert!(!looks_like_http(b"OPTIONS sip:a@b SIP/2.0"));
        assert!(!looks_like_http(b"SIP/2.0 200 OK"));
        assert!(looks_like_http(b"POST /rpc HTTP/1.1"));
    }
}
