//! Instruction-count harness (REGISTER from `samples.rs`, as in the criterion bench) for callgrind (stable on noisy machines, unlike
//! wall time): runs one operation N times so that
//! `valgrind --tool=callgrind` total / N is the cost per operation.
//!
//!   cargo build --release --example instructions
//!   valgrind --tool=callgrind target/release/examples/instructions parse_reply 100000
//!   valgrind --tool=callgrind target/release/examples/instructions parse_reply 0   # baseline
//!
//! `perf/instructions.sh` runs both and prints the difference per operation.

use sipshard::sip::{build_reply, parse, Framing, Limits, Parsed, ReplyOpts, SipMsg};

#[path = "samples.rs"]
mod samples;
use samples::REGISTER;

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
                force_rport: false,
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
