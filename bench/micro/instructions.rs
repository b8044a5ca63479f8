//! Instruction-count harness for callgrind (stable on noisy machines, unlike
//! wall time): runs one operation N times so that
//! `valgrind --tool=callgrind` total / N is the cost per operation.
//!
//!   cargo build --release --example instructions
//!   valgrind --tool=callgrind target/release/examples/instructions parse_reply 100000
//!   valgrind --tool=callgrind target/release/examples/instructions parse_reply 0   # baseline
//!
//! `perf/instructions.sh` runs both and prints the difference per operation.

use sipshard::sip::{build_reply, parse, Framing, Limits, Parsed, ReplyOpts, SipMsg};

const REGISTER: &[u8] = b"REGISTER sip:registrar.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.44:5060;branch=z9hG4bK-524287-1---a3f5b2c1d9e8f7a6;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:alice@192.0.2.44:5060;rinstance=6f8d2a1b3c4e5f60;transport=UDP>;expires=3600\r\n\
To: <sip:alice@registrar.example.com>\r\n\
From: <sip:alice@registrar.example.com>;tag=3f2a9c71\r\n\
Call-ID: ZDM4ZjYxYjc0NGQ0ZDFkOTJhNzc2OGJmMWFmY2E2NmE\r\n\
CSeq: 2 REGISTER\r\n\
Expires: 3600\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
User-Agent: Zoiper rv2.10.20.4\r\n\
Authorization: Digest username=\"alice\",realm=\"registrar.example.com\",nonce=\"Y2FmZWJhYmUxMjM0NTY3OA\",uri=\"sip:registrar.example.com\",response=\"3b1f6e9d2c7a8b4e5f0a1d2c3b4a5968\",algorithm=MD5,qop=auth,nc=00000001,cnonce=\"a1b2c3d4\"\r\n\
Content-Length: 0\r\n\
\r\n";

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "parse_reply".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let limits = Limits::default();
    let mut parsed = Parsed::default();
    let mut out = Vec::with_capacity(1024);
    let mut total = 0usize;
    for _ in 0..n {
        let buf = std::hint::black_box(REGISTER);
        parse(buf, Framing::Datagram, &limits, &mut parsed).expect("valid REGISTER");
        if what == "parse_reply" {
            let msg = SipMsg::new(buf, &parsed);
            let opts = ReplyOpts {
                to_tag: Some(b"ss0123456789abcdef"),
                src_ip: Some(b"192.0.2.44"),
                src_port: Some(5060),
                ..Default::default()
            };
            build_reply(&msg, 200, b"OK", &opts, &mut out);
        }
        total += std::hint::black_box(out.len() + parsed.headers.len());
    }
    println!("{what} x{n}: {total}");
}
