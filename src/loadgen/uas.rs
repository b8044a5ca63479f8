//! `sipshard bench uas` / `sipshard bench responder`: a stateless SIP
//! answering machine for load runs.
//!
//! * INVITE: 180, then 200 (To tag derived from the Call-ID, so a
//!   retransmitted INVITE gets the same answer); ACK: nothing.
//! * REGISTER without Authorization: 401 with a fixed MD5 challenge; with
//!   one: 200. No check at all: this measures the generator, not auth.
//! * Anything else (BYE, OPTIONS, ...): 200.
//!
//! One thread, one socket, no state per call. Runs until `--duration`
//! ends or the process is stopped.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::sip::{self, HdrName, Limits, Parsed, SipMsg};

#[derive(clap::Args, Clone, Debug)]
pub struct UasArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5080")]
    pub listen: SocketAddr,
    /// Seconds to run (default: until stopped).
    #[arg(long)]
    pub duration: Option<f64>,
}

pub fn run(args: UasArgs) -> Result<(), String> {
    let sock = UdpSocket::bind(args.listen).map_err(|e| format!("bind {}: {e}", args.listen))?;
    let r = socket2::SockRef::from(&sock);
    let _ = r.set_recv_buffer_size(super::register::SOCKET_BUFFER_BYTES);
    let _ = r.set_send_buffer_size(super::register::SOCKET_BUFFER_BYTES);
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    eprintln!("bench uas listening on {local}");
    let end = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(1024);
    let mut parsed = Parsed::default();
    let limits = Limits::default();
    let mut answered = 0u64;
    loop {
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let data = buf.get(..n).unwrap_or_default();
        if sip::parse(data, sip::Framing::Datagram, &limits, &mut parsed).is_err() {
            continue;
        }
        let msg = SipMsg::new(data, &parsed);
        if !msg.is_request() {
            continue;
        }
        let method = msg.method_bytes();
        if method == b"ACK" {
            continue;
        }
        if method == b"INVITE" {
            reply(&mut out, &msg, 180, "Ringing", local, "");
            let _ = sock.send_to(&out, from);
            reply(&mut out, &msg, 200, "OK", local, "");
        } else if method == b"REGISTER" && msg.header(HdrName::Authorization).is_none() {
            reply(
                &mut out,
                &msg,
                401,
                "Unauthorized",
                local,
                "WWW-Authenticate: Digest realm=\"bench\", nonce=\"0123456789abcdef\", qop=\"auth\", algorithm=MD5\r\n",
            );
        } else {
            reply(&mut out, &msg, 200, "OK", local, "");
        }
        let _ = sock.send_to(&out, from);
        answered += 1;
    }
    eprintln!("bench uas answered {answered} requests");
    Ok(())
}

/// A reply copying Via, Record-Route, From, To (tagged), Call-ID, CSeq.
fn reply(
    out: &mut Vec<u8>,
    msg: &SipMsg<'_>,
    code: u16,
    reason: &str,
    local: SocketAddr,
    extra: &str,
) {
    use std::io::Write;
    out.clear();
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    for v in msg.headers(HdrName::Via) {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    for v in msg.headers(HdrName::RecordRoute) {
        out.extend_from_slice(b"Record-Route: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let call_id = msg.call_id().unwrap_or_default();
    for (name, h) in [("From", HdrName::From), ("To", HdrName::To)] {
        let v = msg.header(h).unwrap_or_default();
        let _ = write!(out, "{name}: ");
        out.extend_from_slice(v);
        if h == HdrName::To && !contains_tag(v) {
            let _ = write!(out, ";tag=uas{:x}", fnv(call_id));
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Call-ID: ");
    out.extend_from_slice(call_id);
    out.extend_from_slice(b"\r\nCSeq: ");
    out.extend_from_slice(msg.header(HdrName::CSeq).unwrap_or_default());
    let _ = write!(
        out,
        "\r\nContact: <sip:uas@{local}>\r\n{extra}Server: sipshard-bench\r\nContent-Length: 0\r\n\r\n"
    );
}

fn contains_tag(to: &[u8]) -> bool {
    to.windows(4).any(|w| w.eq_ignore_ascii_case(b"tag="))
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3)
    })
}
